"""Model checkpoints: plain dicts (weights, config, dataset statistics, scalers, version, provenance) that load
with ``torch.load(weights_only=True)``, written atomically, with clear errors when they do not fit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from . import __version__
from .data import DatasetStats, Scalers
from .vae import CrystalVAE, VAEConfig

__all__ = ["CHECKPOINT_FORMAT", "CheckpointMismatchError", "cpu_name", "load_model", "provenance", "save_model"]

CHECKPOINT_FORMAT = "tvcsp-model-1"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model, config or dataset it is loaded for."""


def provenance() -> dict[str, str]:
    """Package version, git commit of the source checkout (if any) and compute device, for labelling results."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    return {"tvcsp_version": __version__, "commit": commit, "device": device}


def cpu_name() -> str:
    """E.g. ``'CPU: AMD EPYC 7B13, 2 cores'`` (model name from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} cores"


def save_model(path: str | os.PathLike, model: CrystalVAE, dataset: str, extra: dict | None = None) -> Path:
    """Write ``model`` with everything needed to rebuild it; atomic (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "dataset": dataset,
        "config": model.config.to_dict(),
        "stats": model.stats.to_dict(),
        "scalers": model.scalers.to_dict(),
        "state_dict": model.state_dict(),
        "provenance": provenance(),
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", dataset: str | None = None
) -> CrystalVAE:
    """Rebuild a :class:`CrystalVAE` from :func:`save_model`'s file (``weights_only=True``).

    Raises:
        CheckpointMismatchError: not a tvcsp checkpoint, another format, another dataset than ``dataset``, or
            weights that do not fit the stored config.
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointMismatchError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    if dataset is not None and state["dataset"] != dataset:
        raise CheckpointMismatchError(f"{path}: trained on {state['dataset']!r}, not {dataset!r}")
    model = CrystalVAE(
        VAEConfig.from_dict(state["config"]), DatasetStats.from_dict(state["stats"]),
        Scalers.from_dict(state["scalers"]),
    )
    load_state(model, state["state_dict"], str(path))
    return model


def load_state(model: torch.nn.Module, state_dict: dict, origin: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointMismatchError(f"{origin}: weights do not fit the model ({details})")
    model.load_state_dict(state_dict)
