"""Loading splits through the processed cache, dataset statistics, and the PyG dataset for training."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data

from ..errors import UserInputError
from .crystals import CACHE_FORMAT_VERSION, CrystalTensors
from .files import home_dir, locate_split, sha256_file
from .parse import parse_csv_rows, read_rows
from .registry import DatasetInfo, get_dataset
from .scalers import Scalers, scaled_lattice
from .stats import DatasetStats, compute_stats

__all__ = ["CrystalBatches", "CrystalDataset", "batch_ranges", "cache_dir", "load_split", "load_stats"]


def cache_dir() -> Path:
    """``$TVCSP_CACHE_DIR``, else ``data/cache`` under :func:`~tvcsp.data.files.home_dir`."""
    return Path(os.environ.get("TVCSP_CACHE_DIR") or home_dir() / "data" / "cache")


def _info(dataset: str | DatasetInfo) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)


def load_split(
    dataset: str | DatasetInfo,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    download: bool = False,
    workers: int | None = None,
    on_error: str = "raise",
    progress: bool = True,
) -> CrystalTensors:
    """One split as :class:`CrystalTensors`, parsed once and then read from the processed cache.

    The cache file (``<cache>/<dataset>/<split>.pt``) is stamped with the format version, the sha256 of every
    source file and the row selection; it is rebuilt when any of them changes. When the source files are
    absent (e.g. on a GPU machine that only carries the cache), the cache is used as it is.

    Args:
        dataset: registry name or a :class:`DatasetInfo` (see :func:`~tvcsp.data.custom_dataset`).
        split: ``'train'``, ``'val'`` or ``'test'``.
        data_dir: explicit data root (searched first).
        cache: cache root (default :func:`cache_dir`).
        download: fetch missing official files (verified) into the project's ``data/``.
        workers: parsing processes; on_error: ``'raise'`` or ``'skip'`` (see :func:`parse_csv_rows`).
    """
    info = _info(dataset)
    path = Path(cache or cache_dir()) / info.name / f"{split}.pt"
    try:
        files = locate_split(info, split, data_dir, download)
    except FileNotFoundError:
        if path.is_file():
            return CrystalTensors.load(path)
        raise
    stamp = {
        "format_version": CACHE_FORMAT_VERSION,
        "sources": [{"source": str(s), "sha256": sha256_file(p)} for s, p in files],
        "prop": info.prop,
        "on_error": on_error,
    }
    if path.is_file():
        try:
            cached = CrystalTensors.load(path)
            if cached.meta.get("stamp") == stamp:
                return cached
        except (ValueError, RuntimeError, KeyError) as err:
            warnings.warn(f"rebuilding unreadable cache {path}: {err}", stacklevel=2)
    parts = [
        parse_csv_rows(read_rows(p, s.rows, info.prop), p.name, workers, on_error, progress) for s, p in files
    ]
    meta = {
        "dataset": info.name,
        "split": split,
        "reduced": info.reduced,
        "stamp": stamp,
        "skipped": [m for p in parts for m in p.meta["skipped"]],
    }
    crystals = CrystalTensors.concat(parts, meta)
    crystals.save(path)
    return crystals


def load_stats(
    dataset: str | DatasetInfo,
    *,
    cutoff: float | None = None,
    max_neighbors: int | None = None,
    coordination_sample: int | None = None,
    split: str = "train",
    cache: str | os.PathLike | None = None,
    **load_kwargs,
) -> DatasetStats:
    """:class:`DatasetStats` of a split (train by default), computed once per setting and cached as JSON.

    ``cutoff``/``max_neighbors`` default to the paper's encoder settings for the dataset.
    """
    info = _info(dataset)
    if cutoff is None or max_neighbors is None:
        if info.paper is None:
            raise UserInputError(f"{info.name}: pass cutoff and max_neighbors (no paper settings for this dataset)")
        cutoff = info.paper.cutoff if cutoff is None else cutoff
        max_neighbors = info.paper.max_neighbors if max_neighbors is None else max_neighbors
    crystals = load_split(info, split, cache=cache, **load_kwargs)
    key = {
        "split_stamp": crystals.meta.get("stamp"),
        "cutoff": float(cutoff),
        "max_neighbors": int(max_neighbors),
        "coordination_sample": coordination_sample,
    }
    sample = "all" if coordination_sample is None else coordination_sample
    path = Path(cache or cache_dir()) / info.name / f"stats_{split}_{cutoff:g}A_{max_neighbors}nn_cn-{sample}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return DatasetStats.from_dict(saved["stats"])
    stats = compute_stats(
        crystals, cutoff, max_neighbors, coordination_sample, load_kwargs.get("workers"),
        load_kwargs.get("progress", True),
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")  # each process of a distributed run its own
    tmp.write_text(json.dumps({"key": key, "stats": stats.to_dict()}, indent=1))
    os.replace(tmp, path)
    return stats


class CrystalDataset(torch.utils.data.Dataset):
    """Crystals as PyG ``Data`` objects for a ``torch_geometric.loader.DataLoader``.

    Each item has ``atom_types`` ``(n,)`` (Z), ``frac_coords`` ``(n, 3)``, ``lengths`` and ``angles``
    ``(1, 3)``, ``num_atoms`` ``(1,)``, ``y`` ``(1,)`` and, with scalers, the standardised targets
    ``scaled_lattice`` ``(1, 6)`` and ``y_scaled`` ``(1,)``. Floats are float32.
    """

    def __init__(self, crystals: CrystalTensors, scalers: Scalers | None = None):
        self.crystals = crystals
        self.scalers = scalers
        self._ptr = crystals.ptr.tolist()

    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int) -> Data:
        c, a0, a1 = self.crystals, self._ptr[i], self._ptr[i + 1]
        item = Data(
            atom_types=c.atom_types[a0:a1],
            frac_coords=c.frac_coords[a0:a1].float(),
            lengths=c.lengths[i : i + 1].float(),
            angles=c.angles[i : i + 1].float(),
            num_atoms=c.num_atoms[i : i + 1],
            y=c.y[i : i + 1].float(),
            num_nodes=a1 - a0,
        )
        if self.scalers is not None:
            lat = scaled_lattice(c.lengths[i : i + 1], c.angles[i : i + 1], c.num_atoms[i : i + 1])
            item.scaled_lattice = self.scalers.lattice.transform(lat).float()
            item.y_scaled = self.scalers.prop.transform(c.y[i : i + 1]).float()
        return item


def batch_ranges(n: int, batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` that cover ``range(n)`` in order (the last may be
    shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


class CrystalBatches(Sequence):
    """``crystals`` in their order as PyG ``Batch`` objects of at most ``batch_size`` crystals, each built when
    indexed (``batches[b]``, on the CPU) from :class:`CrystalDataset` items (with ``scalers``: the standardised
    targets too). ``ranges[b]`` are the crystal indices of batch ``b``."""

    def __init__(self, crystals: CrystalTensors, batch_size: int, scalers: Scalers | None = None):
        self.items = CrystalDataset(crystals, scalers)
        self.ranges = batch_ranges(len(crystals), batch_size)

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, b: int) -> Batch:
        return Batch.from_data_list([self.items[i] for i in self.ranges[b]])
