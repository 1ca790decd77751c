"""Crystal fingerprints as CDVAE computed them and its fixed composition scaler (docs/metrics.md#fingerprints).

- Structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` per site (61 values: for each
  coordination number 1..24 its CrystalNN weight, followed for CN 1..12 by that CN's order parameters times the
  weight), averaged over the sites. Dimensionless, not normalised.
- Composition fingerprint: matminer Magpie ``ElementProperty`` (22 elemental properties × 6 statistics = 132
  values, in the properties' own units) of the composition with raw atom counts, with ``impute_nan=False`` as in
  the matminer CDVAE used (docs/metrics.md#fingerprints), so elements lacking Magpie data give NaN entries.
- Composition scaler: one hard-coded standardisation shared by all datasets, ``(v − mean) / std`` with NaN → 0.
  The means/stds are CDVAE's (``CompScalerMeans``/``CompScalerStds`` in cdvae/common/constants.py, rounded to six
  significant digits), so normalised distances agree with CDVAE's to about 1e-5 relative.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from functools import cache

import numpy as np

__all__ = [
    "COMP_SCALER",
    "COMP_SCALER_MEANS",
    "COMP_SCALER_STDS",
    "MAGPIE_STATS",
    "composition_fingerprint",
    "load_featurizers",
    "normalise_comp_fps",
    "structure_fingerprint",
]

MAGPIE_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")

# Magpie property → ((means of the six statistics), (stds of the six statistics)), in Magpie feature order.
COMP_SCALER: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "Number": (
        (21.1944, 58.2021, 37.0077, 36.5274, 13.3506, 29.4689),
        (16.3578, 20.1895, 20.5163, 16.8168, 7.96659, 22.2708),
    ),
    "MendeleevNumber": (
        (28.7174, 78.8869, 50.1695, 59.5676, 19.0204, 61.3356),
        (21.8021, 12.8045, 24.7566, 13.9303, 10.2145, 27.8016),
    ),
    "AtomicWeight": (
        (47.1452, 141.751, 94.6062, 85.9579, 34.073, 68.0619),
        (39.7403, 54.2697, 53.7047, 42.8523, 20.7834, 56.2878),
    ),
    "MeltingT": (
        (637.986, 1817.24, 1179.25, 1127.27, 431.51, 909.106),
        (563.8, 732.072, 736.212, 606.352, 272.626, 810.616),
    ),
    "Column": (
        (3.77443, 13.6737, 9.89928, 9.62019, 3.84261, 9.9695),
        (3.03623, 3.20752, 4.06338, 2.97382, 1.78056, 5.64324),
    ),
    "Row": (
        (3.30546, 5.48304, 2.17757, 4.21511, 0.820609, 3.73209),
        (1.19943, 0.893901, 1.22976, 1.0066, 0.491297, 1.41596),
    ),
    "CovalentRadius": (
        (109.167, 179.557, 70.3897, 136.098, 27.0275, 119.167),
        (31.7548, 28.0542, 38.1634, 25.8349, 15.3884, 39.6714),
    ),
    "Electronegativity": (
        (1.27214, 2.4614, 1.18926, 1.98445, 0.469146, 2.10014),
        (0.319883, 0.683366, 0.74642, 0.488135, 0.317659, 0.860175),
    ),
    "NsValence": (
        (1.48299, 1.99, 0.507008, 1.79563, 0.205625, 1.74587),
        (0.58648, 0.100489, 0.583629, 0.281175, 0.24687, 0.500738),
    ),
    "NpValence": (
        (0.0565007, 2.36187, 2.30536, 1.28296, 0.999556, 1.51503),
        (0.372376, 1.7236, 1.70588, 1.15589, 0.767784, 1.92036),
    ),
    "NdValence": (
        (0.773127, 7.46481, 6.69169, 4.01068, 2.61231, 3.30353),
        (2.12894, 3.53261, 3.70851, 2.87099, 1.61107, 4.31019),
    ),
    "NfValence": (
        (0.273949, 5.88975, 5.6158, 2.32444, 2.14263, 1.44645),
        (1.66442, 6.22829, 6.12008, 3.19862, 2.4493, 4.0305),
    ),
    "NValence": (
        (4.73925, 14.5784, 9.83915, 9.4137, 3.53706, 8.55041),
        (3.66203, 6.81921, 6.61424, 4.33499, 2.56832, 5.94949),
    ),
    "NsUnfilled": (
        (0.00811986, 0.432866, 0.424746, 0.166878, 0.171399, 0.10899),
        (0.0897437, 0.495473, 0.494304, 0.230934, 0.207287, 0.311626),
    ),
    "NpUnfilled": (
        (0.0628323, 2.65737, 2.59454, 1.2196, 1.05964, 1.11208),
        (0.398057, 1.81117, 1.79734, 0.9487, 0.753875, 1.52332),
    ),
    "NdUnfilled": (
        (0.148429, 3.84737, 3.69894, 1.45416, 1.38623, 0.801885),
        (0.795261, 3.71119, 3.63872, 1.71712, 1.43079, 2.10478),
    ),
    "NfUnfilled": (
        (0.0354277, 2.44746, 2.41203, 0.774522, 0.914581, 0.319865),
        (0.491937, 4.06484, 4.03529, 1.48586, 1.57991, 1.61301),
    ),
    "NUnfilled": (
        (1.55273, 6.91068, 5.35795, 3.61516, 1.90723, 2.67023),
        (1.55525, 4.77693, 4.56979, 2.22462, 1.72175, 2.59697),
    ),
    "GSvolume_pa": (
        (14.6085, 34.8322, 20.2237, 22.479, 7.17675, 18.6418),
        (7.215, 19.2525, 18.7754, 9.44722, 6.74679, 11.1068),
    ),
    "GSbandgap": (
        (0.00906699, 0.918519, 0.909452, 0.436855, 0.389059, 0.483756),
        (0.272068, 1.64493, 1.62363, 0.850692, 0.702095, 1.22819),
    ),
    "GSmagmom": (
        (0.00129859, 0.217086, 0.215787, 0.0816798, 0.0815539, 0.0603634),
        (0.0413444, 0.550886, 0.54861, 0.242393, 0.212778, 0.303675),
    ),
    "SpaceGroupNumber": (
        (116.32, 217.591, 101.27, 162.872, 41.9206, 136.466),
        (80.0606, 21.3458, 80.1648, 52.5853, 35.4084, 85.9802),
    ),
}

COMP_SCALER_MEANS = np.array([v for means, _ in COMP_SCALER.values() for v in means])
COMP_SCALER_STDS = np.array([v for _, stds in COMP_SCALER.values() for v in stds])


@cache
def _element_property():
    from matminer.featurizers.composition.composite import ElementProperty

    return ElementProperty.from_preset("magpie", impute_nan=False)


@cache
def _site_fingerprint():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


def load_featurizers() -> None:
    """Import and build both featurizers now (before forking workers, so they inherit them)."""
    _element_property()
    _site_fingerprint()


def composition_fingerprint(atom_types: Sequence[int]) -> np.ndarray:
    """Magpie fingerprint ``(132,)`` of the composition given by the atomic numbers of all sites (raw counts)."""
    from pymatgen.core import Composition

    return np.asarray(_element_property().featurize(Composition(Counter(int(z) for z in atom_types))), float)


def structure_fingerprint(structure) -> np.ndarray:
    """Mean over sites of the CrystalNN "ops" site fingerprint, ``(61,)``; raises whatever a site raises."""
    featurizer = _site_fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrystalNN warns about missing oxidation states on every site
        sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    return np.asarray(sites, float).mean(axis=0)


def normalise_comp_fps(fps: np.ndarray) -> np.ndarray:
    """Apply CDVAE's fixed composition scaler to ``(n, 132)`` Magpie fingerprints; NaN entries become 0."""
    scaled = (np.asarray(fps, float) - COMP_SCALER_MEANS) / COMP_SCALER_STDS
    return np.where(np.isnan(scaled), 0.0, scaled)
