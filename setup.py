"""Build script of perfkern.

The Python packages are plain setuptools: ``perfkern`` from ``perfkern/`` and ``perfkern.kernels``
from the top-level ``kernels/`` directory. The native module ``perfkern._C`` (the torch-free core: CPU
kernels, and CUDA kernels where nvcc is found) is built by CMake (see CMakeLists.txt), driven from a
``build_ext`` subclass; so is ``perfkern._C_emu`` (the emulated core) when asked for. Without CMake or a C++
compiler perfkern installs as pure Python.

Environment:
  PERFKERN_BUILD_NATIVE auto (default): build perfkern._C when CMake >= 3.24 and a C++ compiler are
                        found, else install pure Python; 1: build it, failing when they are missing;
                        0: pure Python.
  PERFKERN_BUILD_CUDA   auto (default): compile the CUDA kernels into perfkern._C when nvcc is found
                        (PATH, CUDA_HOME, CUDA_PATH); 1: require nvcc; 0: a CPU-only core.
  PERFKERN_CUDA_ARCHS   CUDA architectures, default "80;90a".
  PERFKERN_BUILD_EMULATED
                        1: also build perfkern._C_emu, the CUDA kernels compiled for the CPU and executed by the
                        emulator (PERFKERN_EMULATE=1 runs the cuda backend's tests on it); 0 (default): not.
  MAX_JOBS              parallel compile jobs (default: the CPU count).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CMAKE_MIN_VERSION = (3, 24)
DEFAULT_CUDA_ARCHS = "80;90a"


def _log(msg):
    print(f"perfkern setup: {msg}", file=sys.stderr, flush=True)


def _build_mode(var):
    raw = os.environ.get(var, "auto").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in ("1", "on", "true", "yes"):
        return "1"
    if raw in ("0", "off", "false", "no"):
        return "0"
    raise SystemExit(f"{var} must be auto, 0 or 1, got {raw!r}")


def _find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            candidate = Path(home) / "bin" / "nvcc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def _cmake_version(cmake):
    try:
        out = subprocess.run([cmake, "--version"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _find_cmake():
    cmake = shutil.which("cmake")
    if not cmake:
        return None, "cmake was not found on PATH"
    version = _cmake_version(cmake)
    if version is None or version < CMAKE_MIN_VERSION:
        want = ".".join(map(str, CMAKE_MIN_VERSION))
        return None, f"{cmake} is not CMake >= {want} (found {version})"
    return cmake, None


def _find_cxx():
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _build_emulated():
    raw = os.environ.get("PERFKERN_BUILD_EMULATED", "0").strip().lower()
    if raw not in ("", "0", "1", "on", "off", "true", "false", "yes", "no"):
        raise SystemExit(f"PERFKERN_BUILD_EMULATED must be 0 or 1, got {raw!r}")
    return raw in ("1", "on", "true", "yes")


def _native_toolchain():
    """(nvcc or None, cmake) when perfkern._C is to be built, else None."""
    native = _build_mode("PERFKERN_BUILD_NATIVE")
    if _build_emulated() and native == "0":
        raise SystemExit("PERFKERN_BUILD_EMULATED=1 needs the native build: unset PERFKERN_BUILD_NATIVE=0")
    if native == "0":
        _log("PERFKERN_BUILD_NATIVE=0: installing pure Python (no perfkern._C)")
        return None
    cmake, cmake_problem = _find_cmake()
    problems = [cmake_problem] if cmake is None else []
    if _find_cxx() is None:
        problems.append("no C++ compiler was found (CXX, c++, g++, clang++)")
    if problems:
        if native == "1" or _build_emulated():
            raise SystemExit("PERFKERN_BUILD_NATIVE=1 but perfkern._C cannot be built: " + "; ".join(problems))
        _log("not building perfkern._C (" + "; ".join(problems) + "); installing pure Python")
        return None
    cuda = _build_mode("PERFKERN_BUILD_CUDA")
    nvcc = None if cuda == "0" else _find_nvcc()
    if nvcc is None:
        if cuda == "1":
            raise SystemExit("PERFKERN_BUILD_CUDA=1 but nvcc was not found on PATH or under CUDA_HOME / CUDA_PATH")
        why = "PERFKERN_BUILD_CUDA=0" if cuda == "0" else "nvcc was not found on PATH or under CUDA_HOME / CUDA_PATH"
        _log(f"building perfkern._C without CUDA kernels ({why}): the CPU kernels only")
    return nvcc, cmake


class CMakeExtension(Extension):
    def __init__(self, name, nvcc, cmake, emulated=False):
        super().__init__(name, sources=[])
        self.nvcc = nvcc
        self.cmake = cmake
        self.emulated = emulated


class CMakeBuild(build_ext):
    """Configures and builds the CMake target ``_C`` (or ``_C_emu``, in a build tree of its own) and puts it where
    setuptools expects it."""

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)

        module = ext.name.rpartition(".")[2]
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ("perfkern-cmake-emu" if ext.emulated else "perfkern-cmake")
        stage_dir = build_dir / "python"
        build_dir.mkdir(parents=True, exist_ok=True)

        archs = os.environ.get("PERFKERN_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).strip() or DEFAULT_CUDA_ARCHS
        jobs = os.environ.get("MAX_JOBS") or str(self.parallel or os.cpu_count() or 1)
        config = "Debug" if self.debug else "Release"

        args = [
            ext.cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-DCMAKE_BUILD_TYPE={config}",
            *(["-DPERFKERN_EMULATE=ON", "-DPERFKERN_CUDA=OFF"] if ext.emulated else []),
            *([f"-DCMAKE_CUDA_COMPILER={ext.nvcc}", "-DPERFKERN_CUDA=ON"] if ext.nvcc else ["-DPERFKERN_CUDA=OFF"]),
            "-DPERFKERN_BUILD_PYTHON=ON",
            "-DPERFKERN_INSTALL=OFF",
            f"-DPERFKERN_CUDA_ARCHS={archs}",
            f"-DPERFKERN_PYTHON_OUTPUT_DIR={stage_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        if not (build_dir / "CMakeCache.txt").exists() and shutil.which("ninja"):
            args += ["-G", "Ninja"]

        if ext.emulated:
            what = "the emulated device (the CUDA kernels executed on the CPU)"
        else:
            what = f"CUDA archs {archs}" if ext.nvcc else "the CPU only (no CUDA)"
        _log(f"building {ext.name} for {what} with {jobs} jobs in {build_dir}")
        self._run(args)
        self._run([ext.cmake, "--build", str(build_dir), "--target", module, "--parallel", str(jobs)])

        built = sorted(p for p in stage_dir.glob(f"{module}.*") if p.suffix in (".so", ".pyd"))
        if len(built) != 1:
            raise RuntimeError(f"expected one built {module} module in {stage_dir}, found {built}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], target)
        os.chmod(target, 0o755)
        _log(f"{ext.name} -> {target}")

    @staticmethod
    def _run(cmd):
        _log("+ " + " ".join(cmd))
        subprocess.run(cmd, check=True)


def _packages():
    packages = ["perfkern"] + [f"perfkern.{p}" for p in find_packages("perfkern")]
    packages += ["perfkern.kernels"] + [f"perfkern.kernels.{p}" for p in find_packages("kernels")]
    return packages


def _extensions():
    toolchain = _native_toolchain()
    if toolchain is None:
        return []
    extensions = [CMakeExtension("perfkern._C", *toolchain)]
    if _build_emulated():
        extensions.append(CMakeExtension("perfkern._C_emu", None, toolchain[1], emulated=True))
    return extensions


setup(
    packages=_packages(),
    package_dir={"perfkern": "perfkern", "perfkern.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
