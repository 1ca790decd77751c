"""Registry of the benchmark datasets (perov_5, carbon_24, mp_20), their reduced variants, and user datasets.

A dataset is a folder of CSV files (optionally gzip-compressed) with a ``cif`` column; each split is read from
one or more :class:`SplitSource` (a file, optionally a slice of its rows). The per-dataset settings travel with the
registry entry: the paper's (paper Table 4, docs/model.md#paper-settings, :class:`PaperSettings`) and CDVAE's
training and evaluation settings (:class:`CDVAESettings`); the reduced variants share their dataset's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserInputError

__all__ = [
    "DATASETS",
    "SPLITS",
    "CDVAESettings",
    "DatasetInfo",
    "PaperSettings",
    "SplitSource",
    "cdvae_settings",
    "custom_dataset",
    "get_dataset",
]

SPLITS = ("train", "val", "test")
CDVAE_DATA_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
REDUCED_SUFFIX = " (reduced split)"  # DatasetInfo.label of a reduced split


@dataclass(frozen=True)
class PaperSettings:
    """The paper's Table 4 (docs/model.md#paper-settings): epochs, encoder radial basis, graph cutoff (Å), neighbours,
    latent, lr."""

    epochs: int
    rbf: str
    cutoff: float
    max_neighbors: int
    latent_dim: int = 64
    lr: float = 1e-4


@dataclass(frozen=True)
class CDVAESettings:
    """CDVAE's per-dataset settings outside the paper's Table 4.

    Attributes:
        batch_size: training batch size (docs/model.md#training).
        teacher_forcing_max_epoch: the lattice is teacher-forced until this epoch (docs/model.md#training).
        cov_thresholds: coverage thresholds (δ_struct, δ_comp) of the generation metrics
            (docs/metrics.md#coverage).
        sr_thresholds: the 5th, 10th and 15th percentile of the dataset's property, the success-rate thresholds
            of property optimisation (docs/metrics.md#success-rates; eV/atom).
        property_model: CDVAE's pretrained property model for the energy EMD (``'perovskite'``, ``'carbon'`` or
            ``'mp20'``; docs/metrics.md#property-model).
    """

    batch_size: int
    teacher_forcing_max_epoch: int
    cov_thresholds: tuple[float, float]
    sr_thresholds: tuple[float, float, float]
    property_model: str


@dataclass(frozen=True)
class SplitSource:
    """Rows of one CSV file: ``file`` relative to the dataset folder, rows ``file[start:stop:step]``.

    ``git_blob`` is the official file's git blob id (``git hash-object``), used to verify downloads.
    """

    file: str
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    git_blob: str | None = None

    @classmethod
    def parse(cls, text: str) -> SplitSource:
        """``'test.csv.gz'`` or ``'test.csv.gz[0::2]'`` (Python slice syntax) → :class:`SplitSource`."""
        m = re.fullmatch(r"\s*([^\[\]]+?)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*))?\s*\])?\s*", text)
        if m is None:
            raise UserInputError(f"cannot read split source {text!r}; expected 'file.csv' or "
                                 "'file.csv[start:stop:step]'")
        start, stop, step = (int(g) if g else None for g in m.groups()[1:])
        return cls(m.group(1), start, stop, step)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop, self.step)

    def __str__(self) -> str:
        if self.rows == slice(None):
            return self.file
        fmt = ["" if v is None else str(v) for v in (self.start, self.stop, self.step)]
        return f"{self.file}[{fmt[0]}:{fmt[1]}" + (f":{fmt[2]}]" if self.step is not None else "]")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: where its splits come from and how to read them.

    Attributes:
        name: registry name; also the folder name under a data root.
        prop: the target property column (docs/data.md#datasets).
        max_atoms: largest cell; the atom-count head has ``max_atoms + 1`` classes.
        splits: split name → sources (concatenated in order).
        folder: folder under the data root holding the files (defaults to ``name``).
        reduced: True when the splits are not the official ones; every result must say so.
        paper: the paper's settings, or ``None`` for user datasets.
        cdvae: CDVAE's settings, or ``None`` for user datasets (see :func:`cdvae_settings`).
        url: base URL of the official files, or ``None`` when they cannot be downloaded.
    """

    name: str
    prop: str
    max_atoms: int | None
    splits: dict[str, tuple[SplitSource, ...]]
    folder: str = ""
    reduced: bool = False
    paper: PaperSettings | None = None
    cdvae: CDVAESettings | None = None
    url: str | None = None
    note: str = field(default="", compare=False)

    @property
    def directory(self) -> str:
        return self.folder or self.name

    @property
    def label(self) -> str:
        """Name used on every result: says 'reduced split' where it applies."""
        return self.name + REDUCED_SUFFIX if self.reduced else self.name

    def sources(self, split: str) -> tuple[SplitSource, ...]:
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]


def _official(name: str, prop: str, max_atoms: int, paper: PaperSettings, cdvae: CDVAESettings,
              blobs: dict[str, str | None]):
    splits = {s: (SplitSource(f"{s}.csv", git_blob=blobs.get(s)),) for s in SPLITS}
    return DatasetInfo(name, prop, max_atoms, splits, paper=paper, cdvae=cdvae, url=f"{CDVAE_DATA_URL}/{name}")


# Git blob ids of the official CSVs (uncompressed). perov_5 train: no byte-identical copy was available to
# hash, so its download is reported as unverified.
DATASETS: dict[str, DatasetInfo] = {
    "perov_5": _official(
        "perov_5",
        "heat_ref",
        20,
        PaperSettings(epochs=3500, rbf="bessel", cutoff=6.0, max_neighbors=20),
        CDVAESettings(batch_size=512, teacher_forcing_max_epoch=1500, cov_thresholds=(0.2, 4.0),
                      sr_thresholds=(0.439248, 0.612024, 0.736461), property_model="perovskite"),
        {"train": None, "val": "4a2c8dde98347dd0e01fa83dcf3982c2abe98f9f",
         "test": "d3c5d5af4b27a2a139149f2bb73c8a3dba9d8ac1"},
    ),
    "carbon_24": _official(
        "carbon_24",
        "energy_per_atom",
        24,
        PaperSettings(epochs=4000, rbf="hybrid", cutoff=6.0, max_neighbors=20),
        CDVAESettings(batch_size=256, teacher_forcing_max_epoch=1000, cov_thresholds=(0.2, 4.0),
                      sr_thresholds=(-154.527093, -154.458657, -154.442068), property_model="carbon"),
        {"train": "5e7ae970fbad8ddc46b6963e8cd6e425f11783a6", "val": "b3e29b927883642426ca1d9632d00359b412742b",
         "test": "9beca843fde489de1fe288b32f9e3ff710d42803"},
    ),
    "mp_20": _official(
        "mp_20",
        "formation_energy_per_atom",
        20,
        PaperSettings(epochs=1500, rbf="gaussian", cutoff=10.0, max_neighbors=50),
        CDVAESettings(batch_size=256, teacher_forcing_max_epoch=500, cov_thresholds=(0.4, 10.0),
                      sr_thresholds=(-3.17562, -2.82197, -2.52815), property_model="mp20"),
        {"train": "b1c9d498565ac2fd8d075a51ff2ef5e51ba6c21f", "val": "7efe4d7ebeb4f460ceaad35e5326c42111d9c9a1",
         "test": "5dc643041df53f5ce4970a79930ad262b4f07acd"},
    ),
}

_S = SplitSource.parse
DATASETS["carbon_24_reduced"] = DatasetInfo(
    "carbon_24_reduced",
    "energy_per_atom",
    24,
    {"train": (_S("val.csv"),), "val": (_S("test.csv[0::2]"),), "test": (_S("test.csv[1::2]"),)},
    folder="carbon_24",
    reduced=True,
    paper=DATASETS["carbon_24"].paper,
    cdvae=DATASETS["carbon_24"].cdvae,
    note="official train missing: train ← official val, val/test ← even/odd rows of official test",
)
DATASETS["mp_20_reduced"] = DatasetInfo(
    "mp_20_reduced",
    "formation_energy_per_atom",
    20,
    {
        "train": (_S("partial/train_first1000.csv"), _S("partial/val_partial.csv")),
        "val": (_S("partial/test_partial.csv[0::2]"),),
        "test": (_S("partial/test_partial.csv[1::2]"),),
    },
    folder="mp_20",
    reduced=True,
    paper=DATASETS["mp_20"].paper,
    cdvae=DATASETS["mp_20"].cdvae,
    note="train ← first 1,000 official train rows + partial official val; val/test ← even/odd rows of partial test",
)


def get_dataset(name: str) -> DatasetInfo:
    """Registry entry by name or by label (``'mp_20_reduced (reduced split)'``, as results and checkpoints are
    labelled), with a clear error for unknown names."""
    try:
        return DATASETS[name.removesuffix(REDUCED_SUFFIX)]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (or use custom_dataset())") from None


def cdvae_settings(dataset: str | DatasetInfo, needed: str) -> CDVAESettings:
    """CDVAE's settings of ``dataset`` (a :class:`DatasetInfo`, or a registry name or label).

    Raises:
        KeyError: one line naming what they are ``needed`` for, when the dataset is not in the registry or has
            none (a user dataset; ``custom_dataset(..., cdvae=get_dataset("mp_20").cdvae)`` borrows a benchmark's).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else DATASETS.get(dataset.removesuffix(REDUCED_SUFFIX))
    if info is None or info.cdvae is None:
        name = dataset.name if isinstance(dataset, DatasetInfo) else dataset
        known = sorted(n for n, i in DATASETS.items() if i.cdvae is not None)
        raise KeyError(f"no CDVAE {needed} for dataset {name!r}: CDVAE's settings exist for {known}; a user "
                       "dataset can borrow them with custom_dataset(..., cdvae=get_dataset(NAME).cdvae)")
    return info.cdvae


def custom_dataset(
    name: str,
    splits: dict[str, str | list[str]],
    prop: str | None = None,
    max_atoms: int | None = None,
    reduced: bool = False,
    folder: str = "",
    cdvae: CDVAESettings | None = None,
) -> DatasetInfo:
    """A user dataset: any folder of CSVs with a ``cif`` column and an explicit split → file(s) mapping.

    Example: ``custom_dataset("my_mp", {"train": "val.csv.gz", "val": "test.csv.gz[:1000]",
    "test": "test.csv.gz[1000:]"}, prop="formation_energy_per_atom", reduced=True)``.
    ``max_atoms=None`` is taken from the training data when the model is built. ``cdvae``: CDVAE's settings to
    train and evaluate with (e.g. ``get_dataset("mp_20").cdvae`` for a subset of mp_20); without them training
    takes :class:`~tvcsp.train.TrainConfig`'s defaults and the CDVAE metrics that need them say so.
    """
    parsed = {s: tuple(_S(f) for f in ([v] if isinstance(v, str) else v)) for s, v in splits.items()}
    return DatasetInfo(name, prop or "", max_atoms, parsed, folder=folder, reduced=reduced, cdvae=cdvae)
