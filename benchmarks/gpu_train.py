"""The GPU training script: trains (or continues) the ``cpu`` recipe on one card at a large batch, for at most a
wall-clock session (9 minutes by default), and writes into ``--out``:

* ``run/checkpoints/last.ckpt``: the resumable state (weights, weight average, Adam, schedule, loops); pass it
  back with ``--resume FILE`` to continue the same run in a later session (the budget, ``--max-steps``, must stay);
* ``run/model.pt``: the exported model (weights-only, the weight average), for ``tvcsp reconstruct``/``evaluate``;
* ``gpu_train.json``: the card's name, steps done in this session, steps/s and crystals/s (after the first
  ``--warmup`` steps), the last validation loss, the command's settings, commit and torch version.

The budget is ``--max-steps`` optimiser steps, over which the cosine learning rate decays; the session limit
(``TrainConfig.session_limit_s``) only stops this process, so a run spans sessions without changing its path.
``--tiny`` trains a few steps of the same recipe on the CPU with a handful of crystals in seconds (the test suite
does, so the script cannot rot).

Run on a GPU machine, from the repository root, with the processed split beside the code (``data/cache/perov_5``;
``tvcsp.data`` builds it from the benchmark CSVs on first use):
``python benchmarks/gpu_train.py --out $OUT`` (then ``--resume <previous out>/run/checkpoints/last.ckpt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch

from tvcsp.checkpoint import provenance
from tvcsp.train import read_metrics, train

TINY = dict(max_steps=6, batch_size=4, val_batch_size=4, train_subset=16, val_subset=8, coordination_sample=16,
            probe_every_n_epochs=0, val_every_n_epochs=1, checkpoint_every_n_steps=2)


class StepClock(L.Callback):
    """Wall-clock time of this session's optimiser steps after the first ``warmup`` (compilation, caches)."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.start, self.end = warmup, 0, None, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def rate(self) -> float | None:
        timed = self.steps - self.warmup
        return timed / (self.end - self.start) if timed > 0 and self.end > self.start else None


def last_val_loss(run_dir: Path) -> float | None:
    """The run's latest validation loss, if it has logged one."""
    try:
        val = read_metrics(run_dir)["val_loss"].dropna()
    except (FileNotFoundError, KeyError):
        return None
    return float(val.iloc[-1]) if len(val) else None


def settings(args: argparse.Namespace) -> dict:
    """``train`` overrides: the cpu recipe at the command's batch and budget, or the tiny CPU mode."""
    if args.tiny:
        return {**TINY, "accelerator": "cpu", "devices": 1, "session_limit_s": args.minutes * 60}
    return dict(max_steps=args.max_steps, batch_size=args.batch_size, val_batch_size=args.batch_size,
                probe_every_n_epochs=args.probe_every_n_epochs, num_workers=args.num_workers,
                accelerator="gpu", devices=1, session_limit_s=args.minutes * 60, ema_decay=0.999)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_train")))
    parser.add_argument("--resume", type=Path, default=None, help="a last.ckpt of an earlier session to continue")
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--minutes", type=float, default=9.0, help="this session's wall-clock limit for training")
    parser.add_argument("--max-steps", type=int, default=20_000, help="the run's budget (the cosine schedule's)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--probe-every-n-epochs", type=int, default=25)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--tiny", action="store_true", help="CPU, a few crystals and steps: seconds")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --tiny")
    run_dir = args.out / "run"
    if args.resume is not None:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if args.resume.resolve() != (run_dir / "checkpoints" / "last.ckpt").resolve():
            shutil.copy(args.resume, run_dir / "checkpoints" / "last.ckpt")
    warmup = 1 if args.tiny else args.warmup
    clock = StepClock(warmup)
    overrides = settings(args)
    started = time.perf_counter()
    result = train(args.dataset, "cpu", run_dir, resume=args.resume is not None, progress=not args.tiny,
                   predict_property=True, callbacks=[clock], **overrides)
    rate = clock.rate()
    val = last_val_loss(run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    report = {
        "labels": {**provenance(), "torch": torch.__version__, "tiny": args.tiny, "dataset": args.dataset,
                   "profile": "cpu", "settings": overrides},
        "global_step": state["global_step"], "steps_this_session": clock.steps,
        "steps_per_s": rate, "crystals_per_s": rate * overrides["batch_size"] if rate else None,
        "wall_s": time.perf_counter() - started, "last_val_loss": val,
        "model": str(result.model_path), "resumable": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_train.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
