"""The tree passes ruff at the version pyproject.toml pins, with its settings (pycodestyle, pyflakes, import order).

Pinned because each ruff release adds rules: an unpinned ruff reported 153 findings of rules newer than the code
(docs/architecture.md, "Lint")."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], capture_output=True, text=True, cwd=ROOT, check=False)


def test_the_tree_passes_ruff_at_the_pinned_version():
    pinned = re.search(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    version = _ruff("--version")
    assert version.returncode == 0, f"ruff is not installed here: pip install -e '.[test]' ({version.stderr.strip()})"
    assert version.stdout.split()[-1] == pinned, f"ruff {version.stdout.strip()} is installed; pyproject.toml pins {pinned}"
    result = _ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr
