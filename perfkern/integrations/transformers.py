"""Hugging Face transformers glue: a quantization method ``"perfkern"`` so that 2:4 checkpoints cannot be misloaded,
``from_pretrained`` for perfkern and compressed-tensors ``sparse-24-bitmask`` checkpoints, and ``PerfkernCallback``
for ``Trainer``.

Importing this module registers ``PerfkernConfig`` and ``PerfkernHfQuantizer`` with transformers
(``register_quantization_config`` / ``register_quantizer``); ``perfkern.sparsify`` and ``perfkern.from_pretrained``
import it for you when they meet a transformers model.

- ``model.save_pretrained(d)`` of a sparsified model writes ``quantization_config: {quant_method: "perfkern",
  groups: [{layers, rank, alpha, adapter, pera_mode, pattern, backward, refresh_every, train_sparse}]}`` and each
  layer's ``state_dict`` (compressed ``values`` [N, K/2], int16 ``meta``, the backward copy's mask, the adapter),
  plus an empty ``<layer>.weight``: a loader that does not know the method finds a weight of the wrong shape and
  refuses the checkpoint instead of initialising that weight at random (transformers logs "Unknown quantization
  type, got perfkern" and raises on the shape).
- With this module imported, ``AutoModelForCausalLM.from_pretrained(d)`` builds the same model: the layers are
  swapped for ``SparseLoRALinear`` on the meta device before the weights load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

import torch
import transformers
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from perfkern import bitmask
from perfkern.convert import _dense_weight
from perfkern.integrations._trainer import PerfkernCallback
from perfkern.nn import SparseLoRALinear, _reset_adapter, _sync_mirrors

__all__ = ["PerfkernCallback", "PerfkernConfig", "PerfkernHfQuantizer", "attach", "detach", "from_pretrained"]

METHOD = "perfkern"
FORMAT_VERSION = 1
# The structure of a layer, saved per group of layers that share it (the state is in the weights).
SETTINGS = ("rank", "alpha", "adapter", "pera_mode", "pattern", "backward", "refresh_every", "train_sparse")
# from_pretrained's keywords that build the layers of a compressed-tensors checkpoint (the rest go to transformers).
LAYER_KEYWORDS = ("rank", "alpha", "adapter", "pera_mode", "backward", "lazy", "train_sparse", "refresh_every")


def layer_settings(layer: SparseLoRALinear) -> dict:
    return {
        "rank": layer.rank,
        "alpha": layer.alpha,
        "adapter": layer.adapter,
        "pera_mode": layer.pera_mode,
        "pattern": layer.pattern,
        "backward": layer.backward,
        "refresh_every": layer.refresh_every,
        "train_sparse": layer.values.requires_grad,
    }


def _groups(model: nn.Module) -> list[dict]:
    groups: dict[str, dict] = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLoRALinear):
            settings = layer_settings(module)
            group = groups.setdefault(json.dumps(settings, sort_keys=True), {**settings, "layers": []})
            group["layers"].append(name)
    return list(groups.values())


class PerfkernConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a perfkern checkpoint: ``groups`` of layer names with the settings their
    ``SparseLoRALinear`` was built with."""

    def __init__(self, groups: list[dict] | None = None, format_version: int = FORMAT_VERSION, **kwargs) -> None:
        kwargs.pop("quant_method", None)
        if kwargs:
            raise ValueError(f"unknown perfkern quantization_config keys: {sorted(kwargs)}")
        if format_version > FORMAT_VERSION:
            raise ValueError(
                f"this checkpoint is perfkern format {format_version}; this perfkern reads up to {FORMAT_VERSION}: "
                "upgrade perfkern"
            )
        self.quant_method = METHOD
        self.format_version = format_version
        self.groups = [dict(group) for group in groups or []]
        for group in self.groups:
            missing = [key for key in (*SETTINGS, "layers") if key not in group]
            if missing:
                raise ValueError(f"perfkern quantization_config group without {missing}: {group}")

    @property
    def layers(self) -> list[str]:
        return [name for group in self.groups for name in group["layers"]]


class PerfkernHfQuantizer(HfQuantizer):
    """Loads perfkern checkpoints: before the weights load, each recorded layer is swapped for a
    ``SparseLoRALinear`` (on the meta device, as transformers builds models), whose state_dict keys the checkpoint
    holds; after, the layers' Python state follows the loaded buffers. Saves through ``save_pretrained``."""

    requires_calibration = False

    def __init__(self, quantization_config: PerfkernConfig, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        if not self.pre_quantized:
            raise ValueError(
                "the perfkern method loads perfkern checkpoints; to sparsify a dense checkpoint, load it and call "
                "perfkern.sparsify(model, ...)"
            )

    def _process_model_before_weight_loading(self, model, **kwargs):
        names = []
        for group in self.quantization_config.groups:
            settings = {key: group[key] for key in SETTINGS}
            for name in group["layers"]:
                _swap_in(model, name, settings)
                names.append(name)
        if names:
            # The empty weights that guard the checkpoint against other loaders.
            guard = rf"^(?:{'|'.join(re.escape(name) for name in names)})\.weight$"
            model._keys_to_ignore_on_load_unexpected = {*(model._keys_to_ignore_on_load_unexpected or ()), guard}
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        trains = {name: g["train_sparse"] for g in self.quantization_config.groups for name in g["layers"]}
        for name, module in model.named_modules():
            if isinstance(module, SparseLoRALinear):
                _sync_mirrors(module)
                module.values.requires_grad_(trains.get(name, True))
        return model

    def get_state_dict_and_metadata(self, model):
        # The config follows the model as it is now (layers sparsified or merged since it was loaded).
        model.config.quantization_config = self.quantization_config = PerfkernConfig(_groups(model))
        state = model.state_dict()
        for name, module in model.named_modules():
            if isinstance(module, SparseLoRALinear):
                state[f"{name}.weight"] = torch.empty(0, dtype=module.values.dtype)
        return state, {"perfkern_format": str(FORMAT_VERSION)}

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # The sparse weights and adapters train as they are (SLoPe); no PEFT adapter is needed on top.
        return True

    @property
    def is_compileable(self) -> bool:
        return True

    def _dequantize(self, model, dtype=None):
        from perfkern.convert import merge

        return merge(model)


if METHOD not in AUTO_QUANTIZER_MAPPING:  # registered once per process
    register_quantization_config(METHOD)(PerfkernConfig)
    register_quantizer(METHOD)(PerfkernHfQuantizer)


def _swap_in(model: nn.Module, name: str, settings: dict) -> SparseLoRALinear:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    dense = getattr(parent, child, None)
    found = _dense_weight(dense) if dense is not None else None
    if found is None:
        raise ValueError(f"the checkpoint names {name!r} as a perfkern layer, but the model has no linear layer there")
    weight, bias = found
    out_features, in_features = weight.shape
    train_sparse = settings["train_sparse"]
    layer = SparseLoRALinear(
        in_features,
        out_features,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
        **{key: value for key, value in settings.items() if key != "train_sparse"},
    )
    layer.values.requires_grad_(train_sparse)
    layer.dense_origin = type(dense)
    setattr(parent, child, layer)
    # Its state comes from the checkpoint; and the parent's _init_weights may reach for a dense ``.weight`` it no
    # longer has (GPT-2 rescales ``c_proj.weight``), so transformers' initialisation of missing keys skips both.
    layer._is_hf_initialized = True
    parent._is_hf_initialized = True
    return layer


def _is_transformers_model(model: nn.Module) -> bool:
    return isinstance(model, transformers.PreTrainedModel)


def attach(model: nn.Module) -> None:
    """Give a transformers model whose layers ``perfkern.sparsify`` converted the perfkern quantizer and config, so
    that ``save_pretrained`` writes a perfkern checkpoint (``perfkern.sparsify`` calls this)."""
    if not _is_transformers_model(model):
        return
    if not any(isinstance(m, SparseLoRALinear) for m in model.modules()):
        detach(model)
        return
    config = PerfkernConfig(_groups(model))
    model.config.quantization_config = config
    model.hf_quantizer = PerfkernHfQuantizer(config, pre_quantized=True)
    model.quantization_method = METHOD


def detach(model: nn.Module) -> None:
    """Undo ``attach`` once no perfkern layer is left (``perfkern.merge`` calls this)."""
    if not _is_transformers_model(model) or any(isinstance(m, SparseLoRALinear) for m in model.modules()):
        return
    if isinstance(getattr(model, "hf_quantizer", None), PerfkernHfQuantizer):
        model.hf_quantizer.remove_quantization_config(model)


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no config.json: not a transformers checkpoint directory")
    with open(path) as f:
        return json.load(f)


def _checkpoint_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(directory, name) for name in files]
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor model.safetensors.index.json")


def _read_tensors(files: Iterable[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def _check_sparse24_bitmask(directory: str, quantization: dict) -> None:
    sparsity_config = quantization.get("sparsity_config") or {}
    fmt = sparsity_config.get("format")
    if fmt != "sparse-24-bitmask":
        raise ValueError(
            f"{directory}: perfkern reads compressed-tensors checkpoints in the 'sparse-24-bitmask' format, this one "
            f"is {fmt!r}"
        )
    if quantization.get("config_groups"):
        raise ValueError(
            f"{directory}: its weights are quantized as well as 2:4 sparse (config_groups); perfkern reads 2:4 "
            "checkpoints with weights in bf16, fp16 or fp32"
        )


def _convert_compressed_tensors(tensors: dict[str, torch.Tensor], layer_kwargs: dict) -> tuple[dict, list[dict]]:
    """The state_dict of the model with ``SparseLoRALinear`` layers (fresh adapters, lazy unless ``lazy=False``)
    for a compressed-tensors state, and the layer groups of its config."""
    lazy = layer_kwargs.pop("lazy", True)
    prefixes = sorted(key[: -len(".bitmask")] for key in tensors if key.endswith(".bitmask"))
    state = {key: value for key, value in tensors.items() if key.rpartition(".")[0] not in prefixes}
    for prefix in prefixes:
        try:
            values, meta = bitmask.from_bitmask(
                tensors[f"{prefix}.compressed"], tensors[f"{prefix}.bitmask"], tensors[f"{prefix}.shape"]
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"compressed-tensors layer {prefix!r}: {err}") from err
        out_features, in_features = values.shape[0], 2 * values.shape[1]
        bias = tensors.get(f"{prefix}.bias")
        layer = SparseLoRALinear(
            in_features, out_features, bias=bias is not None, lazy=lazy, device="meta", dtype=values.dtype,
            **layer_kwargs,
        )  # fmt: skip
        layer.to_empty(device=values.device)
        with torch.no_grad():
            layer.values.copy_(values)
            layer.meta.copy_(meta)
            layer.updates.zero_()
            layer.adapter_enabled.fill_(layer._adapter_on)
            if bias is not None:
                layer.bias.copy_(bias)
            _reset_adapter(layer)
        layer.choose_backward_mask()
        for key, value in layer.state_dict().items():
            state[f"{prefix}.{key}"] = value
        state[f"{prefix}.weight"] = torch.empty(0, dtype=values.dtype)
        settings = layer_settings(layer)
    groups = [{**settings, "layers": prefixes}] if prefixes else []
    return state, groups


def from_pretrained(directory: str, model_class=None, **kwargs) -> nn.Module:
    """The model of a perfkern checkpoint, or of a compressed-tensors ``sparse-24-bitmask`` one, with its 2:4
    layers as ``SparseLoRALinear``. See ``perfkern.from_pretrained``."""
    directory = os.fspath(directory)
    model_class = transformers.AutoModelForCausalLM if model_class is None else model_class
    layer_kwargs = {key: kwargs.pop(key) for key in LAYER_KEYWORDS if key in kwargs}
    quantization = _read_config(directory).get("quantization_config") or {}
    method = quantization.get("quant_method")
    if method == METHOD:
        if layer_kwargs:
            raise ValueError(
                f"{sorted(layer_kwargs)} build the layers of a compressed-tensors checkpoint; a perfkern checkpoint "
                "records its layers' settings"
            )
        return model_class.from_pretrained(directory, **kwargs)
    if method != "compressed-tensors":
        raise ValueError(
            f"{directory} is neither a perfkern checkpoint nor a compressed-tensors sparse-24-bitmask one "
            f"(quantization_config.quant_method: {method!r}); load dense checkpoints with transformers and call "
            "perfkern.sparsify"
        )
    _check_sparse24_bitmask(directory, quantization)
    state, groups = _convert_compressed_tensors(_read_tensors(_checkpoint_files(directory)), layer_kwargs)
    config = transformers.AutoConfig.from_pretrained(directory)
    config.quantization_config = PerfkernConfig(groups).to_dict()
    if "generation_config" not in kwargs and os.path.isfile(os.path.join(directory, "generation_config.json")):
        kwargs["generation_config"] = transformers.GenerationConfig.from_pretrained(directory)
    if hasattr(model_class, "_model_mapping"):  # an Auto class: the architecture's own class loads a state_dict
        from transformers.models.auto.auto_factory import _get_model_class

        model_class = _get_model_class(config, model_class._model_mapping)
    model = model_class.from_pretrained(None, config=config, state_dict=state, **kwargs)
    model.config.name_or_path = directory
    return model
