"""The drop-in layers (DESIGN §4): ``SparseLoRALinear`` and ``PeraLinear`` (model conversion: ``perfkern.convert``).

A 2:4 sparse weight stored in the canonical compressed format (plain tensors: DDP, FSDP and ``state_dict``
see ordinary parameters and buffers; the int16 metadata is held as its bytes, see ``SparseLoRALinear``), a bias,
and a low-rank adapter that can stay off (costing nothing) until ``enable_adapter()``, SLoPe's lazy schedule.
With ``backward="double"`` the input gradient uses SLoPe's double-pruned copy of the weight.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from perfkern import _dispatch, sparsity
from perfkern.functional import pera_adapter, pera_delta_weight, sparse24_linear
from perfkern.reference.pera import MODES as PERA_MODES
from perfkern.reference.pera import num_pairs

__all__ = ["SparseLoRALinear", "PeraLinear"]

_PATTERNS = ("row", "transposable")
_BACKWARDS = ("double", "exact")
# The int16 metadata, by its public name, is stored in a uint8 buffer of the same bytes under this name.
_META_BYTES = {"meta": "meta_bytes", "bwd_meta": "bwd_meta_bytes"}
_META_NAMES = {stored: public for public, stored in _META_BYTES.items()}


def _choose(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


class SparseLoRALinear(nn.Module):
    """``y = x·Wsᵀ + b + s·(x·Aᵀ)·Bᵀ`` with Ws 2:4 sparse along ``in_features`` (SLoPe).

    Args:
        in_features, out_features: as ``nn.Linear``; ``in_features`` a multiple of 16.
        rank: adapter rank r (0 or ``adapter=None``: no adapter).
        alpha: adapter scaling numerator, s = alpha / r (default alpha = r, so s = 1).
        adapter: ``"lora"``, ``"pera"`` (polynomial-expanded LoRA, DESIGN §3.4, with a learnable ``lora_h``) or None.
        pera_mode: with ``adapter="pera"``, which pairs expand the factors: ``"full"``, ``"square"`` or ``"cross"``.
        pattern: ``"row"`` (2:4 along K) or ``"transposable"`` (every 4x4 tile 2:4 both ways).
        backward: ``"double"`` (dx with SLoPe's double-pruned copy, 2:4 along N) or ``"exact"`` (dx with Ws;
            with ``pattern="transposable"`` Wsᵀ is itself 2:4 and the sparse kernel computes it exactly).
        lazy: start with the adapter off; ``enable_adapter()`` switches it on.
        train_sparse: whether the sparse values train (their gradient holds only the kept entries).
        refresh_every: with ``backward="double"``, how many optimizer steps between re-choosing the backward
            copy's mask by magnitude, from the weight those steps produced (SLoPe). Optimizer steps are counted, not
            backward passes: with gradient accumulation the mask is re-chosen once per optimizer step. Any
            ``torch.optim.Optimizer`` that holds ``values`` (FSDP2: its sharded parameter) and gave it a gradient
            counts; other optimizers call ``count_optimizer_step()``. The copy's values are taken from the current
            weight at every backward, so they always follow it.
        device: ``"meta"`` builds the layer without memory or computation (then ``to_empty`` and
            ``load_state_dict``, or ``reset_parameters``), as ``nn.Linear`` does.

    The metadata ``meta`` [out, in/16] and ``bwd_meta`` [in, out/16] read as int16 tensors, as the ops take them,
    and ``state_dict`` holds them as such under those names. They are stored as uint8 buffers of the same bytes
    (``meta_bytes`` [out, in/8], ``bwd_meta_bytes`` [in, out/8]), of which ``meta`` and ``bwd_meta`` are views:
    collective backends have no int16 type, and DDP broadcasts every buffer.

    A fresh layer's weight is distributed as ``nn.Linear``'s initialisation pruned 2:4 by magnitude, drawn directly
    in compressed form; ``from_weight``/``from_linear`` prune the given weight once and draw nothing.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 16,
        alpha: float | None = None,
        adapter: str | None = "lora",
        pera_mode: str = "full",
        pattern: str = "row",
        backward: str = "double",
        lazy: bool = True,
        train_sparse: bool = True,
        refresh_every: int = 100,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or in_features % 16 != 0:
            raise ValueError(f"in_features must be a positive multiple of 16 (2:4 metadata), got {in_features}")
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}")
        if rank < 0:
            raise ValueError(f"rank must be >= 0 (0: no adapter), got {rank}")
        if adapter not in (None, "lora", "pera"):
            raise ValueError(f"adapter must be 'lora', 'pera' or None, got {adapter!r}")
        self.pera_mode = _choose("pera_mode", pera_mode, PERA_MODES)
        self.pattern = _choose("pattern", pattern, _PATTERNS)
        self.backward = _choose("backward", backward, _BACKWARDS)
        if self.pattern == "transposable" and out_features % 16 != 0:
            raise ValueError(f"pattern='transposable' needs out_features % 16 == 0, got {out_features}")
        if self.backward == "double" and out_features % 16 != 0:
            raise ValueError(
                f"backward='double' needs out_features % 16 == 0 (the copy is 2:4 along N), got {out_features}; "
                "use backward='exact'"
            )
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.in_features, self.out_features = in_features, out_features
        self.rank = rank if adapter is not None else 0
        self.adapter = adapter if self.rank > 0 else None
        self.alpha = float(alpha) if alpha is not None else float(max(self.rank, 1))
        self.refresh_every = refresh_every
        factory = {"device": device, "dtype": dtype}

        self.values = nn.Parameter(torch.empty(out_features, in_features // 2, **factory), requires_grad=train_sparse)
        self.register_buffer(
            "meta_bytes", torch.zeros(out_features, in_features // 8, dtype=torch.uint8, device=device)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        _init_adapter(self, self.adapter, self.rank, in_features, out_features, self.pera_mode, factory)
        # The switch is saved as a buffer and mirrored in a Python bool, which forward reads (a traced forward then
        # needs no host read of a tensor).
        self._adapter_on = not lazy and self.adapter is not None
        self.register_buffer("adapter_enabled", torch.tensor(self._adapter_on, device=device))
        self.register_load_state_dict_post_hook(_sync_mirrors)
        # The backward copy's mask is state (saved); its values come from the weight at every backward.
        self.register_buffer(
            "bwd_meta_bytes",
            torch.zeros(in_features, out_features // 8, dtype=torch.uint8, device=device)
            if self._needs_copy()
            else None,
        )
        # Optimizer steps that updated the weight; mirrored in a Python int so that counting needs no host sync.
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))
        self._updates = 0
        _count_steps_of(self)
        self._random_weight()

    def _needs_copy(self) -> bool:
        return self.backward == "double" or self.pattern == "transposable"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0

    # The metadata: int16 views of the uint8 buffers, in the module and in its state_dict.

    @property
    def meta(self) -> torch.Tensor:
        """The forward mask's metadata [out, in/16] int16 (a view of ``meta_bytes``)."""
        return self.meta_bytes.view(torch.int16)

    @meta.setter
    def meta(self, value: torch.Tensor) -> None:
        self.meta_bytes = _meta_bytes(value, (self.out_features, self.in_features // 16), "meta")

    @property
    def bwd_meta(self) -> torch.Tensor | None:
        """The backward copy's metadata [in, out/16] int16 (a view of ``bwd_meta_bytes``), or None."""
        stored = self.bwd_meta_bytes
        return None if stored is None else stored.view(torch.int16)

    @bwd_meta.setter
    def bwd_meta(self, value: torch.Tensor) -> None:
        if self.bwd_meta_bytes is None:
            raise AttributeError("this layer has no backward copy (backward='exact', pattern='row')")
        self.bwd_meta_bytes = _meta_bytes(value, (self.in_features, self.out_features // 16), "bwd_meta")

    def __setattr__(self, name: str, value) -> None:
        # ``meta``/``bwd_meta`` are views of the byte buffers; a loader that assigns state_dict entries by name (as
        # transformers does, wrapping tensors that are not buffers as parameters) sets them through the properties.
        if name in _META_BYTES and isinstance(value, torch.Tensor):
            object.__setattr__(self, name, value.detach())
            return
        super().__setattr__(name, value)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        local: dict = {}
        super()._save_to_state_dict(local, prefix, keep_vars)
        for key, value in local.items():
            public = _META_NAMES.get(key[len(prefix) :])
            if public is not None:
                key, value = prefix + public, value.view(torch.int16)
            destination[key] = value

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        rejected = set()
        for public, stored in _META_BYTES.items():
            key = prefix + public
            buffer = self._buffers.get(stored)
            if key not in state_dict or buffer is None:
                continue
            value = state_dict.pop(key)
            shape = (buffer.shape[0], buffer.shape[1] // 2)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int16 or tuple(value.shape) != shape:
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                error_msgs.append(f"size mismatch for {key}: expected int16 {list(shape)}, got {got}.")
                rejected.add(prefix + stored)
                continue
            state_dict[prefix + stored] = value.contiguous().view(torch.uint8)
        first_missing = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        missing_keys[first_missing:] = [
            prefix + _META_NAMES.get(key[len(prefix) :], key[len(prefix) :])
            for key in missing_keys[first_missing:]
            if key not in rejected
        ]

    # Building and exporting.

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh weight and adapter, as at construction (B = 0, h = 0, bias 0, update count 0). On the meta device
        this does nothing."""
        if self.values.is_meta:
            return
        _reset_adapter(self)
        if self.bias is not None:
            self.bias.zero_()
        self.updates.zero_()
        self._updates = 0
        self._random_weight()

    @torch.no_grad()
    def _random_weight(self) -> None:
        """A weight distributed as ``nn.Linear``'s (U(-1/√in, 1/√in), Kaiming-uniform with a = √5) pruned 2:4 by
        magnitude, drawn in compressed form: per group of 4, a uniformly random pair of positions, the two largest
        of 4 magnitudes (the largest M = U^(1/4), the second M·V^(1/3): order statistics of 4 uniforms) in random
        order, with random signs. ``pattern="transposable"`` prunes a dense draw (its mask couples rows)."""
        values = self.values
        if values.is_meta:
            return
        n, k = self.out_features, self.in_features
        bound = 1.0 / math.sqrt(k)
        if self.pattern == "transposable":
            dense = torch.empty(n, k, device=values.device, dtype=values.dtype).uniform_(-bound, bound)
            self.set_weight(dense)
            return
        device, groups = values.device, k // 4
        first = torch.rand(n, groups, device=device).pow_(0.25)
        second = first * torch.rand(n, groups, device=device).pow_(1.0 / 3.0)
        swap = torch.rand(n, groups, device=device) < 0.5
        pair = torch.stack((torch.where(swap, second, first), torch.where(swap, first, second)), dim=-1)
        signs = torch.randint(0, 2, pair.shape, device=device).mul_(2).sub_(1)
        values.copy_((pair * signs * bound).view(n, k // 2))
        nibbles = _PAIR_NIBBLES.to(device)[torch.randint(0, 6, (n, groups), device=device)]
        self.meta.copy_(_pack_nibbles(nibbles))
        self.choose_backward_mask()

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """Prune ``weight`` [out, in] to 2:4 with ``scores`` (default |weight|) in this layer's pattern, and load it.

        By magnitude in the row pattern this is one ``compress_2to4(weight, strict=False)``; with scores the kept
        positions are exactly those of ``mask_2to4(scores)`` (a kept weight that is 0 stays a trainable slot).
        Then the backward copy's mask is chosen from the result (``choose_backward_mask``)."""
        if self.values.is_meta:
            return
        weight = weight.to(device=self.values.device, dtype=self.values.dtype)
        if scores is None and self.pattern == "row":
            values, meta = sparsity.compress_2to4(weight, strict=False)
        else:
            scores = weight if scores is None else scores.to(weight.device)
            if scores.dtype == torch.float64:
                scores = scores.float()
            mask = sparsity.mask_2to4(scores, pattern=self.pattern)
            # The mask keeps exactly two entries per group, so compressing it names exactly those positions.
            meta = sparsity.compress_2to4(mask.to(weight.dtype), strict=False)[1]
            values = sparsity.gather_2to4(weight, meta) + 0.0  # -0.0 is stored as +0.0
        self.values.copy_(values)
        self.meta.copy_(meta)
        self.choose_backward_mask()

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        rank: int = 16,
        alpha: float | None = None,
        adapter: str | None = "lora",
        mask: str | torch.Tensor = "magnitude",
        **kwargs,
    ) -> SparseLoRALinear:
        """A layer whose weight is ``weight`` [out, in] pruned to 2:4 by ``mask`` (``"magnitude"``, or a score
        tensor [out, in] such as Wanda's), with ``bias`` and a fresh adapter (B = 0, so the output equals the
        pruned layer's until the adapter trains)."""
        if isinstance(mask, str):
            if mask != "magnitude":
                raise ValueError(f"mask must be 'magnitude' or a score tensor, got {mask!r}")
            scores = None
        else:
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask scores must be [out, in] = {list(weight.shape)}, got {list(mask.shape)}")
            scores = mask
        out_features, in_features = weight.shape
        layer = cls(
            in_features,
            out_features,
            bias=bias is not None,
            rank=rank,
            alpha=alpha,
            adapter=adapter,
            device="meta",
            dtype=weight.dtype,
            **kwargs,
        )
        if weight.is_meta:
            return layer
        # Built on the meta device and then allocated, so no random weight is drawn only to be replaced.
        layer.to_empty(device=weight.device)
        with torch.no_grad():
            _reset_adapter(layer)
            layer.updates.zero_()
            layer.adapter_enabled.fill_(layer._adapter_on)
            if bias is not None:
                layer.bias.copy_(bias)
        layer.set_weight(weight.detach(), scores)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 16, **kwargs) -> SparseLoRALinear:
        """A sparse copy of ``linear`` (see ``from_weight`` for the keyword arguments)."""
        return cls.from_weight(linear.weight, linear.bias, rank=rank, **kwargs)

    @torch.no_grad()
    def merged_weight(self, adapters: bool = True) -> torch.Tensor:
        """Dense [out, in] weight equal to this layer: Ws, plus the adapter's ΔW when it is on and ``adapters``
        (fp32 sum, fp64 for fp64 layers). ``adapters=False``: Ws alone, the base an exported adapter
        (``perfkern.export_lora``) goes on."""
        acc = _sum_dtype(self.values)
        w = sparsity.decompress_2to4(self.values, self.meta)
        if adapters and self.adapter_active:
            w = w.to(acc) + _delta_weight(self).to(acc)
        return w.to(self.values.dtype)

    def to_linear(self, adapters: bool = True) -> nn.Linear:
        """A dense ``nn.Linear`` computing the same function (adapter merged; ``adapters=False``: without it)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight(adapters))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # The lazy adapter.

    @property
    def adapter_active(self) -> bool:
        return self._adapter_on

    def enable_adapter(self, enabled: bool = True) -> SparseLoRALinear:
        """Switch the adapter on (SLoPe turns it on for the last part of training). B starts at zero, so the
        output does not jump at the switch."""
        if enabled and self.adapter is None:
            raise RuntimeError("this layer has no adapter (adapter=None or rank=0)")
        self._adapter_on = bool(enabled)
        self.adapter_enabled.fill_(self._adapter_on)
        return self

    # The backward copy.

    @torch.no_grad()
    def choose_backward_mask(self) -> None:
        """(Re)choose the backward copy's mask from the current weight: for ``transposable`` the exact transpose
        of the forward mask, for ``double`` Wsᵀ pruned 2:4 along N by |Ws| (SLoPe).

        The rule is |Ws| even for a layer built with ``mask=scores``: the copy is re-chosen during training, where
        only the weight exists. So such a layer's backward mask is ``double_mask_2to4(Ws)[1]``, not
        ``double_mask_2to4(scores)[1]`` (which prunes the second time by |scores|)."""
        if not self._needs_copy() or self.values.is_meta:
            return
        values = self.values.detach()
        if hasattr(values, "full_tensor"):  # FSDP2's sharded parameter: gather it (every rank calls this together)
            values = values.full_tensor()
        ws_t = sparsity.decompress_2to4(values, self.meta).t().contiguous()  # [K, N]
        self.bwd_meta.copy_(sparsity.compress_2to4(ws_t, strict=self.pattern == "transposable")[1])

    @torch.no_grad()
    def count_optimizer_step(self) -> None:
        """Count one optimizer step that updated this layer's weight; every ``refresh_every``-th re-chooses the
        backward copy's mask from the updated weight. ``torch.optim`` optimizers call this by themselves (see
        ``refresh_every``); call it after each step of another optimizer."""
        self.updates.add_(1)
        self._updates += 1
        if self._updates % self.refresh_every == 0:
            self.choose_backward_mask()

    def __setstate__(self, state) -> None:
        # A copy (deepcopy, pickle) counts its own optimizer steps.
        super().__setstate__(state)
        _count_steps_of(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be [..., in_features] = [..., {self.in_features}], got {list(x.shape)}")
        lora = self.adapter_active and self.adapter == "lora"
        y = sparse24_linear(
            x,
            self.values,
            self.meta,
            self.bias,
            self.lora_a if lora else None,
            self.lora_b if lora else None,
            self.scale,
            None,
            self.bwd_meta,
        )
        if self.adapter_active and self.adapter == "pera":
            y = y + pera_adapter(x, self.lora_a, self.lora_b, self.lora_h, self.scale, self.pera_mode)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"adapter={_adapter_repr(self)}, pattern={self.pattern}, backward={self.backward}, "
            f"sparse_trainable={self.values.requires_grad}, backend={_dispatch.requested_backend()}"
        )


def _meta_bytes(value: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    """The uint8 buffer holding the int16 metadata ``value`` of ``shape`` (sharing its storage when contiguous)."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int16 or tuple(value.shape) != shape:
        raise TypeError(f"{name} must be an int16 tensor of shape {list(shape)}")
    return value.contiguous().view(torch.uint8)


def _sync_mirrors(module: nn.Module, incompatible_keys=None) -> None:
    """After ``load_state_dict``: the Python mirrors of the adapter switch and of the step count follow the loaded
    buffers."""
    module._adapter_on = module.adapter is not None and bool(module.adapter_enabled)
    updates = getattr(module, "updates", None)
    if updates is not None and not updates.is_meta:
        module._updates = int(updates)


# The positions (i, j), i < j, a group of 4 can keep, as metadata nibbles i | j << 2.
_PAIR_NIBBLES = torch.tensor([i | j << 2 for i in range(4) for j in range(i + 1, 4)], dtype=torch.int32)


def _pack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """int16 metadata [N, G/4] from one nibble per group [N, G] (group g at bits 4·(g mod 4) of word g // 4)."""
    n, groups = nibbles.shape
    shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=nibbles.device)
    # Four nibbles fill all 16 bits; the int32 sum wraps into int16 as two's complement.
    return (nibbles.view(n, groups // 4, 4) << shifts).sum(-1, dtype=torch.int32).to(torch.int16)


# SLoPe refreshes the backward copy per optimizer step. A global step hook of torch.optim finds, among the
# parameters of the optimizer that stepped, the ``values`` of live double-pruned layers that received a gradient.
_STEP_COUNTING: weakref.WeakSet = weakref.WeakSet()
_STEP_HOOK = None


def _count_steps_of(layer: SparseLoRALinear) -> None:
    global _STEP_HOOK
    if layer.backward != "double":
        return
    _STEP_COUNTING.add(layer)
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


@torch.compiler.disable
def _after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    if not _STEP_COUNTING:
        return
    layers = {id(layer.values): layer for layer in list(_STEP_COUNTING)}
    # In the optimizer's parameter order, the same on every rank: a refresh of a sharded weight is a collective.
    for group in optimizer.param_groups:
        for param in group["params"]:
            layer = layers.get(id(param))
            if layer is not None and layer.values is param and param.grad is not None:
                layer.count_optimizer_step()


def _init_adapter(module: nn.Module, adapter, rank, in_features, out_features, pera_mode, factory) -> None:
    """LoRA/PERA factors as PEFT shapes and initialises them: A [r, in] Kaiming-uniform, B [out, r] zero, h zero."""
    if adapter is None:
        module.register_parameter("lora_a", None)
        module.register_parameter("lora_b", None)
        module.register_parameter("lora_h", None)
        return
    module.lora_a = nn.Parameter(torch.empty(rank, in_features, **factory))
    module.lora_b = nn.Parameter(torch.zeros(out_features, rank, **factory))
    if adapter == "pera":
        module.lora_h = nn.Parameter(torch.zeros(num_pairs(rank, pera_mode), **factory))
    else:
        module.register_parameter("lora_h", None)
    _reset_adapter(module)


@torch.no_grad()
def _reset_adapter(module: nn.Module) -> None:
    if module.lora_a is None or module.lora_a.is_meta:
        return
    nn.init.kaiming_uniform_(module.lora_a, a=math.sqrt(5))
    module.lora_b.zero_()
    if module.lora_h is not None:
        module.lora_h.zero_()


def _delta_weight(module: nn.Module) -> torch.Tensor:
    """The adapter's ΔW [out, in]: s·B·A for LoRA, s·B̂·Â for PERA."""
    if module.adapter == "pera":
        return pera_delta_weight(module.lora_a, module.lora_b, module.lora_h, module.scale, module.pera_mode)
    acc = _sum_dtype(module.lora_a)
    return module.scale * (module.lora_b.to(acc) @ module.lora_a.to(acc))


def _adapter_repr(module: nn.Module) -> str:
    if module.adapter is None:
        return "none"
    state = "on" if module.adapter_active else "lazy"
    mode = f", mode={module.pera_mode}" if module.adapter == "pera" else ""
    return f"{module.adapter}(rank={module.rank}, alpha={module.alpha:g}{mode}, {state})"


class PeraLinear(nn.Module):
    """A dense ``nn.Linear`` base plus a PERA adapter: ``y = base(x) + s·(x·Âᵀ)·B̂ᵀ`` (DESIGN §3.4).

    The base is frozen (its parameters stop requiring grad); the adapter is lazy like ``SparseLoRALinear``'s
    when ``lazy=True``. ``to_linear()`` merges ΔW = s·B̂·Â into a plain ``nn.Linear``."""

    adapter = "pera"

    def __init__(
        self, base: nn.Linear, rank: int = 16, alpha: float | None = None, mode: str = "full", lazy: bool = False
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, float(alpha) if alpha is not None else float(rank)
        self.pera_mode = _choose("mode", mode, PERA_MODES)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        _init_adapter(self, "pera", rank, self.in_features, self.out_features, self.pera_mode, factory)
        self._adapter_on = not lazy
        self.register_buffer("adapter_enabled", torch.tensor(not lazy, device=base.weight.device))
        self.register_load_state_dict_post_hook(_sync_mirrors)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def adapter_active(self) -> bool:
        return self._adapter_on

    def enable_adapter(self, enabled: bool = True) -> PeraLinear:
        self._adapter_on = bool(enabled)
        self.adapter_enabled.fill_(self._adapter_on)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.adapter_active:
            y = y + pera_adapter(x, self.lora_a, self.lora_b, self.lora_h, self.scale, self.pera_mode)
        return y

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ΔW merged into the weight."""
        merged = nn.Linear(
            self.in_features, self.out_features, bias=self.base.bias is not None, **_factory(self.base.weight)
        )
        acc = _sum_dtype(self.base.weight)
        weight = self.base.weight.to(acc)
        if self.adapter_active:
            weight = weight + _delta_weight(self).to(acc)
        merged.weight.copy_(weight)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, adapter={_adapter_repr(self)}"


def _sum_dtype(t: torch.Tensor) -> torch.dtype:
    """Merged weights are summed in fp32 (fp64 for fp64 layers) and rounded once."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _factory(t: torch.Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}
