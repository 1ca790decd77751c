"""Command line: ``tvcsp prepare DATASET`` parses every split into the cache and computes the statistics."""

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
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
