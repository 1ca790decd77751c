"""Node embeddings: atom embedding and edge-degree embedding (paper §3.3 / Fig. 4, docs/model.md#embedding)."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from .edges import EdgeFeatures
from .layers import SCALAR, DepthwiseTensorProduct

__all__ = ["AtomEmbedding", "EdgeDegreeEmbedding"]


class AtomEmbedding(nn.Module):
    """Equivariant linear layer on the one-hot atom type (index Z − 1); only the 0e channels are non-zero.

    The weights are multiplied by √num_types at initialisation so that embeddings have unit scale (e3nn's
    linear layer divides by √fan-in).

    Args:
        num_types: one-hot size T (100 covers Z = 1..100).
        irreps_node: output irreps.
    """

    def __init__(self, num_types: int, irreps_node: o3.Irreps):
        super().__init__()
        self.num_types = int(num_types)
        self.linear = o3.Linear(o3.Irreps(f"{self.num_types}x0e"), o3.Irreps(irreps_node))
        with torch.no_grad():
            self.linear.weight.mul_(math.sqrt(self.num_types))

    def forward(self, atom_types: torch.Tensor) -> torch.Tensor:
        """``(N,)`` long atomic numbers Z ≥ 1 → ``(N, irreps_node.dim)``."""
        one_hot = nn.functional.one_hot(atom_types - 1, self.num_types).to(self.linear.weight.dtype)
        return self.linear(one_hot)


class EdgeDegreeEmbedding(nn.Module):
    """Initial l > 0 node features from the geometry of each atom's neighbourhood (docs/model.md#embedding).

    A learnable constant (Linear(1x0e → scalars) applied to 1) is coupled per edge with the edge harmonics
    by a depthwise tensor product weighted by a radial MLP, mapped by a linear layer to the node irreps, and
    summed over each atom's incoming edges divided by √avg_degree. Only the 0e part of the node irreps is
    used for the constant: the reference maps it to all node irreps, but the l > 0 part of a linear map of a
    scalar is zero, so the result is the same.

    Args:
        irreps_node: output irreps (must contain 0e).
        irreps_sh: spherical-harmonic irreps.
        rbf_dim: radial basis size K.
        radial_hidden: hidden width of the radial MLP.
    """

    def __init__(self, irreps_node: o3.Irreps, irreps_sh: o3.Irreps, rbf_dim: int, radial_hidden: int):
        super().__init__()
        irreps_node = o3.Irreps(irreps_node)
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_node if ir == SCALAR]).simplify()
        self.constant = o3.Linear(o3.Irreps("1x0e"), scalars, biases=True)
        self.tp = DepthwiseTensorProduct(scalars, irreps_sh, irreps_node, rbf_dim, radial_hidden)
        self.linear = o3.Linear(self.tp.irreps_out, irreps_node)

    def forward(self, edges: EdgeFeatures, num_nodes: int, avg_degree: torch.Tensor) -> torch.Tensor:
        """Edge features of ``E`` edges → ``(num_nodes, irreps_node.dim)``; ``avg_degree`` is a 0-d tensor."""
        one = edges.rbf.new_ones(1, 1)
        constant = self.constant(one).expand(edges.rbf.shape[0], -1)
        messages = self.linear(self.tp(constant, edges.sh, edges.rbf))
        out = messages.new_zeros(num_nodes, messages.shape[-1]).index_add_(0, edges.target, messages)
        return out / avg_degree.sqrt()
