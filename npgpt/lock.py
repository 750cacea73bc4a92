"""One training run per output directory.

Two `npgpt train` runs writing the same --out would interleave their
metrics.jsonl lines and delete each other's snapshots.  A run holds an
exclusive lock on OUT/.npgpt.lock for as long as it trains:

    with lock_out_dir("out"):      # UserError at once if another run holds it
        ...train...

The lock is fcntl.flock on an open file: the kernel releases it when the
holding process exits for any reason, kill -9 included, so a stale lock
can never block a later run.  The file itself stays (deleting a lock file
races with a process that just opened it); the holder's process id is
written into it only to word the message.  Where flock is unavailable
(Windows, some network filesystems) the run goes ahead unlocked, with a
note.
"""
import contextlib
import errno
import os
import sys

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".npgpt.lock"


@contextlib.contextmanager
def lock_out_dir(out):
    """Hold the lock on `out` (created if missing) for the `with` block; UserError if another run holds it."""
    path = os.path.join(out, LOCK_NAME)
    try:
        os.makedirs(out, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    try:
        if not _try_lock(fd, out):
            raise UserError(f"{out} is in use by another npgpt training run ({_holder(fd)}); wait for it to finish, "
                            "or choose another --out")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for messages
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def _try_lock(fd, out):
    """True if this process now holds the lock (or locking is unsupported here), False if another does."""
    if fcntl is None:
        _note(out, "file locking is not available on this system")
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return False
        _note(out, f"this filesystem does not support locks ({e.strerror})")
        return True


def _holder(fd):
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _note(out, why):
    print(f"npgpt: note: {why}; {out} is not locked against a second run", file=sys.stderr)
