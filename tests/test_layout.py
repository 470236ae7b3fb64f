"""The shape of ``src/lungseg``: the stages import downwards only, no import cycles, and nothing
outside the CLI imports the CLI.

Imports are read with ``ast`` from the source, so an import inside a function counts as much as
one at the top of a module (it runs too, only later), and so does ``importlib.import_module`` of
a constant name (an f-string counts as importing the package its constant start names). Imports
under ``if TYPE_CHECKING:`` do not count: they never run. Importing a module does not count as
importing its parent packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: ``python -m lungseg`` exists to run the CLI.
CLI_ENTRY_POINTS = {"lungseg.__main__"}


def modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` for every module under ``src/lungseg``."""
    found = {}
    for path in sorted((src / "lungseg").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith(
            "TYPE_CHECKING"
        ):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: the lungseg modules it imports}``, top-level and function-level alike."""
    known = modules(src)

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names)
            elif (dynamic := _import_module_target(node)) is not None:
                targets.add(owner(dynamic))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the module ``pkg.mod``, not just ``pkg``.
                targets.update(owner(f"{base}.{alias.name}") for alias in node.names)
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _import_module_target(node: ast.AST) -> str | None:
    """``importlib.import_module("lungseg.x")`` -> ``lungseg.x``; with an f-string, the package
    its constant start names (``f"lungseg.models.{name}"`` -> ``lungseg.models``)."""
    if not (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("importlib.import_module", "import_module")
        and node.args
    ):
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        name = arg.value
    elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        name = str(arg.values[0].value).rstrip(".")
    else:
        return None
    return name if name.startswith("lungseg") else None


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while not component or node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "lungseg.storage.azure" in graph["lungseg.storage.sources"]  # inside open_source
    assert "lungseg.storage.local" in graph["lungseg.storage.azure.upload"]


#: The stages, lowest first: a module may import its own stage and those below it, never one
#: above (``cli -> jobs -> inference -> models, data -> storage -> core``).
STAGES = {
    "core": 0, "_version": 0,
    "storage": 1,
    "data": 2, "models": 2,
    "inference": 3, "dicom": 3,
    "training": 4, "evaluation": 4, "segment": 4, "serve": 4, "node": 4,
    "cli": 5,
}  # fmt: skip
#: Jobs that stay apart although they share a stage.
FORBIDDEN = {("serve", "segment"), ("node", "segment"), ("inference", "training")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_stage():
    unplaced = {_stage(m) for m in modules() if _stage(m) and _stage(m) not in STAGES}
    unplaced -= {"__main__"}  # the entry point: python -m lungseg
    assert not unplaced, f"packages without a stage in STAGES: {sorted(unplaced)}"


def test_stages_import_downwards_only():
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        for target in targets
        if _stage(name) in STAGES
        and _stage(target) in STAGES
        and (
            STAGES[_stage(target)] > STAGES[_stage(name)]
            or (_stage(name), _stage(target)) in FORBIDDEN
        )
    )
    assert not upward, f"imports against the direction of the stages: {upward}"


def test_the_graph_sees_importlib_imports(tmp_path: Path):
    """An upward import made through importlib is an edge of the graph like any other."""
    package = tmp_path / "lungseg"
    (package / "core").mkdir(parents=True)
    (package / "cli").mkdir()
    for init in (package, package / "core", package / "cli"):
        (init / "__init__.py").write_text("")
    (package / "cli" / "main.py").write_text("")
    (package / "core" / "a.py").write_text(
        "import importlib\ndef f(n):\n    importlib.import_module('lungseg.cli.main')\n"
        "    importlib.import_module(f'lungseg.cli.{n}')\n"
    )
    graph = import_graph(tmp_path)
    assert graph["lungseg.core.a"] == {"lungseg.cli.main", "lungseg.cli"}
    assert "lungseg.models" in import_graph()["lungseg.models._registry"]


def test_no_import_cycles():
    found = set(cycles(import_graph()))
    assert not found, f"import cycles in src/lungseg: {[sorted(c) for c in found]}"


def test_only_the_cli_imports_the_cli():
    offenders = {
        name: sorted(t for t in targets if t.split(".")[:2] == ["lungseg", "cli"])
        for name, targets in import_graph().items()
        if name.split(".")[:2] != ["lungseg", "cli"] and name not in CLI_ENTRY_POINTS
    }
    assert not {k: v for k, v in offenders.items() if v}


#: Files may grow past this many lines only with a docstring paragraph that starts "Why one file".
MAX_LINES = 450


def test_long_modules_say_why_they_are_one_file():
    long = {}
    for name, (path, _) in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > MAX_LINES and "Why one file" not in doc:
            long[name] = lines
    assert not long, f"modules over {MAX_LINES} lines without a 'Why one file' note: {long}"


def test_the_command_line_loads_no_heavy_library():
    """``lungseg --help`` stays fast: building every command imports no NumPy, OpenCV,
    PyTorch, matplotlib or Jinja2."""
    import subprocess
    import sys

    heavy = ("numpy", "cv2", "torch", "matplotlib", "jinja2", "azure", "onnxruntime")
    code = (
        "import sys; import lungseg.cli as cli; cli._register(); "
        "import typer.main; typer.main.get_command(cli.app); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported by the CLI at start: {out.stdout.strip()}"


#: What people read, and the templates that write it: a module they point at must exist.
DOCUMENTS = ("README.md", "BENCHMARKS.md", "src/lungseg/weights/MODEL_CARD.md",
             "scripts/templates/*.j2", "benchmarks/templates/*.j2", "configs/*.yaml")  # fmt: skip


def test_every_module_the_documents_name_exists():
    """``lungseg/quality.py`` in the model card outlived the move to ``lungseg/inference/``."""
    repo = SRC.parent
    named = re.compile(r"\blungseg/[\w/]+\.py\b")
    missing = {
        f"{path.relative_to(repo)}: {found}"
        for pattern in DOCUMENTS
        for path in repo.glob(pattern)
        for found in named.findall(path.read_text(encoding="utf-8"))
        if not (SRC / found).is_file() and not (repo / found).is_file()
    }
    assert len(list(repo.glob("scripts/templates/*.j2"))) >= 2
    assert not missing, "\n".join(sorted(missing))
