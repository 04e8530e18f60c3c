"""Upper bounds pinned because a private API of that library is used (see the comment in pyproject.toml).

accelerate: ``deepgen.train.accelerate_setup.build_accelerator`` drops accelerate's process-wide state with
``AcceleratorState._reset_state`` (accelerate has no public way), so a ComfyUI node or a test can build
accelerators of different precisions in one process.  Tested range: 1.10 <= accelerate < 1.17 (CI: 1.16.0).
"""

from __future__ import annotations

import inspect
import sys
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # a dependency below 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TESTED = {"accelerate": ">=1.10,<1.17"}


def declared(name: str) -> dict[str, str]:
    """The version specifier of ``name`` in pyproject.toml and in requirements.txt."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.split("#")[0].strip() for line in lines]
    found = {}
    for where, specs in (("pyproject.toml", pyproject), ("requirements.txt", requirements)):
        found[where] = next(str(r.specifier) for r in map(Requirement, filter(None, specs)) if r.name == name)
    return found


def test_pinned_libraries_match_the_tested_range():
    for name, tested in TESTED.items():
        spec = Requirement(f"{name}{tested}").specifier
        assert {where: Requirement(f"{name}{s}").specifier for where, s in declared(name).items()} == {
            "pyproject.toml": spec,
            "requirements.txt": spec,
        }
        assert spec.contains(version(name)), f"installed {name} {version(name)} is outside the tested {tested}"


def test_the_private_accelerate_api_is_still_there():
    from accelerate.state import AcceleratorState, PartialState, is_initialized

    assert "reset_partial_state" in inspect.signature(AcceleratorState._reset_state).parameters
    assert callable(is_initialized) and isinstance(PartialState.initialized, property)
