"""The README's quick start and code blocks stay true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_quick_start_has_exactly_two_commands() -> None:
    block = README.split("<!-- quick-start -->", 1)[1]
    commands = _blocks("bash")[0].strip().splitlines()
    assert block.lstrip().startswith("```bash")
    assert len(commands) == 2
    assert commands[0].endswith("python examples/quickstart.py")
    assert commands[1].endswith("pytest")
    for command in commands:  # a pinned torch first: never a multi-GB CUDA build by accident
        assert command.startswith("pip install torch==")


def test_ci_runs_the_readme_test_command() -> None:
    script = ROOT / ".ci" / "run"
    extract = re.search(r"test_command=\$\((.*)\)\n", script.read_text()).group(1)
    found = subprocess.run(
        ["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == _blocks("bash")[0].strip().splitlines()[1]


# ```python blocks are complete programs, run here; ```py blocks are fragments that need a
# process group (the DDP section): examples/ddp_iwrm.py, run by the example tests, is whole.
@pytest.mark.parametrize("code", _blocks("python"))
def test_python_blocks_run(code: str) -> None:
    exec(compile(code, "README.md", "exec"), {})
