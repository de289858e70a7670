"""JDOptimizer on models compiled by ``torch.compile``: the same steps as in eager mode.

The models compile with the ``aot_eager`` backend (AOTAutograd's forward and backward graphs,
run by eager kernels: what the engines see of compiled code, compiled in a fraction of
inductor's time); the inductor tests cover what only inductor's kernels do (they cannot run
batched over the rows of a Jacobian). Every test starts from empty compile caches: torch.compile
reuses code across instances of a class.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad
from tests.utils.architectures import ARCHITECTURES, Architecture
from tests.utils.device import generator_check_suspended

# Dynamo reads `.grad` of the non-leaf tensors that enter compiled code after a graph break,
# under its own warning filter, which -W error overrides (the warning never reaches users).
pytestmark = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)

BACKEND = "aot_eager"
ENGINES = ["autogram", "autojac"]
_ZOO = {architecture.name: architecture for architecture in ARCHITECTURES}
# A model that compiles to one graph on every device. (Not layernorm_mlp: under a default device,
# torch.set_default_device's mode makes Dynamo break the graph at its Tensor.unflatten, and
# fullgraph=True then fails in torch, without jdopt.)
_ONE_GRAPH = "rmsnorm_mlp"

Compile = Callable[[nn.Module], nn.Module]  # the model to pass to JDOptimizer and to call


def _wrapped(model: nn.Module, **options: object) -> nn.Module:
    return torch.compile(model, **options)


def _in_place(model: nn.Module, **options: object) -> nn.Module:
    model.compile(**options)
    return model


def _forward(model: nn.Module, **options: object) -> nn.Module:
    model.forward = torch.compile(model.forward, **options)
    return model


def _submodule(model: nn.Module, **options: object) -> nn.Module:
    name, child = next(iter(model.named_children()))
    setattr(model, name, torch.compile(child, **options))
    return model


WAYS = {
    "torch.compile(model)": _wrapped,
    "model.compile()": _in_place,
    "forward": _forward,
    "submodule": _submodule,
}


@pytest.fixture(autouse=True)
def _fresh_compile_caches():
    """Also takes the suite's generator check (a TorchFunctionMode) off the stack: under such a
    mode, Dynamo compiles an in-place activation after a graph break as a frame of its own, and
    torch 2.13's backward through that frame raises autograd's in-place error, without jdopt.
    ``torch.set_default_device``'s own mode leaves those frames uncompiled."""
    torch._dynamo.reset()
    with generator_check_suspended():
        yield
    torch._dynamo.reset()


def _make(architecture: Architecture) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The seeded float64 model, deterministic (no dropout: compiled code draws other random
    numbers), and its inputs."""
    model, inputs = architecture.make()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model, inputs


def _train(
    architecture: Architecture,
    engine: str,
    compile: Compile | None,
    batches: tuple[int, ...],
) -> tuple[list[Tensor], JDOptimizer]:
    """The parameters after one step per batch size (the first samples of the inputs), with
    per-sample losses, and the optimizer."""
    model, inputs = _make(architecture)
    net = model if compile is None else compile(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    jd = JDOptimizer(optimizer, aggregator=UPGrad(), model=net, batch_dim=0, engine=engine)
    for size in batches:
        jd.zero_grad()
        losses = (Architecture.outputs(net, tuple(x[:size] for x in inputs)) ** 2).sum(dim=1)
        assert _ran_compiled(losses) == (compile is not None)
        jd.step(losses)
    return [p.detach().clone() for p in model.parameters()], jd


def _ran_compiled(losses: Tensor) -> bool:
    """Whether compiled code computed part of ``losses`` (torch.compile's autograd node)."""
    stack, seen = [losses.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == "CompiledFunctionBackward":
            return True
        stack.extend(child for child, _ in node.next_functions)
    return False


def _assert_same_steps(
    architecture: Architecture, engine: str, compile: Compile, batches: tuple[int, ...] = (4,) * 2
) -> JDOptimizer:
    expected, _ = _train(architecture, engine, None, batches)
    found, jd = _train(architecture, engine, compile, batches)
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, atol=1e-6, rtol=1e-6)
    return jd


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("way", WAYS)
def test_every_way_of_compiling_gives_the_eager_steps(engine: str, way: str) -> None:
    """torch.compile(model), model.compile(), a compiled forward and a compiled submodule: the
    parameters of eager mode after a few steps, with the engine asked for (the Gramian engine's
    hooks run eagerly, between compiled regions). (The model is no nn.Sequential: torch 2.13
    runs a Sequential's own compile() eagerly.)"""
    compile = partial(WAYS[way], backend=BACKEND)
    jd = _assert_same_steps(_ZOO["linear_3d_inplace"], engine, compile)
    assert jd.last_step.engine == engine


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "name",
    [
        "mlp_inplace",  # outputs modified in place right after the layers
        "conv_circular_replicate",
        "cross_attention_kdim_vdim",  # MultiheadAttention's rule records inside torch's code
        "custom_direct_parameters",  # the exact fallback: a batched pass over the objectives
        "resnet_basic_blocks_inplace",
    ],
)
def test_compiled_models_give_the_eager_steps(name: str, engine: str) -> None:
    """Compiled code of every kind of layer: the parameters of eager mode."""
    _assert_same_steps(_ZOO[name], engine, partial(_wrapped, backend=BACKEND))


@pytest.mark.parametrize("engine", ENGINES)
def test_compiled_code_can_run_backward_several_times_after_recompiling(engine: str) -> None:
    """A new batch size recompiles with dynamic shapes, whose backward torch compiles at once,
    with donated buffers unless JDOptimizer turned them off: the engines' several backward
    passes through one graph then work."""
    compile = partial(_wrapped, backend=BACKEND)
    _assert_same_steps(_ZOO["resnet_block_groupnorm"], engine, compile, batches=(4, 3, 2))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("engine", ENGINES)
def test_inductor_code_gives_the_eager_steps(engine: str) -> None:
    """With inductor's kernels, which cannot run batched over the rows of a Jacobian (they read
    memory that batched tensors do not have), the rows take one backward pass each: the
    parameters of eager mode, with the full Jacobian and with the Gramian engine's fallback."""
    _assert_same_steps(_ZOO["custom_direct_parameters"], engine, torch.compile)


@pytest.mark.parametrize("way", WAYS)
def test_autogram_is_refused_for_a_model_compiled_without_graph_breaks(way: str) -> None:
    """engine='autogram' needs a graph break at every hooked layer, which fullgraph=True
    forbids: refused when JDOptimizer is built, with the alternatives, and nothing changes."""
    model, inputs = _make(_ZOO["linear_3d_inplace"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    (model(*inputs) ** 2).sum().backward()
    optimizer.step()  # momentum buffers and gradients that must stay as they are
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state.items()}
    net = WAYS[way](model, backend=BACKEND, fullgraph=True)
    with pytest.raises(ValueError, match="fullgraph=True") as info:
        JDOptimizer(optimizer, model=net, batch_dim=0, engine="autogram")
    message = str(info.value)
    assert "engine='autogram'" in message and "engine='autojac'" in message
    assert "without fullgraph=True" in message
    for p, before, grad in zip(model.parameters(), params, grads, strict=True):
        assert torch.equal(p, before) and torch.equal(p.grad, grad)
    for key, buffers in state.items():
        for name, value in buffers.items():
            assert torch.equal(optimizer.state[key][name], value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_auto_engine_takes_the_full_jacobian_for_a_model_compiled_without_graph_breaks() -> None:
    """engine='auto' with a fullgraph=True model: the autojac engine, and the eager steps."""
    compile = partial(_wrapped, backend=BACKEND, fullgraph=True)
    jd = _assert_same_steps(_ZOO[_ONE_GRAPH], "auto", compile)
    assert jd.engine == "autojac" and jd.last_step.engine == "autojac"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_code_compiled_before_the_optimizer_is_reported_with_the_fix() -> None:
    """Code compiled before JDOptimizer hooked the model does not run the hooks: the step
    fails, says how to fix it, and changes nothing; after torch._dynamo.reset() it works."""
    model, inputs = _make(_ZOO[_ONE_GRAPH])
    net = torch.compile(model, backend=BACKEND)
    net(*inputs)  # compiled without the engine's hooks
    jd = JDOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), model=net, batch_dim=0)
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError) as info:
        jd.step((net(*inputs) ** 2).sum(dim=1))
    notes = info.value.__notes__
    assert any("Create JDOptimizer before the model's first call" in note for note in notes)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params, strict=True))
    torch._dynamo.reset()
    jd.step((net(*inputs) ** 2).sum(dim=1))
    assert jd.last_step.engine == "autogram"
