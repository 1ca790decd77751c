"""TransVAE-CSP: the equivariant transformer encoder, CDVAE's property heads and GemNet-T score decoder.

Training follows docs/model.md#training-forward-pass: from z, MLP heads predict the atom count, the scaled lattice and
the composition; atom types and Cartesian coordinates are noised at a per-crystal level and GemNet-T learns the
denoising score. :meth:`CrystalVAE.forward` returns every loss term and validation metric for a batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from .data import DatasetStats, Scalers, scaled_lattice
from .decoder import DecoderConfig, GemNetTDecoder
from .encoder import EncoderConfig, TransformerEncoder
from .geometry import cart_to_frac, frac_to_cart, lattice_params_to_matrix, minimum_image_diff

__all__ = ["CrystalVAE", "LossWeights", "NoiseSchedule", "VAEConfig", "geometric_levels", "reparameterise"]

NUM_TYPES = 100


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of the loss terms (docs/model.md#losses; CDVAE defaults)."""

    natom: float = 1.0
    lattice: float = 10.0
    composition: float = 1.0
    coord: float = 10.0
    type: float = 1.0
    kld: float = 0.01
    property: float = 1.0


@dataclass(frozen=True)
class NoiseSchedule:
    """Geometric noise levels (docs/model.md#noise-levels): coordinates in Å, atom types dimensionless.

    ``tied``: a training crystal's atom types are noised at the same level index as its coordinates (CDVAE
    draws the two levels independently), so that a noise-conditioned decoder, told the coordinate level, also
    knows how far to trust the input types.

    ``type_shuffle``: the fraction of training crystals whose noised types are then permuted among their own atoms
    (the composition is kept, the sites are scrambled), so that the decoder learns to move each element to its
    site: the correction a composition-keeping sampler asks of it. An ablation: at 0.5 it lowered the fit test from
    0.92 to 0.75 (benchmarks/RESULTS.md, "Fifth round"), so every profile leaves it at 0.
    """

    sigma_begin: float = 10.0
    sigma_end: float = 0.01
    type_sigma_begin: float = 5.0
    type_sigma_end: float = 0.01
    num_levels: int = 50
    tied: bool = False
    type_shuffle: float = 0.0


@dataclass(frozen=True)
class VAEConfig:
    """Everything that fixes the model's architecture; stored in every checkpoint.

    ``init_logvar``: initial log σ² of the posterior (the log-variance head's bias; its weights are scaled by
    0.01), so that z carries each crystal from the first step instead of being drowned in σ ≈ 1 noise; ``None``
    keeps PyTorch's default initialisation (CDVAE).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    hidden_dim: int = 256
    fc_num_layers: int = 1
    max_atoms: int = 20
    predict_property: bool = False
    init_logvar: float | None = None
    noise: NoiseSchedule = field(default_factory=NoiseSchedule)
    loss: LossWeights = field(default_factory=LossWeights)

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder"], d["decoder"] = self.encoder.to_dict(), self.decoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        return cls(
            **{
                **d,
                "encoder": EncoderConfig.from_dict(d["encoder"]),
                "decoder": DecoderConfig.from_dict(d["decoder"]),
                "noise": NoiseSchedule(**d["noise"]),
                "loss": LossWeights(**d["loss"]),
            }
        )


def shuffle_within_crystals(types: torch.Tensor, batch: torch.Tensor, n_crystals: int,
                            fraction: float) -> torch.Tensor:
    """``types`` (N,) with the atoms of a random ``fraction`` of the ``n_crystals`` crystals permuted among
    themselves; ``batch`` (N,) is the sorted crystal index of each atom. Every crystal keeps its composition."""
    chosen = torch.rand(n_crystals, device=types.device) < fraction
    key = batch.double() + torch.rand(batch.shape, device=types.device, dtype=torch.float64) * chosen[batch]
    return types[torch.argsort(key, stable=True)]


def geometric_levels(begin: float, end: float, n: int) -> torch.Tensor:
    """``n`` levels from ``begin`` down to ``end``, equally spaced in log."""
    return torch.exp(torch.linspace(math.log(begin), math.log(end), n))


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A posterior sample z = μ + exp(½ log σ²)·ε, ε ~ N(0, I) from ``generator`` (torch's global one when
    ``None``); ``mu`` and ``logvar`` ``(B, D)`` → ``(B, D)``."""
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * noise


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """CDVAE's ``build_mlp``: ``layers`` × (Linear → ReLU), then Linear to ``out_dim``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden if layers else in_dim, out_dim))
    return nn.Sequential(*mods)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the rows whose target is finite (a crystal without a property label has NaN);
    0, still attached to the graph, when no row has a label."""
    known = torch.isfinite(target)
    diff = torch.where(known, prediction - torch.where(known, target, 0.0), 0.0)
    return diff.pow(2).sum() / known.sum().clamp_min(1)


def per_crystal_mean(values: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """Per-atom values → mean over each crystal's atoms → mean over crystals (docs/data.md#conventions)."""
    return scatter(values, batch, dim=0, dim_size=num_crystals, reduce="mean").mean()


class CrystalVAE(nn.Module):
    """The full model. ``stats`` and ``scalers`` come from the training split and are saved with it.

    Batches are PyG batches from :class:`~tvcsp.data.CrystalDataset`: ``atom_types`` (N,) Z, ``frac_coords``
    (N, 3), ``lengths``/``angles`` (B, 3) Å/°, ``num_atoms`` (B,), ``batch`` (N,), ``y_scaled`` (B,).
    """

    latent_prior = None
    """The learned latent prior used to generate (a :class:`tvcsp.prior.LatentPrior`) or ``None`` (N(0, I)); set
    by :meth:`attach_prior` or by :func:`tvcsp.checkpoint.load_model` when a prior file lies beside the model."""

    conditional_prior = None
    """The composition-conditioned latent prior used for structure prediction (a conditional
    :class:`tvcsp.prior.LatentPrior`) or ``None``; set like :attr:`latent_prior`."""

    def __init__(self, config: VAEConfig, stats: DatasetStats, scalers: Scalers):
        super().__init__()
        self.config, self.stats, self.scalers = config, stats, scalers
        latent, hidden, layers = config.latent_dim, config.hidden_dim, config.fc_num_layers
        self.encoder = TransformerEncoder(config.encoder, stats.mean_coordination, stats.mean_atoms)
        self.decoder = GemNetTDecoder(config.decoder, latent)
        self.fc_num_atoms = mlp(latent, hidden, layers, config.max_atoms + 1)
        self.fc_lattice = mlp(latent, hidden, layers, 6)
        self.fc_composition = mlp(latent, hidden, layers, NUM_TYPES)
        self.fc_property = mlp(latent, hidden, layers, 1) if config.predict_property else None
        if config.init_logvar is not None:  # start nearly deterministic: z carries the crystal from step one
            with torch.no_grad():
                self.encoder.readout.fc_logvar.weight.mul_(0.01)
                self.encoder.readout.fc_logvar.bias.fill_(config.init_logvar)
        n = config.noise
        self.register_buffer("sigmas", geometric_levels(n.sigma_begin, n.sigma_end, n.num_levels))
        self.register_buffer("type_sigmas", geometric_levels(n.type_sigma_begin, n.type_sigma_end, n.num_levels))
        self.register_buffer("lattice_mean", scalers.lattice.mean.float())
        self.register_buffer("lattice_std", scalers.lattice.std.float())

    def attach_prior(self, prior) -> None:
        """Make ``prior`` (a :class:`tvcsp.prior.LatentPrior` or ``None``) this model's generation prior, or, when
        it is conditional, its structure-prediction prior (:attr:`conditional_prior`); ``None`` removes the
        generation prior. Priors are kept outside the module tree: the VAE's ``state_dict``, fingerprint and
        checkpoints do not change."""
        self.__dict__["conditional_prior" if getattr(prior, "conditional", False) else "latent_prior"] = prior

    # -- encoder side -------------------------------------------------------------------------------------
    def encode(self, batch, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, log σ², z) of shape (B, latent); z = μ + σ·ε when ``sample`` else μ."""
        lattice = lattice_params_to_matrix(batch.lengths, batch.angles)
        mu, logvar = self.encoder(batch.atom_types, batch.frac_coords, lattice, batch.num_atoms)
        z = reparameterise(mu, logvar) if sample else mu
        return mu, logvar, z

    # -- heads ----------------------------------------------------------------------------------------------
    def lattice_from_scaled(self, scaled: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised (B, 6) head output → lengths (B, 3) Å and angles (B, 3) ° for ``num_atoms`` atoms."""
        raw = scaled * self.lattice_std + self.lattice_mean
        lengths = raw[:, :3] * num_atoms.to(raw.dtype).pow(1.0 / 3.0).unsqueeze(-1)
        return lengths, raw[:, 3:]

    def predict_num_atoms(self, z: torch.Tensor) -> torch.Tensor:
        """Argmax of the atom-count head, (B,) long (class 0 is possible, as in CDVAE)."""
        return self.fc_num_atoms(z).argmax(dim=-1)

    # -- training -----------------------------------------------------------------------------------------
    def forward(self, batch, teacher_forcing: bool = False, levels: int | torch.Tensor | None = None,
                sample: bool = True) -> dict[str, torch.Tensor]:
        """All loss terms (docs/model.md#losses), ``loss`` (weighted total), ``val_loss`` (10·coord + type) and metrics.

        ``levels``: noise level index per crystal ``(B,)`` or one for all, used for coordinates and types alike
        (``None``: drawn uniformly and independently, as in training). ``sample=False`` decodes z = μ.
        """
        w, n_crystals = self.config.loss, batch.num_atoms.numel()
        atom_batch = batch.batch
        mu, logvar, z = self.encode(batch, sample=sample)
        natom_logits, scaled_pred = self.fc_num_atoms(z), self.fc_lattice(z)
        comp_logits = self.fc_composition(z)[atom_batch]
        lengths, angles = self.lattice_from_scaled(scaled_pred, batch.num_atoms)
        if teacher_forcing:
            lengths, angles = batch.lengths, batch.angles
        lattice_used = lattice_params_to_matrix(lengths, angles)
        lattice_gt = lattice_params_to_matrix(batch.lengths, batch.angles)

        if levels is None:
            level = torch.randint(0, self.sigmas.numel(), (n_crystals,), device=z.device)
            type_level = level if self.config.noise.tied else torch.randint(
                0, self.type_sigmas.numel(), (n_crystals,), device=z.device)
        else:
            level = type_level = torch.as_tensor(levels, device=z.device).long().expand(n_crystals)
        sigma = self.sigmas[level][atom_batch].unsqueeze(-1)
        type_sigma = self.type_sigmas[type_level][atom_batch]
        noisy_types = self.noisy_atom_types(batch.atom_types, comp_logits, type_sigma)
        if levels is None and self.config.noise.type_shuffle > 0:
            noisy_types = shuffle_within_crystals(noisy_types, atom_batch, n_crystals,
                                                  self.config.noise.type_shuffle)
        cart = frac_to_cart(batch.frac_coords, lattice_used, atom_batch)
        noisy_frac = cart_to_frac(cart + sigma * torch.randn_like(cart), lattice_used, atom_batch)

        score, type_logits = self.decoder(z, noisy_frac, noisy_types, batch.num_atoms, lattice_used,
                                          sigma=self.sigmas[level])

        target_types = batch.atom_types - 1
        clean = frac_to_cart(batch.frac_coords, lattice_gt, atom_batch)
        noisy = frac_to_cart(noisy_frac, lattice_gt, atom_batch)
        diff, _ = minimum_image_diff(clean, noisy, lattice_gt, atom_batch)
        coord = 0.5 * ((diff / sigma - score) ** 2).sum(-1)
        type_ce = F.cross_entropy(type_logits, target_types, reduction="none") / type_sigma
        target_lattice = self.scalers.lattice.transform(scaled_lattice(batch.lengths, batch.angles, batch.num_atoms))
        out = {
            "natom": F.cross_entropy(natom_logits, batch.num_atoms),
            "lattice": F.mse_loss(scaled_pred, target_lattice.to(scaled_pred.dtype)),
            "composition": per_crystal_mean(F.cross_entropy(comp_logits, target_types, reduction="none"),
                                            atom_batch, n_crystals),
            "coord": per_crystal_mean(coord, atom_batch, n_crystals),
            "type": per_crystal_mean(type_ce, atom_batch, n_crystals),
            "kld": (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)).mean(),
        }
        if self.fc_property is not None:
            out["property"] = masked_mse(self.fc_property(z).squeeze(-1), batch.y_scaled)
        out["loss"] = sum(getattr(w, k) * v for k, v in out.items())
        out["val_loss"] = w.coord * out["coord"] + w.type * out["type"]
        out.update(self._metrics(batch, natom_logits, lengths, angles, type_logits, teacher_forcing))
        return out

    @staticmethod
    def noisy_atom_types(types: torch.Tensor, comp_logits: torch.Tensor, type_sigma: torch.Tensor) -> torch.Tensor:
        """Sample ã ~ Categorical(onehot(a) + σᵗ·softmax(c)) per atom (softmax detached,
        docs/model.md#training-forward-pass); returns Z."""
        weights = F.one_hot(types - 1, NUM_TYPES).to(comp_logits.dtype)
        weights = weights + type_sigma.unsqueeze(-1) * F.softmax(comp_logits.detach(), dim=-1)
        return torch.multinomial(weights / weights.sum(-1, keepdim=True), 1).squeeze(-1) + 1

    @torch.no_grad()
    def _metrics(self, batch, natom_logits, lengths, angles, type_logits, teacher_forcing) -> dict[str, torch.Tensor]:
        """Atom-count and type accuracy; lattice errors of the prediction (NaN under teacher forcing)."""
        metrics = {
            "natom_accuracy": (natom_logits.argmax(-1) == batch.num_atoms).float().mean(),
            "type_accuracy": per_crystal_mean(
                (type_logits.argmax(-1) == batch.atom_types - 1).float(), batch.batch, batch.num_atoms.numel()
            ),
        }
        if not teacher_forcing:
            volume = torch.linalg.det(lattice_params_to_matrix(lengths, angles)).abs()
            volume_gt = torch.linalg.det(lattice_params_to_matrix(batch.lengths, batch.angles)).abs()
            metrics["lengths_mard"] = ((lengths - batch.lengths).abs() / batch.lengths).mean()
            metrics["angles_mae"] = (angles - batch.angles).abs().mean()
            metrics["volume_mard"] = ((volume - volume_gt).abs() / volume_gt).mean()
        return metrics
