"""Token rows on an accelerator: fixed-size segments under a memory budget.

One contiguous buffer that grows has to copy itself (old and new buffers alive at once: 2.25x the index when it
grows by a quarter), and a compaction into a fresh buffer holds two indexes at once. On a GPU that peak is an
out-of-memory error in the middle of a write. :class:`TokenSegments` keeps the rows in segments of ``rows`` tokens
instead:

- **appends** fill the last segment and allocate one more when a page does not fit in what is left of it;
  segments are never copied or moved, and a page never straddles two segments (it is one slice of one segment);
- **compaction** copies the live pages into new segments, in order, and releases each old segment as soon as its
  pages are copied. Pages are packed greedily in row order (next fit), and next fit never needs more segments for
  a subsequence of the pages than for all of them, so once the pages of the first ``i`` old segments are copied at
  most ``i`` new segments exist: the peak is the index plus one segment;
- **the budget** (bytes): growth that would take more segments than it allows is refused before anything is
  written, keeping one segment of room for a compaction (:meth:`fits`).

A page's address is ``segment * rows + offset``. Rows of the index stay in append order, so the segment of a row
never decreases with the row: per-page scores are the concatenation of each segment's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from retriever.maxsim import DIM

#: Tokens a segment holds unless the budget asks for smaller ones: 256 MB in fp16, 132 MB in int8 (about 900
#: ColSmol pages). Small against an accelerator's memory, so the segment kept free for a compaction and the unused
#: tail of the last one cost little; large enough that scoring a segment (one kernel launch reading it whole)
#: outweighs the launch.
DEFAULT_SEGMENT_TOKENS = 1 << 20
#: The smallest segment a budget makes (4 MB in fp16): still a few pages of the longest kind.
MIN_SEGMENT_TOKENS = 1 << 14
#: Segments the budget keeps free beyond the index: a compaction holds at most one more than the index.
COMPACT_HEADROOM = 1


def row_bytes(int8: bool) -> int:
    """Device bytes of one token row: 128 int8 + an fp32 scale, or 128 fp16."""
    return DIM + 4 if int8 else 2 * DIM


def segment_tokens_for(budget_bytes: int | None, int8: bool) -> int:
    """Rows a segment holds under ``budget_bytes``: :data:`DEFAULT_SEGMENT_TOKENS`, or a power of two near a
    sixteenth of the budget when that is smaller (so the room kept for a compaction stays a small share of it).

    >>> segment_tokens_for(None, False), segment_tokens_for(8 << 30, False), segment_tokens_for(1 << 30, False)
    (1048576, 1048576, 262144)
    """
    if budget_bytes is None:
        return DEFAULT_SEGMENT_TOKENS
    rows = max(1, budget_bytes // (16 * row_bytes(int8)))
    return max(MIN_SEGMENT_TOKENS, min(DEFAULT_SEGMENT_TOKENS, 1 << (rows.bit_length() - 1)))


class TokenSegments:
    """The token rows (and int8 scales) of an index in segments of ``rows`` rows on ``device``.

    ``tokens[i]`` / ``scales[i]`` are segment ``i``; ``used[i]`` of its rows hold pages; ``first_row[i]`` is the
    index row of its first page. ``budget_bytes`` (None: no limit) bounds the segments held (:meth:`fits`).
    Not thread safe: the index calls it under its lock.
    """

    def __init__(self, rows: int, int8: bool, device: torch.device, budget_bytes: int | None = None) -> None:
        if rows < 1:
            raise ValueError(f"a segment needs at least one row, got {rows}")
        self.rows = int(rows)
        self.int8 = int8
        self.device = device
        self.budget_bytes = budget_bytes
        self.tokens: list[torch.Tensor] = []
        self.scales: list[torch.Tensor] = []
        self.used: list[int] = []
        self.first_row: list[int] = []

    # ------------------------------------------------------------------ sizes
    @property
    def segment_bytes(self) -> int:
        return self.rows * row_bytes(self.int8)

    def nbytes(self) -> int:
        """Device bytes of the segments held (used or not)."""
        return len(self.tokens) * self.segment_bytes

    def new_segments(self, lengths: Sequence[int]) -> int:
        """How many segments appending pages of ``lengths`` rows would allocate."""
        n, fill = 0, self.used[-1] if self.used else self.rows
        for length in lengths:
            self._check_length(length)
            if fill + length > self.rows:
                n, fill = n + 1, 0
            fill += length
        return n

    def bytes_after(self, lengths: Sequence[int]) -> int:
        """Device bytes held once pages of ``lengths`` rows are appended."""
        return (len(self.tokens) + self.new_segments(lengths)) * self.segment_bytes

    def fits(self, lengths: Sequence[int]) -> bool:
        """Whether pages of ``lengths`` rows can be appended within the budget, with :data:`COMPACT_HEADROOM`
        segments left for a compaction."""
        if self.budget_bytes is None:
            return True
        return self.bytes_after(lengths) + COMPACT_HEADROOM * self.segment_bytes <= self.budget_bytes

    # ------------------------------------------------------------------ writing
    def _check_length(self, length: int) -> None:
        if length > self.rows:
            raise ValueError(f"a page of {length} tokens is longer than an index segment ({self.rows} tokens)")

    def _alloc(self, first_row: int) -> None:
        """One more segment (the only place one is allocated)."""
        dtype = torch.int8 if self.int8 else torch.float16
        self.tokens.append(torch.empty(self.rows, DIM, dtype=dtype, device=self.device))
        if self.int8:
            self.scales.append(torch.empty(self.rows, dtype=torch.float32, device=self.device))
        self.used.append(0)
        self.first_row.append(first_row)

    def place(self, lengths: Sequence[int], first_row: int) -> list[int]:
        """Addresses for pages of ``lengths`` rows appended as index rows ``first_row, first_row + 1, ...``; the
        last segment is filled first and a new one allocated when a page does not fit. Checks no budget (callers
        ask :meth:`fits` first)."""
        for length in lengths:
            self._check_length(length)
        out = []
        for i, length in enumerate(lengths):
            if not self.used or self.used[-1] + length > self.rows:
                self._alloc(first_row + i)
            seg = len(self.used) - 1
            out.append(seg * self.rows + self.used[seg])
            self.used[seg] += length
        return out

    def runs(self, starts: Sequence[int], lengths: Sequence[int]) -> Iterator[tuple[int, int, int, int]]:
        """``(segment, offset, a, b)`` per stretch of consecutive pages that lie back to back in one segment:
        rows ``a:b`` of the pages packed in this order go to ``tokens[segment][offset : offset + b - a]``."""
        a = 0
        run: list[int] | None = None  # segment, offset, a, b
        for start, length in zip(starts, lengths, strict=True):
            seg, off = divmod(start, self.rows)
            if run is not None and run[0] == seg and run[1] + run[3] - run[2] == off:
                run[3] += length
            else:
                if run is not None:
                    yield run[0], run[1], run[2], run[3]
                run = [seg, off, a, a + length]
            a += length
        if run is not None:
            yield run[0], run[1], run[2], run[3]

    def write(self, segment: int, offset: int, tokens: torch.Tensor, scales: torch.Tensor | None = None) -> None:
        """Rows ``tokens`` (and their ``scales``, int8) at ``offset`` of ``segment``."""
        n = tokens.shape[0]
        self.tokens[segment][offset : offset + n] = tokens
        if self.int8:
            assert scales is not None
            self.scales[segment][offset : offset + n] = scales

    def view(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows of the page at ``start`` (a view) and their scales (int8)."""
        seg, off = divmod(start, self.rows)
        return (
            self.tokens[seg][off : off + length],
            self.scales[seg][off : off + length] if self.int8 else None,
        )

    def compact(self, starts: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """Keep only the pages at ``starts`` (in row order; they become rows ``0, 1, ...``): copy them into new
        segments, releasing each old segment once its pages are copied. Returns their new addresses.

        The old segments are dropped from this object only: a snapshot that holds views of them keeps them valid
        (and alive) until it is gone."""
        # From here on only ``held`` refers to the old segments: releasing one is setting its entry to None.
        held: list[torch.Tensor | None] = list(self.tokens)
        held_scales: list[torch.Tensor | None] = list(self.scales)
        self.tokens, self.scales, self.used, self.first_row = [], [], [], []
        released = 0  # old segments before this one are released

        def release(upto: int) -> None:
            nonlocal released
            for i in range(released, upto):
                held[i] = None
                if held_scales:
                    held_scales[i] = None
            released = max(released, upto)

        def copy(run: list[int]) -> None:
            src_seg, src_off, dst_seg, dst_off, n = run
            src = held[src_seg]
            assert src is not None
            self.tokens[dst_seg][dst_off : dst_off + n] = src[src_off : src_off + n]
            if self.int8:
                src_scales = held_scales[src_seg]
                assert src_scales is not None
                self.scales[dst_seg][dst_off : dst_off + n] = src_scales[src_off : src_off + n]

        out: list[int] = []
        run: list[int] | None = None  # src segment, src offset, dst segment, dst offset, rows
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            src_seg, src_off = divmod(start, self.rows)
            if src_seg > released:
                if run is not None:
                    copy(run)
                    run = None
                release(src_seg)  # every page of the segments before this one is copied
            (dst,) = self.place([length], row)
            dst_seg, dst_off = divmod(dst, self.rows)
            if (
                run is not None
                and run[0] == src_seg
                and run[1] + run[4] == src_off
                and run[2] == dst_seg
                and run[3] + run[4] == dst_off
            ):
                run[4] += length
            else:
                if run is not None:
                    copy(run)
                run = [src_seg, src_off, dst_seg, dst_off, length]
            out.append(dst)
        if run is not None:
            copy(run)
        release(len(held))
        return out

    def parts(self) -> list[tuple[torch.Tensor, torch.Tensor | None, int, int]]:
        """``(tokens, scales, first_row, used)`` per segment, the tensors being views of the used rows."""
        return [
            (t[:u], self.scales[i][:u] if self.int8 else None, self.first_row[i], u)
            for i, (t, u) in enumerate(zip(self.tokens, self.used, strict=True))
        ]
