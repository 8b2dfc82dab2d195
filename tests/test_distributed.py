"""``SparseLoRALinear`` under data parallelism (DESIGN §4): DDP and FSDP2 (``fully_shard``) on the CPU with the
gloo backend, two processes, against the same training in one process on the whole batch; and a sharded
(DCP) checkpoint of the FSDP2 model reloaded into a fresh FSDP2 model and into a plain one.

DDP runs under ``torch.multiprocessing``; FSDP2 and the checkpoint run under ``torchrun`` (as a subprocess on
``_distributed_worker.py``). Each launch runs once per module and several tests read what its ranks wrote.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import perfkern

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)
if not torch.distributed.is_gloo_available():
    pytest.skip("the gloo backend is not available in this build", allow_module_level=True)

import _distributed_worker as worker  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
LAUNCH_TIMEOUT_S = 120
ATOL, RTOL = 1e-6, 1e-5
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_ranks(out_dir: Path) -> list[dict]:
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _spawn(fn, *args) -> None:
    """``fn(rank, WORLD, *args)`` in WORLD spawned processes; fails (and kills them) past the launch timeout."""
    ctx = mp.start_processes(fn, args=(WORLD, *args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{fn.__name__} did not finish within {LAUNCH_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()


def _torchrun(*args: str) -> None:
    """``torchrun --nproc-per-node WORLD _distributed_worker.py *args`` on a loopback port, in its own session so
    that a timeout kills the launcher and its workers together."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0",
        str(TESTS / "_distributed_worker.py"), *args,
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PERFKERN_BACKEND": "reference"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s:\n{output[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}:\n{output[-6000:]}")


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=RTOL, msg=lambda m, k=key: f"{what} {k}: {m}")


def _assert_probe_close(got: dict, want: dict, what: str) -> None:
    torch.testing.assert_close(got["x"], want["x"])
    _assert_close({k: got[k] for k in ("out", "x_grad")}, {k: want[k] for k in ("out", "x_grad")}, what)
    _assert_close(got["grads"], want["grads"], f"{what}, gradient of")


@pytest.fixture(scope="module")
def single() -> dict:
    """The reference: each optimizer's run in this process on the whole batch."""
    with perfkern.use_backend("reference"):
        out = {}
        for opt_name in worker.OPTIMIZERS:
            model = worker.build_model()
            out[opt_name] = worker.train(model, worker.make_optimizer(opt_name, model))
            out[opt_name]["probe"] = worker.probe(model)
        return out


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    _spawn(worker.ddp_worker, _free_port(), str(out_dir))
    return _load_ranks(out_dir)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[list[dict], Path]:
    out_dir, ckpt_dir = tmp_path_factory.mktemp("fsdp"), tmp_path_factory.mktemp("fsdp_ckpt")
    _torchrun("fsdp", str(out_dir), str(ckpt_dir))
    return _load_ranks(out_dir), ckpt_dir


# DDP.


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_ddp_matches_single_process(ddp_ranks, single, opt_name):
    for rank, result in enumerate(ddp_ranks):
        run = result[opt_name]
        _assert_close(run["grads0"], single[opt_name]["grads0"], f"DDP rank {rank}, first-step gradient of")
        _assert_close(run["params"], single[opt_name]["params"], f"DDP rank {rank}, after {worker.STEPS} steps,")


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_ddp_input_gradient_matches_single_process(ddp_ranks, single, opt_name):
    """After training, output and input gradient on a fixed batch: dx passes through both layers' double-pruned
    backward copies, so a copy that lagged the weight or a mask chosen at another step would show here."""
    for rank, result in enumerate(ddp_ranks):
        _assert_probe_close(result[opt_name]["probe"], single[opt_name]["probe"], f"DDP rank {rank} probe")


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_ddp_buffers_and_mask_schedule(ddp_ranks, single, opt_name):
    """Buffers identical on every rank and equal to one process's, ``updates`` (which sets when the backward
    copy's mask is re-chosen) included."""
    for rank, result in enumerate(ddp_ranks):
        run = result[opt_name]
        assert run["updates"] == single[opt_name]["updates"], f"rank {rank}: updates after each forward"
        _assert_close(run["buffers"], single[opt_name]["buffers"], f"DDP rank {rank}, buffer")


def test_ddp_wraps_without_options(ddp_ranks):
    """DDP broadcasts every buffer, and gloo and NCCL have no int16 type: the 2:4 metadata is stored as uint8."""
    for rank, result in enumerate(ddp_ranks):
        assert result["default_ddp_error"] is None, f"rank {rank}: {result['default_ddp_error']}"


# FSDP2.


def test_fsdp2_shards_parameters(fsdp_run):
    ranks, _ = fsdp_run
    assert ranks[0]["adamw"]["value_types"] == ["DTensor"]


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_fsdp2_matches_single_process(fsdp_run, single, opt_name):
    ranks, _ = fsdp_run
    for rank, result in enumerate(ranks):
        run = result[opt_name]
        _assert_close(run["grads0"], single[opt_name]["grads0"], f"FSDP2 rank {rank}, first-step gradient of")
        _assert_close(run["params"], single[opt_name]["params"], f"FSDP2 rank {rank}, after {worker.STEPS} steps,")


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_fsdp2_input_gradient_matches_single_process(fsdp_run, single, opt_name):
    ranks, _ = fsdp_run
    for rank, result in enumerate(ranks):
        _assert_probe_close(result[opt_name]["probe"], single[opt_name]["probe"], f"FSDP2 rank {rank} probe")


@pytest.mark.parametrize("opt_name", worker.OPTIMIZERS)
def test_fsdp2_buffers_and_mask_schedule(fsdp_run, single, opt_name):
    """``updates`` counts the weight's gradients as in one process, so the backward copy's mask is re-chosen
    at the same steps. FSDP2 computes with parameters of its own (sharded between steps, gathered for forward
    and backward), which carry no hooks registered on the module's original parameters."""
    ranks, _ = fsdp_run
    for rank, result in enumerate(ranks):
        run = result[opt_name]
        assert run["updates"] == single[opt_name]["updates"], f"rank {rank}: updates after each forward"
        _assert_close(run["buffers"], single[opt_name]["buffers"], f"FSDP2 rank {rank}, buffer")


def test_fsdp2_meta_device_init_matches_single_process(fsdp_run, single):
    """Built on the meta device, sharded, ``to_empty``, loaded from a full state dict: trains as one process does."""
    ranks, _ = fsdp_run
    want = single[worker.CHECKPOINTED]
    for rank, result in enumerate(ranks):
        run = result["meta_init"]
        assert run["updates"] == want["updates"], f"rank {rank}: updates after each forward"
        _assert_close(run["grads0"], want["grads0"], f"meta-initialised FSDP2 rank {rank}, first-step gradient of")
        _assert_close(run["params"], want["params"], f"meta-initialised FSDP2 rank {rank}, after {worker.STEPS} steps,")
        _assert_close(run["buffers"], want["buffers"], f"meta-initialised FSDP2 rank {rank}, buffer")


# The sharded checkpoint.


def test_checkpoint_reloads_into_fsdp2(fsdp_run):
    ranks, _ = fsdp_run
    for rank, result in enumerate(ranks):
        want, got = result[worker.CHECKPOINTED]["probe"], result["reloaded_probe"]
        _assert_probe_close(got, want, f"rank {rank}, reloaded FSDP2 model")


def test_checkpoint_resumes_training(fsdp_run):
    """Model and optimizer state from the checkpoint continue training exactly as the saved model does."""
    ranks, _ = fsdp_run
    for rank, result in enumerate(ranks):
        want, got = result["resumed"], result["reloaded_resumed"]
        assert got["updates"] == want["updates"], f"rank {rank}: updates after each forward"
        _assert_close(got["params"], want["params"], f"rank {rank}, resumed")
        _assert_close(got["buffers"], want["buffers"], f"rank {rank}, resumed buffer")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_checkpoint_reloads_without_distributed(fsdp_run):
    """The sharded checkpoint loads into a plain model in a process without a process group."""
    ranks, ckpt_dir = fsdp_run
    with perfkern.use_backend("reference"):
        model = worker.build_model(seed=1)
        state = {"model": model.state_dict()}
        dcp.load(state, checkpoint_id=ckpt_dir, no_dist=True)
        model.load_state_dict(state["model"])
        got = worker.probe(model)
    _assert_probe_close(got, ranks[0][worker.CHECKPOINTED]["probe"], "plain model from the sharded checkpoint")
