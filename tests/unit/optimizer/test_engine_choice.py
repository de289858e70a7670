"""Which engine takes a step, and that the engines agree: the Gramian engine (whole or partial
model) gives the full-Jacobian engine's steps, and follows the model's trainable parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.utils.architectures import ARCHITECTURES

from ._helpers import conv_losses, conv_model, flat_params, train_conv


def test_engine_choice_follows_the_model_and_the_method() -> None:
    """``"auto"`` takes the Gramian engine when a model is given and the method is
    Gramian-based, the autojac engine otherwise; ``"autojac"`` is always possible;
    ``"autogram"`` without a Gramian-based method or a model, and a cross-sample module with
    ``batch_dim=0``, are refused."""
    model = conv_model()
    params = model.parameters
    assert JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=model).engine == "autogram"
    assert JDOptimizer(torch.optim.SGD(params(), lr=1.0)).engine == "autojac"
    configured = JDOptimizer(
        torch.optim.SGD(params(), lr=1.0), aggregator=agg.ConFIG(), model=model
    )
    assert configured.engine == "autojac"
    forced = JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=model, engine="autojac")
    assert forced.engine == "autojac"
    with pytest.raises(ValueError, match="needs the whole Jacobian"):
        JDOptimizer(
            torch.optim.SGD(params(), lr=1.0),
            aggregator=agg.GradDrop(),
            model=model,
            engine="autogram",
        )
    with pytest.raises(ValueError, match="needs `model=`"):
        JDOptimizer(torch.optim.SGD(params(), lr=1.0), engine="autogram")
    with pytest.raises(ValueError, match="GroupNorm or LayerNorm"):
        JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=nn.BatchNorm1d(3), batch_dim=0)


@pytest.mark.parametrize(("shape", "batch_dim"), [("[B]", 0), ("[B, k]", 0), ("[k]", None)])
@pytest.mark.parametrize("aggregator", [agg.UPGrad(), agg.MGDAWeighting(), agg.Mean()])
def test_autogram_steps_equal_autojac_steps(shape: str, batch_dim, aggregator) -> None:
    """For losses of any shape, the Gramian engine's steps and Gramians are the full
    Jacobian's."""
    gram_model, jac_model = conv_model(), conv_model()
    gram = JDOptimizer(
        torch.optim.Adam(gram_model.parameters(), lr=0.01),
        aggregator=aggregator,
        model=gram_model,
        batch_dim=batch_dim,
    )
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01), aggregator=aggregator)
    train_conv(gram, gram_model, shape)
    train_conv(jac, jac_model, shape)
    assert gram.last_step.engine == "autogram" and jac.last_step.engine == "autojac"
    assert torch.allclose(flat_params(gram_model), flat_params(jac_model), atol=1e-9)
    assert torch.allclose(gram.last_step.gramian, jac.last_step.gramian, atol=1e-9)


@pytest.mark.parametrize("name", ["transformer_encoder", "embedding_gru", "siamese_fallback"])
def test_zoo_models_with_graph_based_rules_step_like_autojac(name: str) -> None:
    """The saved-factor path frees the graph early unless a rule needs it (attention, the
    fallback): the steps still equal the full-Jacobian engine's."""
    arch = next(a for a in ARCHITECTURES if a.name == name)
    models = [arch.make()[0] for _ in range(2)]
    inputs = arch.make()[1]
    gram = JDOptimizer(
        torch.optim.SGD(models[0].parameters(), lr=0.1), model=models[0], batch_dim=0
    )
    jac = JDOptimizer(torch.optim.SGD(models[1].parameters(), lr=0.1), engine="autojac")
    for jd, model in ((gram, models[0]), (jac, models[1])):
        for _ in range(2):
            jd.zero_grad()
            jd.step(arch.outputs(model, inputs).pow(2).mean(dim=1))
    assert torch.allclose(flat_params(models[0]), flat_params(models[1]), atol=1e-9)


def test_partial_engine_weights_the_whole_model() -> None:
    """With the engine on some layers, the weights come from those layers' Gramian and apply
    to the whole model's Jacobian."""
    model = conv_model()
    last = model[-1]
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=last, batch_dim=0)
    losses = conv_losses(model, 0, "[B]")
    params = list(model.parameters())
    jacobian = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses
        ]
    )
    tail = torch.tensor(
        [i >= len(params) - 2 for i, p in enumerate(params) for _ in range(p.numel())]
    )
    partial = jacobian[:, tail]
    weights = agg.UPGradWeighting()(partial @ partial.T)
    jd.backward(losses)
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(grads, weights @ jacobian, atol=1e-10)
    assert torch.allclose(jd.last_step.weights, weights, atol=1e-10)


def test_close_removes_the_hooks_and_falls_back_to_autojac() -> None:
    """``close()`` removes the engine's hooks; later steps take the autojac engine."""
    model = conv_model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model, batch_dim=0)
    jd.close()
    assert all(not m._forward_hooks for m in model.modules())
    jd.step(conv_losses(model, 0, "[B]"))
    assert jd.last_step.engine == "autojac"


@pytest.mark.parametrize("change", ["freeze", "unfreeze"])
def test_freezing_or_unfreezing_after_construction_is_followed(change: str) -> None:
    """The Gramian covers the trainable parameters of each step, and a frozen weight does not
    move: the step that sees a change takes the autojac engine (its forward pass ran with the
    old hooks) and the Gramian engine is rebuilt for the next steps."""
    gram_model, jac_model = conv_model(), conv_model()
    if change == "unfreeze":
        gram_model[4].weight.requires_grad_(False)
    gram = JDOptimizer(
        torch.optim.SGD(gram_model.parameters(), lr=0.1),
        aggregator=agg.UPGrad(),
        model=gram_model,
        batch_dim=0,
    )
    for model in (gram_model, jac_model):
        model[4].weight.requires_grad_(change == "unfreeze")
    jac = JDOptimizer(torch.optim.SGD(jac_model.parameters(), lr=0.1), aggregator=agg.UPGrad())
    frozen = gram_model[4].weight.detach().clone()
    train_conv(gram, gram_model, "[B]")
    train_conv(jac, jac_model, "[B]")
    assert torch.allclose(flat_params(gram_model), flat_params(jac_model), rtol=1e-9, atol=1e-12)
    assert gram.last_step.engine == "autogram"  # rebuilt after the first step
    if change == "freeze":
        assert torch.equal(gram_model[4].weight, frozen)


def test_a_model_parameter_the_optimizer_does_not_hold_is_refused() -> None:
    """The engine may only cover parameters that the optimizer trains; the error names one."""
    model = conv_model()
    with pytest.raises(ValueError, match=r"optimizer does not hold \(e\.g\. '0\.weight'\)"):
        JDOptimizer(
            torch.optim.SGD(model[4:].parameters(), lr=0.1),
            aggregator=agg.Mean(),
            model=model,
            batch_dim=0,
        )


def test_a_rebuild_that_fails_is_tried_again_at_the_next_step() -> None:
    """A rebuild of the engine that raises keeps the old engine: once the change is undone,
    steps take the Gramian engine again."""
    model = conv_model()
    model[0].requires_grad_(False)
    gram = JDOptimizer(
        torch.optim.SGD(model[1:].parameters(), lr=0.1),
        aggregator=agg.Mean(),
        model=model,
        batch_dim=0,
    )
    train_conv(gram, model, "[B]", steps=1)
    model[0].requires_grad_(True)  # not in the optimizer: the new engine is refused
    with pytest.raises(ValueError, match="optimizer does not hold"):
        train_conv(gram, model, "[B]", steps=1)
    model[0].requires_grad_(False)  # undone: the old engine is current again
    train_conv(gram, model, "[B]", steps=1)
    assert gram.last_step.engine == "autogram"
