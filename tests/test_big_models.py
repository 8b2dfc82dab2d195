"""Big models (DESIGN §4): layers and ``sparsify`` on the meta device, construction that prunes nothing it throws
away, ``from_linear`` at the cost of about two compressions, and ``sparsify`` one layer at a time."""

import copy
import math
import time
import weakref

import pytest
import torch
from torch import nn

import perfkern
from perfkern import sparsity
from perfkern.reference import sparse24 as ref


def _mlp(width=64, layers=3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(layers)])


def test_meta_layer_allocates_nothing_then_loads():
    big = perfkern.SparseLoRALinear(8192, 8192, rank=16, adapter="pera", device="meta", dtype=torch.bfloat16)
    assert all(t.is_meta for t in [*big.parameters(), *big.buffers()])
    assert big.values.shape == (8192, 4096) and big.values.dtype == torch.bfloat16 and big.meta.dtype == torch.int16
    source = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False)
    with torch.no_grad():
        source.lora_b.normal_()
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, device="meta")
    layer.to_empty(device="cpu")
    layer.load_state_dict(source.state_dict())
    x = torch.randn(3, 64)
    assert layer.adapter_active
    torch.testing.assert_close(layer(x), source(x), rtol=0, atol=0)
    layer.reset_parameters()
    assert not torch.equal(layer.values, source.values) and int(layer.updates) == 0
    assert torch.equal(layer.lora_b, torch.zeros_like(layer.lora_b))
    ws = ref.decompress_2to4(layer.values.detach(), layer.meta)
    assert torch.equal(layer.bwd_meta, ref.compress_2to4(ws.t().contiguous())[1])


def test_sparsify_on_the_meta_device_then_load():
    dense = _mlp()
    real = copy.deepcopy(dense)
    perfkern.sparsify(real, rank=4, lazy=False)
    with torch.device("meta"):
        model = _mlp()
    assert not perfkern.sparsify(model, rank=4, lazy=False)
    layers = [m for m in model.modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert len(layers) == 3 and all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.load_state_dict(real.state_dict())
    x = torch.randn(5, 64)
    torch.testing.assert_close(model(x), real(x), rtol=0, atol=0)


def test_a_fresh_weight_is_linear_init_pruned_by_magnitude():
    """Each group keeps a uniformly random pair of positions and the two largest of four U(0, b) magnitudes,
    b = 1/√in: E|v| = b·(4/5 + 3/5)/2 and E[v²] = b²·(2/3 + 2/5)/2 (order statistics of 4 uniforms), random signs."""
    torch.manual_seed(0)
    n, k = 512, 256
    layer = perfkern.SparseLoRALinear(k, n, rank=0, adapter=None)
    b = 1 / math.sqrt(k)
    v = layer.values.detach()
    assert v.abs().max() <= b and (v != 0).all()
    assert abs(v.abs().mean().item() / b - 0.7) < 0.01
    assert abs(v.square().mean().item() / b**2 - (2 / 3 + 2 / 5) / 2) < 0.01
    assert abs((v > 0).float().mean().item() - 0.5) < 0.01
    kept = (ref.decompress_2to4(v, layer.meta) != 0).view(n, k // 4, 4)
    assert (kept.sum(-1) == 2).all()
    pairs = (kept.long() * torch.tensor([1, 2, 4, 8])).sum(-1).flatten()
    counts = torch.bincount(pairs, minlength=16)[[3, 5, 9, 6, 10, 12]].float()
    assert (counts / counts.sum() - 1 / 6).abs().max() < 0.01
    first, second = v.view(n, k // 4, 2).abs().unbind(-1)
    assert abs((first > second).float().mean().item() - 0.5) < 0.01  # the larger one sits first half the time
    assert torch.equal(layer.bwd_meta, ref.compress_2to4(ref.decompress_2to4(v, layer.meta).t().contiguous())[1])


def test_from_linear_prunes_once(monkeypatch):
    """One compression of the weight, then the backward copy (one decompression, one compression); no mask pass
    and no strict check on the given weight."""
    calls = []
    for name in ("mask_2to4", "compress_2to4", "decompress_2to4", "gather_2to4"):
        original = getattr(sparsity, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, tuple(args[0].shape), kwargs.get("strict")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(sparsity, name, spy)
    perfkern.SparseLoRALinear.from_linear(nn.Linear(64, 32), rank=4)
    assert calls == [
        ("compress_2to4", (32, 64), False),
        ("decompress_2to4", (32, 32), None),
        ("compress_2to4", (64, 32), False),
    ]


@perfkern.use_backend("reference")  # the default on a CPU (the suite runs Triton's interpreter otherwise)
def test_from_linear_costs_at_most_three_compressions():
    linear = nn.Linear(1024, 1024)
    w = linear.weight.detach()

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    # Interleaved after a warm-up of both (the first custom-op call imports torch._dynamo), best of five each, so
    # that a busy machine slows both sides alike.
    runs = {"compress": [], "build": []}
    for i in range(6):
        compress_time = timed(lambda: sparsity.compress_2to4(w, strict=False))
        build_time = timed(lambda: perfkern.SparseLoRALinear.from_linear(linear, rank=16))
        if i:
            runs["compress"].append(compress_time)
            runs["build"].append(build_time)
    compress, build = min(runs["compress"]), min(runs["build"])
    # The target is ~3x (a layer is two compressions and one decompression: 2.1-2.8x measured on a quiet 2-core
    # machine); the bound leaves room for timing noise and still fails on a throwaway pruning (~14x before).
    assert build <= 3.5 * compress, f"from_linear {build * 1e3:.1f} ms > 3.5 x compress {compress * 1e3:.1f} ms"


def test_sparsify_releases_each_dense_layer_before_the_next(monkeypatch):
    model = _mlp(layers=4)
    dense = [weakref.ref(m) for m in model.modules() if type(m) is nn.Linear]
    alive_at_call = []
    original = perfkern.SparseLoRALinear.from_weight.__func__

    def spy(cls, *args, **kwargs):
        alive_at_call.append(sum(ref() is not None for ref in dense))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(perfkern.SparseLoRALinear, "from_weight", classmethod(spy))
    perfkern.sparsify(model, rank=2)
    # Converting layer i, the layers before it are gone: the dense model is never held twice.
    assert alive_at_call == [4, 3, 2, 1]
    assert all(ref() is None for ref in dense)


@pytest.mark.parametrize("layers, shown", [(3, False), (40, True)])
@perfkern.use_backend("reference")
def test_sparsify_shows_progress_for_many_layers(capsys, layers, shown):
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
    perfkern.sparsify(model, rank=0, adapter=None)
    assert ("sparsify" in capsys.readouterr().err) == shown
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(3)])
    perfkern.sparsify(model, rank=0, adapter=None, progress=True)
    assert "3/3" in capsys.readouterr().err
