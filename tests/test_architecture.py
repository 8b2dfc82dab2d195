"""The house rules of DESIGN §1 and STYLE habit 13, checked on the source so that no change undoes them quietly:
imports run one way (modules → functional → ops → dispatch → backends), the import graph has no circle, the Triton
kernels import nothing from ``perfkern``, and no file in ``perfkern/`` grows past what a reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 650

# Layer of every module, lowest first; a module may import its own layer or lower ones, never a higher one.
# The longest matching prefix names a module's layer. A new module must be placed here.
LAYERS: dict[str, int] = {
    "perfkern.kernels": 0,  # Triton kernels: a leaf, importing nothing from perfkern
    "perfkern.reference": 0,  # the pure-PyTorch truth
    "perfkern._C": 0,  # the compiled core
    "perfkern._ext": 0,  # loads the compiled core
    "perfkern._errors": 0,
    "perfkern._autotune": 1,  # measures; knows nothing of ops
    "perfkern._dispatch": 2,  # decides which backend runs
    "perfkern.ops": 3,  # custom ops: schema, fake, autograd, per-backend kernels
    "perfkern.functional": 4,  # public functions
    "perfkern.sparsity": 4,  # the 2:4 format and masks
    "perfkern.nn": 5,  # modules
    "perfkern.convert": 5,  # model conversion (sparsify, merge)
    "perfkern.dendrites": 5,
    "perfkern.integrations": 5,  # the empty package of the integrations
    "perfkern.integrations.peft": 5,
    "perfkern.bitmask": 4,  # compressed-tensors' sparse-24-bitmask format
    "perfkern.integrations.transformers": 6,  # quantizer, from_pretrained, Trainer callback
    "perfkern.integrations._trainer": 6,
    "perfkern.calibration": 6,  # scores and converts nn's layers
    "perfkern.export": 6,  # adapters out as one PEFT LoRA
    "perfkern.demo": 7,
    "perfkern.__main__": 7,
    "perfkern": 7,  # the package itself re-exports everything
}


def _module_files() -> dict[str, Path]:
    """Qualified name of every module of the installed package -> its source file."""
    found = {}
    for base, package in ((ROOT / "perfkern", "perfkern"), (ROOT / "kernels", "perfkern.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _module_files()


def _matches(module: str, prefix: str) -> bool:
    # "perfkern" names the package's own __init__ only, so that it cannot place every module by itself.
    return module == prefix or (prefix != "perfkern" and module.startswith(prefix + "."))


def _layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if _matches(module, prefix):
            return LAYERS[prefix]
    raise KeyError(module)


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The perfkern modules an import statement loads (a name imported from a package is its submodule when one
    exists, else the package)."""
    is_package = MODULES[importer].name == "__init__.py"
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "perfkern"]
    if node.level:
        anchor = importer.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "perfkern":
        return []
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in MODULES or sub == "perfkern._C" else base)
    return targets


def _imports() -> dict[str, set[str]]:
    """Every module -> the perfkern modules it imports anywhere: at the top, inside functions, under
    ``TYPE_CHECKING``."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_resolve(module, node))
        found.discard(module)
        graph[module] = found
    return graph


GRAPH = _imports()


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if not any(_matches(m, p) for p in LAYERS))
    assert not unplaced, f"place these modules in LAYERS (tests/test_architecture.py): {unplaced}"


def test_no_import_goes_up_the_layers():
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, targets in GRAPH.items()
        for dst in sorted(targets)
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "imports that go up the layer order of DESIGN §1:\n" + "\n".join(upward)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    # A package importing its own submodules (perfkern -> perfkern.nn) is how Python packages work; a submodule
    # importing its package back (or anything that imports it) is a circle.
    graph = {src: {dst for dst in targets if not src.startswith(dst + ".")} for src, targets in GRAPH.items()}
    assert not _circles(graph)


def test_the_circle_check_finds_circles():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_relative_and_lazy_imports_are_seen():
    # The kernels import their helpers relatively; the op layer imports the Triton kernels inside functions.
    assert "perfkern.kernels._common" in GRAPH["perfkern.kernels.sparse24"]
    assert "perfkern.kernels.pera" in GRAPH["perfkern.ops.pera"]


@pytest.mark.parametrize("path", sorted((ROOT / "perfkern").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_is_too_long(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES}): split it"


def test_kernels_load_without_perfkern():
    # The files install as perfkern.kernels; here they load from their folder as a package of another name, in a
    # fresh interpreter, and must not pull perfkern in.
    script = textwrap.dedent(
        f"""
        import importlib, importlib.util, sys
        folder = {str(ROOT / "kernels")!r}
        spec = importlib.util.spec_from_file_location(
            "isolated_kernels", folder + "/__init__.py", submodule_search_locations=[folder])
        package = importlib.util.module_from_spec(spec)
        sys.modules["isolated_kernels"] = package
        spec.loader.exec_module(package)
        for name in ("_common", "_rounding", "sparse24", "pera", "dendrite"):
            importlib.import_module("isolated_kernels." + name)
        leaked = sorted(m for m in sys.modules if m == "perfkern" or m.startswith("perfkern."))
        assert not leaked, leaked
        print("ok")
        """
    )
    kernel_files = sorted(p.stem for p in (ROOT / "kernels").glob("*.py") if p.stem != "__init__")
    expected = ["_common", "_rounding", "dendrite", "pera", "sparse24"]
    assert kernel_files == expected, f"load every kernel file: {kernel_files}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
