"""Defect 7: every flag an error or hint names exists on the command that can show it.

``evaluate`` used to tell users to pass ``--skip-bad``, which it did not accept. This test reads
the source: each string in ``src/lungseg`` that names a ``--flag`` (error messages, hints, notes;
docstrings and ``--help`` texts aside) can reach the user of every command whose code imports its
module, directly or through other modules (imports inside functions count). The flag must exist
on each of them. ``lungseg CMD ... --flag`` or ``CMD --flag`` inside a message names a flag of
``CMD``; ``torchrun`` and ``pip`` flags are not lungseg's.

Reachability by import over-approximates: a message that a command can import but never show
is listed in :data:`CANNOT_SHOW` with the reason (keyed by its words, so moving it to another
module keeps the entry), so adding a wrong hint fails here until someone states why it cannot
happen.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import test_layout

# The source does not change while the tests read it: each file is parsed and the import graph
# built once (uncached, the two tests below spent 40 s of CPU re-reading the same trees).
import_graph = functools.cache(test_layout.import_graph)
modules = functools.cache(test_layout.modules)


@functools.cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: A span of a message that belongs to another command (``lungseg prepare --data ...``,
#: ``segment --weights ...``) or to another program; it ends at a quote or punctuation.
OTHER = re.compile(
    r"\b(?:(?P<ext>torchrun|pip|az|sbatch)\b|lungseg\s+(?P<named>[\w-]+)|(?P<bare>[\w-]+)(?=\s+--))"
)
SPAN_END = re.compile(r"['\";,()]|$")

#: ``(command, flag, part of the message)``: why that command cannot show that message. Keyed by
#: the message's words, not by its module, so an entry survives the message moving house.
CANNOT_SHOW = {
    ("compare", "--resume", "already holds a training run"):
        "compare resumes a run exactly when its last.pt exists",
    ("compare", "--resume", "nothing to resume"):
        "compare resumes a run exactly when its last.pt exists",
    ("compare", "--model", "--model is required"): "resolve_run is called by 'lungseg train' only",
    ("compare", "--model-arg", "(--model-arg / model_kwargs)"):
        "compare takes no model arguments: its settings never set model_kwargs",
    ("export", "--device", "no CUDA device is available"):
        "export loads the model on the CPU; it never asks for CUDA",
    **{
        (command, "--older-than", "--older-than must be"): "clear_cache runs in 'lungseg cache'"
        for command in ("prepare", "train", "evaluate", "compare", "upload", "segment",
                        "segment-merge", "export")
    },
    ("compare", "--overwrite", "--overwrite"): "compare always redoes its own segment outputs",
    ("compare", "--shard", "--shard"): "compare segments in one process (shard 0/1)",
    ("export", "--out", "give one az://CONTAINER/PREFIX or dicomweb:// query as the input"):
        "export's --calibrate takes local files only (find_images)",
    **{
        ("compare", flag, "--stow stores DICOM SEGs and SRs"):
            "compare segments without --stow"
        for flag in ("--stow", "--dicom-seg", "--dicom-sr")
    },
    **{
        ("segment-merge", flag, part): "open_run and resolve_shard run in 'lungseg segment' only"
        for flag, part in (
            ("--overwrite", "pass --overwrite to"), ("--out", "choose another --out"),
            ("--shard", "--shard"),
        )
    },
    **{
        (command, "--create-container", "pass --create-container"):
            "the upload module's functions run in 'lungseg upload' only"
        for command in ("prepare", "train", "evaluate", "compare", "export", "segment",
                        "segment-merge")
    },
}  # fmt: skip


def cannot_show(command: str, flag: str, text: str) -> bool:
    return any((command, flag) == (c, f) and part in text for c, f, part in CANNOT_SHOW)


def command_flags() -> dict[str, set[str]]:
    """``{command: its option names}``, from the click command typer builds."""
    import typer.main

    from lungseg.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    return {
        name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for name, cmd in group.commands.items()
    }


def command_functions() -> dict[str, tuple[str, ast.FunctionDef]]:
    """``{command: (its CLI module, the function's AST)}``."""
    import typer.main

    from lungseg.cli import _register, app

    _register()
    found = {}
    for name, cmd in typer.main.get_command(app).commands.items():
        module = cmd.callback.__module__
        tree = ast.parse(Path(sys.modules[module].__file__).read_text())
        (func,) = [
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name == cmd.callback.__name__
        ]
        found[name] = (module, func)
    return found


def _imports(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            names.update(alias.name for alias in sub.names)
        elif isinstance(sub, ast.ImportFrom) and sub.module:
            names.add(sub.module)
            names.update(f"{sub.module}.{alias.name}" for alias in sub.names)
    return names


def reachable(command_module: str, func: ast.FunctionDef) -> set[str]:
    """The lungseg modules a command's body imports, transitively (a module-level import of
    the CLI module counts when the body uses the name it imports; the rest is for ``--help``)."""
    graph = import_graph()
    known = set(modules())
    tree = _parsed(Path(sys.modules[command_module].__file__))
    used = {n.id for stmt in func.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    top = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module:
            top.update(stmt.module for alias in stmt.names if (alias.asname or alias.name) in used)
    todo = [m for m in (top | _imports(func)) if m in known]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
            todo.extend(_lazy_exports(name))
    return seen


def _lazy_exports(package: str) -> list[str]:
    """The modules behind a package's ``_EXPORTS`` table (names imported on first use)."""
    path, is_package = modules()[package]
    if not is_package:
        return []
    for node in _parsed(path).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_EXPORTS":
            values = {v.value for v in node.value.values if isinstance(v, ast.Constant)}
            # A table may name its modules relative to the package (models: "unet").
            return sorted(v if v.startswith("lungseg.") else f"{package}.{v}" for v in values)
    return []


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _help_texts(tree: ast.AST) -> set[int]:
    """Strings inside ``typer.Option(...)`` / ``typer.Argument(...)``: the ``--help`` text."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in (
            "Option",
            "Argument",
        ):
            ids.update(id(sub) for sub in ast.walk(node))
    return ids


def messages(node: ast.AST, skip: set[int]) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every string under ``node`` that is not in ``skip``; an f-string is
    one text, its fields shown as ``{}``."""
    parts = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr) and id(sub) not in skip:
            parts.update(id(v) for v in sub.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values)
            yield sub.lineno, text
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            if id(sub) not in skip and id(sub) not in parts:
                yield sub.lineno, sub.value


def named_flags(text: str, default: str, commands: set[str]) -> list[tuple[str, str]]:
    """``(command, flag)`` for every flag in ``text``; ``default`` owns the unattributed ones."""
    spans = []
    for match in OTHER.finditer(text):
        if match["ext"]:
            owner = None
        elif (match["named"] or match["bare"]) in commands:
            owner = match["named"] or match["bare"]
        else:
            continue
        end = match.end() + SPAN_END.search(text, match.end()).start() - match.end()
        spans.append((match.start(), end, owner))
    found = []
    for flag in FLAG.finditer(text):
        owner: str | None = default
        for start, end, who in spans:
            if start <= flag.start() < end:
                owner = who
        if owner is not None:
            found.append((owner, flag.group()))
    return found


@functools.cache
def mentions() -> tuple[tuple[str, int, str, str, str], ...]:
    """``(module, line, command, flag, message)`` for every flag a command can show the user."""
    return tuple(_mentions())


def _mentions() -> Iterator[tuple[str, int, str, str, str]]:
    commands = set(command_flags())
    for command, (cli_module, func) in command_functions().items():
        sources: list[tuple[str, ast.AST, set[int]]] = []
        for name in sorted(reachable(cli_module, func)):
            tree = _parsed(modules()[name][0])
            skip = _docstrings(tree) | _help_texts(tree)
            if name.startswith("lungseg.cli."):  # other commands' bodies are theirs
                skip |= {id(sub) for stmt in tree.body if isinstance(stmt, ast.FunctionDef)
                         for sub in ast.walk(stmt)}  # fmt: skip
            sources.append((name, tree, skip))
        sources.append((cli_module, func, _docstrings(func) | _help_texts(func)))
        for module, node, skip in sources:
            for line, text in messages(node, skip):
                for owner, flag in named_flags(text, command, commands):
                    yield module, line, owner, flag, text


def test_every_flag_a_message_names_exists_on_its_command() -> None:
    flags = command_flags()
    wrong = {
        f"{module}:{line}: {flag} is not an option of 'lungseg {owner}'"
        for module, line, owner, flag, text in mentions()
        if flag not in flags[owner] and not cannot_show(owner, flag, text)
    }
    assert not wrong, "\n".join(sorted(wrong))


def test_the_exceptions_are_still_needed() -> None:
    """An entry of CANNOT_SHOW that no longer matches a message is removed, not kept."""
    flags = command_flags()
    shown = [
        (owner, flag, text) for _, _, owner, flag, text in mentions() if flag not in flags[owner]
    ]
    unused = [
        entry
        for entry in CANNOT_SHOW
        if not any((o, f) == entry[:2] and entry[2] in text for o, f, text in shown)
    ]
    assert not unused, unused


def test_the_check_attributes_flags_to_commands() -> None:
    commands = {"prepare", "evaluate", "segment"}
    assert named_flags("pass --skip-bad to leave them out", "evaluate", commands) == [
        ("evaluate", "--skip-bad")
    ]
    text = "run 'lungseg prepare --data SRC --out X' first, then --size; or segment --weights R"
    assert named_flags(text, "evaluate", commands) == [
        ("prepare", "--data"),
        ("prepare", "--out"),
        ("evaluate", "--size"),
        ("segment", "--weights"),
    ]
    assert named_flags("one process per GPU (torchrun --nproc_per_node)", "train", commands) == []
