"""The plan of the house, enforced: models <- library (remaster/) <- stages <- flows <- cli.

Each layer imports only from its own layer and the ones below it, and no modules import each
other in a circle. Imports inside functions count too: they run all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "library", "stages", "flows", "cli")


def layer(module: str) -> str:
    top = module.split(".")[0]
    if module == "remaster.cli" or module.startswith("remaster.cli."):
        return "cli"
    return "library" if top == "remaster" else top


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for top in ("models", "remaster", "stages", "flows")
        for p in (ROOT / top).rglob("*.py")
    }


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in known else node.module)
    return {m for m in found if m in known}


GRAPH = {name: imports_of(path, project_modules()) for name, path in project_modules().items()}


def test_the_walk_sees_the_packages_and_their_imports() -> None:
    assert {
        "models.a2n",
        "remaster.engine.upscaler",
        "stages.train",
        "flows.episode",
        "remaster.cli.main",
    } <= set(GRAPH)
    assert "remaster.video.ffmpeg" in GRAPH["flows.segments"]  # from remaster.video import ffmpeg
    assert "models.checkpoint" in GRAPH["stages.train"]


def test_every_import_points_down_the_layers() -> None:
    wrong = [
        f"{src} ({layer(src)}) imports {dst} ({layer(dst)})"
        for src, deps in GRAPH.items()
        for dst in deps
        if LAYERS.index(layer(dst)) > LAYERS.index(layer(src))
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own modules (``__init__`` re-exports)
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_training_does_not_run_the_inference_engine_or_video_code() -> None:
    """So that editing ONNX export, the tiler or the video path does not re-run `dvc repro train`."""
    seen, todo = set(), ["stages.train"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    assert not {
        m
        for m in seen
        if m.startswith(("remaster.engine.onnx", "remaster.engine.upscaler", "remaster.video"))
    }
