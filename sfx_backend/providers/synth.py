"""Offline placeholder provider: procedural noise and tone sweeps, for development and demos."""
from __future__ import annotations

import array
import hashlib
import math
import random
import time
from itertools import accumulate, islice
from operator import add, sub

from .audio import encode_mp3, pcm16_to_wav
from .base import FailureKind, GeneratedAudio, ProviderError, SoundRequest

SAMPLE_RATE = 44100
_STEP = 512  # pitch changes every 512 samples (11.6 ms): a fine staircase sweep
_BLOCK = 256  # envelope gain changes every 256 samples (5.8 ms) in 1 dB steps
_V = 1023  # the mix is built as ints in [-_V, _V], then scaled by a per-block lookup table
_WAVETABLE = 4096  # samples in the master cycle the tone periods are resampled from
_FLOOR_DB = 60  # quieter than this is rendered as silence
_PEAK = 26000  # leave headroom under int16 full scale for the MP3 encoder's overshoot

# A few words nudge the sound so demos feel less random; everything else comes from the hash.
_HINTS: dict[str, tuple[float, float]] = {  # word -> (tonal mix, base frequency Hz)
    "explosion": (0.1, 60.0), "boom": (0.15, 55.0), "thunder": (0.1, 50.0), "rumble": (0.2, 45.0),
    "impact": (0.2, 90.0), "wind": (0.05, 300.0), "rain": (0.05, 900.0), "static": (0.0, 1000.0),
    "laser": (0.9, 1200.0), "beep": (0.95, 880.0), "alarm": (0.9, 700.0), "zap": (0.7, 1500.0),
    "whoosh": (0.15, 400.0), "bell": (0.9, 520.0), "hum": (0.85, 110.0),
}


class SynthProvider:
    """NOT AI: a deterministic procedural noise/tone generator standing in for ElevenLabs offline.

    The audio is real (playable, of the requested duration) but has nothing to do with the
    prompt's meaning beyond a few keywords; the prompt only seeds the random parameters.
    """

    name = "synth"
    needs_key = False

    def generate(self, request: SoundRequest, api_key: str | None = None) -> GeneratedAudio:
        """Synthesise audio for `request`; the key is ignored."""
        started = time.monotonic()
        _validate(request)
        duration = request.duration_seconds
        if duration is None:
            duration = default_duration(request.prompt)
        pcm = synthesize(request.prompt, duration, request.prompt_influence, request.loop)
        if request.output_format in ("wav", "source"):  # "source": lossless, for the processing stage
            data, ctype, ext = pcm16_to_wav(pcm, SAMPLE_RATE), "audio/wav", "wav"
        else:
            data, ctype, ext = encode_mp3(pcm, SAMPLE_RATE), "audio/mpeg", "mp3"
        return GeneratedAudio(
            data=data,
            content_type=ctype,
            extension=ext,
            upstream_cost=None,
            upstream_request_id=None,
            http_status=None,
            latency_ms=int((time.monotonic() - started) * 1000),
        )


def _validate(request: SoundRequest) -> None:
    """Reject what the real upstream would reject, so dev behaves like production."""
    problem = None
    if not request.prompt or not request.prompt.strip():
        problem = "prompt is empty"
    elif request.duration_seconds is not None and not 0.5 <= request.duration_seconds <= 30:
        problem = "duration_seconds must be between 0.5 and 30"
    elif not 0 <= request.prompt_influence <= 1:
        problem = "prompt_influence must be between 0 and 1"
    elif request.output_format not in ("mp3", "wav", "source"):
        problem = f"unknown output_format {request.output_format!r}"
    if problem:
        raise ProviderError(FailureKind.REJECTED, problem, upstream_code="validation_error")


def _seed(prompt: str) -> int:
    """Stable seed from the prompt (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(prompt.strip().lower().encode()).digest()[:8], "big")


def default_duration(prompt: str) -> float:
    """Duration picked for a prompt when none was asked: 1.0 to 4.0 s, same prompt same answer."""
    return 1.0 + (_seed(prompt) % 3001) / 1000.0


def _hint(prompt: str) -> tuple[float, float] | None:
    """First keyword hint found in the prompt, if any."""
    for word in prompt.lower().replace(",", " ").split():
        if word.strip(".!?") in _HINTS:
            return _HINTS[word.strip(".!?")]
    return None


def synthesize(
    prompt: str, duration: float, prompt_influence: float = 0.3, loop: bool = False
) -> array.array:
    """Mono int16 samples at 44.1 kHz: a stepped pitch sweep plus filtered noise under an envelope.

    Pure-Python per-sample arithmetic is far too slow for 30 s of audio, so the signal is built
    from cached periods and a tiled noise buffer (list copies run at C speed), mixed with one
    map(add), and enveloped by looking each sample up in a per-block gain table.
    """
    rng = random.Random(_seed(prompt))
    n = max(1, int(round(duration * SAMPLE_RATE)))
    # A loop is rendered a little long; the surplus is crossfaded into the head (see below).
    xfade = min(int(0.25 * SAMPLE_RATE), n // 4) if loop else 0
    total = n + xfade

    tonal, f0 = rng.uniform(0.2, 0.9), 80.0 * 2 ** rng.uniform(0.0, 4.0)
    hint = _hint(prompt)
    if hint:
        tonal, f0 = hint[0] * 0.8 + tonal * 0.2, hint[1] * 2 ** rng.uniform(-0.25, 0.25)
    # prompt_influence: how far the prompt-derived traits are pushed from a neutral middle.
    strength = 0.5 + prompt_influence
    tonal = min(0.95, max(0.05, 0.5 + (tonal - 0.5) * strength))
    octaves = rng.uniform(-2.0, 2.0) * strength
    tone_amp = int(tonal * _V)

    tone = _tone(total, n, f0, octaves, tone_amp, loop)
    noise = _noise(total, rng, _V - tone_amp)
    mixed = list(map(add, tone, noise))  # |tone| + |noise| <= _V by construction

    levels = _envelope(-(-total // _BLOCK), n, rng, loop)
    tables: dict[int, list[int]] = {}
    out: list[int] = []
    for b, level in enumerate(levels):
        chunk = mixed[b * _BLOCK : (b + 1) * _BLOCK]
        if level is None:
            out.extend([0] * len(chunk))
            continue
        table = tables.get(level)
        if table is None:
            table = tables[level] = _gain_table(level)
        out.extend(map(table.__getitem__, chunk))
    if loop:
        out = _crossfade_loop(out, n, xfade)
    return array.array("h", out[:n] if len(out) > n else out)


def _tone(total: int, n: int, f0: float, octaves: float, amp: int, loop: bool) -> list[int]:
    """Pitch sweep from f0 over `octaves`; a loop sweeps out and back so pitch meets itself."""
    # One finely sampled cycle; each integer period is resampled from it, which is far cheaper
    # than calling sin() for every entry of every period a sweep visits.
    wave = [
        round(amp * (0.8 * math.sin(w) + 0.2 * math.sin(2 * w)))
        for w in (2 * math.pi * k / _WAVETABLE for k in range(_WAVETABLE))
    ]
    periods: dict[int, list[int]] = {}
    out: list[int] = []
    theta = 0.0  # phase carried across steps as a fraction of a cycle, so steps do not click
    for start in range(0, total, _STEP):
        x = start / n
        shape = 0.5 - 0.5 * math.cos(2 * math.pi * x) if loop else min(1.0, x)
        freq = min(2500.0, max(30.0, f0 * 2 ** (octaves * shape)))
        period = max(2, round(SAMPLE_RATE / freq))
        cycle = periods.get(period)
        if cycle is None:
            steps = range(0, _WAVETABLE * period, _WAVETABLE)
            cycle = periods[period] = list(map(wave.__getitem__, map(period.__rfloordiv__, steps)))
        length = min(_STEP, total - start)
        j = round(theta * period) % period
        seg = cycle[j:] + cycle * (length // period + 1)
        out.extend(seg[:length])
        theta = ((j + length) % period) / period
    return out


def _noise(total: int, rng: random.Random, amp: int) -> list[int]:
    """Lowpassed white noise of peak `amp`: a 0.7 to 1.1 s buffer tiled to `total` samples."""
    width = rng.randint(2, 24)  # moving-average width: wider is darker
    size = min(total, int(rng.uniform(0.7, 1.1) * SAMPLE_RATE))
    white = array.array("h", rng.randbytes(2 * (size + width)))
    csum = list(accumulate(white))
    boxed = list(map(sub, islice(csum, width, None), csum))[:size]
    peak = max(map(abs, boxed)) or 1
    tile = [v * amp // peak for v in boxed]
    return (tile * (total // size + 1))[:total]


def _gain_table(level_db: int) -> list[int]:
    """Lookup table so table[v] == round(v * gain) for v in [-_V, _V] (negative indexes wrap)."""
    gain = _PEAK / _V * 10 ** (-level_db / 20)
    return [round(v * gain) for v in range(_V + 1)] + [round(v * gain) for v in range(-_V, 0)]


def _envelope(blocks: int, n: int, rng: random.Random, loop: bool) -> list[int | None]:
    """Per-block attenuation in whole dB (None = silence): one-shot A/D/R, or a loop's tremolo."""
    gains = []
    if loop:
        depth, cycles = rng.uniform(0.1, 0.4), rng.randint(1, 6)
        for b in range(blocks):
            x = b * _BLOCK / n  # whole tremolo cycles over n samples: equal gain at both ends
            gains.append(1.0 - depth * (0.5 - 0.5 * math.cos(2 * math.pi * cycles * x)))
    else:
        attack = max(_BLOCK, int(rng.uniform(0.003, 0.12) * SAMPLE_RATE))
        release = max(_BLOCK, min(n // 4, int(0.03 * SAMPLE_RATE)))
        decay = rng.uniform(0.5, 4.0)
        # Like a recording: a moment of silence before the sound and after its tail (about 0.1 to 0.25 s
        # before, 0.1 s after; less for short sounds), so trimming has something to remove.
        lead = min(n // 8, int((0.1 + (_seed_of(rng) % 150) / 1000) * SAMPLE_RATE)) // _BLOCK * _BLOCK
        end = n - min(n // 10, int(0.1 * SAMPLE_RATE))
        for b in range(blocks):
            i = b * _BLOCK
            if i < lead:
                gains.append(0.0)
                continue
            g = min(1.0, (i - lead + _BLOCK) / attack) * math.exp(-decay * (i - lead) / n)
            # The last 256+ samples are exact silence so a one-shot never clicks when cut.
            g *= max(0.0, min(1.0, (min(end, n - 2 * _BLOCK) - i) / release))
            gains.append(g)
    floor = 10 ** (-_FLOOR_DB / 20)
    return [None if g < floor else round(-20 * math.log10(g)) for g in gains]


def _seed_of(rng: random.Random) -> int:
    """A number from the generator's state that does not advance it (the other traits stay as they were)."""
    return rng.getstate()[1][0]


def _crossfade_loop(samples: list[int], n: int, xfade: int) -> list[int]:
    """Fold the rendered tail (samples n..n+xfade) into the head so sample n-1 flows into sample 0.

    Sample 0 becomes the old sample n, the natural successor of sample n-1; the fade then hands
    over to the original head, so the seam is as smooth as any other pair of samples.
    """
    if xfade <= 0:
        return samples
    head = [
        round(a * (i / xfade) + b * (1.0 - i / xfade))
        for i, (a, b) in enumerate(zip(samples[:xfade], samples[n : n + xfade], strict=False))
    ]
    return head + samples[xfade:n]
