"""Writes ``tests/data/compressed_tensors_llama/``: a tiny random Llama saved by the real compressed-tensors in its
``sparse-24-bitmask`` format, the way llm-compressor saved 2:4 models, for ``tests/test_checkpoints.py``.

Not run by the test suite or CI. It needs a throwaway virtual environment with the last releases that still write
the format (transformers 5 and compressed-tensors after 0.14 dropped it), made from a plain venv (a venv with the
system's site-packages would see transformers 5):

    python -m venv /tmp/ct-venv
    /tmp/ct-venv/bin/pip install torch==2.13.0
    /tmp/ct-venv/bin/pip install "compressed-tensors<=0.14" "transformers==4.57.*" accelerate psutil
    /tmp/ct-venv/bin/python tests/data/make_compressed_tensors_golden.py

Besides the checkpoint it writes ``expected.safetensors``: token ids, the logits of the pruned dense model (fp32),
those of the checkpoint as transformers 4.57 + compressed-tensors load it, and each sparse layer's dense weight as
compressed-tensors decompresses it. Some groups are under-full on purpose (one or no non-zero value), so the
bitmask names zero-valued positions that compressed-tensors chose.
"""

import json
import os
import sys

import compressed_tensors
import torch
import transformers
from compressed_tensors import ModelCompressor
from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor
from compressed_tensors.config import SparsityCompressionConfig
from safetensors.torch import load_file, save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compressed_tensors_llama")


def main() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=48, max_position_embeddings=32, tie_word_embeddings=True, torch_dtype="bfloat16",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    with torch.no_grad():
        for module in linears.values():
            w = module.weight
            groups = w.view(w.shape[0], -1, 4)
            keep = groups.abs().topk(2, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
            groups.mul_(mask)
        q = linears["model.layers.0.self_attn.q_proj"].weight
        q[0, 0:4] = torch.tensor([0.0, 0.5, 0.0, 0.0])  # one non-zero
        q[0, 4:8] = 0.0  # none
        q[1, 0:4] = torch.tensor([0.0, 0.0, 0.0, -0.25])  # one non-zero, last position
        q[2, 8:12] = torch.tensor([-0.0, 0.0, 0.75, -0.0])  # negative zeros around one value

    ids = torch.randint(0, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense_logits = model(ids).logits.float()

    sparsity_config = SparsityCompressionConfig.load_from_registry(
        "sparse-24-bitmask", targets=["Linear"], ignore=["lm_head"], sparsity_structure="2:4"
    )
    compressor = ModelCompressor(sparsity_config=sparsity_config)
    state = compressor.compress(model)
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    model.save_pretrained(OUT, state_dict=state, safe_serialization=True)
    compressor.update_config(OUT)
    with open(os.path.join(OUT, "config.json")) as f:
        assert json.load(f)["quantization_config"]["sparsity_config"]["format"] == "sparse-24-bitmask"

    loaded = transformers.AutoModelForCausalLM.from_pretrained(OUT, torch_dtype=torch.bfloat16).eval()
    with torch.no_grad():
        loaded_logits = loaded(ids).logits.float()
    files = load_file(os.path.join(OUT, "model.safetensors"))
    expected = {"input_ids": ids, "dense_logits": dense_logits, "loaded_logits": loaded_logits}
    for name in linears:
        data = {k: files[f"{name}.{k}"] for k in ("shape", "compressed", "bitmask")}
        expected[f"{name}.weight"] = Sparse24BitMaskTensor.from_compressed_data(**data).decompress()
        assert torch.equal(expected[f"{name}.weight"], linears[name].weight), name
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
    print(f"compressed-tensors {compressed_tensors.__version__}, transformers {transformers.__version__}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")  # fmt: skip
    print("logits: pruned dense vs loaded, max |diff|", (dense_logits - loaded_logits).abs().max().item())
    for name in sorted(os.listdir(OUT)):
        print(f"  {name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
