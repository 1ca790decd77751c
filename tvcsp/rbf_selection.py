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

__all__ = ["auto_rbf", "choice_path", "compare_rbfs", "verdict"]


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
    seeds: tuple[int, ...] = (0,),
    store: bool = True,
    resume: bool = False,
    **train_kwargs,
) -> dict:
    """Train one model per basis and seed with otherwise identical settings; pick the lowest mean final
    validation loss.

    Runs go to ``run_dir/<kind>/seed<seed>``; ``resume=True`` continues unfinished ones (a finished run ends at
    once), so a long comparison survives interruption. With several seeds the result says whether it is
    ``decisive``: the winner's margin over the runner-up exceeds the largest spread between seeds of one basis.

    Returns ``{"dataset", "profile", "seeds", "winner", "final_val_loss": {kind: mean}, "final_val_loss_per_seed":
    {kind: {seed: loss}}, "margin", "seed_spread", "decisive", "curves": {kind: {"train": {step: loss}, "val":
    {step: loss}}}}`` (curves of the first seed); with ``store`` it is written to :func:`choice_path` (atomically).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)
    result = {"dataset": info.label, "profile": profile, "seeds": list(seeds), "curves": {},
              "final_val_loss_per_seed": {}}
    for kind in kinds:
        per_seed = {}
        for seed in seeds:
            out = train(info, profile, Path(run_dir) / kind / f"seed{seed}", resume=resume, rbf=kind, seed=seed,
                        **train_kwargs)
            train_curve, val_curve = _curves(out.run_dir)
            if seed == seeds[0]:
                result["curves"][kind] = {"train": train_curve.to_dict(), "val": val_curve.to_dict()}
            per_seed[seed] = float(val_curve.iloc[-1])
        result["final_val_loss_per_seed"][kind] = per_seed
    result |= verdict(result["final_val_loss_per_seed"])
    if store:
        path = choice_path(info.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    return result


def verdict(per_seed: dict[str, dict[int, float]]) -> dict:
    """Winner, mean loss per basis, the winner's margin over the runner-up, the largest spread (max − min) of one
    basis over seeds (``None`` with one seed) and whether the margin exceeds that spread."""
    means = {kind: sum(losses.values()) / len(losses) for kind, losses in per_seed.items()}
    ranked = sorted(means, key=means.get)
    margin = means[ranked[1]] - means[ranked[0]] if len(ranked) > 1 else None
    spreads = [max(v.values()) - min(v.values()) for v in per_seed.values() if len(v) > 1]
    spread = max(spreads) if spreads else None
    decisive = None if spread is None or margin is None else margin > spread
    return {"winner": ranked[0], "final_val_loss": means, "margin": margin, "seed_spread": spread,
            "decisive": decisive}
