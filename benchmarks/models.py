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
        [--warmup 5] [--device cpu] [--threads N] [--dropout P] [--no-memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__:  # imported as benchmarks.models, by the test zoo
    from ._memory import measure_in_subprocess, peak_growth_bytes
    from ._timing import interleaved_medians
else:  # run as a script: its folder is on the path
    from _memory import measure_in_subprocess, peak_growth_bytes
    from _timing import interleaved_medians

from jdopt import JDOptimizer
from jdopt.aggregation import Mean, UPGrad


# ------------------------------------------------------------------------------------ sizes
@dataclasses.dataclass(frozen=True)
class ConvSize:
    width: int  # channels of the first stage (64 in ResNet-18)
    groups: int  # GroupNorm groups, at most the channels
    image: int  # input height and width
    classes: int


@dataclasses.dataclass(frozen=True)
class SequenceSize:
    vocabulary: int
    length: int  # T
    width: int  # d_model, or embedding and hidden size of a recurrent model
    heads: int = 1
    feedforward: int = 1
    layers: int = 1
    classes: int = 10
    dropout: float = 0.1  # nn.TransformerEncoderLayer's default


RESNET = {"full": ConvSize(64, 32, 32, 10), "tiny": ConvSize(1, 2, 8, 3)}
TRANSFORMER = {
    "full": SequenceSize(1000, 64, 256, heads=4, feedforward=1024, layers=4),
    "tiny": SequenceSize(7, 5, 4, heads=2, feedforward=6, layers=2, classes=3),
}
RECURRENT = {"full": SequenceSize(1000, 32, 128), "tiny": SequenceSize(7, 4, 3, classes=2)}
TASKS = 3


# ----------------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with GroupNorm for BatchNorm."""

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(min(groups, planes), planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(min(groups, planes), planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.GroupNorm(min(groups, planes), planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18Trunk(nn.Module):
    """ResNet-18 for 32×32 images (3×3 stem, no max-pool), pooled features ``[B, 8·width]``."""

    def __init__(self, size: ConvSize) -> None:
        super().__init__()
        w, g = size.width, size.groups
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(min(g, w), w)
        self.relu = nn.ReLU(inplace=True)
        stages = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        self.layers = nn.Sequential(
            *(nn.Sequential(BasicBlock(i, o, s, g), BasicBlock(o, o, 1, g)) for i, o, s in stages)
        )
        self.out_features = 8 * w

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def resnet18(size: str = "full") -> nn.Module:
    trunk = ResNet18Trunk(RESNET[size])
    return nn.Sequential(trunk, nn.Linear(trunk.out_features, RESNET[size].classes))


class MultiTaskResNet18(nn.Module):
    """The ResNet-18 trunk with one linear head per task; returns the heads' outputs."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(RESNET[size])
        classes = RESNET[size].classes
        self.heads = nn.ModuleList(
            nn.Linear(self.trunk.out_features, classes) for _ in range(TASKS)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.trunk(x)
        return tuple(head(features) for head in self.heads)


class _Blocks(nn.Module):
    """Token and learned position embeddings, then ``layers`` Transformer encoder layers."""

    def __init__(self, size: SequenceSize) -> None:
        super().__init__()
        self.tokens = nn.Embedding(size.vocabulary, size.width)
        self.positions = nn.Embedding(size.length, size.width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=size.width,
                nhead=size.heads,
                dim_feedforward=size.feedforward,
                dropout=size.dropout,
                batch_first=True,
            )
            for _ in range(size.layers)
        )

    def forward(self, idx: Tensor, causal: bool = False) -> Tensor:  # idx: [B, T]
        # Positions [B, T], not [T]: jdopt's engine needs the batch on every hooked input.
        positions = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        h = self.tokens(idx) + self.positions(positions)
        mask = None
        if causal:
            mask = nn.Transformer.generate_square_subsequent_mask(
                idx.shape[1], device=idx.device, dtype=h.dtype
            )
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=causal)
        return h  # [B, T, d]


class TransformerClassifier(nn.Module):
    """A Transformer encoder on tokens, mean-pooled, then a linear classifier."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.blocks = _Blocks(TRANSFORMER[size])
        self.head = nn.Linear(TRANSFORMER[size].width, TRANSFORMER[size].classes)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.blocks(idx).mean(dim=1))


class CausalDecoder(nn.Module):
    """GPT-style: the same layers under a causal mask, next-token logits ``[B, T, vocabulary]``."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.blocks = _Blocks(TRANSFORMER[size])
        self.head = nn.Linear(TRANSFORMER[size].width, TRANSFORMER[size].vocabulary)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.blocks(idx, causal=True))


class RecurrentClassifier(nn.Module):
    """Embedding, a GRU or LSTM layer, and a classifier on the last output."""

    def __init__(self, kind: type[nn.RNNBase], size: str = "full") -> None:
        super().__init__()
        s = RECURRENT[size]
        self.embedding = nn.Embedding(s.vocabulary, s.width)
        self.rnn = kind(s.width, s.width, batch_first=True)
        self.head = nn.Linear(s.width, s.classes)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])


# ------------------------------------------------------------------------ benchmark set-ups
Batch = tuple[Tensor, Tensor]  # inputs, targets


@dataclasses.dataclass(frozen=True)
class Setup:
    """A model with its data and its per-sample losses ``[B]`` (``None``: task losses)."""

    build: Callable[[], nn.Module]
    batch: Callable[[int, torch.Generator], Batch]
    losses: Callable[[nn.Module, Tensor, Tensor], Tensor] | None


def _images(batch: int, g: torch.Generator) -> Batch:
    s = RESNET["full"]
    x = torch.randn(batch, 3, s.image, s.image, generator=g)
    return x, torch.randint(0, s.classes, (batch, TASKS), generator=g)


def _tokens(size: SequenceSize) -> Callable[[int, torch.Generator], Batch]:
    def make(batch: int, g: torch.Generator) -> Batch:
        idx = torch.randint(0, size.vocabulary, (batch, size.length), generator=g)
        return idx, torch.randint(0, size.classes, (batch,), generator=g)

    return make


def _text(batch: int, g: torch.Generator) -> Batch:
    s = TRANSFORMER["full"]
    idx = torch.randint(0, s.vocabulary, (batch, s.length + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _classification(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y.reshape(len(y), -1)[:, 0], reduction="none")


def _next_token(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One loss per sequence: the mean cross-entropy of its tokens."""
    logits = model(x)  # [B, T, V]
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)


def task_losses(model: MultiTaskResNet18, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
    features = model.trunk(x)
    losses = [F.cross_entropy(h(features), y[:, i]) for i, h in enumerate(model.heads)]
    return losses, features


SETUPS: dict[str, Setup] = {
    "resnet18": Setup(resnet18, _images, _classification),
    "transformer": Setup(TransformerClassifier, _tokens(TRANSFORMER["full"]), _classification),
    "gpt": Setup(CausalDecoder, _text, _next_token),
    "gru": Setup(lambda: RecurrentClassifier(nn.GRU), _tokens(RECURRENT["full"]), _classification),
    "lstm": Setup(
        lambda: RecurrentClassifier(nn.LSTM), _tokens(RECURRENT["full"]), _classification
    ),
    "multitask": Setup(MultiTaskResNet18, _images, None),
}


# ------------------------------------------------------------------------------------ steps
Step = Callable[[], None]


def make_steps(name: str, batch: int, device: str) -> tuple[dict[str, Step], dict[str, Step | str]]:
    """The steps timed together, and TorchJD's (timed apart; or why it refused), each on its
    own copy of the same model."""
    setup = SETUPS[name]
    torch.manual_seed(0)
    model = setup.build().to(device)
    x, y = (t.to(device) for t in setup.batch(batch, torch.Generator().manual_seed(1)))
    if setup.losses is None:
        steps = {"plain": _plain_multitask(copy.deepcopy(model), x, y)}
        for key, aggregator, trunk in [("upgrad", UPGrad(), True), ("mean", Mean(), True),
                                       ("upgrad_autojac", UPGrad(), False)]:  # fmt: skip
            steps[key] = _jd_multitask(copy.deepcopy(model), x, y, aggregator, trunk)
        other = _torchjd_multitask(copy.deepcopy(model), x, y)
    else:
        losses = setup.losses
        steps = {"plain": _plain(copy.deepcopy(model), x, y, losses)}
        for key, aggregator in [("upgrad", UPGrad()), ("mean", Mean())]:
            steps[key] = _jd(copy.deepcopy(model), x, y, losses, aggregator)
        other = _torchjd(copy.deepcopy(model), x, y, losses)
    return steps, {"torchjd": other} if other is not None else {}


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3)


def _plain(model: nn.Module, x: Tensor, y: Tensor, losses: Callable) -> Step:
    optimizer = _sgd(model)

    def step() -> None:
        optimizer.zero_grad()
        losses(model, x, y).mean().backward()
        optimizer.step()

    return step


def _jd(model: nn.Module, x: Tensor, y: Tensor, losses: Callable, aggregator) -> Step:
    jd = JDOptimizer(_sgd(model), aggregator=aggregator, model=model, batch_dim=0)

    def step() -> None:
        jd.zero_grad()
        jd.step(losses(model, x, y))

    step.optimizer = jd  # type: ignore[attr-defined]  # to read the engine it used
    return step


def _plain_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor) -> Step:
    optimizer = _sgd(model)

    def step() -> None:
        optimizer.zero_grad()
        torch.stack(task_losses(model, x, y)[0]).sum().backward()
        optimizer.step()

    return step


def _jd_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor, aggregator, trunk: bool) -> Step:
    jd = JDOptimizer(_sgd(model), aggregator=aggregator, model=model.trunk if trunk else None)

    def step() -> None:
        jd.zero_grad()
        losses, features = task_losses(model, x, y)
        jd.step(losses, features=features)

    step.optimizer = jd  # type: ignore[attr-defined]
    return step


def _torchjd(model: nn.Module, x: Tensor, y: Tensor, losses: Callable) -> Step | str | None:
    """TorchJD's autogram Engine + UPGradWeighting; ``None`` when not installed, the error's
    text when it refuses the model (at construction or on a first step)."""
    try:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine
    except ImportError:
        return None
    optimizer = _sgd(model)
    weighting = UPGradWeighting()
    try:
        engine = Engine(model, batch_dim=0)
    except Exception as error:
        return _refusal(error)

    def step() -> None:
        optimizer.zero_grad()
        values = losses(model, x, y)
        values.backward(weighting(engine.compute_gramian(values)))
        optimizer.step()

    return _tried(step)


def _torchjd_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor) -> Step | str | None:
    """TorchJD's ``mtl_backward`` then ``jac_to_grad`` with UPGrad on the trunk."""
    try:
        from torchjd.aggregation import UPGrad as TorchJDUPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:
        return None
    optimizer = _sgd(model)
    aggregator, shared = TorchJDUPGrad(), list(model.trunk.parameters())

    def step() -> None:
        optimizer.zero_grad()
        losses, features = task_losses(model, x, y)
        mtl_backward(losses, features=features)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return _tried(step)


def _tried(step: Step) -> Step | str:
    try:
        step()
    except Exception as error:
        return _refusal(error)
    return step


def _refusal(error: Exception) -> str:
    return f"refuses: {type(error).__name__}: {str(error).splitlines()[0][:160]}"


def _synced(step: Step, device: str) -> Step:
    """The step between two device synchronisations, so that its time is the device's."""
    if not device.startswith("cuda"):
        return step

    def synced() -> None:
        torch.cuda.synchronize()
        step()
        torch.cuda.synchronize()

    return synced


# ------------------------------------------------------------------------------------- main
def measure(name: str, args: argparse.Namespace) -> dict:
    """Times (ms), ratios, engines and peak memory (MB) of every variant on one model."""
    steps, other = make_steps(name, args.batch, args.device)
    timed = {key: _synced(step, args.device) for key, step in steps.items()}
    times = interleaved_medians(timed, repeats=args.repeats, warmup=args.warmup)
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
        pair = {"plain": timed["plain"], "torchjd": _synced(torchjd, args.device)}
        pair_times = interleaved_medians(
            pair, repeats=max(args.repeats // 2, 3), warmup=min(args.warmup, 2)
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
    parser.add_argument("--device", default="cpu")
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
