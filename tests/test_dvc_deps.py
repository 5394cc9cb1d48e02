"""Every DVC stage lists exactly the project code it runs: `dvc repro` reruns it when that code changes,
and only then."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "models", "flows", "remaster")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _file(module: str) -> Path | None:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if module.split(".")[0] in PACKAGES and path.exists() else None


def _imported(path: Path) -> set[str]:
    """Project modules ``path`` imports, at the top or inside functions (both run in the stage)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from stages import x
    return {name for name in names if _file(name)}


def code_of(module: str) -> set[str]:
    """The project files ``python -m module`` runs: the module and everything it imports."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported(_file(name)))  # type: ignore[arg-type]
    files = {str(_file(name).relative_to(ROOT)) for name in seen}  # type: ignore[union-attr]
    return {f for f in files if not f.endswith("__init__.py")}


def test_the_import_walk_follows_function_level_and_from_package_imports() -> None:
    code = code_of("stages.train")
    assert {
        "stages/train.py",
        "remaster/training/loop.py",
        "remaster/training/report.py",
        "models/a2n.py",
    } <= code
    assert "remaster/tracking.py" in code  # imported inside a function
    assert "remaster/video/ffmpeg.py" not in code


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_the_code_it_runs(name: str) -> None:
    stage = STAGES[name]
    argv = shlex.split(stage["cmd"])
    assert argv[:2] == ["python", "-m"], stage["cmd"]
    deps = {d for d in stage["deps"] if not d.startswith(("data/", "runs/", "${"))}
    code = code_of(argv[2])
    missing, extra = sorted(code - deps), sorted(deps - code)
    assert not missing, f"dvc.yaml stage {name} runs {missing} without listing them in deps"
    assert not extra, (
        f"dvc.yaml stage {name} lists {extra}, which it never runs: a change there would re-run it"
    )
