"""The package's layout keeps the data flow: stage folders in order, imports that point back along it.

Read statically (``ast``), so a violation is found whether or not a test runs that code path:

* every module belongs to a stage, and imports only from the foundations, its own stage and
  earlier stages (peers such as budgets, reports and exports do not import each other);
* a forward hand-off (the call path handing events to the journal, the journal's writer handing
  batches to the store and refreshing the stop file) is a *lazy* import inside a function, and
  only where :data:`HANDOFFS` names it;
* ``call/`` and the foundations import only httpx and the standard library at module scope;
* no module imports another module's private name;
* each subpackage's ``__init__`` stays light (no pandas, no Alembic) and says what its stage owns;
* no module is longer than :data:`MAX_LINES` unless its docstring says why.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "ledger"

# Flow order. Modules of one rank are peers: they may not import each other.
STAGES: dict[str, int] = {
    "foundation": 0,
    "call": 1,
    "journal": 2,
    "store": 3,
    "budgets": 4,
    "reports": 4,
    "exports": 4,
    "scheduler": 5,
    "service": 5,
    "api": 6,
    "cli": 7,
}
FOUNDATIONS = {
    "_version",
    "money",
    "events",
    "pricing",
    "config",
    "calendar",
    "outfile",
    "testing",
    "testing_wire",
}
# (importing stage, imported stage): why the import runs forward. Each must be lazy (in a function).
HANDOFFS = {
    ("call", "journal"): "a finished attempt hands its event to the journal",
    ("journal", "store"): "the writer moves spooled events into the store",
    ("journal", "budgets"): "the writer refreshes the hard-budget stop file",
}
MAX_LINES = 400
LONG_OK = "longer than 400 lines"  # the phrase a long module's docstring uses to say why


def stage_of(module: str) -> str:
    """``ledger.call.transport`` → ``call``; ``ledger.money`` → ``foundation``; ``ledger.api`` → ``api``."""
    parts = module.split(".")
    if len(parts) == 1:  # ledger/__init__: the public API, which assembles the stages
        return "root"
    if parts[1] in FOUNDATIONS:
        return "foundation"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "migrations" in rel.parts:
            continue  # Alembic's scripts: run by Alembic, frozen once released
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path) -> Iterator[tuple[str, list[str], bool, int]]:
    """(imported module, names, lazy?, line) for every import outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[str, list[str], bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (x for c in child.orelse for x in walk_one(c, lazy))
                continue
            yield from walk_one(child, lazy)

    def walk_one(child: ast.AST, lazy: bool) -> Iterator[tuple[str, list[str], bool, int]]:
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name, [], lazy, child.lineno
        elif isinstance(child, ast.ImportFrom):
            target = _resolve(module, is_package, child)
            names = [a.name for a in child.names]
            submodules = [
                n
                for n in names
                if (PACKAGE.parent / (target.replace(".", "/") + f"/{n}.py")).exists()
                or (PACKAGE.parent / (target.replace(".", "/") + f"/{n}")).is_dir()
            ]
            for n in submodules:
                yield f"{target}.{n}", [], lazy, child.lineno
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                yield target, rest, lazy, child.lineno
        else:
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)

    yield from walk(tree, False)


ALL = list(modules())


def test_every_module_is_in_a_known_stage() -> None:
    unknown = {m: stage_of(m) for m, _ in ALL if stage_of(m) not in STAGES and stage_of(m) != "root"}
    assert unknown == {}


@pytest.mark.parametrize(("module", "path"), ALL, ids=[m for m, _ in ALL])
def test_imports_point_back_along_the_flow(module: str, path: Path) -> None:
    mine = stage_of(module)
    if mine == "root":
        return  # ledger/__init__ re-exports the public API from the stages
    bad = []
    for target, _names, lazy, line in imports(module, path):
        if target.split(".")[0] != "ledger":
            continue
        theirs = stage_of(target)
        if theirs in (mine, "foundation") or theirs == "root" and mine == "cli":
            continue
        if theirs == "root":
            bad.append(f"line {line}: imports the package root")
            continue
        forward = STAGES[theirs] >= STAGES[mine]
        if not forward:
            continue
        if (mine, theirs) in HANDOFFS and lazy:
            continue
        why = "a peer stage" if STAGES[theirs] == STAGES[mine] else "a later stage"
        bad.append(f"line {line}: imports {target} ({why}{', at module scope' if not lazy else ''})")
    assert bad == [], f"{module} ({mine})"


STDLIB = set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in ALL if stage_of(m) in ("call", "foundation")],
    ids=[m for m, _ in ALL if stage_of(m) in ("call", "foundation")],
)
def test_the_call_stage_and_foundations_import_only_httpx_and_the_standard_library(
    module: str, path: Path
) -> None:
    third = sorted(
        {
            t.split(".")[0]
            for t, _n, lazy, _l in imports(module, path)
            if not lazy and t.split(".")[0] not in STDLIB | {"ledger", "httpx"}
        }
    )
    assert third == []


@pytest.mark.parametrize(("module", "path"), ALL, ids=[m for m, _ in ALL])
def test_no_private_name_crosses_a_module(module: str, path: Path) -> None:
    bad = [
        f"line {line}: {target}.{n}"
        for target, names, _lazy, line in imports(module, path)
        if target.startswith("ledger") and target != module
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert bad == []


def test_tests_import_no_private_name_from_the_package() -> None:
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for target, names, _lazy, line in imports(module, path):
            if target.startswith("ledger"):
                bad += [
                    f"{path.relative_to(ROOT / 'tests')}:{line}: {target}.{n}"
                    for n in names
                    if n.startswith("_") and n != "__version__"
                ]
    assert bad == []


@pytest.mark.parametrize("stage", sorted(s for s in STAGES if (PACKAGE / s).is_dir()))
def test_each_stage_init_is_light_and_says_what_it_owns(stage: str) -> None:
    path = PACKAGE / stage / "__init__.py"
    heavy = sorted(
        {
            t.split(".")[0]
            for t, _n, lazy, _l in imports(f"ledger.{stage}", path)
            if not lazy and t.split(".")[0] in ("pandas", "alembic", "pyarrow", "apscheduler")
        }
    )
    assert heavy == []
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert len(doc) > 80, f"ledger/{stage}/__init__.py needs a docstring saying what the stage owns"
    assert "import" in doc, f"ledger/{stage}/__init__.py should say what the stage must not import"


@pytest.mark.parametrize(("module", "path"), ALL, ids=[m for m, _ in ALL])
def test_modules_are_short_or_say_why(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    assert doc, f"{module} has no docstring saying what it owns"
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES or LONG_OK in doc.lower(), f"{module}: {lines} lines"


def test_the_stage_folders_are_the_flow() -> None:
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(s for s in STAGES if s not in ("foundation", "api"))


def test_the_version_is_the_one_pyproject_states() -> None:
    import tomllib

    from ledger import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
