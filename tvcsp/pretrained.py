"""Models trained by the project and shipped with it: ``models/<name>.pt`` plus a model card ``models/<name>.md``.

:func:`load_pretrained` finds a shipped model by name (``"perov_5"``) and loads it weights-only;
:func:`pretrained_path` says where it is without loading it. The folders searched, first match wins:

1. ``$TVCSP_MODELS_DIR``, when set;
2. a source checkout's top-level ``models/`` (this package run from the checkout or installed editable);
3. the installed package data ``tvcsp/pretrained_models/`` — ``pip install .`` (or a wheel) copies the models,
   priors, model cards and evaluations of ``models/`` there (not ``models/resume/``), so an installed package
   needs no checkout and no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["PretrainedNotFoundError", "available_pretrained", "default_checkpoint", "load_pretrained",
           "pretrained_path"]


class PretrainedNotFoundError(FileNotFoundError):
    """No shipped model of that name in any of the searched folders."""


_PACKAGE = Path(__file__).resolve().parent
INSTALLED_MODELS = _PACKAGE / "pretrained_models"
"""Where an installed (non-editable) package keeps the shipped models: ``<site-packages>/tvcsp/pretrained_models``."""


def _folders() -> list[Path]:
    folders = [Path(os.environ["TVCSP_MODELS_DIR"])] if os.environ.get("TVCSP_MODELS_DIR") else []
    if (_PACKAGE.parent / "pyproject.toml").is_file():  # a source checkout: not a stray models/ in site-packages
        folders.append(_PACKAGE.parent / "models")
    return [*folders, INSTALLED_MODELS]


def available_pretrained() -> list[str]:
    """Names of the shipped models found (``*.pt`` in the searched folders, not the ``*.prior.pt`` and
    ``*.conditional_prior.pt`` priors beside them)."""
    return sorted({p.stem for folder in _folders() if folder.is_dir() for p in folder.glob("*.pt")
                   if not p.name.endswith((".prior.pt", ".conditional_prior.pt"))})


def pretrained_path(name: str = "perov_5") -> Path:
    """Path of the shipped model ``name``.

    Raises:
        PretrainedNotFoundError: none of the folders holds ``<name>.pt`` (the message lists what is there).
    """
    for folder in _folders():
        path = folder / f"{name}.pt"
        if path.is_file():
            return path
    found = ", ".join(available_pretrained()) or "none"
    raise PretrainedNotFoundError(
        f"no shipped model {name!r} in {', '.join(str(f) for f in _folders())} (available: {found})"
    )


def load_pretrained(name: str = "perov_5", map_location: str | torch.device = "cpu"):
    """The shipped :class:`~tvcsp.vae.CrystalVAE` ``name`` in eval mode, e.g. ``load_pretrained("perov_5")``, with
    its learned latent priors (``<name>.prior.pt``, ``<name>.conditional_prior.pt`` beside the model) attached when
    present.

    Its model card is ``<name>.md`` beside the model (``pretrained_path(name).with_suffix(".md")``; in the
    repository ``models/<name>.md``): data, recipe, compute, metrics and limitations.
    """
    from .checkpoint import load_model

    return load_model(pretrained_path(name), map_location=map_location).eval()


def default_checkpoint(dataset: str, fallback: str | os.PathLike) -> Path:
    """The model notebooks and commands use when none is named: the shipped model of ``dataset`` if there is
    one, else ``fallback`` (e.g. the quick model ``runs/<dataset>_quick_seed0/model.pt``)."""
    try:
        return pretrained_path(dataset)
    except PretrainedNotFoundError:
        return Path(fallback)
