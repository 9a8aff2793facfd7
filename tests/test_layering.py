"""The package layering: `core` <- `world_model`, `agents` <- `mbrl`, imports flowing one way only.

`core` (batches, atomic I/O, checkpoints, logger, runtime, precision, schedules) imports none of the others;
`world_model` and `agents` import `core` and never `mbrl` (nor each other); `mbrl` may import all three. The
check reads every import statement, those inside functions included, so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "world_model", "agents", "mbrl")
ALLOWED = {
    "core": set(),
    "world_model": {"core"},
    "agents": {"core"},
    "mbrl": {"core", "world_model", "agents"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """The project packages `path` imports -> the first line that does (absolute imports; the project uses
    no relative ones)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import core.io\n\ndef f():\n    from mbrl.envs import make_env\n")
    assert imported_packages(source) == {"core": 1, "mbrl": 4}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for imported, line in imported_packages(path).items():
            if imported != package and imported not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'no project package'}: {wrong}"


def _modules_loaded_by(statement: str) -> set[str]:
    """The project modules a fresh interpreter has loaded after running `statement`."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {name for name in out.stdout.split() if name.split(".")[0] in PACKAGES}


def test_the_model_free_agent_loads_no_world_model():
    loaded = _modules_loaded_by("import agents.drqv2")
    assert "agents.drqv2" in loaded
    assert not {m for m in loaded if m.startswith(("world_model", "mbrl"))}, sorted(loaded)


def test_a_model_free_run_loads_no_world_model():
    # what `python -m mbrl.train world_model=none` imports before it trains
    loaded = _modules_loaded_by("import mbrl.train, mbrl.trainer")
    assert "mbrl.trainer" in loaded
    assert not {m for m in loaded if m.startswith("world_model")}, sorted(loaded)


def test_one_world_model_module_does_not_load_the_rest():
    loaded = _modules_loaded_by("import world_model.layout")
    assert "world_model.layout" in loaded
    assert not {m for m in loaded if m.startswith(("world_model.tokenizer", "world_model.transformer"))}
