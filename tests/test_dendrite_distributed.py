"""The dendrite cycle under DDP (DESIGN §3.5, §4): two ranks under ``torchrun`` (gloo, CPU) against one process
on the whole batch, on ``SparseLoRALinear`` layers and on PEFT LoRA layers, with correlation (Pearson and
covariance, frozen and trainable dendrites, cascade, rollback) and gradient-descent candidates.

Every rank must hold the same statistics and switch at the same step; the statistics are those of the global
batch (each rank's batch statistics merged with Chan's formulas, the errors scaled as DDP's averaged gradient
implies), so training matches one process up to fp32 rounding.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import perfkern

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available in this build", allow_module_level=True)
pytest.importorskip("peft")

import _dendrite_distributed_worker as worker  # noqa: E402

WORLD = 2
LAUNCH_TIMEOUT_S = 180
ATOL, RTOL = 1e-5, 1e-4
TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dendrite_ddp")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0",
        str(TESTS / "_dendrite_distributed_worker.py"), str(out_dir),
    ]  # fmt: skip
    root = str(TESTS.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PERFKERN_BACKEND": "reference"}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s:\n{output[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}:\n{output[-6000:]}")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict:
    torch.set_num_threads(1)
    with perfkern.use_backend("reference"):
        return {name: worker.run(name) for name in worker.SCENARIOS}


@pytest.mark.parametrize("scenario", list(worker.SCENARIOS))
def test_every_rank_switches_with_one_process(ranks, single, scenario):
    want = single[scenario]
    assert sum(e.startswith("installed") for e in want["events"]) == 2, want["events"]
    for rank, result in enumerate(ranks):
        got = result[scenario]
        assert got["phases"] == want["phases"], f"rank {rank}: phase at each step"
        assert got["events"] == want["events"], f"rank {rank}"


@pytest.mark.parametrize("scenario", list(worker.SCENARIOS))
def test_ranks_hold_identical_state(ranks, scenario):
    first = ranks[0][scenario]
    for rank, result in enumerate(ranks[1:], start=1):
        got = result[scenario]
        assert got["state"].keys() == first["state"].keys()
        for key, value in first["state"].items():
            assert torch.equal(got["state"][key], value), f"rank {rank}: {key}"
        for step, (g, w) in enumerate(zip(got["running"], first["running"], strict=True)):
            for layer in w:
                for name, value in w[layer].items():
                    assert torch.equal(g[layer][name], value), f"rank {rank}, step {step}, layer {layer}: {name}"


@pytest.mark.parametrize("scenario", ["sparse-correlation", "peft-cc-trainable-cascade"])
def test_statistics_are_the_global_batch(ranks, single, scenario):
    """The running statistics after every correlation step equal one process's on the whole batch (the
    covariance scenario checks that the errors are scaled as DDP's averaged gradient implies)."""
    want = single[scenario]["running"]
    assert len(want) == 2 * 2 * worker.STEPS_PER_EPOCH
    for rank, result in enumerate(ranks):
        got = result[scenario]["running"]
        assert len(got) == len(want)
        for step, (g, w) in enumerate(zip(got, want, strict=True)):
            for layer in w:
                for name, value in w[layer].items():
                    where = f"rank {rank}, step {step}, layer {layer}, {name}"
                    torch.testing.assert_close(g[layer][name], value, atol=ATOL, rtol=RTOL, msg=where)


@pytest.mark.parametrize("scenario", list(worker.SCENARIOS))
def test_training_matches_one_process(ranks, single, scenario):
    want = single[scenario]["state"]
    for rank, result in enumerate(ranks):
        got = result[scenario]["state"]
        assert got.keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, atol=ATOL, rtol=RTOL, msg=f"rank {rank}: {key}")
