"""Decoding compressed audio to 16-bit PCM, so a job that asked for WAV gets WAV whatever came upstream.

Decoding goes through libsndfile (the `soundfile` wheel bundles it, with its MPEG layer III decoder),
read as float and clipped here: libsndfile's own float-to-short conversion does not clip by default, and an
MP3 that peaks at full scale decodes to samples a little beyond it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile


class DecodeError(ValueError):
    """The bytes are not audio libsndfile can decode."""


@dataclass(frozen=True)
class PcmAudio:
    """Interleaved 16-bit little-endian PCM and what it takes to play it."""

    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return len(self.pcm) // (2 * self.channels)


def decode_to_pcm16(data: bytes) -> PcmAudio:
    """Decode an MP3 (or any container libsndfile reads) to interleaved 16-bit PCM at its own rate."""
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise DecodeError(f"cannot decode audio: {exc}") from None
    if samples.size == 0:
        raise DecodeError("decoded audio holds no samples")
    return PcmAudio(float_to_pcm16(samples), int(rate), int(samples.shape[1]))


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in -1..1 (frames x channels) to interleaved int16 little-endian bytes, clipped."""
    scaled = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    return scaled.tobytes()
