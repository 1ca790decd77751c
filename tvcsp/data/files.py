"""Finding dataset files on disk and downloading the official ones.

Search order for a dataset folder: an explicit path, ``$TVCSP_DATA_DIR``, the project's ``data/``, then the
``shared/data`` folder beside the project. Downloads (official CDVAE CSVs only) are verified against their
git blob ids, written atomically, and cached under the project's ``data/`` (or ``$TVCSP_DATA_DIR``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserInputError
from .registry import DatasetInfo, SplitSource

__all__ = [
    "data_roots",
    "download_file",
    "git_blob_id",
    "home_dir",
    "locate_split",
    "sha256_file",
]


def home_dir() -> Path:
    """Where tvcsp writes downloads and caches: ``$TVCSP_HOME``, else the source checkout, else ~/.cache/tvcsp."""
    if env := os.environ.get("TVCSP_HOME"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "tvcsp").is_dir():
        return checkout
    return Path.home() / ".cache" / "tvcsp"


def data_roots(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Candidate data roots in search order, without duplicates."""
    roots = [Path(explicit)] if explicit else []
    if env := os.environ.get("TVCSP_DATA_DIR"):
        roots.append(Path(env))
    for base in (home_dir(), Path.cwd()):
        roots += [base / "data", base.parent / "shared" / "data"]
    unique: list[Path] = []
    for r in roots:
        if r.resolve() not in [u.resolve() for u in unique]:
            unique.append(r)
    return unique


def _candidates(folder: Path, file: str) -> list[Path]:
    stem = file.removesuffix(".gz")
    return [folder / file, folder / f"{stem}.gz", folder / stem]


def locate_split(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> list[tuple[SplitSource, Path]]:
    """Files of one split, found on disk (``.csv`` or ``.csv.gz``) or downloaded when ``download``.

    Raises:
        FileNotFoundError: naming every place that was searched.
    """
    roots = data_roots(data_dir)
    found = []
    for source in info.sources(split):
        path = next((p for r in roots for p in _candidates(r / info.directory, source.file) if p.is_file()), None)
        if path is None and download and info.url:
            path = _download_source(info, source, data_dir)
        if path is None:
            searched = ", ".join(str(r / info.directory) for r in roots)
            hint = " (pass download=True to fetch the official file)" if info.url else ""
            raise FileNotFoundError(f"{info.name}/{split}: {source.file} not found in {searched}{hint}")
        found.append((source, path))
    return found


def _download_source(info: DatasetInfo, source: SplitSource, data_dir) -> Path:
    target_root = Path(data_dir or os.environ.get("TVCSP_DATA_DIR") or home_dir() / "data")
    dest = target_root / info.directory / source.file.removesuffix(".gz")
    download_file(f"{info.url}/{source.file.removesuffix('.gz')}", dest, git_blob=source.git_blob)
    return dest


def download_file(url: str, dest: Path, git_blob: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar; verify its git blob id; write atomically.

    Raises:
        UserInputError: the downloaded bytes do not match ``git_blob`` (nothing is left at ``dest``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")  # each process of a distributed run its own
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    if git_blob is None:
        warnings.warn(f"{dest.name}: no official checksum is known; the download is unverified", stacklevel=2)
    elif (got := git_blob_id(tmp)) != git_blob:
        tmp.unlink()
        raise UserInputError(f"checksum mismatch for {url}: git blob {got}, expected {git_blob}")
    os.replace(tmp, dest)
    return dest


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def git_blob_id(path: str | os.PathLike) -> str:
    """``git hash-object`` of the (decompressed) file contents."""
    data = _read_bytes(Path(path))
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of the file as stored (compressed or not)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
