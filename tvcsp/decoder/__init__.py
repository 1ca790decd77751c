"""CDVAE's decoder: a GemNet-dT score network conditioned on the latent z (docs/model.md#gemnet-t-decoder), in plain
torch.

Modules, read in this order: :mod:`.config` (hyper-parameters), :mod:`.graph` (symmetric periodic graph and
its per-target layout), :mod:`.basis` (radial and angle bases), :mod:`.layers` (dense blocks, scale factors,
atom update, output block), :mod:`.interaction` (triplet interaction, interaction block), :mod:`.gemnet`
(the model).
"""

from .basis import angle_table, radial_basis, zonal_harmonics
from .config import SCALE_FACTOR_SOURCES, DecoderConfig
from .gemnet import GemNetTDecoder, cdvae_scale_factors, load_scale_factors, noise_level_features
from .graph import DecoderGraph, build_decoder_graph, symmetrise_edges
from .interaction import CircularDownProjection, InteractionBlock, TripletInteraction
from .layers import (
    AtomUpdateBlock,
    Dense,
    EdgeEmbedding,
    OutputBlock,
    ResidualLayer,
    ScaledSiLU,
    ScaleFactor,
    he_orthogonal_,
    sum_to_targets,
)

__all__ = [
    "SCALE_FACTOR_SOURCES",
    "AtomUpdateBlock",
    "CircularDownProjection",
    "DecoderConfig",
    "DecoderGraph",
    "Dense",
    "EdgeEmbedding",
    "GemNetTDecoder",
    "InteractionBlock",
    "OutputBlock",
    "ResidualLayer",
    "ScaleFactor",
    "ScaledSiLU",
    "TripletInteraction",
    "angle_table",
    "build_decoder_graph",
    "cdvae_scale_factors",
    "he_orthogonal_",
    "load_scale_factors",
    "noise_level_features",
    "radial_basis",
    "sum_to_targets",
    "symmetrise_edges",
    "zonal_harmonics",
]
