import numpy as np
import pytest
import torch
from conftest import perovskite, rock_salt, tiny_cell, triclinic
from pymatgen.core import Lattice

from tvcsp.geometry import (
    cart_to_frac,
    frac_to_cart,
    lattice_matrix_to_params,
    lattice_params_to_matrix,
    lattice_volume,
    minimum_image_diff,
    radius_graph_pbc,
    triplets,
)

DTYPES = [torch.float32, torch.float64]


def as_batch(structures, dtype=torch.float64):
    frac = torch.tensor(np.concatenate([s.frac_coords for s in structures]), dtype=dtype)
    lattice = torch.tensor(np.stack([s.lattice.matrix for s in structures]), dtype=dtype)
    num_atoms = torch.tensor([len(s) for s in structures])
    return frac, lattice, num_atoms


def edge_set(graph, first=0, decimals=4):
    """Multiset of (source, target, offset, rounded distance) with atom indices relative to ``first``."""
    src, tgt = (graph.edge_index - first).tolist()
    return sorted(
        (s, t, tuple(o), round(d, decimals))
        for s, t, o, d in zip(src, tgt, graph.offsets.tolist(), graph.distances.tolist(), strict=True)
    )


def pymatgen_edge_set(structure, cutoff, decimals=4):
    return sorted(
        (nb.index, i, tuple(int(x) for x in nb.image), round(float(nb.nn_distance), decimals))
        for i, nbs in enumerate(structure.get_all_neighbors(cutoff))
        for nb in nbs
    )


def random_rotation(dtype):
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lattice_params_roundtrip_and_pymatgen_convention(dtype):
    lengths = torch.tensor([[3.0, 4.5, 7.1], [5.0, 5.0, 5.0]], dtype=dtype)
    angles = torch.tensor([[70.0, 85.0, 115.0], [90.0, 90.0, 90.0]], dtype=dtype)
    matrix = lattice_params_to_matrix(lengths, angles)
    for k in range(2):
        ref = Lattice.from_parameters(*lengths[k].tolist(), *angles[k].tolist()).matrix
        np.testing.assert_allclose(matrix[k].double().numpy(), ref, atol=1e-5)
    back_lengths, back_angles = lattice_matrix_to_params(matrix)
    torch.testing.assert_close(back_lengths, lengths)
    torch.testing.assert_close(back_angles, angles, atol=1e-3, rtol=0)
    expected_volume = torch.tensor([Lattice(m.double().numpy()).volume for m in matrix], dtype=dtype)
    torch.testing.assert_close(lattice_volume(matrix), expected_volume)


@pytest.mark.parametrize("dtype", DTYPES)
def test_frac_cart_roundtrip_wraps(dtype):
    frac, lattice, num_atoms = as_batch([triclinic(), perovskite()], dtype)
    batch = torch.repeat_interleave(torch.arange(2), num_atoms)
    cart = frac_to_cart(frac, lattice, batch)
    back = cart_to_frac(cart, lattice, batch)
    assert (back >= 0).all() and (back < 1).all()
    torch.testing.assert_close(back, torch.remainder(frac, 1.0), atol=1e-5, rtol=0)


def test_minimum_image_diff_matches_brute_force():
    torch.manual_seed(0)
    lattice = lattice_params_to_matrix(torch.tensor([[5.0, 6.0, 7.0]]), torch.tensor([[80.0, 95.0, 100.0]]))
    lattice = lattice.double()
    batch = torch.zeros(50, dtype=torch.long)
    x1 = torch.rand(50, 3, dtype=torch.float64) @ lattice[0]
    x2 = torch.rand(50, 3, dtype=torch.float64) @ lattice[0]
    d, d2 = minimum_image_diff(x1, x2, lattice, batch)
    grid = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]).double()
    brute = (x1[:, None] - x2[:, None] - grid @ lattice[0]).norm(dim=-1).min(dim=1).values
    torch.testing.assert_close(d.norm(dim=-1), brute)
    torch.testing.assert_close(d2, brute**2)


@pytest.mark.parametrize(
    ("structure", "cutoff"),
    [(perovskite(), 6.0), (triclinic(), 10.0), (tiny_cell(), 10.0), (rock_salt(), 7.0)],
    ids=["perovskite", "triclinic", "tiny-cell", "rock-salt"],
)
def test_radius_graph_equals_pymatgen(structure, cutoff):
    graph = radius_graph_pbc(*as_batch([structure]), cutoff)
    assert edge_set(graph) == pymatgen_edge_set(structure, cutoff)
    cart = structure.cart_coords
    src, tgt = graph.edge_index.numpy()
    expected = cart[src] + graph.offsets.double().numpy() @ structure.lattice.matrix - cart[tgt]
    np.testing.assert_allclose(graph.vectors.numpy(), expected, atol=1e-9)


def test_tiny_cell_is_not_truncated_to_27_images():
    graph = radius_graph_pbc(*as_batch([tiny_cell()]), 10.0)
    assert graph.offsets.abs().max() > 1
    sphere_volume = 4 / 3 * np.pi * 10.0**3
    assert graph.edge_index.shape[1] == pytest.approx(sphere_volume / tiny_cell().volume, rel=0.1)


def test_batched_graph_equals_separate_graphs():
    structures = [perovskite(), triclinic(), tiny_cell(), rock_salt()]
    graph = radius_graph_pbc(*as_batch(structures), 6.0)
    first = 0
    for k, s in enumerate(structures):
        in_crystal = (graph.edge_index[1] >= first) & (graph.edge_index[1] < first + len(s))
        sub = type(graph)(
            graph.edge_index[:, in_crystal], graph.offsets[in_crystal], graph.vectors[in_crystal],
            graph.distances[in_crystal], graph.num_edges,
        )
        assert edge_set(sub, first) == pymatgen_edge_set(s, 6.0)
        assert graph.num_edges[k] == int(in_crystal.sum())
        first += len(s)


@pytest.mark.parametrize("k", [1, 6, 20])
def test_max_neighbors_keeps_the_nearest(k):
    structure = triclinic()
    graph = radius_graph_pbc(*as_batch([structure]), 8.0, max_neighbors=k)
    for i, nbs in enumerate(structure.get_all_neighbors(8.0)):
        ours = np.sort(graph.distances[graph.edge_index[1] == i].numpy())
        ref = np.sort([nb.nn_distance for nb in nbs])[:k]
        np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("k", [1, 5, 7, 16, 20])
def test_capped_graph_keeps_whole_tied_shells(k):
    """Rock salt's shells hold 6, 12, 8, 6, 24 … equidistant neighbours: a cap inside a shell keeps all of it."""
    structure = rock_salt()
    graph = radius_graph_pbc(*as_batch([structure]), 8.0, max_neighbors=k)
    for i, nbs in enumerate(structure.get_all_neighbors(8.0)):
        ref = np.sort([nb.nn_distance for nb in nbs])
        expected = ref[ref <= ref[k - 1] + 1e-9]
        ours = np.sort(graph.distances[graph.edge_index[1] == i].numpy())
        assert len(expected) >= k and len(ours) == len(expected)
        np.testing.assert_allclose(ours, expected, atol=1e-9)


def per_atom_distances(graph, n):
    return [np.round(np.sort(graph.distances[graph.edge_index[1] == i].numpy()), 4).tolist() for i in range(n)]


def same_vector_sets(g1, g2, atol=1e-4) -> bool:
    v1, v2 = g1.vectors.double(), g2.vectors.double()
    return v1.shape == v2.shape and bool(torch.cdist(v1, v2).min(dim=1).values.max() < atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges_invariant_under_rotation_translation_and_lattice_moves(dtype):
    torch.manual_seed(1)
    cutoff = 5.5  # no neighbour lies within float32 rounding of it
    frac, lattice, num_atoms = as_batch([triclinic(), perovskite()], dtype)
    ref = radius_graph_pbc(frac, lattice, num_atoms, cutoff)
    rotated = radius_graph_pbc(frac, lattice @ random_rotation(dtype).T, num_atoms, cutoff)
    shifted = radius_graph_pbc(frac + torch.rand(1, 3, dtype=dtype), lattice, num_atoms, cutoff)
    moved = radius_graph_pbc(frac + torch.randint(-3, 4, frac.shape).to(dtype), lattice, num_atoms, cutoff)
    n = frac.shape[0]
    for other in (rotated, shifted, moved):
        assert per_atom_distances(other, n) == per_atom_distances(ref, n)
    # moving atoms by lattice vectors changes the offsets but not the edge vectors
    assert not torch.equal(moved.offsets, ref.offsets)
    assert same_vector_sets(moved, ref) and same_vector_sets(ref, moved)


def test_edges_invariant_under_permutation_and_cell_choice():
    frac, lattice, num_atoms = as_batch([triclinic()])
    ref = radius_graph_pbc(frac, lattice, num_atoms, 7.0)
    perm = torch.tensor([2, 0, 1])
    permuted = radius_graph_pbc(frac[perm], lattice, num_atoms, 7.0)
    assert per_atom_distances(permuted, 3) == [per_atom_distances(ref, 3)[p] for p in perm.tolist()]
    unimodular = torch.tensor([[1, 1, 0], [0, 1, 0], [-1, 0, 1]], dtype=torch.float64)
    assert abs(torch.det(unimodular)) == 1
    new = radius_graph_pbc(frac @ torch.linalg.inv(unimodular), unimodular @ lattice[0][None], num_atoms, 7.0)
    assert per_atom_distances(new, 3) == per_atom_distances(ref, 3)


def test_graph_vectors_are_differentiable():
    frac, lattice, num_atoms = as_batch([perovskite()])
    frac.requires_grad_(True)
    lattice.requires_grad_(True)
    graph = radius_graph_pbc(frac, lattice, num_atoms, 5.0)
    graph.distances.sum().backward()
    assert torch.isfinite(frac.grad).all() and torch.isfinite(lattice.grad).all()
    assert lattice.grad.abs().sum() > 0


def test_triplets_pair_distinct_edges_with_common_target():
    graph = radius_graph_pbc(*as_batch([triclinic(), perovskite()]), 4.5)
    trip = triplets(graph.edge_index, 8)
    degree = torch.bincount(graph.edge_index[1], minlength=8)
    assert trip.ba.numel() == int((degree * (degree - 1)).sum())
    assert (trip.ba != trip.ca).all()
    assert torch.equal(graph.edge_index[1, trip.ba], graph.edge_index[1, trip.ca])
    pairs = set(zip(trip.ba.tolist(), trip.ca.tolist(), strict=True))
    assert len(pairs) == trip.ba.numel()


def test_empty_and_isolated_inputs():
    frac, lattice, num_atoms = as_batch([perovskite()])
    graph = radius_graph_pbc(frac, lattice, num_atoms, 0.5)
    assert graph.edge_index.shape == (2, 0) and graph.num_edges.tolist() == [0]
    assert triplets(graph.edge_index, 5).ba.numel() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_matches_cpu():
    batch = as_batch([triclinic(), perovskite(), tiny_cell()], torch.float32)
    cpu = radius_graph_pbc(*batch, 6.0, 20)
    gpu = radius_graph_pbc(*(t.cuda() for t in batch), 6.0, 20)
    gpu_on_cpu = type(gpu)(*(t.cpu() for t in vars(gpu).values()))
    assert per_atom_distances(cpu, 9) == per_atom_distances(gpu_on_cpu, 9)
