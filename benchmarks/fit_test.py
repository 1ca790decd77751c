"""Fit test: can the model reconstruct the crystals it was trained on?

Trains on ``--n`` perov_5 training crystals for at most ``--minutes`` of wall-clock time, then reconstructs
those same crystals with CDVAE's StructureMatcher settings (stol 0.5, angle_tol 10°, ltol 0.3) under several
decoding variants, and prints a table. A model that cannot pass this is broken, not under-trained.

Run: ``python benchmarks/fit_test.py --minutes 15 [--profile cpu] [--set lr=1e-3 --set batch_size=32]``.
Writes ``<run-dir>/fit_test.json`` with the settings, training summary, timings and the table.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time
from pathlib import Path

import torch

from tvcsp.checkpoint import cpu_name, model_from_training_checkpoint, provenance
from tvcsp.data import get_dataset, load_split
from tvcsp.diagnostics import denoising_by_level, latent_usage, probe_reconstruction
from tvcsp.sampling import SamplerSettings
from tvcsp.train import _subset, train

VARIANTS = {  # name: (SamplerSettings type rule, probe_reconstruction keyword arguments)
    "sample z, CDVAE types": ({}, dict(latent="sample")),
    "sample z, composition prior": ({"composition_prior": True}, dict(latent="sample")),
    "mu, composition prior": ({"composition_prior": True}, dict(latent="mu")),
    "sample z, composition kept": ({"keep_composition": True}, dict(latent="sample")),
    "mu, composition kept": ({"keep_composition": True}, dict(latent="mu")),
    "mu, true types forced": ({}, dict(latent="mu", force_atom_types=True)),
}


def duration(minutes: float) -> str:
    """Minutes → Lightning's ``DD:HH:MM:SS``."""
    seconds = round(minutes * 60)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="training crystals (also the probe set)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--run-dir", default="runs/fit_test")
    parser.add_argument("--n-step-each", type=int, default=20, help="sampler steps per noise level")
    parser.add_argument("--num-levels", type=int, default=None, help="noise levels visited (all 50)")
    parser.add_argument("--update", default="langevin", help="sampler update: langevin or ancestral")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training: evaluate the run in --run-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    overrides = {"train_subset": args.n, "val_subset": args.n, "val_every_n_epochs": 50, "max_epochs": 100_000,
                 "max_time": duration(args.minutes), **parse_overrides(args.set)}
    train_s = None
    if not args.evaluate_only:
        start = time.perf_counter()
        train("perov_5", args.profile, run_dir, resume=args.resume, progress=False, **overrides)
        train_s = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    info = get_dataset("perov_5")
    crystals = _subset(load_split(info, "train", progress=False), args.n, summary["train"]["seed"])
    model = last_model(run_dir)
    sampler = SamplerSettings(n_step_each=args.n_step_each, num_levels=args.num_levels, update=args.update)
    calls = sampler.decoder_calls(model.sigmas)
    print(f"{summary['steps']} training steps; sampler {sampler}: {calls} decoder calls per crystal", flush=True)
    table = {}
    for name in args.variants:
        t0 = time.perf_counter()
        types, options = VARIANTS[name]
        probe = probe_reconstruction(model, crystals, dataclasses.replace(sampler, **types), batch_size=args.n,
                                     **options)
        table[name] = {**probe, "seconds": time.perf_counter() - t0}
        print(f"{name:32s} match {probe['match_rate']:.3f}  rmse {probe['rmse'] or float('nan'):.4f}  "
              f"composition {probe['composition_accuracy']:.3f}  natoms {probe['natom_accuracy']:.3f}  "
              f"failures {probe['failures']}", flush=True)
    report = {
        "dataset": info.label, "split": "train", "n": args.n, "profile": args.profile, "overrides": overrides,
        "train_seconds": train_s, "steps": summary["steps"], "epochs": summary["epochs_run"],
        "decoder_calls": calls, "threads": args.threads, "machine": cpu_name(), "latent_usage": {
            k: v for k, v in latent_usage(model, crystals).items() if k != "kl_per_dim"},
        "denoising": denoising_by_level(model, crystals), "reconstruction": table, **provenance(),
    }
    print(json.dumps({k: report[k] for k in ("train_seconds", "steps", "latent_usage", "denoising")}, indent=1))
    tag = f"{args.update}_{calls}" if args.evaluate_only else ""
    (run_dir / f"fit_test{'_' + tag if tag else ''}.json").write_text(json.dumps(report, indent=1))


def last_model(run_dir: Path):
    """The model at the end of training (the fit test asks about the crystals it trained on), in eval mode."""
    return model_from_training_checkpoint(run_dir / "checkpoints" / "last.ckpt")[0]


if __name__ == "__main__":
    main()
