"""One process per run: an exclusive lock on ``RUN_DIR/run.lock``, taken before training.

The lock is ``flock``'s, so the kernel releases it when its owner ends however it ends: a dead
process leaves no stale lock. The file keeps the host and pid of the last owner, for the message
of a caller that finds the run taken.
"""
import contextlib
import fcntl
import os
import socket
from typing import Iterator, Optional

LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[Optional[str]]:
    """Yields None while this process holds the lock of ``run_dir`` (released on exit), or, when
    another live process holds it, that process's "host pid"."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_NAME), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            yield f.read().strip() or "another process"
            return
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        try:
            yield None
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
