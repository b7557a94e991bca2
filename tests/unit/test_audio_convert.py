"""Decoding upstream MP3 to 16-bit PCM: the rate and channels it carries, levels kept, full scale clipped."""
from __future__ import annotations

import array
import math

import numpy as np
import pytest

from sfx_backend.audio import DecodeError, decode_to_pcm16
from sfx_backend.audio.convert import float_to_pcm16
from sfx_backend.providers.audio import encode_mp3


def _tone(rate: int, seconds: float, peak: int) -> array.array:
    return array.array("h", (int(peak * math.sin(2 * math.pi * 441 * i / rate)) for i in range(int(rate * seconds))))


@pytest.mark.parametrize(("rate", "kbps"), [(44100, 192), (44100, 128), (22050, 32)])
def test_an_mp3_decodes_to_pcm_at_its_own_rate_with_its_level(rate, kbps):
    decoded = decode_to_pcm16(encode_mp3(_tone(rate, 1.0, 8000), rate, bitrate_kbps=kbps))
    assert (decoded.sample_rate, decoded.channels) == (rate, 1)
    assert rate <= decoded.frames <= rate * 1.1  # encoder delay and padding add a few ms, nothing is lost
    samples = np.frombuffer(decoded.pcm, dtype="<i2")
    assert 7000 < samples.max() < 9000 and -9000 < samples.min() < -7000


def test_samples_beyond_full_scale_are_clipped_not_wrapped():
    pcm = np.frombuffer(float_to_pcm16(np.array([[1.2], [-1.3], [0.5], [0.0]], dtype="float32")), dtype="<i2")
    assert pcm.tolist() == [32767, -32768, 16384, 0]


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 10, b"\xff\xfb" + bytes(64)])
def test_bytes_that_are_not_audio_raise_decode_error(data):
    with pytest.raises(DecodeError):
        decode_to_pcm16(data)
