"""One process per run: an exclusive lock on ``RUN_DIR/run.lock``, taken before training.

The lock is ``flock``'s, so the kernel releases it when every process holding the locked file
ends, however it ends: a dead process leaves no stale lock. The runner hands the locked file to
its training process (``pass_fds``), so the run stays locked while that process lives even if the
runner is killed. The file keeps the host and pid of the last owner, for the message of a caller
that finds the run taken.
"""
import contextlib
import fcntl
import os
import socket
from typing import Iterator, NamedTuple, Optional

LOCK_NAME = "run.lock"


class RunLock(NamedTuple):
    holder: Optional[str]  # None: this process holds the lock; else "host pid N" of the one that does
    fd: int  # the locked file's descriptor (valid inside the ``with`` block)


def holder(run_dir: str) -> Optional[str]:
    """"host pid N" of the process training ``run_dir`` now, or None. (It tries a shared lock for an
    instant: a runner starting that very instant would find the run taken and skip it.)"""
    path = os.path.join(run_dir, LOCK_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[RunLock]:
    """Takes the lock of ``run_dir`` for the ``with`` block, or reports who holds it."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_NAME), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            yield RunLock(f.read().strip() or "another process", f.fileno())
            return
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        try:
            yield RunLock(None, f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
