"""The zoo: every architecture, in the order of the test ids."""

from __future__ import annotations

from torch import nn

from . import _attention as attention
from . import _convolutions as conv
from . import _dense as dense
from . import _embeddings as embeddings
from . import _in_place as in_place
from . import _multi_io as multi_io
from . import _parameters as parameters
from . import _vision as vision
from ._architecture import Architecture
from ._benchmark import BENCHMARK_ARCHITECTURES
from ._inputs import indices, pair, randn, two_inputs

ARCHITECTURES: list[Architecture] = [
    Architecture("mlp", dense.mlp, randn(5)),
    Architecture("deep_mlp_tanh", dense.deep_mlp_tanh, randn(4)),
    Architecture("cnn", conv.cnn, randn(2, 6, 6)),
    Architecture("conv_strided_dilated_grouped", conv.conv_strided_dilated_grouped, randn(4, 7, 5)),
    Architecture("conv_same_reflect", conv.conv_same_reflect, randn(2, 5, 6)),
    Architecture("conv_circular_replicate", conv.conv_circular, randn(2, 6, 5)),
    Architecture("conv1d_sequence", conv.Conv1dSequence, randn(3, 9)),
    Architecture("resnet_block_groupnorm", conv.ResidualBlock, randn(2, 4, 4)),
    Architecture("layernorm_mlp", dense.layernorm_mlp, randn(5)),
    Architecture("rmsnorm_mlp", dense.rmsnorm_mlp, randn(5)),
    Architecture("transformer_encoder", attention.Transformer, randn(3, 3)),
    Architecture("transformer_decoder", attention.Decoder, pair((3, 4), (2, 4))),
    Architecture("attention_batch_first", attention.AttentionBatchFirst, randn(3, 3)),
    Architecture("attention_sequence_first", attention.AttentionSequenceFirst, randn(3, 3)),
    Architecture("cross_attention_kdim_vdim", attention.CrossAttention, two_inputs),
    Architecture("embedding_mean_pool", embeddings.EmbeddingBag, indices(5)),
    Architecture("embedding_gru", lambda: embeddings.EmbeddingRNN(nn.GRU), indices(4)),
    Architecture("embedding_lstm", lambda: embeddings.EmbeddingRNN(nn.LSTM), indices(4)),
    Architecture("branches", multi_io.Branches, randn(4)),
    Architecture("two_inputs", multi_io.TwoInputs, two_inputs),
    Architecture("two_outputs", multi_io.TwoOutputs, randn(4)),
    Architecture("reused_linear", parameters.ReusedLinear, randn(4)),
    Architecture("tied_embedding_output", parameters.TiedEmbedding, indices(3)),
    Architecture("tied_linears", parameters.TiedLinears, randn(4)),
    Architecture("frozen_and_unused", parameters.FrozenAndUnused, randn(4)),
    Architecture("dropout", dense.dropout, randn(5)),
    Architecture("custom_direct_parameters", parameters.CustomDirectParameters, randn(4)),
    Architecture("siamese_fallback", parameters.Siamese, pair((3,), (3,))),
    Architecture("linear_3d", dense.Linear3d, randn(3, 4)),
    Architecture("flatten", dense.flatten, randn(3, 2, 2)),
    Architecture("mlp_inplace", in_place.mlp_inplace, randn(5)),
    Architecture("resnet_basic_blocks_inplace", vision.ResNet, randn(2, 8, 8)),
    Architecture("alexnet_squeezenet_inplace", vision.alexnet_squeezenet, randn(2, 6, 6)),
    Architecture("mobilenet_v3_inplace", vision.mobilenet_v3, randn(2, 6, 6)),
    Architecture("linear_3d_inplace", in_place.Linear3dInPlace, randn(3, 4)),
    Architecture("embedding_positions_inplace", in_place.EmbeddingPositionsInPlace, indices(5)),
    Architecture("attention_output_inplace", in_place.AttentionOutputInPlace, randn(3, 3)),
    *BENCHMARK_ARCHITECTURES,
]
