"""The dendrite layer and trainer (DESIGN §3.5): what the layer computes against formulas written out here, the
cycle's bookkeeping (plateaus over whole epochs, candidates dropped at installation, state dicts that grow a
fresh model, resuming bit for bit), and each option of the trainer."""

import io

import pytest
import torch
from torch import nn

import perfkern
from perfkern.dendrites import DendriteLayer, DendriteTrainer, add_dendrites


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster than two on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _regression(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(256, 16)
    return model, x, torch.sin(3 * x[:, :4])


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


# For tests that switch phases themselves: no plateau ends a phase within their few epochs.
MANUAL = {"patience": 10, "max_dendrite_epochs": 10, "log": None}


def _epoch(model, trainer, x, y, batch=64):
    for i in range(0, x.shape[0], batch):
        trainer.step(nn.functional.mse_loss(model(x[i : i + batch]), y[i : i + batch]))
    with torch.no_grad():
        trainer.end_epoch(nn.functional.mse_loss(model(x), y).item())


def _sigmoid_candidates(x, a, b, u=None, hs=None):
    """V [P, C, N] = σ((x·A_cᵀ)·B_c[n] + Σ_j u_c[j, n]·h_j[:, n]), written out per candidate."""
    out = []
    for c in range(a.shape[0]):
        pre = (x @ a[c].t()) @ b[c].t()
        if u is not None:
            pre = pre + sum(u[c, j] * h for j, h in enumerate(hs))
        out.append(torch.sigmoid(pre))
    return torch.stack(out, 1)


# The layer.


def test_layer_is_the_base_until_dendrites_train():
    model, x, _ = _regression()
    plain = model(x).detach()
    layers = add_dendrites(model, candidates=3, rank=2)
    assert len(layers) == 2 and all(isinstance(m, DendriteLayer) for m in (model[0], model[2]))
    torch.testing.assert_close(model(x), plain)
    assert not layers[0].candidate_parameters(), "no candidates outside a dendrite phase"
    layers[0].grow_candidates()
    torch.testing.assert_close(model(x), plain)  # correlation candidates stay out of the output
    layers[0].install(torch.zeros(32, dtype=torch.long))
    torch.testing.assert_close(model(x), plain)  # w = 0 at install: the function does not jump
    assert layers[0].num_dendrites == 1 and not layers[0].dendrites[0].a.requires_grad
    with pytest.raises(TypeError, match="linear-like"):
        DendriteLayer(nn.Tanh())


@pytest.mark.parametrize("rank", [2, None], ids=["rank2", "full"])
def test_installed_dendrite_computes_the_chosen_candidates(rank):
    torch.manual_seed(3)
    layer = DendriteLayer(nn.Linear(8, 6), candidates=3, rank=rank)
    x = torch.randn(5, 8)
    layer.grow_candidates()
    if rank is None:
        candidates = torch.sigmoid(torch.einsum("pk,cnk->pcn", x, layer.cand_w.detach()))
    else:
        candidates = _sigmoid_candidates(x, layer.cand_a.detach(), layer.cand_b.detach())
    best = torch.tensor([2, 0, 2, 2, 2, 0])  # candidate 1 unused: it is not stored
    layer.install(best)
    with torch.no_grad():
        layer.dendrites[0].w.fill_(1.0)
    expected = layer.base(x) + candidates[:, best, torch.arange(6)]
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    stored = sum(p.numel() for p in layer.dendrites[0].parameters())
    assert stored == (6 * 8 if rank is None else 2 * rank * 8 + 6 * rank) + 6


def test_cascade_dendrite_takes_the_earlier_dendrites():
    """h_1 = σ(pre_1(x) + u_1[0] ⊙ h_0): the second dendrite and its candidates see the first one's output."""
    torch.manual_seed(4)
    layer = DendriteLayer(nn.Linear(8, 6), candidates=2, rank=2, cascade=True)
    x = torch.randn(7, 8)
    layer.grow_candidates()
    assert layer.cand_u is None  # no earlier dendrite yet
    h0 = _sigmoid_candidates(x, layer.cand_a.detach(), layer.cand_b.detach())[:, 1]
    layer.install(torch.ones(6, dtype=torch.long))
    layer.grow_candidates()
    a, b, u = layer.cand_a.detach(), layer.cand_b.detach(), layer.cand_u.detach()
    assert u.shape == (2, 1, 6)
    candidates = _sigmoid_candidates(x, a, b, u, [h0])
    torch.testing.assert_close(layer._candidate_values(x, [h0]), candidates, atol=1e-6, rtol=1e-5)
    best = torch.tensor([0, 1, 1, 0, 0, 1])
    layer.install(best)
    with torch.no_grad():
        for d in layer.dendrites:
            d.w.fill_(1.0)
    expected = layer.base(x) + h0 + candidates[:, best, torch.arange(6)]
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_gd_candidate_joins_the_output():
    torch.manual_seed(5)
    layer = DendriteLayer(nn.Linear(8, 6), candidates=3, rank=2)
    x = torch.randn(4, 8)
    layer.grow_candidates("gd")
    assert layer.cand_a.shape[0] == 1 and torch.equal(layer.cand_out, torch.zeros(6))
    torch.testing.assert_close(layer(x), layer.base(x))
    with torch.no_grad():
        layer.cand_out.copy_(torch.linspace(-1, 1, 6))
    expected = layer.base(x) + layer.cand_out * _sigmoid_candidates(x, layer.cand_a, layer.cand_b)[:, 0]
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        before = layer(x)
    layer.install()
    torch.testing.assert_close(layer(x), before)  # installed as trained
    assert not layer.candidate_parameters()


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


# The cycle.


def test_trainer_switches_phases_and_reports():
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=4, rank=2)
    lines = []
    trainer = DendriteTrainer(model, layers, _adam, patience=1, min_improvement=0.5, max_dendrite_epochs=2,
                              log=lines.append)  # fmt: skip
    base_weight = model[0].base.weight
    seen_dendrite_phase = False
    for _ in range(8):
        for i in range(0, 256, 64):
            trainer.step(nn.functional.mse_loss(model(x[i : i + 64]), y[i : i + 64]))
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


def test_dendrite_plateau_sees_the_whole_epoch():
    """Epoch 2's batches correlate with the candidate far better than epoch 1's, but its last batch carries no
    error at all. Judged on the last batch the phase would end (patience 1); judged on the epoch it goes on."""
    torch.manual_seed(6)
    layer = DendriteLayer(nn.Linear(8, 6), candidates=1, rank=2)
    trainer = DendriteTrainer(layer, [layer], lambda ps: torch.optim.SGD(ps, lr=0.0), patience=1,
                              max_dendrite_epochs=10, log=None)  # fmt: skip
    trainer.start_dendrite_phase()
    g = torch.Generator().manual_seed(0)

    def batch(kind):
        x = torch.randn(32, 8, generator=g)
        signal = _sigmoid_candidates(x, layer.cand_a.detach(), layer.cand_b.detach())[:, 0]
        target = {"noise": torch.randn(32, 6, generator=g), "signal": signal + 0.01 * torch.randn(32, 6, generator=g),
                  "silent": torch.zeros(32, 6)}[kind]  # fmt: skip
        trainer.step((layer(x) * target).sum())  # so that the neuron error E = ∂L/∂out is the target

    for kind in ["noise"] * 3:
        batch(kind)
    trainer.end_epoch(1.0)
    for kind in ["signal"] * 3 + ["silent"]:
        batch(kind)
    trainer.end_epoch(1.0)
    assert trainer.phase == "dendrite", trainer.events


def test_every_layer_closes_its_epoch():
    """Each layer's epoch statistics are judged and reset at every epoch end, whatever the first layer says."""
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, **MANUAL)
    trainer.start_dendrite_phase()
    _epoch(model, trainer, x, y)
    for i, state in trainer.states.items():
        assert state.epoch.count.item() == 0, f"layer {i}: epoch not closed"
        assert (state.best > 0).all(), f"layer {i}: best not updated"


def test_installation_drops_the_losing_candidates():
    """After installation the candidates are gone from the parameters, the state dict and every optimizer."""
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=4, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, **MANUAL)
    base_params = sum(p.numel() for p in model.parameters())
    trainer.start_dendrite_phase()
    _epoch(model, trainer, x, y)
    trainer.install_and_resume()
    _epoch(model, trainer, x, y)
    assert not [k for k in model.state_dict() if "cand" in k]
    dendrite_params = 0
    for layer in layers:
        used = layer.dendrites[0].a.shape[0]
        dendrite_params += used * 2 * layer.in_features + layer.out_features * 2 + layer.out_features
    assert sum(p.numel() for p in model.parameters()) == base_params + dendrite_params
    in_model = {id(p) for p in model.parameters()}
    for optimizer in (trainer.optimizer, trainer.neuron_optimizer):
        assert all(id(p) in in_model for group in optimizer.param_groups for p in group["params"])
        assert all(id(p) in in_model for p in optimizer.state)
    assert trainer.dendrite_optimizer is None


def test_state_dict_grows_a_fresh_model():
    """``add_dendrites`` on a fresh model, then ``load_state_dict``: the layers grow to the saved dendrites."""
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=4, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, **MANUAL)
    for _ in range(2):
        trainer.start_dendrite_phase()
        _epoch(model, trainer, x, y)
        trainer.install_and_resume()
        _epoch(model, trainer, x, y)
    saved = model.state_dict()
    fresh, _, _ = _regression(seed=1)
    fresh_layers = add_dendrites(fresh, candidates=4, rank=2)
    fresh.load_state_dict(saved)
    assert [layer.num_dendrites for layer in fresh_layers] == [2, 2]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)


def _run(options, layer_kwargs, stop=None, epochs=12):
    """A cycle on the regression task; with ``stop=(epoch, batch)`` it checkpoints there (through torch.save),
    rebuilds model and trainer from scratch, loads, checks that the trainer's state is the saved one, and goes on.
    Returns the final model state dict, the events and the phase each epoch started in."""
    kwargs = {"patience": 1, "min_improvement": 0.05, "max_dendrite_epochs": 2, "log": None, **options}

    def build(saved=None):
        """In the documented order: a fresh model, its saved state, a new trainer, the trainer's saved state."""
        model, x, y = _regression()
        layers = add_dendrites(model, **layer_kwargs)
        if saved is not None:
            model.load_state_dict(saved["model"])
        trainer = DendriteTrainer(model, layers, _adam, **kwargs)
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
        return model, trainer, x, y

    model, trainer, x, y = build()
    torch.manual_seed(123)
    phases = []
    for epoch in range(epochs):
        phases.append(trainer.phase)
        for b, i in enumerate(range(0, 256, 64)):
            if (epoch, b) == stop:
                buffer = io.BytesIO()
                torch.save({"model": model.state_dict(), "trainer": trainer.state_dict()}, buffer)
                del model, trainer
                torch.manual_seed(999)  # the restored RNG state must win over whatever ran since
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
                model, trainer, _, _ = build(saved)
                _assert_same(trainer.state_dict(), saved["trainer"], "trainer state")
            trainer.step(nn.functional.mse_loss(model(x[i : i + 64]), y[i : i + 64]))
        with torch.no_grad():
            trainer.end_epoch(nn.functional.mse_loss(model(x), y).item())
    return model.state_dict(), trainer.events, phases


def _assert_same(got, want, where):
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


RESUME = [
    pytest.param({}, {}, id="correlation"),
    pytest.param(
        {"installed": "trainable", "rollback": True, "switch_optimizer": "rebuild"},
        {"cascade": True},
        id="trainable-rollback-rebuild-cascade",
    ),  # fmt: skip
    pytest.param({"objective": "gd", "rollback": True}, {}, id="gd-rollback"),
]


@pytest.mark.parametrize("stop,phase", [((5, 1), "neuron"), ((7, 2), "dendrite")], ids=["neuron", "dendrite"])
@pytest.mark.parametrize("options,layer_kwargs", RESUME)
def test_resume_mid_phase_matches_an_uninterrupted_run(options, layer_kwargs, stop, phase):
    """Stopped mid-epoch, in a phase, after one round of dendrites, with a dendrite phase still to come (fresh
    candidates draw from the restored RNG): the resumed run equals the uninterrupted one bit for bit."""
    layer_kwargs = {"candidates": 3, "rank": 2, **layer_kwargs}
    want, want_events, phases = _run(options, layer_kwargs)
    assert phases[stop[0]] == phase and phases[stop[0] + 1 :].count("dendrite") >= 1, phases
    assert sum(e.startswith("installed") for e in want_events) == 3
    got, got_events, _ = _run(options, layer_kwargs, stop=stop)
    assert got_events == want_events
    _assert_same(got, want, "model")


def test_load_state_dict_refuses_other_options():
    model, _, _ = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    state = DendriteTrainer(model, layers, _adam, log=None).state_dict()
    other = DendriteTrainer(model, layers, _adam, log=None, installed="frozen")
    with pytest.raises(ValueError, match="the saved trainer had options"):
        other.load_state_dict(state)


# Options.


@pytest.mark.parametrize("installed", ["frozen", "trainable"])
def test_installed_dendrites_frozen_or_trainable(installed):
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, installed=installed, **MANUAL)
    trainer.start_dendrite_phase()
    _epoch(model, trainer, x, y)
    trainer.install_and_resume()
    dendrite = layers[0].dendrites[0]
    maps = [p.detach().clone() for p in dendrite.input_maps()]
    w = dendrite.w.detach().clone()
    _epoch(model, trainer, x, y)
    assert not torch.equal(dendrite.w, w)
    changed = [not torch.equal(p, old) for p, old in zip(dendrite.input_maps(), maps, strict=True)]
    assert changed == [installed == "trainable"] * len(maps)
    trainer.start_dendrite_phase()
    assert not any(p.requires_grad for p in dendrite.parameters()), "frozen in a dendrite phase either way"


def test_rollback_returns_to_the_best_epoch():
    """The neuron phase's best epoch (recorded here) is what the model holds when the dendrite phase starts."""
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    trainer = DendriteTrainer(model, layers, lambda ps: torch.optim.SGD(ps, lr=0.5), patience=2,
                              min_improvement=0.0, rollback=True, log=None)  # fmt: skip
    history = []
    for epoch in range(30):
        lr = 0.05 if epoch < 3 else 3.0  # a good start, then a step size that makes it worse
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        for i in range(0, 256, 64):
            trainer.step(nn.functional.mse_loss(model(x[i : i + 64]), y[i : i + 64]))
        with torch.no_grad():
            val = nn.functional.mse_loss(model(x), y).item()
        history.append((val, {k: v.clone() for k, v in model.state_dict().items()}))
        trainer.end_epoch(val)
        if trainer.phase == "dendrite":
            break
    assert trainer.phase == "dendrite"
    best_val, best_state = min(history, key=lambda h: h[0])
    assert best_val < history[-1][0]
    got = {k: v for k, v in model.state_dict().items() if "cand" not in k}
    for key, value in best_state.items():
        assert torch.equal(got[key], value), key
    assert any(e.startswith("rolled back") for e in trainer.events)


@pytest.mark.parametrize("switch_optimizer", ["keep", "rebuild"])
def test_optimizer_kept_or_rebuilt_at_a_switch(switch_optimizer):
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, switch_optimizer=switch_optimizer, **MANUAL)
    _epoch(model, trainer, x, y)
    first = trainer.neuron_optimizer
    moment = first.state[model[0].base.weight]["exp_avg"].clone()
    trainer.start_dendrite_phase()
    _epoch(model, trainer, x, y)
    trainer.install_and_resume()
    if switch_optimizer == "keep":
        assert trainer.optimizer is first and torch.equal(first.state[model[0].base.weight]["exp_avg"], moment)
        assert len(first.param_groups) == 1 + len(layers)
    else:
        assert trainer.optimizer is not first and not trainer.optimizer.state
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(layer.dendrites[0].w) in trained for layer in layers)


def test_gd_objective_trains_candidates_on_the_task_loss():
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=4, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, objective="gd", patience=1, max_dendrite_epochs=2, log=None)
    trainer.start_dendrite_phase()
    assert layers[0].cand_a.shape[0] == 1 and not trainer.states
    trainer.step(nn.functional.mse_loss(model(x), y))
    assert layers[0].cand_out.grad.abs().sum() > 0 and model[0].base.weight.grad is None
    for _ in range(3):
        _epoch(model, trainer, x, y)
    assert trainer.phase == "neuron" and [layer.num_dendrites for layer in layers] == [1, 1]
    assert layers[0].dendrites[0].w.abs().sum() > 0, "installed with its trained output weight"
    assert "gradient-descent candidates" in trainer.events[-1]


def test_full_layers_stay_in_the_neuron_phase():
    model, x, y = _regression()
    layers = add_dendrites(model, candidates=2, rank=2)
    trainer = DendriteTrainer(model, layers, _adam, patience=1, min_improvement=0.9, max_dendrites=1,
                              max_dendrite_epochs=1, log=None)  # fmt: skip
    for _ in range(8):
        _epoch(model, trainer, x, y)
    assert [layer.num_dendrites for layer in layers] == [1, 1] and trainer.phase == "neuron"
    assert sum(e.startswith("dendrite phase") for e in trainer.events) == 1
