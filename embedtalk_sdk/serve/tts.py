"""Text to speech for the server: a small interface and an offline engine (eSpeak NG).

    tts = EspeakTTS()                 # libespeak-ng + voices from the `espeakng-loader` wheel
    samples, rate = tts.synthesize("Hello there.")

Any object with `name` and `synthesize(text) -> (samples, sample_rate)` plugs in
(`create_app(..., tts=MyEngine())`); the server validates and resamples what it returns by the
same rules as every other audio input (runtime/audio/io.py: `prepare_audio`).
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from embedtalk_sdk.runtime.errors import EmbedTalkError

MAX_TEXT_CHARS = 2000


class TTSError(EmbedTalkError, ValueError):
    """Text the engine cannot speak, or an engine that cannot start here; the message says which."""


class TTS(Protocol):
    """A text-to-speech engine: mono samples (float in [-1, 1] or int16) and their rate in Hz."""

    name: str

    def synthesize(self, text: str) -> tuple[np.ndarray, int]: ...


# espeak-ng's C API (speak_lib.h), the parts used here.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakTTS:
    """eSpeak NG through ctypes, from the `espeakng-loader` wheel (its libespeak-ng and voice data;
    nothing is downloaded). espeak-ng is one global engine per process: calls are serialised.

    voice: an espeak-ng voice name ("en", "en-us", "de", ...). rate: words per minute.
    Raises TTSError when the wheel is missing or the library fails to start.
    """

    name = "espeak-ng"
    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    _rate_hz = 0

    def __init__(self, voice: str = "en-us", rate: int = 165) -> None:
        self.voice, self.words_per_minute = str(voice), int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive: C holds the pointer
        with EspeakTTS._lock:
            self._start()

    @classmethod
    def _start(cls) -> None:
        if cls._lib is not None:
            return
        try:
            import espeakng_loader
        except ImportError as e:
            raise TTSError("text to speech needs the espeakng-loader wheel: pip install -e \".[serve]\"") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()  # the folder holding espeak-ng-data
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if rate <= 0:
            raise TTSError(f"espeak-ng failed to start (espeak_Initialize returned {rate}) with the data in "
                           f"{espeakng_loader.get_data_path()}")
        cls._lib, cls._rate_hz = lib, int(rate)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """int16 samples [S] of `text` spoken, and their rate (22050 Hz for espeak-ng's voices).

        Raises TTSError for empty or over-long text (MAX_TEXT_CHARS) and an unknown voice."""
        text = str(text).strip()
        if not text:
            raise TTSError("text to speak is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise TTSError(f"text to speak is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        data = text.encode("utf-8") + b"\0"
        lib = EspeakTTS._lib
        assert lib is not None
        with EspeakTTS._lock:
            self._chunks = []
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(self.voice.encode()) != 0:
                raise TTSError(f"espeak-ng has no voice {self.voice!r}")
            lib.espeak_SetParameter(1, self.words_per_minute, 0)  # espeakRATE, absolute
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if err != 0:
            raise TTSError(f"espeak-ng could not speak the text (error {err})")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if samples.size == 0:
            raise TTSError(f"espeak-ng produced no sound for {text[:40]!r}")
        return samples.astype(np.int16, copy=False), EspeakTTS._rate_hz
