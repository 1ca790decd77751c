"""Real data as a "generator" for uniqueness and novelty: held-out splits against the training split, timed.

Scores the crystals of ``--held-out`` (one or more splits, concatenated in the order given) with
:func:`tvcsp.metrics.held_out_novelty_uniqueness` against the whole training split: every constructed held-out
crystal is a candidate, and the numbers are the yardstick of docs/metrics.md#novelty-and-uniqueness. Prints the
fractions, the counts and the wall-clock and CPU seconds.

``--resample N`` scores instead a generator that draws exactly the benchmark's own distribution: N crystals drawn
uniformly with replacement from all of its splits (train included, seeded by ``--seed``). Its novelty against
train is the share a perfect model of the data would reach (about the non-training share of the data, when no
held-out crystal matches a training one), and its uniqueness what N draws from a finite set allow: the yardstick
for a generator's novelty and uniqueness.

Run: ``python benchmarks/novelty_eval.py --dataset perov_5 --held-out test --workers 2 [--json out.json]`` or
``python benchmarks/novelty_eval.py --resample 10000 --workers 1``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import held_out_novelty_uniqueness, write_metrics_json


def split_arrays(dataset: str, split: str, data_dir: str | None) -> list:
    """Every crystal of a split as :class:`~tvcsp.metrics.CrystalArrays`."""
    return load_split(dataset, split, data_dir=data_dir, progress=False).to_crystal_arrays()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers count once the pool has closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--held-out", nargs="+", default=["test"], help="splits scored against train (test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--resample", type=int, default=None,
                        help="score N draws with replacement from all splits instead (the data's own distribution)")
    parser.add_argument("--seed", type=int, default=0, help="seeds --resample")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the result (with labels) to this JSON file")
    args = parser.parse_args(argv)

    info = get_dataset(args.dataset)
    train = split_arrays(args.dataset, "train", args.data_dir)
    if args.resample:
        everything = [c for split in ("train", "val", "test") for c in split_arrays(args.dataset, split, args.data_dir)]
        draws = np.random.default_rng(args.seed).integers(len(everything), size=args.resample)
        held_out, args.held_out = [everything[i] for i in draws], [f"{args.resample} draws from train+val+test"]
    else:
        held_out = [c for split in args.held_out for c in split_arrays(args.dataset, split, args.data_dir)]
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = held_out_novelty_uniqueness(held_out, train, workers=args.workers)
    timings = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
    u, n = out["uniqueness"], out["novelty"]
    print(f"{info.label}: {'+'.join(args.held_out)} ({len(held_out)} crystals) against train ({len(train)})")
    print(f"uniqueness {u['fraction']:.4f} ({u['n_unique']} of {u['n']})")
    print(f"novelty    {n['fraction']:.4f} ({n['n_novel']} of {n['n']}); reduced formula not in train: "
          f"{n['n_new_formula'] / n['n']:.4f} ({n['n_new_formula']})")
    print(f"{timings['wall_s']:.0f} s wall, {timings['cpu_s']:.0f} s CPU on {args.workers} workers")
    if args.json:
        labels = {"dataset": args.dataset, "held_out": args.held_out, "reference": "train split", "seed": args.seed,
                  "n_held_out": len(held_out), "n_train": len(train), "workers": args.workers}
        write_metrics_json(args.json, {**out, "timings": timings}, labels)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
