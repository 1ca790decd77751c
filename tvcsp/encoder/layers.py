"""Equivariant building blocks: radial MLP, depthwise tensor product, layer norm, gate
(docs/model.md#equivariant-layers).

Features are ``(..., irreps.dim)`` tensors in e3nn layout (blocks in listed order, channel-major, the
2l + 1 components of each channel contiguous). Equivariant linear layers are :class:`e3nn.o3.Linear`
(Equiformer's LinearRS, docs/model.md#equivariant-layers: one weight matrix per irrep type, weights normalised by
fan-in, biases on 0e only).
"""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn

__all__ = ["LAYER_NORMS", "DepthwiseTensorProduct", "EquivariantLayerNorm", "RadialMLP", "gate_for"]

SCALAR = o3.Irrep("0e")


class RadialMLP(nn.Module):
    """Per-edge weights from the radial basis (Equiformer's RadialProfile, docs/model.md#equivariant-layers).

    Linear(K → hidden) → LayerNorm → SiLU → Linear(hidden → hidden) → LayerNorm → SiLU → Linear(hidden → out);
    the last bias is the learnable offset, initialised U(±1/√hidden).

    Args:
        in_dim: radial basis size K.
        hidden: hidden width.
        out_dim: number of weights per edge.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, rbf: torch.Tensor) -> torch.Tensor:
        """``(E, K)`` → ``(E, out_dim)``."""
        return self.net(rbf)


class DepthwiseTensorProduct(nn.Module):
    """Channel-wise ("uvu") tensor product of node features with edge harmonics, weighted per edge.

    For every input block ``m × l_in`` and harmonic ``l_f`` there is one path to each ``l_out`` in
    ``|l_in − l_f| … l_in + l_f`` (parity ``p_in·p_f``) that is in ``irreps_filter`` or is 0e:
    ``out[c] = w_path[c](r) · CG(x[c], Y_{l_f})``, ``m`` output channels and one weight per channel, no
    channel mixing. Clebsch–Gordan coefficients use component normalisation; no path normalisation.
    The weights come from a :class:`RadialMLP` on the edge's radial basis.

    Args:
        irreps_in: node feature irreps.
        irreps_sh: spherical-harmonic irreps.
        irreps_filter: output irreps types to keep (besides 0e).
        rbf_dim: radial basis size K.
        radial_hidden: hidden width of the radial MLP.

    Attributes:
        irreps_out: output irreps, sorted and merged per type.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_filter: o3.Irreps,
        rbf_dim: int,
        radial_hidden: int,
    ):
        super().__init__()
        irreps_in, irreps_sh, irreps_filter = (
            o3.Irreps(irreps_in),
            o3.Irreps(irreps_sh),
            o3.Irreps(irreps_filter),
        )
        path_irreps, instructions = [], []
        for i_in, (mul, ir_in) in enumerate(irreps_in):
            for i_sh, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in irreps_filter or ir_out == SCALAR:
                        instructions.append((i_in, i_sh, len(path_irreps), "uvu", True))
                        path_irreps.append((mul, ir_out))
        sorted_irreps, order, _ = o3.Irreps(path_irreps).sort()
        instructions = [(i_in, i_sh, order[i_out], mode, w) for i_in, i_sh, i_out, mode, w in instructions]
        self.tp = o3.TensorProduct(
            irreps_in,
            irreps_sh,
            sorted_irreps,
            instructions,
            irrep_normalization="component",
            path_normalization="none",
            internal_weights=False,
            shared_weights=False,
        )
        # consecutive blocks of one type have the layout of their merged block
        self.irreps_out = sorted_irreps.simplify()
        self.radial = RadialMLP(rbf_dim, radial_hidden, self.tp.weight_numel)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, rbf: torch.Tensor) -> torch.Tensor:
        """``x`` ``(E, irreps_in.dim)``, ``sh`` ``(E, irreps_sh.dim)``, ``rbf`` ``(E, K)`` →
        ``(E, irreps_out.dim)``."""
        return self.tp(x, sh, self.radial(rbf))


LAYER_NORMS = ("joint", "degree")


class EquivariantLayerNorm(nn.Module):
    """Equivariant layer norm of node features (docs/model.md#equivariant-layers).

    0e blocks are centred over their ``m`` channels. Then every block ``m × l`` is divided by √(n + eps),
    scaled by a learnable per-channel weight (init 1); 0e blocks get a learnable per-channel bias (init 0).
    Vectors and tensors are not centred. ``n`` depends on ``mode``:

    * ``"joint"`` (default): one ``n`` per node, the mean over blocks of each block's mean square (over
      channels and components), as EquiformerV2's RMS norm balances degrees. l > 0 blocks keep their size
      relative to the scalars, so a block that vanishes by symmetry (the vectors of an atom on a cubic
      site) stays at round-off and the latent stays invariant to ~1e-15 however many blocks are stacked.
    * ``"degree"``: Equiformer's EquivariantLayerNormV2, one ``n`` per block. It divides a block that
      vanishes by symmetry by √eps, turning its round-off into order-one features after a few blocks: with
      four blocks (the paper profile) the latent of cubic SrTiO₃ or bcc Fe changes by ~1e-2 of its scale
      under a rotation. Kept for models trained with it.

    Both agree for an irreps of one block (the scalar features before the readout).
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5, mode: str = "joint"):
        super().__init__()
        if mode not in LAYER_NORMS:
            raise ValueError(f"layer norm mode must be one of {LAYER_NORMS}, got {mode!r}")
        self.irreps, self.eps, self.mode = o3.Irreps(irreps), eps, mode
        self.weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        num_scalars = sum(mul for mul, ir in self.irreps if ir == SCALAR)
        self.bias = nn.Parameter(torch.zeros(num_scalars))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., irreps.dim)`` → same shape."""
        fields = []
        for (mul, ir), part in zip(self.irreps, self.irreps.slices(), strict=True):
            field = x[..., part].reshape(*x.shape[:-1], mul, ir.dim)
            fields.append(field - field.mean(dim=-2, keepdim=True) if ir == SCALAR else field)
        norms = [field.pow(2).mean(dim=(-2, -1), keepdim=True) for field in fields]
        if self.mode == "joint":
            norms = [torch.stack(norms).mean(dim=0)] * len(fields)
        blocks, channel, scalar = [], 0, 0
        for (mul, ir), field, norm in zip(self.irreps, fields, norms, strict=True):
            field = field * (norm + self.eps).rsqrt() * self.weight[channel : channel + mul, None]
            if ir == SCALAR:
                field = field + self.bias[scalar : scalar + mul, None]
                scalar += mul
            channel += mul
            blocks.append(field.reshape(*x.shape[:-1], mul * ir.dim))
        return torch.cat(blocks, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.irreps}, eps={self.eps}, mode={self.mode!r}"


def gate_for(irreps: o3.Irreps) -> e3nn_nn.Gate:
    """Gate activation whose output holds the channels of ``irreps``, scalars first (docs/model.md#equivariant-layers).

    Scalars get SiLU (even) or tanh (odd parity); each l > 0 channel is multiplied by the sigmoid of its own
    extra 0e gate. Activations are second-moment normalised (e3nn). Input layout: ``gate.irreps_in`` =
    [scalars, gates, gated]. With no l > 0 channels it is a plain normalised activation.
    """
    irreps = o3.Irreps(irreps)
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return e3nn_nn.Gate(
        scalars,
        [nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
        gates,
        [torch.sigmoid] * len(gates),
        gated,
    )
