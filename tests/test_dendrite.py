"""Dendrite-error correlation (DESIGN §3.5): statistics against a float64 two-pass truth (ill-conditioned case
included), batched == per layer, gradients against autograd; the merge of statistics and the running state
against float64 statistics of weighted token populations. The layer and the trainer: test_dendrite_trainer.py."""

import pytest
import torch

import perfkern
from perfkern.dendrites import CorrelationState, batch_moments
from perfkern.ops import dendrite as ops
from perfkern.reference import dendrite as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [
    pytest.param(1, 1, 1, 1, id="L1-P1-C1-N1"),
    pytest.param(1, 7, 3, 5, id="L1-P7-C3-N5"),
    pytest.param(2, 130, 3, 70, id="L2-P130-C3-N70"),
    pytest.param(3, 64, 4, 33, id="L3-P64-C4-N33"),
]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _truth(values, errors):
    """The statistics in float64 by the textbook two-pass formulas, independent of the reference's corrections."""
    v, e = values.double(), errors.double()
    dv = v - v.mean(1, keepdim=True)
    de = e - e.mean(1, keepdim=True)
    return v.mean(1), e.mean(1), (dv * de.unsqueeze(2)).mean(1), (dv * dv).mean(1), (de * de).mean(1)


def _skip_missing(backend, impls=(ops.STATS, ops.GRAD)):
    for impl in impls:
        if not impl.has(backend):
            pytest.skip(f"{impl.name} has no {backend} implementation")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layers,p,c,n", SHAPES)
def test_stats_match_float64_truth(backend, device, layers, p, c, n, dtype):
    _skip_missing(backend)
    values = torch.rand(layers, p, c, n, device=device).to(dtype)
    errors = torch.randn(layers, p, n, device=device).to(dtype)
    got = torch.ops.perfkern.dendrite_stats(values, errors)
    assert perfkern.last_backend("dendrite_stats") == backend
    for name, g, t in zip(["v_mean", "e_mean", "cov", "v_var", "e_var"], got, _truth(values, errors), strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), t, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mode", ["cc", "pearson"])
def test_ill_conditioned_candidates(backend, device, mode):
    """Candidates at initialisation: outputs ≈ 0.5 with a spread of 1e-4. A one-pass E[VE] − E[V]E[E] in fp32
    is wrong here; the kernels must stay at fp32 rounding of the float64 truth."""
    _skip_missing(backend)
    values = (0.5 + 1e-4 * torch.randn(2, 130, 3, 70, device=device)).float()
    errors = torch.randn(2, 130, 70, device=device)
    got = perfkern.dendrite_correlation(values, errors, mode)
    _, _, cov, v_var, e_var = _truth(values, errors)
    truth = cov if mode == "cc" else cov / (v_var * e_var.unsqueeze(1)).sqrt()
    rel = ((got.double() - truth).abs().max() / truth.abs().max()).item()
    assert rel < 1e-3, rel
    if mode == "cc":  # the naive formula really is worse here
        one_pass = (values * errors.unsqueeze(2)).mean(1) - values.mean(1) * errors.mean(1).unsqueeze(1)
        assert ((one_pass.double() - truth).abs().max() / truth.abs().max()).item() > rel


def test_nan_stays_in_its_neuron(backend, device):
    _skip_missing(backend)
    values = torch.rand(1, 40, 2, 9, device=device)
    errors = torch.randn(1, 40, 9, device=device)
    errors[0, 17, 4] = float("nan")
    score = perfkern.dendrite_correlation(values, errors, "pearson")
    assert torch.isnan(score[..., 4]).all()
    clean = torch.cat([score[..., :4], score[..., 5:]], -1)
    assert torch.isfinite(clean).all()
    expected = ref.dendrite_correlation(values, errors, "pearson")
    torch.testing.assert_close(clean, torch.cat([expected[..., :4], expected[..., 5:]], -1), atol=1e-5, rtol=1e-4)


def test_batched_equals_per_layer(backend, device):
    _skip_missing(backend)
    values = torch.rand(3, 50, 4, 20, device=device)
    errors = torch.randn(3, 50, 20, device=device)
    batched = perfkern.dendrite_correlation(values, errors, "pearson")
    for layer in range(3):
        single = perfkern.dendrite_correlation(values[layer], errors[layer], "pearson")
        torch.testing.assert_close(batched[layer], single, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["cc", "pearson"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_matches_autograd_of_reference(backend, device, mode, dtype):
    _skip_missing(backend)
    values = torch.rand(2, 33, 3, 17, device=device).to(dtype).requires_grad_(True)
    errors = torch.randn(2, 33, 17, device=device).to(dtype)
    score = perfkern.dendrite_correlation(values, errors, mode)
    upstream = torch.randn_like(score)
    score.backward(upstream)
    v64 = values.detach().double().requires_grad_(True)
    (ref.dendrite_correlation(v64, errors.double(), mode) * upstream.double()).sum().backward()
    scale = v64.grad.abs().max().item()
    torch.testing.assert_close(values.grad.double(), v64.grad, atol=TOL[dtype] * scale, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("mode", ["cc", "pearson"])
def test_reference_gradcheck(mode):
    values = torch.rand(1, 9, 2, 4, dtype=torch.float64, requires_grad=True)
    errors = torch.randn(1, 9, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: ref.dendrite_correlation(v, errors, mode), (values,))


@pytest.mark.parametrize("mode", ["cc", "pearson"])
def test_float64_gradcheck_of_the_registered_backward(mode):
    values = torch.rand(2, 9, 2, 4, dtype=torch.float64, requires_grad=True)
    errors = torch.randn(2, 9, 4, dtype=torch.float64)
    with perfkern.use_backend("reference"):
        score = perfkern.dendrite_correlation(values, errors, mode)
        assert score.dtype == torch.float64
        torch.testing.assert_close(score, ref.dendrite_correlation(values, errors, mode), atol=1e-12, rtol=1e-12)
        assert torch.autograd.gradcheck(lambda v: perfkern.dendrite_correlation(v, errors, mode), (values,))


@pytest.mark.parametrize("name", ["dendrite_stats", "dendrite_grad", "dendrite_correlation"])
def test_opcheck(device, name):
    values = torch.rand(2, 9, 3, 4, device=device)
    errors = torch.randn(2, 9, 4, device=device)
    stats = ref.stats(values, errors)
    args = {
        "dendrite_stats": (values, errors),
        "dendrite_grad": (values, errors, stats[0], stats[1], torch.randn(2, 3, 4, device=device), stats[3]),
        "dendrite_correlation": (values.clone().requires_grad_(True), errors, "pearson"),
    }[name]
    torch.library.opcheck(getattr(torch.ops.perfkern, name).default, args)


def test_bad_input_gets_a_clear_error():
    values, errors = torch.rand(9, 3, 4), torch.randn(9, 4)
    with pytest.raises(ValueError, match=r"errors must be \[P, N\] = \[9, 4\] for values \[9, 3, 4\], got \[9, 5\]"):
        perfkern.dendrite_correlation(values, torch.randn(9, 5))
    with pytest.raises(ValueError, match=r"values must be \[P, C, N\] or \[L, P, C, N\]"):
        perfkern.dendrite_correlation(values[0], errors)
    with pytest.raises(TypeError, match="errors must have values' dtype"):
        perfkern.dendrite_correlation(values, errors.half())
    with pytest.raises(TypeError, match="values must be float32"):
        perfkern.dendrite_correlation(values.int(), errors)
    with pytest.raises(ValueError, match="mode must be 'cc' or 'pearson'"):
        perfkern.dendrite_correlation(values, errors, "spearman")
    with pytest.raises(ValueError, match="at least one token"):
        perfkern.dendrite_correlation(values[:0], errors[:0])


# Merging statistics and the running state.


def _weighted_truth(batches, weights):
    """float64 statistics of the tokens of all ``batches`` ((values [L, P, C, N], errors [L, P, N]) each), every
    token of batch b weighing weights[b] / P_b (weights sum to 1): v_mean, e_mean, cov, v_var, e_var."""
    v = torch.cat([b[0].double() for b in batches], 1)
    e = torch.cat([b[1].double() for b in batches], 1)
    w = torch.cat([torch.full((b[0].shape[1],), wb / b[0].shape[1], dtype=torch.float64)
                   for b, wb in zip(batches, weights, strict=True)])  # fmt: skip
    wv, we = w.view(1, -1, 1, 1), w.view(1, -1, 1)
    v_mean, e_mean = (wv * v).sum(1), (we * e).sum(1)
    dv, de = v - v_mean.unsqueeze(1), e - e_mean.unsqueeze(1)
    cov = (wv * dv * de.unsqueeze(2)).sum(1)
    return v_mean, e_mean, cov, (wv * dv * dv).sum(1), (we * de * de).sum(1)


def _batches(sizes, c=3, n=5, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(0.5 + spread * (torch.rand(1, p, c, n, generator=g) - 0.5), torch.randn(1, p, n, generator=g))
            for p in sizes]  # fmt: skip


def _close(got, want, rtol=1e-5):
    for name, g, w in zip(["v_mean", "e_mean", "cov", "v_var", "e_var"], got, want, strict=True):
        torch.testing.assert_close(g.double(), w, atol=rtol * w.abs().max().item(), rtol=0, msg=name)


@pytest.mark.parametrize("frac", [None, 0.3], ids=["union", "f0.3"])
def test_merge_is_the_mixture(frac):
    """merge(a, b, n_b / (n_a + n_b)) is the statistics of the union (Chan et al.); a constant f weighs b by f."""
    a, b = _batches([13, 29])
    f = 29 / 42 if frac is None else frac
    got = ref.merge(ref.stats(*a), ref.stats(*b), f)
    _close(got, _weighted_truth([a, b], [1 - f, f]))


@pytest.mark.parametrize("spread", [1.0, 2e-4], ids=["spread1", "ill-conditioned"])
def test_state_cumulative_then_ema(spread):
    """running = the cumulative statistics of the first ``window`` batches' tokens, then each batch weighs 1 − β;
    uneven batch sizes weigh by tokens. The ill-conditioned case: candidates at σ(0) with a spread of 1e-4."""
    window, beta = 3, 0.6
    batches = _batches([20, 7, 33, 12, 25, 9], spread=spread, seed=1)
    state = CorrelationState(1, 3, 5, mode="pearson", window=window, beta=beta)
    weights, seen = [], 0
    for i, (v, e) in enumerate(batches, start=1):
        state.update(v, e)
        seen += v.shape[1]
        f = v.shape[1] / seen if i <= window else 1 - beta
        weights = [w * (1 - f) for w in weights] + [f]
        truth = _weighted_truth(batches[:i], weights)
        _close(state.running.stats, truth, rtol=1e-5 if spread == 1.0 else 1e-3)
        score = truth[2] / (truth[3] * truth[4].unsqueeze(1)).sqrt()
        torch.testing.assert_close(state.score.double(), score, atol=1e-3 if spread < 1 else 1e-5, rtol=0)
    assert state.batches == 6 and state.running.count.item() == seen
    assert torch.equal(state.best_candidates(), state.score.abs().argmax(1))


def test_close_epoch_sees_the_whole_epoch():
    """``improved`` compares the best |score| of the epoch's pooled statistics with the best of earlier epochs."""
    epochs = [_batches([15, 15, 15], seed=2), _batches([30, 10], seed=3), _batches([8], seed=4)]
    state = CorrelationState(1, 3, 5, mode="cc", window=2, beta=0.5, tol=0.0)
    best = torch.zeros(1, 5, dtype=torch.float64)
    for batches in epochs:
        for v, e in batches:
            state.update(v, e)
        sizes = [v.shape[1] for v, _ in batches]
        cov = _weighted_truth(batches, [p / sum(sizes) for p in sizes])[2]
        epoch_best = cov.abs().amax(1)
        improved = state.close_epoch()
        assert torch.equal(improved, epoch_best > best), (improved, epoch_best, best)
        best = torch.maximum(best, epoch_best)
        torch.testing.assert_close(state.best.double(), best, atol=1e-6, rtol=1e-5)
        assert state.epoch.count.item() == 0
    assert not state.close_epoch().any(), "an empty epoch improves nothing"


def test_state_keeps_a_nan_error_out():
    values, errors = torch.rand(1, 20, 2, 6), torch.randn(1, 20, 6)
    errors[0, 3, 2] = float("nan")
    state = CorrelationState(1, 2, 6, mode="pearson")
    state.update(*_batches([20], c=2, n=6)[0])
    before = [t.clone() for t in state.running.stats]
    grad = state.update(values, errors)
    assert torch.isfinite(grad).all() and all(torch.isfinite(t).all() for t in state.running.stats)
    assert grad[..., 2].abs().sum() == 0 and grad[..., 1].abs().sum() > 0
    for got, old in zip(state.running.stats, before, strict=True):
        torch.testing.assert_close(got[..., 2], old[..., 2])  # the NaN batch left neuron 2 as it was


def test_state_gradient_ascends_the_running_score():
    """On the first batch the running score is the batch score, so the fused gradient equals autograd of
    −Σ|score|."""
    values = torch.rand(1, 30, 3, 5, requires_grad=True)
    errors = torch.randn(1, 30, 5)
    state = CorrelationState(1, 3, 5, mode="pearson")
    fused = state.update(values.detach(), errors)
    (-ref.dendrite_correlation(values, errors, "pearson").abs().sum()).backward()
    torch.testing.assert_close(fused, values.grad, atol=1e-6, rtol=1e-4)


def test_candidate_gradient_of_a_split_batch_adds_up():
    """With the statistics of the whole batch, the gradients of its parts are the whole batch's gradient rows:
    what each rank computes under data parallelism."""
    values, errors = torch.rand(1, 40, 3, 5), torch.randn(1, 40, 5)
    state = CorrelationState(1, 3, 5, mode="pearson")
    whole = state.update(values, errors)
    batch = batch_moments(values, errors)
    parts = [state.candidate_grad(values[:, s], errors[:, s], batch) for s in (slice(0, 17), slice(17, 40))]
    torch.testing.assert_close(torch.cat(parts, 1), whole)
