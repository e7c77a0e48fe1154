"""Choosing how a model runs on this machine: each candidate timed once, checked against the reference, cached.

CPUs differ more than GPUs do: int8 pays off with VNNI, bf16 with AVX512-BF16 or AMX, OpenVINO's kernels on
some CPUs and not others. So the choice is measured, not guessed, the way the Triton MaxSim kernel is trusted
only after a self-check (``retriever.maxsim.fused_or_none``):

1. ``candidates[0]`` is the reference (fp32 eager); it must build.
2. ``requested="auto"``: a cached choice for this ``key`` (CPU model and flags, torch version, model id, ...)
   is used as is. Otherwise every candidate is built, run once on the probe input (warm-up: kernel choice,
   one-time compilation), checked against the reference's output (``fidelity`` at least ``min_fidelity``),
   and timed; of those that pass, the most faithful within ``tolerance`` of the fastest wins, and is written
   to the cache file.
3. ``requested=NAME`` builds that candidate without probing (the user asked for it).

Measuring is on a budget (``budget_probes``: that many reference probe runs' worth of time, at least
:data:`MIN_BUDGET_S`, which covers building a candidate when the model is tiny), so a
first run with a small model, or a small first ingest, never pays more for the choice than for its work.
A candidate whose measurement would not fit what is left (its probe runs, plus ``Candidate.prepare_s``, e.g.
a conversion not cached yet) stays *pending*: the choice is made among those measured, cached with the pending
names, and a later load measures them when its budget allows (the cached choice is used meanwhile).

A candidate that fails to build, to run, or to match the reference is skipped with a logged reason; at
worst the reference runs. Nothing here knows what a model is: :mod:`indexer.models.vision_runtimes` supplies the
Idefics3 candidates (encoder today; the SmolVLM generator shares the architecture).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - the probe's output

AUTO = "auto"
#: Bumped when the probe or the candidates change meaning, so that old cached choices are re-measured.
SELECTION_VERSION = 1
#: The smallest measuring budget, in seconds, whatever the probe takes.
MIN_BUDGET_S = 2.0


@dataclass(frozen=True)
class Candidate(Generic[T]):
    """One way to run the model: ``build()`` returns the runnable thing (or raises: unavailable here)."""

    name: str
    build: Callable[[], T]
    describe: str = ""
    #: Seconds that building it takes now beyond a probe run (a conversion not cached yet), for the budget.
    prepare_s: Callable[[], float] | None = None


@dataclass
class Trial:
    """What the probe saw of one candidate: seconds for one probe run, fidelity to the reference, or why not."""

    name: str
    seconds: float | None = None
    fidelity: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None


@dataclass
class Choice(Generic[T]):
    """The candidate in use: its name, the built value, why it was chosen, and the trials behind it."""

    name: str
    value: T
    reason: str
    trials: list[Trial] = field(default_factory=list)
    cached: bool = False
    #: Candidates not measured yet: they did not fit the budget (a later load measures them).
    pending: list[str] = field(default_factory=list)
    #: Seconds this load spent measuring (0 when the cached choice was used as is).
    seconds: float = 0.0


class ChoiceCache:
    """Choices on disk, one JSON file: ``{digest of key: {"key", "choice", "trials", "at"}}``.

    A record is found only under the digest of an identical key, so a new torch, another CPU or another
    model re-measures. Writes replace the file atomically; an unreadable file counts as empty.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("runtime cache %s unreadable (%s); measuring again", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        record = self._read().get(self.digest(key))
        same = isinstance(record, dict) and record.get("key") == json.loads(json.dumps(key, default=str))
        return record if same else None

    def put(self, key: dict[str, Any], choice: str, trials: Sequence[Trial], pending: Sequence[str] = ()) -> None:
        if self.path is None:
            return
        with self._lock:
            data = self._read()
            data[self.digest(key)] = {
                "key": key,
                "choice": choice,
                "trials": [asdict(t) for t in trials],
                "pending": list(pending),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as exc:  # a read-only data dir must not fail the ingest: measure again next time
                log.warning("cannot write the runtime cache %s: %s", self.path, exc)


def machine_key(**extra: Any) -> dict[str, Any]:
    """What a measured choice depends on besides the model: CPU model and flags, core count, torch and its threads."""
    import torch

    cpu, flags = _cpu_identity()
    return {
        "cpu": cpu,
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:12],
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "selection": SELECTION_VERSION,
        **extra,
    }


def _cpu_identity() -> tuple[str, str]:
    """``(model name, flags)`` from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = v.strip()
                elif k in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(v.split()))
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def choose(
    candidates: Sequence[Candidate[T]],
    probe: Callable[[T], O],
    fidelity: Callable[[O, O], float],
    *,
    requested: str = AUTO,
    min_fidelity: float = 0.998,
    cache: ChoiceCache | None = None,
    key: dict[str, Any] | None = None,
    repeats: int = 2,
    tolerance: float = 0.10,
    what: str = "model",
    budget_probes: float | None = None,
) -> Choice[T]:
    """Pick the candidate to run; see the module docstring.

    ``probe(value)`` runs the probe input through a built candidate (``repeats`` timed runs, the fastest counts);
    ``fidelity(reference_output, output)`` scores the agreement (1.0 = identical). ``budget_probes`` bounds the
    measuring to that many reference probe runs' worth of seconds (None: measure every candidate)."""
    if not candidates:
        raise ValueError("no candidates")
    by_name = {c.name: c for c in candidates}
    reference = candidates[0]
    if requested != AUTO:
        if requested not in by_name:
            raise ValueError(f"unknown {what} runtime {requested!r}; choose from auto, {', '.join(by_name)}")
        cand = by_name[requested]
        try:
            return Choice(cand.name, cand.build(), "asked for")
        except Exception as exc:  # noqa: BLE001 - an unavailable runtime falls back, never fails the caller
            log.warning("%s runtime %s unavailable (%s); using %s", what, cand.name, _why(exc), reference.name)
            return Choice(reference.name, reference.build(), f"{cand.name} unavailable: {_why(exc)}")
    key = key if key is not None else machine_key()
    key = {**key, "candidates": list(by_name)}
    record = cache.get(key) if cache is not None else None
    if record is not None and record.get("choice") in by_name:
        cand = by_name[record["choice"]]
        trials = [Trial(**t) for t in record.get("trials", []) if isinstance(t, dict)]
        pending = [by_name[n] for n in record.get("pending", []) if n in by_name]
        try:
            cached = Choice(cand.name, cand.build(), "cached", trials, cached=True, pending=[c.name for c in pending])
        except Exception as exc:  # noqa: BLE001
            log.warning("cached %s runtime %s no longer builds (%s); measuring again", what, cand.name, _why(exc))
        else:
            if pending and _fits(pending[:1], trials, reference.name, repeats, budget_probes, cached=True):
                # Measure what an earlier budget left out; the earlier trials still count (same machine key).
                started = time.perf_counter()
                more = _measure(
                    [reference, *pending],
                    probe,
                    fidelity,
                    min_fidelity,
                    repeats,
                    tolerance,
                    what,
                    budget_probes,
                    earlier=trials,
                    current=cached,
                )
                more.seconds = time.perf_counter() - started
                if cache is not None:
                    cache.put(key, more.name, more.trials, more.pending)
                return more
            log.info("%s runtime %s (cached choice for this machine)", what, cand.name)
            return cached
    started = time.perf_counter()
    choice = _measure(candidates, probe, fidelity, min_fidelity, repeats, tolerance, what, budget_probes)
    choice.seconds = time.perf_counter() - started
    if cache is not None:
        cache.put(key, choice.name, choice.trials, choice.pending)
    return choice


def _cost(cand: Candidate[Any], probe_s: float, repeats: int) -> float:
    """Seconds measuring ``cand`` should take: a warm-up and ``repeats`` timed probe runs, plus its preparation."""
    return (1 + repeats) * probe_s + (cand.prepare_s() if cand.prepare_s is not None else 0.0)


def _fits(
    pending: Sequence[Candidate[Any]],
    trials: Sequence[Trial],
    reference: str,
    repeats: int,
    budget_probes: float | None,
    cached: bool,
) -> bool:
    """Whether measuring ``pending`` (and, for a cached choice, the reference again) fits the budget."""
    if budget_probes is None:
        return True
    probe_s = next((t.seconds for t in trials if t.name == reference and t.seconds), None)
    if probe_s is None:
        return True  # nothing to go by: measure
    need = sum(_cost(c, probe_s, repeats) for c in pending) + ((1 + repeats) * probe_s if cached else 0.0)
    return need <= _budget_s(budget_probes, probe_s)


def _budget_s(budget_probes: float, probe_s: float) -> float:
    return max(MIN_BUDGET_S, budget_probes * probe_s)


def _measure(
    candidates: Sequence[Candidate[T]],
    probe: Callable[[T], O],
    fidelity: Callable[[O, O], float],
    min_fidelity: float,
    repeats: int,
    tolerance: float,
    what: str,
    budget_probes: float | None = None,
    earlier: Sequence[Trial] = (),
    current: Choice[T] | None = None,
) -> Choice[T]:
    """Measure ``candidates`` (the reference first) within the budget. ``earlier`` trials (a cached record) and
    the ``current`` cached choice's built value take part in the pick."""
    started = time.perf_counter()
    reference = candidates[0]
    ref_value = reference.build()
    ref_out = probe(ref_value)  # warm-up, and the output every other candidate is compared with
    ref_s = _time(probe, ref_value, repeats)
    new = {c.name for c in candidates}
    trials = [Trial(reference.name, ref_s, 1.0)] + [t for t in earlier if t.name not in new]
    values: dict[str, Any] = {reference.name: ref_value}
    if current is not None:
        values[current.name] = current.value
    budget_s = None if budget_probes is None else _budget_s(budget_probes, ref_s)
    pending: list[str] = []
    for cand in candidates[1:]:
        if budget_s is not None and _cost(cand, ref_s, repeats) > budget_s - (time.perf_counter() - started):
            pending.append(cand.name)
            continue
        trial = Trial(cand.name)
        trials.append(trial)
        try:
            value = cand.build()
            trial.fidelity = float(fidelity(ref_out, probe(value)))
            if not trial.fidelity >= min_fidelity:  # NaN fails too
                trial.error = f"fidelity {trial.fidelity:.5f} < {min_fidelity}"
                continue
            trial.seconds = _time(probe, value, repeats)
        except Exception as exc:  # noqa: BLE001 - one broken candidate must not stop the others
            trial.error = _why(exc)
            continue
        values[cand.name] = value
    name = _pick([t for t in trials if t.name in values], tolerance)
    for other in [n for n in values if n != name]:
        del values[other]  # the losers' memory goes now
    summary = "; ".join(
        f"{t.name} {t.seconds:.3f}s (fidelity {t.fidelity:.5f})" if t.ok else f"{t.name}: {t.error}" for t in trials
    )
    if pending:
        summary += f"; not measured yet (over the {budget_probes:g}-probe budget): {', '.join(pending)}"
    log.info("%s runtime %s chosen on this machine: %s", what, name, summary)
    return Choice(
        name, values[name], f"fastest within {tolerance:.0%}, most faithful: {summary}", trials, pending=pending
    )


def _pick(trials: Sequence[Trial], tolerance: float) -> str:
    """The most faithful of the candidates within ``tolerance`` of the fastest (one timing on a shared machine is
    noisy: a few percent must not buy a less faithful runtime); the reference is one of them.

    >>> _pick([Trial("fp32", 3.0, 1.0), Trial("int8", 1.65, 0.9987), Trial("ov-bf16", 1.75, 0.99997)], 0.10)
    'ov-bf16'
    >>> _pick([Trial("fp32", 3.0, 1.0), Trial("int8", 1.0, 0.9987), Trial("ov-bf16", 1.75, 0.99997)], 0.10)
    'int8'
    """
    ok = [t for t in trials if t.ok]
    fastest = min(t.seconds or 0.0 for t in ok)
    close = [t for t in ok if (t.seconds or 0.0) <= fastest * (1 + tolerance)]
    return max(close, key=lambda t: (t.fidelity or 0.0, -(t.seconds or 0.0))).name


def _time(probe: Callable[[T], Any], value: T, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        probe(value)
        times.append(time.perf_counter() - t)
    return min(times)  # least disturbed by other work on a shared machine


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def token_cosine_min(reference: Any, output: Any, mask: Any | None = None) -> float:
    """Smallest per-token cosine similarity between two ``(..., dim)`` tensors (rows where ``mask`` is set).

    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> round(token_cosine_min(a, torch.tensor([[1.0, 0.0], [1.0, 1.0]])), 4)
    0.7071
    """
    import torch

    a, b = reference.float().reshape(-1, reference.shape[-1]), output.float().reshape(-1, output.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).bool()
        a, b = a[keep], b[keep]
    if not torch.isfinite(b).all():
        return float("nan")
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
