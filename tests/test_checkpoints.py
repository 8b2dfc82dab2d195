"""Checkpoints in and out (DESIGN §7): the ``"perfkern"`` transformers quantization method (a sparsified model
saves and loads as itself, plain transformers refuses it), ``perfkern.from_pretrained`` of compressed-tensors
``sparse-24-bitmask`` checkpoints (a golden one the real library wrote, and sharded ones in every dtype), and the
bitmask codec."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tolerances import assert_bits_equal, assert_close
from torch import nn

import perfkern
from perfkern import bitmask, sparsity
from perfkern.reference import sparse24 as ref

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")
glue = pytest.importorskip("perfkern.integrations.transformers")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "compressed_tensors_llama"


@pytest.fixture(autouse=True)
def _reference_backend():
    # What is tested here is independent of the backend; the reference keeps whole models fast on a CPU (the
    # kernels are compared with it in their own tests).
    with perfkern.use_backend("reference"):
        yield


def _llama(dtype=torch.float32, tie=False):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=96, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    # Built in ``dtype`` as from_pretrained builds it (model.to(dtype) would also cast the rotary buffer).
    return transformers.LlamaForCausalLM._from_config(config, dtype=dtype).eval()


def _gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=96)).eval()


def _ids():
    return torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(1))


def _trained(model, adapter="lora"):
    """A sparsified model whose state differs from a fresh one everywhere a bug could hide: adapters on and
    non-zero, a layer frozen, one layer left lazy, step counts advanced."""
    perfkern.sparsify(model, rank=4, alpha=8, adapter=adapter, lazy=False, refresh_every=3)
    layers = [m for m in model.modules() if isinstance(m, perfkern.SparseLoRALinear)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.lora_b.normal_(std=0.05)
            if layer.lora_h is not None:
                layer.lora_h.normal_()
            layer.updates.fill_(i)
    layers[0].enable_adapter(False)
    layers[1].values.requires_grad_(False)
    return layers


@pytest.mark.parametrize(
    "build, adapter, dtype",
    [
        pytest.param(_llama, "lora", torch.float32, id="llama-lora-fp32"),
        pytest.param(_llama, "pera", torch.bfloat16, id="llama-pera-bf16"),
        pytest.param(_gpt2, "pera", torch.float32, id="gpt2-conv1d-pera-fp32"),
    ],
)
def test_save_pretrained_round_trip_is_the_same_model(tmp_path, build, adapter, dtype):
    model = build().to(dtype) if build is _gpt2 else build(dtype)
    layers = _trained(model, adapter)
    ids = _ids()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "perfkern" and config["format_version"] == 1
    names = [n for n, m in model.named_modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert sorted(n for g in config["groups"] for n in g["layers"]) == sorted(names)
    frozen = next(g for g in config["groups"] if names[1] in g["layers"])
    assert frozen["train_sparse"] is False and frozen["rank"] == 4 and frozen["alpha"] == 8.0
    assert frozen["adapter"] == adapter and frozen["backward"] == "double" and frozen["refresh_every"] == 3

    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    loaded_layers = [m for m in loaded.modules() if isinstance(m, perfkern.SparseLoRALinear)]
    assert [n for n, m in loaded.named_modules() if isinstance(m, perfkern.SparseLoRALinear)] == names
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert_bits_equal(got[key], want[key])
    for old, new in zip(layers, loaded_layers, strict=True):
        assert new.adapter_active == old.adapter_active and new._updates == int(old.updates)
        assert new.values.requires_grad == old.values.requires_grad
        assert layer_repr(new) == layer_repr(old)
    # The loaded model saves again, and merges back to its original classes.
    assert isinstance(loaded.hf_quantizer, glue.PerfkernHfQuantizer)
    perfkern.merge(loaded)
    origin = type(build().transformer.h[0].attn.c_attn) if build is _gpt2 else nn.Linear
    assert all(type(m) is not perfkern.SparseLoRALinear for m in loaded.modules())
    assert any(type(m) is origin for m in loaded.modules())
    assert getattr(loaded, "hf_quantizer", None) is None and not hasattr(loaded.config, "quantization_config")


def layer_repr(layer):
    return layer.extra_repr().rsplit(", backend=", 1)[0]


def test_plain_transformers_refuses_a_perfkern_checkpoint(tmp_path):
    model = _llama()
    perfkern.sparsify(model, rank=4)
    model.save_pretrained(tmp_path)
    script = (
        "import sys, transformers\n"
        f"transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "print('LOADED', 'perfkern' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "LOADED" not in output, output[-3000:]
    assert "Unknown quantization type, got perfkern" in output
    assert "ignore_mismatched_sizes" in output and "MISMATCH" in output


def test_import_perfkern_imports_neither_transformers_nor_peft():
    script = "import sys, perfkern; print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_perfkern_from_pretrained_of_a_perfkern_checkpoint(tmp_path):
    model = _llama()
    _trained(model)
    model.save_pretrained(tmp_path)
    loaded = perfkern.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).logits, model(_ids()).logits)
    with pytest.raises(ValueError, match=r"\['rank'\] build the layers of a compressed-tensors checkpoint"):
        perfkern.from_pretrained(tmp_path, rank=8)


def test_from_pretrained_names_what_it_cannot_read(tmp_path):
    _llama().save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="neither a perfkern checkpoint nor a compressed-tensors .*None"):
        perfkern.from_pretrained(tmp_path / "dense")
    other = tmp_path / "other"
    _llama().save_pretrained(other)
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "sparsity_config": {"format": "dense"}}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'sparse-24-bitmask' format, this one is 'dense'"):
        perfkern.from_pretrained(other)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        perfkern.from_pretrained(tmp_path)


# compressed-tensors' sparse-24-bitmask.


def _golden():
    return safetensors.load_file(str(GOLDEN / "expected.safetensors"))


def test_golden_compressed_tensors_checkpoint_loads_exactly():
    """The checkpoint compressed-tensors 0.14 wrote (tests/data/make_compressed_tensors_golden.py): every layer's
    dense weight as compressed-tensors decompresses it (-0.0 read as +0.0), canonical metadata, and the logits of
    transformers 4.57 + compressed-tensors."""
    expected = _golden()
    model = perfkern.from_pretrained(GOLDEN)
    assert model.dtype == torch.bfloat16
    layers = {n: m for n, m in model.named_modules() if isinstance(m, perfkern.SparseLoRALinear)}
    assert len(layers) == 7 and not any(type(m) is nn.Linear for n, m in model.named_modules() if n != "lm_head")
    for name, layer in layers.items():
        dense = ref.decompress_2to4(layer.values.detach(), layer.meta)
        assert_bits_equal(dense, expected[f"{name}.weight"] + 0.0)
        assert torch.equal(layer.meta, ref.compress_2to4(dense)[1])
        assert not layer.adapter_active and torch.equal(layer.lora_b, torch.zeros_like(layer.lora_b))
        ws_t = dense.t().contiguous()
        assert torch.equal(layer.bwd_meta, ref.compress_2to4(ws_t)[1])
    q = layers["model.layers.0.self_attn.q_proj"]
    dense_q = ref.decompress_2to4(q.values.detach(), q.meta)
    assert dense_q[0, :8].tolist() == [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # under-full groups
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits.float()
    assert torch.equal(logits, expected["loaded_logits"])


def test_golden_checkpoint_trains_and_saves_as_perfkern(tmp_path):
    model = perfkern.from_pretrained(GOLDEN, rank=4, adapter="pera", lazy=False, dtype=torch.float32)
    layer = model.model.layers[0].mlp.up_proj
    assert layer.adapter == "pera" and layer.rank == 4 and layer.adapter_active and layer.values.dtype == torch.float32
    ids = _golden()["input_ids"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert int(layer.updates) == 2
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["quant_method"] == "perfkern"
    again = perfkern.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def _write_compressed_tensors(model: nn.Module, directory: Path, shards: int) -> None:
    """A compressed-tensors sparse-24-bitmask checkpoint of ``model`` (its linear layers pruned 2:4 in place),
    written with perfkern's encoder, in ``shards`` files with an index as transformers shards."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            with torch.no_grad():
                module.weight.mul_(sparsity.mask_2to4(module.weight.float()))
                module.weight[0, :4] = torch.tensor([0.0, 0.0, 0.3, 0.0])  # an under-full group
            values, meta = sparsity.compress_2to4(module.weight.detach())
            for key, value in bitmask.to_bitmask(values, meta).items():
                state[f"{name}.{key}"] = value
        elif len(list(module.children())) == 0:
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value
    state.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    directory.mkdir()
    model.config.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "version": "0.14.0",
        "sparsity_config": {"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": ["Linear"],
                            "ignore": ["lm_head"]},
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        safetensors.save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_sharded_compressed_tensors_checkpoints_in_every_dtype(tmp_path, dtype):
    model = _llama(dtype, tie=True)
    _write_compressed_tensors(model, tmp_path / "ct", shards=3)
    assert len(list((tmp_path / "ct").glob("*.safetensors"))) == 3
    loaded = perfkern.from_pretrained(tmp_path / "ct")
    assert loaded.dtype == dtype
    for name, module in loaded.named_modules():
        if isinstance(module, perfkern.SparseLoRALinear):
            dense = model.get_submodule(name).weight
            assert_bits_equal(ref.decompress_2to4(module.values.detach(), module.meta), dense + 0.0)
    ids = _ids()
    with torch.no_grad():
        assert_close(loaded(ids).logits.float(), model(ids).logits.float(), dtype)
    as_fp32 = perfkern.from_pretrained(tmp_path / "ct", dtype=torch.float32, rank=2, backward="exact")
    assert as_fp32.dtype == torch.float32 and as_fp32.model.layers[0].mlp.down_proj.backward == "exact"


def test_bitmask_codec_round_trips_and_reads_under_full_groups():
    torch.manual_seed(0)
    w = torch.randn(8, 48)
    w = w * ref.mask_2to4(w)
    w[0, :8] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -0.0, 2.0, 0.0])
    values, meta = ref.compress_2to4(w)
    triple = bitmask.to_bitmask(values, meta)
    assert triple["bitmask"].shape == (8, 6) and triple["bitmask"].dtype == torch.uint8
    assert triple["shape"].tolist() == [[8], [48]] and triple["compressed"] is not None
    # Bit j of byte b is column 8b + j: the canonical pair (0, 1) of group 0 sets bits 0 and 1.
    assert int(triple["bitmask"][0, 0]) & 0b11 == 0b11
    assert_bits_equal(bitmask.from_bitmask(**triple)[0], values)
    assert torch.equal(bitmask.from_bitmask(**triple)[1], meta)
    # Bits that name other zero positions, fewer than two bits in a group, and a flat value list all read the same.
    bits = (ref.decompress_2to4(torch.ones_like(values), meta) != 0) & (w != 0)
    bits[0, 2:4] = True  # group 0: two zeros, at positions the canonical format does not use
    packed = torch.zeros(8, 6, dtype=torch.uint8)
    for j in range(8):
        packed |= bits.view(8, 6, 8)[..., j].to(torch.uint8) << j
    assert_bits_equal(bitmask.from_bitmask(w[bits], packed, (8, 48))[0], values)
    with pytest.raises(ValueError, match="row 0, columns 0..3 have 3 set bits"):
        bad = packed.clone()
        bad[0, 0] = (bad[0, 0] & 0xF0) | 0b0111
        bitmask.from_bitmask(torch.zeros(int(bits.sum()) + 3), bad, (8, 48))
    with pytest.raises(ValueError, match="sets .* bits but compressed holds"):
        bitmask.from_bitmask(w[bits][1:], packed, (8, 48))
    with pytest.raises(ValueError, match="multiple of 16"):
        bitmask.from_bitmask(values, triple["bitmask"], (8, 40))


def test_checkpoint_files_are_small():
    sizes = {p.name: p.stat().st_size for p in GOLDEN.iterdir()}
    assert set(sizes) == {"config.json", "generation_config.json", "model.safetensors", "expected.safetensors"}
    assert sum(sizes.values()) < 48 * 1024, sizes
    assert os.path.getsize(GOLDEN / "model.safetensors") < 16 * 1024
