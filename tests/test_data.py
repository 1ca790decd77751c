import functools
import gzip
import http.server
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import perovskite, rock_salt, triclinic
from pymatgen.core import Lattice, Structure
from torch_geometric.loader import DataLoader

from tvcsp.data import (
    CrystalBatches,
    CrystalDataset,
    CrystalParseError,
    CrystalTensors,
    DatasetInfo,
    SplitSource,
    StandardScaler,
    batch_ranges,
    canonical_crystal,
    cdvae_settings,
    compute_stats,
    custom_dataset,
    download_file,
    fit_scalers,
    get_dataset,
    git_blob_id,
    load_split,
    load_stats,
    scaled_lattice,
)

BAD_CIF = "data_broken\n_cell_length_a 3.0\nthis is not a cif\n"
NAN_CIF = perovskite().to(fmt="cif").replace("0.50000000  0.50000000  0.50000000", "nan  0.50000000  0.50000000", 1)


def write_csv(path, structures, extra_rows=(), prop="energy"):
    rows = [{"material_id": f"m-{i}", "cif": s.to(fmt="cif"), prop: float(i)} for i, s in enumerate(structures)]
    rows += [{"material_id": mid, "cif": cif, prop: 0.0} for mid, cif in extra_rows]
    pd.DataFrame(rows).to_csv(path)
    return path


@pytest.fixture
def toy(tmp_path):
    """A user dataset folder with three splits; val holds one malformed and one NaN row."""
    folder = tmp_path / "toy"
    folder.mkdir()
    write_csv(folder / "train.csv", [perovskite(), triclinic(), rock_salt()])
    write_csv(folder / "val.csv", [perovskite()], extra_rows=[("bad-1", BAD_CIF), ("nan-1", NAN_CIF)])
    write_csv(folder / "test.csv", [triclinic(), perovskite()])
    info = custom_dataset("toy", {"train": "train.csv", "val": "val.csv", "test": ["test.csv", "train.csv[0:1]"]},
                          prop="energy")
    return info, tmp_path


def test_canonical_crystal_removes_orientation_and_wraps():
    s = triclinic()
    rotated = Structure(Lattice(s.lattice.matrix @ np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]),
                        s.species, s.frac_coords)
    z1, f1, l1, a1 = canonical_crystal(s.to(fmt="cif"))
    z2, f2, l2, a2 = canonical_crystal(rotated.to(fmt="cif"))
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(a1, a2, atol=1e-4)
    assert (f1 >= 0).all() and (f1 < 1).all() and sorted(z1) == sorted(z2) == [11, 17, 17]
    reduced = s.get_reduced_structure()
    np.testing.assert_allclose(l1, reduced.lattice.abc, atol=1e-6)


def test_load_split_parses_and_concatenates_sources(toy):
    info, root = toy
    train = load_split(info, "train", data_dir=root, progress=False)
    assert len(train) == 3 and train.num_atoms.tolist() == [5, 3, 8]
    assert train.material_ids == ["m-0", "m-1", "m-2"] and train.y.tolist() == [0.0, 1.0, 2.0]
    assert train.meta["dataset"] == "toy" and train.meta["split"] == "train"
    test = load_split(info, "test", data_dir=root, progress=False)
    assert test.num_atoms.tolist() == [3, 5, 5]
    structure = test.to_structure(1)
    assert structure.composition.reduced_formula == "SrTiO3"
    assert structure.lattice.abc == pytest.approx((3.905,) * 3)


def test_bad_rows_raise_with_location_or_are_skipped_and_counted(toy):
    info, root = toy
    with pytest.raises(CrystalParseError, match=r"val.csv: row 1 \(material_id=bad-1\)"):
        load_split(info, "val", data_dir=root, progress=False)
    val = load_split(info, "val", data_dir=root, on_error="skip", progress=False)
    assert len(val) == 1
    assert len(val.meta["skipped"]) == 2
    assert "nan-1" in val.meta["skipped"][1] and "row 2" in val.meta["skipped"][1]


def test_missing_cif_column_and_missing_files_are_clear(tmp_path):
    folder = tmp_path / "nocif"
    folder.mkdir()
    pd.DataFrame({"material_id": ["a"], "structure": ["x"]}).to_csv(folder / "train.csv")
    info = custom_dataset("nocif", {"train": "train.csv", "val": "absent.csv"})
    with pytest.raises(CrystalParseError, match="no 'cif' column"):
        load_split(info, "train", data_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="nocif/val: absent.csv not found"):
        load_split(info, "val", data_dir=tmp_path, progress=False)
    with pytest.raises(KeyError, match="has no split 'test'"):
        load_split(info, "test", data_dir=tmp_path, progress=False)
    with pytest.raises(KeyError, match="unknown dataset 'perov_6'"):
        get_dataset("perov_6")


def test_cache_roundtrip_and_invalidation(toy, tmp_path, monkeypatch):
    info, root = toy
    cache = tmp_path / "cache"
    first = load_split(info, "train", data_dir=root, cache=cache, progress=False)
    assert (cache / "toy" / "train.pt").is_file()
    again = CrystalTensors.load(cache / "toy" / "train.pt")
    for field in ("atom_types", "frac_coords", "num_atoms", "lengths", "angles", "y"):
        assert torch.equal(getattr(first, field), getattr(again, field))

    def no_parsing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("tvcsp.data.dataset.parse_csv_rows", no_parsing)
    cached = load_split(info, "train", data_dir=root, cache=cache, progress=False)
    assert cached.material_ids == first.material_ids
    write_csv(root / "toy" / "train.csv", [perovskite(), triclinic()])  # the source changes
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_split(info, "train", data_dir=root, cache=cache, progress=False)
    monkeypatch.undo()
    assert len(load_split(info, "train", data_dir=root, cache=cache, progress=False)) == 2


def test_cache_is_used_when_sources_are_absent(toy, tmp_path):
    info, root = toy
    cache = tmp_path / "cache"
    load_split(info, "train", data_dir=root, cache=cache, progress=False)
    (root / "toy" / "train.csv").unlink()
    assert len(load_split(info, "train", data_dir=root, cache=cache, progress=False)) == 3


def test_cache_rejects_other_format_versions(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0}, path)
    with pytest.raises(ValueError, match="cache format 0"):
        CrystalTensors.load(path)


def test_gzip_files_are_found_for_plain_names(toy):
    info, root = toy
    plain = root / "toy" / "train.csv"
    with open(plain, "rb") as src, gzip.open(root / "toy" / "train.csv.gz", "wb") as dst:
        dst.write(src.read())
    plain.unlink()
    assert len(load_split(info, "train", data_dir=root, progress=False)) == 3


def test_split_source_syntax():
    assert SplitSource.parse("test.csv.gz[0::2]") == SplitSource("test.csv.gz", 0, None, 2)
    assert SplitSource.parse("a/b.csv[10:20]").rows == slice(10, 20)
    assert str(SplitSource.parse("x.csv[:5]")) == "x.csv[:5]" and str(SplitSource.parse("x.csv")) == "x.csv"
    with pytest.raises(ValueError, match="cannot read split source"):
        SplitSource.parse("x.csv[1:2")


def test_registry_labels_reduced_splits():
    assert get_dataset("perov_5").label == "perov_5" and not get_dataset("perov_5").reduced
    for name in ("carbon_24_reduced", "mp_20_reduced"):
        assert get_dataset(name).reduced and get_dataset(name).label.endswith("(reduced split)")
    assert get_dataset("mp_20").paper.cutoff == 10.0 and get_dataset("perov_5").paper.rbf == "bessel"


def test_cdvae_settings_travel_with_the_registry_entry():
    perov, carbon, mp20 = (get_dataset(name).cdvae for name in ("perov_5", "carbon_24", "mp_20"))
    assert (perov.batch_size, perov.teacher_forcing_max_epoch, perov.property_model) == (512, 1500, "perovskite")
    assert (mp20.batch_size, mp20.teacher_forcing_max_epoch, carbon.property_model) == (256, 500, "carbon")
    assert carbon.cov_thresholds == perov.cov_thresholds == (0.2, 4.0) and mp20.cov_thresholds == (0.4, 10.0)
    assert perov.sr_thresholds == (0.439248, 0.612024, 0.736461)
    assert get_dataset("carbon_24_reduced").cdvae is carbon and get_dataset("mp_20_reduced").cdvae is mp20
    assert cdvae_settings("mp_20_reduced (reduced split)", "x") is mp20  # a result's label works too
    user = custom_dataset("mine", {"test": "t.csv"})
    assert user.cdvae is None
    for dataset in (user, "qm9", "mp_20_partial"):  # no name-prefix guessing
        with pytest.raises(KeyError, match="no CDVAE coverage thresholds for dataset") as err:
            cdvae_settings(dataset, "coverage thresholds")
        assert "\n" not in err.value.args[0]
    assert cdvae_settings(custom_dataset("mine", {"test": "t.csv"}, cdvae=mp20), "x") is mp20


def test_scalers_are_population_std_plus_epsilon():
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    scaler = StandardScaler.fit(x)
    torch.testing.assert_close(scaler.mean, torch.tensor([2.0, 10.0], dtype=torch.float64))
    torch.testing.assert_close(scaler.std, torch.tensor([1.0 + 1e-5, 1e-5], dtype=torch.float64))
    torch.testing.assert_close(scaler.inverse_transform(scaler.transform(x)), x)
    assert StandardScaler.from_dict(scaler.to_dict()).mean.tolist() == [2.0, 10.0]
    lat = scaled_lattice(torch.tensor([[4.0, 4.0, 8.0]]), torch.tensor([[90.0, 90.0, 90.0]]), torch.tensor([8]))
    assert lat.tolist() == [[2.0, 2.0, 4.0, 90.0, 90.0, 90.0]]


def test_stats_on_crystals_with_known_answers(toy):
    info, root = toy
    simple_cubic = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])
    folder = root / "known"
    folder.mkdir()
    write_csv(folder / "train.csv", [simple_cubic, rock_salt()])
    known = custom_dataset("known", {"train": "train.csv"}, prop="energy")
    stats = load_stats(known, cutoff=3.1, max_neighbors=20, data_dir=root, progress=False)
    assert stats.max_atoms == 8 and stats.mean_atoms == pytest.approx(4.5)
    assert stats.mean_coordination == pytest.approx(6.0) and stats.coordination_sample == 2
    # simple cubic: 6 neighbours at 3.0 Å; rock salt (a = 5.64): 6 at 2.82 Å
    assert stats.mean_graph_degree == pytest.approx(6.0)
    assert stats.elements == (11, 17, 84)
    train = load_split(known, "train", data_dir=root, progress=False)
    # a cap of 4 falls inside both crystals' 6-fold tied first shell: the whole shell is kept
    assert compute_stats(train, 4.5, 4, progress=False).mean_graph_degree == pytest.approx(6.0)
    # a cap of 7 falls inside the 12-fold second shell (4.24 Å; 3.99 Å): kept whole as well
    assert compute_stats(train, 4.5, 7, progress=False).mean_graph_degree == pytest.approx(18.0)


def test_pyg_dataset_batches(toy):
    info, root = toy
    train = load_split(info, "train", data_dir=root, progress=False)
    scalers = fit_scalers(train)
    batch = next(iter(DataLoader(CrystalDataset(train, scalers), batch_size=3)))
    assert batch.num_atoms.tolist() == [5, 3, 8] and batch.atom_types.shape == (16,)
    assert batch.lengths.shape == (3, 3) and batch.scaled_lattice.shape == (3, 6)
    assert batch.batch.tolist() == [0] * 5 + [1] * 3 + [2] * 8
    torch.testing.assert_close(batch.scaled_lattice.double().mean(0), torch.zeros(6, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_crystal_batches_cover_the_split_in_order_like_a_data_loader(toy):
    info, root = toy
    train = load_split(info, "train", data_dir=root, progress=False)
    assert batch_ranges(5, 2) == [range(0, 2), range(2, 4), range(4, 5)] and batch_ranges(0, 3) == []
    with pytest.raises(ValueError, match="batch_size must be positive"):
        batch_ranges(5, 0)
    scalers = fit_scalers(train)
    batches = CrystalBatches(train, 2, scalers)
    assert len(batches) == 2 and batches.ranges == [range(0, 2), range(2, 3)]
    loaded = list(DataLoader(CrystalDataset(train, scalers), batch_size=2))
    for ours, theirs in zip(batches, loaded, strict=True):
        assert all(torch.equal(ours[k], theirs[k]) for k in ("num_atoms", "atom_types", "frac_coords", "batch",
                                                              "scaled_lattice", "y_scaled"))
    assert not hasattr(CrystalBatches(train, 2)[0], "scaled_lattice")  # without scalers: the raw crystals only


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server serving ``tmp_path / 'www'``; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def test_download_verifies_checksum_and_is_atomic(http_server, tmp_path):
    url, www = http_server
    source = write_csv(www / "train.csv", [perovskite()])
    blob = git_blob_id(source)
    dest = download_file(f"{url}/train.csv", tmp_path / "dl" / "train.csv", git_blob=blob, progress=False)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(f"{url}/train.csv", tmp_path / "dl2" / "train.csv", git_blob="0" * 40, progress=False)
    assert not any((tmp_path / "dl2").iterdir())
    with pytest.warns(UserWarning, match="unverified"):
        download_file(f"{url}/train.csv", tmp_path / "dl3" / "train.csv", progress=False)


def test_load_split_downloads_missing_official_files(http_server, tmp_path):
    url, www = http_server
    source = write_csv(www / "train.csv", [perovskite(), rock_salt()])
    info = DatasetInfo("remote", "energy", 20, {"train": (SplitSource("train.csv", git_blob=git_blob_id(source)),)},
                       url=url)
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_split(info, "train", data_dir=tmp_path / "local", progress=False)
    crystals = load_split(info, "train", data_dir=tmp_path / "local", download=True, progress=False)
    assert len(crystals) == 2 and (tmp_path / "local" / "remote" / "train.csv").is_file()


def test_shared_perov_5_test_split(shared_data):
    test = load_split("perov_5", "test", data_dir=shared_data, progress=False)
    assert len(test) == 3785 and (test.num_atoms == 5).all()
    torch.testing.assert_close(test.angles, torch.full_like(test.angles, 90.0))
    assert test.meta["stamp"]["sources"][0]["sha256"].startswith("b635a7e4")
    assert git_blob_id(shared_data / "perov_5" / "test.csv.gz") == get_dataset("perov_5").splits["test"][0].git_blob


def test_shared_reduced_carbon_split_is_labelled(shared_data):
    val = load_split("carbon_24_reduced", "val", data_dir=shared_data, progress=False)
    assert len(val) == 1015 and val.meta["reduced"] and set(val.atom_types.tolist()) == {6}
    assert val.num_atoms.max() <= 24


@pytest.mark.slow
def test_shared_perov_5_scalers_match_cdvae(shared_data):
    scalers = fit_scalers(load_split("perov_5", "train", data_dir=shared_data, progress=False))
    np.testing.assert_allclose(scalers.lattice.mean[:3], 2.42398, atol=1e-5)
    np.testing.assert_allclose(scalers.lattice.std[:3], 0.17867, atol=1e-5)
    assert float(scalers.prop.mean) == pytest.approx(1.40322, abs=1e-4)
    assert float(scalers.prop.std) == pytest.approx(0.68022, abs=1e-4)
