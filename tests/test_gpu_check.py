"""``benchmarks/gpu_check.py`` works before it meets a GPU: its dry run on the CPU runs every
section it can and writes the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_dry_run_reports_every_section_it_runs(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"]
    command += ["--skip", "tests", "models", "--report", str(report)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    text = report.read_text()
    for section in ("## env", "## iwrm", "## dual_cone", "## syncs"):
        assert section in text
    assert "exit 0" in text and "stopped" not in text
    # The sync cases run on the CPU: their host reads counted, the debug mode's syncs not.
    assert "| autogram + UPGrad, MLP, B = 64 | off |" in text
    assert "needs CUDA" in text
