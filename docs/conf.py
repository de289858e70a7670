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

# The examples' pictures and printed output, made by running them at build time (small sizes)
# into docs/_generated, which examples.rst shows: the site cannot show stale results.
RUNS = {
    "quickstart": ["--epochs", "2", "--plot", "{out}/quickstart.png"],
    "compare_methods": ["--steps", "150", "--plot", "{out}/compare_methods.png"],
    "pareto_toy": ["--steps", "200", "--plot", "{out}/pareto_toy.png"],
    "multi_task": ["--epochs", "5", "--samples", "256"],
    "iwrm_autogram": ["--steps", "50"],
    "partial_autogram": ["--steps", "50"],
    "iwmtl_autogram": ["--steps", "50"],
    "ddp_iwrm": ["--steps", "20"],
}


def _run_examples(app) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(app.srcdir)
    out = root / "_generated"
    out.mkdir(exist_ok=True)
    for name, arguments in RUNS.items():
        command = [sys.executable, str(root.parent / "examples" / f"{name}.py")]
        command += [a.format(out=out) for a in arguments]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=out)
        (out / f"{name}.txt").write_text(done.stdout)


def setup(app) -> None:
    app.connect("builder-inited", _run_examples)
