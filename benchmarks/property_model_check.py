"""Accuracy and speed of CDVAE's property models (tvcsp.metrics.property_model) against the test labels.

For each dataset whose test CSV is present, the first ``--n`` rows (or a seeded random sample) are predicted with
the dataset's model and compared with the label column (perov_5 heat_ref, carbon_24 energy_per_atom, mp_20
formation_energy_per_atom; mp_20 falls back to the partial test file of ../shared/data when the official one is
absent). Cells: ``as_given`` (the CSV's CIF as parsed: what CDVAE's evaluation feeds the model, the default) and
``canonical`` (Niggli-reduced, canonical orientation, docs/data.md#canonical-crystals: the cell the models were trained
on).

Reference (docs/metrics.md#property-model, 300 rows each): MAE 0.037 / 0.0066 / 0.023 eV/atom, Pearson r > 0.99.
Run: ``python benchmarks/property_model_check.py [--n 300] [--workers 2] [--datasets perov_5 carbon_24 mp_20]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure

from tvcsp.data.files import locate_split
from tvcsp.data.parse import canonical_crystal, read_rows
from tvcsp.data.registry import DatasetInfo, custom_dataset, get_dataset
from tvcsp.metrics.crystalnn_graph import crystalnn_graphs
from tvcsp.metrics.property_model import PropertyModel

# Without the official mp_20 test file: the partial copy, whose first 1,000 rows are the official first rows.
FALLBACKS = {
    "mp_20": custom_dataset("mp_20_partial", {"test": "partial/test_partial.csv"}, "formation_energy_per_atom",
                            folder="mp_20", reduced=True, cdvae=get_dataset("mp_20").cdvae)
}


def test_rows(dataset: str, n: int, seed: int | None) -> tuple[DatasetInfo, pd.DataFrame] | None:
    """(dataset used, DataFrame of the first ``n`` test rows, or ``n`` rows drawn with ``seed``) or ``None``."""
    for info in filter(None, (get_dataset(dataset), FALLBACKS.get(dataset))):
        try:
            files = locate_split(info, "test")
        except FileNotFoundError:
            continue
        rows = [read_rows(path, source.rows, info.prop) for source, path in files]
        df = pd.concat(rows, ignore_index=True)
        if seed is None:
            return info, df.iloc[:n].reset_index(drop=True)
        pick = np.sort(np.random.default_rng(seed).choice(len(df), min(n, len(df)), replace=False))
        return info, df.iloc[pick].reset_index(drop=True)
    return None


def structures(cifs: list[str], cell: str) -> list[Structure]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cell == "as_given":
            return [Structure.from_str(c, fmt="cif") for c in cifs]
        out = []
        for c in cifs:
            z, frac, lengths, angles = canonical_crystal(c)
            out.append(Structure(Lattice.from_parameters(*lengths, *angles), z.tolist(), frac))
        return out


def report(name: str, cell: str, pred: np.ndarray, y: np.ndarray, t_graph: float, t_fwd: float) -> None:
    ok = np.isfinite(pred)
    err = pred[ok] - y[ok]
    r = np.corrcoef(pred[ok], y[ok])[0, 1]
    print(
        f"{name:14s} {cell:9s} n={ok.sum():4d} (failed {int((~ok).sum())}) MAE {np.abs(err).mean():.4f} "
        f"RMSE {np.sqrt((err**2).mean()):.4f} r {r:.4f} | graphs {len(y) / t_graph:6.1f}/s, "
        f"forward {len(y) / t_fwd:7.1f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["perov_5", "carbon_24", "mp_20"])
    parser.add_argument("--cells", nargs="+", default=["as_given"], choices=["as_given", "canonical"])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None, help="draw the rows at random (default: the first n)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    for dataset in args.datasets:
        found = test_rows(dataset, args.n, args.seed)
        if found is None:
            print(f"{dataset}: no test CSV found, skipped")
            continue
        info, df = found
        model = PropertyModel.for_dataset(info)
        y = df["y"].to_numpy(np.float64)
        for cell in args.cells:
            crystals = structures(df["cif"].tolist(), cell)
            start = time.perf_counter()
            graphs = crystalnn_graphs(crystals, args.workers, progress=False)
            t_graph = time.perf_counter() - start
            start = time.perf_counter()
            pred = model.predict_graphs(graphs)
            report(info.name, cell, pred, y, t_graph, time.perf_counter() - start)


if __name__ == "__main__":
    main()
