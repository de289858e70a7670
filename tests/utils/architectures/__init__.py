"""A zoo of small float64 architectures for the Gramian engine's tests.

Each :class:`Architecture` builds a seeded model, a batch of inputs (``BATCH`` samples) and the
per-sample outputs ``[BATCH, d]`` of one forward pass. Every model treats the samples of a batch
independently, with the batch on the first dimension of each hooked module's input (the engine's
contract for ``batch_dim=0``), and is in training mode.

The models live in one module per family (dense, convolutions, attention, embeddings and
recurrent layers, several inputs or outputs, shared and frozen parameters, in-place operations,
torchvision-style blocks); ``_registry`` lists them, in a fixed order, as ``ARCHITECTURES``.
"""

from ._architecture import BATCH, VOCABULARY, Architecture, trainable_parameters
from ._registry import ARCHITECTURES

__all__ = ["ARCHITECTURES", "BATCH", "VOCABULARY", "Architecture", "trainable_parameters"]
