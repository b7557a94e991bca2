"""The processing chain between the upstream's answer and the upload (docs/audio.md explains the order).

decode -> resample -> trim silence -> loop -> loudness (with the true-peak ceiling) -> encode and tag ->
measure the encoded file -> waveform overview. `process` is pure: bytes and options in, the stored file,
its measurements and its waveform out.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from . import dsp, encode
from .convert import DecodeError
from .encode import Tags

SAMPLE_RATES = (44100, 48000)
BIT_DEPTHS = (16, 24)
FORMATS = ("mp3", "wav", "flac")
LOUDNESS_RANGE = (-40.0, -6.0)
DEFAULT_SAMPLE_RATE = 44100
DEFAULT_BIT_DEPTH = 16
PEAK_PAIRS = 1000


class ProcessingError(Exception):
    """The upstream's audio could not be turned into the requested file."""


@dataclass(frozen=True)
class AudioOptions:
    """What the producer asked for; the defaults are what the service made before these options existed."""

    output_format: str = "mp3"
    sample_rate: int = DEFAULT_SAMPLE_RATE
    bit_depth: int | None = None  # lossless only; None there means 16
    loudness_lufs: float | None = None
    trim_silence: bool = False
    loop: bool = False

    @property
    def depth(self) -> int | None:
        return None if self.output_format == "mp3" else (self.bit_depth or DEFAULT_BIT_DEPTH)

    @property
    def changes_samples(self) -> bool:
        return self.loop or self.trim_silence or self.loudness_lufs is not None


@dataclass(frozen=True)
class Measurement:
    """Measured on the stored file, decoded again."""

    duration_seconds: float
    sample_rate: int
    channels: int
    bit_depth: int | None
    loudness_lufs: float | None
    true_peak_dbtp: float | None


@dataclass(frozen=True)
class ProcessedAudio:
    data: bytes
    content_type: str
    extension: str
    measurement: Measurement
    samples_per_peak: int
    peaks: list[list[float]]

    def waveform(self) -> dict:
        return {"samples_per_peak": self.samples_per_peak, "peaks": self.peaks}


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Any file libsndfile reads (the upstream's MP3, PCM in WAV) to float32 frames x channels."""
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise DecodeError(f"cannot decode audio: {exc}") from None
    if samples.size == 0:
        raise DecodeError("decoded audio holds no samples")
    return samples, int(rate)


def _mp3_rate(data: bytes) -> int | None:
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None
    return int(info.samplerate) if info.format == "MP3" else None


def process(source: bytes, options: AudioOptions, tags: Tags) -> ProcessedAudio:
    """The stored file for `options`, from whatever the upstream sent; raises ProcessingError."""
    try:
        return _process(source, options, tags)
    except (DecodeError, ValueError, soundfile.LibsndfileError, RuntimeError) as exc:
        raise ProcessingError(f"{type(exc).__name__}: {exc}"[:300]) from exc


def _process(source: bytes, options: AudioOptions, tags: Tags) -> ProcessedAudio:
    fmt = options.output_format
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    if fmt == "mp3" and not options.changes_samples and _mp3_rate(source) == options.sample_rate:
        # Nothing to change in the sound: the upstream's MP3 is kept as it is (no second lossy encode).
        data = encode.tag_mp3(source, tags)
    else:
        samples, rate = decode(source)
        samples = dsp.resample(samples, rate, options.sample_rate)
        rate = options.sample_rate
        if options.trim_silence:
            samples = dsp.trim_silence(samples, rate)
        if options.loop:
            samples = dsp.make_loop(samples, rate)
        # Measured once: a gain moves loudness and true peak by exactly its own size.
        need_levels = options.loudness_lufs is not None or fmt != "mp3"  # WAV's bext records them
        loudness = dsp.integrated_loudness(samples, rate) if need_levels else None
        peak = dsp.true_peak_dbtp(samples) if need_levels else None
        if options.loudness_lufs is not None:
            gain = dsp.normalization_gain_db(loudness, peak, options.loudness_lufs)
            samples = dsp.apply_gain(samples, gain)
            loudness = None if loudness is None else loudness + gain
            peak = peak + gain
        if fmt == "mp3":
            data = encode.encode_mp3(samples, rate, tags)
        else:
            tagged = Tags(tags.prompt, tags.job_id, tags.created_at, loudness,
                          peak if peak is not None and np.isfinite(peak) else None)
            writer = encode.encode_wav if fmt == "wav" else encode.encode_flac
            data = writer(samples, rate, options.depth, tagged)
        del samples
    measurement, per, pairs = measure(data)
    return ProcessedAudio(data, encode.CONTENT_TYPES[fmt], fmt, measurement, per, pairs)


_DEPTHS = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "PCM_U8": 8, "PCM_S8": 8}


def measure(data: bytes) -> tuple[Measurement, int, list[list[float]]]:
    """Duration, rate, channels, bit depth (lossless only), loudness and true peak of a stored file,
    and its waveform overview (samples per pair, [min, max] pairs)."""
    info = soundfile.info(io.BytesIO(data))
    samples, rate = decode(data)
    loudness = dsp.integrated_loudness(samples, rate)
    peak = dsp.true_peak_dbtp(samples)
    per, pairs = dsp.peaks(samples, PEAK_PAIRS)
    measurement = Measurement(
        duration_seconds=round(samples.shape[0] / rate, 4), sample_rate=rate, channels=samples.shape[1],
        bit_depth=_DEPTHS.get(info.subtype) if info.format in ("WAV", "FLAC") else None,
        loudness_lufs=None if loudness is None else round(loudness, 2),
        true_peak_dbtp=round(peak, 2) if np.isfinite(peak) else None)
    return measurement, per, pairs
