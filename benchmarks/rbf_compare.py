"""The paper's radial-basis comparison (App. B.4) on one dataset at CPU scale: the cpu-profile model trained once
per basis and seed for the same number of steps (the cosine schedule spans them), no probes, and the verdict of
:func:`tvcsp.rbf_selection.compare_rbfs` (mean final validation loss; decisive when the winner's margin exceeds
the spread between seeds). Resumable: rerun the same command after an interruption.

Run: ``python benchmarks/rbf_compare.py carbon_24_reduced --steps 400 --seeds 0 1 --out runs/rbf_compare_cpu``;
writes ``<out>/<dataset>/comparison.json`` (with the settings, commit and device) and stores the winner for
``rbf="auto"``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tvcsp.checkpoint import provenance
from tvcsp.data import get_dataset
from tvcsp.rbf_selection import compare_rbfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/rbf_compare_cpu"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-every", type=int, default=1, help="epochs between validations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = get_dataset(args.dataset)
    started = time.time()
    result = compare_rbfs(info, args.out / info.name, profile="cpu", seeds=tuple(args.seeds), resume=True,
                          progress=False, max_steps=args.steps, probe_every_n_epochs=0,
                          val_every_n_epochs=args.val_every)
    result["settings"] = {"profile": "cpu", "steps": args.steps, "seeds": args.seeds, "threads": args.threads,
                          "probes": False, "val_every_n_epochs": args.val_every}
    result["paper_choice"] = info.paper.rbf if info.paper else None
    path = args.out / info.name / "comparison.json"
    earlier = json.loads(path.read_text()).get("wall_s_calls", []) if path.is_file() else []
    result["wall_s_calls"] = [*earlier, round(time.time() - started, 1)]  # one entry per call (resumes add)
    result["provenance"] = provenance()
    path.write_text(json.dumps(result, indent=1))
    means = ", ".join(f"{k} {v:.4f}" for k, v in result["final_val_loss"].items())
    print(f"{info.label}: {means}; winner {result['winner']} (paper: {result['paper_choice']}), margin "
          f"{result['margin']:.4f}, seed spread {result['seed_spread']}, decisive {result['decisive']}, lowest on "
          f"every seed {result['wins_every_seed']} → {path}")


if __name__ == "__main__":
    main()
