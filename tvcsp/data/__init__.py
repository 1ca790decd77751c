"""Benchmark datasets: registry, files and downloads, CIF parsing, processed cache, scalers, statistics."""

from .crystals import CACHE_FORMAT_VERSION, CrystalTensors
from .dataset import CrystalBatches, CrystalDataset, batch_ranges, cache_dir, load_split, load_stats
from .files import data_roots, download_file, git_blob_id, home_dir, locate_split, sha256_file
from .parse import CrystalParseError, canonical_crystal, parse_csv_rows, read_rows
from .registry import (
    DATASETS,
    SPLITS,
    CDVAESettings,
    DatasetInfo,
    PaperSettings,
    SplitSource,
    cdvae_settings,
    custom_dataset,
    get_dataset,
)
from .scalers import Scalers, StandardScaler, fit_scalers, scaled_lattice
from .stats import DatasetStats, compute_stats, edge_distances, mean_coordination, mean_graph_degree

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DATASETS",
    "SPLITS",
    "CDVAESettings",
    "CrystalBatches",
    "CrystalDataset",
    "CrystalParseError",
    "CrystalTensors",
    "DatasetInfo",
    "DatasetStats",
    "PaperSettings",
    "Scalers",
    "SplitSource",
    "StandardScaler",
    "batch_ranges",
    "cache_dir",
    "canonical_crystal",
    "cdvae_settings",
    "compute_stats",
    "custom_dataset",
    "data_roots",
    "download_file",
    "edge_distances",
    "fit_scalers",
    "get_dataset",
    "git_blob_id",
    "home_dir",
    "load_split",
    "load_stats",
    "locate_split",
    "mean_coordination",
    "mean_graph_degree",
    "parse_csv_rows",
    "read_rows",
    "scaled_lattice",
    "sha256_file",
]
