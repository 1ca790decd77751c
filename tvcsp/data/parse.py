"""CIF rows → canonical crystals (docs/data.md#canonical-crystals), in parallel, with errors that name file, row and
material_id."""

from __future__ import annotations

import math
import os
import warnings
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from .crystals import CrystalTensors

__all__ = ["CrystalParseError", "canonical_crystal", "parse_csv_rows", "read_rows"]


class CrystalParseError(UserInputError):
    """A CSV row that cannot be turned into a crystal."""


def canonical_crystal(cif: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIF → (Z ``(n,)``, fractional coords ``(n, 3)`` in [0, 1), lengths ``(3,)`` Å, angles ``(3,)`` °).

    Niggli-reduces the cell (no primitive reduction) and rebuilds the lattice from its six parameters, which
    fixes the orientation (docs/data.md#canonical-crystals). Raises ``ValueError`` for unreadable or degenerate
    crystals.
    """
    from pymatgen.core import Structure

    if not isinstance(cif, str) or not cif.strip():
        raise ValueError("empty CIF")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
    if len(structure) == 0:
        raise ValueError("structure has zero atoms")
    if not structure.is_ordered:
        raise ValueError("partial occupancies are not supported")
    if not (np.isfinite(structure.frac_coords).all() and np.isfinite(structure.lattice.matrix).all()):
        raise ValueError("non-finite coordinates or lattice")
    if structure.volume <= 1e-6:
        raise ValueError(f"degenerate cell (volume {structure.volume:.3g} Å³)")
    reduced = structure.get_reduced_structure()
    lengths, angles = np.array(reduced.lattice.abc), np.array(reduced.lattice.angles)
    z = np.array([site.specie.Z for site in reduced], dtype=np.int64)
    return z, np.mod(reduced.frac_coords, 1.0), lengths, angles


def read_rows(path: Path, rows: slice, prop: str | None) -> pd.DataFrame:
    """The CSV rows ``rows`` with columns ``row`` (0-based data row in the file), ``material_id``, ``cif``, ``y``."""
    df = pd.read_csv(path)
    if "cif" not in df.columns:
        raise CrystalParseError(f"{path}: no 'cif' column (columns: {list(df.columns)})")
    if prop and prop not in df.columns:
        raise CrystalParseError(f"{path}: no property column {prop!r} (columns: {list(df.columns)})")
    out = pd.DataFrame({"row": np.arange(len(df)), "cif": df["cif"]})
    out["material_id"] = df["material_id"].astype(str) if "material_id" in df.columns else out["row"].astype(str)
    out["y"] = pd.to_numeric(df[prop], errors="coerce") if prop else math.nan
    return out.iloc[rows].reset_index(drop=True)


def _parse_one(cif):
    try:
        return canonical_crystal(cif)
    except Exception as err:  # noqa: BLE001 - any failure of a row is reported with its location
        return f"{type(err).__name__}: {err}"


def parse_csv_rows(
    rows: pd.DataFrame,
    file: str,
    workers: int | None = None,
    on_error: str = "raise",
    progress: bool = True,
) -> CrystalTensors:
    """Parse the rows of :func:`read_rows` into :class:`CrystalTensors`.

    Args:
        file: file name used in error messages.
        workers: processes (default: all cores; small inputs run in-process).
        on_error: ``'raise'`` stops at the first bad row with a :class:`CrystalParseError` naming file, row
            and material_id; ``'skip'`` drops bad rows and records them in ``meta['skipped']``.
    """
    if on_error not in ("raise", "skip"):
        raise UserInputError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    workers = workers or os.cpu_count() or 1
    cifs = rows["cif"].tolist()
    bar = dict(total=len(cifs), desc=f"parsing {file}", unit="cif", disable=not progress)
    if workers > 1 and len(cifs) >= 256:
        with get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_parse_one, cifs, chunksize=64), **bar))
    else:
        results = [_parse_one(c) for c in tqdm(cifs, **bar)]

    keep, skipped = [], []
    for i, res in enumerate(results):
        if isinstance(res, str):
            where = f"{file}: row {rows['row'].iat[i]} (material_id={rows['material_id'].iat[i]}): {res}"
            if on_error == "raise":
                raise CrystalParseError(where)
            skipped.append(where)
        else:
            keep.append(i)
    good = [results[i] for i in keep]
    return CrystalTensors(
        atom_types=torch.from_numpy(np.concatenate([g[0] for g in good] or [np.zeros(0, np.int64)])),
        frac_coords=torch.from_numpy(np.concatenate([g[1] for g in good] or [np.zeros((0, 3))])),
        num_atoms=torch.tensor([len(g[0]) for g in good], dtype=torch.long),
        lengths=torch.from_numpy(np.array([g[2] for g in good]).reshape(-1, 3)),
        angles=torch.from_numpy(np.array([g[3] for g in good]).reshape(-1, 3)),
        y=torch.tensor(rows["y"].to_numpy()[keep], dtype=torch.float64),
        material_ids=[rows["material_id"].iat[i] for i in keep],
        meta={"skipped": skipped},
    )
