"""Jacobian descent on real models vs a plain SGD step: the yardstick for performance work.

Models: ResNet-18 with GroupNorm (3×32×32, 10 classes), a Transformer encoder classifier and a
GPT-style causal decoder (4 layers, d 256, 4 heads, FF 1024, T 64), GRU and LSTM classifiers
(embedding and hidden 128, T 32), and a multi-task ResNet-18 trunk with 3 linear heads. Every
model takes a size (``"full"`` here, ``"tiny"`` in the test zoo: same code, a few thousand
parameters at most).

Per model, timed interleaved in one process (medians after warm-up): a plain SGD step on the
mean loss (the sum of the task losses for multi-task), ``JDOptimizer`` with UPGrad and with
Mean on per-sample losses (``model=..., batch_dim=0``; multi-task: task losses with
``features=`` and ``model=trunk``, plus UPGrad without ``model``: the full Jacobian), and the
engine each JD step used. TorchJD 0.18's autogram Engine with UPGradWeighting (multi-task:
``mtl_backward`` and ``jac_to_grad``) is timed in a second round against the plain step, when
installed, and reported scaled to the first round's plain step; a model it refuses is reported
with the error. Peak memory of each variant is measured in a fresh process (see _memory.py).

    python benchmarks/models.py [--models resnet18 transformer ...] [--batch 32] [--repeats 10]
        [--warmup 5] [--device DEVICE] [--threads N] [--dropout P] [--no-memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

if __package__:  # imported as benchmarks.models
    from ._memory import measure_in_subprocess, peak_growth_bytes
    from ._setups import SETUPS
    from ._steps import make_steps
    from ._timing import add_device_argument, interleaved_medians
    from ._zoo import TRANSFORMER
else:  # run as a script: its folder is on the path
    from _memory import measure_in_subprocess, peak_growth_bytes
    from _setups import SETUPS
    from _steps import make_steps
    from _timing import add_device_argument, interleaved_medians
    from _zoo import TRANSFORMER


def measure(name: str, args: argparse.Namespace) -> dict:
    """Times (ms), ratios, engines and peak memory (MB) of every variant on one model."""
    steps, other = make_steps(name, args.batch, args.device)
    times = interleaved_medians(steps, repeats=args.repeats, warmup=args.warmup, device=args.device)
    plain = times["plain"]
    result: dict = {"model": name, "batch": args.batch, "plain_ms": plain * 1e3}
    if name in ("transformer", "gpt"):
        result["dropout"] = TRANSFORMER["full"].dropout
    for key in steps:
        if key != "plain":
            result[key] = {"ms": times[key] * 1e3, "ratio": times[key] / plain}
            result[key]["engine"] = steps[key].optimizer.last_step.engine
    torchjd = other.get("torchjd")
    if isinstance(torchjd, str):
        result["torchjd"] = {"refused": torchjd}
    elif torchjd is not None:  # timed apart: its memory traffic would slow the others down
        pair = {"plain": steps["plain"], "torchjd": torchjd}
        pair_times = interleaved_medians(
            pair,
            repeats=max(args.repeats // 2, 3),
            warmup=min(args.warmup, 2),
            device=args.device,
        )
        ratio = pair_times["torchjd"] / pair_times["plain"]
        result["torchjd"] = {"ms": ratio * plain * 1e3, "ratio": ratio}
    if not args.no_memory:
        result["memory_mb"] = {
            key: _memory(name, key, args) / 2**20 for key in [*steps, *other]
            if not isinstance(other.get(key), str)
        }  # fmt: skip
    return result


def _memory(name: str, key: str, args: argparse.Namespace) -> int:
    options = ["--batch", str(args.batch), "--device", args.device]
    if args.dropout is not None:
        options += ["--dropout", str(args.dropout)]
    if args.threads is not None:
        options += ["--threads", str(args.threads)]
    return measure_in_subprocess(__file__, ["--memory-of", name, key, *options])


def _memory_of(name: str, key: str, args: argparse.Namespace) -> None:
    steps, other = make_steps(name, args.batch, args.device)
    step = {**steps, **other}[key]
    print(json.dumps({"bytes": peak_growth_bytes(step, args.device, repeats=1)}))


def _cell(result: dict, key: str) -> str:
    entry = result.get(key)
    if entry is None:
        return "—"
    if "refused" in entry:
        return entry["refused"]
    engine = f" {entry['engine']}" if "engine" in entry else ""
    return f"{entry['ms']:.0f} ms ({entry['ratio']:.2f}x{engine})"


def report(result: dict) -> str:
    lines = [f"{result['model']} (B = {result['batch']}): plain {result['plain_ms']:.1f} ms"]
    for key, label in [("upgrad", "jdopt UPGrad"), ("mean", "jdopt Mean"),
                       ("upgrad_autojac", "jdopt UPGrad, no model"),
                       ("torchjd", "TorchJD 0.18")]:  # fmt: skip
        if key in result:
            lines.append(f"  {label:<24} {_cell(result, key)}")
    if "memory_mb" in result:
        memory = ", ".join(f"{k} {v:.0f}" for k, v in result["memory_mb"].items())
        lines.append(f"  peak memory growth (MB): {memory}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the results there")
    parser.add_argument("--dropout", type=float, help="of the Transformers' layers (0.1)")
    parser.add_argument("--memory-of", nargs=2, metavar=("MODEL", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.dropout is not None:  # TorchJD's engine refuses random operations under vmap
        TRANSFORMER["full"] = dataclasses.replace(TRANSFORMER["full"], dropout=args.dropout)
    if args.memory_of:
        _memory_of(*args.memory_of, args)
        return
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"Transformer dropout {TRANSFORMER['full'].dropout}")
    print("medians; ratios to the plain step; the engine each JD step used", flush=True)
    results = []
    for name in args.models:
        results.append(measure(name, args))
        print(report(results[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
