"""Crystal structure prediction with DiffCSP's protocol: every test crystal's composition is given, the model
predicts ``--n-samples`` structures for it (tvcsp.predict), and they are matched with StructureMatcher (stol 0.5,
angle_tol 10, ltol 0.3) under CDVAE's validity rule.

* ``--n-samples 1``: top-1 match rate and RMSE (DiffCSP's "1 sample"), normally over the whole test split;
* ``--n-samples 20 --limit 1000``: "any of 20" over the first 1,000 test crystals (match if any candidate is valid
  and matches; RMSE the best matched), plus the top-ranked candidate's match rate.

Resumable: each batch of compositions is decoded, matched and written to ``<out>/batches/`` before the next;
rerun the same command to finish. Parallel: ``--processes K`` runs K copies of itself, copy i taking the batches
b with b mod K = i (``--shard i/K``, also usable by hand across machines), one thread each; every batch keeps its
own seed, so the numbers do not depend on K. Writes ``<out>/csp.json`` (labelled: dataset/split/subset, model, seed,
settings, sampler, prior, commit, device, threads/workers, timings) and prints one line. Validation data choose
the settings (``--split val``); the test split reports them.

Run: ``python benchmarks/csp_eval.py models/perov_5.pt --n-samples 1 --out runs/csp_top1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from evaluate_model import reduced_formulas
from tqdm.auto import tqdm

from tvcsp.checkpoint import device_name, load_model, provenance
from tvcsp.data import batch_ranges, load_split
from tvcsp.metrics import any_of_n_metrics, evaluate_crystals, match_rms, split_crystal_arrays, to_jsonable
from tvcsp.predict import PREDICT_PRIORS, PredictSettings, parse_target, pool_used, predict_batch, prior_used
from tvcsp.sampling import SamplerSettings
from tvcsp.tasks import batch_seed, model_fingerprint


def targets_of(crystals, model) -> list:
    """The composition of every crystal as a :class:`~tvcsp.predict.CompositionTarget` (counts as in the cell)."""
    return [parse_target(crystals.to_structure(i).composition, model) for i in range(len(crystals))]


def run_batch(model, targets, gts, n: int, settings: PredictSettings, seed: int, workers: int) -> dict:
    """Predict, evaluate and match one batch; per test crystal its candidates' rms (``None`` = no match),
    validity and ranking score, in rank order."""
    out = predict_batch(model, targets, n, settings, seed=seed)
    preds = split_crystal_arrays(out["lengths"], out["angles"], out["num_atoms"], out["atom_types"],
                                 out["frac_coords"])
    pred_c = evaluate_crystals(preds, workers=workers, progress=False)
    gt_c = evaluate_crystals(gts, workers=workers, progress=False)
    rms = match_rms([p.structure for p in pred_c], [gt_c[i // n].structure for i in range(len(pred_c))],
                    workers=workers, progress=False)
    scores = out["score"].tolist()
    return {"rms": [rms[i * n:(i + 1) * n] for i in range(len(gts))],
            "valid": [[p.valid for p in pred_c[i * n:(i + 1) * n]] for i in range(len(gts))],
            "score": [scores[i * n:(i + 1) * n] for i in range(len(gts))],
            "gt_valid": [g.valid for g in gt_c]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--limit", type=int, default=0, help="the first N crystals of the split (0: all)")
    parser.add_argument("--n-samples", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=200, help="compositions per batch")
    parser.add_argument("--pool", type=int, help="prior latents per candidate (default: 1 from the conditional prior, "
                        "else 16)")
    parser.add_argument("--latent-steps", type=int, default=PredictSettings().latent_steps)
    parser.add_argument("--ranking", default=PredictSettings().ranking)
    parser.add_argument("--prior", choices=PREDICT_PRIORS, help="default: the model's conditional prior, else its "
                        "learned prior, else N(0, I)")
    parser.add_argument("--sampler", default="fast", choices=["fast", "cdvae"])
    parser.add_argument("--update", choices=["langevin", "ancestral", "ddim"], help="replaces the preset's update")
    parser.add_argument("--n-step-each", type=int, help="replaces the preset's steps per noise level")
    parser.add_argument("--num-levels", type=int, help="replaces the preset's noise levels visited (all 50)")
    parser.add_argument("--refine", type=int, default=PredictSettings().refine, help="rounds of re-encoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for decoding")
    parser.add_argument("--workers", type=int, default=1, help="processes for evaluation and matching")
    parser.add_argument("--processes", type=int, default=1, help="run K shards in parallel, then collect")
    parser.add_argument("--shard", default="0/1", help="I/K: only the batches b with b mod K = I")
    args = parser.parse_args()
    if args.processes > 1:
        return run_shards(args)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model = load_model(args.model).eval()
    sampler = SamplerSettings.preset(args.sampler)
    changes = {"update": args.update, "n_step_each": args.n_step_each, "num_levels": args.num_levels}
    sampler = dataclasses.replace(sampler, **{k: v for k, v in changes.items() if v is not None})
    settings = PredictSettings(pool=args.pool, latent_steps=args.latent_steps, ranking=args.ranking,
                               refine=args.refine, prior=args.prior, sampler=sampler)
    crystals = load_split(model_dataset(args.model), args.split)
    if args.limit:
        crystals = crystals.select(slice(0, args.limit))
    targets, gts = targets_of(crystals, model), crystals.to_crystal_arrays()
    run = {"split": args.split, "limit": args.limit, "n_samples": args.n_samples, "batch_size": args.batch_size,
           "seed": args.seed, "settings": settings.to_dict(), "model": model_fingerprint(model)}
    (args.out / "batches").mkdir(parents=True, exist_ok=True)
    run_file = args.out / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()) != json.loads(json.dumps(run)):
        raise SystemExit(f"{args.out} holds a run with other settings; use another --out")
    run_file.write_text(json.dumps(run, indent=1))

    ranges = batch_ranges(len(crystals), args.batch_size)
    shard, shards = parse_shard(args.shard)
    for b, r in enumerate(tqdm(ranges, desc=f"csp batches (shard {args.shard})")):
        path = args.out / "batches" / f"batch_{b:05d}.json"
        if path.is_file() or b % shards != shard:
            continue
        t0 = time.perf_counter()
        result = run_batch(model, [targets[i] for i in r], [gts[i] for i in r], args.n_samples, settings,
                           batch_seed(args.seed, b), args.workers)
        result["seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(result))
    missing = [b for b in range(len(ranges)) if not (args.out / "batches" / f"batch_{b:05d}.json").is_file()]
    if missing:
        print(f"shard {args.shard} done; {len(missing)} batches of other shards missing: rerun without --shard "
              "once they are written")
        return
    parts = [json.loads((args.out / "batches" / f"batch_{b:05d}.json").read_text()) for b in range(len(ranges))]
    rms = [x for p in parts for x in p["rms"]]
    valid = [x for p in parts for x in p["valid"]]
    train_formulas = set(reduced_formulas(load_split(model_dataset(args.model), "train", progress=False)))
    unseen = [i for i, f in enumerate(reduced_formulas(crystals)) if f not in train_formulas]
    report = {
        "any_of_n": any_of_n_metrics(rms, valid),
        "top_1": any_of_n_metrics([x[:1] for x in rms], [v[:1] for v in valid]),
        "unseen_formula": {  # no training crystal has the composition (on perov_5: neither cation order)
            "any_of_n": any_of_n_metrics([rms[i] for i in unseen], [valid[i] for i in unseen]),
            "top_1": any_of_n_metrics([rms[i][:1] for i in unseen], [valid[i][:1] for i in unseen]),
        } if unseen else {"n": 0},
        "per_candidate_match": float(np.mean([r is not None and ok for xs, vs in zip(rms, valid, strict=True)
                                              for r, ok in zip(xs, vs, strict=True)])),
        "candidates_valid": float(np.mean([ok for vs in valid for ok in vs])),
        "ceiling": float(np.mean([g for p in parts for g in p["gt_valid"]])),
        "seconds_in_batches": sum(p["seconds"] for p in parts),
        "seconds_this_call": time.perf_counter() - start,
    }
    labels = {"dataset": crystals.meta.get("dataset"), **run, "subset": f"first {len(crystals)} of {args.split}",
              "prior": prior_used(model, args.prior), "pool": pool_used(model, settings),
              "checkpoint": args.model, "device": device_name("cpu"), "threads": args.threads,
              "workers": args.workers, "processes": 1, **provenance()}
    (args.out / "csp.json").write_text(json.dumps(to_jsonable({"labels": labels, "metrics": report}), indent=1))
    a, t = report["any_of_n"], report["top_1"]
    print(f"{labels['subset']}, {args.n_samples} samples: top-1 {t['match_rate']:.4f} (RMSE {t['rmse']}), "
          f"any of {args.n_samples} {a['match_rate']:.4f} (RMSE {a['rmse']}); "
          f"{report['seconds_in_batches']:.0f} s in batches → {args.out / 'csp.json'}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/K"`` → ``(I, K)`` with 0 ≤ I < K."""
    try:
        shard, shards = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard takes I/K (e.g. 0/2), got {text!r}") from None
    if not 0 <= shard < shards:
        raise SystemExit(f"--shard {text}: need 0 ≤ I < K")
    return shard, shards


def run_shards(args) -> None:
    """Run ``args.processes`` shards of this script as subprocesses (one thread each), then collect."""
    base = [sys.executable, __file__, *strip_option(strip_option(sys.argv[1:], "--processes"), "--shard")]
    start = time.perf_counter()
    shards = [subprocess.Popen([*base, "--shard", f"{i}/{args.processes}"]) for i in range(args.processes)]
    if any([p.wait() for p in shards]):  # a list: wait for every shard before judging
        raise SystemExit("a shard failed; rerun the same command to finish (written batches are kept)")
    subprocess.run([*base, "--shard", "0/1"], check=True)  # every batch exists: this only collects
    path = args.out / "csp.json"
    report = json.loads(path.read_text())
    report["labels"]["processes"] = args.processes
    report["metrics"]["wall_seconds_all_processes"] = time.perf_counter() - start
    path.write_text(json.dumps(report, indent=1))
    print(f"{args.processes} processes: {report['metrics']['wall_seconds_all_processes']:.0f} s wall")


def strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def model_dataset(path: str) -> str:
    from tvcsp.checkpoint import read_checkpoint

    return read_checkpoint(path)["dataset"]


if __name__ == "__main__":
    main()
