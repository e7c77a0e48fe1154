"""Out-of-memory on the accelerator: one owner for recognising it, halving a batch, and reporting it.

The encoder's page and query batches go through :func:`run_halving`; the generator wraps an answer in
:func:`device_oom`. Both free the allocator's cached blocks after an OOM, so the next try (or the next
request) starts from what is really in use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from indexer.errors import DeviceOutOfMemory

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Advice when one page does not fit: the page resolution sets its tiles (17 at 2048 px, 5 at 1024), the batch size
#: how many pages share the memory.
PAGE_HINTS = {
    "cli": "lower COLSMOL_PAGE_LONGEST_EDGE (1024 makes 5 tiles a page instead of 17) or --batch-size",
    "http": "lower the server's COLSMOL_PAGE_LONGEST_EDGE or COLSMOL_PAGE_BATCH_SIZE, or free GPU memory",
}


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the accelerator running out of memory (CUDA's own class, or MPS's RuntimeError)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "MPS" in str(exc)


def free_cache() -> None:
    """Return the CUDA allocator's cached blocks (a no-op where CUDA was never initialised)."""
    import torch

    torch.cuda.empty_cache()


def first_line(exc: BaseException) -> str:
    """The first line of an OOM message (torch's run on for several lines of allocator statistics)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def out_of_memory(what: str, exc: BaseException, hints: Mapping[str, str] | None = None) -> DeviceOutOfMemory:
    """The one-line :class:`DeviceOutOfMemory` for ``what`` (e.g. "a single page"), caused by ``exc``."""
    err = DeviceOutOfMemory(f"the GPU ran out of memory on {what} ({first_line(exc)})", hints=hints)
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def device_oom(what: str, hints: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn an OOM inside the block into :class:`DeviceOutOfMemory` (cache freed); other errors pass."""
    try:
        yield
    except DeviceOutOfMemory:
        free_cache()
        raise
    except Exception as exc:
        if not is_oom(exc):
            raise
        free_cache()
        raise out_of_memory(what, exc, hints) from exc


def run_halving(
    n: int,
    batch: int,
    forward: Callable[[int, int], list[T]],
    what: str = "a single input",
    hints: Mapping[str, str] | None = None,
) -> tuple[list[T], int]:
    """``forward(start, stop)`` over ``[0, n)`` in slices of ``batch``, halving the slice on OOM down to 1.

    Returns the results in order and the batch size that fitted (callers keep it for their next call, so a
    GPU that ran out once is not made to run out again on every batch). An OOM on a slice of one item raises
    :class:`DeviceOutOfMemory` naming ``what``; the results of earlier slices are not returned then.
    """
    out: list[T] = []
    start = 0
    batch = max(1, batch)
    while start < n:
        stop = min(n, start + batch)
        try:
            out.extend(forward(start, stop))
        except Exception as exc:
            if not is_oom(exc):
                raise
            free_cache()
            if stop - start == 1:
                raise out_of_memory(what, exc, hints) from exc
            batch = (stop - start + 1) // 2  # 7 -> 4 -> 2 -> 1
            log.warning("out of GPU memory at batch %d; retrying with %d", stop - start, batch)
            continue
        start = stop
    return out, batch
