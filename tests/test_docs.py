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


GUIDES = sorted((API.parent / "guides").glob("*.rst"))


def _code_blocks(path: Path) -> list[str]:
    """The ``.. code-block:: python`` blocks of an RST file, dedented, in order."""
    blocks, current, inside = [], [], False
    for line in [*path.read_text().splitlines(), "END"]:
        if inside and (not line.strip() or line.startswith("    ")):
            current.append(line[4:])
            continue
        if inside:
            blocks.append("\n".join(current).strip() + "\n")
            current, inside = [], False
        if line.strip() == ".. code-block:: python":
            inside = True
    return blocks


def test_every_guide_is_in_the_site_and_most_have_code() -> None:
    index = (API.parent / "index.rst").read_text()
    for guide in GUIDES:
        assert f"guides/{guide.stem}" in index, f"{guide.name} is not in docs/index.rst"
    with_code = [guide for guide in GUIDES if _code_blocks(guide)]
    assert len(with_code) >= len(GUIDES) - 2, "guides show runnable code"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.stem)
def test_every_code_block_of_a_guide_runs(guide: Path, tmp_path: Path, monkeypatch) -> None:
    """The blocks of a guide run in order, in one namespace, as a reader would run them."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"guide_{guide.stem}"}
    for number, block in enumerate(_code_blocks(guide), 1):
        try:
            exec(compile(block, f"{guide.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{guide.name}, code block {number} failed: {error!r}") from error


def test_every_example_script_is_shown_in_the_site() -> None:
    shown = (API.parent / "examples.rst").read_text()
    scripts = sorted((API.parent.parent / "examples").glob("[!_]*.py"))
    assert scripts
    for script in scripts:
        assert f".. literalinclude:: ../examples/{script.name}" in shown, script.name
        assert f".. literalinclude:: _generated/{script.stem}.txt" in shown, script.name
