"""The shape of the house, checked: no import loop between modules or between rooms, each room
importing only the rooms below it (`ALLOWED`), every room's `__init__` saying what it owns, rooms of
at most 400 lines and functions of at most 60, a set-up that imports at most 8 fl modules, and a
round (`fl/server.py`) of at most 250 lines that names no algorithm and no task specifics."""

from __future__ import annotations

import ast
from pathlib import Path

FL = Path(__file__).resolve().parents[1] / "fl"
FOLDERS = {"config", "comm", "data", "models", "client", "output", "tasks", "strategies", "kd"}  # the rooms

# what each room may import (a room, or one module of a room); the top level (cli, job, setup,
# server, api) may import any room. `fl.comm.message` is the named-tensor container every room
# speaks; the rest of `fl.comm` (the collectives) belongs to the client runners and the top level.
ALLOWED = {
    "fl.config": {"fl.errors"},
    "fl.comm": {"fl.errors"},
    "fl.data": {"fl.errors", "fl.config"},
    "fl.models": {"fl.errors", "fl.config", "fl.data"},
    "fl.tasks": {"fl.errors", "fl.config", "fl.data", "fl.models", "fl.comm.message"},
    "fl.strategies": {"fl.errors", "fl.config", "fl.models", "fl.comm.message", "fl.comm.codecs"},
    "fl.output": {"fl.errors", "fl.config", "fl.models", "fl.comm.message"},
    "fl.client": {"fl.errors", "fl.config", "fl.models", "fl.strategies", "fl.comm", "fl.faults"},
    "fl.kd": {"fl.errors", "fl.config", "fl.data", "fl.models", "fl.tasks", "fl.strategies", "fl.client", "fl.output"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(FL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """fl.* modules imported anywhere in the file (functions too), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fl"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from fl import comm`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fl"))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in FL.rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    return next((c for n in sorted(edges) if n not in state and (c := visit(n))), None)


def folder(module: str) -> str:
    parts = module.split(".")
    return f"fl.{parts[1]}" if len(parts) > 2 and parts[1] in FOLDERS else module


def test_the_loop_finder_finds_loops():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "fl.comm" in graph()["fl.server"] and "fl.strategies.base" in graph()["fl.kd.part"]
    assert not allowed("fl.tasks.classify", "fl.comm.collectives") and allowed("fl.tasks.classify", "fl.comm.message")


def test_no_import_loop_between_modules():
    edges = graph()
    for pkg in FOLDERS:  # a package's __init__ may gather its own modules; that is not a loop
        edges[f"fl.{pkg}"] = {m for m in edges[f"fl.{pkg}"] if not m.startswith(f"fl.{pkg}.")}
    assert find_cycle(edges) is None, find_cycle(edges)


def test_no_import_loop_between_folders():
    edges: dict[str, set[str]] = {}
    for m, deps in graph().items():
        edges.setdefault(folder(m), set()).update(folder(d) for d in deps if folder(d) != folder(m))
    assert find_cycle(edges) is None, find_cycle(edges)


def allowed(module: str, dep: str) -> bool:
    """Whether `module` may import `dep` (see ALLOWED)."""
    mine, theirs = folder(module), folder(dep)
    if mine == theirs or mine not in ALLOWED or dep == "fl":
        return True
    return theirs in ALLOWED[mine] or any(dep == a or dep.startswith(f"{a}.") for a in ALLOWED[mine])


def test_rooms_import_only_the_rooms_below_them():
    bad = sorted(f"{m} -> {d}" for m, deps in graph().items() for d in deps if not allowed(m, d))
    assert not bad, bad


def test_every_room_says_what_it_owns_and_may_import():
    for room in FOLDERS:
        doc = ast.get_docstring(ast.parse((FL / room / "__init__.py").read_text())) or ""
        assert len(doc.split()) >= 30 and "import" in doc, f"fl/{room}/__init__.py: say what it owns and may import"


def test_setup_imports_at_most_eight_fl_modules():
    mods = {m for m in imports(FL / "setup.py") if m != "fl" and m in graph()}
    assert len(mods) <= 8, sorted(mods)


def test_rooms_and_functions_stay_small():
    for path in FL.rglob("*.py"):
        lines = path.read_text().count("\n")
        assert lines <= 400, f"{path.relative_to(FL)} has {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                assert n <= 60, f"{path.relative_to(FL)}:{node.lineno} {node.name} has {n} lines"


def code_words(path: Path) -> set[str]:
    """Identifiers and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words.add(node.value)
    return {w.lower() for w in words}


ALGORITHMS = (
    "scaffold",
    "teacher",
    "fedex",
    "lora",
    "control",
    "privacy",
    "dp_",
    "prox",
    "feddyn",
    "kd",
    "distill",
    "compression",
    "flex",
    "ffa",
    "fedavg",
    "median",
    "scheme",
)


def test_the_round_is_short_and_names_no_algorithm_or_task_specific():
    server = FL / "server.py"
    assert server.read_text().count("\n") <= 250
    words = " ".join(code_words(server))
    for banned in (*ALGORITHMS, "label", "logits"):
        assert banned not in words, f"fl/server.py names {banned!r}"


def test_setup_and_transport_name_no_algorithm():
    """Parts declare what they need (a model on rank 0, public rows, individual updates, a codec):
    set-up and transport read the declarations and name no algorithm or scheme."""
    for module in ("setup.py", "comm/transport.py", "job.py"):
        words = " ".join(code_words(FL / module))
        for banned in ALGORITHMS:
            assert banned not in words, f"fl/{module} names {banned!r}"
