"""A plain pytest run says which tests it skipped, what they miss and how to get it (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_skipped_tests_say_what_is_missing_and_how_to_get_it(tmp_path):
    # No ccp-figures where VAELAB_CCP_FIGURES points, no chromium on an empty PATH.
    env = dict(os.environ, VAELAB_CCP_FIGURES=str(tmp_path / "nowhere"), PATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", "ccp or headless",
         str(TESTS / "data" / "test_ccp_figures.py"), str(TESTS / "experiments" / "test_report.py")],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "skipped: what is missing and how to get it" in out
    ccp = next(line for line in out.splitlines() if "missing ccp-figures" in line)
    assert ccp.startswith("2 test(s):") and str(tmp_path / "nowhere") in ccp and "VAELAB_CCP_FIGURES" in ccp
    chromium = next(line for line in out.splitlines() if "missing chromium" in line)
    assert chromium.startswith("1 test(s):") and "bash .ci/install-chromium.sh" in chromium
