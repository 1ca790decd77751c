"""Writing metric dicts as labelled JSON files (atomic: temporary file + ``os.replace``)."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["to_jsonable", "write_metrics_json"]

_VERSIONED = ("tvcsp", "pymatgen", "pymatgen-core", "smact", "matminer", "scipy", "numpy")


def to_jsonable(value):
    """Plain JSON types: numpy scalars/arrays → Python numbers/lists, tuples → lists, NaN/inf → ``None``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _versions() -> dict[str, str | None]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_metrics_json(path: str | os.PathLike, metrics: dict, labels: dict) -> Path:
    """Write ``{"labels", "metrics", "versions", "written_utc"}`` to ``path`` atomically and return the path.

    ``labels`` is the caller's description of the run (dataset, split, official/reduced, checkpoint, seed,
    sampler settings, ...); it is stored as given (objects JSON does not know, e.g. paths, as strings).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "labels": to_jsonable(labels),
        "metrics": to_jsonable(metrics),
        "versions": _versions(),
        "written_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
