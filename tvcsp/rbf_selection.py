"""The paper's adaptive choice of radial basis (App. B.4, docs/model.md#choosing-the-basis): train otherwise-identical
models that differ only in the encoder's basis, compare their loss curves, and store the winner for ``rbf="auto"``.

It builds on :mod:`tvcsp.train`, which owns :func:`choice_path` and :func:`auto_rbf` (``make_configs(rbf="auto")``
reads the stored winner); train never imports this module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .data import DatasetInfo, get_dataset
from .rbf import RBF_KINDS
from .train import auto_rbf, choice_path, read_metrics, train

__all__ = ["auto_rbf", "choice_path", "compare_rbfs"]


def _curves(run_dir: Path) -> tuple[pd.Series, pd.Series]:
    metrics = read_metrics(run_dir)
    train = metrics.dropna(subset=["train_loss"]).set_index("step")["train_loss"]
    val = metrics.dropna(subset=["val_loss"]).set_index("step")["val_loss"]
    return train, val


def compare_rbfs(
    dataset: str | DatasetInfo,
    run_dir: str | os.PathLike,
    profile: str = "quick",
    kinds: tuple[str, ...] = RBF_KINDS,
    store: bool = True,
    **train_kwargs,
) -> dict:
    """Train one model per basis with identical settings and seed; pick the lowest final validation loss.

    Returns ``{"winner", "final_val_loss": {kind: float}, "curves": {kind: {"train": {step: loss},
    "val": {step: loss}}}}``; with ``store`` it is written to :func:`choice_path` (atomically).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)
    result = {"dataset": info.label, "profile": profile, "curves": {}, "final_val_loss": {}}
    for kind in kinds:
        out = train(info, profile, Path(run_dir) / kind, rbf=kind, **train_kwargs)
        train_curve, val_curve = _curves(out.run_dir)
        result["curves"][kind] = {"train": train_curve.to_dict(), "val": val_curve.to_dict()}
        result["final_val_loss"][kind] = float(val_curve.iloc[-1])
    result["winner"] = min(result["final_val_loss"], key=result["final_val_loss"].get)
    if store:
        path = choice_path(info.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    return result
