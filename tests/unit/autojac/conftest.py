from __future__ import annotations

import pytest

from jdopt.autojac import _mtl_backward


@pytest.fixture(params=["two-stage", "one pass"])
def two_stage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a test with the two-stage pass where it applies, then with the batched pass only."""
    if request.param == "one pass":
        monkeypatch.setattr(_mtl_backward, "split_at_features", lambda *_, **__: None)
