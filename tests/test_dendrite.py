"""Dendrite-error correlation (DESIGN §3.5): statistics against a float64 two-pass truth (ill-conditioned case
included), batched == per layer, gradients against autograd, the running state, the layer and the trainer."""

import pytest
import torch
from torch import nn

import perfkern
from perfkern.dendrites import CorrelationState, DendriteLayer, DendriteTrainer, add_dendrites
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


# The running state.


def test_state_cumulative_then_ema():
    torch.manual_seed(0)
    state = CorrelationState(1, 2, 3, mode="cc", window=3, beta=0.5)
    batches = [(torch.rand(1, 20, 2, 3), torch.randn(1, 20, 3)) for _ in range(6)]
    expected = torch.zeros(1, 2, 3)
    best = torch.zeros(1, 3)
    for i, (v, e) in enumerate(batches, start=1):
        state.update(v, e)
        s = ref.dendrite_correlation(v, e, "cc")
        expected = expected + (s - expected) / i if i <= 3 else 0.5 * expected + 0.5 * s
        torch.testing.assert_close(state.running, expected, atol=1e-6, rtol=1e-5)
        candidate_best = expected.abs().amax(1)
        torch.testing.assert_close(state.improved, candidate_best > best * (1 + state.tol))
        best = torch.maximum(best, candidate_best)
        torch.testing.assert_close(state.best, best)
    assert state.batches == 6
    assert torch.equal(state.best_candidates(), state.running.abs().argmax(1))


def test_state_keeps_a_nan_error_out_of_the_gradient():
    values, errors = torch.rand(1, 20, 2, 6), torch.randn(1, 20, 6)
    errors[0, 3, 2] = float("nan")
    state = CorrelationState(1, 2, 6, mode="pearson")
    grad = state.update(values, errors)
    assert torch.isfinite(grad).all() and torch.isfinite(state.running).all()
    assert grad[..., 2].abs().sum() == 0 and grad[..., 1].abs().sum() > 0


def test_state_gradient_ascends_the_running_score():
    """On the first batch the running score is the batch score, so the fused gradient equals autograd of
    −Σ|score|."""
    values = torch.rand(1, 30, 3, 5, requires_grad=True)
    errors = torch.randn(1, 30, 5)
    state = CorrelationState(1, 3, 5, mode="pearson")
    fused = state.update(values.detach(), errors)
    (-ref.dendrite_correlation(values, errors, "pearson").abs().sum()).backward()
    torch.testing.assert_close(fused, values.grad, atol=1e-6, rtol=1e-4)


# The layer and the trainer.


def _regression(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(256, 16)
    return model, x, torch.sin(3 * x[:, :4])


def test_layer_is_the_base_until_dendrites_train():
    model, x, _ = _regression()
    plain = [m(x) for m in [model]][0].detach()
    layers = add_dendrites(model, candidates=3, rank=2)
    assert len(layers) == 2 and all(isinstance(m, DendriteLayer) for m in (model[0], model[2]))
    torch.testing.assert_close(model(x), plain)
    best = torch.zeros(32, dtype=torch.long)
    layers[0].install_best(best)
    torch.testing.assert_close(model(x), plain)  # w = 0 at install: the function does not jump
    assert layers[0].num_dendrites == 1 and not layers[0].dendrite_a[0].requires_grad
    with pytest.raises(TypeError, match="linear-like"):
        DendriteLayer(nn.Tanh())


def test_installed_dendrite_computes_the_chosen_candidates():
    torch.manual_seed(3)
    for rank in (2, None):
        layer = DendriteLayer(nn.Linear(8, 6), candidates=3, rank=rank)
        x = torch.randn(5, 8)
        candidates = layer._candidate_values(x).detach()  # [P, C, N]
        best = torch.tensor([2, 0, 1, 1, 2, 0])
        layer.install_best(best)
        with torch.no_grad():
            layer.dendrite_w[0].fill_(1.0)
        expected = layer.base(x) + candidates[:, best, torch.arange(6)]
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_trainer_switches_phases_and_reports():
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=4, rank=2)
    lines = []
    trainer = DendriteTrainer(
        model, layers, lambda ps: torch.optim.Adam(ps, lr=1e-2), patience=1, min_improvement=0.5,
        max_dendrite_epochs=2, log=lines.append,
    )  # fmt: skip
    base_weight = model[0].base.weight
    seen_dendrite_phase = False
    for _ in range(8):
        for i in range(0, 256, 64):
            loss = nn.functional.mse_loss(model(x[i : i + 64]), y[i : i + 64])
            trainer.step(loss)
            if trainer.phase == "dendrite":
                seen_dendrite_phase = True
                assert base_weight.grad is None, "the base is frozen in the dendrite phase"
                assert layers[0].cand_a.grad is not None and layers[0].cand_a.grad.abs().sum() > 0
        with torch.no_grad():
            trainer.end_epoch(nn.functional.mse_loss(model(x), y).item())
    assert seen_dendrite_phase
    assert any(line.startswith("dendrite phase") for line in lines)
    assert any(line.startswith("installed dendrites: per layer [1, 1]") for line in lines)
    assert all(layer.num_dendrites >= 1 for layer in layers)
    assert lines == trainer.events


def test_wraps_sparse_and_peft_layers():
    sparse = perfkern.SparseLoRALinear(32, 16, rank=4)
    layer = DendriteLayer(sparse, candidates=2, rank=2)
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), sparse(x))
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(nn.Sequential(nn.Linear(32, 16)), peft.LoraConfig(r=2, target_modules=["0"]))
    lora_layer = model.base_model.model[0]
    wrapped = DendriteLayer(lora_layer, candidates=2, rank=2)
    torch.testing.assert_close(wrapped(x), lora_layer(x))
