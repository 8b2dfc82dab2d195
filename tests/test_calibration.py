"""Calibration-based pruning (DESIGN §3.2): Wanda, perturbation (PIP-style) scores, PIP's block ranking and
removal, SparseGPT 2:4 with weight update, and the sparsity summary."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import perfkern
from perfkern import calibration as cal
from perfkern import sparsity


def _mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


def _batches(*sizes, k=64, scale=None):
    """Batches [b, 3, k], with per-channel scales so activation-aware scores differ from magnitude."""
    scale = torch.linspace(0.1, 3.0, k) if scale is None else scale
    return [torch.randn(b, 3, k) * scale for b in sizes]


def _no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# Wanda.


def test_wanda_scores_are_weight_times_input_norms():
    model = _mlp().train()
    batches = _batches(5, 2, 7)
    scores = cal.wanda_scores(model, batches, progress=False)
    x = torch.cat([b.reshape(-1, 64) for b in batches])
    h = torch.relu(model[0](x)).detach()
    assert set(scores) == {"0", "2"}
    torch.testing.assert_close(scores["0"], model[0].weight.detach().abs() * x.norm(dim=0))
    torch.testing.assert_close(scores["2"], model[2].weight.detach().abs() * h.norm(dim=0))
    assert _no_hooks(model) and all(m.training for m in model.modules())


def test_wanda_removes_hooks_and_restores_mode_on_error():
    model = _mlp().train()
    with pytest.raises(RuntimeError):
        cal.wanda_scores(model, [torch.randn(2, 64), torch.randn(2, 63)], progress=False)
    assert _no_hooks(model) and all(m.training for m in model.modules())


def test_conv1d_scores_are_out_by_in():
    model = nn.Sequential(Conv1D(48, 32), nn.Tanh(), nn.Linear(48, 16))  # Conv1D(nf=out, nx=in): weight [32, 48]
    batches = _batches(4, 3, k=32)
    scores = cal.wanda_scores(model, batches)
    x = torch.cat([b.reshape(-1, 32) for b in batches])
    assert scores["0"].shape == (48, 32)
    torch.testing.assert_close(scores["0"], model[0].weight.detach().t().abs() * x.norm(dim=0))


def test_sparsify_takes_wanda_scores():
    model = _mlp()
    weights = {name: model.get_submodule(name).weight.detach().clone() for name in ("0", "2")}
    scores = cal.wanda_scores(model, _batches(8, 8), progress=False)
    assert not torch.equal(sparsity.mask_2to4(scores["0"]), sparsity.mask_2to4(weights["0"]))
    assert perfkern.sparsify(model, rank=0, adapter=None, scores=scores) == []
    for name, weight in weights.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, perfkern.SparseLoRALinear)
        kept = sparsity.decompress_2to4(layer.values.detach(), layer.meta) != 0
        assert torch.equal(kept, sparsity.mask_2to4(scores[name]) & (weight != 0)), name


# Perturbation scores.


def test_perturbation_scores_are_the_gradient_gap_of_two_backwards():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), Conv1D(8, 24))
    x = torch.randn(6, 16)
    delta = 0.3 * torch.randn(6, 16)

    def loss_fn(out, batch):  # per-example losses against targets from the clean batch
        return (out - batch[:, :8]).square().mean(-1)

    model[0].bias.requires_grad_(False)
    sentinel = torch.full_like(model[0].weight, 7.0)
    model[0].weight.grad = sentinel
    scores = cal.perturbation_scores(model, [x], loss_fn, lambda b: b + delta, progress=False)

    assert model[0].weight.grad is sentinel and model[2].weight.grad is None
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    weights = [model[0].weight, model[2].weight]
    clean = torch.autograd.grad(loss_fn(model(x), x).mean(), weights)
    perturbed = torch.autograd.grad(loss_fn(model(x + delta), x).mean(), weights)
    gap0, gap2 = (c - p for c, p in zip(clean, perturbed, strict=True))
    torch.testing.assert_close(scores["0"], model[0].weight.detach().abs() * gap0.abs())
    assert scores["2"].shape == (8, 24)
    torch.testing.assert_close(scores["2"], model[2].weight.detach().t().abs() * gap2.t().abs())


def test_perturbation_scores_accumulate_over_batches_and_views_of_dicts():
    class KwargModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)
            self.rows = []

        def forward(self, x, steps, scale):
            self.rows.append(len(x))
            return {"y": self.fc(x) * scale, "steps": steps}

    model = KwargModel()
    batches = [{"x": torch.randn(3, 16), "steps": torch.arange(3), "scale": 2.0} for _ in range(2)]
    noise = cal.gaussian_perturbation(0.5, generator=torch.Generator().manual_seed(0))
    scores = cal.perturbation_scores(model, batches, lambda out, b: out["y"].square().sum(), noise, progress=False)
    assert model.rows == [6, 6], "one forward per batch, over both views"
    replay = cal.gaussian_perturbation(0.5, generator=torch.Generator().manual_seed(0))
    total = torch.zeros(4, 16)
    for batch in batches:
        perturbed = replay(batch)
        assert torch.equal(perturbed["steps"], batch["steps"]) and perturbed["scale"] == 2.0
        (clean,) = torch.autograd.grad((model(**batch)["y"].square().sum()), [model.fc.weight])
        (noisy,) = torch.autograd.grad((model(**perturbed)["y"].square().sum()), [model.fc.weight])
        total += (clean - noisy).abs()
    torch.testing.assert_close(scores["fc"], model.fc.weight.detach().abs() * total)


# PIP: blocks.


class _Residual(nn.Module):
    def __init__(self, width=16, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width, bias=False)

    def forward(self, h):
        return h + self.fc2(torch.relu(self.fc1(h)))


class _ResidualMLP(nn.Module):
    """Three residual blocks; the middle one is all zeros, so it adds nothing and its gradients vanish."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(_Residual() for _ in range(3))
        self.head = nn.Linear(16, 4)
        for p in self.blocks[1].parameters():
            nn.init.zeros_(p)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _pip_problem():
    torch.manual_seed(5)
    model = _ResidualMLP()
    teacher = torch.randn(4, 8)
    batches = [torch.randn(16, 8) for _ in range(2)]

    def loss_fn(out, x):
        return (out - x @ teacher.t()).square().mean(-1)

    return model, batches, loss_fn, cal.gaussian_perturbation(0.3, generator=torch.Generator().manual_seed(1))


def test_pip_ranks_the_useless_block_last_and_removing_it_keeps_the_output():
    model, batches, loss_fn, perturb = _pip_problem()
    scores = cal.pip_layer_scores(model, batches, loss_fn, perturb, granularity="block", progress=False)
    assert [name for name, _ in scores][0] == "blocks.1" and scores[0][1] == 0.0
    assert sorted(name for name, _ in scores) == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(score > 0 for _, score in scores[1:])
    layers = cal.pip_layer_scores(model, batches, loss_fn, perturb, progress=False)
    assert {name for name, _ in layers[:2]} == {"blocks.1.fc1", "blocks.1.fc2"}
    assert len(layers) == 8 and layers[2][1] > 0

    x = torch.randn(5, 8)
    before = model(x)
    assert cal.pip_prune_blocks(model, scores, 1) == ["blocks.1"]
    assert isinstance(model.blocks[1], cal.SkipBlock)
    assert torch.equal(model(x), before)
    assert model.blocks[1].returns == "tensor" and not list(model.blocks[1].parameters())


def test_pip_prune_blocks_recomputes_between_removals():
    model, batches, loss_fn, perturb = _pip_problem()
    calls = []

    def recompute(m):
        calls.append(m)
        fresh = cal.pip_layer_scores(m, batches, loss_fn, perturb, granularity="block", progress=False)
        calls.append(fresh)
        return fresh

    scores = cal.pip_layer_scores(model, batches, loss_fn, perturb, granularity="block", progress=False)
    removed = cal.pip_prune_blocks(model, scores, 2, recompute=recompute)
    assert len(calls) == 2 and calls[0] is model
    fresh = calls[1]
    assert [name for name, _ in fresh] != [] and "blocks.1" not in dict(fresh)
    assert removed == ["blocks.1", fresh[0][0]]
    assert sum(isinstance(b, cal.SkipBlock) for b in model.blocks) == 2
    with pytest.raises(ValueError, match="n=2 blocks asked for, but only 1"):
        cal.pip_prune_blocks(model, scores, 2)


class _TupleBlock(nn.Module):
    def __init__(self, width=16, grow=False):
        super().__init__()
        self.fc = nn.Linear(width, 2 * width if grow else width)

    def forward(self, h, scale=1.0):
        return self.fc(h) * scale, h.sum()


def test_skip_block_returns_the_structure_of_the_block():
    blocks = nn.ModuleList([_TupleBlock(), _TupleBlock()])
    h = torch.randn(3, 16)
    cal.pip_prune_blocks(blocks, [("0", 0.0), ("1", 1.0)], 1)
    out = blocks[0](h, scale=2.0)
    assert isinstance(out, tuple) and len(out) == 2 and out[0] is h and out[1] is None
    assert blocks[0].returns == "tuple" and blocks[0].length == 2
    assert blocks[0](hidden_states=h)[0] is h
    assert cal.SkipBlock(returns="tensor")(h) is h

    grows = nn.ModuleList([_TupleBlock(grow=True)])
    cal.pip_prune_blocks(grows, [("0", 0.0)], 1)
    with pytest.raises(ValueError, match=r"keeps the hidden states' shape: .* maps \[3, 16\] to \[3, 32\]"):
        grows[0](h)


# SparseGPT.


def _correlated_problem(n=1024, k=64, out=32):
    """Inputs with correlated channels of very different scales, and a layer to prune."""
    torch.manual_seed(11)
    mixing = torch.randn(k, k) / k**0.5 + torch.eye(k)
    x = (torch.randn(n, k) @ mixing) * torch.exp(torch.randn(k))
    return x, torch.randn(out, k)


def test_collect_hessians_is_two_xtx_over_n():
    x, w = _correlated_problem(n=96)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), Conv1D(16, 32))
    hessians = cal.collect_hessians(model, [x[:40], x[40:].view(2, 28, 64)], progress=False)
    torch.testing.assert_close(hessians["0"], 2 * x.t() @ x / 96)
    h = torch.relu(model[0](x)).detach()
    torch.testing.assert_close(hessians["2"], 2 * h.t() @ h / 96)
    assert _no_hooks(model)


def test_sparsegpt_beats_magnitude_and_wanda_on_reconstruction():
    x, w = _correlated_problem()
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    batches = list(x.split(256))
    hessian = cal.collect_hessians(model, batches, progress=False)["0"]
    wanda = cal.wanda_scores(model, batches, progress=False)["0"]
    pruned = {
        "magnitude": w * sparsity.mask_2to4(w),
        "wanda": w * sparsity.mask_2to4(wanda),
        "sparsegpt": cal.sparsegpt_prune_2to4(w, hessian),
    }
    error = {name: ((x @ (w - p).t()).norm() / (x @ w.t()).norm()).item() for name, p in pruned.items()}
    assert sparsity.is_2to4(pruned["sparsegpt"])
    assert error["sparsegpt"] < 0.9 * error["wanda"] and error["sparsegpt"] < 0.9 * error["magnitude"], error


def test_sparsegpt_blocks_are_batched_columnwise_updates():
    x, w = _correlated_problem(k=48)
    hessian = 2 * x.t() @ x / x.shape[0]
    columnwise = cal.sparsegpt_prune_2to4(w, hessian, blocksize=4)
    for blocksize in (20, 128):
        torch.testing.assert_close(cal.sparsegpt_prune_2to4(w, hessian, blocksize=blocksize), columnwise)
    # With uncorrelated inputs of equal scale nothing is updated: it is magnitude pruning.
    assert torch.equal(cal.sparsegpt_prune_2to4(w, 2 * torch.eye(48)), w * sparsity.mask_2to4(w))
    # A channel that never fires is pruned.
    hessian[5, :] = hessian[:, 5] = 0
    assert (cal.sparsegpt_prune_2to4(w, hessian)[:, 5] == 0).all()


def test_apply_sparsegpt_then_sparsify_keeps_the_updated_weights():
    x, _ = _correlated_problem(n=128)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), Conv1D(16, 32))
    hessians = cal.collect_hessians(model, [x], progress=False)
    expected = {
        "0": cal.sparsegpt_prune_2to4(model[0].weight, hessians["0"]),
        "2": cal.sparsegpt_prune_2to4(model[2].weight.t(), hessians["2"]),
    }
    assert cal.apply_sparsegpt_2to4(model, hessians) == ["0", "2"]
    torch.testing.assert_close(model[0].weight.detach(), expected["0"])
    torch.testing.assert_close(model[2].weight.detach().t(), expected["2"])
    perfkern.sparsify(model, rank=0, adapter=None)
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        torch.testing.assert_close(sparsity.decompress_2to4(layer.values.detach(), layer.meta), expected[name])


# The summary.


def test_summary_lists_every_layer_with_its_zero_fraction():
    model = nn.Sequential(nn.Linear(64, 32), Conv1D(16, 32), nn.Linear(16, 16))
    with torch.no_grad():
        model[0].weight[:, :16] = 0  # a quarter
        model[1].weight[:8] = 0  # [in, out]: 8 of 32 inputs, a quarter
    model[2] = perfkern.SparseLoRALinear.from_linear(model[2], rank=4)
    rows = cal.summarize(model)
    assert [(r.name, r.kind, r.shape) for r in rows] == [
        ("0", "Linear", (32, 64)),
        ("1", "Conv1D", (16, 32)),
        ("2", "SparseLoRALinear", (16, 16)),
    ]
    assert [r.fraction for r in rows] == [0.25, 0.25, 0.5]
    assert [(r.kept, r.total) for r in rows] == [(1536, 2048), (384, 512), (128, 256)]
    text = cal.sparsity_summary(model)
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].split()[:3] == ["name", "type", "shape"]
    assert lines[1].split() == ["0", "Linear", "32x64", "25.0%", "1536", "/", "2048"]
    assert lines[3].split() == ["2", "SparseLoRALinear", "16x16", "50.0%", "128", "/", "256"]
    assert lines[4].split()[-4:] == ["27.3%", "2048", "/", "2816"]


# Bad input.


def _bad_calls():
    model = _mlp()
    x = [torch.randn(2, 64)]

    def loss(out, b):
        return out.sum()

    w, h = torch.randn(8, 16), torch.eye(16)
    return [
        pytest.param(
            lambda: cal.wanda_scores(model, x[0]), TypeError, "got a single Tensor; wrap it in a list", id="1"
        ),
        pytest.param(lambda: cal.wanda_scores(model, []), ValueError, "at least one batch, got none", id="empty"),
        pytest.param(lambda: cal.wanda_scores(model, [3]), TypeError, r"batches\[0\] must be a tensor", id="batch"),
        pytest.param(lambda: cal.wanda_scores(model, x, include=["up"]), ValueError, "no nn.Linear", id="include"),
        pytest.param(lambda: cal.wanda_scores(model, x, include="0"), TypeError, r"use \['0'\]", id="include-str"),
        pytest.param(
            lambda: cal.perturbation_scores(model, x, loss, lambda b: b[:1]),
            ValueError,
            r"keep batches\[0\] a tensor of shape \[2, 64\], got \[1, 64\]",
            id="perturb-shape",
        ),
        pytest.param(
            lambda: cal.perturbation_scores(model, x, lambda o, b: 1.0, lambda b: b + 1),
            TypeError,
            "loss_fn must return a floating-point tensor",
            id="loss",
        ),
        pytest.param(
            lambda: cal.gaussian_perturbation(1.0)({"ids": torch.arange(4)}), TypeError, "floating-point", id="noise"
        ),
        pytest.param(lambda: cal.gaussian_perturbation(-1.0), ValueError, "std must be >= 0, got -1.0", id="std"),
        pytest.param(
            lambda: cal.pip_layer_scores(model, x, loss, lambda b: b + 1, granularity="row"),
            ValueError,
            "granularity must be 'layer' or 'block', got 'row'",
            id="granularity",
        ),
        pytest.param(
            lambda: cal.pip_layer_scores(model, x, loss, lambda b: b + 1, "block", blocks=["9"]),
            ValueError,
            r"blocks\[0\] = '9' is not a submodule",
            id="blocks",
        ),
        pytest.param(
            lambda: cal.pip_layer_scores(model, x, loss, lambda b: b + 1, "block"),
            ValueError,
            "the model has no nn.ModuleList",
            id="no-blocks",
        ),
        pytest.param(lambda: cal.pip_prune_blocks(model, [], -1), ValueError, "n must be an int >= 0", id="n"),
        pytest.param(
            lambda: cal.sparsegpt_prune_2to4(w, torch.eye(12)),
            ValueError,
            r"hessian must be \[in, in\] = \[16, 16\] for weight \[8, 16\], got \[12, 12\]",
            id="hessian",
        ),
        pytest.param(
            lambda: cal.sparsegpt_prune_2to4(torch.randn(8, 18), torch.eye(18)), ValueError, "multiple of 4", id="K"
        ),
        pytest.param(lambda: cal.sparsegpt_prune_2to4(w, h, blocksize=6), ValueError, "blocksize", id="blocksize"),
        pytest.param(
            lambda: cal.sparsegpt_prune_2to4(w, -h, percdamp=0.0), ValueError, "not positive definite", id="not-pd"
        ),
    ]


@pytest.mark.parametrize("call,error,message", _bad_calls())
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


# Hugging Face models.


def _linear_names(model):
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}


def _lm_loss(out, batch):
    ids = batch["input_ids"]
    logits = out.logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(len(ids), -1).mean(-1)


def test_tiny_llama_wanda_perturbation_and_block_removal():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config)
    batches = [{"input_ids": torch.randint(0, 128, (2, 12)), "use_cache": False} for _ in range(2)]
    scores = cal.wanda_scores(model, batches, progress=False)
    attention = {f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"}
    mlp = {f"model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")}
    assert set(scores) == attention | mlp
    assert set(scores) == _linear_names(model) - {"lm_head"}
    for name, score in scores.items():
        assert score.shape == model.get_submodule(name).weight.shape and score.dtype == torch.float32
    assert _no_hooks(model)

    perturb = cal.token_dropout_perturbation(0.3, generator=torch.Generator().manual_seed(0))
    gaps = cal.perturbation_scores(model, batches, _lm_loss, perturb, progress=False)
    assert set(gaps) == set(scores) and all(g.isfinite().all() and g.sum() > 0 for g in gaps.values())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())

    blocks = cal.pip_layer_scores(model, batches, _lm_loss, perturb, "block", progress=False)
    assert sorted(name for name, _ in blocks) == ["model.layers.0", "model.layers.1"]
    cal.pip_prune_blocks(model, blocks, 1)
    logits = model(**batches[0]).logits
    assert logits.shape == (2, 12, 128) and model.model.layers[int(blocks[0][0][-1])].returns == "tensor"


def test_tiny_gpt2_wanda_covers_conv1d_projections():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    batches = [torch.randint(0, 128, (2, 10)) for _ in range(2)]
    scores = cal.wanda_scores(model, batches, progress=False)
    expected = {
        f"transformer.h.{i}.{p}" for i in range(2) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert set(scores) == expected
    assert scores["transformer.h.0.attn.c_attn"].shape == (192, 64)
    assert scores["transformer.h.0.mlp.c_proj"].shape == (64, 256)
    assert _no_hooks(model)
