"""SLoPe's backward copy (DESIGN §3.3): its mask is re-chosen every ``refresh_every`` optimizer steps, from the
weight those steps produced. Optimizer steps are counted, never backward passes, so gradient accumulation
refreshes once per step. The rule is |Ws|, also for a layer built with ``mask=scores``."""

import copy

import pytest
import torch

import perfkern
from perfkern import sparsity
from perfkern.reference import sparse24 as ref


def _backward_weight(layer: perfkern.SparseLoRALinear, meta: torch.Tensor) -> torch.Tensor:
    """The dense [N, K] copy dx uses: Wsᵀ of the layer's current weight on the backward mask ``meta``, transposed."""
    ws_t = ref.decompress_2to4(layer.values.detach(), layer.meta).t().contiguous()
    return ref.decompress_2to4(ref.gather_2to4(ws_t, meta), meta).t()


def _chosen_from(layer: perfkern.SparseLoRALinear) -> torch.Tensor:
    """The backward mask the rule picks from the layer's current weight: Wsᵀ 2:4 along N by magnitude."""
    return ref.compress_2to4(ref.decompress_2to4(layer.values.detach(), layer.meta).t().contiguous())[1]


@pytest.mark.parametrize("accumulate", [1, 3], ids=["no-accumulation", "accumulate3"])
def test_mask_refreshes_per_optimizer_step_from_the_updated_weight(device, accumulate):
    layer = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, refresh_every=2, device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(16, 64, device=device, requires_grad=True)
    in_force = layer.bwd_meta.clone()
    for step in range(1, 7):
        for _ in range(accumulate):
            grad = torch.randn(16, 32, device=device)
            x.grad = None
            layer(x).backward(grad)
            # dx: the copy of the current weight, on the mask in force; backward passes change neither.
            torch.testing.assert_close(x.grad, grad @ _backward_weight(layer, in_force))
            assert torch.equal(layer.bwd_meta, in_force)
        opt.step()
        opt.zero_grad()
        assert int(layer.updates) == step, "one count per optimizer step, whatever the accumulation"
        if step % 2 == 0:  # re-chosen from the weight this step produced
            assert torch.equal(layer.bwd_meta, _chosen_from(layer))
            assert not torch.equal(layer.bwd_meta, in_force), "lr=1 moves the weight enough to change the mask"
        else:
            assert torch.equal(layer.bwd_meta, in_force)
        in_force = layer.bwd_meta.clone()


def test_steps_that_do_not_update_the_weight_do_not_count(device):
    x = torch.randn(4, 64, device=device)
    # The optimizer does not hold the weight (only the adapter trains).
    layer = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False, device=device)
    opt = torch.optim.SGD([layer.lora_a, layer.lora_b], lr=0.1)
    layer(x).sum().backward()
    opt.step()
    assert int(layer.updates) == 0
    # The weight is frozen.
    frozen = perfkern.SparseLoRALinear(64, 32, rank=4, lazy=False, train_sparse=False, device=device)
    opt = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    frozen(x).sum().backward()
    opt.step()
    assert frozen.values.grad is None and int(frozen.updates) == 0
    # The weight is in the optimizer but received no gradient this step (the layer did not run).
    idle = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, device=device)
    other = torch.nn.Linear(64, 32, device=device)
    opt = torch.optim.SGD([*idle.parameters(), *other.parameters()], lr=0.1)
    other(x).sum().backward()
    opt.step()
    assert int(idle.updates) == 0
    idle(x).sum().backward()
    opt.step()
    assert int(idle.updates) == 1


def test_copies_count_their_own_steps(device):
    original = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, refresh_every=2, device=device)
    layer = copy.deepcopy(original)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    x = torch.randn(4, 64, device=device)
    for _ in range(2):
        layer(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert int(layer.updates) == 2 and int(original.updates) == 0
    assert torch.equal(layer.bwd_meta, _chosen_from(layer))


def test_other_optimizers_count_steps_by_hand(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, refresh_every=2, device=device)
    x = torch.randn(4, 64, device=device)
    for step in range(1, 3):
        layer(x).square().sum().backward()
        with torch.no_grad():  # an update no torch.optim optimizer made
            layer.values -= 1.0 * layer.values.grad
            layer.values.grad = None
        layer.count_optimizer_step()
        assert int(layer.updates) == step
    assert torch.equal(layer.bwd_meta, _chosen_from(layer))


def test_a_loaded_step_count_continues_the_schedule(device):
    layer = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, refresh_every=2, device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(4, 64, device=device)
    layer(x).square().sum().backward()
    opt.step()
    fresh = perfkern.SparseLoRALinear(64, 32, rank=0, adapter=None, refresh_every=2, device=device)
    fresh.load_state_dict(layer.state_dict())
    opt = torch.optim.SGD(fresh.parameters(), lr=1.0)
    before = fresh.bwd_meta.clone()
    fresh(x).square().sum().backward()
    opt.step()
    assert int(fresh.updates) == 2  # the second step since the start: a refresh
    assert torch.equal(fresh.bwd_meta, _chosen_from(fresh)) and not torch.equal(fresh.bwd_meta, before)


def test_score_masks_choose_the_forward_mask_and_magnitude_the_backward_copy():
    """A layer built with ``mask=scores``: forward mask ``double_mask_2to4(scores)[0]``, backward copy
    ``Ws ⊙ double_mask_2to4(Ws)[1]``. Scores that invert the magnitudes make the two rules disagree."""
    torch.manual_seed(3)
    weight = torch.randn(32, 64)
    scores = 1.0 / weight.abs()
    layer = perfkern.SparseLoRALinear.from_weight(weight, rank=0, adapter=None, mask=scores)
    ws = ref.decompress_2to4(layer.values.detach(), layer.meta)
    mask, by_scores = sparsity.double_mask_2to4(scores)
    assert torch.equal(ws != 0, mask)
    by_weight = sparsity.double_mask_2to4(ws)[1]
    copy_used = _backward_weight(layer, layer.bwd_meta)
    assert torch.equal(copy_used, ws * by_weight)
    assert not torch.equal(copy_used, ws * by_scores)
    for documented in (perfkern.SparseLoRALinear.choose_backward_mask, sparsity.double_mask_2to4):
        assert "double_mask_2to4(Ws)[1]" in " ".join(documented.__doc__.split())
