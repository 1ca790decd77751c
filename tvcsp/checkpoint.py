"""Model checkpoints: plain dicts (weights, config, dataset statistics, scalers, version, provenance) that load
with ``torch.load(weights_only=True)``, written atomically, with clear errors when they do not fit."""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import subprocess
import warnings
import zipfile
from pathlib import Path

import torch

from ._version import __version__
from .data import DatasetStats, Scalers
from .errors import UserInputError
from .prior import load_prior, prior_path
from .vae import CrystalVAE, VAEConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "cpu_name",
    "device_name",
    "load_model",
    "model_fingerprint",
    "model_from_training_checkpoint",
    "model_state",
    "provenance",
    "read_checkpoint",
    "save_model",
]

CHECKPOINT_FORMAT = "tvcsp-model-1"


class CheckpointMismatchError(UserInputError):
    """A checkpoint that cannot be used: an unreadable (truncated, corrupt) or foreign file, or one that does
    not fit the model, config or dataset it is loaded for. The message starts with the file's path."""


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


def device_name(device: torch.device | str) -> str:
    """The device a computation ran on, named for a label: ``'cpu (CPU: AMD EPYC 7B13, 2 cores)'``,
    ``'cuda:0 (NVIDIA H100 80GB HBM3)'``; other device types by their torch name. Unlike
    :func:`provenance`'s ``device`` (the machine's accelerator, if any), this is what was used."""
    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu ({cpu_name()})"
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the model's state dict: identifies the weights independently of file paths."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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


def _gist(err: BaseException) -> str:
    """The telling part of a torch.load error in one line: the refused global of a weights-only load, else the
    first sentence (torch's messages run over many lines)."""
    text = " ".join(str(err).split())
    refused = text.find("Unsupported global: ")
    if refused >= 0:
        return text[refused:].split(" was not an allowed global")[0]
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The dict :func:`save_model` wrote (``torch.load(weights_only=True)``), checked to be a tvcsp model file.

    Raises:
        FileNotFoundError / IsADirectoryError: no such file.
        CheckpointMismatchError: the file cannot be read (truncated or corrupt), holds objects a weights-only
            load refuses (e.g. a Lightning training checkpoint), or is not in :data:`CHECKPOINT_FORMAT`.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointMismatchError(
            f"{path}: not a tvcsp model file (a weights-only load refuses it: {_gist(err)}); training writes "
            "the model file as model.pt in its run folder"
        ) from err
    except Exception as err:  # torch reports damaged files as RuntimeError, EOFError, KeyError, ...
        if zipfile.is_zipfile(path):
            raise CheckpointMismatchError(f"{path}: cannot load the checkpoint ({_gist(err)})") from err
        raise CheckpointMismatchError(
            f"{path}: unreadable checkpoint, truncated or corrupt (not a zip archive as torch.save writes)"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointMismatchError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    return state


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", dataset: str | None = None
) -> CrystalVAE:
    """Rebuild a :class:`CrystalVAE` from :func:`save_model`'s file (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: an unreadable (truncated, corrupt) file, not a tvcsp checkpoint, another format,
            another dataset than ``dataset``, or weights that do not fit the stored config; the message names
            the file.
    """
    state = read_checkpoint(path, map_location)
    if dataset is not None and state["dataset"] != dataset:
        raise CheckpointMismatchError(f"{path}: trained on {state['dataset']!r}, not {dataset!r}")
    model = CrystalVAE(
        VAEConfig.from_dict(state["config"]), DatasetStats.from_dict(state["stats"]),
        Scalers.from_dict(state["scalers"]),
    )
    load_state(model, state["state_dict"], str(path))
    _attach_prior_beside(model, Path(path), map_location)
    return model


def _attach_prior_beside(model: CrystalVAE, path: Path, map_location) -> None:
    """Attach the learned priors stored beside the model file (``<stem>.prior.pt``, and the composition-conditioned
    ``<stem>.conditional_prior.pt``), those present and fitted on these weights; a prior of other weights is skipped
    with a warning."""
    for conditional in (False, True):
        found = prior_path(path, conditional)
        if not found.is_file():
            continue
        try:
            model.attach_prior(load_prior(found, map_location, model_fingerprint=model_fingerprint(model)))
        except ValueError as err:
            warnings.warn(f"learned prior not used: {err}", stacklevel=3)


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


def model_state(lightning_state: dict) -> dict:
    """The :class:`CrystalVAE` weights in a training checkpoint's ``state_dict``: the moving average (``ema.*``)
    when the run kept one, else the trained weights (``model.*``)."""
    prefix = "ema." if any(k.startswith("ema.") for k in lightning_state) else "model."
    return {k.removeprefix(prefix): v for k, v in lightning_state.items() if k.startswith(prefix)}


def model_from_training_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                                   ) -> tuple[CrystalVAE, dict]:
    """The :class:`CrystalVAE` held by a Lightning training checkpoint of :func:`tvcsp.train.train` (``last.ckpt``
    or ``best.ckpt``; ``weights_only=True``; the weight average when the run kept one), in eval mode, and the
    checkpoint's ``tvcsp`` labels plus its ``global_step`` and ``epoch``. Export it with :func:`save_model` (e.g. a
    run stopped before it wrote model.pt).

    Raises:
        CheckpointMismatchError: not a tvcsp training checkpoint (no ``tvcsp`` labels).
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    meta = state.get("tvcsp") if isinstance(state, dict) else None
    if not meta or "state_dict" not in state:
        raise CheckpointMismatchError(f"{path}: not a tvcsp training checkpoint (no 'tvcsp' labels)")
    model = CrystalVAE(VAEConfig.from_dict(meta["config"]), DatasetStats.from_dict(meta["stats"]),
                       Scalers.from_dict(meta["scalers"]))
    model.load_state_dict(model_state(state["state_dict"]))
    return model.eval(), {**meta, "global_step": state["global_step"], "epoch": state["epoch"]}
