"""The CUDA core's warp-level data movement, checked on the host: programs under tests/csrc/ include the kernels'
own layout headers, emulate the tensor-core instructions as the PTX ISA describes them, and compare with a dense
product. They need nvcc (not a GPU); without it they are skipped."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("program", ["wgmma_layout_check"])
def test_layout_emulation(program, tmp_path):
    exe = tmp_path / program
    subprocess.run(
        [NVCC, "-std=c++17", "-O2", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", "-o", str(exe),
         str(ROOT / "tests" / "csrc" / f"{program}.cu")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) > 0
