"""Real data as a "generator": the generation metrics of a dataset's val split against its test split, timed.

Treats the first ``--n-gen`` val crystals as generated and the first ``--n-ref`` test crystals as the reference,
computes every generation metric of tvcsp.metrics (the energy EMD only when ``tvcsp.metrics.property_model`` is
importable), prints them beside the yardstick of docs/metrics.md#real-data-yardstick (full perov_5 val vs test) and the
wall-clock time per stage, and extrapolates the time for 10,000 generated crystals from the measured per-crystal cost.

Run: ``python benchmarks/metrics_eval.py --dataset perov_5 --n-gen 1000 --workers 2 [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from functools import partial

from tvcsp.data import get_dataset, load_split
from tvcsp.metrics import (
    cov_thresholds,
    evaluate_crystals,
    generation_metrics,
    write_metrics_json,
)

# docs/metrics.md#real-data-yardstick: perov_5 val as "generated" vs test, all-valid EMDs (energy with CDVAE's property
# model).
YARDSTICK = {"comp_valid": 0.9873, "cov_recall": 0.9863, "cov_precision": 0.9855, "density": 0.102,
             "energy": 0.0098, "n_elements": 0.028}
N_TARGET = 10_000


def crystal_arrays_of(dataset: str, split: str, n: int | None, data_dir: str | None) -> list:
    crystals = load_split(dataset, split, data_dir=data_dir, progress=False)
    return crystals.select(slice(0, n)).to_crystal_arrays()


def energy_predictor(dataset: str):
    """``(predict or None, note)``: CDVAE's pretrained property model when it can be imported and loaded."""
    try:
        from tvcsp.metrics.property_model import PropertyModel
    except ImportError as err:
        return None, f"energy EMD skipped: tvcsp.metrics.property_model not importable ({err})"
    try:
        model = PropertyModel.for_dataset(dataset)
    except (KeyError, RuntimeError) as err:
        return None, f"energy EMD skipped: no CDVAE property model loaded ({err})"
    return model.predict, f"energy: CDVAE's pretrained property model {model.name!r} ({model.prop})"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers count once the pool has closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timed:
    """Wraps a callable and accumulates its wall-clock and CPU seconds."""

    def __init__(self, fn):
        self.fn, self.wall, self.cpu = fn, 0.0, 0.0

    def __call__(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += cpu_seconds() - cpu


def row(name: str, value, yardstick=None, sd=None) -> str:
    text = "—" if value is None else f"{value:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")
    ref = "" if yardstick is None else f"{yardstick:.4f}"
    return f"{name:<34}{text:>20}{ref:>14}"


def print_table(m: dict) -> None:
    v, c, e, d = m["validity"], m["coverage"], m["property_emd"], m["diversity"]
    print(f"\n{'metric':<34}{'value':>20}{'yardstick':>14}")
    print(row("struct validity", v["struct_valid"]))
    print(row("comp validity", v["comp_valid"], YARDSTICK["comp_valid"]))
    print(row("valid", v["valid"]))
    print(row("reference comp validity", m["reference_validity"]["comp_valid"]))
    print(row("COV-R", c["cov_recall"], YARDSTICK["cov_recall"]))
    print(row("COV-P", c["cov_precision"], YARDSTICK["cov_precision"]))
    for key in ("amsd_recall", "amsd_precision", "amcd_recall", "amcd_precision"):
        print(row(key.upper().replace("_", " "), c[key]))
    for name in ("density", "energy", "n_elements"):
        emd = e[name]
        if emd is None:
            continue
        print(row(f"{name} EMD, all valid", emd["all_valid"], YARDSTICK[name]))
        print(row(f"{name} EMD, sampled recipe", emd["sampled_mean"], sd=emd["sampled_sd"]))
    for name in ("comp", "struct"):
        print(row(f"{name} diversity, all valid", d[name]["all_valid"]))
        print(row(f"{name} diversity, sampled", d[name]["sampled_mean"], sd=d[name]["sampled_sd"]))
    s = m["settings"]
    if not s["sampled"]:
        print(f"sampled recipe skipped: {s['n_valid']} valid < {s['n_samples']} samples (CDVAE would abort)")
    else:
        print(f"sampled recipe: {s['n_samples']} of {s['n_valid']} valid crystals, seeds {s['seeds']}, mean ± sd")


def print_timings(stages: dict[str, Timed], n_gen: int, n_ref: int, workers: int) -> dict:
    """Print wall/CPU seconds per stage and the extrapolation to 10,000 crystals; return the numbers."""
    print(f"\n{'stage (' + str(workers) + ' workers)':<34}{'wall s':>10}{'CPU s':>10}")
    for name, timed in stages.items():
        print(f"{name:<34}{timed.wall:10.1f}{timed.cpu:10.1f}")
    gen, energy = stages["evaluate generated"], stages.get("energy predictions")
    per_crystal = gen.cpu / n_gen
    per_energy = energy.cpu / (n_gen + n_ref) if energy else 0.0  # the model predicts valid generated + reference
    print(f"per generated crystal: {gen.wall / n_gen * 1e3:.0f} ms wall, {per_crystal * 1e3:.0f} ms CPU "
          f"(+ {per_energy * 1e3:.0f} ms CPU for the energy model)")
    total = (per_crystal + per_energy) * N_TARGET
    print(f"EXTRAPOLATION (not measured) to {N_TARGET:,} generated crystals of this size, reference already "
          f"evaluated: {total / 60:.0f} CPU-min, ~{total / workers / 60:.0f} min on {workers} uncontended cores")
    return {name: {"wall_s": t.wall, "cpu_s": t.cpu} for name, t in stages.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--gen-split", default="val", help="split treated as generated (train for 10,000 crystals)")
    parser.add_argument("--n-gen", type=int, default=None, help="crystals treated as generated (default all)")
    parser.add_argument("--n-ref", type=int, default=None, help="test crystals used as reference (default all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--n-samples", type=int, default=1000, help="CDVAE recipe sample size")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the sampled recipe (0..seeds-1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the metrics (with labels) to this JSON file")
    args = parser.parse_args(argv)

    info = get_dataset(args.dataset)
    predict, note = energy_predictor(args.dataset)
    gen = crystal_arrays_of(args.dataset, args.gen_split, args.n_gen, args.data_dir)
    ref = crystal_arrays_of(args.dataset, "test", args.n_ref, args.data_dir)
    print(f"{info.label}: {len(gen)} {args.gen_split} crystals as generated vs {len(ref)} test crystals; {note}")

    stages = {name: Timed(evaluate_crystals) for name in ("evaluate generated", "evaluate reference")}
    gen_c = stages["evaluate generated"](gen, workers=args.workers, desc=f"{args.gen_split} (generated)")
    ref_c = stages["evaluate reference"](ref, workers=args.workers, desc="test (reference)")
    if predict:
        stages["energy predictions"] = predict = Timed(partial(predict, workers=args.workers))
    stages["metrics (incl. energy)"] = Timed(generation_metrics)
    metrics = stages["metrics (incl. energy)"](gen_c, ref_c, cov_thresholds(args.dataset), predict=predict,
                                               n_samples=args.n_samples, seeds=range(args.seeds))
    print_table(metrics)
    timings = print_timings(stages, len(gen), len(ref), args.workers)
    if args.json:
        labels = {"dataset": args.dataset, "reduced": info.reduced, "generated": f"{args.gen_split} split (real data)",
                  "reference": "test split", "n_generated": len(gen), "n_reference": len(ref), "energy": note,
                  "workers": args.workers}
        write_metrics_json(args.json, {**metrics, "timings": timings}, labels)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
