"""The package's layout as the design states it: data flows config -> data -> model -> trainer ->
commands, and no module imports one from a later layer or takes part in an import cycle
(imports inside functions count: they are dependencies all the same); every module says what
it owns in a docstring and fits in a head (MAX_LINES)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llava_hydra"
MAX_LINES = 320  # the brief's "about 300"; packing.py, the largest, has ~310
# Layers in the order data flows; a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("config", ["llava_hydra.config", "llava_hydra.distributed", "llava_hydra.validate", "llava_hydra.hf_source"]),
    # the data side; tiny: the embedded default's parts, its tokenizer trained on the synthetic data's words
    ("data", ["llava_hydra.data", "llava_hydra.tiny"]),
    ("sampling", ["llava_hydra.sampler", "llava_hydra.packing", "llava_hydra.packing_rows"]),
    ("model", ["llava_hydra.model"]),
    ("trainer", ["llava_hydra.trainer", "llava_hydra.param_groups", "llava_hydra.checkpoints", "llava_hydra.evaluate",
                 "llava_hydra.progress", "llava_hydra.eval.sharding"]),
    ("commands", ["llava_hydra.runner", "llava_hydra.tracking", "llava_hydra.launch", "llava_hydra.worker",
                  "llava_hydra.run_spec", "llava_hydra.sweep", "llava_hydra.merge", "llava_hydra.chat", "llava_hydra.eval",
                  "llava_hydra.__main__", "llava_hydra"]),
]


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
    best = max(((len(p), k) for k, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best[1]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_follow_the_data_flow():
    backwards = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                 for m, targets in import_graph().items() for t in targets if layer_of(t) > layer_of(m)]
    assert backwards == []


def test_every_module_says_what_it_owns_and_fits_in_a_head():
    mods = modules()
    assert "llava_hydra.model.build" in mods and "llava_hydra.runner" in mods  # the walk found the package
    undocumented = [m for m, f in mods.items() if not ast.get_docstring(ast.parse(f.read_text()))]
    too_long = {m: n for m, f in mods.items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert undocumented == []
    assert too_long == {}
