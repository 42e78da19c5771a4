"""The package's shape: four layers whose imports point only downward, and no import cycles.

core -> assembly -> workflows -> interfaces (README "Layout"); a module may import its own
layer or the ones below it. Every import counts, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = {"defaults", "files", "compressors", "llm", "architecture", "prompts", "context", "generation", "text",
        "timing", "metrics", "spec", "profiles", "results", "compare"}
ASSEMBLY = {"compressor", ""}  # "": the package itself, whose __init__ exports the entry point
WORKFLOWS = {"objectives", "train", "diagnose", "bench", "evaluate", "publish", "data", "convert", "lease",
             "attention", "flops"}
LAYERS = {"core": 0, "assembly": 1, "workflows": 2, "interfaces": 3}


def layer(module: str) -> str:
    """The layer of a dotted module name (icformer.x.y or app.x)."""
    if module == "app" or module.startswith("app.") or module.startswith("icformer.cli") or module == "icformer.__main__":
        return "interfaces"
    top = module.removeprefix("icformer").lstrip(".").split(".")[0]
    for name, members in (("core", CORE), ("assembly", ASSEMBLY), ("workflows", WORKFLOWS)):
        if top in members:
            return name
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py and the README's Layout")


def modules() -> dict[str, Path]:
    found = {}
    for package in ("icformer", "app"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `module` imports (a `from pkg import sub` names the submodule, not pkg)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & known.keys()
            out |= subs if len(subs) == len(node.names) else {target} | subs
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in known and m != module}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer_and_imports_point_down():
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in graph().items() for d in sorted(deps)
              if LAYERS[layer(d)] > LAYERS[layer(m)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges, seen, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = "open"
        for dep in sorted(edges[node]):
            if seen.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in seen:
                visit(dep, stack + [dep])
        seen[node] = "done"

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: a core module importing the compressor is reported."""
    path = tmp_path / "prompts.py"
    path.write_text("from .compressor import ContextCompressor\n")
    deps = imports("icformer.prompts", path, modules())
    assert deps == {"icformer.compressor"} and LAYERS[layer("icformer.compressor")] > LAYERS[layer("icformer.prompts")]
