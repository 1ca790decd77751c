"""Hyper-parameters of the equivariant transformer encoder (docs/model.md#encoder-sizes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from e3nn import o3

from ..rbf import RBF_KINDS
from .layers import LAYER_NORMS

__all__ = ["EQUIVARIANCE_GROUPS", "READOUTS", "EncoderConfig"]

EQUIVARIANCE_GROUPS = ("E3", "SE3")
READOUTS = ("mean", "scaled_sum")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes and switches of :class:`~tvcsp.encoder.TransformerEncoder`; defaults are small but complete.

    Irreps strings follow e3nn ("64x0e+32x1o+16x2e" = 64 scalars, 32 vectors, 16 rank-2 tensors).

    Symmetry group (``equivariance``):
        * ``"E3"`` (default): spherical harmonics carry their proper parities (0e + 1o + 2e …), so features
          transform under rotations *and* reflections, and the latent, pooled from 0e channels only, is
          invariant to both. Node irreps should then use 1o, 2e, … for the channels that the edge
          directions feed (the defaults do).
        * ``"SE3"``: the reference Equiformer choice, harmonics declared 0e + 1e + 2e; the latent is invariant
          to proper rotations only and can tell a chiral crystal from its mirror image. Every irrep must then
          have even parity.

    Attributes:
        irreps_node: node features between blocks.
        num_blocks: transformer blocks L; the last one maps to ``irreps_feature``.
        num_heads: attention heads H.
        irreps_head: irreps of one head (queries, keys and values have H copies).
        lmax: highest degree of the edge spherical harmonics.
        equivariance: ``"E3"`` or ``"SE3"`` (see above).
        rbf: radial basis of edge lengths, ``'gaussian'``, ``'bessel'`` or ``'hybrid'`` (docs/model.md#radial-bases).
        num_basis: radial basis size K (the hybrid splits it between its halves).
        cutoff: radius of the periodic graph in Å.
        max_neighbors: keep the nearest this many neighbours per atom; ``None`` keeps all within the cutoff.
        radial_hidden: width of the two hidden layers of every radial MLP.
        irreps_mlp_mid: hidden irreps of the feed-forward networks; ``None`` means 3 × ``irreps_node``.
        irreps_feature: scalar (0e only) per-atom features after the last block.
        latent_dim: size of μ and log σ².
        alpha_dropout: dropout on the attention weights (training mode only).
        num_atom_types: one-hot size of the atom embedding; type index = Z − 1.
        readout: pooling over each crystal's atoms, ``"mean"`` (CDVAE) or ``"scaled_sum"`` (Σ / √avg atoms,
            Equiformer).
        layer_norm: ``"joint"`` (one norm per node over all irrep blocks; exact invariance on high-symmetry
            crystals at any depth) or ``"degree"`` (Equiformer's per-block norm; not invariant on cubic crystals
            beyond two blocks). See :class:`~tvcsp.encoder.EquivariantLayerNorm`. A stored config without this
            key was trained with ``"degree"`` and loads as such.
    """

    irreps_node: str = "64x0e+32x1o+16x2e"
    num_blocks: int = 4
    num_heads: int = 4
    irreps_head: str = "16x0e+8x1o+4x2e"
    lmax: int = 2
    equivariance: str = "E3"
    rbf: str = "gaussian"
    num_basis: int = 32
    cutoff: float = 6.0
    max_neighbors: int | None = 20
    radial_hidden: int = 64
    irreps_mlp_mid: str | None = None
    irreps_feature: str = "128x0e"
    latent_dim: int = 64
    alpha_dropout: float = 0.2
    num_atom_types: int = 100
    readout: str = "mean"
    layer_norm: str = "joint"

    def __post_init__(self):
        if self.equivariance not in EQUIVARIANCE_GROUPS:
            raise ValueError(f"equivariance must be one of {EQUIVARIANCE_GROUPS}, got {self.equivariance!r}")
        if self.rbf not in RBF_KINDS:
            raise ValueError(f"rbf must be one of {RBF_KINDS}, got {self.rbf!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.layer_norm not in LAYER_NORMS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {self.layer_norm!r}")
        positive = ("num_blocks", "num_heads", "num_basis", "radial_hidden", "latent_dim", "num_atom_types")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lmax < 0 or self.cutoff <= 0 or not 0.0 <= self.alpha_dropout < 1.0:
            raise ValueError("need lmax ≥ 0, cutoff > 0 and 0 ≤ alpha_dropout < 1")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be positive or None, got {self.max_neighbors}")
        if not any(ir == o3.Irrep("0e") for _, ir in o3.Irreps(self.irreps_node)):
            raise ValueError("irreps_node needs 0e channels (the atom embedding writes there)")
        if any(ir != o3.Irrep("0e") for _, ir in o3.Irreps(self.irreps_feature)):
            raise ValueError(f"irreps_feature must be 0e only, got {self.irreps_feature!r}")
        if self.equivariance == "SE3":
            odd = [
                s
                for s in (self.irreps_node, self.irreps_head, self.mlp_mid)
                if any(ir.p == -1 for _, ir in o3.Irreps(s))
            ]
            if odd:
                raise ValueError(f"SE3 uses even parity only; odd irreps in {odd}")

    @property
    def irreps_sh(self) -> o3.Irreps:
        """Edge spherical harmonics 0..lmax with the group's parities (1x0e+1x1o+1x2e for E3, lmax 2)."""
        return o3.Irreps.spherical_harmonics(self.lmax, p=-1 if self.equivariance == "E3" else 1)

    @property
    def mlp_mid(self) -> o3.Irreps:
        """Feed-forward hidden irreps: ``irreps_mlp_mid`` or three times ``irreps_node``."""
        if self.irreps_mlp_mid is not None:
            return o3.Irreps(self.irreps_mlp_mid)
        return o3.Irreps([(3 * mul, ir) for mul, ir in o3.Irreps(self.irreps_node)])

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a checkpoint from another version). A config
        stored before ``layer_norm`` existed gets ``"degree"``, the norm its weights were trained with."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys: {sorted(unknown)}")
        return cls(**{"layer_norm": "degree", **data})
