"""One root for the SDK's errors: every exception class the project defines derives from
`EmbedTalkError` and keeps the standard base it had, so `except ValueError` in an app still works.

Every module of the package is imported and searched, so a new error class that forgets the root
fails here (modules whose optional dependencies are not installed are left out and named)."""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import pytest

from test_layout import module_name, source_files

import embedtalk_sdk
from embedtalk_sdk.runtime import EmbedTalkError

# The project's error classes and the standard base each keeps besides the root.
STANDARD_BASES = {
    "embedtalk_sdk.data.dataset.DatasetError": ValueError,
    "embedtalk_sdk.eval.EvalError": ValueError,
    "embedtalk_sdk.model_files.ModelFileError": FileNotFoundError,  # and ValueError (tests/test_model_files.py)
    "embedtalk_sdk.model.checkpoint.CheckpointError": ValueError,
    "embedtalk_sdk.preprocess.face.FaceModelError": ValueError,
    "embedtalk_sdk.preprocess.preprocess.PreprocessError": ValueError,
    "embedtalk_sdk.serve.app.ServerFull": Exception,
    "embedtalk_sdk.serve.app.UploadTooLarge": ValueError,
    "embedtalk_sdk.serve.avatars.UnknownAvatar": LookupError,
    "embedtalk_sdk.serve.session.SessionError": ValueError,
    "embedtalk_sdk.serve.tts.TTSError": ValueError,
    "embedtalk_sdk.train.resume.ResumeError": ValueError,
    "embedtalk_sdk.runtime.audio.io.AudioError": ValueError,
    "embedtalk_sdk.runtime.audio.io.AudioTooLong": ValueError,
    "embedtalk_sdk.runtime.backends.base.BackendError": RuntimeError,
    "embedtalk_sdk.runtime.bundle.BundleError": ValueError,
    "embedtalk_sdk.runtime.config.ConfigError": ValueError,
    "embedtalk_sdk.plugins.cuda.build.BuildError": RuntimeError,
    "embedtalk_sdk.plugins.cuda.driver.CudaError": RuntimeError,
    "embedtalk_sdk.plugins.cuda.engines.EngineBuildError": RuntimeError,
    "embedtalk_sdk.plugins.cuda.shared_lib.RasterLibraryError": RuntimeError,
}


def project_modules() -> tuple[list[ModuleType], list[str]]:
    """Every module of the package, imported; and the names of those an optional dependency is
    missing for (an error inside the project itself fails the test)."""
    modules, left_out = [], []
    for name in sorted(module_name(p) for p in source_files("embedtalk_sdk", "runtime", "plugins", "export")):
        try:
            modules.append(importlib.import_module(name))
        except ImportError as e:
            if (e.name or "").startswith("embedtalk_sdk"):
                raise
            left_out.append(f"{name} ({e.name or e})")
    return modules, left_out


def exception_classes(modules: list[ModuleType]) -> dict[str, type]:
    """The exception classes defined (not imported) at the top of these modules, by full name."""
    return {f"{m.__name__}.{obj.__qualname__}": obj for m in modules for obj in vars(m).values()
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == m.__name__}


def rootless(classes: dict[str, type]) -> list[str]:
    return sorted(name for name, cls in classes.items() if not issubclass(cls, EmbedTalkError))


@pytest.fixture(scope="module")
def found() -> tuple[dict[str, type], list[str]]:
    modules, left_out = project_modules()
    return exception_classes(modules), left_out


def test_every_error_class_derives_from_the_root(found):
    classes, left_out = found
    assert not rootless(classes), f"error classes without EmbedTalkError: {rootless(classes)}"
    if left_out:
        warnings.warn(f"not searched (optional dependency missing): {', '.join(left_out)}")


def test_each_error_class_keeps_its_standard_base(found):
    classes, left_out = found
    skipped = {m.split(" ")[0] for m in left_out}
    for name, base in STANDARD_BASES.items():
        if name.rsplit(".", 1)[0] in skipped:
            continue
        assert name in classes, f"{name} is gone: update STANDARD_BASES if it moved"
        assert issubclass(classes[name], base) and issubclass(classes[name], EmbedTalkError), name


def test_the_check_catches_a_class_without_the_root():
    # The rule must be able to fail: a ValueError subclass of a project module is flagged.
    stray = type("StrayError", (ValueError,), {"__module__": "embedtalk_sdk.runtime.bundle"})
    rooted = type("RootedError", (EmbedTalkError, ValueError), {"__module__": "embedtalk_sdk.runtime.bundle"})
    module = ModuleType("embedtalk_sdk.runtime.bundle")
    module.StrayError, module.RootedError, module.ValueError = stray, rooted, ValueError
    assert rootless(exception_classes([module])) == ["embedtalk_sdk.runtime.bundle.StrayError"]


def test_the_root_is_public():
    assert embedtalk_sdk.EmbedTalkError is EmbedTalkError and "EmbedTalkError" in embedtalk_sdk.__all__
    assert EmbedTalkError.__doc__ and issubclass(EmbedTalkError, Exception)
