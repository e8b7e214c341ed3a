"""The package's layout as the design states it: its folders are its layers, in the order data
flows (config -> data -> sampling -> model -> eval -> train -> commands), and no module imports
one from a later layer or takes part in an import cycle (imports inside functions count: they are
dependencies all the same); every module says what it owns in a docstring and fits in a head
(MAX_LINES). A module's layer is the folder it stands in, so a new module's place is decided by
where it is put; the only modules outside a layer's folder are the entry-point shims, which
belong to ``commands``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llava_hydra"
MAX_LINES = 320  # the brief's "about 300"
LAYERS = ["config", "data", "sampling", "model", "eval", "train", "commands"]
# ``python -m llava_hydra.chat|.merge|.eval``: each imports one command and calls it
SHIMS = {"llava_hydra.chat": "llava_hydra.commands.chat", "llava_hydra.merge": "llava_hydra.commands.merge",
         "llava_hydra.eval.__main__": "llava_hydra.commands.eval_cli"}
# the package itself (its docstring draws the layers) and ``python -m llava_hydra`` (Hydra's app)
ENTRY = {"llava_hydra", "llava_hydra.__main__"}


def modules() -> dict[str, Path]:
    found = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent)
        if rel.parts[1] == "conf":  # configs, not code
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found[name] = f
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # a name imported from a module -> that module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def layer_of(module: str) -> int:
    if module in SHIMS or module in ENTRY:
        return LAYERS.index("commands")
    parts = module.split(".")
    assert len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS), \
        f"{module} stands beside the layers: put it in one of the folders {LAYERS}"
    return LAYERS.index(parts[1])


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_follow_the_data_flow():
    backwards = [f"{m} ({LAYERS[layer_of(m)]}) imports {t} ({LAYERS[layer_of(t)]})"
                 for m, targets in import_graph().items() for t in targets if layer_of(t) > layer_of(m)]
    assert backwards == []


def test_every_module_says_what_it_owns_and_fits_in_a_head():
    mods = modules()
    assert "llava_hydra.model.build" in mods and "llava_hydra.commands.runner" in mods  # the walk found the package
    undocumented = [m for m, f in mods.items() if not ast.get_docstring(ast.parse(f.read_text()))]
    too_long = {m: n for m, f in mods.items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert undocumented == []
    assert too_long == {}


def test_every_module_stands_in_a_layer_folder():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name not in ("__pycache__",) and not p.name.endswith(".egg-info"))
    assert top == ["__init__.py", "__main__.py", "chat.py", "commands", "config", "data", "eval", "merge.py",
                   "model", "sampling", "train"]
    for m in modules():
        layer_of(m)  # asserts it stands in a layer's folder


def test_shims_only_hand_over():
    """An entry-point shim holds no logic: it imports the one command it runs (and sys) and calls it."""
    graph = import_graph()
    for name, command in SHIMS.items():
        assert graph[name] == {command}, name
        assert len(modules()[name].read_text().splitlines()) <= 8, name
