"""A process-pool map with a progress bar, used for the per-crystal work and the structure matcher."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["default_workers", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """All CPU cores (``os.cpu_count()``)."""
    return os.cpu_count() or 1


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    desc: str = "",
    progress: bool = True,
) -> list[R]:
    """``[fn(x) for x in items]`` in order, over ``workers`` processes (default: all cores).

    ``workers <= 1`` or fewer items than workers runs in this process. ``fn`` and the items must pickle.
    """
    items = list(items)
    workers = default_workers() if workers is None else workers
    bar = dict(total=len(items), desc=desc, disable=not progress, smoothing=0.05)
    if workers <= 1 or len(items) <= workers:
        return [fn(x) for x in tqdm(items, **bar)]
    chunksize = max(1, min(32, len(items) // (8 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=chunksize), **bar))
