"""Worker pools that end with the tool that started them.

A pool's workers outlive a killed parent: with ``kill -9`` (or a lost terminal) they go on writing for as long as
their queued work lasts, racing the next run. Every pool here makes its workers ask the kernel for SIGTERM when the
parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and a SIGTERM to the parent raises ``SystemExit`` so the pool is
torn down (queued work cancelled, workers terminated) on the way out.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGTERM this worker when its parent dies. A forked worker inherits the parent's Python
    SIGTERM handler, whose ``SystemExit`` the pool's worker loop would catch as a task's error and live on: the
    default action is restored first."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


@contextmanager
def terminating_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit`` (so ``finally`` and ``with`` clean-ups run).

    A process forked inside the block inherits the handler until its initializer resets it; a SIGTERM in that window
    (a pool terminated while it starts a worker) must end the child at once: an exception there would climb the
    parent's copied stack and run the parent's program on in the child."""
    owner = os.getpid()

    def _exit_on_sigterm(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` whose workers die with the parent, and which is shut down without waiting for
    queued work when the block is left by an exception (Ctrl-C, SIGTERM)."""
    with terminating_on_sigterm():
        pool = ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            yield pool
        except BaseException:
            processes = list((pool._processes or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise
        pool.shutdown(wait=True)
