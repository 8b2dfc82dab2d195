"""The drop-in layer (DESIGN §4): ``SparseLoRALinear`` and ``sparsify``.

A 2:4 sparse weight stored in the canonical compressed format (plain tensors: DDP, FSDP and ``state_dict``
see ordinary parameters and buffers; the int16 metadata is held as its bytes, see ``SparseLoRALinear``), a bias,
and a low-rank adapter that can stay off (costing nothing) until ``enable_adapter()``, SLoPe's lazy schedule.
With ``backward="double"`` the input gradient uses SLoPe's double-pruned copy of the weight.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn

from perfkern import _dispatch, sparsity
from perfkern.functional import pera_adapter, pera_delta_weight, sparse24_linear
from perfkern.reference.pera import MODES as PERA_MODES
from perfkern.reference.pera import num_pairs

__all__ = ["SparseLoRALinear", "PeraLinear", "sparsify", "merge", "SkippedLayer"]

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
        refresh_every: with ``backward="double"``, how many weight gradients (training steps) between re-choosing
            the backward copy's mask by magnitude. The copy's values are taken from the current weight at every
            backward, so they always follow it.

    The metadata ``meta`` [out, in/16] and ``bwd_meta`` [in, out/16] read as int16 tensors, as the ops take them,
    and ``state_dict`` holds them as such under those names. They are stored as uint8 buffers of the same bytes
    (``meta_bytes`` [out, in/8], ``bwd_meta_bytes`` [in, out/8]), of which ``meta`` and ``bwd_meta`` are views:
    collective backends have no int16 type, and DDP broadcasts every buffer.
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
        self.register_load_state_dict_post_hook(_sync_adapter_switch)
        # The backward copy's mask is state (saved); its values come from the weight at every backward.
        self.register_buffer(
            "bwd_meta_bytes",
            torch.zeros(in_features, out_features // 8, dtype=torch.uint8, device=device)
            if self._needs_copy()
            else None,
        )
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))
        self._watched: int | None = None
        self._watch_updates()
        weight = torch.empty(out_features, in_features, **factory)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.set_weight(weight)

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
    def set_weight(self, weight: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """Prune ``weight`` [out, in] to 2:4 with ``scores`` (default |weight|) in this layer's pattern, and load it."""
        weight = weight.to(device=self.values.device, dtype=self.values.dtype)
        scores = weight if scores is None else scores.to(weight.device)
        if scores.dtype == torch.float64:
            scores = scores.float()
        mask = sparsity.mask_2to4(scores, pattern=self.pattern)
        pruned = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        values, meta = sparsity.compress_2to4(pruned)
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
            device=weight.device,
            dtype=weight.dtype,
            **kwargs,
        )
        layer.set_weight(weight.detach(), scores)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 16, **kwargs) -> SparseLoRALinear:
        """A sparse copy of ``linear`` (see ``from_weight`` for the keyword arguments)."""
        return cls.from_weight(linear.weight, linear.bias, rank=rank, **kwargs)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """Dense [out, in] weight equal to this layer: Ws, plus the adapter's ΔW when it is on (fp32 sum, fp64 for
        fp64 layers)."""
        acc = _sum_dtype(self.values)
        w = sparsity.decompress_2to4(self.values, self.meta).to(acc)
        if self.adapter_active:
            w = w + _delta_weight(self).to(acc)
        return w.to(self.values.dtype)

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` computing the same function (adapter merged)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
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
        of the forward mask, for ``double`` Wsᵀ pruned 2:4 along N by magnitude (SLoPe)."""
        if not self._needs_copy():
            return
        ws_t = sparsity.decompress_2to4(self.values.detach(), self.meta).t().contiguous()  # [K, N]
        self.bwd_meta.copy_(sparsity.compress_2to4(ws_t, strict=self.pattern == "transposable")[1])

    def _watch_updates(self) -> None:
        """Count updates on the parameter autograd accumulates the weight's gradient into: ``values`` itself, or
        under FSDP2 the unsharded parameter that ``fully_shard`` gathers it into (one object, reused every step).
        A hook stays with its parameter object, so a new one (FSDP2's, a deepcopy's, an unpickled one) gets its
        own at its first forward."""
        values = self.values
        if self.backward != "double" or not values.requires_grad or self._watched == id(values):
            return
        values.register_post_accumulate_grad_hook(self._count_update)
        self._watched = id(values)

    def _count_update(self, values: torch.Tensor) -> None:
        # Runs after the weight's gradient is accumulated, outside any traced graph.
        self.updates += 1
        if int(self.updates) % self.refresh_every == 0:
            self.choose_backward_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be [..., in_features] = [..., {self.in_features}], got {list(x.shape)}")
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self._watch_updates()
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


def _sync_adapter_switch(module: nn.Module, incompatible_keys) -> None:
    """After ``load_state_dict``: the Python mirror of the adapter switch follows the loaded buffer."""
    module._adapter_on = module.adapter is not None and bool(module.adapter_enabled)


def _init_adapter(module: nn.Module, adapter, rank, in_features, out_features, pera_mode, factory) -> None:
    """LoRA/PERA factors as PEFT shapes and initialises them: A [r, in] Kaiming-uniform, B [out, r] zero, h zero."""
    if adapter is None:
        module.register_parameter("lora_a", None)
        module.register_parameter("lora_b", None)
        module.register_parameter("lora_h", None)
        return
    module.lora_a = nn.Parameter(torch.empty(rank, in_features, **factory))
    module.lora_b = nn.Parameter(torch.zeros(out_features, rank, **factory))
    nn.init.kaiming_uniform_(module.lora_a, a=math.sqrt(5))
    if adapter == "pera":
        module.lora_h = nn.Parameter(torch.zeros(num_pairs(rank, pera_mode), **factory))
    else:
        module.register_parameter("lora_h", None)


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
        self.register_load_state_dict_post_hook(_sync_adapter_switch)

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


@dataclass(frozen=True)
class SkippedLayer:
    """A layer ``sparsify`` left dense, and why."""

    name: str
    reason: str


def _dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [out, in], bias) of an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        return module.weight.t(), module.bias
    return None


def check_patterns(name: str, patterns) -> None:
    """A lone string is a common slip for a list of fnmatch patterns: say so rather than match its characters."""
    if isinstance(patterns, str):
        raise TypeError(f"{name} must be a list of fnmatch patterns, got the string {patterns!r}; use [{patterns!r}]")


def select_linear_layers(
    model: nn.Module,
    include: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] = ("lm_head", "*.lm_head"),
) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every ``nn.Linear`` and Hugging Face ``Conv1D`` of ``model`` whose name matches
    an ``include`` fnmatch pattern (default: all) and no ``exclude`` pattern."""
    check_patterns("include", include)
    check_patterns("exclude", exclude)
    found = []
    for name, module in model.named_modules():
        if not name or _dense_weight(module) is None:
            continue
        if include is not None and not any(fnmatch.fnmatch(name, p) for p in include):
            continue
        if any(fnmatch.fnmatch(name, p) for p in exclude):
            continue
        found.append((name, module))
    return found


def sparsify(
    model: nn.Module,
    rank: int = 16,
    include: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] = ("lm_head", "*.lm_head"),
    scores: dict[str, torch.Tensor] | None = None,
    **kwargs,
) -> list[SkippedLayer]:
    """Replace, in place, every ``nn.Linear`` (and Hugging Face ``Conv1D``) of ``model`` whose qualified name
    matches ``include`` (fnmatch patterns; default all) and no ``exclude`` pattern by a ``SparseLoRALinear``
    (``from_weight(weight, bias, rank, **kwargs)``). Layers whose shape the kernels cannot take stay dense.
    ``scores`` maps qualified names to importance scores [out, in] (e.g. Wanda's, from calibration) that choose
    those layers' masks instead of magnitude.

    Returns the layers left dense with the reason for each (excluded ones are not listed)."""
    skipped: list[SkippedLayer] = []
    targets = []
    for name, module in select_linear_layers(model, include, exclude):
        found = _dense_weight(module)
        weight, _ = found
        out_features, in_features = weight.shape
        origin = type(module)
        if in_features % 16 != 0:
            skipped.append(SkippedLayer(name, f"in_features={in_features} is not a multiple of 16"))
            continue
        needs_n16 = kwargs.get("backward", "double") == "double" or kwargs.get("pattern") == "transposable"
        if needs_n16 and out_features % 16 != 0:
            skipped.append(SkippedLayer(name, f"out_features={out_features} is not a multiple of 16"))
            continue
        targets.append((name, weight, found[1], origin))
    default_mask = kwargs.pop("mask", "magnitude")
    for name, weight, bias, origin in targets:
        mask = scores[name] if scores is not None and name in scores else default_mask
        layer = SparseLoRALinear.from_weight(weight, bias, rank=rank, mask=mask, **kwargs)
        layer.dense_origin = origin
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return skipped


def merge(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``SparseLoRALinear`` of ``model`` by a dense layer computing the same function
    (adapter merged), for export: an ``nn.Linear``, or the Hugging Face ``Conv1D`` it was made from (weight
    stored [in, out] again), so the model's state_dict has its original names and shapes. Returns ``model``."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLoRALinear)]
    for name, layer in targets:
        dense = layer.to_linear()
        origin = getattr(layer, "dense_origin", nn.Linear)
        if origin is not nn.Linear and origin.__name__ == "Conv1D":
            conv = origin(layer.out_features, layer.in_features).to(
                device=dense.weight.device, dtype=dense.weight.dtype
            )
            with torch.no_grad():
                conv.weight.copy_(dense.weight.t())
                if dense.bias is not None:
                    conv.bias.copy_(dense.bias)
                else:
                    conv.bias.zero_()
            dense = conv
        if not name:
            return dense
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, dense)
    return model
