"""A worker process of the inline engine's :class:`~simulator.flower.inline.ClientPool`.

``python -m simulator.flower.pool_worker``: reads pickled jobs from stdin and writes each one's pickled
answer to stdout, until stdin closes. A job is ``("warm", prepare)``: run ``prepare()``, answer True,
then, if ``prepare`` returned a callable, call it before reading the next job; or ``("call", task)``: answer
``("ok", task())``, or ``("err", reason)`` when the task raised or its result cannot be pickled. Started as a
fresh interpreter (not ``multiprocessing``), so a user's script that calls ``simulator.run`` without a
``__main__`` guard is never re-imported.
"""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Callable
from typing import Any


def _answer(task: Callable[[], Any]) -> bytes:
    try:
        return pickle.dumps(("ok", task()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # the task failed, or its result does not pickle: the pool hears why
        return pickle.dumps(("err", f"{type(e).__name__}: {e}"), protocol=pickle.HIGHEST_PROTOCOL)


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
            then = job[1]()
            pickle.dump(True, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
            if callable(then):  # more warming that need not hold up the answer (the next job waits for it)
                then()
        elif job[0] == "call":
            out.write(_answer(job[1]))
        else:  # never leave the pool waiting for an answer
            out.write(pickle.dumps(("err", f"unknown job {job[0]!r}"), protocol=pickle.HIGHEST_PROTOCOL))
        out.flush()


if __name__ == "__main__":
    main()
