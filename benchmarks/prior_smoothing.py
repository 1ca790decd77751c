"""Choose the learned prior's smoothing and round-trip rejection on validation crystals: novelty against coverage.

For each smoothing s (:attr:`tvcsp.prior.FlowPriorConfig.smoothing`) and each rejection distance τ of ``--reject``
(``none``: off; docs/sampling.md#round-trip-rejection), generates ``--n`` crystals with the model's learned prior
smoothed by s and the fast sampler, and scores them against the first ``--reference-limit``
validation crystals (never the test split: this picks a setting) with CDVAE's metrics, plus uniqueness and
novelty against the whole training split. The energy EMD is left out (it needs CDVAE's property model and does
not decide between settings). One JSON file with a row per s and the labels; a Markdown table on stdout.

Run: ``python benchmarks/prior_smoothing.py models/perov_5.pt --smoothing 0 0.1 0.2 0.3 --n 500
--reference-limit 500 --json benchmarks/logs/perov_5_prior_smoothing.json``; ``--smoothing 0 --reject none 3 2.5``
compares rejection distances.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from tvcsp.checkpoint import load_model, provenance, read_checkpoint
from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import evaluate_crystals, evaluate_generation, write_metrics_json
from tvcsp.sampling import FAST_SAMPLER
from tvcsp.tasks import generate, load_samples, to_crystal_arrays

COLUMNS = {"comp. valid": ("validity", "comp_valid"), "COV-R": ("coverage", "cov_recall"),
           "COV-P": ("coverage", "cov_precision"), "EMD density": ("property_emd", "density"),
           "EMD #el": ("property_emd", "n_elements"), "unique": ("uniqueness", "fraction"),
           "novel": ("novelty", "fraction")}


def value(metrics: dict, section: str, key: str):
    """A number of the metrics dict (an EMD: its value over all valid crystals)."""
    entry = metrics[section][key]
    return entry["all_valid"] if isinstance(entry, dict) else entry


def row(smoothing: float, reject: float | None, draws: float, metrics: dict, seconds: float) -> dict:
    return {"smoothing": smoothing, "reject": reject, "draws": draws,
            **{name: value(metrics, *where) for name, where in COLUMNS.items()},
            "n_new_formula": metrics["novelty"]["n_new_formula"], "n_valid": metrics["settings"]["n_valid"],
            "seconds": seconds}


def markdown(rows: list[dict]) -> str:
    head = ["smoothing", "reject", "latents / crystal", *COLUMNS, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['smoothing']:g}", "—" if r.get("reject") is None else f"{r['reject']:g}",
                 f"{r.get('draws', 1.0):.2f}"] + [f"{r[c]:.3f}" if r[c] is not None else "—" for c in COLUMNS]
        lines.append("| " + " | ".join(cells + [f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def reject_value(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model file with a learned prior beside it")
    parser.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    parser.add_argument("--reject", type=reject_value, nargs="+", default=[None],
                        help="round-trip rejection distances τ ('none': off)")
    parser.add_argument("--n", type=int, default=500, help="generated crystals per setting")
    parser.add_argument("--reference-limit", type=int, default=500, help="first validation crystals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    model = load_model(args.model).eval()
    if model.latent_prior is None:
        parser.error(f"{args.model} has no learned prior (fit one with tvcsp fit-prior)")
    dataset = read_checkpoint(args.model)["dataset"]
    info = get_dataset(dataset)
    reference = evaluate_crystals(load_split(info, "val", progress=False).to_crystal_arrays()[:args.reference_limit],
                                  workers=args.workers, desc="validation")
    train = load_split(info, "train", progress=False).to_crystal_arrays()
    rows = []
    for s, reject in itertools.product(args.smoothing, args.reject):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            generate(model, args.n, out, FAST_SAMPLER, seed=args.seed, prior=model.latent_prior.smoothed(s),
                     reject_distance=reject, dataset=dataset, progress=False)
            samples = load_samples(out)
            gen = to_crystal_arrays(samples)
        draws = float(samples["draws"].float().mean()) if "draws" in samples else 1.0
        metrics = evaluate_generation(gen, reference, dataset, train_structures=train, workers=args.workers,
                                      energy_skipped="not needed to choose the smoothing")
        rows.append(row(s, reject, draws, metrics, time.perf_counter() - start))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if args.json:
        labels = {"model": args.model, "dataset": dataset, "reference": f"first {args.reference_limit} val",
                  "n": args.n, "seed": args.seed, "sampler": "fast", "prior": "learned", **provenance()}
        write_metrics_json(Path(args.json), {"rows": rows}, labels)


if __name__ == "__main__":
    main()
