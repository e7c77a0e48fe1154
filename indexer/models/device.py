"""Device and dtype choice, shared by the encoder, the token index and the generator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is a ConfigError."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use COLSMOL_DEVICE=cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available here; use COLSMOL_DEVICE=cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cuda, cpu or mps")
    return torch.device(name)


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (fast and safe for these models), fp32 elsewhere (CPU bf16 is slow, MPS bf16 patchy)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def attn_implementation(device: torch.device) -> str | None:
    return "sdpa" if device.type == "cuda" else None
