"""Sample-array steps of the processing chain: pure functions, float32 (frames x channels) in and out.

Every function here takes samples and returns new samples or numbers; none reads or writes anything but
memory. Arrays are float32 so a 30 s, 48 kHz stereo job holds about 11.5 MB per copy, and the steps that
need more room (the 4x oversampled true-peak measurement) work through the signal in chunks.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyloudnorm
from scipy.ndimage import maximum_filter1d
from scipy.signal import firwin, resample_poly

SILENCE_DBFS = -60.0  # the contract's threshold for trimming
TRUE_PEAK_CEILING_DBTP = -1.0
FADE_IN_SECONDS = 0.003  # after a trimmed start: long enough to avoid a click, short enough to keep an attack
FADE_OUT_SECONDS = 0.005
LOOP_CROSSFADE_SECONDS = 0.1
OVERSAMPLING = 4  # ITU-R BS.1770-4 annex 2: 4x oversampling for true peak at 48 kHz
_TP_CHUNK_FRAMES = 1 << 15
_BLOCK_SECONDS = 0.4  # BS.1770's gating block


def as_frames(samples: np.ndarray) -> np.ndarray:
    """float32, 2-D (frames x channels), whatever shape a caller had."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.reshape(-1, 1) if samples.ndim == 1 else samples


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def gain_to_db(gain: float) -> float:
    return 20.0 * math.log10(gain) if gain > 0 else -math.inf


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (a Kaiser-windowed FIR, scipy's resample_poly) to `to_rate`."""
    samples = as_frames(samples)
    if from_rate == to_rate:
        return samples
    ratio = Fraction(to_rate, from_rate)
    out = resample_poly(samples, ratio.numerator, ratio.denominator, axis=0)
    return out.astype(np.float32, copy=False)


def _frame_peaks(samples: np.ndarray) -> np.ndarray:
    """The largest absolute value in each frame, over its channels (a reduction over a 2-wide axis is slow)."""
    env = np.abs(samples[:, 0])
    for c in range(1, samples.shape[1]):
        np.maximum(env, np.abs(samples[:, c]), out=env)
    return env


def trim_silence(samples: np.ndarray, rate: int, threshold_dbfs: float = SILENCE_DBFS,
                 fade_in_seconds: float = FADE_IN_SECONDS, fade_out_seconds: float = FADE_OUT_SECONDS) -> np.ndarray:
    """Drop leading and trailing frames below `threshold_dbfs`, then fade the new ends so they never click.

    Audio that is silent throughout is returned as it came: a file with no frames would break a DAW.
    """
    samples = as_frames(samples)
    if samples.shape[0] == 0:
        return samples
    above = _frame_peaks(samples) > db_to_gain(threshold_dbfs)
    if not above.any():
        return samples
    first = int(above.argmax())
    last = samples.shape[0] - int(above[::-1].argmax())  # one past the last loud frame
    out = samples[first:last].copy()
    fade(out, rate, fade_in_seconds if first > 0 else 0.0, fade_out_seconds if last < samples.shape[0] else 0.0)
    return out


def fade(samples: np.ndarray, rate: int, in_seconds: float, out_seconds: float) -> None:
    """Raised-cosine fades at the ends, in place."""
    n = samples.shape[0]
    for seconds, head in ((in_seconds, True), (out_seconds, False)):
        length = min(n // 2, int(round(seconds * rate)))
        if length <= 0:
            continue
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(length, dtype=np.float32) / length)).astype(np.float32)
        if head:
            samples[:length] *= ramp[:, None]
        else:
            samples[n - length:] *= ramp[::-1, None]


def make_loop(samples: np.ndarray, rate: int, crossfade_seconds: float = LOOP_CROSSFADE_SECONDS) -> np.ndarray:
    """Fold the tail into the head so that, played end to start, the join is a pair of neighbouring samples.

    The last `n` frames are crossfaded (equal power) over the first `n`, and dropped from the end. The new
    first frame is the old frame `len - n`, the natural successor of the new last frame `len - n - 1`: the
    join has the level and slope the signal has anywhere else. The file gets `n` frames shorter.
    """
    samples = as_frames(samples)
    total = samples.shape[0]
    n = min(int(round(crossfade_seconds * rate)), total // 4)
    if n < 2:
        return samples
    t = np.arange(n, dtype=np.float32) / np.float32(n)
    head_gain = np.sin(0.5 * np.pi * t).astype(np.float32)[:, None]
    tail_gain = np.cos(0.5 * np.pi * t).astype(np.float32)[:, None]
    out = samples[: total - n].copy()
    out[:n] = samples[:n] * head_gain + samples[total - n:] * tail_gain
    return out


def _interpolator() -> np.ndarray:
    """(12, 3): the three in-between phases of a 4x interpolation filter, as dot-product weights.

    A 49-tap Kaiser-windowed sinc with its cutoff at the original Nyquist frequency (BS.1770-4 annex 2
    asks for an interpolator of at least 48 taps at 4x). Its length is 4 x 12 + 1 and its centre tap is
    a multiple of 4, so phase 0 reproduces the samples themselves: only phases 1 to 3 need computing.
    `y[4q + p] = sum_j x[q - j] h[4j + p]`: column p-1 holds h[4j + p] for j = 11 down to 0.
    """
    h = firwin(4 * _TAPS_PER_PHASE + 1, 1.0 / OVERSAMPLING, window=("kaiser", 5.0)) * OVERSAMPLING
    return np.stack([h[p::OVERSAMPLING][:_TAPS_PER_PHASE][::-1] for p in (1, 2, 3)], axis=1).astype(np.float32)


_TAPS_PER_PHASE = 12
_PHASES = _interpolator()
# An interpolated value is at most this many times the largest of the 12 samples it is made of.
_GAIN_BOUND = float(np.abs(_PHASES).sum(axis=0).max())


def true_peak(samples: np.ndarray) -> float:
    """The largest absolute value of the signal oversampled 4x (linear, not dB), per ITU-R BS.1770.

    Exact for the interpolator, computed only where it can matter: an in-between value is bounded by
    `_GAIN_BOUND` times its neighbours' largest magnitude, so positions whose neighbourhood is too quiet
    to beat the peak found so far are skipped. Worked through in chunks, so memory stays bounded.
    """
    x = as_frames(samples)
    frames, channels = x.shape
    if frames == 0:
        return 0.0
    taps = _TAPS_PER_PHASE
    best = float(max(np.max(x), -np.min(x)))
    # Window q covers x[q - 11 .. q]; q runs over every position whose window touches the signal.
    for start in range(0, frames + taps - 1, _TP_CHUNK_FRAMES):
        stop = min(frames + taps - 1, start + _TP_CHUNK_FRAMES)
        lo, hi = start - (taps - 1), stop  # x indices the windows of q in [start, stop) read
        seg = x[max(lo, 0):min(hi, frames)]
        if lo < 0 or hi > frames:
            seg = np.concatenate([np.zeros((max(0, -lo), channels), np.float32), seg,
                                  np.zeros((max(0, hi - frames), channels), np.float32)])
        env = _frame_peaks(seg)
        reach = maximum_filter1d(env, size=taps, origin=(taps - 1) // 2 - (taps - 1))[: stop - start]
        # reach[i] = max(env[i .. i + 11]): the window of q = start + i
        cand = np.flatnonzero(reach * _GAIN_BOUND > best)
        if cand.size == 0:
            continue
        if cand.size > (stop - start) // 8:  # loud throughout: every position, as plain correlations
            for c in range(channels):
                column = np.ascontiguousarray(seg[:, c])
                for p in range(_PHASES.shape[1]):
                    values = np.correlate(column, _PHASES[:, p], "valid")
                    best = max(best, float(values.max()), float(-values.min()))
            continue
        windows = seg[cand[:, None] + np.arange(taps)]  # (k, 12, channels)
        values = np.swapaxes(windows, 1, 2) @ _PHASES  # (k, channels, 3)
        best = max(best, float(np.abs(values).max()))
    return best


def true_peak_dbtp(samples: np.ndarray) -> float:
    return gain_to_db(true_peak(samples))


def integrated_loudness(samples: np.ndarray, rate: int) -> float | None:
    """ITU-R BS.1770 integrated loudness in LUFS, measured with pyloudnorm; None for silence.

    pyloudnorm works on the whole signal at once and holds about three float64 copies of it (40 MB for
    30 s of 48 kHz stereo), so it is run here on overlapping segments of a few seconds and its gating
    is finished over all of them. Each segment starts half a second early so the K-weighting filters
    have settled by its first block (their transients die out within milliseconds), and a block's
    loudness gives back its channel-weighted energy exactly, so the gates see the very blocks, and
    the result is the number, that one pyloudnorm call on the whole signal gives.

    A sound shorter than one 400 ms gating block is measured as that one block (padded with silence):
    BS.1770 defines no loudness for less, and a short hit still deserves a level.
    """
    samples = as_frames(samples)
    block = int(math.ceil(_BLOCK_SECONDS * rate)) + 1
    if samples.shape[0] < block:
        padded = np.zeros((block, samples.shape[1]), dtype=np.float32)
        padded[: samples.shape[0]] = samples
        samples = padded
    if not np.any(samples):
        return None
    energies = _block_energies(samples, rate)
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10.0 * np.log10(energies)
    above = levels >= _ABSOLUTE_GATE_LUFS
    if not above.any():
        return None
    relative = -0.691 + 10.0 * math.log10(float(energies[above].mean())) - 10.0
    gated = (levels > relative) & (levels > _ABSOLUTE_GATE_LUFS)
    value = -0.691 + 10.0 * math.log10(float(energies[gated].mean()))
    return value if math.isfinite(value) else None


_ABSOLUTE_GATE_LUFS = -70.0
_SEGMENT_BLOCKS = 50  # 5 s of 100 ms hops per pyloudnorm call
_PREROLL_SECONDS = 0.5


def _block_energies(samples: np.ndarray, rate: int) -> np.ndarray:
    """Channel-weighted mean square of every 400 ms block (hop 100 ms) after K-weighting, by pyloudnorm."""
    frames = samples.shape[0]
    hop = _BLOCK_SECONDS * 0.25 * rate
    count = int(np.round((frames / rate - _BLOCK_SECONDS) / (_BLOCK_SECONDS * 0.25))) + 1  # pyloudnorm's
    meter = pyloudnorm.Meter(rate)
    energies = np.empty(count)
    preroll = int(_PREROLL_SECONDS / (_BLOCK_SECONDS * 0.25))  # in blocks
    first = 0
    while first < count:
        last = min(count, first + _SEGMENT_BLOCKS)
        lead = min(first, preroll)
        start = int(round((first - lead) * hop))
        stop = frames if last == count else int(round((last - 1) * hop)) + int(_BLOCK_SECONDS * rate)
        meter.integrated_loudness(samples[start:stop])
        levels = np.asarray(meter.blockwise_loudness[lead: lead + last - first], dtype=np.float64)
        energies[first: first + len(levels)] = 10.0 ** ((levels + 0.691) / 10.0)
        if len(levels) < last - first:  # pyloudnorm counted one block fewer at the very end
            energies[first + len(levels): last] = energies[first + len(levels) - 1]
        first = last
    return energies


def normalization_gain_db(loudness_lufs: float | None, true_peak_dbtp: float, target_lufs: float,
                          ceiling_dbtp: float = TRUE_PEAK_CEILING_DBTP) -> float:
    """The one gain that brings `loudness_lufs` to `target_lufs`, lowered if needed so that the true peak
    stays at or under `ceiling_dbtp`: quieter than asked rather than clipped. 0 for silence."""
    if loudness_lufs is None or not math.isfinite(true_peak_dbtp):
        return 0.0
    gain_db = target_lufs - loudness_lufs
    if true_peak_dbtp + gain_db > ceiling_dbtp:
        gain_db = ceiling_dbtp - true_peak_dbtp
    return gain_db


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """`samples` times the gain, in place (the caller's array is reused: no second copy of the sound)."""
    samples = as_frames(samples)
    if gain_db:
        samples *= np.float32(db_to_gain(gain_db))
    return samples


def normalize_loudness(samples: np.ndarray, rate: int, target_lufs: float,
                       ceiling_dbtp: float = TRUE_PEAK_CEILING_DBTP) -> np.ndarray:
    """A copy of `samples` at `target_lufs` integrated loudness, true peak at most `ceiling_dbtp`."""
    samples = as_frames(samples).copy()
    gain = normalization_gain_db(integrated_loudness(samples, rate), true_peak_dbtp(samples), target_lufs,
                                 ceiling_dbtp)
    return apply_gain(samples, gain)


def peaks(samples: np.ndarray, count: int = 1000) -> tuple[int, list[list[float]]]:
    """About `count` [min, max] pairs of the raw samples (all channels together) for drawing a waveform.

    Returns (samples_per_peak, pairs); the last pair may cover fewer frames.
    """
    samples = as_frames(samples)
    frames = samples.shape[0]
    if frames == 0:
        return 1, []
    per = max(1, math.ceil(frames / count))
    low, high = samples[:, 0].copy(), samples[:, 0].copy()
    for c in range(1, samples.shape[1]):  # a reduction over a 2-wide axis is slow; pairwise is not
        np.minimum(low, samples[:, c], out=low)
        np.maximum(high, samples[:, c], out=high)
    starts = np.arange(0, frames, per)
    lows, highs = np.minimum.reduceat(low, starts), np.maximum.reduceat(high, starts)
    # A decoded MP3 can overshoot full scale a little; the plugin draws within -1..1.
    lows, highs = np.clip(lows, -1.0, 1.0), np.clip(highs, -1.0, 1.0)
    pairs = [[round(float(lo), 4), round(float(hi), 4)] for lo, hi in zip(lows, highs, strict=True)]
    return per, pairs
