"""Standardisation of the lattice and property targets, fitted on the training split (docs/data.md#scalers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .crystals import CrystalTensors

__all__ = ["Scalers", "StandardScaler", "fit_scalers", "scaled_lattice"]


@dataclass
class StandardScaler:
    """(x − mean) / std per component, std = population standard deviation + 1e-5 (CDVAE)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 1e-5) -> StandardScaler:
        """Fit on ``(n, d)`` or ``(n,)`` data."""
        x = x.double()
        return cls(x.mean(0), x.std(0, correction=0) + eps)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x) + self.mean.to(x)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> StandardScaler:
        return cls(torch.tensor(d["mean"], dtype=torch.float64), torch.tensor(d["std"], dtype=torch.float64))


def scaled_lattice(lengths: torch.Tensor, angles: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` lattice target (a, b, c) / N^{1/3} Å and (α, β, γ) ° (``scale_length``, docs/data.md#scalers)."""
    scale = num_atoms.to(lengths.dtype).pow(1.0 / 3.0).unsqueeze(-1)
    return torch.cat([lengths / scale, angles], dim=-1)


@dataclass
class Scalers:
    """The scalers a model is trained with; saved in every checkpoint."""

    lattice: StandardScaler
    prop: StandardScaler

    def to_dict(self) -> dict:
        return {"lattice": self.lattice.to_dict(), "prop": self.prop.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Scalers:
        return cls(StandardScaler.from_dict(d["lattice"]), StandardScaler.from_dict(d["prop"]))


def fit_scalers(train: CrystalTensors) -> Scalers:
    """Lattice and property scalers from the training split (property rows that are NaN are ignored)."""
    y = train.y[torch.isfinite(train.y)]
    prop = StandardScaler.fit(y) if y.numel() else StandardScaler(torch.tensor(0.0), torch.tensor(1.0))
    return Scalers(StandardScaler.fit(scaled_lattice(train.lengths, train.angles, train.num_atoms)), prop)
