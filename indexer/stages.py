"""Where an ingest's time goes: seconds per stage, in two views that answer different questions.

Ingest is a pipeline (a render thread, preprocessing threads, the encoder, a writer with image threads), so
its stages overlap and their own run times do not add up to the wall time. :class:`StageClock` keeps both:

- ``wall``: the wall time split by what the encoder thread, which drives the pipeline, was doing or waiting
  for (``load`` and ``calibrate`` the model, waiting on ``render`` for a page or on ``preprocess`` for a batch,
  ``encode``, waiting on the ``write`` stage, ``setup`` and ``prune`` around them). These add up to the wall
  time: the stage with the most seconds is the one that holds the pipeline back.
- ``busy``: how long each stage's own work ran, summed over the threads that ran it (``render``, ``preprocess``,
  ``encode``, ``images`` (WebP page and thumbnail), ``store`` (point writes and document records), ``load``,
  ``calibrate``). With several cores these add up to more than the wall time.

>>> clock = StageClock()
>>> with clock.wall("encode"):
...     pass
>>> clock.add_busy("images", 0.5)
>>> sorted(clock.snapshot()["busy"]) == ["images"] and list(clock.snapshot()["wall"]) == ["encode"]
True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

#: The order stages are shown in; a stage that never ran is left out.
WALL_STAGES = ("setup", "text", "load", "calibrate", "render", "preprocess", "encode", "write", "prune")
BUSY_STAGES = ("load", "calibrate", "render", "text", "preprocess", "encode", "images", "store")


class StageClock:
    """Thread-safe seconds per stage (see the module docstring). One clock per ingest run."""

    def __init__(self) -> None:
        self._wall: dict[str, float] = {}
        self._busy: dict[str, float] = {}
        self._lock = threading.Lock()

    def add_wall(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._wall[stage] = self._wall.get(stage, 0.0) + max(0.0, seconds)

    def add_busy(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._busy[stage] = self._busy.get(stage, 0.0) + max(0.0, seconds)

    @contextmanager
    def wall(self, stage: str) -> Iterator[None]:
        """Time the block as wall time of ``stage`` (only on the thread that drives the pipeline)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add_wall(stage, time.perf_counter() - t)

    @contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        """Time the block as ``stage``'s own work (any thread)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add_busy(stage, time.perf_counter() - t)

    @contextmanager
    def both(self, stage: str) -> Iterator[None]:
        """Work done on the driving thread: counts in both views."""
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.add_wall(stage, dt)
            self.add_busy(stage, dt)

    def timed_iter(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items``, each ``next`` timed as ``stage``'s own work (a generator that renders as it goes)."""
        it = iter(items)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.add_busy(stage, time.perf_counter() - t)
            yield item

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{"wall": {stage: s}, "busy": {stage: s}}``, stages in :data:`WALL_STAGES` / :data:`BUSY_STAGES` order."""
        with self._lock:
            return {"wall": _ordered(self._wall, WALL_STAGES), "busy": _ordered(self._busy, BUSY_STAGES)}


def _ordered(times: dict[str, float], order: tuple[str, ...]) -> dict[str, float]:
    known = {k: times[k] for k in order if k in times}
    return {**known, **{k: v for k, v in sorted(times.items()) if k not in known}}


def format_stages(stages: dict[str, dict[str, float]]) -> str:
    """One line for a terminal: ``"wall: render 1.2 s, encode 3.4 s; busy: images 0.8 s, ..."``.

    >>> format_stages({"wall": {"encode": 3.41}, "busy": {"encode": 3.41, "images": 0.8}})
    'time by stage (wall): encode 3.4 s; work per stage (busy, threads overlap): encode 3.4 s, images 0.8 s'
    """
    wall = ", ".join(f"{k} {v:.1f} s" for k, v in stages.get("wall", {}).items())
    busy = ", ".join(f"{k} {v:.1f} s" for k, v in stages.get("busy", {}).items())
    return f"time by stage (wall): {wall}; work per stage (busy, threads overlap): {busy}"
