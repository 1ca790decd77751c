import pytest
import torch

from tvcsp.rbf import RBF_KINDS, BesselRBF, CosineEnvelope, GaussianRBF, HybridRBF, PolynomialEnvelope, build_rbf

CUTOFF = 6.0
DTYPES = [torch.float32, torch.float64]


def distances(dtype=torch.float64, n=200, lo=0.3):
    return torch.linspace(lo, CUTOFF * 1.2, n, dtype=dtype)


@pytest.mark.parametrize("kind", RBF_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_dtype_and_out_dim(kind, dtype):
    basis = build_rbf(kind, 16, CUTOFF).to(dtype)
    out = basis(distances(dtype).reshape(20, 10))
    assert out.shape == (20, 10, 16) == (20, 10, basis.out_dim)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_gaussian_centres_and_width():
    basis = GaussianRBF(7, CUTOFF)
    torch.testing.assert_close(basis.centers, torch.linspace(0, CUTOFF, 7))
    assert float(basis.width) == pytest.approx(1.0)
    values = basis(torch.tensor([2.0]))[0]
    assert int(values.argmax()) == 2 and values[2] == pytest.approx(1.0)
    assert values[1] == pytest.approx(torch.exp(torch.tensor(-0.5)).item())


def test_bessel_matches_closed_form_inside_cutoff():
    basis = BesselRBF(4, CUTOFF, envelope="cosine")
    d = torch.tensor([1.3], dtype=torch.float64)
    n = torch.arange(1, 5, dtype=torch.float64)
    envelope = 0.5 * (torch.cos(torch.pi * d / CUTOFF) + 1)
    expected = (2 / CUTOFF) ** 0.5 * torch.sin(n * torch.pi * d / CUTOFF) / d * envelope
    torch.testing.assert_close(basis.double()(d)[0], expected)


@pytest.mark.parametrize("envelope", [CosineEnvelope(CUTOFF), PolynomialEnvelope(CUTOFF)])
def test_envelopes_vanish_smoothly(envelope):
    d = torch.tensor([CUTOFF - 1e-4, CUTOFF, CUTOFF + 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    env = envelope(d)
    (grad,) = torch.autograd.grad(env.sum(), d)
    env = env.detach()
    assert env[0] < 1e-6 and env[1] == 0 and env[2] == 0 and float(env[3]) == pytest.approx(1.0)
    assert abs(grad[0]) < 1e-3 and grad[1] == 0 and grad[2] == 0


@pytest.mark.parametrize("kind", ["bessel", "hybrid"])
def test_bessel_parts_are_smooth_at_the_cutoff(kind):
    basis = build_rbf(kind, 16, CUTOFF).double()
    d = torch.tensor([CUTOFF - 1e-3, CUTOFF + 1e-3], dtype=torch.float64, requires_grad=True)
    bessel = basis if kind == "bessel" else basis.bessel
    values = bessel(d)
    (grad,) = torch.autograd.grad(values.pow(2).sum(), d)
    assert values.abs().max() < 1e-6
    assert torch.isfinite(grad).all() and grad.abs().max() < 1e-6


@pytest.mark.parametrize("kind", RBF_KINDS)
def test_gradients_are_finite_everywhere_including_tiny_distances(kind):
    basis = build_rbf(kind, 16, CUTOFF).double()
    d = torch.cat([torch.tensor([1e-8, 1e-4]), distances()]).requires_grad_(True)
    basis(d).sum().backward()
    assert torch.isfinite(d.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in basis.parameters())


def test_learnable_parameters_receive_gradients():
    bessel = BesselRBF(8, CUTOFF)
    gaussian = GaussianRBF(8, CUTOFF, learnable=True)
    for basis in (bessel, gaussian):
        basis(distances(torch.float32)).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in basis.parameters())


def test_hybrid_weight_scaling_equalises_rms():
    hybrid = HybridRBF(BesselRBF(8, CUTOFF), GaussianRBF(8, CUTOFF)).double()
    d = torch.distributions.Normal(3.0, 0.7).sample((5000,)).clamp(0.8, CUTOFF).double()
    w = hybrid.fit_weight(d)
    out = hybrid(d)
    rms_bessel, rms_gauss = out[:, :8].pow(2).mean().sqrt(), out[:, 8:].pow(2).mean().sqrt()
    assert w > 0 and float(rms_bessel) == pytest.approx(float(rms_gauss), rel=1e-6)
    assert "weight" in dict(hybrid.named_buffers()) and "weight=" in repr(hybrid)
    learnable = build_rbf("hybrid", 16, CUTOFF, learnable_weight=True)
    assert "weight" in dict(learnable.named_parameters())


def test_build_rbf_sizes_and_errors():
    assert all(build_rbf(kind, 32, CUTOFF).out_dim == 32 for kind in RBF_KINDS)
    hybrid = build_rbf("hybrid", 33, CUTOFF)
    assert (hybrid.bessel.out_dim, hybrid.gaussian.out_dim) == (16, 17)
    with pytest.raises(ValueError, match="unknown radial basis"):
        build_rbf("sinc", 8, CUTOFF)
    with pytest.raises(ValueError, match="unknown envelope"):
        GaussianRBF(8, CUTOFF, envelope="box")


def test_repr_is_self_describing():
    text = repr(build_rbf("hybrid", 16, 10.0))
    assert "num_basis=8, cutoff=10.0 Å, learnable=True" in text and "GaussianRBF(num_basis=8" in text
    assert "PolynomialEnvelope" in text
