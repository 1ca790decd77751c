"""Best-of-k reconstruction: candidates from q(z | x), the one that re-encodes nearest μ(x) kept."""

import json

import pytest
import torch
from conftest import tiny_vae
from torch_geometric.data import Batch

from tvcsp import cli
from tvcsp.checkpoint import save_model
from tvcsp.data import CrystalDataset
from tvcsp.errors import UserInputError
from tvcsp.reencode import (
    INFORMATIVE_SIGMA,
    concat_crystals,
    decode_best_of,
    decode_consistent,
    encode_decoded,
    encode_decoded_posterior,
    roundtrip_distance,
    select_crystals,
)
from tvcsp.sampling import SamplerSettings, decode, make_generator
from tvcsp.tasks import generate, load_samples, reconstruct
from tvcsp.vae import reparameterise

FAST = SamplerSettings(n_step_each=2, min_sigma=8.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    root = tmp_path_factory.mktemp("toy")
    return tiny_vae(root, root / "cache")


def posterior(model, crystals):
    items = CrystalDataset(crystals)
    with torch.no_grad():
        mu, logvar, _ = model.encode(Batch.from_data_list([items[i] for i in range(len(crystals))]), sample=False)
    return mu, logvar


def hand_batch():
    """Three crystals of 1, 3 and 2 atoms whose per-atom values name their crystal."""
    return {"num_atoms": torch.tensor([1, 3, 2]), "lengths": torch.tensor([[1.0] * 3, [2.0] * 3, [3.0] * 3]),
            "angles": torch.full((3, 3), 90.0), "valid_lattice": torch.tensor([True, False, True]),
            "frac_coords": torch.tensor([[0.0] * 3, [0.1] * 3, [0.2] * 3, [0.3] * 3, [0.4] * 3, [0.5] * 3]),
            "atom_types": torch.tensor([10, 21, 22, 23, 31, 32])}


def test_select_crystals_takes_whole_crystals_in_any_order_with_repeats():
    picked = select_crystals(hand_batch(), torch.tensor([2, 0, 2]))
    assert picked["num_atoms"].tolist() == [2, 1, 2]
    assert picked["atom_types"].tolist() == [31, 32, 10, 31, 32]
    assert picked["lengths"][:, 0].tolist() == [3.0, 1.0, 3.0] and picked["valid_lattice"].tolist() == [True] * 3
    assert torch.equal(picked["frac_coords"][:, 0], torch.tensor([0.4, 0.5, 0.0, 0.4, 0.5]))
    both = concat_crystals([hand_batch(), select_crystals(hand_batch(), torch.tensor([1]))])
    assert both["num_atoms"].tolist() == [1, 3, 2, 3] and both["atom_types"][-3:].tolist() == [21, 22, 23]


def test_one_candidate_is_one_decode_of_one_sampled_latent(tiny):
    model, crystals = tiny
    mu, logvar = posterior(model, crystals)
    best = decode_best_of(model, mu, logvar, FAST, 1, generator=make_generator(5))
    generator = make_generator(5)
    once = decode(model, reparameterise(mu, logvar, generator), FAST, generator=generator, progress=False)
    for key, value in once.items():
        assert torch.equal(best[key], value), key
    assert best["candidate"].tolist() == [0] * len(crystals)


def test_best_of_keeps_the_candidate_that_reencodes_nearest_mu(tiny):
    model, crystals = tiny
    mu, logvar = posterior(model, crystals)
    k, n = 3, len(crystals)
    best = decode_best_of(model, mu, logvar, FAST, k, generator=make_generator(7))
    # the same draws, one candidate at a time
    generator, candidates = make_generator(7), []
    for _ in range(k):
        z = reparameterise(mu, logvar, generator)
        candidates.append(decode(model, z, FAST, generator=generator, progress=False))
    distance = torch.stack([(encode_decoded(model, c) - mu).norm(dim=-1) for c in candidates])  # NaN: unusable
    distance[~torch.stack([c["valid_lattice"] for c in candidates])] = torch.inf
    assert torch.allclose(best["distance"], distance, atol=1e-5)
    assert torch.equal(best["candidate"], distance.argmin(0))
    for i in range(n):
        one = select_crystals(candidates[int(best["candidate"][i])], torch.tensor([i]))
        mine = select_crystals(best, torch.tensor([i]))
        for key in one:
            assert torch.equal(mine[key], one[key]), (i, key)
    # the chosen crystal re-encodes at the smallest distance of its row
    assert torch.allclose((encode_decoded(model, best) - mu).norm(dim=-1), distance.min(0).values, atol=1e-5)
    with pytest.raises(UserInputError, match="k ≥ 1"):
        decode_best_of(model, mu, logvar, FAST, 0)


def test_reconstruct_best_of_is_labelled_and_refuses_several_evaluations(tiny, tmp_path):
    model, crystals = tiny
    samples = reconstruct(model, crystals, tmp_path / "rec", FAST, batch_size=3, best_of=2, seed=1, progress=False)
    n = len(crystals)
    assert samples["num_atoms"].shape == (1, n) and samples["candidate_distance"].shape == (n, 2)
    assert set(samples["candidate"].tolist()) <= {0, 1}
    assert torch.equal(samples["candidate"], samples["candidate_distance"].argmin(1))
    assert json.loads((tmp_path / "rec" / "meta.json").read_text())["settings"]["best_of"] == 2
    assert torch.equal(load_samples(tmp_path / "rec")["candidate"], samples["candidate"])
    plain = reconstruct(model, crystals, tmp_path / "one", FAST, batch_size=3, seed=1, progress=False)
    assert "best_of" not in json.loads((tmp_path / "one" / "meta.json").read_text())["settings"]
    assert "candidate" not in plain
    with pytest.raises(UserInputError, match="num_evals = 1"):
        reconstruct(model, crystals, tmp_path / "bad", FAST, best_of=2, num_evals=2, progress=False)
    early = reconstruct(model, crystals, tmp_path / "early", FAST, batch_size=3, best_of=3, accept_distance=1e9,
                        seed=1, progress=False)
    assert json.loads((tmp_path / "early" / "meta.json").read_text())["settings"]["accept_distance"] == 1e9
    first = early["candidate_distance"][:, 0]  # +inf (an unusable lattice) draws again
    assert not first.isnan().any() and early["candidate_distance"][first.isfinite(), 1:].isnan().all()


def test_cli_reconstruct_best_of(tiny, tmp_path, monkeypatch):
    model, crystals = tiny
    path = save_model(tmp_path / "model.pt", model, "toy")
    monkeypatch.setattr(cli, "get_dataset", lambda name: name)
    monkeypatch.setattr(cli, "load_split", lambda info, split, **kwargs: crystals)
    fast = ["--n-step-each", "1", "--min-sigma", "8", "--device", "cpu", "--no-progress"]
    cli.main(["reconstruct", str(path), "--limit", "3", "--best-of", "3", "--out", str(tmp_path / "rec"), *fast])
    samples = load_samples(tmp_path / "rec")
    assert samples["meta"]["settings"]["best_of"] == 3 and samples["candidate_distance"].shape == (3, 3)
    with pytest.raises(SystemExit) as stop:
        cli.main(["reconstruct", str(path), "--best-of", "2", "--num-evals", "2", "--out", str(tmp_path / "x"), *fast])
    assert stop.value.code == 2


def test_accept_stops_early_and_its_extremes_are_the_plain_rules(tiny):
    model, crystals = tiny
    mu, logvar = posterior(model, crystals)
    full = decode_best_of(model, mu, logvar, FAST, 3, generator=make_generator(2))
    never = decode_best_of(model, mu, logvar, FAST, 3, accept=0.0, generator=make_generator(2))
    for key in ("num_atoms", "frac_coords", "atom_types", "candidate", "z"):
        assert torch.equal(never[key], full[key]), key
    always = decode_best_of(model, mu, logvar, FAST, 3, accept=float("inf"), generator=make_generator(2))
    one = decode_best_of(model, mu, logvar, FAST, 1, generator=make_generator(2))
    assert torch.equal(always["frac_coords"], one["frac_coords"]) and always["distance"][1:].isnan().all()

    tau = float(full["distance"][0][full["distance"][0].isfinite()].median())
    some = decode_best_of(model, mu, logvar, FAST, 3, accept=tau, generator=make_generator(2))
    first = some["distance"][0]
    assert torch.equal(first, full["distance"][0])  # round 0 draws every crystal exactly as the plain rule
    stopped = first < tau
    assert stopped.any() and (~stopped).any()
    assert some["distance"][1:, stopped].isnan().all() and not some["distance"][1, ~stopped].isnan().any()
    assert (some["candidate"][stopped] == 0).all()
    drawn = some["distance"].nan_to_num(nan=torch.inf)
    assert torch.equal(some["candidate"], drawn.argmin(0))
    kept = (encode_decoded(model, some) - mu).norm(dim=-1)
    best = drawn.min(0).values
    assert torch.allclose(kept[best.isfinite()], best[best.isfinite()], atol=1e-5)


def test_accept_splits_forced_atoms_between_the_crystals_still_open(tiny):
    model, crystals = tiny
    mu, logvar = posterior(model, crystals)
    forced = {"num_atoms": crystals.num_atoms, "atom_types": crystals.atom_types}
    full = decode_best_of(model, mu, logvar, FAST, 2, generator=make_generator(4), **forced)
    tau = float(full["distance"][0][full["distance"][0].isfinite()].median())
    some = decode_best_of(model, mu, logvar, FAST, 3, accept=tau, generator=make_generator(4), **forced)
    assert (some["distance"][1:].isnan().any(0)).any()  # some crystals stopped early
    assert torch.equal(some["num_atoms"], crystals.num_atoms) and torch.equal(some["atom_types"], crystals.atom_types)
    with pytest.raises(UserInputError, match="forced atom counts"):
        decode_best_of(model, mu, logvar, FAST, 2, accept=tau, atom_types=crystals.atom_types)


def test_roundtrip_distance_leaves_out_uninformative_dimensions(tiny):
    model, crystals = tiny
    mu, logvar = posterior(model, crystals)
    decoded = decode(model, mu, FAST, generator=make_generator(0), progress=False)
    back_mu, back_logvar = encode_decoded_posterior(model, decoded)
    informative = (0.5 * back_logvar).exp() < INFORMATIVE_SIGMA
    far = mu + 100.0 * ~informative  # moving z along uninformative dimensions changes nothing
    distance = roundtrip_distance(model, decoded, mu)
    ok = decoded["valid_lattice"]
    assert torch.allclose(roundtrip_distance(model, decoded, far)[ok], distance[ok])
    assert torch.allclose(distance[ok], ((back_mu - mu) * informative).norm(dim=-1)[ok], atol=1e-6)
    assert distance[~ok].isinf().all()


def test_decode_consistent_redraws_only_what_does_not_read_back(tiny):
    model, _ = tiny
    dim = model.config.latent_dim

    def draws(seed):
        generator = make_generator(seed)
        return generator, (lambda m: torch.randn(m, dim, generator=generator))

    generator, draw = draws(3)
    once = decode_consistent(model, draw, 6, FAST, float("inf"), generator=generator)
    assert (once["draws"] == 1).all()  # nothing is rejected at τ = ∞
    generator, draw = draws(3)
    plain = decode(model, draw(6), FAST, generator=generator, progress=False)
    assert torch.equal(once["frac_coords"], plain["frac_coords"])

    tau = float(once["distance"][once["distance"].isfinite()].median())
    generator, draw = draws(3)
    some = decode_consistent(model, draw, 6, FAST, tau, max_draws=4, generator=generator)
    first_ok = once["distance"] < tau
    assert (some["draws"][first_ok] == 1).all() and (some["draws"][~first_ok] > 1).all()
    assert ((some["distance"] < tau) | (some["draws"] == 4)).all()
    assert torch.equal(some["z"][first_ok], once["z"][first_ok])
    kept = select_crystals(some, first_ok.nonzero().flatten())
    for key, value in select_crystals(once, first_ok.nonzero().flatten()).items():
        assert torch.equal(kept[key], value), key
    assert torch.allclose(roundtrip_distance(model, some, some["z"]), some["distance"])
    with pytest.raises(UserInputError, match="max_draws"):
        decode_consistent(model, draw, 2, FAST, tau, max_draws=0)


def test_generate_with_rejection_is_labelled(tiny, tmp_path):
    model, _ = tiny
    samples = generate(model, 5, tmp_path / "gen", FAST, batch_size=3, reject_distance=0.0, max_draws=2,
                       prior="normal", seed=0, progress=False)
    settings = json.loads((tmp_path / "gen" / "meta.json").read_text())["settings"]
    assert settings["reject_distance"] == 0.0 and settings["max_draws"] == 2
    assert (samples["draws"] == 2).all() and samples["roundtrip_distance"].shape == (5,)
    plain = generate(model, 5, tmp_path / "plain", FAST, batch_size=3, prior="normal", progress=False)
    assert "draws" not in plain and "reject_distance" not in plain["meta"]["settings"]
