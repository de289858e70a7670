"""Gramians other than the plain ``compute_gramian(losses)``: with the graph freed
(``retain_graph=False``), of rows of vector-Jacobian products (``compute_gramian_of_rows``),
and under autocast."""

from __future__ import annotations

import pytest
import torch

from jdopt.aggregation import UPGradWeighting
from jdopt.autogram import Engine
from tests.utils.architectures import trainable_parameters
from tests.utils.device import draw

from ._models import F64, by_name
from ._reference import TOLERANCE, accumulated_grads, flat, reference_gramian, relative_error
from ._settings import PER_SAMPLE


@pytest.mark.parametrize(
    "name",
    ["mlp", "cnn", "custom_direct_parameters", "siamese_fallback", "transformer_encoder"],
)
def test_retain_graph_false_frees_the_graph_and_changes_nothing_else(name: str) -> None:
    """``retain_graph=False`` frees the graph (as ``backward()`` does), even where a fallback
    module differentiates the losses a second time, and changes nothing else."""
    arch = by_name(name)
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
def test_gramian_of_rows_equals_that_of_the_vector_jacobian_products(
    name: str, batch_dim: int | None
) -> None:
    """Rows ``∇⟨cᵢ, f⟩`` (e.g. the multi-task Jacobian over a trunk from the tasks' gradients
    at the features ``f``) against ``autograd.grad``, and the weighted gradient."""
    arch = by_name(name)
    model, inputs = arch.make()
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=batch_dim)
    features = arch.outputs(model, inputs)
    first, second = features[:, :1], features[:, 1:]
    g = torch.Generator().manual_seed(3)
    cotangents = [draw(4, *t.shape, generator=g, dtype=F64) for t in (first, second)]
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
    weights = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=F64)
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), weights @ rows) <= TOLERANCE


@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "layernorm_mlp", "attention_batch_first", "embedding_mean_pool"]
)
def test_autocast_gives_a_float32_gramian_close_to_the_reference(name: str) -> None:
    """Under bfloat16 autocast, the Gramian and the gradients are float32, within bfloat16's
    rounding of the float32 reference."""
    arch = by_name(name)
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
