"""Flower beyond one process: privsim's runs on a SuperLink (Flower's simulation runtime, or a local
deployment of SuperLink and SuperNode processes with TLS and SuperNode authentication).

Importing this package does no work; :mod:`simulator.deploy.run` starts processes only when called.
"""
