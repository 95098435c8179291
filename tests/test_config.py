"""`config_from_mapping`: the one reader of stored settings dataclasses (MelSpec, EncoderWindows,
SphinxSpec, DeformConfig) names every wrong field and where the mapping came from."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from embedtalk_sdk.runtime.audio.encoders import EncoderWindows
from embedtalk_sdk.runtime.audio.mel import MelSpec
from embedtalk_sdk.runtime.audio.phonetic import SphinxSpec
from embedtalk_sdk.runtime.config import ConfigError, config_from_mapping
from embedtalk_sdk.runtime.errors import EmbedTalkError


@dataclass(frozen=True)
class Spec:
    rate: int = 50
    gain: float = 1.0
    on: bool = True
    name: str = "x"

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"Spec: rate must be > 0, got {self.rate}")


def test_values_are_converted_to_the_declared_types():
    got = config_from_mapping(Spec, {"rate": 50.0, "gain": 2, "on": False, "name": "y"})
    assert got == Spec(50, 2.0, False, "y") and type(got.rate) is int and type(got.gain) is float


def test_every_wrong_field_is_named_with_the_source():
    with pytest.raises(ConfigError) as e:
        config_from_mapping(Spec, {"rate": 2.5, "gain": True, "nme": "y"}, "bundle a.etk: audio block")
    message = str(e.value)
    assert message.startswith("bundle a.etk: audio block: ")
    for part in ("missing fields ['on', 'name']", "unknown fields ['nme']", "field 'rate': 2.5 is not int",
                 "field 'gain': True is not float", "Spec fields: rate, gain, on, name"):
        assert part in message
    assert isinstance(e.value, ValueError) and isinstance(e.value, EmbedTalkError)


def test_defaults_and_unknown_keys_as_asked():
    assert config_from_mapping(Spec, {"rate": 7, "extra": 1}, defaults={"gain": 0.5, "on": True, "name": "z"},
                               ignore_unknown=True) == Spec(7, 0.5, True, "z")
    with pytest.raises(ConfigError, match=r"Spec\.from_dict: expected an object of Spec fields, got list"):
        config_from_mapping(Spec, [1, 2])


def test_a_value_the_dataclass_refuses_names_the_source():
    with pytest.raises(ConfigError, match=r"^checkpoint c\.pt: Spec: rate must be > 0, got 0$"):
        config_from_mapping(Spec, {"rate": 0, "gain": 1.0, "on": True, "name": "x"}, "checkpoint c.pt")


def test_the_audio_specs_read_their_stored_blocks():
    # MelSpec and EncoderWindows share the manifest's audio block with other keys; SphinxSpec has
    # its own block (an unknown key there is refused) and reads an old block without "dither" as 0.
    block = {"encoder": "mel", **MelSpec().to_dict(), "window": 16, "feature_dim": 32}
    assert MelSpec.from_dict(block) == MelSpec()
    assert EncoderWindows.from_dict({"encoder": "hubert", **EncoderWindows().to_dict()}) == EncoderWindows()
    old = SphinxSpec().to_dict()
    del old["dither"]
    assert SphinxSpec.from_dict(old).dither == 0.0
    with pytest.raises(ConfigError, match=r"sphinx block: unknown fields \['lowpass'\]"):
        SphinxSpec.from_dict({**SphinxSpec().to_dict(), "lowpass": 1}, "sphinx block")
    with pytest.raises(ConfigError, match=r"EncoderWindows\.from_dict: missing fields \['lookahead_rows'\]"):
        EncoderWindows.from_dict({k: v for k, v in EncoderWindows().to_dict().items() if k != "lookahead_rows"})
