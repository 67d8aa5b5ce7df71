"""Freed CPU memory kept for the next allocation instead of handed back to the kernel."""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # free memory at the heap's top beyond this still goes back
ON_GLIBC = (
    "CS_GNU_LIBC_VERSION" in os.confstr_names  # absent off Linux and under musl
    and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
)


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep them when freed (``mallopt``:
    ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GB). By default every block above 32 MB is a fresh mapping,
    which the kernel hands over a page at a time on first touch and takes back on free: at the paper's size
    one visual training step's gradients and activations (fc6's 411 MB, the LSTM's 268 MB, ...) cost
    hundreds of thousands of page faults, every step. Kept, a step reuses the last step's pages
    (README "Frozen work done once"). Returns whether the setting took: False without glibc (``ON_GLIBC``).
    """
    if not ON_GLIBC:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
