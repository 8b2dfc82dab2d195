"""PERA as a PEFT LoRA layer (DESIGN §4), through PEFT's custom-module registration for ``nn.Linear``.

    from peft import LoraConfig, get_peft_model
    from perfkern.integrations.peft import register_pera

    config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    register_pera(config, mode="full")      # before get_peft_model, and again before PeftModel.from_pretrained
    model = get_peft_model(model, config)

Each adapted layer keeps PEFT's ``lora_A``/``lora_B`` and adds ``lora_pera_h`` (zero-initialised, so training
starts as plain LoRA); the ``lora_`` prefix makes PEFT train, save and load it. ``get_delta_weight`` returns
s·B̂·Â, so ``merge``, ``unmerge`` and ``merge_and_unload`` work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

from perfkern.functional import pera_adapter, pera_delta_weight
from perfkern.reference.pera import MODES, num_pairs

__all__ = ["PeraLoraLinear", "register_pera", "PERA_LAYERS"]


class PeraLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` with PERA's polynomial expansion of its factors (mode set by the subclass)."""

    adapter_layer_names = (*LoraLinear.adapter_layer_names, "lora_pera_h")
    pera_mode = "full"

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
        if config.lora_bias:
            raise ValueError("PERA has no adapter bias: use lora_bias=False")
        if config.use_dora:
            raise ValueError("PERA and DoRA do not combine: use use_dora=False")
        if not hasattr(self, "lora_pera_h"):
            # PEFT's update_layer walks adapter_layer_names, so the dict must exist before it runs.
            self.lora_pera_h = nn.ParameterDict()
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
        weight = self.lora_A[adapter_name].weight
        self.lora_pera_h[adapter_name] = nn.Parameter(
            torch.zeros(num_pairs(r, self.pera_mode), device=weight.device, dtype=weight.dtype)
        )
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _factors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.lora_A[adapter].weight
        return a, self.lora_B[adapter].weight, self.lora_pera_h[adapter].to(a.dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        a, b, h = self._factors(adapter)
        dtype = b.dtype
        if a.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            a, b, h = a.float(), b.float(), h.float()
        delta = pera_delta_weight(a, b, h, self.scaling[adapter], self.pera_mode)
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
            a, b, h = self._factors(adapter)
            xd = self.lora_dropout[adapter](x).to(a.dtype)
            result = result + pera_adapter(xd, a, b, h, self.scaling[adapter], self.pera_mode).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "pera." + super().__repr__()


PERA_LAYERS: dict[str, type[PeraLoraLinear]] = {
    mode: type(f"PeraLoraLinear{mode.capitalize()}", (PeraLoraLinear,), {"pera_mode": mode}) for mode in MODES
}


def register_pera(config, mode: str = "full") -> None:
    """Make ``get_peft_model(model, config)`` (and ``PeftModel.from_pretrained(..., config=config)``) build PERA
    layers for the ``nn.Linear`` targets of ``config`` (a ``peft.LoraConfig``)."""
    if mode not in PERA_LAYERS:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    config._register_custom_module({nn.Linear: PERA_LAYERS[mode]})
