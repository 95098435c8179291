"""The backend registry: which backends `auto` may pick (plug-ins only when they say so), and
options passed through `create_backend` / `Avatar.load(backend_options=)` to the backend's own
constructor, refused by name when the backend does not take them."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnx")  # test_runtime's bundle builder writes the graph with it
from test_runtime import make_test_bundle  # noqa: E402

from embedtalk_sdk.runtime.avatar import Avatar  # noqa: E402
from embedtalk_sdk.runtime.backends import registry  # noqa: E402
from embedtalk_sdk.runtime.backends.base import BackendError  # noqa: E402
from embedtalk_sdk.runtime.bundle import Bundle  # noqa: E402

FAKE_BUNDLE = SimpleNamespace(path="fake.etk")


class Refuses:
    """A built-in stand-in that cannot run here (as a GPU backend without a GPU)."""

    name = "refuses"

    def __init__(self, bundle, device: int = 0) -> None:
        raise BackendError("backend refuses: no GPU")


class Baseline:
    """A plug-in that `auto` must never pick (as gsplat-torch): AUTO_PICK left out."""

    name = "baseline"
    REQUIRES = ()

    def __init__(self, bundle, device: int = 0) -> None:
        self.bundle, self.device = bundle, device


class Fallback:
    """A plug-in that allows `auto` (as the torch backend), but takes no device."""

    name = "fallback"
    AUTO_PICK = True

    def __init__(self, bundle, threads: int | None = None) -> None:
        self.bundle, self.threads = bundle, threads


class FakeEntryPoint:
    def __init__(self, name: str, cls: type) -> None:
        self.name, self.cls = name, cls
        self.module, self.attr = __name__, cls.__name__
        self.value = f"{self.module}:{self.attr}"

    def load(self) -> type:
        return self.cls


@pytest.fixture
def fake_registry(monkeypatch):
    """One built-in that fails here, then the plug-ins `baseline` (no auto) and `fallback` (auto)."""
    import importlib.metadata

    eps = [FakeEntryPoint("baseline", Baseline), FakeEntryPoint("fallback", Fallback)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_REGISTRY", {"refuses": registry._Entry(__name__, "Refuses", (), "", auto_pick=True)})
    monkeypatch.setattr(registry, "AUTO_ORDER", ("refuses",))
    monkeypatch.setattr(registry, "_plugged_in", False)
    assert sys.modules[__name__].__spec__ is not None  # `_installed` finds this module by its spec


def test_auto_skips_plugins_that_do_not_allow_it(fake_registry):
    assert registry.available_backends() == ["refuses", "fallback", "baseline"]
    assert registry.auto_backends() == ["refuses", "fallback"]
    backend = registry.create_backend("auto", FAKE_BUNDLE)
    assert isinstance(backend, Fallback)  # after the built-in failed; the baseline came first among plug-ins
    assert isinstance(registry.create_backend("baseline", FAKE_BUNDLE), Baseline)  # still creatable by name


def test_auto_with_options_tries_only_backends_that_take_them(fake_registry):
    assert registry.create_backend("auto", FAKE_BUNDLE, {"threads": 3}).threads == 3  # `refuses` not even tried
    with pytest.raises(BackendError, match=r"refuses: backend refuses: no GPU; skipped.*fallback \(threads\)"):
        registry.create_backend("auto", FAKE_BUNDLE, {"device": 1})
    with pytest.raises(ValueError, match=r"takes the options colour.*refuses \(device\); fallback \(threads\)"):
        registry.create_backend("auto", FAKE_BUNDLE, {"colour": "red"})


def test_an_option_the_backend_does_not_take_is_named(fake_registry):
    assert registry.create_backend("baseline", FAKE_BUNDLE, {"device": 2}).device == 2
    with pytest.raises(ValueError, match=r"backend 'baseline' takes no option threads; it takes: device"):
        registry.create_backend("baseline", FAKE_BUNDLE, {"threads": 2})


def test_the_real_plugins_say_whether_auto_may_pick_them():
    entries = registry._registry()
    assert entries["gsplat-torch"].auto_pick is False  # a bench baseline, not a playback backend
    assert entries["torch"].auto_pick is True
    assert all(entries[n].auto_pick for n in registry.AUTO_ORDER)
    assert "gsplat-torch" not in registry.auto_backends()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return make_test_bundle(tmp_path_factory.mktemp("bundle") / "test.etk")


def test_backend_options_reach_the_backend(bundle_path: Path):
    avatar = Avatar.load(bundle_path, backend="onnxruntime", backend_options={"threads": 1, "max_batch": 3})
    assert avatar.backend.session.get_session_options().intra_op_num_threads == 1
    assert avatar.backend._delta_means.shape[0] == 3
    with pytest.raises(ValueError, match=r"backend 'onnxruntime' takes no option device; it takes: threads, max_batch, decode"):
        Avatar.load(bundle_path, backend="onnxruntime", backend_options={"device": 1})
    assert registry.backend_options(type(avatar.backend)) == ["threads", "max_batch", "decode"]


def test_auto_with_a_cpu_option_gets_the_cpu_backend(bundle_path: Path):
    # `threads` rules out the GPU backends (they take `device`): onnxruntime is the first that takes it.
    assert Avatar.load(bundle_path, backend_options={"threads": 1}).backend_name == "onnxruntime"
    with pytest.raises(ValueError, match="backend 'torch' takes no option threads; it takes: none"):
        registry.create_backend("torch", Bundle.open(bundle_path), {"threads": 1})
