"""Quality against cost of the sampler: reconstruction match rate and RMSE of the same test crystals (``--split
val``: validation crystals, for choosing between models) under sampler settings from CDVAE's 5,000 decoder calls
per crystal down to a handful.

Each setting is ``update:levels:steps`` (``langevin:50:100`` = CDVAE: 50 levels × 100 steps). All settings decode
the same seeded subset of ``--limit`` perov_5 crystals of the split from the same sampled latents (CDVAE's
protocol) with the type rule given by ``--types``. Prints a markdown table (decoder calls, match rate, RMSE, seconds per
crystal, crystals/s) and writes ``<out>/quality_cost_<split>.json`` labelled with dataset/split, model, seed,
device and commit.

Run: ``python benchmarks/quality_cost.py models/perov_5.pt --limit 200 --settings langevin:50:20 ancestral:10:2``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from evaluate_model import test_subset

from tvcsp.checkpoint import load_model, provenance
from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import evaluate_reconstruction
from tvcsp.sampling import UPDATES, steps_per_sample
from tvcsp.tasks import reconstruct, to_structures

DEFAULT_SETTINGS = ["langevin:50:20", "langevin:50:5", "ancestral:50:5", "ancestral:50:1", "ancestral:20:1",
                    "ancestral:10:1", "ancestral:5:1"]
TYPE_RULES = {"cdvae": {}, "prior": {"composition_prior": True}, "kept": {"keep_composition": True}}


def parse_setting(text: str) -> dict:
    """``update:levels:steps`` → sampler keyword arguments."""
    try:
        update, levels, steps = text.split(":")
        setting = {"update": update, "num_levels": int(levels), "n_step_each": int(steps)}
    except ValueError:
        raise SystemExit(f"setting {text!r}: expected update:levels:steps, e.g. langevin:50:100") from None
    if update not in UPDATES:
        raise SystemExit(f"setting {text!r}: update must be one of {UPDATES}")
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--limit", type=int, default=200, help="crystals of the split (seeded subset; 0: all)")
    parser.add_argument("--split", choices=["val", "test"], default="test",
                        help="test (report) or val (choosing between models)")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="update:levels:steps ...")
    parser.add_argument("--types", choices=list(TYPE_RULES), default="kept", help="type rule (kept)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes for the matcher")
    parser.add_argument("--out", type=Path, default=None, help="default runs/quality_cost_<model name>")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.settings]
    torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / f"quality_cost_{args.model.stem}"
    info = get_dataset("perov_5")
    model = load_model(args.model, dataset=info.name).eval()
    crystals = test_subset(load_split(info, args.split, progress=False), args.limit, args.seed)
    rows = []
    for setting in settings:
        tag = "{update}_{num_levels}x{n_step_each}".format(**setting)
        start = time.perf_counter()
        samples = reconstruct(model, crystals, out / f"{args.split}_{args.types}_{tag}",
                              batch_size=args.batch_size, seed=args.seed, dataset=info.name, split=args.split,
                              checkpoint=str(args.model), progress=False, **setting, **TYPE_RULES[args.types])
        seconds = time.perf_counter() - start
        metrics = evaluate_reconstruction(to_structures(samples), to_structures(samples, ground_truth=True),
                                          workers=args.workers, progress=False)
        calls = steps_per_sample(model.sigmas, setting["n_step_each"], num_levels=setting["num_levels"])
        rows.append({**setting, "decoder_calls": calls, "match_rate": metrics["match_rate"],
                     "rmse": metrics["rmse"], "seconds_per_crystal": seconds / len(crystals),
                     "crystals_per_s": len(crystals) / seconds})
        print(f"{tag:20s} {calls:5d} calls  match {metrics['match_rate']:.3f}  rmse {metrics['rmse']}  "
              f"{seconds / len(crystals):.3f} s/crystal", flush=True)
    labels = {"dataset": info.label, "split": args.split, "n": len(crystals), "model": str(args.model),
              "types": args.types, "latent": "sampled z (CDVAE)", "seed": args.seed, "threads": args.threads,
              **provenance()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"quality_cost_{args.split}.json").write_text(json.dumps({"labels": labels, "rows": rows}, indent=1))
    print(f"\n{info.label} {args.split}, {len(crystals)} crystals, types {args.types}, {labels['device']}, "
          f"commit {labels['commit']}\n")
    print("| update | levels | steps/level | decoder calls | match | RMSE | s/crystal | crystals/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rmse = "–" if r["rmse"] is None else f"{r['rmse']:.4f}"
        print(f"| {r['update']} | {r['num_levels']} | {r['n_step_each']} | {r['decoder_calls']:,} | "
              f"{r['match_rate']:.3f} | {rmse} | {r['seconds_per_crystal']:.3f} | {r['crystals_per_s']:.1f} |")


if __name__ == "__main__":
    main()
