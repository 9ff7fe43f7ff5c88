"""The private members of Ray and Optuna we rely on exist in the installed versions, every one our
subclasses use is listed in sslsearch.search.framework, and a missing one is refused in one line."""

from __future__ import annotations

import ast
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sslsearch.errors import InputError
from sslsearch.search import framework

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_ray_has_every_member_we_use():
    assert framework.missing_members() == []


def test_a_member_that_disappears_is_refused_in_one_line(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.delattr(TuneController, "_mark_trial_to_checkpoint")
    assert framework.missing_members() == ["ray.tune.execution.tune_controller.TuneController._mark_trial_to_checkpoint"]
    with pytest.raises(InputError, match="lacks .*_mark_trial_to_checkpoint.*pyproject.toml") as refused:
        framework.check()
    assert "\n" not in str(refused.value)


def _inherited_privates(path: Path, class_name: str) -> set[str]:
    """`self._x` names a class reads but neither assigns nor defines: they come from its base class."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    defined = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assigned, used = set(), set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                (assigned if isinstance(node.ctx, ast.Store) else used).add(node.attr)
    return used - assigned - defined


def test_every_private_member_our_searcher_inherits_is_listed():
    listed = {member for _, member, _ in framework.OPTUNA_SEARCH_MEMBERS}
    inherited = _inherited_privates(ROOT / "sslsearch" / "search" / "sweep.py", "SweepSearcher")
    assert inherited <= listed, inherited - listed
    assert inherited, "the scan found nothing: it no longer sees the searcher's code"


def test_every_controller_member_we_call_is_listed():
    source = (ROOT / "sslsearch" / "search" / "asha.py").read_text()
    for _, member, _ in framework.CONTROLLER_MEMBERS:
        assert member in source
    used = {name for name in ("_mark_trial_to_checkpoint",) if name in source}
    assert used <= {member for _, member, _ in framework.CONTROLLER_MEMBERS}


@pytest.mark.parametrize("package", ["ray", "optuna"])
def test_pyproject_bounds_admit_the_installed_version_and_have_an_upper_bound(package):
    text = (ROOT / "pyproject.toml").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith(f'"{package}'))
    requirement = Requirement(line.split('"')[1])
    assert requirement.specifier.contains(version(package))
    assert any(spec.operator in ("<", "<=") for spec in requirement.specifier)
