"""The layer contract in pyproject.toml ([tool.importlinter]): config -> data -> model -> train ->
runs -> experiments -> cli, each importing only from the layers below it (errors and files are the
base). Checked with import-linter on the package as it is, and on a copy with one upward import
added, so the check is known to fail when the rule is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def lint(source_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def linter():
    if LINT is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    return LINT


def test_the_package_keeps_its_layers(linter):
    result = lint(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(linter, tmp_path):
    shutil.copytree(ROOT / "src" / "vaelab", tmp_path / "src" / "vaelab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    images = tmp_path / "src" / "vaelab" / "data" / "images.py"
    images.write_text(images.read_text(encoding="utf-8") + "\nfrom vaelab.runs import session  # upward\n",
                      encoding="utf-8")
    result = lint(tmp_path / "src", tmp_path)
    assert result.returncode != 0
    assert "vaelab.data.images -> vaelab.runs.session" in result.stdout
