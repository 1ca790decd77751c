"""GemNet-dT score decoder: symmetries, graph bookkeeping, bases, scale factors, gradients."""

import math

import numpy as np
import pytest
import torch
from conftest import high_symmetry_crystals, perovskite, rock_salt, triclinic

from tvcsp.decoder import (
    DecoderConfig,
    GemNetTDecoder,
    ScaleFactor,
    angle_table,
    build_decoder_graph,
    cdvae_scale_factors,
    load_scale_factors,
    noise_level_features,
    radial_basis,
    zonal_harmonics,
)
from tvcsp.geometry import radius_graph_pbc, triplets

LATENT = 8
SMALL = dict(hidden_dim=32, emb_size_trip=16, emb_size_rbf=8, emb_size_cbf=8, emb_size_bil_trip=16, num_blocks=2,
             num_radial=16, num_atom=1, num_after_skip=1, scale_factors="none")
# CDVAE's graph (7 Å, 20 neighbours, 27 images) — for rattled crystals whose 20th/21st neighbours are not tied.
CDVAE_GRAPH = DecoderConfig(**SMALL)
# Every neighbour within the cutoff, all images needed: exactly invariant for any cell (translations included).
EXACT_GRAPH = DecoderConfig(**SMALL, cutoff=4.5, max_neighbors=200, max_images=None)


def make_batch(structures, dtype=torch.float64, rattle=0.01, seed=0):
    """(frac, types, num_atoms, lattice) for pymatgen structures, fractional coordinates rattled."""
    g = torch.Generator().manual_seed(seed)
    frac = torch.tensor(np.concatenate([s.frac_coords for s in structures]), dtype=dtype)
    frac = frac + rattle * torch.randn(frac.shape, generator=g, dtype=dtype)
    types = torch.tensor([site.specie.Z for s in structures for site in s])
    num_atoms = torch.tensor([len(s) for s in structures])
    lattice = torch.tensor(np.stack([s.lattice.matrix for s in structures]), dtype=dtype)
    return frac, types, num_atoms, lattice


def make_model(config, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return GemNetTDecoder(config, LATENT).to(dtype).eval()


def latents(num_crystals, dtype=torch.float64, seed=1):
    return torch.randn(num_crystals, LATENT, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_orthogonal(dtype, proper=True, seed=2):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype))
    if (torch.det(q) > 0) != proper:
        q = -q
    return q


CRYSTALS = {"cdvae": (CDVAE_GRAPH, [perovskite(), rock_salt()]), "exact": (EXACT_GRAPH, [triclinic(), perovskite()])}


@pytest.fixture(params=list(CRYSTALS), scope="module")
def setup(request):
    config, structures = CRYSTALS[request.param]
    return make_model(config), make_batch(structures), latents(len(structures))


def test_output_shapes(setup):
    model, (frac, types, num_atoms, lattice), z = setup
    scores, logits = model(z, frac, types, num_atoms, lattice)
    assert scores.shape == (frac.shape[0], 3) and logits.shape == (frac.shape[0], 100)
    assert scores.dtype == logits.dtype == torch.float64
    assert scores.abs().max() > 1e-3  # rattled crystals: no symmetry forces the scores to vanish


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("proper", [True, False])
def test_rotation_equivariance(dtype, tol, proper):
    structures = [perovskite(), rock_salt()]
    model = make_model(CDVAE_GRAPH, dtype)
    frac, types, num_atoms, lattice = make_batch(structures, dtype)
    z = latents(len(structures), dtype)
    rot = random_orthogonal(dtype, proper)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    scores_r, logits_r = model(z, frac, types, num_atoms, lattice @ rot.T)
    scale = scores.abs().max()
    torch.testing.assert_close(scores_r / scale, scores @ rot.T / scale, atol=tol, rtol=0)
    torch.testing.assert_close(logits_r, logits, atol=tol * logits.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", list(high_symmetry_crystals()))
def test_unrattled_high_symmetry_crystals(name):
    """Exactly tied 20th/21st neighbours (CDVAE's graph): the whole tied shell is kept, so type logits are
    invariant and scores equivariant under rotation, reflection and permutation."""
    structure = high_symmetry_crystals()[name]()
    model = make_model(CDVAE_GRAPH)
    frac, types, num_atoms, lattice = make_batch([structure], rattle=0.0)
    z = latents(1)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    perm = torch.randperm(frac.shape[0], generator=torch.Generator().manual_seed(5))
    scale = logits.abs().max()
    for proper in (True, False):
        rot = random_orthogonal(torch.float64, proper)
        scores_r, logits_r = model(z, frac[perm], types[perm], num_atoms, lattice @ rot.T)
        torch.testing.assert_close(logits_r / scale, logits[perm] / scale, atol=1e-9, rtol=0)
        torch.testing.assert_close(scores_r / scale, scores[perm] @ rot.T / scale, atol=1e-9, rtol=0)


def test_translation_invariance():
    model = make_model(EXACT_GRAPH)
    frac, types, num_atoms, lattice = make_batch([triclinic(), perovskite()])
    z = latents(2)
    shift = torch.tensor([[0.37, -0.21, 0.83], [0.61, 0.05, -0.44]], dtype=frac.dtype)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    scores_t, logits_t = model(z, frac + shift.repeat_interleave(num_atoms, 0), types, num_atoms, lattice)
    torch.testing.assert_close(scores_t, scores, atol=1e-10, rtol=0)
    torch.testing.assert_close(logits_t, logits, atol=1e-10, rtol=0)


def test_periodic_images_invariance(setup):
    model, (frac, types, num_atoms, lattice), z = setup
    images = torch.randint(-3, 4, frac.shape, generator=torch.Generator().manual_seed(3)).to(frac.dtype)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    scores_i, logits_i = model(z, frac + images, types, num_atoms, lattice)
    torch.testing.assert_close(scores_i, scores, atol=1e-10, rtol=0)
    torch.testing.assert_close(logits_i, logits, atol=1e-10, rtol=0)


def test_permutation_equivariance(setup):
    model, (frac, types, num_atoms, lattice), z = setup
    first = torch.cumsum(num_atoms, 0) - num_atoms
    g = torch.Generator().manual_seed(4)
    perm = torch.cat([f + torch.randperm(int(n), generator=g) for f, n in zip(first, num_atoms, strict=True)])
    scores, logits = model(z, frac, types, num_atoms, lattice)
    scores_p, logits_p = model(z, frac[perm], types[perm], num_atoms, lattice)
    torch.testing.assert_close(scores_p, scores[perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(logits_p, logits[perm], atol=1e-10, rtol=0)


def test_crystals_are_independent(setup):
    model, (frac, types, num_atoms, lattice), z = setup
    scores, logits = model(z, frac, types, num_atoms, lattice)
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        atoms = slice(start, start + n)
        alone = model(z[b : b + 1], frac[atoms], types[atoms], num_atoms[b : b + 1], lattice[b : b + 1])
        torch.testing.assert_close(alone[0], scores[atoms], atol=1e-10, rtol=0)
        torch.testing.assert_close(alone[1], logits[atoms], atol=1e-10, rtol=0)
        start += n


def test_depends_on_z(setup):
    model, (frac, types, num_atoms, lattice), z = setup
    scores, logits = model(z, frac, types, num_atoms, lattice)
    scores_z, logits_z = model(z + 0.5, frac, types, num_atoms, lattice)
    assert (scores_z - scores).abs().max() > 1e-4 and (logits_z - logits).abs().max() > 1e-4


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_noise_conditioned_decoder_uses_sigma_and_stays_equivariant(dtype, tol):
    structures = [perovskite(), rock_salt()]
    model = make_model(DecoderConfig(**SMALL, noise_embedding_dim=8), dtype)
    frac, types, num_atoms, lattice = make_batch(structures, dtype)
    z, sigma = latents(len(structures), dtype), torch.tensor([0.05, 2.0], dtype=dtype)
    with pytest.raises(ValueError, match="pass sigma"):
        model(z, frac, types, num_atoms, lattice)
    scores, logits = model(z, frac, types, num_atoms, lattice, sigma=sigma)
    other, _ = model(z, frac, types, num_atoms, lattice, sigma=sigma.flip(0))
    assert (other - scores).abs().max() > 1e-4 * scores.abs().max()
    rot = random_orthogonal(dtype, proper=False)
    scores_r, logits_r = model(z, frac, types, num_atoms, lattice @ rot.T, sigma=sigma)
    scale = scores.abs().max()
    torch.testing.assert_close(scores_r / scale, scores @ rot.T / scale, atol=tol, rtol=0)
    torch.testing.assert_close(logits_r, logits, atol=tol * logits.abs().max().item(), rtol=0)


def test_noise_level_features_are_bounded_and_tell_levels_apart():
    sigma = torch.logspace(-2, 1, 50, dtype=torch.float64)
    features = noise_level_features(sigma, 16)
    assert features.shape == (50, 16) and features.abs().max() <= 1
    torch.testing.assert_close((features[:, :8] ** 2 + features[:, 8:] ** 2), torch.ones(50, 8, dtype=torch.float64))
    assert torch.cdist(features, features).add(torch.eye(50, dtype=torch.float64)).min() > 1e-2
    with pytest.raises(ValueError, match="even"):
        DecoderConfig(noise_embedding_dim=3)


def test_bf16_autocast_keeps_geometry_precise():
    """Under autocast the graph, bases and the final force sum stay in float32; only the layers run in bf16."""
    model = make_model(CDVAE_GRAPH, torch.float32)
    frac, types, num_atoms, lattice = make_batch([perovskite(), rock_salt()], torch.float32)
    z = latents(2, torch.float32)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores_bf16, logits_bf16 = model(z, frac, types, num_atoms, lattice)
    assert scores_bf16.dtype == torch.float32
    assert (scores_bf16 - scores).norm() < 0.15 * scores.norm()
    assert (logits_bf16.float() - logits).norm() < 0.05 * logits.norm()


def test_gradients_reach_every_parameter():
    model = make_model(CDVAE_GRAPH).train()
    frac, types, num_atoms, lattice = make_batch([perovskite(), rock_salt()])
    scores, logits = model(latents(2), frac, types, num_atoms, lattice)
    (scores.pow(2).sum() + logits.logsumexp(-1).sum()).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_isolated_atom_has_zero_score():
    model = make_model(CDVAE_GRAPH)
    lattice = 20.0 * torch.eye(3, dtype=torch.float64).unsqueeze(0)
    scores, logits = model(latents(1), torch.full((1, 3), 0.3, dtype=torch.float64), torch.tensor([6]),
                           torch.tensor([1]), lattice)
    assert torch.equal(scores, torch.zeros_like(scores)) and torch.isfinite(logits).all()


def test_symmetric_graph_and_id_swap():
    frac, _, num_atoms, lattice = make_batch([triclinic(), rock_salt()])
    graph = build_decoder_graph(frac, lattice, num_atoms, 7.0, 20, (1, 1, 1))
    source, target = graph.edge_index
    swap = graph.id_swap
    assert torch.equal(swap[swap], torch.arange(swap.numel())) and not (swap == torch.arange(swap.numel())).any()
    assert torch.equal(source[swap], target) and torch.equal(target[swap], source)
    assert torch.equal(graph.offsets[swap], -graph.offsets)
    torch.testing.assert_close(graph.directions[swap], -graph.directions, atol=1e-12, rtol=0)
    assert bool((target[1:] >= target[:-1]).all())  # sorted by target
    # The symmetric closure of the radius graph's edges with source < target (or negative self-image offset).
    radius = radius_graph_pbc(frac, lattice, num_atoms, 7.0, 20, max_images=(1, 1, 1))
    kept = {(s, t, tuple(o)) for (s, t), o in zip(radius.edge_index.T.tolist(), radius.offsets.tolist(), strict=True)
            if s < t or (s == t and tuple(o) < (0, 0, 0))}
    expected = kept | {(t, s, tuple(-x for x in o)) for s, t, o in kept}
    got = [(s, t, tuple(o)) for (s, t), o in zip(graph.edge_index.T.tolist(), graph.offsets.tolist(), strict=True)]
    assert len(got) == len(set(got)) and set(got) == expected


def test_triplet_interaction_matches_per_triplet_sum():
    """The table-based triplet sum equals GemNet's sum over triplets (b → a, c → a), written out naively."""
    model = make_model(CDVAE_GRAPH)
    frac, _, num_atoms, lattice = make_batch([triclinic(), perovskite()])
    graph = build_decoder_graph(frac, lattice, num_atoms, 7.0, 20, (1, 1, 1))
    rbf = model.radial_basis(graph.distances)
    rbf3, cbf3 = model.mlp_rbf3(rbf), model.mlp_cbf3(rbf)
    m = torch.randn(graph.distances.numel(), CDVAE_GRAPH.hidden_dim, dtype=torch.float64)
    block = model.int_blocks[0].trip_interaction
    got = block(m, rbf3, cbf3, angle_table(graph, CDVAE_GRAPH.num_spherical), graph)

    trip = triplets(graph.edge_index, graph.num_nodes)
    x_ba = block.down_projection(block.dense_ba(m) * block.mlp_rbf(rbf3))
    cos = (graph.directions[trip.ca] * graph.directions[trip.ba]).sum(-1)
    harmonics = zonal_harmonics(cos, CDVAE_GRAPH.num_spherical)  # (T, L)
    per_triplet = torch.einsum("kl,klj,kt,tjo->ko", harmonics, cbf3[trip.ca], x_ba[trip.ba], block.bilinear)
    x = torch.zeros(m.shape[0], per_triplet.shape[1], dtype=m.dtype).index_add(0, trip.ca, per_triplet)
    expected = (block.up_projection_ca(x) + block.up_projection_ac(x)[graph.id_swap]) / math.sqrt(2)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_radial_basis_is_gemnet_gaussian():
    d = torch.linspace(0.1, 8.0, 50, dtype=torch.float64)
    u, centers = d / 7.0, torch.linspace(0, 1, 128, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (u[:, None] - centers) ** 2 / (centers[1] - centers[0]) ** 2)
    envelope = torch.where(u < 1, 1 - 21 * u**5 + 35 * u**6 - 15 * u**7, torch.zeros_like(u))
    # tvcsp.rbf builds its centres and width in float32 (as CDVAE), hence the tolerance.
    torch.testing.assert_close(radial_basis(128, 7.0).double()(d), gauss * envelope[:, None], atol=1e-5, rtol=0)


def test_zonal_harmonics_are_orthonormal():
    x, w = np.polynomial.legendre.leggauss(16)
    y = zonal_harmonics(torch.tensor(x), 7)  # (16, 7)
    gram = 2 * math.pi * torch.einsum("k,kl,km->lm", torch.tensor(w), y, y)
    torch.testing.assert_close(gram, torch.eye(7, dtype=torch.float64), atol=1e-12, rtol=0)


def test_config_round_trip_and_validation():
    config = DecoderConfig(hidden_dim=64, max_images=None)
    assert DecoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        DecoderConfig(scale_factors="fitted")
    with pytest.raises(ValueError):
        DecoderConfig.from_dict({"hidden": 3})


def test_missing_scale_factor_is_an_error():
    model = make_model(CDVAE_GRAPH)
    with pytest.raises(ValueError, match="TripInteraction_2_had_rbf"):
        load_scale_factors(model, {"TripInteraction_1_had_rbf": 2.0})


def test_cdvae_scale_factors_are_loaded():
    try:
        cdvae_scale_factors()
    except RuntimeError as err:
        pytest.skip(str(err))
    model = GemNetTDecoder(DecoderConfig(), 256)
    factors = {m.name: m.value for m in model.modules() if isinstance(m, ScaleFactor)}
    assert len(factors) == 13  # 3 × 3 interaction factors + 4 output blocks ('_had'; '_sum' is energy-only)
    assert factors["TripInteraction_1_had_rbf"].item() == 18.873615264892578
    assert factors["OutBlock_3_had"].item() == pytest.approx(13.484951972961426)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_latent_type_head_reads_z_and_keeps_logits_invariant(dtype, tol):
    structures = [perovskite(), rock_salt()]
    model = make_model(DecoderConfig(**SMALL, type_head_latent=True), dtype)
    frac, types, num_atoms, lattice = make_batch(structures, dtype)
    z = latents(len(structures), dtype)
    scores, logits = model(z, frac, types, num_atoms, lattice)
    assert logits.shape == (types.numel(), model.config.num_atom_types)
    head_input = model.fc_atom[0].in_features
    assert head_input == model.config.hidden_dim + z.shape[1]
    rot = random_orthogonal(dtype, proper=False)
    scores_r, logits_r = model(z, frac + 0.25, types, num_atoms, lattice @ rot.T)
    scale = scores.abs().max()
    torch.testing.assert_close(scores_r / scale, scores @ rot.T / scale, atol=tol, rtol=0)
    torch.testing.assert_close(logits_r, logits, atol=tol * logits.abs().max().item(), rtol=0)
