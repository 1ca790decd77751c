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


HEAD_TERMS = ("val_natom", "val_lattice", "val_composition", "val_coord", "val_type")


def _curves(run_dir: Path) -> tuple[pd.Series, pd.Series, dict[str, float]]:
    """Training and validation loss against step, and the last validation's loss terms (:data:`HEAD_TERMS`)."""
    metrics = read_metrics(run_dir)
    train = metrics.dropna(subset=["train_loss"]).set_index("step")["train_loss"]
    validations = metrics.dropna(subset=["val_loss"])
    last = validations.iloc[-1]
    return train, validations.set_index("step")["val_loss"], {k: float(last[k]) for k in HEAD_TERMS if k in last}


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
    {kind: {seed: loss}}, "final_terms": {kind: {seed: {term: loss}}}, "margin", "seed_spread", "decisive",
    "wins_every_seed",
    "curves": {kind: {"train": {step: loss}, "val": {step: loss}}}}`` (curves of the first seed; the terms are
    the last validation's, e.g. the atom-count and lattice heads' losses, which the choice does not use); with
    ``store`` it is written to :func:`choice_path` (atomically).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)
    result = {"dataset": info.label, "profile": profile, "seeds": list(seeds), "curves": {},
              "final_val_loss_per_seed": {}, "final_terms": {}}
    for kind in kinds:
        per_seed, result["final_terms"][kind] = {}, {}
        for seed in seeds:
            out = train(info, profile, Path(run_dir) / kind / f"seed{seed}", resume=resume, rbf=kind, seed=seed,
                        **train_kwargs)
            train_curve, val_curve, result["final_terms"][kind][seed] = _curves(out.run_dir)
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
    basis over seeds (``None`` with one seed), whether the margin exceeds that spread (``decisive``) and whether
    the winner also has the lowest loss of every seed on its own (``wins_every_seed``: runs of one seed share
    their data order, so this paired reading is weaker evidence than ``decisive`` but not nothing)."""
    means = {kind: sum(losses.values()) / len(losses) for kind, losses in per_seed.items()}
    ranked = sorted(means, key=means.get)
    margin = means[ranked[1]] - means[ranked[0]] if len(ranked) > 1 else None
    spreads = [max(v.values()) - min(v.values()) for v in per_seed.values() if len(v) > 1]
    spread = max(spreads) if spreads else None
    decisive = None if spread is None or margin is None else margin > spread
    seeds = set.intersection(*(set(v) for v in per_seed.values()))
    wins_every_seed = all(min(per_seed, key=lambda k: per_seed[k][s]) == ranked[0] for s in seeds)
    return {"winner": ranked[0], "final_val_loss": means, "margin": margin, "seed_spread": spread,
            "decisive": decisive, "wins_every_seed": wins_every_seed}
