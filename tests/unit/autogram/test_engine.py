"""The engine's lifecycle, partial engines, autocast and its error contract."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.aggregation import MeanWeighting, UPGradWeighting
from jdopt.autogram import Engine
from tests.utils.architectures import ARCHITECTURES, Architecture, trainable_parameters

from ._reference import (
    TOLERANCE,
    accumulated_grads,
    assert_exact,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)
from ._settings import PER_SAMPLE, per_sample

_F64 = torch.float64


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).to(_F64)


def _x(batch: int = 5, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, dtype=_F64, generator=torch.Generator().manual_seed(seed))


def _losses(model: nn.Module, x: Tensor) -> Tensor:
    return PER_SAMPLE.losses(model(x))


def _all_hooks_removed(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def _by_name(name: str) -> Architecture:
    return next(arch for arch in ARCHITECTURES if arch.name == name)


# ---------------------------------------------------------------------------- partial engines
@pytest.mark.parametrize("batch_dim", [0, None])
def test_partial_engine_covers_only_its_modules(batch_dim: int | None) -> None:
    model = _mlp()
    hooked = [model[2], model[4]]
    engine = Engine(*hooked, batch_dim=batch_dim)
    losses = _losses(model, _x())

    gramian = engine.compute_gramian(losses)

    params = trainable_parameters(*hooked)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    everything = reference_gramian(losses, trainable_parameters(model))
    assert relative_error(gramian, everything) > 1e-3
    assert {id(p) for p in engine.params} == {id(p) for p in params}


def test_partial_engine_accumulates_only_its_parameters() -> None:
    model = _mlp()
    engine = Engine(model[4], batch_dim=0)
    losses = _losses(model, _x())
    weights = torch.rand(5, dtype=_F64, generator=torch.Generator().manual_seed(2))
    engine.compute_gramian(losses)
    params = trainable_parameters(model[4])
    expected = reference_weighted_gradient(losses, weights, params)

    engine.accumulate_grads(weights)

    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
    assert all(p.grad is None for p in trainable_parameters(model[0], model[2]))


def test_partial_engine_on_a_zoo_head() -> None:
    model, inputs = _by_name("transformer_encoder").make()
    engine = Engine(model.layer.self_attn, model.head, batch_dim=0)
    losses = PER_SAMPLE.losses(model(*inputs))

    gramian = engine.compute_gramian(losses)

    params = trainable_parameters(model.layer.self_attn, model.head)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE


# ---------------------------------------------------------------------------- hooks
def test_close_removes_every_hook_and_records_nothing_more() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    assert not _all_hooks_removed(model)
    _losses(model, _x())

    engine.close()

    assert _all_hooks_removed(model)
    losses = _losses(model, _x())
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_context_manager_removes_every_hook() -> None:
    model = _mlp()
    with Engine(model, batch_dim=0) as engine:
        assert isinstance(engine, Engine)
        losses = _losses(model, _x())
        gramian = engine.compute_gramian(losses)
        assert (
            relative_error(gramian, reference_gramian(losses, list(model.parameters())))
            <= TOLERANCE
        )

    assert _all_hooks_removed(model)
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(_losses(model, _x()))


def test_context_manager_removes_hooks_on_error() -> None:
    model = _mlp()
    with pytest.raises(KeyError), Engine(model, batch_dim=0):
        raise KeyError("boom")
    assert _all_hooks_removed(model)


def test_clear_forgets_the_recorded_calls() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x())
    engine.clear()
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_an_ordinary_training_step_in_between_changes_nothing() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    first = engine.compute_gramian(_losses(model, _x()))

    model(_x(batch=7, seed=5)).pow(2).sum().backward()  # another batch size, on purpose
    model.zero_grad()
    losses = _losses(model, _x())
    second = engine.compute_gramian(losses)

    assert relative_error(second, first) <= TOLERANCE
    assert relative_error(second, reference_gramian(losses, list(model.parameters()))) <= 1e-6


def test_a_forward_kept_alive_outside_the_losses_is_ignored() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    other = model(_x(batch=7, seed=5))  # recorded, but not part of the losses below
    losses = _losses(model, _x())

    gramian = engine.compute_gramian(losses)

    assert other.requires_grad
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_forwards_without_grad_are_ignored(context: type) -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    with context():
        model(_x(batch=7, seed=5))
    unrelated = (model[0].weight ** 2).sum(dim=1)  # requires grad, but no forward call
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(unrelated)

    losses = _losses(model, _x())
    with context():
        model(_x(batch=7, seed=5))
    gramian = engine.compute_gramian(losses)

    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_two_engines_on_the_same_model() -> None:
    model = _mlp()
    per_sample_engine = Engine(model, batch_dim=0)
    head_engine = Engine(model[4], batch_dim=None)
    losses = _losses(model, _x())

    first = per_sample_engine.compute_gramian(losses)
    second = head_engine.compute_gramian(losses)

    everything = reference_gramian(losses, list(model.parameters()))
    head = reference_gramian(losses, list(model[4].parameters()))
    assert relative_error(first, everything) <= TOLERANCE
    assert relative_error(second, head) <= TOLERANCE
    per_sample_engine.close()
    assert model[4]._forward_hooks  # the other engine's hook stays
    head_engine.close()
    assert _all_hooks_removed(model)


def test_consecutive_steps_with_accumulate_grads() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    params = list(model.parameters())
    for seed in range(3):
        model.zero_grad()
        losses = _losses(model, _x(seed=seed))
        weights = torch.rand(5, dtype=_F64, generator=torch.Generator().manual_seed(seed))
        gramian = engine.compute_gramian(losses)
        assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
        expected = reference_weighted_gradient(losses, weights, params)
        engine.accumulate_grads(weights)
        assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad


# ---------------------------------------------------------------------------- loss shapes
def test_three_dimensional_losses_give_the_generalized_gramian() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    out = model(_x())
    losses = torch.stack([per_sample(out), per_sample(torch.tanh(out))], dim=2)  # [5, 3, 2]

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (5, 3, 2, 2, 3, 5)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_negative_batch_dim() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=-1)
    losses = per_sample(model(_x())).T  # [3, 5]

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (3, 5, 5, 3)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_a_batch_of_one() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x(batch=1))

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (1, 1)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_a_sequence_of_losses_is_concatenated() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=None)
    out = model(_x())
    parts = [(out**2).mean(), out.sum(dim=0)]

    gramian = engine.compute_gramian(parts)

    expected = reference_gramian(
        torch.cat([p.reshape(-1) for p in parts]), list(model.parameters())
    )
    assert relative_error(gramian, expected) <= TOLERANCE


# ---------------------------------------------------------------------------- autocast
@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "layernorm_mlp", "attention_batch_first", "embedding_mean_pool"]
)
def test_autocast_bfloat16(name: str) -> None:
    arch = _by_name(name)
    model, inputs = arch.make()
    model = model.float()
    inputs = tuple(x.float() if x.is_floating_point() else x for x in inputs)
    params = trainable_parameters(model)
    expected = reference_gramian(PER_SAMPLE.losses(arch.outputs(model, inputs)), params)
    engine = Engine(model, batch_dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = arch.outputs(model, inputs)
    losses = PER_SAMPLE.losses(out.float())

    gramian = engine.compute_gramian(losses)
    engine.accumulate_grads(torch.ones_like(losses))

    assert gramian.dtype == torch.float32
    assert relative_error(gramian, expected) <= 5e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


# ---------------------------------------------------------------------------- documented usage
@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer_encoder", "embedding_gru"])
@pytest.mark.parametrize("weighting", [UPGradWeighting(), MeanWeighting()], ids=["upgrad", "mean"])
def test_documented_usage_backward_equals_accumulate_grads(name: str, weighting: object) -> None:
    arch = _by_name(name)
    model, inputs = arch.make()
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=0)
    losses = PER_SAMPLE.losses(arch.outputs(model, inputs))

    gramian = engine.compute_gramian(losses)
    weights = weighting(gramian)
    engine.accumulate_grads(weights)
    from_factors = [p.grad.clone() for p in params]
    model.zero_grad()
    losses.backward(weights)

    assert relative_error(flat(from_factors), flat(accumulated_grads(params))) <= TOLERANCE


@pytest.mark.parametrize(
    "name",
    ["mlp", "cnn", "custom_direct_parameters", "siamese_fallback", "transformer_encoder"],
)
def test_a_gramian_without_retaining_the_graph(name: str) -> None:
    """``retain_graph=False`` frees the graph (as ``backward()`` does), even where a fallback
    module differentiates the losses a second time, and changes nothing else."""
    arch = _by_name(name)
    model, inputs = arch.make()
    engine = Engine(model, batch_dim=0)
    kept = engine.compute_gramian(PER_SAMPLE.losses(arch.outputs(model, inputs)))
    losses = PER_SAMPLE.losses(arch.outputs(model, inputs))
    gramian = engine.compute_gramian(losses, retain_graph=False)
    assert torch.allclose(gramian, kept, rtol=1e-12, atol=1e-12)
    weights = UPGradWeighting()(gramian)
    engine.accumulate_grads(weights)  # from the saved factors
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses.backward(weights)


@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "linear_3d", "transformer_encoder", "custom_direct_parameters"]
)
@pytest.mark.parametrize("batch_dim", [0, None])
def test_gramian_of_rows_of_vector_jacobian_products(name: str, batch_dim: int | None) -> None:
    """Rows ``∇⟨cᵢ, f⟩`` (e.g. the multi-task Jacobian over a trunk from the tasks' gradients
    at the features ``f``) against ``autograd.grad``, and the weighted gradient."""
    arch = _by_name(name)
    model, inputs = arch.make()
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=batch_dim)
    features = arch.outputs(model, inputs)
    first, second = features[:, :1], features[:, 1:]
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(4, *t.shape, generator=g, dtype=_F64) for t in (first, second)]
    rows = torch.stack(
        [
            flat(
                torch.autograd.grad(
                    (cotangents[0][i] * first).sum() + (cotangents[1][i] * second).sum(),
                    params,
                    retain_graph=True,
                )
            )
            for i in range(4)
        ]
    )
    gramian = engine.compute_gramian_of_rows([first, second], cotangents, retain_graph=False)
    assert relative_error(gramian, rows @ rows.T) <= TOLERANCE
    weights = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=_F64)
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), weights @ rows) <= TOLERANCE


# ---------------------------------------------------------------------------- TorchJD's names
def test_compute_gramian_takes_the_losses_by_torchjds_name() -> None:
    """TorchJD's ``Engine.compute_gramian(output)`` names its argument ``output``: the same call
    works unchanged, as do positional and ``losses=`` calls."""
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    gramians = []
    for call in (
        lambda losses: engine.compute_gramian(losses),
        lambda losses: engine.compute_gramian(losses=losses),
        lambda losses: engine.compute_gramian(output=losses),
    ):
        gramians.append(call(_losses(model, _x())))
    assert torch.equal(gramians[0], gramians[1]) and torch.equal(gramians[0], gramians[2])


def test_compute_gramian_with_both_names_is_refused() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x())
    with pytest.raises(TypeError, match="both `losses` and `output`"):
        engine.compute_gramian(losses, output=losses)


def test_compute_gramian_without_losses_is_refused() -> None:
    engine = Engine(_mlp(), batch_dim=0)
    with pytest.raises(TypeError, match="missing"):
        engine.compute_gramian()


def test_an_invalid_output_is_named_by_its_name() -> None:
    engine = Engine(_mlp(), batch_dim=0)
    with pytest.raises(TypeError, match="`output` should be a tensor"):
        engine.compute_gramian(output=3.0)


# ---------------------------------------------------------------------------- errors
def test_batchnorm_with_batch_dim_is_refused_with_the_fix() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match="BatchNorm1d") as info:
        Engine(model, batch_dim=0)
    message = str(info.value)
    assert "1.1" in message  # the module's name in the model
    for fix in ["GroupNorm", "LayerNorm", "batch_dim=None"]:
        assert fix in message
    assert _all_hooks_removed(model)


def test_batchnorm_works_without_batch_dim() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    ).to(_F64)
    engine = Engine(model, batch_dim=None)
    x = torch.randn(5, 2, 4, 4, dtype=_F64, generator=torch.Generator().manual_seed(1))
    out = model(x)
    losses = torch.stack([(out**2).mean(), out[:, 0].sum(), torch.sin(out).sum()])

    gramian = engine.compute_gramian(losses)

    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


@pytest.mark.parametrize("outer_first", [True, False])
def test_modules_that_contain_each_other_are_refused(outer_first: bool) -> None:
    model = _mlp()
    modules = (model, model[2]) if outer_first else (model[2], model)
    with pytest.raises(ValueError, match="contain each other"):
        Engine(*modules, batch_dim=0)


@pytest.mark.parametrize(
    "module",
    [torch.randn(3), [nn.Linear(2, 2)], nn.Linear(2, 2).weight],
    ids=lambda m: type(m).__name__,
)
def test_non_modules_are_refused(module: object) -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        Engine(module, batch_dim=0)  # type: ignore[arg-type]


def test_no_module_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one module"):
        Engine(batch_dim=0)


@pytest.mark.parametrize("batch_dim", ["0", 0.0, True])
def test_batch_dim_of_the_wrong_type_is_refused(batch_dim: object) -> None:
    with pytest.raises(TypeError, match="batch_dim"):
        Engine(_mlp(), batch_dim=batch_dim)  # type: ignore[arg-type]


def test_compute_gramian_before_any_forward() -> None:
    model = _mlp()
    losses = _losses(model, _x())  # computed before the engine existed
    engine = Engine(model, batch_dim=0)
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_losses_without_grad_are_refused() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    with torch.no_grad():
        losses = _losses(model, _x())
    with pytest.raises(ValueError, match="does not require grad"):
        engine.compute_gramian(losses)


def test_in_place_activation_after_a_hooked_layer_is_exact() -> None:
    """``ReLU(inplace=True)`` right after a Linear changes the Linear's output after the call:
    the engine differentiates the output as the Linear made it (see test_in_place.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).to(_F64)
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x())

    gramian = engine.compute_gramian(losses)

    expected = reference_gramian(losses, trainable_parameters(model))
    assert relative_error(gramian, expected) <= TOLERANCE


def test_a_module_seeing_another_batch_size() -> None:
    """Losses of part of the batch: the layers' calls do not match them, so every layer takes
    the exact fallback."""
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x(batch=5))[:3]
    fallback = assert_exact(engine, losses, trainable_parameters(model))
    assert fallback == {id(p) for p in trainable_parameters(model)}


def test_a_module_seeing_the_batch_on_another_dimension() -> None:
    """A sequence-first layer (batch on dim 1) takes the exact fallback."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0).to(_F64)  # sequence first
    engine = Engine(layer, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=_F64)  # [T, B, d]
    losses = (layer(x) ** 2).sum(dim=(0, 2))  # [B]
    fallback = assert_exact(engine, losses, trainable_parameters(layer))
    assert id(layer.linear1.weight) in fallback


class _LearnedPositions(nn.Module):
    """nanoGPT's embeddings: tokens ``[B, T]`` and positions ``arange(T)``, without a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(7, 4)
        self.positions = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        return self.head(torch.tanh(h)).squeeze(-1)  # [B, T]


@pytest.mark.parametrize("batch_dim", [0, None])
def test_a_layer_called_without_the_batch(batch_dim: int | None) -> None:
    """A layer called on positions only (``pos(arange(T))``) is exact through the fallback;
    the other layers keep their closed forms."""
    torch.manual_seed(0)
    model = _LearnedPositions().to(_F64)
    engine = Engine(model, batch_dim=batch_dim)
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(1))
    out = model(idx)
    losses = (out**2).mean(dim=1) if batch_dim == 0 else (out**2).mean(dim=0)
    fallback = assert_exact(engine, losses, trainable_parameters(model))
    expected = {id(model.positions.weight)} if batch_dim == 0 else set()
    assert fallback == expected


@pytest.mark.parametrize("batch_dim", [2, -3, 5])
def test_batch_dim_outside_the_losses(batch_dim: int) -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=batch_dim)
    losses = per_sample(model(_x()))  # [5, 3]
    with pytest.raises(ValueError, match="batch_dim"):
        engine.compute_gramian(losses)


def test_accumulate_grads_before_compute_gramian() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x())
    with pytest.raises(RuntimeError, match="compute_gramian"):
        engine.accumulate_grads(torch.ones_like(losses))
    assert all(p.grad is None for p in model.parameters())


def test_accumulate_grads_twice_after_one_gramian() -> None:
    model = _mlp()
    engine = Engine(model, batch_dim=0)
    losses = _losses(model, _x())
    engine.compute_gramian(losses)
    engine.accumulate_grads(torch.ones_like(losses))
    with pytest.raises(RuntimeError, match="compute_gramian"):
        engine.accumulate_grads(torch.ones_like(losses))


class _Gate(nn.Module):
    """A custom layer (no closed form) using its weight twice: ``x ⊙ w + tanh(x) ⊙ w²``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 3, dtype=_F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + torch.tanh(x) * self.weight**2


@pytest.mark.parametrize("elsewhere", ["nowhere", "in_the_losses", "below"])
@pytest.mark.parametrize("retain_graph", [True, False])
def test_a_layer_without_closed_form_is_exact_wherever_its_weight_is_used(
    elsewhere: str, retain_graph: bool
) -> None:
    """A layer without a closed form gets its per-sample gradients from its own part of the
    graph when its weight is used nowhere else, and from the losses otherwise (a penalty in
    the losses, the weight reused below the layer): exact either way, with or without the
    graph kept, and listed in ``fallback_parameters``."""
    torch.manual_seed(0)
    first, gate, last = nn.Linear(2, 3).to(_F64), _Gate(), nn.Linear(3, 2).to(_F64)
    model = nn.ModuleList([first, gate, last])
    engine = Engine(model, batch_dim=0)

    def losses_of(x: Tensor) -> Tensor:
        h = first(x)
        if elsewhere == "below":
            h = h * gate.weight
        losses = (last(gate(torch.sin(h))) ** 2).sum(dim=1)
        if elsewhere == "in_the_losses":
            losses = losses + (x[:, 0] * gate.weight.sum()) ** 2
        return losses

    x = torch.randn(4, 2, dtype=_F64, generator=torch.Generator().manual_seed(1))
    engine.compute_gramian(losses_of(x))  # the first Gramian is checked (graph kept for it)
    losses = losses_of(x)
    params = trainable_parameters(model)
    weights = torch.rand(4, dtype=_F64, generator=torch.Generator().manual_seed(2))
    expected_gramian = reference_gramian(losses, params)
    expected = reference_weighted_gradient(losses, weights, params)
    gramian = engine.compute_gramian(losses, retain_graph=retain_graph)
    assert relative_error(gramian, expected_gramian) <= TOLERANCE
    assert {id(p) for p in engine.fallback_parameters} == {id(gate.weight)}
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
