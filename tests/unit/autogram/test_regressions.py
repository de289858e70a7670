"""Regression tests: each is the minimal repro of an engine bug found (and fixed) while the
autogram test suite was written."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine

from ._reference import (
    TOLERANCE,
    accumulated_grads,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)

_F64 = torch.float64
_B = 4


def _randn(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, dtype=_F64, generator=torch.Generator().manual_seed(seed))


def _indices(seed: int = 1) -> Tensor:
    return torch.randint(0, 7, (_B, 3), generator=torch.Generator().manual_seed(seed))


def _assert_exact(engine: Engine, losses: Tensor, params: list[nn.Parameter]) -> None:
    """The Gramian and the weighted gradient both match the row-by-row reference."""
    weights = torch.rand(losses.shape, dtype=_F64, generator=torch.Generator().manual_seed(9))
    gramian = engine.compute_gramian(losses)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    expected = reference_weighted_gradient(losses, weights, params)
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE


# ------------------------------------------------------------------------ 1. scalar losses
def test_scalar_loss_without_batch_dim() -> None:
    """``_generalize`` calls ``reshape(*shape, *shape)``, which fails for ``shape == ()``."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(_F64)
    engine = Engine(model, batch_dim=None)
    loss = (model(_randn(_B, 3)) ** 2).mean()

    gramian = engine.compute_gramian(loss)  # TypeError: reshape() missing 1 required ...

    assert gramian.shape == ()
    assert relative_error(gramian, reference_gramian(loss, list(model.parameters()))) <= 1e-6


def test_scalar_loss_with_batch_dim_raises_a_value_error() -> None:
    """``_plan`` accepts ``batch_dim=0`` for a 0-d tensor, then ``movedim`` raises IndexError."""
    model = nn.Linear(3, 2).to(_F64)
    engine = Engine(model, batch_dim=0)
    loss = (model(_randn(_B, 3)) ** 2).mean()
    with pytest.raises(ValueError, match="batch_dim"):
        engine.compute_gramian(loss)


# ------------------------------------------------------------------------ 2. graph leaks
def test_gramian_and_accumulated_grads_are_detached() -> None:
    """The closed-form rules use the saved inputs ``X``, which require grad beyond the first
    layer: the Gramian gets a ``grad_fn`` (it keeps the forward graph alive) and
    ``accumulate_grads`` writes a ``.grad`` that has a ``grad_fn``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(_F64)
    engine = Engine(model, batch_dim=0)
    losses = (model(_randn(_B, 3)) ** 2).sum(dim=1)

    gramian = engine.compute_gramian(losses)
    engine.accumulate_grads(torch.ones(_B, dtype=_F64))

    assert not gramian.requires_grad
    assert all(not p.grad.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------ 3. recurrent layers
class _RecurrentFromState(nn.Module):
    """A classifier read from the final hidden state ``h_n`` (``[layers, B, H]``)."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 3)
        self.rnn = kind(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        _, state = self.rnn(self.embedding(idx))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1])


def test_gru_read_from_its_final_state() -> None:
    """GRU returns ``(output, h_n)``: the fallback masks every output along ``batch_axis=0``,
    but ``h_n`` has the batch on dim 1, so the per-sample split of its gradient is wrong."""
    torch.manual_seed(0)
    model = _RecurrentFromState(nn.GRU).to(_F64)
    engine = Engine(model, batch_dim=0)
    losses = (model(_indices()) ** 2).sum(dim=1)
    _assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize("batch_dim", [0, None])
def test_lstm_read_from_its_final_state(batch_dim: int | None) -> None:
    """LSTM returns ``(output, (h_n, c_n))``: the hook only records top-level tensors, so the
    gradient flowing through ``h_n`` is missed (wrong even with ``batch_dim=None``)."""
    torch.manual_seed(0)
    model = _RecurrentFromState(nn.LSTM).to(_F64)
    engine = Engine(model, batch_dim=batch_dim)
    out = model(_indices())
    losses = (out**2).sum(dim=1) if batch_dim == 0 else torch.stack([(out**2).sum(), out.sum()])
    _assert_exact(engine, losses, list(model.parameters()))


# ------------------------------------------------------------------------ 4. fallback reuse
class _ScaleShift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=_F64))
        self.shift = nn.Parameter(torch.tensor([0.1, 0.2, -0.3], dtype=_F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class _AppliedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.affine = _ScaleShift()

    def forward(self, x: Tensor) -> Tensor:
        return self.affine(torch.tanh(self.affine(x)))


@pytest.mark.parametrize("batch_dim", [0, None])
def test_fallback_module_applied_twice_in_sequence(batch_dim: int | None) -> None:
    """The fallback back-propagates each call's output gradient to the parameters through the
    whole recorded graph, which includes the earlier call: the path through the first call is
    counted once by each call (double counting)."""
    model = _AppliedTwice()
    engine = Engine(model, batch_dim=batch_dim)
    out = model(_randn(_B, 3))
    losses = (out**2).sum(dim=1) if batch_dim == 0 else torch.stack([(out**2).sum(), out.sum()])
    _assert_exact(engine, losses, list(model.parameters()))


# ------------------------------------------------------------------------ 5. tied parameters
class _TiedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.output = nn.Linear(4, 7, bias=False)
        self.output.weight = self.embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.output(torch.tanh(self.embedding(idx))).mean(dim=1)


def test_partial_engine_on_a_parameter_tied_to_an_unhooked_module() -> None:
    """Hooking only the output layer of a model whose output weight is the embedding's: the
    engine cannot see the embedding's use of the weight, so it must refuse (on the first
    Gramian, where the graph shows the second use) rather than return a wrong Gramian."""
    torch.manual_seed(0)
    model = _TiedEmbedding().to(_F64)
    engine = Engine(model.output, batch_dim=0)
    losses = (model(_indices()) ** 2).sum(dim=1)
    with pytest.raises(ValueError, match="tied to a module outside the engine"):
        engine.compute_gramian(losses)
    full = Engine(model, batch_dim=0)
    losses = (model(_indices()) ** 2).sum(dim=1)
    _assert_exact(full, losses, list(model.parameters()))


class _TwoNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=_F64))
        self.alias = self.scale  # the same Parameter registered under a second name

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x * self.scale)


def test_parameter_registered_under_two_names_in_one_module() -> None:
    """``_parameters`` holds the Parameter twice: it is treated as tied between two owners,
    each owner contributes the full gradient, and the Gramian comes out 4× too large."""
    model = _TwoNames()
    engine = Engine(model, batch_dim=0)
    losses = (model(_randn(_B, 3)) ** 2).sum(dim=1)
    _assert_exact(engine, losses, list(model.parameters()))


# ------------------------------------------------------------------------ 6. attention
def test_sequence_first_attention_with_its_weights_in_the_losses() -> None:
    """``MultiheadAttention(batch_first=False)`` returns ``[T, B, d]`` outputs but ``[B, T, S]``
    attention weights; the fallback uses ``batch_axis=1`` for both: vmap size-mismatch error."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, num_heads=2).to(_F64)
    x = _randn(3, _B, 4)  # [T, B, d]
    engine = Engine(attention, batch_dim=0)
    out, weights = attention(x, x, x)
    losses = (out**2).sum(dim=(0, 2)) + (weights**2).sum(dim=(1, 2))
    _assert_exact(engine, losses, list(attention.parameters()))


# ------------------------------------------------------------------------ 7. module calls
class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=_F64))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"features": x * self.scale}


class _WithDictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = _DictOutput()
        self.head = nn.Linear(3, 2).to(_F64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)["features"])


def test_module_returning_a_dict() -> None:
    """The hook only looks for tensors at the top level of a tuple/list: a module returning a
    dict records no call, and its parameters silently vanish from the Gramian."""
    torch.manual_seed(0)
    model = _WithDictOutput()
    engine = Engine(model, batch_dim=0)
    losses = (model(_randn(_B, 3)) ** 2).sum(dim=1)
    _assert_exact(engine, losses, list(model.parameters()))


def test_linear_called_with_a_keyword_input() -> None:
    """Forward hooks without ``with_kwargs=True`` see positional arguments only: ``lin(input=x)``
    records ``args == ()`` and the Linear rule fails with IndexError."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    losses = (linear(input=_randn(_B, 3)) ** 2).sum(dim=1)
    _assert_exact(engine, losses, list(linear.parameters()))


def test_input_modified_in_place_after_the_forward() -> None:
    """Only the outputs' versions were checked: a hooked module's input modified in place after
    the forward was used as is, giving a wrong Gramian where autograd itself raises. Such a
    call now goes to the fallback, whose backward pass raises autograd's error."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    x = _randn(_B, 3)
    losses = (linear(x) ** 2).sum(dim=1)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        engine.compute_gramian(losses)


# ------------------------------------------------------------------------ 8. weights
@pytest.mark.parametrize("shape", [(_B + 3,), (_B, 2)])
def test_accumulate_grads_with_weights_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    """``weights.reshape(-1)[order]`` silently picks entries from any weights with at least as
    many entries as losses: no shape check."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    losses = (linear(_randn(_B, 3)) ** 2).sum(dim=1)
    engine.compute_gramian(losses)
    with pytest.raises(ValueError, match="weights"):
        engine.accumulate_grads(torch.ones(shape, dtype=_F64))
    assert all(p.grad is None for p in linear.parameters())


# --------------------------------------------------- found by a stress run (session 3)
@pytest.mark.parametrize("conv", [False, True])
def test_a_layer_with_parameters_other_than_weight_and_bias(conv: bool) -> None:
    """Old-style weight_norm keeps the module type with parameters weight_g and weight_v: the
    Linear formula gave a Gramian 2-10% off, the Conv rule a KeyError. Such modules now go to
    the exact fallback."""
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm is deprecated in favour of parametrize
        layer = nn.utils.weight_norm(nn.Conv1d(2, 3, 3) if conv else nn.Linear(3, 4))
    model = nn.Sequential(layer, nn.Flatten(), nn.Tanh(), nn.LazyLinear(1)).to(_F64)
    x = _randn(_B, 2, 6) if conv else _randn(_B, 3)
    model(x)  # materialises the lazy layer
    engine = Engine(model, batch_dim=0)
    losses = model(x).squeeze(1) ** 2
    _assert_exact(engine, losses, list(model.parameters()))


def test_a_user_forward_hook_that_replaces_the_output() -> None:
    """A hook registered before the engine's made the engine record the replaced output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(_F64)
    model[0].register_forward_hook(lambda module, args, output: 2.0 * output)
    engine = Engine(model, batch_dim=0)
    losses = model(_randn(_B, 3)).squeeze(1) ** 2
    _assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize(
    ("conv", "shape"), [(nn.Conv1d(2, 3, 3), (2, 6)), (nn.Conv2d(2, 3, 3), (2, 5, 5))]
)
def test_unbatched_convolution_inputs(conv: nn.Module, shape: tuple[int, ...]) -> None:
    """[C, *spatial] inputs (legal in PyTorch) crashed the Conv rule; they use the fallback."""
    conv = conv.to(_F64)
    engine = Engine(conv, batch_dim=None)
    output = conv(_randn(*shape))
    losses = torch.stack([output.sin().sum(), (output**2).mean()])
    _assert_exact(engine, losses, list(conv.parameters()))


def test_a_parameter_frozen_after_construction_is_refused() -> None:
    """The engine's parameter set is fixed at construction: a later freeze made its Gramian
    and gradients include the frozen weight, silently."""
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    linear.weight.requires_grad_(False)
    assert engine.trainable_changed()
    losses = (linear(_randn(_B, 3)) ** 2).sum(dim=1)
    with pytest.raises(ValueError, match="frozen or unfrozen"):
        engine.compute_gramian(losses)


def test_a_penalty_that_appears_after_the_first_step_is_refused() -> None:
    """The check for untracked uses of a parameter ran on the first Gramian only: a weight
    penalty added to the losses later gave a Gramian 34% off, silently."""
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    engine.compute_gramian((linear(_randn(_B, 3)) ** 2).sum(dim=1))
    losses = (linear(_randn(_B, 3, seed=2)) ** 2).sum(dim=1) + 0.5 * linear.weight.pow(2).sum()
    with pytest.raises(ValueError, match="weight penalty"):
        engine.compute_gramian(losses)


class _Centred(nn.Module):
    """Two layers with ``h - h.mean(0)`` between them: it mixes the samples of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.first(x))
        return self.second(h - h.mean(dim=0))


@pytest.mark.parametrize("case", ["reordered", "mixing layer", "contrastive"])
def test_losses_that_are_not_per_sample_are_refused(case: str) -> None:
    """With batch_dim=0 these gave Gramians 11-280% off, silently; the first Gramian is now
    checked against one ordinary backward pass."""
    torch.manual_seed(0)
    model = (_Centred() if case == "mixing layer" else nn.Linear(3, 2)).to(_F64)
    engine = Engine(model, batch_dim=0)
    out = model(_randn(_B, 3))
    if case == "reordered":
        losses = (out**2).sum(dim=1)[torch.tensor([1, 0, 3, 2])]
    elif case == "mixing layer":
        losses = out.squeeze(1) ** 2
    else:  # each sample against the others: an in-batch contrastive loss
        losses = torch.logsumexp(out @ out.T, dim=1)
    with pytest.raises(ValueError, match="disagrees with an ordinary backward pass"):
        engine.compute_gramian(losses)
    assert all(p.grad is None for p in model.parameters())


def test_a_sparse_embedding_gets_a_sparse_gradient() -> None:
    """accumulate_grads wrote a dense gradient: SparseAdam refused it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3, sparse=True), nn.Flatten(), nn.Linear(9, 1))
    model = model.to(_F64)
    engine = Engine(model, batch_dim=0)
    losses = model(_indices()).squeeze(1) ** 2
    weights = torch.rand(_B, dtype=_F64, generator=torch.Generator().manual_seed(9))
    engine.compute_gramian(losses)
    engine.accumulate_grads(weights)
    grad = model[0].weight.grad
    assert grad.is_sparse
    expected = reference_weighted_gradient(losses, weights, [model[0].weight])[0]
    assert relative_error(grad.to_dense(), expected) <= TOLERANCE
    torch.optim.SparseAdam(model[0].parameters()).step()  # accepts it


def test_a_module_given_twice_is_named_as_such() -> None:
    linear = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="given to Engine twice"):
        Engine(linear, linear, batch_dim=0)


def test_a_sparse_embedding_tied_to_a_linear_head_gets_a_dense_gradient() -> None:
    """Its own backward sums a sparse and a dense gradient: dense, which Adam accepts."""
    torch.manual_seed(0)
    embedding, head = nn.Embedding(7, 3, sparse=True), nn.Linear(3, 7, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head).to(_F64)
    engine = Engine(model, batch_dim=0)
    losses = model(_indices()).square().mean(dim=(1, 2))
    _assert_exact(engine, losses, [embedding.weight])
    assert not embedding.weight.grad.is_sparse


def test_a_first_gramian_that_overflows_does_not_use_up_the_check() -> None:
    """Under a GradScaler the first steps often overflow: the check waits for a finite one."""
    torch.manual_seed(0)
    model = _Centred().to(_F64)
    engine = Engine(model, batch_dim=0)
    out = model(_randn(_B, 3)).squeeze(1)
    engine.compute_gramian(out * torch.tensor([1.0, torch.inf, 1.0, 1.0], dtype=_F64))
    losses = model(_randn(_B, 3)).squeeze(1) ** 2
    with pytest.raises(ValueError, match="disagrees with an ordinary backward pass"):
        engine.compute_gramian(losses)
    with pytest.raises(RuntimeError, match="before accumulate_grads"):  # nothing to apply
        engine.accumulate_grads(torch.ones(_B, dtype=_F64))


class _ReadsItsGradient(torch.autograd.Function):
    """Doubles the gradient, after reading one of its values: a backward without a batching
    rule (``.item()`` cannot run batched)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * (2.0 if grad.sum().item() == grad.sum().item() else 0.0)


class _Unbatchable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(_randn(3, 3, seed=5))

    def forward(self, x: Tensor) -> Tensor:
        return _ReadsItsGradient.apply(x @ self.weight)


@pytest.mark.parametrize(
    ("batch_dim", "make_losses"),
    [(0, lambda out: out.sum(dim=1)), (0, lambda out: out), (None, lambda out: out.sum(dim=0))],
    ids=["B", "B_k", "m"],
)
def test_an_operation_without_batching_rule_loops_per_row(batch_dim, make_losses) -> None:
    """Where a backward cannot run batched over the objectives (or slices), the engine does one
    pass per row, exactly, for the fallback's gradients and for the output gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), _Unbatchable(), nn.Linear(3, 2)).double()
    engine = Engine(model, batch_dim=batch_dim)
    _assert_exact(engine, make_losses(model(_randn(_B, 2))), list(model.parameters()))
