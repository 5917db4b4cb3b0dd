"""A process-wide budget of bytes for decoding images, so a burst of huge uploads queues up
instead of exhausting the machine's memory.

A small PNG can hold tens of megapixels (a 187 KB file decodes to 237 MB), so the size of an
upload says nothing about the memory its decode needs. Each decode therefore reserves its
estimated peak, computed from the header before any pixel is decoded, and waits (first come,
first served) while other decodes hold the rest; one that alone needs more than the whole budget
is refused. After a large decode, glibc is asked to hand the freed pages back to the system: its
per-thread heaps otherwise keep them, and a burst leaves the process gigabytes larger until exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from core.errors import ImageTooLargeError

MB = 1024 * 1024
# Auto budget: a quarter of the memory this process may use, at most 1 GB.
AUTO_SHARE = 0.25
AUTO_CAP = 1024 * MB
# Decodes that reserved at least this much are followed by a malloc_trim.
TRIM_ABOVE = 32 * MB


class DecodeBudget:
    """Counts bytes held by decodes in progress; `reserve` blocks until its share is free."""

    def __init__(self, total_bytes: int, *, trim: bool = True) -> None:
        if total_bytes < 1:
            raise ValueError("total_bytes must be positive")
        self.total = total_bytes
        self.trim = trim
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._in_use = 0
        self._peak = 0

    @property
    def in_use(self) -> int:
        """Bytes reserved right now."""
        return self._in_use

    @property
    def peak(self) -> int:
        """Most bytes ever reserved at once (for tests and benchmarks)."""
        return self._peak

    @contextmanager
    def reserve(self, nbytes: int, label: str = "The image") -> Iterator[None]:
        """Hold `nbytes` of the budget for the duration of the block.

        Raises `ImageTooLargeError` at once if `nbytes` exceeds the whole budget: waiting would
        never help.
        """
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise ImageTooLargeError(
                f"{label} is too large to decode: it needs about {_mb(nbytes)} MB of memory, "
                f"more than the {_mb(self.total)} MB allowed for decoding images "
                "(KONTROL_DECODE_BUDGET_MB)."
            )
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                # First come, first served: a large decode is not starved by a stream of small ones.
                self._cond.wait_for(
                    lambda: self._queue[0] is ticket and self._in_use + nbytes <= self.total
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self._in_use += nbytes
            self._peak = max(self._peak, self._in_use)
        try:
            yield
        finally:
            # Trim before releasing: the next decode then starts on memory given back, not on
            # top of pages this thread's heap still holds.
            if self.trim and nbytes >= TRIM_ABOVE:
                release_free_memory()
            with self._cond:
                self._in_use -= nbytes
                self._cond.notify_all()


def auto_budget_bytes() -> int:
    """min(1 GB, 25 % of the memory available to this process: RAM or the container's limit)."""
    return max(64 * MB, min(AUTO_CAP, int(_memory_limit() * AUTO_SHARE)))


def _memory_limit() -> int:
    """Physical RAM, or a smaller cgroup (container) limit where one is set."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        limit = 4096 * MB
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


_default: DecodeBudget | None = None
_default_lock = threading.Lock()


def get_decode_budget() -> DecodeBudget:
    """The process-wide budget, sized from `KONTROL_DECODE_BUDGET_MB` (0 = auto) on first use."""
    global _default
    with _default_lock:
        if _default is None:
            from core.settings import get_settings

            mb = get_settings().decode_budget_mb
            _default = DecodeBudget(mb * MB if mb else auto_budget_bytes())
        return _default


def set_decode_budget(budget: DecodeBudget | None) -> None:
    """Replace the process-wide budget (None: size it again from settings on next use)."""
    global _default
    with _default_lock:
        _default = budget


@lru_cache(maxsize=1)
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only; musl has none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _mb(n: int) -> str:
    return f"{n / MB:,.0f}"
