"""A split of crystals as flat tensors (the processed-cache format), loadable without pymatgen."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..geometry import lattice_params_to_matrix

__all__ = ["CACHE_FORMAT_VERSION", "CrystalTensors"]

CACHE_FORMAT_VERSION = 1


@dataclass
class CrystalTensors:
    """``B`` canonical crystals (docs/data.md#canonical-crystals) with ``N = Σ num_atoms`` atoms in total.

    Attributes:
        atom_types: ``(N,)`` long, atomic numbers Z (1-based).
        frac_coords: ``(N, 3)`` float64 fractional coordinates in [0, 1).
        num_atoms: ``(B,)`` long.
        lengths: ``(B, 3)`` float64 a, b, c in Å.
        angles: ``(B, 3)`` float64 α, β, γ in degrees.
        y: ``(B,)`` float64 target property (NaN where absent).
        material_ids: ``B`` identifiers from the CSV.
        meta: provenance (dataset, split, sources with checksums, format version, skipped rows).
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    num_atoms: torch.Tensor
    lengths: torch.Tensor
    angles: torch.Tensor
    y: torch.Tensor
    material_ids: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.num_atoms.numel()

    @property
    def ptr(self) -> torch.Tensor:
        """``(B + 1,)`` offsets of each crystal's atoms."""
        return torch.cat([self.num_atoms.new_zeros(1), torch.cumsum(self.num_atoms, 0)])

    @property
    def lattices(self) -> torch.Tensor:
        """``(B, 3, 3)`` lattice matrices (rows = vectors, Å) in the canonical orientation."""
        return lattice_params_to_matrix(self.lengths, self.angles)

    def atoms(self, i: int) -> slice:
        ptr = self.ptr
        return slice(int(ptr[i]), int(ptr[i + 1]))

    def select(self, index) -> CrystalTensors:
        """Subset of crystals by index tensor, list or slice (order kept as given)."""
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index).long()
        ptr = self.ptr
        atom_idx = torch.cat([torch.arange(int(ptr[i]), int(ptr[i + 1])) for i in idx.tolist()] or [idx[:0]])
        return CrystalTensors(
            self.atom_types[atom_idx],
            self.frac_coords[atom_idx],
            self.num_atoms[idx],
            self.lengths[idx],
            self.angles[idx],
            self.y[idx],
            [self.material_ids[i] for i in idx.tolist()],
            dict(self.meta),
        )

    def to_structure(self, i: int):
        """Crystal ``i`` as a pymatgen ``Structure`` (imports pymatgen)."""
        from pymatgen.core import Lattice, Structure

        a = self.atoms(i)
        lattice = Lattice.from_parameters(*self.lengths[i].tolist(), *self.angles[i].tolist())
        return Structure(lattice, self.atom_types[a].tolist(), self.frac_coords[a].numpy())

    def to_crystal_arrays(self) -> list:
        """Every crystal as :class:`~tvcsp.metrics.CrystalArrays` (the input of the metrics; no pymatgen)."""
        from ..metrics.crystal import split_crystal_arrays

        return split_crystal_arrays(self.lengths, self.angles, self.num_atoms, self.atom_types, self.frac_coords)

    @classmethod
    def concat(cls, parts: list[CrystalTensors], meta: dict | None = None) -> CrystalTensors:
        return cls(
            torch.cat([p.atom_types for p in parts]),
            torch.cat([p.frac_coords for p in parts]),
            torch.cat([p.num_atoms for p in parts]),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.angles for p in parts]),
            torch.cat([p.y for p in parts]),
            [m for p in parts for m in p.material_ids],
            meta or {},
        )

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (temporary file + rename) of a plain dict that loads with ``weights_only=True``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({**self.__dict__, "format_version": CACHE_FORMAT_VERSION}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CrystalTensors:
        """Load a cache file; raises ``ValueError`` for another format version."""
        state = torch.load(path, weights_only=True)
        version = state.pop("format_version", None)
        if version != CACHE_FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {version}, this tvcsp reads {CACHE_FORMAT_VERSION}")
        return cls(**state)
