"""Idefics3 page preprocessing as tensor operations: the same batch as ``ColIdefics3Processor.process_images``.

The reference (transformers' PIL image processor, which the checkpoint was trained with) does, per page:

1. resize so the longest edge is ``size["longest_edge"]`` (2048), LANCZOS, the other edge rounded
   down and then up to even (``resize_output_size``);
2. resize up to multiples of the tile (512) edge (``split_size``), LANCZOS;
3. cut ``rows x cols`` tiles and append a global view, the whole image resized to one tile;
4. rescale by 1/255 and normalize; pad every page to the batch's largest tile count with zero
   tiles (``pixel_attention_mask`` 0 there);
5. expand ``<image>`` in the prompt into ``<row_i_col_j>`` + 64 ``<image>`` per tile and the global
   view, tokenize, left-pad.

Here steps 1-3 use :mod:`indexer.models.resample` (Pillow's LANCZOS as matrix products: float64 on a
GPU, bit-exact; float32 on the CPU, a level off at a few pixels), pages of the same size are
processed together, and step 5 tokenizes each tile layout once and reuses the ids. The layout
arithmetic below mirrors transformers' ``image_processing_pil_idefics3`` line by line: float
division, ``int()`` truncation, even rounding and ``ceil`` in the same order, so tile counts and
token ids are identical.

>>> resize_output_size(1650, 1275, 2048)  # a Letter page at 150 dpi
(2048, 1582)
>>> split_size(2048, 1582, 512)
(2048, 2048)
>>> tile_layout(1650, 1275, 2048, 512)
(4, 4)
>>> tile_layout(50, 10000, 2048, 512), tile_layout(1, 1, 2048, 512)
((1, 4), (4, 4))
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.models.resample import FILTERS

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_IMAGE_SIZE = 4096  # transformers' Idefics3 upper bound on any edge


def resize_output_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Step 1: ``get_resize_output_image_size`` (rescale to ``longest_edge``, then keep under 4096)."""
    aspect_ratio = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = longest_edge
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    height, width = max(height, 1), max(width, 1)
    aspect_ratio = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width = MAX_IMAGE_SIZE
        height = int(width / aspect_ratio)
    elif height > width and height > MAX_IMAGE_SIZE:
        height = MAX_IMAGE_SIZE
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def split_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Step 2: ``resize_for_vision_encoder`` (both edges up to multiples of ``tile``)."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


def tile_layout(height: int, width: int, longest_edge: int, tile: int) -> tuple[int, int]:
    """``(rows, cols)`` of tiles for an image of this size; ``(0, 0)`` means one global view only."""
    h, w = split_size(*resize_output_size(height, width, longest_edge), tile)
    if h > tile or w > tile:
        return (h - tile) // tile + 1, (w - tile) // tile + 1
    return 0, 0


def whole_tiles(longest_edge: int, tile: int) -> int:
    """A page longest edge rounded to whole tiles (at least one, at most Idefics3's 4096 px).

    >>> whole_tiles(1536, 512), whole_tiles(1000, 512), whole_tiles(100, 512), whole_tiles(9000, 512)
    (1536, 1024, 512, 4096)
    """
    return min(max(tile, round(longest_edge / tile) * tile), MAX_IMAGE_SIZE // tile * tile)


def view_count(height: int, width: int, image_processor: Any) -> int:
    """Images the model sees for one page: ``rows * cols`` tiles plus the global view, or 1 unsplit."""
    if not image_processor.do_image_splitting:
        return 1
    tile = image_processor.max_image_size["longest_edge"]
    rows, cols = tile_layout(height, width, image_processor.size["longest_edge"], tile)
    return rows * cols + 1 if rows else 1


class TensorPreprocessor:
    """``processor.process_images(images)`` with torch ops; ``device`` runs the resizes there.

    ``processor`` is the loaded ``ColIdefics3Processor`` (its image processor settings, tokenizer,
    prompt and ``image_seq_len`` are read from it, never re-typed). Thread-safe: ingest calls it
    from a pool of threads.
    """

    def __init__(
        self,
        processor: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        chunk: int | None = None,
        exact: bool = True,
    ) -> None:
        import torch

        self.processor = processor
        #: False: one antialiased bicubic resize per view straight from the page (torch's uint8 kernels) instead of
        #: the reference's two LANCZOS passes; same tiles and tokens, pixels only close (``COLSMOL_PREPROCESS=fast``).
        self.exact = exact
        _check_supported(processor.image_processor)
        self.device = torch.device(device)
        # float64 sums of 8-bit values times 22-bit weights are exact; CPUs run float32 twice as fast.
        self.dtype = dtype or (torch.float64 if self.device.type == "cuda" else torch.float32)
        # Pages of one size are resized together, ``chunk`` at a time: a Letter page's intermediates
        # are ~160 MB in float32 (~320 MB in float64), and on the CPU stacking pages gains nothing.
        self.chunk = chunk or (4 if self.device.type == "cuda" else 1)
        self._ids: dict[tuple[int, ...], list[int]] = {}
        self._lock = threading.Lock()
        self._scratch = threading.local()
        # Kernels on one GPU run one after another anyway; letting several threads queue their
        # pages at once would only multiply the scratch memory (~320 MB a Letter page in float64).
        self._device_lock = threading.Lock() if self.device.type != "cpu" else contextlib.nullcontext()

    # The image processor's settings are read on every call, like the reference does.
    @property
    def longest_edge(self) -> int:
        return int(self.processor.image_processor.size["longest_edge"])

    @property
    def tile(self) -> int:
        return int(self.processor.image_processor.max_image_size["longest_edge"])

    @property
    def splitting(self) -> bool:
        return bool(self.processor.image_processor.do_image_splitting)

    @property
    def resample(self) -> int:
        return int(self.processor.image_processor.resample)

    def layout(self, height: int, width: int) -> tuple[int, int]:
        if not self.splitting:
            return 0, 0
        return tile_layout(height, width, self.longest_edge, self.tile)

    def _normalize(self, x: torch.Tensor, out: torch.Tensor) -> None:
        ip = self.processor.image_processor
        mean, std = tuple(np.broadcast_to(ip.image_mean, 3)), tuple(np.broadcast_to(ip.image_std, 3))
        _normalizer(float(ip.rescale_factor), mean, std)(x, out)

    # ------------------------------------------------------------------ images
    def __call__(self, images: Sequence[Image.Image]) -> Any:
        import torch
        from transformers import BatchFeature

        if not images:
            raise ValueError("no images to preprocess")
        _check_supported(self.processor.image_processor)
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        layouts = [self.layout(im.height, im.width) for im in images]
        counts = [r * c + 1 if r else 1 for r, c in layouts]
        n, t, tile = len(images), max(counts), self.tile
        pixel_values = self._output((n, t, 3, tile, tile), torch.float32)
        # bool, not the reference's int64: the model only tests it for nonzero, and a Letter page's mask is 4.5 MB
        # instead of 36 MB on the device.
        mask = self._output((n, t, tile, tile), torch.bool)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((im.height, im.width), []).append(i)
        with self._device_lock:
            for idx in groups.values():
                for start in range(0, len(idx), self.chunk):
                    chunk = idx[start : start + self.chunk]
                    for i, (tiles, glob) in zip(chunk, self._views([images[i] for i in chunk]), strict=True):
                        k = counts[i]
                        if tiles is not None:
                            self._normalize(tiles, out=pixel_values[i, : k - 1].view(tiles.shape))
                        self._normalize(glob, out=pixel_values[i, k - 1])
        for i, k in enumerate(counts):
            pixel_values[i, k:].zero_()
            mask[i, :k].fill_(True)
            mask[i, k:].fill_(False)
        input_ids, attention_mask = self._tokens(layouts)
        return BatchFeature(
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "pixel_values": pixel_values,
                "pixel_attention_mask": mask,
            }
        )

    def _views(self, images: list[Image.Image]) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """Same-size pages -> per page ``(tiles (rows, cols, 3, tile, tile) or None, global (3, tile, tile))``.

        Floats holding 0..255; the tiles are strided views into the resized page (no copy). They
        live in this thread's scratch buffers: use them before the next call.
        """
        import torch

        from indexer.models.resample import resize

        n, h, w, t = len(images), images[0].height, images[0].width, self.tile
        if not self.exact:
            return self._fast_views(images)
        if self.device.type == "cpu":
            return [self._pil_views(im) for im in images]
        new = self._scratch_buffers()
        hwc = torch.from_numpy(np.stack([np.asarray(im) for im in images])).to(self.device)
        x = new((n * 3, h, w))
        x.view(n, 3, h, w).copy_(hwc.permute(0, 3, 1, 2))
        x = resize(x, *resize_output_size(h, w, self.longest_edge), self.resample, new)
        if not self.splitting:
            return [(None, g) for g in resize(x, t, t, self.resample, new).view(n, 3, t, t)]
        x = resize(x, *split_size(x.shape[1], x.shape[2], t), self.resample, new)
        rows, cols = x.shape[1] // t, x.shape[2] // t
        if rows == cols == 1:
            return [(None, g) for g in x.view(n, 3, t, t)]
        tiles = x.view(n, 3, rows, t, cols, t).permute(0, 2, 4, 1, 3, 5)
        glob = resize(x, t, t, self.resample, new).view(n, 3, t, t)
        return list(zip(tiles, glob, strict=True))

    def _pil_views(self, image: Image.Image) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``_views`` of one page on a CPU: Pillow's own resizes, as the reference makes them (uint8, LANCZOS),
        so pixels are equal; the tiles are strided views into the resized page, in uint8 (0..255).

        On a CPU Pillow's integer kernels, which release the GIL, run 2-3x faster than the float32 matrix products
        of :mod:`indexer.models.resample` (which stay for GPUs, where a batch of pages resizes at once)."""
        import torch

        t, resample = self.tile, self.resample

        def resized(im: Image.Image, height: int, width: int) -> Image.Image:
            return im if (im.height, im.width) == (height, width) else im.resize((width, height), resample)

        def chw(im: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.array(im)).permute(2, 0, 1)  # a copy: torch wants writable memory

        page = resized(image, *resize_output_size(image.height, image.width, self.longest_edge))
        if not self.splitting:
            return None, chw(resized(page, t, t))
        page = resized(page, *split_size(page.height, page.width, t))
        rows, cols = page.height // t, page.width // t
        if rows == cols == 1:
            return None, chw(page)
        hwc = torch.from_numpy(np.array(page))
        tiles = hwc.view(rows, t, cols, t, 3).permute(0, 2, 4, 1, 3)
        return tiles, chw(resized(page, t, t))

    def _fast_views(self, images: list[Image.Image]) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """``_views`` approximated: each view resized once from the page (uint8, antialiased bicubic)."""
        import torch
        from torch.nn.functional import interpolate

        h, w, t = images[0].height, images[0].width, self.tile
        # NHWC memory seen as NCHW: torch's fast uint8 resampling kernels work on channels-last images.
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).to(self.device).permute(0, 3, 1, 2)
        glob = interpolate(x, size=(t, t), mode="bicubic", antialias=True)
        if not self.splitting:
            return [(None, g) for g in glob]
        hs, ws = split_size(*resize_output_size(h, w, self.longest_edge), t)
        if hs == ws == t:
            return [(None, g) for g in glob]
        big = interpolate(x, size=(hs, ws), mode="bicubic", antialias=True)  # channels-last: split, do not copy
        tiles = big.unflatten(2, (hs // t, t)).unflatten(4, (ws // t, t)).permute(0, 2, 4, 1, 3, 5)
        return list(zip(tiles, glob, strict=True))

    def _scratch_buffers(self) -> Callable[[tuple[int, ...]], torch.Tensor]:
        """Hands out this thread's three scratch buffers in turn (each grown as needed, then kept).

        Three suffice: a pass never writes the buffer it reads, and the global view's two passes
        leave the buffer holding the tiles alone. On the CPU a fresh 50 MB tensor costs ~12,000
        page faults every time; on CUDA the caching allocator already reuses memory.
        """
        import torch

        if self.device.type == "cuda":
            return lambda shape: torch.empty(shape, dtype=self.dtype, device=self.device)
        slots = self._scratch.__dict__.setdefault("slots", [None, None, None])
        turn = iter(range(1 << 30))

        def new(shape: tuple[int, ...]) -> torch.Tensor:
            i = next(turn) % 3
            numel = math.prod(shape)
            if slots[i] is None or slots[i].numel() < numel:
                slots[i] = self._output((numel,), self.dtype)
            buffer: torch.Tensor = slots[i]
            return buffer[:numel].view(shape)

        return new

    def _output(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A new output tensor; on a Linux CPU backed by transparent huge pages.

        A Letter page's outputs are 88 MB. In 4 KB pages the kernel faults in 22,000 pages to
        hand them over, which took longer than filling them; 2 MB pages cut that 512-fold.
        """
        import mmap

        import torch

        nbytes = math.prod(shape) * dtype.itemsize
        if self.device.type != "cpu" or nbytes < (4 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
            return torch.empty(shape, dtype=dtype, device=self.device)
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
        return torch.frombuffer(buf, dtype=dtype).view(shape)  # the tensor keeps ``buf`` alive

    # ------------------------------------------------------------------ text
    def _tokens(self, layouts: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt with each page's image tokens, tokenized once per layout, left- (or right-) padded."""
        import torch

        rows = [self._prompt_ids(lay) for lay in layouts]
        tok = self.processor.tokenizer
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.int64)
        for i, r in enumerate(rows):
            s = slice(length - len(r), length) if tok.padding_side == "left" else slice(0, len(r))
            ids[i, s] = torch.tensor(r, dtype=torch.int64)
            mask[i, s] = 1
        return ids.to(self.device), mask.to(self.device)

    def _prompt_ids(self, layout: tuple[int, int]) -> list[int]:
        key = (*layout, self.processor.image_seq_len)
        with self._lock:
            if key not in self._ids:
                self._ids[key] = prompt_ids(self.processor, layout)
            return self._ids[key]


def prompt_ids(processor: Any, layout: tuple[int, int]) -> list[int]:
    """Token ids of colpali's page prompt for a page of ``(rows, cols)`` tiles (``(0, 0)``: the global view only)."""
    rows, cols = layout
    expansion = processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)
    before, after = processor.visual_prompt_prefix.split(processor.image_token, 1)
    return list(processor.tokenizer(before + expansion + after)["input_ids"])


def _check_supported(image_processor: Any) -> None:
    off = [k for k in ("do_resize", "do_rescale", "do_normalize", "do_pad") if not getattr(image_processor, k, True)]
    if off:
        raise ValueError(f"the tensor preprocessing path needs {', '.join(off)} on; use the reference processor")
    resample = int(image_processor.resample)
    if resample not in FILTERS:
        raise ValueError(f"the tensor preprocessing path has no resampling filter {resample}; use the reference")


@functools.lru_cache(maxsize=8)
def _normalizer(
    rescale_factor: float, mean_: tuple[float, ...], std_: tuple[float, ...]
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``out = (x * rescale_factor - mean) / std`` for integer-valued ``x``, equal to the reference.

    The reference computes ``float32(x * rescale_factor)`` in float64, then subtracts and divides in
    float32. For the usual 1/255, 0.5, 0.5 the two float32 operations ``x / 127.5 - 1`` give the
    same bits for all 256 inputs (checked here, not assumed); otherwise the reference's own steps are used.
    """
    import torch

    mean = np.asarray(mean_, dtype=np.float32)
    std = np.asarray(std_, dtype=np.float32)
    v = np.arange(256, dtype=np.float64)
    ref = ((v * rescale_factor).astype(np.float32)[None] - mean[:, None]) / std[:, None]
    f = v.astype(np.float32)
    div = np.float32(1.0 / rescale_factor)
    fast = all(np.array_equal(f / (div * std[c]) - mean[c] / std[c], ref[c]) for c in range(3))
    uniform = bool((mean == mean[0]).all() and (std == std[0]).all())
    if fast and uniform:
        d, e = float(div * std[0]), float(mean[0] / std[0])

        def normalize(x: torch.Tensor, out: torch.Tensor) -> None:
            # x / d - e: the same float32 steps as the reference (the integers convert exactly). Three passes over
            # the contiguous output beat one fused addcdiv reading the strided tile views: measured 12 ms against
            # 140-160 ms for a Letter page's 16 tiles on one core.
            out.copy_(x)
            out.div_(d).sub_(e)

        return normalize
    m = torch.from_numpy(mean.copy()).view(3, 1, 1)
    s = torch.from_numpy(std.copy()).view(3, 1, 1)
    exact_div = np.array_equal(f / div, (v * rescale_factor).astype(np.float32))

    def reference_steps(x: torch.Tensor, out: torch.Tensor) -> None:
        x = x.float()
        if exact_div:
            torch.div(x, float(div), out=out)
        else:
            torch.mul(x, rescale_factor, out=out)
        out.sub_(m.to(out.device)).div_(s.to(out.device))

    return reference_steps


def probe_page_inputs(processor: Any) -> dict[str, Any]:
    """One tile of a synthetic text page (the global view alone) with its colpali prompt, as model inputs: what
    the encoder runtime probe (:mod:`indexer.models.runtimes`) times and compares."""
    import torch
    from PIL import Image, ImageDraw

    ip = processor.image_processor
    tile = int(ip.max_image_size["longest_edge"])
    img = Image.new("RGB", (tile, tile), "white")
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(0)
    step = max(2, tile // 32)
    for y in range(step, tile - step, step):  # lines of "text": dark runs of random lengths
        x = step
        while x < tile - step:
            w = int(rng.integers(step, 6 * step))
            draw.rectangle([x, y, min(x + w, tile - step), y + step // 2], fill=(20, 20, 30))
            x += w + step
    draw.rectangle([tile // 2, tile // 3, tile - step, tile // 2], fill=(70, 120, 200))  # a figure
    pixels = np.asarray(img, dtype=np.float32) * float(ip.rescale_factor)
    pixels = (pixels - np.broadcast_to(ip.image_mean, 3)) / np.broadcast_to(ip.image_std, 3)
    ids = prompt_ids(processor, (0, 0))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.int64),
        "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))[None, None],
        "pixel_attention_mask": torch.ones((1, 1, tile, tile), dtype=torch.bool),
    }
