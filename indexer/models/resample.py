"""Pillow's ``Image.resize`` re-done with torch matrix products, on the CPU or the GPU.

Pillow resamples in two separable passes (one per axis). Each output pixel is a weighted sum of
input pixels, with the filter (LANCZOS, BICUBIC, ...) stretched by the scale factor when shrinking,
which is what antialiases. The weights are rounded to 22-bit fixed point, and after each pass the
sum is rounded half up and clipped to 0..255 (8-bit images). This module builds the same integer
weights, as banded ``(out, in)`` matrices cut into dense blocks, and applies them with ``matmul``
in the same pass order, rounding and clipping after each pass:

- in float64 (the GPU) every product and sum is exact, so the result is Pillow's, bit for bit;
- in float32 (the CPU) sums carry a relative error of about 1e-7, so a pixel whose exact value
  lies within that of a rounding boundary can come out one level off (a few pixels a page).

Images are float tensors ``(n, height, width)`` holding integers 0..255 (channels of one or more
images stacked on the first dimension).

>>> import numpy as np
>>> from PIL import Image
>>> img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8))
>>> x = torch.from_numpy(np.asarray(img)).double()[None]
>>> ours = resize(x, 71, 20, Image.Resampling.LANCZOS)[0].to(torch.uint8).numpy()
>>> bool((ours == np.asarray(img.resize((20, 71), Image.Resampling.LANCZOS))).all())
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

PRECISION_BITS = 22  # Pillow's 8-bit passes: 32 - 8 - 2


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    # Pillow writes 0.54f and 0.46f: float constants widened to double.
    return math.sin(x) / x * (float(np.float32(0.54)) + float(np.float32(0.46)) * math.cos(x))


# Pillow's Resampling enum values -> (filter, support)
FILTERS = {1: (_lanczos, 3.0), 2: (_bilinear, 1.0), 3: (_bicubic, 2.0), 4: (_box, 0.5), 5: (_hamming, 1.0)}


@functools.lru_cache(maxsize=256)
def fixed_point_weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for one axis.

    Returns ``bounds (out_size, 2)`` int (first input index, count) and ``weights (out_size, ksize)``
    float64 holding the 22-bit fixed-point integers divided by 2**22 (exact in float32 too).
    Pure Python arithmetic on purpose: same operations, same order, same libm as Pillow's C.
    """
    if resample not in FILTERS:
        raise ValueError(f"resampling filter {resample} has no tensor implementation (use 1-5: LANCZOS...HAMMING)")
    fn, base_support = FILTERS[resample]
    scale = filterscale = float(in_size) / out_size
    filterscale = max(filterscale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    bounds = np.zeros((out_size, 2), dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.float64)
    one = 1 << PRECISION_BITS
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [fn((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        if ww != 0.0:
            k = [w / ww for w in k]
        weights[xx, :xmax] = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in k]
        bounds[xx] = (xmin, xmax)
    return bounds, weights / one


def vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether Pillow runs the vertical pass first for this resize.

    Pillow 13 resizes vertically first when the height shrinks by more than twice as many pixels
    as the width does (found by comparing against it; older Pillow always went horizontal first).
    The order matters because each pass rounds to 8 bits.
    """
    return _pillow_orders_passes() and out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)


@functools.cache
def _pillow_orders_passes() -> bool:
    """Ask the installed Pillow once: a 60x60 -> 58x2 resize comes out differently in the two orders."""
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (60, 60), dtype=np.uint8)
    theirs = np.asarray(Image.fromarray(img).resize((58, 2), Image.Resampling.LANCZOS))
    x = torch.from_numpy(img).double()[None]
    v_then_h = _pass(_pass(x, x.new_empty(1, 2, 60), -2, 1), x.new_empty(1, 2, 58), -1, 1)[0].to(torch.uint8).numpy()
    return bool((v_then_h == theirs).all())


@dataclass(frozen=True)
class _Plan:
    """One axis of one resize as dense blocks of the banded weight matrix."""

    blocks: tuple[tuple[int, int, int, int], ...]  # (out0, out1, in0, in1)
    weights: tuple[torch.Tensor, ...]  # (out1 - out0, in1 - in0) each; transposed for the width axis


@functools.lru_cache(maxsize=64)
def _plan(in_size: int, out_size: int, axis: int, resample: int, dtype: torch.dtype, device: str) -> _Plan:
    bounds, w = fixed_point_weights(in_size, out_size, resample)
    # Blocks of outputs read a window of inputs; the window is dense, so a block costs
    # (block + kernel width) multiply-adds per output. Small blocks waste less, large ones run faster.
    step = float(in_size) / out_size
    block = 32 if step <= 1 else max(8, int(64 / step))
    blocks, mats = [], []
    for o0 in range(0, out_size, block):
        o1 = min(o0 + block, out_size)
        i0 = int(bounds[o0:o1, 0].min())
        i1 = int((bounds[o0:o1, 0] + bounds[o0:o1, 1]).max())
        m = np.zeros((o1 - o0, i1 - i0))
        for r, (xmin, xmax) in enumerate(bounds[o0:o1]):
            m[r, xmin - i0 : xmin - i0 + xmax] = w[o0 + r, :xmax]
        t = torch.from_numpy(m.T.copy() if axis == -1 else m).to(device=device, dtype=dtype)
        blocks.append((o0, o1, i0, i1))
        mats.append(t)
    return _Plan(tuple(blocks), tuple(mats))


def _pass(x: torch.Tensor, out: torch.Tensor, axis: int, resample: int) -> torch.Tensor:
    """One 8-bit pass along ``axis`` (-1 width, -2 height) of ``x (n, h, w)`` into ``out``, rounded."""
    x = x.contiguous()
    n, h, w = x.shape
    plan = _plan(x.shape[axis], out.shape[axis], axis, resample, x.dtype, str(x.device))
    if axis == -1:
        rows, out_rows = x.view(n * h, w), out.view(n * h, out.shape[-1])
        for (o0, o1, i0, i1), m in zip(plan.blocks, plan.weights, strict=True):
            torch.mm(rows[:, i0:i1], m, out=out_rows[:, o0:o1])
    else:
        for c in range(n):
            for (o0, o1, i0, i1), m in zip(plan.blocks, plan.weights, strict=True):
                torch.mm(m, x[c, i0:i1], out=out[c, o0:o1])
    # Pillow's clip8: round half up, clip to 0..255.
    return out.add_(0.5).clamp_(0, 255).floor_()


def resize(
    x: torch.Tensor,
    height: int,
    width: int,
    resample: int,
    new: Callable[[tuple[int, int, int]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x (n, h, w)`` resized to ``(n, height, width)`` as Pillow would (same pass order, same rounding).

    ``new(shape)`` may supply each pass's output tensor (it must not be ``x``), so that callers can
    reuse memory across pages.
    """
    n, h, w = x.shape
    if (h, w) == (height, width):
        return x
    passes = [(width, -1)] if width != w else []
    if height != h:
        v = (height, -2)
        passes = [v, *passes] if vertical_first(w, h, width, height) else [*passes, v]
    for size, axis in passes:
        shape = (n, x.shape[1], size) if axis == -1 else (n, size, x.shape[2])
        x = _pass(x, new(shape) if new is not None else x.new_empty(shape), axis, int(resample))
    return x
