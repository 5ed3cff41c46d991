"""A worker process of the inline engine's :class:`~simulator.flower.inline.ClientPool`.

``python -m simulator.flower.pool_worker``: reads pickled ``(factory, message, context)`` jobs (or
``("warm", prepare)``: run ``prepare()`` and answer True) from stdin,
plays the node (the ClientApp that ``factory()`` builds, kept for later jobs) and writes the pickled
``(reply, context)`` to stdout, until stdin closes. Started as a fresh interpreter (not ``multiprocessing``),
so a user's script that calls ``simulator.run`` without a ``__main__`` guard is never re-imported.
"""

from __future__ import annotations

import logging
import pickle
import sys

from simulator.flower.inline import play


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream
    while True:
        try:
            job = pickle.load(inp)
        except EOFError:
            return
        if job[0] == "warm":  # ("warm", prepare): get ready for the first node (e.g. build the runtime)
            job[1]()
            pickle.dump(True, out, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            factory, msg, ctx = job
            pickle.dump(play(factory, msg, ctx), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    main()
