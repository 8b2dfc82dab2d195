"""PERA as a PEFT LoRA layer (DESIGN §4), through PEFT's custom-module registration.

    from peft import LoraConfig, get_peft_model
    from perfkern.integrations.peft import register_pera

    config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_pera(config, mode="full")      # before get_peft_model, and before PeftModel.from_pretrained
    model = get_peft_model(model, config)

Each adapted layer (``nn.Linear``, or Hugging Face ``Conv1D`` with ``fan_in_fan_out``) keeps PEFT's
``lora_A``/``lora_B`` and adds ``lora_pera_h`` (zero-initialised, so training starts as plain LoRA); the ``lora_``
prefix makes PEFT train, save and load it. ``get_delta_weight`` returns s·B̂·Â with PEFT's scale s = alpha / r
(alpha / √r with ``use_rslora``), r the LoRA rank, so ``merge``, ``unmerge`` and ``merge_and_unload`` work.

``register_pera`` records the adapter kind in the config's ``init_lora_weights`` (``"PERA (perfkern, mode=...,
init=...): ..."``), which every save of the adapter carries. Plain PEFT layers reject that value, so a PERA adapter
never turns silently into a plain LoRA: ``PeftModel.from_pretrained`` without ``register_pera`` and a PERA adapter
added to plain LoRA layers both raise with this note. A PERA layer holds adapters of several kinds: a plain LoRA
adapter (a config without ``register_pera``) stays plain, a ``square`` adapter in a layer made for ``full`` stays
``square``. ``add_weighted_adapter`` combines PERA adapters exactly with ``"cat"`` (their pair weights h carried
over, rescaled) and through ΔW with the SVD types; the ``"linear"`` family mixes the factors, which loses the
polynomial terms, and raises.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

from perfkern.functional import pera_adapter, pera_delta_weight
from perfkern.reference import pera as _ref
from perfkern.reference.pera import MODES, num_pairs, pairs

__all__ = ["PeraLoraLinear", "register_pera", "PERA_LAYERS"]

_MARKER = re.compile(r"^PERA \(perfkern, mode=(\w+), init=(.+?)\):")
_INITS = (True, False, "gaussian")
_MIXING = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def _marker(mode: str, init: bool | str) -> str:
    return (
        f"PERA (perfkern, mode={mode}, init={init!r}): a PERA adapter, which plain PEFT LoRA layers cannot hold; call "
        "perfkern.integrations.peft.register_pera(config) before get_peft_model or PeftModel.from_pretrained"
    )


def pera_kind(config) -> tuple[str, bool | str] | None:
    """(mode, init_lora_weights) of a config ``register_pera`` marked, None for a plain LoRA config."""
    found = _MARKER.match(config.init_lora_weights) if isinstance(config.init_lora_weights, str) else None
    return None if found is None else (found.group(1), ast.literal_eval(found.group(2)))


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def _weighted_combination() -> dict | None:
    """The arguments of PEFT's ``add_weighted_adapter`` when the adapter being added comes from it. PEFT creates
    the combined adapter through ``update_layer`` and fills its factors afterwards, with no hook in between."""
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "add_weighted_adapter" and "combination_type" in frame.f_locals:
            return frame.f_locals
        frame = frame.f_back
    return None


class PeraLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` with PERA's polynomial expansion of its factors, per adapter (``pera_modes``: the
    mode of each adapter, None for a plain LoRA one)."""

    adapter_layer_names = (*LoraLinear.adapter_layer_names, "lora_pera_h")
    other_param_names = (*LoraLinear.other_param_names, "pera_modes")

    def __init__(self, base_layer, adapter_name: str, config, **kwargs) -> None:
        conv1d = _conv1d_type()
        base = base_layer.get_base_layer() if hasattr(base_layer, "get_base_layer") else base_layer
        is_conv1d = conv1d is not None and isinstance(base, conv1d)
        if is_conv1d:
            kwargs["is_target_conv_1d_layer"] = True
        super().__init__(base_layer, adapter_name, config, **kwargs)
        # Conv1D stores its weight [in, out]: ΔW is transposed to merge (PEFT's rule, whatever the config says).
        self.fan_in_fan_out = is_conv1d

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
        if not hasattr(self, "lora_pera_h"):
            # PEFT's update_layer walks adapter_layer_names, so these must exist before it runs.
            self.lora_pera_h = nn.ParameterDict()
            self.pera_modes: dict[str, str | None] = {}
        kind = pera_kind(config)
        if kind is None:  # a plain LoRA adapter in a PERA layer stays plain
            super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
            self.pera_modes[adapter_name] = None
            return
        if config.lora_bias:
            raise ValueError("PERA has no adapter bias: use lora_bias=False")
        if config.use_dora:
            raise ValueError("PERA and DoRA do not combine: use use_dora=False")
        mode, init = kind
        combination = _weighted_combination()
        sources = []
        if combination is not None:
            named = zip(combination["adapters"], combination["weights"], strict=True)
            sources = [(a, w) for a, w in named if a in self.lora_A]
            kinds = {self.pera_modes.get(a) for a, _ in sources}
            combination_type = combination["combination_type"]
            # PEFT combines a single adapter with "linear": √(w·s)·A and √(w·s)·B, which carries pairs as "cat" does.
            carried = combination_type == "cat" or (combination_type == "linear" and len(sources) == 1)
            if combination_type in _MIXING and not carried and kinds != {None}:
                raise ValueError(
                    f"add_weighted_adapter(combination_type={combination_type!r}) mixes the factors of PERA "
                    "adapters, which loses their polynomial terms: use 'cat' (exact) or an SVD type ('svd', "
                    "'ties_svd', 'dare_linear_svd', 'dare_ties_svd', 'magnitude_prune_svd')"
                )
            modes = kinds - {None}
            if not carried or not modes:
                mode = None  # the SVD types fill a plain LoRA of ΔW
            elif len(modes) > 1:
                mode = "full"  # the one mode holding every adapter's pairs
            else:
                mode = modes.pop()
        config.init_lora_weights = init  # PEFT's own initialisation of A and B, then the marker again
        try:
            super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
        finally:
            config.init_lora_weights = _marker(kind[0], init)
        self.pera_modes[adapter_name] = mode
        if mode is None:
            return
        weight = self.lora_A[adapter_name].weight
        h = torch.zeros(num_pairs(r, mode), device=weight.device, dtype=weight.dtype)
        if combination is not None:
            self._carry_pairs(h, adapter_name, mode, sources)
        self.lora_pera_h[adapter_name] = nn.Parameter(h)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def _carry_pairs(self, h: torch.Tensor, name: str, mode: str, sources: list[tuple[str, float]]) -> None:
        """h of the ``"cat"`` combination: PEFT stacks A' = [w_k·s_k·A_k] and B' = [B_k] under the new scale s', so
        pair (i, j) of adapter k keeps its term w_k·s_k·h·(b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ with h' = h / (s'·w_k·s_k). (One
        adapter under "linear", √(w·s)·A and √(w·s)·B, gives the same h'.)"""
        new_i, new_j = pairs(self.r[name], mode)
        index = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(new_i, new_j, strict=True))}
        offset = 0
        for adapter, weight in sources:
            source_mode = self.pera_modes.get(adapter)
            factor = self.scaling[name] * weight * self.scaling[adapter]
            if source_mode is not None and factor != 0:
                src_i, src_j = pairs(self.r[adapter], source_mode)
                for p, (i, j) in enumerate(zip(src_i.tolist(), src_j.tolist(), strict=True)):
                    h[index[(offset + i, offset + j)]] = self.lora_pera_h[adapter][p] / factor
            offset += self.r[adapter]

    def _factors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.lora_A[adapter].weight
        return a, self.lora_B[adapter].weight, self.lora_pera_h[adapter].to(a.dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        mode = self.pera_modes[adapter]
        if mode is None:
            return super().get_delta_weight(adapter)
        a, b, h = self._factors(adapter)
        dtype = b.dtype
        if a.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            a, b, h = a.float(), b.float(), h.float()
        delta_weight = _ref.pera_delta_weight if a.dtype == torch.float64 else pera_delta_weight
        delta = delta_weight(a, b, h, self.scaling[adapter], mode)
        return transpose(delta, self.fan_in_fan_out).to(dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            if kwargs.get("adapter_names") is not None:
                raise NotImplementedError("mixed-adapter batches (adapter_names=) are not supported by PERA layers")
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            dropped = self.lora_dropout[adapter](x)
            mode = self.pera_modes[adapter]
            if mode is None:
                a, b = self.lora_A[adapter], self.lora_B[adapter]
                result = result + (b(a(dropped.to(a.weight.dtype))) * self.scaling[adapter]).to(result.dtype)
                continue
            a, b, h = self._factors(adapter)
            # The reference takes float64 (the kernels do not): float64 models run it.
            adapter_fn = _ref.pera_adapter if a.dtype == torch.float64 else pera_adapter
            term = adapter_fn(dropped.to(a.dtype), a, b, h, self.scaling[adapter], mode)
            result = result + term.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "pera." + super().__repr__()


# One layer class holds every mode (per adapter); the mapping is kept for code that names a mode's class.
PERA_LAYERS: dict[str, type[PeraLoraLinear]] = dict.fromkeys(MODES, PeraLoraLinear)


def register_pera(config, mode: str | None = None) -> None:
    """Make ``get_peft_model(model, config)`` and ``PeftModel.from_pretrained(model, path, config=config)`` build
    PERA layers of ``mode`` (``"full"``, ``"square"``, ``"cross"``; default: the mode a loaded config records, else
    ``"full"``) for the ``nn.Linear`` and ``Conv1D`` targets of ``config`` (a ``peft.LoraConfig``).

    The mode and ``init_lora_weights`` (True, False or "gaussian") are recorded in ``config.init_lora_weights``."""
    kind = pera_kind(config)
    if kind is not None:
        saved_mode, init = kind
        if mode is not None and mode != saved_mode:
            raise ValueError(f"this config records a PERA adapter of mode {saved_mode!r}, not {mode!r}")
        mode = saved_mode
    else:
        init = config.init_lora_weights
        if init not in _INITS:
            raise ValueError(f"PERA initialises like LoRA: init_lora_weights must be one of {_INITS}, got {init!r}")
    mode = "full" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    config.init_lora_weights = _marker(mode, init)
    layers = {nn.Linear: PeraLoraLinear}
    conv1d = _conv1d_type()
    if conv1d is not None:
        layers[conv1d] = PeraLoraLinear
    config._register_custom_module(layers)
