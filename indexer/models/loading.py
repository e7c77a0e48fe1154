"""Loading model weights from a hub id or a local directory, with one clear error when that fails.

The hub may be unreachable (air-gapped servers, this project's own CI). Then a missing model must
give a ``ModelUnavailable`` naming the model and the setting that points at a local copy, never a
traceback from deep inside huggingface_hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from indexer.errors import ModelUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_local(model_id: str | Path) -> bool:
    return Path(model_id).expanduser().is_dir()


def adapter_base(model_id: str | Path) -> str | None:
    """The base model of a PEFT adapter checkpoint, or None when ``model_id`` holds merged weights.

    For a hub id this needs the hub (or its local cache); failures mean "not an adapter we can see",
    and the merged-weights load that follows gives the clear error.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        cfg = path / "adapter_config.json"
        if not cfg.is_file():
            return None
        return str(json.loads(cfg.read_text())["base_model_name_or_path"])
    try:
        from huggingface_hub import hf_hub_download

        cfg_file = hf_hub_download(str(model_id), "adapter_config.json")
    except Exception:  # noqa: BLE001 - any failure means "cannot see an adapter config"
        return None
    return str(json.loads(Path(cfg_file).read_text())["base_model_name_or_path"])


#: Hub checkpoints that are PEFT adapters: what else must be downloaded for them to load offline.
KNOWN_ADAPTERS = {
    "vidore/colSmol-256M": "vidore/ColSmolVLM-Instruct-256M-base",
    "vidore/colSmol-500M": "vidore/ColSmolVLM-Instruct-500M-base",
}
_HUB_STATE: dict[str, bool] = {}


def _offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection, asked once per process.

    Without this, a machine without network spends minutes in the hub client's retries before the
    one-line error (measured: 4 minutes and 203 lines for ``scripts/demo.sh`` offline).
    """
    if "reachable" not in _HUB_STATE:
        import socket
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
            _HUB_STATE["reachable"] = True
        except OSError:
            _HUB_STATE["reachable"] = False
    return _HUB_STATE["reachable"]


def _cached(model_id: str) -> bool:
    """Whether the local Hugging Face cache has this hub model (its config), so it loads without the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(model_id, name), str) for name in ("config.json", "adapter_config.json")
        )
    except Exception:  # noqa: BLE001 - a malformed id or cache: treat as not cached
        return False


def unavailable(model_id: str | Path, what: str, env_var: str, why: str) -> ModelUnavailable:
    """The one-line error for a model that cannot be had, with how to get it."""
    base = KNOWN_ADAPTERS.get(str(model_id))
    also = (
        f" {model_id} is a PEFT adapter: also download its base model {base} and point the adapter's "
        "adapter_config.json base_model_name_or_path at it (README: Models without hub access)."
        if base
        else ""
    )
    return ModelUnavailable(
        f"cannot load the {what} {str(model_id)!r}: it is not a local directory and {why}. Download it on a "
        f"machine with access (`huggingface-cli download {model_id} --local-dir DIR`) and set {env_var}=DIR, "
        f"or fill the Hugging Face cache (HF_HOME) and retry.{also}"
    )


def load_or_explain(load: Callable[[], T], model_id: str | Path, what: str, env_var: str) -> T:
    """Run ``load``; turn 'not found / cannot download' failures into one ModelUnavailable line.

    A hub id that is not in the local cache is refused at once when the hub does not answer (one quick
    probe), instead of after the hub client's retries.
    """
    if not is_local(model_id) and not _offline() and not _cached(str(model_id)) and not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise unavailable(model_id, what, env_var, f"the Hugging Face hub ({endpoint}) cannot be reached")
    try:
        return load()
    except ModelUnavailable:
        raise
    except (OSError, ValueError) as exc:  # hub errors subclass OSError or ValueError
        if is_local(model_id) and not _looks_missing(exc):
            raise
        raise unavailable(
            model_id, what, env_var, f"could not be downloaded from the Hugging Face hub ({type(exc).__name__})"
        ) from exc


def _looks_missing(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("does not appear to have", "no such file", "not found", "can't load", "cannot find"))


def from_pretrained_kwargs(**extra: Any) -> dict[str, Any]:
    """Never run code from a checkpoint: colsmol's models are all in transformers itself."""
    return {"trust_remote_code": False, **{k: v for k, v in extra.items() if v is not None}}


class LazyWeights:
    """A processor and a model loaded together, once, on first use, under a lock (threads may race to it).

    ``load_processor`` and ``load_model`` run inside :func:`load_or_explain`, so a model that is neither local
    nor downloadable becomes one ``ModelUnavailable`` naming ``env_var``.
    """

    def __init__(
        self,
        model_id: str,
        what: str,
        env_var: str,
        load_processor: Callable[[], Any],
        load_model: Callable[[], Any],
    ) -> None:
        self.model_id = model_id
        self.what = what
        self.env_var = env_var
        self._load_processor = load_processor
        self._load_model = load_model
        self._lock = threading.Lock()
        self._pair: tuple[Any, Any] | None = None

    @property
    def loaded(self) -> bool:
        return self._pair is not None

    def get(self) -> tuple[Any, Any]:
        """``(processor, model)``, loading them on the first call."""
        pair = self._pair
        if pair is None:
            with self._lock:
                if self._pair is None:
                    processor = load_or_explain(self._load_processor, self.model_id, self.what, self.env_var)
                    model = load_or_explain(self._load_model, self.model_id, self.what, self.env_var)
                    self._pair = (processor, model)
                pair = self._pair
        return pair

    def clear(self) -> None:
        with self._lock:
            self._pair = None


def weights_identity(model_id: str) -> str:
    """The model id, plus the size and mtime of each file in a local checkpoint directory (and its adapter's base):
    new weights at the same path must not reuse a converted graph or a choice measured on the old ones."""
    parts = [model_id]
    dirs = [Path(model_id).expanduser()]
    base = adapter_base(model_id) if dirs[0].is_dir() else None
    if base is not None:
        parts.append(base)
        dirs.append(Path(base).expanduser())
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file():
                    st = f.stat()
                    parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
