"""Hyper-parameters of the GemNet-dT score decoder (docs/model.md#gemnet-t-decoder); the defaults are CDVAE's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["SCALE_FACTOR_SOURCES", "DecoderConfig"]

SCALE_FACTOR_SOURCES = ("cdvae", "none")


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes and switches of :class:`~tvcsp.decoder.GemNetTDecoder` (docs/model.md#gemnet-t-decoder; defaults = CDVAE).

    Attributes:
        hidden_dim: GemNet's ``emb_size_atom`` = ``emb_size_edge``.
        emb_size_trip: edge embedding size after the down projection of the triplet interaction.
        emb_size_rbf: size of the (shared) projections of the radial basis.
        emb_size_cbf: size of the projection of the circular (angle × radius) basis.
        emb_size_bil_trip: output size of the bilinear triplet layer.
        num_blocks: interaction blocks (there are ``num_blocks + 1`` output blocks).
        num_spherical: degrees l = 0 … num_spherical − 1 of the angle basis Y_l^0(cos φ).
        num_radial: Gaussians in the radial basis.
        num_before_skip, num_after_skip, num_concat: residual layers of the edge update (see
            :class:`~tvcsp.decoder.InteractionBlock`).
        num_atom: residual layers in the atom-update and output MLPs.
        cutoff: radius of the graph in Å.
        max_neighbors: nearest neighbours kept per atom before the graph is symmetrised.
        max_images: periodic images searched per direction: 1 = CDVAE's 27 images {−1, 0, 1}³; ``None`` =
            as many as the cutoff needs (translation invariance then holds for any cell).
        num_atom_types: size of the element embedding and of the type logits; index = Z − 1.
        noise_embedding_dim: 0 = CDVAE's decoder, which is not told the noise level and must infer it from
            the structure; > 0 = each atom's input also gets this many sinusoidal features of ln σ (the
            crystal's coordinate noise level, Å), see :func:`tvcsp.decoder.noise_level_features`.
        type_head_latent: ``False`` = CDVAE's type head, a linear map of each atom's final embedding; ``True`` =
            an MLP (one hidden layer of ``hidden_dim``, SiLU) of the final embedding concatenated with z, so that
            which element goes to which site can depend on the crystal's latent directly.
        scale_factors: ``'cdvae'`` = CDVAE's fixed scale factors (``gemnet-dT.json``, shipped with tvcsp, see
            :func:`tvcsp.decoder.cdvae_scale_factors`); ``'none'`` = all 1.
    """

    hidden_dim: int = 128
    emb_size_trip: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_bil_trip: int = 64
    num_blocks: int = 3
    num_spherical: int = 7
    num_radial: int = 128
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_concat: int = 1
    num_atom: int = 3
    cutoff: float = 7.0
    max_neighbors: int = 20
    max_images: int | None = 1
    num_atom_types: int = 100
    noise_embedding_dim: int = 0
    type_head_latent: bool = False
    scale_factors: str = "cdvae"

    def __post_init__(self):
        if self.scale_factors not in SCALE_FACTOR_SOURCES:
            raise ValueError(f"scale_factors must be one of {SCALE_FACTOR_SOURCES}, got {self.scale_factors!r}")
        positive = ("hidden_dim", "emb_size_trip", "emb_size_rbf", "emb_size_cbf", "emb_size_bil_trip", "num_blocks",
                    "num_spherical", "num_radial", "max_neighbors", "num_atom_types")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        counts = ("num_before_skip", "num_after_skip", "num_concat", "num_atom", "noise_embedding_dim")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.noise_embedding_dim % 2:
            raise ValueError(f"noise_embedding_dim must be even (sin, cos pairs), got {self.noise_embedding_dim}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be positive or None, got {self.max_images}")

    @property
    def image_range(self) -> tuple[int, int, int] | None:
        """``max_images`` as :func:`tvcsp.geometry.radius_graph_pbc` takes it."""
        return None if self.max_images is None else (self.max_images,) * 3

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a checkpoint from another version)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DecoderConfig keys: {sorted(unknown)}")
        return cls(**data)
