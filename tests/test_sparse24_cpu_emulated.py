"""The AVX2 and AVX-512 kernels' logic on any x86 CPU: tests/csrc/cpu_isa_emulated.cpp and the core's CPU sources are
compiled against SIMDe's portable implementations of the intrinsics (``simde-py``, a test dependency), and every
ISA path is compared with the scalar kernels on random problems. The real instructions are tested in
tests/test_sparse24_cpu.py wherever the CPU has them; this is how the AVX-512 paths are checked on one that does
not (the CI machines have AVX2 only). It proves the kernels' index and lane arithmetic, not the compiler's
code generation for the real instructions."""

import pathlib
import platform
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CXX = shutil.which("g++") or shutil.which("clang++")
SOURCES = ["common/common.cpp", "cpu/pool.cpp", "cpu/mm.cpp", "cpu/kernels_scalar.cpp", "cpu/kernels_avx2.cpp",
           "cpu/kernels_avx512.cpp", "cpu/kernels_avx512_bf16.cpp"]  # fmt: skip


def _simde_include() -> str | None:
    """The folder that holds ``simde/x86/avx512.h``. simde-py's ``get_include()`` names it in some releases and
    the ``simde`` folder itself in others (0.1.0), so both it and its parent are tried."""
    try:
        import simde_py
    except ImportError:
        return None
    here = pathlib.Path(simde_py.get_include())
    for root in (here, here.parent):
        if (root / "simde" / "x86" / "avx512.h").is_file():
            return str(root)
    return None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the kernels are x86 SIMD code")
@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.skipif(_simde_include() is None, reason="no simde/x86/avx512.h from simde-py (pip install -U simde-py)")
def test_every_isa_path_matches_scalar_under_simde(tmp_path):
    (tmp_path / "perfkern_build_config.h").write_text(
        '#define PERFKERN_BUILD_CUDA_ARCHS ""\n#define PERFKERN_BUILD_FLAVOR "cpu"\n'
    )
    exe = tmp_path / "cpu_isa_emulated"
    subprocess.run(
        [CXX, "-std=c++17", "-O1", "-pthread", "-DPERFKERN_CPU_SIMDE", "-DPERFKERN_CPU_X86", "-w",
         f"-I{_simde_include()}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{tmp_path}",
         str(ROOT / "tests" / "csrc" / "cpu_isa_emulated.cpp"), *(str(ROOT / "csrc" / s) for s in SOURCES),
         "-o", str(exe)],
        check=True, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) == 3 * 3 * 11 * 4
