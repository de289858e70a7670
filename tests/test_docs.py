"""The documentation covers the public API: every public name has a docstring and an entry in
the API reference (``docs/api.rst``, one generated page each). ``.ci/run`` builds the site with
warnings as errors."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API = Path(__file__).resolve().parent.parent / "docs" / "api.rst"
MODULES = ["jdopt", "jdopt.aggregation", "jdopt.scalarization", "jdopt.autogram"]
MODULES += ["jdopt.autojac", "jdopt.distributed"]


def _public() -> list[tuple[str, str]]:
    names = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not isinstance(getattr(module, name), type(importlib)):  # not a subpackage
                names.append((module_name, name))
    return [n for n in names if n[1] != "__version__"]


def _documented() -> set[tuple[str, str]]:
    found, module = set(), None
    for line in API.read_text().splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::")[1].strip()
        elif re.fullmatch(r"   \w+", line) and module is not None:
            found.add((module, line.strip()))
    return found


@pytest.mark.parametrize(("module", "name"), _public(), ids=lambda x: str(x))
def test_every_public_name_has_a_docstring_of_its_own(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    assert (obj.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_every_public_name_has_a_page_in_the_api_reference() -> None:
    missing = set(_public()) - _documented()
    assert not missing, f"add these to docs/api.rst: {sorted(missing)}"
    unknown = _documented() - set(_public())
    assert not unknown, f"docs/api.rst lists names that are not public: {sorted(unknown)}"
