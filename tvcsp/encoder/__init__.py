"""TransVAE-CSP encoder: an Equiformer-style equivariant dot-product-attention transformer (docs/model.md#encoder).

Modules, one job each: :mod:`.config` (hyper-parameters), :mod:`.edges` (graph, harmonics, radial basis),
:mod:`.layers` (radial MLP, depthwise tensor product, layer norm, gate), :mod:`.embedding` (atom and
edge-degree embeddings), :mod:`.attention` (dot-product attention), :mod:`.block` (feed-forward network,
transformer block), :mod:`.model` (the encoder and its latent readout).
"""

from .attention import DotProductAttention, merge_heads, repeat_irreps, split_heads
from .block import FeedForward, TransformerBlock
from .config import EQUIVARIANCE_GROUPS, READOUTS, EncoderConfig
from .edges import EdgeFeatures, EdgeFeaturizer
from .embedding import AtomEmbedding, EdgeDegreeEmbedding
from .layers import LAYER_NORMS, DepthwiseTensorProduct, EquivariantLayerNorm, RadialMLP, gate_for
from .model import LatentReadout, TransformerEncoder

__all__ = [
    "EQUIVARIANCE_GROUPS",
    "LAYER_NORMS",
    "READOUTS",
    "AtomEmbedding",
    "DepthwiseTensorProduct",
    "DotProductAttention",
    "EdgeDegreeEmbedding",
    "EdgeFeaturizer",
    "EdgeFeatures",
    "EncoderConfig",
    "EquivariantLayerNorm",
    "FeedForward",
    "LatentReadout",
    "RadialMLP",
    "TransformerBlock",
    "TransformerEncoder",
    "gate_for",
    "merge_heads",
    "repeat_irreps",
    "split_heads",
]
