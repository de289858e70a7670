"""Token models: an embedding, mean-pooled or read by a recurrent layer."""

from __future__ import annotations

from torch import Tensor, nn

from ._architecture import VOCABULARY


class EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 4, padding_idx=0)
        self.head = nn.Linear(4, 3)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.embedding(idx).mean(dim=1))


class EmbeddingRNN(nn.Module):
    """Embedding and a recurrent layer (the generic fallback), read from the last output."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 3)
        self.rnn = kind(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])
