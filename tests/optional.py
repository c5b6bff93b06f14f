"""What some tests need beyond the dev extra, and how to get it.

`needs(name)` skips a test whose requirement is missing, with a reason that says how to get it;
tests/conftest.py prints, at the end of every pytest run, each skip reason with its count, so a
plain `python -m pytest` never skips silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real photos that integration tests and benchmarks use: beside the repository, or where
# VAELAB_CCP_FIGURES points.
CCP_FIGURES = Path(os.environ.get("VAELAB_CCP_FIGURES") or REPO.parent / "shared" / "data" / "ccp-figures")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

HOW = {
    "chromium": "headless Chromium renders the HTML report; install it with `bash .ci/install-chromium.sh` "
                "(Debian's chromium package; CI runs it)",
    "ccp-figures": f"the data set was not found at {CCP_FIGURES}; put the ccp-figures folder there (600 photos "
                   "from github.com/bearpaw/clothing-co-parsing in images/, with metadata.json; see its README) "
                   "or set VAELAB_CCP_FIGURES to the folder",
}


def present(name: str) -> bool:
    if name == "chromium":
        return CHROMIUM is not None
    if name == "ccp-figures":
        return (CCP_FIGURES / "metadata.json").is_file()
    raise KeyError(name)


def needs(name: str) -> pytest.MarkDecorator:
    """A skip marker: skip when `name` is missing, saying how to get it."""
    return pytest.mark.skipif(not present(name), reason=f"missing {name}: {HOW[name]}")
