"""Sharpness metrics against independent oracles: scipy's bounded optimiser and 60-digit
decimal arithmetic for the logit metric, dense Hessians from torch.autograd.functional for
the Hessian metrics, boxes whose maximum is known in closed form for Keskar's metric."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from torch import nn

from precisionlab.train.sharpness import (
    hessian_top_eigenvalue,
    hessian_trace,
    keskar_sharpness,
    logit_sharpness,
    model_logit_sharpness,
)

# ----------------------------------------------------------------------------- logit sharpness


def _ce(z: np.ndarray, y: int) -> float:
    return float(logsumexp(z) - z[y])


def _scipy_logit_sharpness(z: np.ndarray, y: int, eps: float, starts: list[np.ndarray]) -> list[float]:
    """φ reached by L-BFGS-B maximising CE over the box from each start (float64)."""
    radius = eps * (np.abs(z) + 1)
    onehot = np.eye(len(z))[y]

    def neg_ce(delta):
        return -_ce(z + delta, y), -(softmax(z + delta) - onehot)

    base = _ce(z, y)
    values = []
    for start in starts:
        res = minimize(neg_ce, start, jac=True, method="L-BFGS-B", bounds=list(zip(-radius, radius)),
                       options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 1000})
        values.append(100 * (-res.fun - base) / (1 + base))
    return values


@pytest.mark.parametrize("vocab", [2, 10, 257, 1000])
@pytest.mark.parametrize("eps", [1e-3, 0.05])
def test_logit_sharpness_equals_numerical_maximiser(vocab, eps):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(scale=3.0, size=(2, vocab))
    targets = rng.integers(0, vocab, size=2)
    got = logit_sharpness(torch.tensor(logits), torch.tensor(targets), eps)
    for row in range(2):
        z, y = logits[row], int(targets[row])
        radius = eps * (np.abs(z) + 1)
        corner = np.where(np.arange(vocab) == y, -radius, radius)
        # Starts that know nothing of the corner: the centre and random points of the box.
        blind = [np.zeros(vocab), rng.uniform(-radius, radius)]
        found = _scipy_logit_sharpness(z, y, eps, blind)
        assert max(found) == pytest.approx(got[row].item(), rel=1e-5)
        # No start, the corner included, climbs above the closed form.
        for value in found + _scipy_logit_sharpness(z, y, eps, [corner]):
            assert value <= got[row].item() * (1 + 1e-9)


def _decimal_logit_sharpness(z: list[float], y: int, eps: float) -> Decimal:
    """φ at the corner in 60-digit decimal arithmetic, from the float64 inputs exactly."""
    with localcontext() as ctx:
        ctx.prec = 60
        zd = [Decimal(v) for v in z]
        e = Decimal(eps)
        moved = [v - e * (abs(v) + 1) if j == y else v + e * (abs(v) + 1) for j, v in enumerate(zd)]

        def ce(values):
            top = max(values)
            return top + sum((v - top).exp() for v in values).ln() - values[y]

        base = ce(zd)
        return 100 * (ce(moved) - base) / (1 + base)


@pytest.mark.parametrize("eps", [1e-12, 1e-8, 1e-3, 0.5, 3.0])
def test_logit_sharpness_is_accurate_for_tiny_eps_and_confident_rows(eps):
    torch.manual_seed(0)
    logits = torch.randn(4, 50, dtype=torch.float64) * 4
    targets = torch.tensor([0, 7, 13, 49])
    logits[2] = -30.0
    logits[2, 13] = 30.0  # confident and right: CE ≈ 49·e⁻⁶⁰
    logits[3] *= 100  # large logits
    got = logit_sharpness(logits, targets, eps)
    naive_errors = []
    for row in range(4):
        z, y = logits[row].tolist(), int(targets[row])
        exact = _decimal_logit_sharpness(z, y, eps)
        assert got[row].item() == pytest.approx(float(exact), rel=1e-10)
        radius = eps * (np.abs(z) + 1)
        moved = np.array(z) + np.where(np.arange(50) == y, -radius, radius)
        naive = 100 * (_ce(moved, y) - _ce(np.array(z), y)) / (1 + _ce(np.array(z), y))
        naive_errors.append(abs(naive - float(exact)) / float(exact))
    if eps <= 1e-8:  # the tolerance above has teeth: subtracting two CE values misses it
        assert max(naive_errors) > 1e-10


def test_logit_sharpness_float32_logits_match_their_float64_values():
    torch.manual_seed(1)
    logits = torch.randn(5, 100) * 5
    targets = torch.randint(0, 100, (5,))
    got = logit_sharpness(logits, targets, 1e-4)
    assert got.dtype == torch.float64
    for row in range(5):
        exact = _decimal_logit_sharpness(logits[row].double().tolist(), int(targets[row]), 1e-4)
        assert got[row].item() == pytest.approx(float(exact), rel=1e-10)


def test_logit_sharpness_is_nonnegative_zero_at_eps_zero_and_increasing_in_eps():
    torch.manual_seed(2)
    logits = torch.randn(64, 30, dtype=torch.float64) * 6
    targets = torch.randint(0, 30, (64,))
    assert torch.equal(logit_sharpness(logits, targets, 0.0), torch.zeros(64, dtype=torch.float64))
    values = torch.stack([logit_sharpness(logits, targets, eps) for eps in [1e-9, 1e-6, 1e-3, 1e-1, 1.0, 10.0]])
    assert (values > 0).all()
    assert (values.diff(dim=0) > 0).all()


def test_logit_sharpness_single_class_is_zero_and_nonfinite_rows_are_nan():
    assert logit_sharpness(torch.tensor([[3.0]]), torch.tensor([0]), 0.1).item() == 0.0
    out = logit_sharpness(torch.tensor([[1.0, math.nan], [1.0, 2.0]]), torch.tensor([0, 0]), 0.1)
    assert math.isnan(out[0].item()) and math.isfinite(out[1].item())


@pytest.mark.parametrize(
    "logits, targets, eps, message",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), 1e-3, "shape \\(batch, vocab\\)"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), 1e-3, "targets must have shape \\(3,\\)"),
        (torch.zeros(3, 4), torch.zeros(3), 1e-3, "integer class indices"),
        (torch.zeros(3, 4), torch.tensor([0, 4, 1]), 1e-3, "lie in \\[0, 4\\)"),
        (torch.zeros(3, 4), torch.tensor([0, -1, 1]), 1e-3, "lie in \\[0, 4\\)"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), -1e-3, "eps must be a finite number ≥ 0"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), math.nan, "eps must be a finite number ≥ 0"),
    ],
)
def test_logit_sharpness_rejects_bad_input(logits, targets, eps, message):
    with pytest.raises(ValueError, match=message):
        logit_sharpness(logits, targets, eps)


class TinyLM(nn.Module):
    """(B, T) token ids → (B, T, V) logits, optionally as (logits, None) like nanoGPT."""

    def __init__(self, vocab=11, width=8, as_tuple=False, last_only=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(width, vocab)
        self.as_tuple, self.last_only = as_tuple, last_only

    def forward(self, idx):
        x = self.drop(self.embed(idx).cumsum(dim=1))  # (B, T, width): position t sees tokens ≤ t
        if self.last_only:
            x = x[:, [-1], :]  # (B, 1, width)
        logits = self.head(x)
        return (logits, None) if self.as_tuple else logits


@pytest.mark.parametrize("as_tuple, last_only", [(False, False), (True, False), (True, True)])
def test_model_logit_sharpness_uses_last_position_in_eval_mode(as_tuple, last_only):
    torch.manual_seed(3)
    model = TinyLM(as_tuple=as_tuple, last_only=last_only).double().train()
    inputs = torch.randint(0, 11, (6, 5))
    targets = torch.randint(0, 11, (6, 5))
    plain = TinyLM().double()
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        expected = logit_sharpness(plain(inputs)[:, -1, :], targets[:, -1], 0.01).mean().item()
    assert model_logit_sharpness(model, inputs, targets, eps=0.01) == pytest.approx(expected, rel=1e-12)
    assert model_logit_sharpness(model, inputs, targets[:, -1], eps=0.01) == pytest.approx(expected, rel=1e-12)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_model_logit_sharpness_rejects_bad_shapes():
    model = TinyLM()
    with pytest.raises(ValueError, match="inputs must be token ids"):
        model_logit_sharpness(model, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have shape \\(2, 3\\)"):
        model_logit_sharpness(model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="must return logits of shape"):
        model_logit_sharpness(nn.Flatten(), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- Hessian


def _quadratic(spectrum: list[float], seed: int = 0):
    """Loss ½θᵀAθ over two parameter tensors, A = Q diag(spectrum) Qᵀ with Q random orthogonal."""
    gen = torch.Generator().manual_seed(seed)
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T
    a = (a + a.T) / 2
    params = [nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64)),
              nn.Parameter(torch.randn(n - 3, generator=gen, dtype=torch.float64))]

    def loss_fn():
        theta = torch.cat(params)
        return 0.5 * theta @ a @ theta

    return loss_fn, params, a


@pytest.mark.parametrize("spectrum", [[10.0, 6.0, 3.0, 1.0, 0.5, -0.2, -1.0, 2.0],  # dominant positive
                                      [-10.0, 6.0, 3.0, 1.0, 0.5, -0.2, -1.0, 2.0]])  # dominant negative
def test_top_eigenvalue_of_quadratic(spectrum):
    loss_fn, params, _ = _quadratic(spectrum)
    value, iterations, converged = hessian_top_eigenvalue(loss_fn, params, iters=500, tol=1e-9)
    assert converged and iterations < 500
    assert value == pytest.approx(max(spectrum, key=abs), rel=1e-12)  # signed


def test_top_eigenvalue_defaults_converge_with_a_gap_and_say_so_without():
    loss_fn, params, _ = _quadratic([10.0, 9.0, 3.0, 1.0, 0.5, -0.2, -1.0, 2.0])  # |λ₂/λ₁| = 0.9
    value, iterations, converged = hessian_top_eigenvalue(loss_fn, params)  # tol = 1e-4, 100 iterations
    assert converged and iterations < 100
    assert abs(value - 10.0) <= 1e-4 * 10.0  # the residual bound
    loss_fn, params, _ = _quadratic([10.0, 9.99, 3.0, 1.0, 0.5, -0.2, -1.0, 2.0])  # |λ₂/λ₁| = 0.999
    value, iterations, converged = hessian_top_eigenvalue(loss_fn, params)
    assert not converged and iterations == 100


def test_top_eigenvalue_does_not_claim_convergence_on_a_plus_minus_pair():
    loss_fn, params, _ = _quadratic([5.0, -5.0, 1.0, 0.5, 0.2])
    value, iterations, converged = hessian_top_eigenvalue(loss_fn, params, iters=60)
    assert not converged and iterations == 60
    assert abs(value) < 5.0  # the Rayleigh quotient stalls between the pair


def test_top_eigenvalue_is_deterministic_and_leaves_global_rng_alone():
    loss_fn, params, _ = _quadratic([4.0, 3.5, 3.0, 1.0, 0.5])
    state = torch.get_rng_state()
    first = hessian_top_eigenvalue(loss_fn, params, iters=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert hessian_top_eigenvalue(loss_fn, params, iters=5) == first
    other = hessian_top_eigenvalue(loss_fn, params, iters=5, generator=torch.Generator().manual_seed(7))
    assert other.value != first.value


def test_zero_hessian():
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    assert hessian_top_eigenvalue(lambda: (3 * weight).sum(), [weight]) == (0.0, 1, True)
    assert hessian_trace(lambda: (3 * weight).sum(), [weight]) == (0.0, 0.0)


def _offdiagonal_se(h: torch.Tensor, samples: int) -> float:
    """Standard error of Hutchinson with Rademacher vectors: Var(vᵀHv) = 2 Σ_{i≠j} H_ij²."""
    return math.sqrt(2 * (h.square().sum() - h.diag().square().sum()).item() / samples)


def test_trace_of_quadratic():
    spectrum = [10.0, 6.0, 3.0, 1.0, 0.5, -0.2, -1.0, 2.0]
    loss_fn, params, a = _quadratic(spectrum)
    estimate, se = hessian_trace(loss_fn, params, samples=400)
    assert abs(estimate - sum(spectrum)) <= 4 * se
    assert se == pytest.approx(_offdiagonal_se(a, 400), rel=0.25)


def test_trace_is_exact_for_a_diagonal_hessian():
    curvature = torch.tensor([3.0, -1.0, 0.25, 7.0], dtype=torch.float64)
    theta = nn.Parameter(torch.tensor([0.3, -1.2, 2.0, 0.1], dtype=torch.float64))

    def loss_fn():  # separable ⇒ diagonal Hessian: diag(curvature) + diag(−sin θ)
        return (0.5 * curvature * theta**2 + torch.sin(theta)).sum()

    exact = (curvature - torch.sin(theta.detach())).sum().item()
    estimate, se = hessian_trace(loss_fn, [theta], samples=20)
    assert estimate == pytest.approx(exact, rel=1e-13)
    assert se <= 1e-13 * abs(exact)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def mlp_problem():
    """A small tanh MLP, its cross-entropy closure and its dense Hessian (autograd.functional)."""
    torch.manual_seed(4)
    model = _MLP().double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    params = list(model.parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of_flat(vector):
        chunks = vector.split([s.numel() for s in shapes])
        state = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    return loss_fn, params, (hessian + hessian.T) / 2


def test_top_eigenvalue_of_mlp_matches_dense_hessian(mlp_problem):
    loss_fn, params, hessian = mlp_problem
    eigenvalues = torch.linalg.eigvalsh(hessian)
    by_magnitude = eigenvalues[eigenvalues.abs().argsort(descending=True)]
    assert by_magnitude[1].abs() < 0.9 * by_magnitude[0].abs()  # a gap, so the check is well posed
    value, _, converged = hessian_top_eigenvalue(loss_fn, params, iters=2000, tol=1e-8)
    assert converged
    assert value == pytest.approx(by_magnitude[0].item(), rel=1e-10)


def test_trace_of_mlp_matches_dense_hessian(mlp_problem):
    loss_fn, params, hessian = mlp_problem
    estimate, se = hessian_trace(loss_fn, params, samples=400, generator=torch.Generator().manual_seed(1))
    assert abs(estimate - hessian.trace().item()) <= 4 * se
    assert se == pytest.approx(_offdiagonal_se(hessian, 400), rel=0.25)


def test_hessian_metrics_reject_bad_input():
    weight = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="params is empty"):
        hessian_trace(lambda: weight.sum(), [])
    with pytest.raises(ValueError, match="requires_grad"):
        hessian_top_eigenvalue(lambda: weight.sum(), [torch.ones(2)])
    with pytest.raises(ValueError, match="samples must be ≥ 2"):
        hessian_trace(lambda: weight.sum(), [weight], samples=1)
    with pytest.raises(ValueError, match="iters must be ≥ 1"):
        hessian_top_eigenvalue(lambda: weight.sum(), [weight], iters=0)


# ----------------------------------------------------------------------------- Keskar


def _box(params, eps):
    return [eps * (p.detach().abs() + 1) for p in params]


def test_keskar_reaches_the_corner_of_a_linear_loss():
    gen = torch.Generator().manual_seed(5)
    params = [nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)),
              nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))]
    slopes = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.tensor([0.0, 1, -2, 3, 0], dtype=torch.float64)]
    origin = [p.detach().clone() for p in params]

    def loss_fn():  # L(θ) = 2, flat along the two zero slopes
        return 2.0 + sum((s * (p - o)).sum() for s, p, o in zip(slopes, params, origin))

    eps = 1e-2
    exact = 100 * sum((s.abs() * r).sum().item() for s, r in zip(slopes, _box(params, eps))) / 3.0
    assert keskar_sharpness(loss_fn, params, eps=eps) == pytest.approx(exact, rel=1e-12)


def test_keskar_reaches_the_maximum_of_a_separable_convex_quadratic():
    theta = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 3.0, 0.0], dtype=torch.float64))
    centre = torch.tensor([0.4, -1.0, 2.5, 3.0, 0.001], dtype=torch.float64)  # two at their minimum
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 10.0], dtype=torch.float64)

    def loss_fn():
        return (weight * (theta - centre) ** 2).sum()

    eps = 0.01
    r = _box([theta], eps)[0]
    base = loss_fn().item()
    top = (weight * ((theta.detach() - centre).abs() + r) ** 2).sum().item()  # the farther end, per coordinate
    exact = 100 * (top - base) / (1 + base)
    assert keskar_sharpness(loss_fn, [theta], eps=eps) == pytest.approx(exact, rel=1e-12)


def test_keskar_never_exceeds_the_true_maximum_of_a_wiggly_loss():
    theta = nn.Parameter(torch.linspace(-2, 2, 9, dtype=torch.float64))
    k = 40.0  # several periods per box: sign ascent can stall on a lower crest

    def loss_fn():
        return 5 + torch.sin(k * theta).sum()

    for eps in [1e-3, 0.02, 0.2]:
        lo, hi = theta.detach() - _box([theta], eps)[0], theta.detach() + _box([theta], eps)[0]
        crest = torch.ceil((k * lo - math.pi / 2) / (2 * math.pi)) * 2 * math.pi + math.pi / 2  # first crest ≥ k·lo
        per_coordinate = torch.where(crest <= k * hi, torch.ones_like(lo), torch.maximum(torch.sin(k * lo), torch.sin(k * hi)))
        base = loss_fn().item()
        exact = 100 * (5 + per_coordinate.sum().item() - base) / (1 + base)
        got = keskar_sharpness(loss_fn, [theta], eps=eps, steps=20, lr=0.25)
        assert 0 <= got <= exact + 1e-9


def test_keskar_restores_parameters_bit_exactly():
    torch.manual_seed(6)
    model = _MLP()  # float32: θ + δ − δ ≠ θ in general, so restoring must copy back
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    got = keskar_sharpness(lambda: nn.functional.cross_entropy(model(x), y), model.parameters(), eps=0.05)
    assert got > 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    assert keskar_sharpness(lambda: nn.functional.cross_entropy(model(x), y), model.parameters(), eps=0.0) == 0.0


def test_keskar_restores_parameters_when_the_loss_raises():
    torch.manual_seed(7)
    model = _MLP()
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    calls = 0

    def loss_fn():
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="boom"):
        keskar_sharpness(loss_fn, model.parameters(), eps=0.05)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_keskar_rejects_bad_input():
    weight = nn.Parameter(torch.ones(2))
    for kwargs, message in [({"eps": -1.0}, "eps must be"), ({"steps": 0}, "steps must be"), ({"lr": 0.0}, "lr must be")]:
        with pytest.raises(ValueError, match=message):
            keskar_sharpness(lambda: weight.sum(), [weight], **kwargs)
