"""The rooms import one way (DESIGN.md, "Layers"): pyproject's import-linter contracts hold.

import-linter finds a package's modules by walking the one directory the package imports from. In
this checkout the rooms live beside ``sepconv/`` (pyproject's ``package-dir`` maps them into it),
so the contracts are checked on the layout a wheel installs: a ``sepconv/`` of symlinks to
``sepconv/*`` and to every mapped room, in a fresh process that imports ``sepconv`` from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

_LINT = textwrap.dedent(
    """
    import importlib.util
    import sys
    from importlinter.cli import lint_imports
    # The package import-linter walks must be the laid-out one, not this checkout's sepconv/.
    where = importlib.util.find_spec("sepconv").submodule_search_locations
    assert list(where) == [sys.argv[2]], f"sepconv imports from {list(where)}, not {sys.argv[2]}"
    sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))
    """
)


def installed_layout(dest: Path) -> Path:
    """Lay the package out under ``dest`` as a wheel does, with symlinks; return ``dest``."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    package = dest / "sepconv"
    package.mkdir()
    for entry in (ROOT / mapping["sepconv"]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, source in mapping.items():
        if name == "sepconv":
            continue
        room = name.removeprefix("sepconv.")
        assert "." not in room, f"package-dir {name}: only rooms directly under sepconv/"
        (package / room).symlink_to(ROOT / source, target_is_directory=True)
    return dest


def test_imports_point_one_way(tmp_path):
    layout = installed_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(layout), "NO_COLOR": "1", "TERM": "dumb"}
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-c", _LINT, str(PYPROJECT), str(layout / "sepconv")],
        cwd=layout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            "an import crosses the layers of pyproject's [tool.importlinter] (DESIGN.md, "
            "'Layers': errors/timing → models, targets → schedules → compiler → api/cli/bench). "
            "Move the code to the room that owns it, or the import below the line, rather than "
            "loosening the contract.\n" + proc.stdout + proc.stderr,
            pytrace=False,
        )
