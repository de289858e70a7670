"""The precision contract: whatever the caller's autocast state and the parameters' dtype, the
Gramian, the weights and the solver run in at least float32, and a parameter's ``.grad`` keeps
the parameter's dtype; reduced-precision float32 products (TF32, oneDNN's bfloat16) never
reach the weighting or the solver, whose caller finds its settings as it left them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from jdopt import JDOptimizer
from jdopt._linalg import exact_float32
from jdopt.aggregation import UPGrad, UPGradWeighting, Weighting
from jdopt.autogram import Engine
from jdopt.autojac import backward
from tests.utils.device import CPU, DEVICE, draw, seeded

BF16 = torch.bfloat16
# A step after bfloat16 rounding of the forward pass (8 bits of mantissa, a few layers) agrees
# with the float32 one to about 1%: twice that is the loose tolerance of these comparisons.
LOOSE = 2e-2
# The same float32 computations, with or without autocast around them: equal but for the
# order of float32 sums.
TIGHT = 1e-6


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A seeded MLP with a LayerNorm, built on the CPU, on ``DEVICE``."""
    with torch.device(CPU):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))
    return model.to(DEVICE, dtype)


def _losses(model: nn.Module) -> Tensor:
    """Per-sample losses ``[10]``, in the model's dtype."""
    g = seeded(1)
    x, y = draw(10, 8, generator=g), draw(10, 3, generator=g)
    dtype = next(model.parameters()).dtype
    return ((model(x.to(dtype)) - y.to(dtype)) ** 2).mean(dim=1)


def _autocast(enabled: bool = True) -> torch.autocast:
    return torch.autocast(DEVICE.type, dtype=BF16, enabled=enabled)


class _MultiTask(nn.Module):
    """A trunk and two task heads."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device(CPU):
            torch.manual_seed(0)
            self.trunk = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 6))
            self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(2))
        self.to(DEVICE)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        features = self.trunk(x)
        return [(head(features) - i).pow(2).mean() for i, head in enumerate(self.heads)], features


def _jd(model: nn.Module, engine: str, multi_task: bool = False) -> JDOptimizer:
    hooked = model.trunk if multi_task else model
    return JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model=hooked,
        batch_dim=None if multi_task else 0,
        engine=engine,
    )


def _grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _relative(actual: Tensor, expected: Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def _step(engine: str, multi_task: bool, autocast: bool) -> tuple[JDOptimizer, nn.Module]:
    """One step on float32 losses computed without autocast; the step itself inside bfloat16
    autocast or not."""
    model = _MultiTask() if multi_task else _model()
    jd = _jd(model, engine, multi_task)
    if multi_task:
        tasks, features = model(draw(10, 8, generator=seeded(2)))
        with _autocast(autocast):
            jd.step(tasks, features=features)
    else:
        losses = _losses(model)
        with _autocast(autocast):
            jd.step(losses)
    return jd, model


@pytest.mark.parametrize("multi_task", [False, True], ids=["per-sample", "multi-task"])
@pytest.mark.parametrize("engine", ["autogram", "autojac"])
def test_a_step_inside_autocast_is_the_step_outside_it(engine: str, multi_task: bool) -> None:
    """``jd.step`` called inside ``torch.autocast`` computes what it computes outside: the
    caller's autocast does not reach the backward passes, the Gramian, the weights or the
    update."""
    plain, plain_model = _step(engine, multi_task, autocast=False)
    inside, inside_model = _step(engine, multi_task, autocast=True)
    assert inside.last_step.engine == plain.last_step.engine
    assert inside.last_step.gramian.dtype == torch.float32
    assert _relative(inside.last_step.gramian, plain.last_step.gramian) <= TIGHT
    assert _relative(inside.last_step.weights, plain.last_step.weights) <= TIGHT
    assert _relative(_grads(inside_model), _grads(plain_model)) <= TIGHT


@pytest.mark.parametrize("engine", ["autogram", "autojac"])
def test_a_bfloat16_model_gets_float32_weights_and_bfloat16_grads(engine: str) -> None:
    """With bfloat16 parameters, the Gramian and the weights are float32, close to those of the
    same model in float32; each ``.grad`` is bfloat16, as the parameter."""
    half, full = _model(BF16), _model()
    half_jd, full_jd = _jd(half, engine), _jd(full, engine)
    half_jd.step(_losses(half))
    full_jd.step(_losses(full))
    found = half_jd.last_step
    assert found.engine == engine
    assert found.gramian.dtype == torch.float32 and found.weights.dtype == torch.float32
    assert bool(torch.isfinite(found.weights).all())
    assert _relative(found.gramian, full_jd.last_step.gramian) <= LOOSE
    assert _relative(found.weights, full_jd.last_step.weights) <= LOOSE
    assert all(p.grad.dtype == BF16 for p in half.parameters())
    assert _relative(_grads(half), _grads(full)) <= LOOSE


@pytest.mark.parametrize("engine", ["autogram", "autojac"])
def test_losses_of_an_autocast_forward_give_a_float32_step(engine: str) -> None:
    """Losses from a forward pass under bfloat16 autocast (the step outside it) give a float32
    Gramian and float32 weights, close to the float32 step's, and float32 ``.grad``."""
    mixed, full = _model(), _model()
    mixed_jd, full_jd = _jd(mixed, engine), _jd(full, engine)
    with _autocast():
        losses = _losses(mixed)
    mixed_jd.step(losses.float())
    full_jd.step(_losses(full))
    found = mixed_jd.last_step
    assert found.gramian.dtype == torch.float32 and found.weights.dtype == torch.float32
    assert _relative(found.gramian, full_jd.last_step.gramian) <= LOOSE
    assert _relative(found.weights, full_jd.last_step.weights) <= LOOSE
    assert all(p.grad.dtype == torch.float32 for p in mixed.parameters())
    assert _relative(_grads(mixed), _grads(full)) <= LOOSE


class _Scale(nn.Module):
    """A module with a direct parameter: called twice, the engine takes its gradients from the
    losses (the exact fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 16))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def _model_with_fallback(dtype: torch.dtype) -> nn.Module:
    with torch.device(CPU):
        torch.manual_seed(0)
        scale = _Scale()
        model = nn.Sequential(nn.Linear(8, 16), scale, nn.Tanh(), scale, nn.Linear(16, 3))
    return model.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
def test_the_engine_gramian_of_a_half_precision_model_is_float32(dtype: torch.dtype) -> None:
    """``Engine.compute_gramian`` of a float16 or bfloat16 model is float32 (closed forms and
    fallback alike), and finite where float16 would overflow (entries beyond 65504); the
    weighted gradients are in the parameters' dtype."""
    model = _model_with_fallback(dtype)
    engine = Engine(model, batch_dim=0)
    losses = _losses(model) * 300.0  # gradients fine in float16, their squares are not
    gramian = engine.compute_gramian(losses)
    assert engine.fallback_parameters == [model[1].weight]
    assert gramian.dtype == torch.float32
    assert bool(torch.isfinite(gramian).all()) and float(gramian.max()) > 65504
    full = _model_with_fallback(torch.float32)
    full.load_state_dict(model.state_dict())  # the same (rounded) values, in float32
    expected = Engine(full, batch_dim=0).compute_gramian(_losses(full) * 300.0)
    assert _relative(gramian, expected) <= LOOSE
    engine.accumulate_grads(torch.ones_like(losses))
    assert all(p.grad.dtype == dtype for p in model.parameters())


def test_the_engine_keeps_float64() -> None:
    """A float64 model's Gramian stays float64."""
    model = _model(torch.float64)
    assert Engine(model, batch_dim=0).compute_gramian(_losses(model)).dtype == torch.float64


def test_the_engine_and_autojac_called_inside_autocast_compute_as_outside() -> None:
    """``Engine.compute_gramian`` / ``accumulate_grads`` and ``autojac.backward`` called inside
    autocast compute what they compute outside it."""
    results = []
    for autocast in (False, True):
        gram_model, jac_model = _model(), _model()
        engine = Engine(gram_model, batch_dim=0)
        gram_losses, jac_losses = _losses(gram_model), _losses(jac_model)
        with _autocast(autocast):
            gramian = engine.compute_gramian(gram_losses)
            engine.accumulate_grads(UPGradWeighting()(gramian))
            backward(jac_losses, UPGrad())
        results.append((gramian, _grads(gram_model), _grads(jac_model)))
    for inside, outside in zip(results[1], results[0], strict=True):
        assert inside.dtype == torch.float32
        assert _relative(inside, outside) <= TIGHT


# ---------------------------------------------------------------------- reduced float32 products

# "per_backend_mixed": "high", then oneDNN's products in bfloat16 (a mix the legacy getter
# refuses to express).
_SETTINGS = ["highest", "high", "medium", "allow_tf32", "per_backend_tf32", "per_backend_bf16"]
_SETTINGS += ["per_backend_mixed"]


def _matmul_settings() -> tuple:
    """Every setting of float32 products, as its getters read it (``"raises"`` where a getter
    refuses the mix of the legacy and per-backend settings)."""

    def read(getter) -> object:
        try:
            return getter()
        except RuntimeError:
            return "raises"

    backends = torch.backends
    found = [
        read(torch.get_float32_matmul_precision),
        read(lambda: backends.cuda.matmul.allow_tf32),
    ]
    if hasattr(backends, "fp32_precision"):
        found += [
            backends.fp32_precision,
            backends.cuda.matmul.fp32_precision,
            backends.mkldnn.matmul.fp32_precision,
        ]
    return tuple(found)


def _restore(settings: tuple) -> None:
    """Puts back the settings :func:`_matmul_settings` read."""
    legacy = settings[0]
    torch.set_float32_matmul_precision("highest" if legacy == "raises" else legacy)
    if len(settings) > 2:
        backends = torch.backends
        backends.fp32_precision = settings[2]
        backends.cuda.matmul.fp32_precision = settings[3]
        backends.mkldnn.matmul.fp32_precision = settings[4]
    assert _matmul_settings() == settings


@pytest.fixture
def matmul_setting(request: pytest.FixtureRequest) -> Iterator[str]:
    """Applies one of ``_SETTINGS``, and puts the session's settings back afterwards."""
    name = request.param
    backends = torch.backends
    if name.startswith("per_backend") and not hasattr(backends, "fp32_precision"):
        pytest.skip("per-backend float32 settings need torch >= 2.9")
    session = _matmul_settings()
    try:
        if name == "allow_tf32":
            backends.cuda.matmul.allow_tf32 = True
        elif name == "per_backend_tf32":
            backends.cuda.matmul.fp32_precision = "tf32"
        elif name == "per_backend_bf16":
            backends.mkldnn.matmul.fp32_precision = "bf16"
        elif name == "per_backend_mixed":
            torch.set_float32_matmul_precision("high")
            backends.mkldnn.matmul.fp32_precision = "bf16"
        else:
            torch.set_float32_matmul_precision(name)
        yield name
    finally:
        _restore(session)


class _Recording(Weighting):
    """The mean, recording the float32 product settings it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, gramian: Tensor, /) -> Tensor:
        self.seen.append(_matmul_settings())
        return torch.full_like(gramian[0], 1.0 / gramian.shape[0])


@pytest.mark.parametrize("matmul_setting", _SETTINGS, indirect=True)
def test_weightings_run_without_reduced_float32_products(matmul_setting: str) -> None:
    """A weighting runs with float32 products in float32 (as with ``"highest"``), whatever
    the caller's settings, which it leaves as it found them."""
    before = _matmul_settings()
    with _autocast():
        _jd_step_with(weighting := _Recording())
    inside = weighting.seen[0]
    assert inside[0] == "highest" and inside[1] is False
    if len(inside) > 2:
        assert inside[3] != "tf32" and inside[4] not in ("tf32", "bf16")
    assert _matmul_settings() == before


def _jd_step_with(weighting: Weighting) -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=weighting)
    jd.step(_losses(model))


@pytest.mark.parametrize("matmul_setting", _SETTINGS, indirect=True)
def test_exact_float32_restores_every_setting(matmul_setting: str) -> None:
    """``exact_float32`` turns reduced-precision float32 products off inside and restores the
    caller's settings exactly, even when the body raises."""
    before = _matmul_settings()
    with pytest.raises(KeyError), exact_float32():
        assert _matmul_settings()[:2] == ("highest", False)
        raise KeyError
    assert _matmul_settings() == before
