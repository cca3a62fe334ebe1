"""The package's shape: no import cycles (also through imports inside functions), stage folders,
files of a readable size, and the old module paths that are kept."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compactlm"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the compactlm modules it imports anywhere in its body (top level or in functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when `sub` is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and graph["compactlm.train.trainer"]  # the graph really was read
    assert find_cycles(graph) == []


def test_internal_modules_import_submodules_not_package_reexports():
    """A module importing its own package's __init__ would close a cycle through the re-exports."""
    graph = import_graph()
    packages = {p for p in graph if (PACKAGE.parent / p.replace(".", "/") / "__init__.py").is_file()}
    offenders = sorted((m, t) for m, targets in graph.items() for t in targets
                       if t in packages and t != "compactlm" and m.startswith(t + "."))
    assert offenders == []


def test_stage_folders_and_file_sizes():
    for stage in ("config", "tokenizer", "data", "model", "checkpoint", "train", "convert", "eval", "ladder"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_light_packages_do_not_import_torch():
    """Data-preparation workers and the CLI's config checks import these without paying for torch."""
    import subprocess
    import sys

    code = ("import sys; import compactlm.config.train, compactlm.data.prepare, compactlm.tokenizer, "
            "compactlm.checkpoint.layout, compactlm.train.metrics; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("module, names", [
    ("compactlm", ["build_model", "from_pretrained", "save_checkpoint", "generate", "ModelConfig", "PRESETS",
                   "get_preset", "Transformer", "Tokenizer", "load_tokenizer", "CompactlmError"]),
    ("compactlm.config", ["ModelConfig", "PRESETS", "get_preset", "load_config"]),
    ("compactlm.model", ["Transformer", "KVCache"]),
    ("compactlm.checkpoint", ["build_model", "from_pretrained", "save_checkpoint", "load_weights"]),
    ("compactlm.train", ["train", "Trainer", "TrainConfig", "load_train_config", "resolve_run"]),
    ("compactlm.tokenizer", ["Tokenizer", "load_tokenizer", "train_bpe"]),
])
def test_public_names_are_kept(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is not None, f"{module}.{name}"
    assert callable(importlib.import_module("compactlm").generate)
    assert importlib.import_module("compactlm.train").train.__module__ == "compactlm.train.trainer"
