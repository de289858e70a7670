"""``benchmarks/models.py``'s models at their tiny sizes (same code as the benchmark)."""

from __future__ import annotations

from torch import nn

from benchmarks import _zoo as benchmark

from ._architecture import Architecture
from ._inputs import indices, randn

_IMAGE = benchmark.RESNET["tiny"].image

BENCHMARK_ARCHITECTURES: list[Architecture] = [
    Architecture(
        "benchmark_resnet18_groupnorm_inplace",
        lambda: benchmark.resnet18("tiny"),
        randn(3, _IMAGE, _IMAGE),
    ),
    Architecture(
        "benchmark_multitask_resnet18_inplace",
        lambda: benchmark.MultiTaskResNet18("tiny"),
        randn(3, _IMAGE, _IMAGE),
    ),
    Architecture(
        "benchmark_transformer_encoder",
        lambda: benchmark.TransformerClassifier("tiny"),
        indices(benchmark.TRANSFORMER["tiny"].length),
    ),
    Architecture(
        "benchmark_gpt_decoder",
        lambda: benchmark.CausalDecoder("tiny"),
        indices(benchmark.TRANSFORMER["tiny"].length),
    ),
    Architecture(
        "benchmark_gru",
        lambda: benchmark.RecurrentClassifier(nn.GRU, "tiny"),
        indices(benchmark.RECURRENT["tiny"].length),
    ),
    Architecture(
        "benchmark_lstm",
        lambda: benchmark.RecurrentClassifier(nn.LSTM, "tiny"),
        indices(benchmark.RECURRENT["tiny"].length),
    ),
]
