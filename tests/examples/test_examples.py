"""Every example runs, with tiny sizes, and does what it claims."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _main(name: str):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


def test_quickstart(tmp_path: Path) -> None:
    plot = tmp_path / "curves.png"
    results = _main("quickstart.py")(["--epochs", "1", "--limit", "96", "--plot", str(plot)])
    assert set(results) == {
        f"{name} {metric}"
        for name in ("JD + UPGrad", "Adam")
        for metric in ("train loss", "test accuracy")
    }
    assert all(math.isfinite(v) for v in results.values())
    assert results["JD + UPGrad train loss"] < math.log(10)  # better than chance after 1 epoch
    assert plot.stat().st_size > 0


def test_multi_task() -> None:
    final = _main("multi_task.py")(["--epochs", "2", "--samples", "64", "--tasks", "3"])
    assert len(final) == 3 and all(math.isfinite(v) for v in final)


def test_pareto_toy(tmp_path: Path) -> None:
    plot = tmp_path / "pareto.png"
    paths = _main("pareto_toy.py")(["--steps", "20", "--plot", str(plot)])
    for name in ("MGDA", "UPGrad"):  # far from the Pareto front, every step improves both
        assert (paths[name].diff(dim=0) <= 0).all(), name
    assert not torch.equal(paths["UPGrad"], paths["MGDA"])
    assert plot.stat().st_size > 0


def _improves(history: list[float]) -> bool:
    return sum(history[-5:]) < sum(history[:5])


def test_iwrm_autogram() -> None:
    assert _improves(_main("iwrm_autogram.py")(["--steps", "30", "--batch", "8"]))


def test_partial_autogram() -> None:
    assert _improves(_main("partial_autogram.py")(["--steps", "30", "--batch", "8"]))


def test_iwmtl_autogram() -> None:
    assert _improves(_main("iwmtl_autogram.py")(["--steps", "30", "--batch", "4", "--tasks", "2"]))


def test_ddp_iwrm_spawns_two_processes_that_stay_identical() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp_iwrm.py"), "--steps", "3", "--batch", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    assert "parameters identical on every process: True" in result.stdout
    assert "shape (8,) (global batch)" in result.stdout


def test_ddp_iwrm_places_each_process_on_its_local_gpu_or_all_on_the_cpu() -> None:
    """NCCL and ``cuda:<local rank>`` when the machine has a GPU per local process; gloo and
    the CPU otherwise (no GPU, or fewer GPUs than processes)."""
    placement = runpy.run_path(str(EXAMPLES / "ddp_iwrm.py"), run_name="example")["placement"]
    assert placement(1, 2, gpus=2) == ("nccl", torch.device("cuda", 1))
    assert placement(3, 4, gpus=8) == ("nccl", torch.device("cuda", 3))
    assert placement(1, 2, gpus=1) == ("gloo", torch.device("cpu"))
    assert placement(0, 1, gpus=0) == ("gloo", torch.device("cpu"))


def test_compare_methods(tmp_path: Path) -> None:
    plot = tmp_path / "compare.png"
    results = _main("compare_methods.py")(["--steps", "3", "--plot", str(plot)])
    assert len(results) >= 12
    assert {"UPGrad", "MGDA", "UW", "FAMO"} <= set(results)
    for final, seconds in results.values():
        assert len(final) == 2 and all(math.isfinite(v) for v in final) and seconds > 0
    # Every method starts from the same model and batches: the methods differ, not the runs.
    # Sum and JD's Mean differ by a factor on the trunk's gradient, which Adam removes.
    assert results["Sum"][0] == pytest.approx(results["Mean (JD)"][0], rel=1e-4)
    assert results["UPGrad"][0] != results["MGDA"][0]
    assert plot.stat().st_size > 0
