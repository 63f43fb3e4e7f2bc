import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"          # copies of ../shared/oracles and ../shared/reference
GUIDE_LAB = ROOT / "src" / "podnet" / "examples" / "guide-lab"
ORACLES = DATA / "oracles"
REFERENCE = DATA / "reference"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def manifest(tmp_path):
    """manifest("name.yaml", yaml_text) -> path, in a per-test directory."""
    def make(name: str, text: str) -> Path:
        return write(tmp_path, name, text)
    return make


def run_podnet(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "podnet", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


needs_netns = pytest.mark.skipif(not (is_root() and have("ip")),
                                 reason="needs root and iproute2 (runs in CI as root)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "netns" in item.keywords and not (is_root() and have("ip")):
            item.add_marker(pytest.mark.skip(reason="needs root and network namespaces"))
