"""Command line.

* ``tvcsp prepare DATASET`` parses every split into the cache and computes the statistics;
* ``tvcsp reconstruct CHECKPOINT --split test --out DIR`` encodes and decodes a split (docs/sampling.md#reconstruction);
* ``tvcsp generate CHECKPOINT --n 10000 --out DIR`` decodes z ~ N(0, I) (docs/sampling.md#generation);
* ``tvcsp evaluate DIR`` computes CDVAE's metrics of a reconstruction or generation run (docs/metrics.md) and writes
  them, labelled, to ``DIR/metrics.json``.

Both sampling commands are resumable: rerun the same command to finish an interrupted run.
"""

from __future__ import annotations

import argparse
import json

from .data import SPLITS, get_dataset, load_split, load_stats


def _prepare(args: argparse.Namespace) -> None:
    info = get_dataset(args.dataset)
    for split in SPLITS:
        crystals = load_split(info, split, data_dir=args.data_dir, download=args.download, workers=args.workers,
                              on_error=args.on_error)
        skipped = len(crystals.meta.get("skipped", []))
        print(f"{info.label} {split}: {len(crystals)} crystals" + (f", {skipped} rows skipped" if skipped else ""))
    stats = load_stats(info, data_dir=args.data_dir, coordination_sample=args.coordination_sample,
                       workers=args.workers)
    print(json.dumps({"dataset": info.label, **stats.to_dict()}, indent=1))


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _sampler_kwargs(args: argparse.Namespace) -> dict:
    return dict(batch_size=args.batch_size, num_evals=args.num_evals, n_step_each=args.n_step_each,
                step_lr=args.step_lr, min_sigma=args.min_sigma, precision=args.precision, compile=args.compile,
                seed=args.seed, device=_device(args.device), checkpoint=str(args.checkpoint),
                progress=not args.no_progress)


def _report(samples: dict, out: str) -> None:
    n, valid = samples["num_atoms"].shape[1], int(samples["valid_lattice"][0].sum())
    print(f"{n} crystals ({valid} with a usable lattice) in {out}")


def _reconstruct(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_model
    from .tasks import reconstruct

    label = args.dataset or torch.load(args.checkpoint, map_location="cpu", weights_only=True)["dataset"]
    crystals = load_split(get_dataset(label), args.split, data_dir=args.data_dir, download=args.download)
    if args.limit is not None:
        crystals = crystals.select(slice(0, args.limit))
    samples = reconstruct(load_model(args.checkpoint), crystals, args.out, sample_z=not args.use_mu,
                          force_num_atoms=args.force_num_atoms, force_atom_types=args.force_atom_types,
                          dataset=label, split=args.split, **_sampler_kwargs(args))
    _report(samples, args.out)


def _generate(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_model
    from .tasks import generate

    label = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["dataset"]
    samples = generate(load_model(args.checkpoint), args.n, args.out, dataset=label, **_sampler_kwargs(args))
    _report(samples, args.out)


def _evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import provenance
    from .metrics import PropertyModel, evaluate_generation, evaluate_reconstruction, write_metrics_json
    from .tasks import load_samples, to_structures

    samples = load_samples(args.folder)
    settings = samples["meta"]["settings"]
    info = get_dataset(settings["dataset"])
    predicted = to_structures(samples)
    if settings["task"] == "reconstruction":
        metrics = evaluate_reconstruction(predicted, to_structures(samples, ground_truth=True), workers=args.workers)
        summary = f"match rate {metrics['match_rate']:.4f} (ceiling {metrics['ceiling']:.4f}), RMSE {metrics['rmse']}"
    else:
        reference = load_split(info, args.reference_split, data_dir=args.data_dir)
        if args.reference_limit is not None:
            reference = reference.select(slice(0, args.reference_limit))
        predict = None if args.no_energy else PropertyModel.for_dataset(info.name).predict
        metrics = evaluate_generation(predicted, [reference.to_structure(i) for i in range(len(reference))],
                                      info.name, predict=predict, workers=args.workers)
        v, c = metrics["validity"], metrics["coverage"]
        summary = (f"struct valid {v['struct_valid']:.4f}, comp valid {v['comp_valid']:.4f}, "
                   f"COV-R {c['cov_recall']:.4f}, COV-P {c['cov_precision']:.4f}")
    labels = {**settings, "dataset": info.label, "checkpoint": samples["meta"].get("checkpoint"),
              "reference_split": args.reference_split, "reference_limit": args.reference_limit, **provenance()}
    path = write_metrics_json(f"{args.folder}/metrics.json", metrics, labels)
    print(f"{info.label} {settings['task']}: {summary} → {path}")


def _add_sampler_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("checkpoint", help="model file written by training (model.pt)")
    parser.add_argument("--out", required=True, help="run folder (created; rerun to resume)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"crystals per batch ({batch_size})")
    parser.add_argument("--num-evals", type=int, default=1, help="Langevin runs per latent (1)")
    parser.add_argument("--n-step-each", type=int, default=100, help="Langevin steps per noise level (100)")
    parser.add_argument("--step-lr", type=float, default=1e-4, help="Langevin step size at the last level (1e-4)")
    parser.add_argument("--min-sigma", type=float, default=0.0, help="skip noise levels below this σ in Å (0)")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="decoder precision (32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tvcsp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="parse all splits into the processed cache; compute statistics")
    prepare.add_argument("dataset", help="perov_5, carbon_24, mp_20, carbon_24_reduced or mp_20_reduced")
    prepare.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    prepare.add_argument("--download", action="store_true", help="fetch missing official CSVs (verified)")
    prepare.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    prepare.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="what to do with bad rows")
    prepare.add_argument("--coordination-sample", type=int, help="CrystalNN on a seeded sample of N structures")
    prepare.set_defaults(run=_prepare)

    recon = commands.add_parser("reconstruct", help="encode a split and decode it with Langevin dynamics")
    _add_sampler_options(recon, 256)
    recon.add_argument("--split", choices=SPLITS, default="test")
    recon.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    recon.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    recon.add_argument("--download", action="store_true", help="fetch missing official CSVs (verified)")
    recon.add_argument("--limit", type=int, help="only the first N crystals of the split")
    recon.add_argument("--use-mu", action="store_true", help="decode μ instead of CDVAE's sampled z")
    recon.add_argument("--force-num-atoms", action="store_true", help="decode with the true atom counts")
    recon.add_argument("--force-atom-types", action="store_true", help="decode with the true atom types")
    recon.set_defaults(run=_reconstruct)

    gen = commands.add_parser("generate", help="decode latents z ~ N(0, I) into crystals")
    _add_sampler_options(gen, 500)
    gen.add_argument("--n", type=int, default=10_000, help="crystals to generate (10000)")
    gen.set_defaults(run=_generate)

    ev = commands.add_parser("evaluate", help="CDVAE's metrics of a reconstruction or generation run folder")
    ev.add_argument("folder", metavar="DIR", help="folder written by 'tvcsp reconstruct' or 'tvcsp generate'")
    ev.add_argument("--reference-split", choices=SPLITS, default="test", help="generation: reference set (test)")
    ev.add_argument("--reference-limit", type=int, help="generation: only the first N reference crystals")
    ev.add_argument("--no-energy", action="store_true", help="generation: skip the energy EMD (property model)")
    ev.add_argument("--data-dir", help="folder holding <dataset>/<split>.csv[.gz] (searched first)")
    ev.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    ev.set_defaults(run=_evaluate)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
