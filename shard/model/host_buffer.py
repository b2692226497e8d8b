"""HostBuffer: one anonymous memory mapping seen as a torch uint8 tensor, whose byte ranges can be
given back to the OS while the mapping (and every view of it) stays valid.

`release(start, end)` maps fresh anonymous memory over the OS pages inside [start, end) (mmap with
MAP_FIXED): the old pages are freed at once (VmRSS and the cgroup's usage drop; madvise(DONTNEED) is
not enough everywhere, e.g. under gVisor the memory stays charged), the range reads as zeros and is
backed again on first touch. The mapping is unmapped when the last tensor viewing it is gone.
Where libc's mmap cannot be called (not Linux), the buffer is a plain torch tensor and release only
zero-fills (nothing is returned).
"""

from __future__ import annotations

import ctypes
import mmap
import weakref

import torch

_PAGE = mmap.PAGESIZE
_MAP_FIXED = 0x10
_PROT = mmap.PROT_READ | mmap.PROT_WRITE
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


class HostBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._libc = _libc()
        self._addr = 0
        if self._libc is None or nbytes <= 0:
            self.tensor = torch.zeros(max(nbytes, 0), dtype=torch.uint8)
            return
        size = -(-nbytes // _PAGE) * _PAGE
        addr = self._libc.mmap(None, size, _PROT, _FLAGS, -1, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise MemoryError(f"cannot map {size} bytes for the page pool (errno {ctypes.get_errno()})")
        self._addr = addr
        array = (ctypes.c_uint8 * size).from_address(addr)
        weakref.finalize(array, self._libc.munmap, addr, size)  # torch keeps `array` alive via views
        self.tensor = torch.frombuffer(array, dtype=torch.uint8)[:nbytes]

    @property
    def returns_memory(self) -> bool:
        return self._addr != 0

    def release(self, start: int, end: int) -> int:
        """Give the whole OS pages inside [start, end) back; returns the bytes released."""
        start, end = max(start, 0), min(end, self.nbytes)
        if end <= start:
            return 0
        if not self._addr or self._libc is None:
            self.tensor[start:end].zero_()
            return 0
        lo, hi = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
        if end == self.nbytes:
            hi = -(-end // _PAGE) * _PAGE  # the mapping's tail page belongs to the buffer alone
        if hi <= lo:
            self.tensor[start:end].zero_()
            return 0
        got = self._libc.mmap(self._addr + lo, hi - lo, _PROT, _FLAGS | _MAP_FIXED, -1, 0)
        if got != self._addr + lo:
            raise MemoryError(f"cannot release pool memory (errno {ctypes.get_errno()})")
        self.tensor[start:lo].zero_()
        self.tensor[min(hi, end):end].zero_()
        return hi - lo
