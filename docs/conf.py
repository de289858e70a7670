"""Sphinx configuration of jdopt's documentation site (``pip install -e ".[docs]"``, then
``sphinx-build -W -b html docs docs/_build/html``).

Why Sphinx (with autodoc, autosummary and napoleon) and furo rather than MkDocs Material: the
docstrings are already reStructuredText with Google-style sections, which autodoc and napoleon
read as they are (the whole API builds without a warning); autosummary gives every public name
its own page from one list (``api.rst``), which a test keeps complete; and Sphinx is what
PyTorch's own documentation uses, so its cross-references read as users expect. Two small
dependencies (the ``docs`` extra), no plugins.
"""

from __future__ import annotations

import jdopt

project = "jdopt"
author = "The jdopt developers"
copyright = "2026, The jdopt developers"
release = version = jdopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"jdopt {release}"
