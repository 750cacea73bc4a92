"""Keep freed activation memory in the process between training steps.

Every step allocates the same activations again: dozens of arrays of
100 KB to a few MB.  glibc's malloc hands blocks that large straight to the
kernel (mmap) and gives them back on free (munmap), so every step touches
fresh pages, and each first touch is a page fault in which the kernel zeroes
4 KB.  At config S that is ~2,500 faults per step on one worker; in the
virtual machines this was measured on, they cost 8-15 ms of a 55-70 ms step
(docs/speed.md).  PyTorch avoids the same cost with a caching allocator,
llm.c by allocating its activations once.

npgpt asks malloc instead to serve blocks up to its largest mmap threshold
from its own heap and not to hand freed memory back: the next step's arrays
reuse the previous step's pages, which are already mapped.  Peak memory is
unchanged (the same arrays are alive at the peak); memory freed after the
peak stays with the process until it exits, which a training run does not
miss.  Only the `npgpt train` and `npgpt bench` commands call this: a
library should not change its host process's allocator.
"""
import ctypes
import os
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems: larger values are refused
TRIM_THRESHOLD_MAX = 2**31 - 1  # never trim the heap back to the kernel

# A user's own malloc settings win (glibc reads these at start-up).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory():
    """Tune glibc's malloc as described above -> True if it took effect.

    Does nothing (False) off Linux, under a C library without mallopt
    (musl), or when the user set malloc's thresholds in the environment.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 if it refused the value
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX))
