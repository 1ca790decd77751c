"""The TransVAE-CSP encoder: crystal → (μ, log σ²) of the latent (paper §3.2–3.3, docs/model.md#encoder)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from e3nn import o3
from torch import nn

from ..geometry import batch_index
from ..rbf import build_rbf
from .block import TransformerBlock
from .config import EncoderConfig
from .edges import EdgeFeatures, EdgeFeaturizer
from .embedding import AtomEmbedding, EdgeDegreeEmbedding
from .layers import DepthwiseTensorProduct, EquivariantLayerNorm, RadialMLP

__all__ = ["LatentReadout", "TransformerEncoder"]


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Create tensors in ``dtype`` (e3nn computes Clebsch–Gordan tables in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class LatentReadout(nn.Module):
    """Invariant per-atom features → per-crystal (μ, log σ²).

    Per atom Linear(F → F) → SiLU → Linear(F → F); pooled over each crystal's atoms (mean, or sum divided by
    √avg_num_atoms for ``"scaled_sum"``); then two linear heads.

    Args:
        feature_dim: F, the number of 0e per-atom features.
        latent_dim: size of μ and log σ².
        pooling: ``"mean"`` or ``"scaled_sum"``.
    """

    def __init__(self, feature_dim: int, latent_dim: int, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.atom_head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.SiLU(), nn.Linear(feature_dim, feature_dim)
        )
        self.fc_mu = nn.Linear(feature_dim, latent_dim)
        self.fc_logvar = nn.Linear(feature_dim, latent_dim)

    def forward(
        self, features: torch.Tensor, num_atoms: torch.Tensor, avg_num_atoms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``(N, F)``, ``num_atoms`` ``(B,)``, ``avg_num_atoms`` 0-d →
        μ, log σ² each ``(B, latent_dim)``."""
        per_atom = self.atom_head(features)
        pooled = per_atom.new_zeros(num_atoms.numel(), per_atom.shape[-1])
        pooled = pooled.index_add_(0, batch_index(num_atoms), per_atom)
        if self.pooling == "mean":
            pooled = pooled / num_atoms.clamp_min(1).unsqueeze(-1).to(pooled.dtype)
        else:
            pooled = pooled / avg_num_atoms.sqrt()
        return self.fc_mu(pooled), self.fc_logvar(pooled)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


class TransformerEncoder(nn.Module):
    """Equivariant dot-product-attention transformer over the periodic radius graph of each crystal.

    atom embedding + edge-degree embedding → ``num_blocks`` transformer blocks (the last one maps to the
    scalar ``irreps_feature``) → equivariant layer norm → :class:`LatentReadout`.

    Args:
        config: hyper-parameters.
        avg_degree: training-set average degree; the edge-degree embedding divides by its square root
            (paper App. B.1: the CrystalNN coordination number; the graph's mean in-degree for an ablation).
        avg_num_atoms: training-set mean atoms per cell (used by the ``"scaled_sum"`` readout).
        dtype: dtype of parameters and buffers (default: torch's default dtype). Build a float64 model
            with ``dtype=torch.float64`` rather than ``.double()``: e3nn computes its Clebsch–Gordan tables
            in the construction dtype, and a float32-built model converted later keeps float32-rounded
            coefficients (equivariance to ~1e-8 relative instead of ~1e-15).

    Both statistics are buffers, saved in ``state_dict`` and overwritten when one is loaded.
    """

    def __init__(
        self, config: EncoderConfig, avg_degree: float, avg_num_atoms: float, dtype: torch.dtype | None = None
    ):
        super().__init__()
        if avg_degree <= 0 or avg_num_atoms <= 0:
            raise ValueError(f"dataset statistics must be positive, got {avg_degree=}, {avg_num_atoms=}")
        with _default_dtype(dtype):
            self._build(config, avg_degree, avg_num_atoms)

    def _build(self, config: EncoderConfig, avg_degree: float, avg_num_atoms: float) -> None:
        self.config = config
        self.register_buffer("avg_degree", torch.tensor(float(avg_degree)))
        self.register_buffer("avg_num_atoms", torch.tensor(float(avg_num_atoms)))
        irreps_node, irreps_sh = o3.Irreps(config.irreps_node), config.irreps_sh
        irreps_feature = o3.Irreps(config.irreps_feature)
        rbf = build_rbf(config.rbf, config.num_basis, config.cutoff)
        self.edges = EdgeFeaturizer(config.cutoff, config.max_neighbors, rbf, irreps_sh)
        self.atom_embedding = AtomEmbedding(config.num_atom_types, irreps_node)
        self.edge_degree_embedding = EdgeDegreeEmbedding(
            irreps_node, irreps_sh, rbf.out_dim, config.radial_hidden
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                irreps_node,
                irreps_feature if i == config.num_blocks - 1 else irreps_node,
                o3.Irreps(config.irreps_head),
                config.num_heads,
                irreps_sh,
                rbf.out_dim,
                config.radial_hidden,
                config.mlp_mid,
                config.alpha_dropout,
                config.layer_norm,
            )
            for i in range(config.num_blocks)
        )
        self.norm = EquivariantLayerNorm(irreps_feature)
        self.readout = LatentReadout(irreps_feature.dim, config.latent_dim, config.readout)

    @property
    def irreps_node(self) -> o3.Irreps:
        """Irreps of :meth:`node_features`."""
        return o3.Irreps(self.config.irreps_node)

    @property
    def rbf(self) -> nn.Module:
        """The radial basis (call ``rbf.fit_weight(distances)`` on a hybrid basis before training)."""
        return self.edges.rbf

    def _equivariant_features(self, atom_types: torch.Tensor, edges: EdgeFeatures) -> torch.Tensor:
        x = self.atom_embedding(atom_types) + self.edge_degree_embedding(
            edges, atom_types.shape[0], self.avg_degree
        )
        for block in self.blocks[:-1]:
            x = block(x, edges)
        return x

    def node_features(
        self,
        atom_types: torch.Tensor,
        frac_coords: torch.Tensor,
        lattice: torch.Tensor,
        num_atoms: torch.Tensor,
    ) -> torch.Tensor:
        """Equivariant node features ``(N, irreps_node.dim)`` entering the last block (arguments as
        :meth:`forward`); their l = 1 parts rotate as vectors."""
        return self._equivariant_features(atom_types, self.edges(frac_coords, lattice, num_atoms))

    def forward(
        self,
        atom_types: torch.Tensor,
        frac_coords: torch.Tensor,
        lattice: torch.Tensor,
        num_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of ``B`` crystals with ``N`` atoms in total.

        Args:
            atom_types: ``(N,)`` long atomic numbers Z (1-based).
            frac_coords: ``(N, 3)`` fractional coordinates (need not be wrapped).
            lattice: ``(B, 3, 3)`` lattice matrices in Å, rows = lattice vectors.
            num_atoms: ``(B,)`` long atoms per crystal.

        Returns:
            μ and log σ², each ``(B, latent_dim)``, invariant to rotations (and reflections for E3), to
            translations, atom permutations, periodic images and the choice of unit cell.
        """
        edges = self.edges(frac_coords, lattice, num_atoms)
        x = self.blocks[-1](self._equivariant_features(atom_types, edges), edges)
        return self.readout(self.norm(x), num_atoms, self.avg_num_atoms)

    def compile_parts(self) -> int:
        """``torch.compile`` (in place, dynamic shapes) the encoder's per-edge radial networks and depthwise tensor
        products; returns how many modules were compiled. Whole blocks do not compile: Dynamo's guards call
        ``len()`` on e3nn's Irreps, which refuses. The parts are exact to float round-off and make a training step
        of the trained perov_5 model about 1.1× faster on one CPU thread (benchmarks/RESULTS.md)."""
        parts = [m for m in self.modules() if isinstance(m, (RadialMLP, DepthwiseTensorProduct))]
        for module in parts:
            module.compile(dynamic=True)
        return len(parts)
