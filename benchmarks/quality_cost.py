"""Quality against cost of the sampler: reconstruction match rate and RMSE of the same test crystals (``--split
val``: validation crystals, for choosing between models) under sampler settings from CDVAE's 5,000 decoder calls
per crystal down to a handful, for several seeds; with ``--n-generate`` also the generation metrics.

Each setting is ``update:levels:steps`` (``langevin:50:100`` = CDVAE: 50 levels × 100 steps; default: the curve
5,000 … 50 calls of :data:`tvcsp.sampler_cost.CURVE_SETTINGS`). All settings decode the same seeded subset of
``--limit`` perov_5 crystals of the split from latents sampled with each seed (CDVAE's protocol) with the type
rule given by ``--types``. Every (setting, seed) is a resumable run folder under ``--out``. Prints a markdown
table (mean ± seed-to-seed standard deviation) and writes ``<out>/quality_cost_<split>.json`` labelled with
dataset/split, model (path and fingerprint), seeds, device, commit and, with ``--n-generate``, the prior that drew
the generated crystals' latents (``--prior``; default: the model's learned prior when it has one, else N(0, I)).

``--generation-settings`` and ``--generation-seeds`` generate under other settings and seeds than those
reconstructed (e.g. without CDVAE's costly 5,000 calls). Because every (setting, seed) resumes, the work can
run as several processes on several cores (``--no-reconstruction`` for generation, no ``--n-generate`` for
reconstruction, parts of the settings or seeds each, the same ``--out``) and a last call with everything finds
every row done and writes the combined JSON.

Run: ``python benchmarks/quality_cost.py models/perov_5.pt --limit 64 --seeds 0 1 2 --n-generate 200``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from evaluate_model import test_subset

from tvcsp.checkpoint import load_model, model_fingerprint, provenance
from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import evaluate_crystals
from tvcsp.metrics.property_model import energy_predictor
from tvcsp.sampler_cost import CURVE_SETTINGS, TYPE_RULES, parse_setting, quality_cost, summarise

COLUMNS = {"match_rate": "match", "rmse": "RMSE", "valid": "valid", "cov_recall": "COV-R",
           "cov_precision": "COV-P", "emd_density": "EMD ρ", "emd_energy": "EMD E", "emd_n_elements": "EMD #el"}
TIMES = {"seconds_per_crystal": "s/crystal (reconstruction)",
         "generation_seconds_per_crystal": "s/crystal (generation)"}


def cell(stats: dict | None, digits: int = 3) -> str:
    if not stats or stats["mean"] is None:
        return "–"
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['sd']:.{digits}f}" if stats["sd"] else "")


def table(summary: list[dict]) -> str:
    keys = [k for k in COLUMNS if k in summary[0]]
    times = [k for k in ("seconds_per_crystal", "generation_seconds_per_crystal") if k in summary[0]]
    lines = ["| update | levels × steps | decoder calls | " + " | ".join(COLUMNS[k] for k in keys) + " | "
             + " | ".join(TIMES[k] for k in times) + " |", "|---" * (3 + len(keys) + len(times)) + "|"]
    for s in summary:
        values = " | ".join(cell(s[k], 4 if k == "rmse" else 3) for k in keys)
        seconds = " | ".join(f"{s[k]['mean']:.3f}" for k in times)
        lines.append(f"| {s['update']} | {s['num_levels']} × {s['n_step_each']} | {s['decoder_calls']:,} | {values} | "
                     f"{seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--limit", type=int, default=200, help="crystals of the split (seeded subset; 0: all)")
    parser.add_argument("--split", choices=["val", "test"], default="test",
                        help="test (report) or val (choosing between models)")
    parser.add_argument("--settings", nargs="+", default=list(CURVE_SETTINGS), help="update:levels:steps ...")
    parser.add_argument("--types", choices=list(TYPE_RULES), default="kept", help="type rule (kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one curve per seed")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the crystal subset")
    parser.add_argument("--n-generate", type=int, default=0, help="also generate this many per setting and seed")
    parser.add_argument("--generation-settings", nargs="+", default=None,
                        help="settings to generate with (default: --settings)")
    parser.add_argument("--generation-seeds", type=int, nargs="+", default=None,
                        help="seeds to generate with (default: --seeds)")
    parser.add_argument("--no-reconstruction", action="store_true", help="generation only (needs --n-generate)")
    parser.add_argument("--prior", choices=["learned", "normal"], default=None,
                        help="latents of the generated crystals (default: the model's learned prior if any)")
    parser.add_argument("--reference-limit", type=int, default=1000, help="test crystals generation is scored on")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes for the matcher and fingerprints")
    parser.add_argument("--out", type=Path, default=None, help="default runs/quality_cost_<model name>")
    args = parser.parse_args()
    generation_settings = args.generation_settings or args.settings
    generation_seeds = args.generation_seeds or args.seeds
    try:
        for s in (*args.settings, *generation_settings):
            parse_setting(s)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.no_reconstruction and not args.n_generate:
        raise SystemExit("--no-reconstruction needs --n-generate: there is nothing else to measure")
    torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / f"quality_cost_{args.model.stem}"
    info = get_dataset("perov_5")
    model = load_model(args.model, dataset=info.name).eval()
    crystals = test_subset(load_split(info, args.split, progress=False), args.limit, args.subset_seed)
    reference, predict, skipped = None, None, None
    if args.n_generate:
        test = test_subset(load_split(info, "test", progress=False), args.reference_limit, args.subset_seed)
        predict, skipped = energy_predictor(info.name)
        reference = evaluate_crystals(test.to_crystal_arrays(), workers=args.workers, progress=False)
    common = dict(out=out, types=args.types, batch_size=args.batch_size, workers=args.workers, dataset=info.name)
    rows = [] if args.no_reconstruction else quality_cost(model, crystals, args.settings, args.seeds, **common)
    summary = summarise(rows)
    if args.n_generate:
        generated = quality_cost(model, None, generation_settings, generation_seeds, n_generate=args.n_generate,
                                 reference=reference, predict=predict, prior=args.prior, **common)
        rows, summary = rows + generated, summary + summarise(generated)
    labels = {"dataset": info.label, "split": args.split, "n": 0 if args.no_reconstruction else len(crystals),
              "model": str(args.model), "model_fingerprint": model_fingerprint(model),
              **({"prior": rows[-1]["prior"]} if args.n_generate else {}),
              "types": args.types, "latent": "sampled z (CDVAE)", "seeds": args.seeds, "subset_seed": args.subset_seed,
              "n_generated": args.n_generate, "generation_seeds": generation_seeds if args.n_generate else [],
              "n_reference": len(reference) if reference is not None else 0,
              "energy_skipped": skipped, "threads": args.threads, **provenance()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality_cost_{args.split}.json"
    path.write_text(json.dumps({"labels": labels, "rows": rows, "summary": summary}, indent=1))
    prior = f", prior {labels['prior']}" if args.n_generate else ""
    print(f"\n{info.label} {args.split}, {len(crystals)} crystals, types {args.types}, seeds {args.seeds}{prior}, "
          f"{labels['device']}, commit {labels['commit']}; written {path}\n")
    for part in ([s for s in summary if "match_rate" in s], [s for s in summary if "valid" in s]):
        if part:
            print(table(part) + "\n")


if __name__ == "__main__":
    main()
