"""SynthProvider: the offline, not-AI placeholder, and the audio helpers it shares."""
from __future__ import annotations

import array
import io
import wave

import pytest

from sfx_backend.providers.audio import (
    encode_mp3,
    looks_like_mp3,
    looks_like_wav,
    mp3_duration_seconds,
    parse_output_format,
    pcm16_to_wav,
    wav_info,
)
from sfx_backend.providers.base import FailureKind, ProviderError, SoundRequest
from sfx_backend.providers.synth import SynthProvider, default_duration

synth = SynthProvider()


def _samples(request: SoundRequest) -> array.array:
    """Decode the provider's WAV output back into int16 samples."""
    data = synth.generate(SoundRequest(**{**vars(request), "output_format": "wav"})).data
    with wave.open(io.BytesIO(data)) as w:
        return array.array("h", w.readframes(w.getnframes()))


def _rms(samples) -> float:
    return (sum(s * s for s in samples) / max(1, len(samples))) ** 0.5


@pytest.mark.parametrize("duration", [0.5, 2.25, 7.0])
def test_wav_has_exactly_the_requested_number_of_frames_at_44100_hz(duration):
    audio = synth.generate(SoundRequest("footsteps on gravel", duration, output_format="wav"))
    assert (audio.content_type, audio.extension) == ("audio/wav", "wav")
    assert wav_info(audio.data) == (44100, 1, round(duration * 44100))


def test_mp3_starts_with_a_frame_and_lasts_the_requested_duration():
    audio = synth.generate(SoundRequest("laser zap", 3.0))
    assert (audio.content_type, audio.extension) == ("audio/mpeg", "mp3")
    assert looks_like_mp3(audio.data)
    assert abs(mp3_duration_seconds(audio.data) - 3.0) < 0.1


def test_longer_requests_give_proportionally_bigger_mp3s():
    short = synth.generate(SoundRequest("engine hum", 1.0)).data
    long = synth.generate(SoundRequest("engine hum", 4.0)).data
    assert 3.5 < len(long) / len(short) < 4.5  # 128 kbps CBR: size tracks duration


def test_audio_is_not_silence_and_stays_inside_int16():
    samples = _samples(SoundRequest("explosion in a cave", 2.0))
    assert _rms(samples) > 1000
    assert max(abs(s) for s in samples) < 32767  # headroom: no clipping


def test_same_prompt_gives_identical_audio():
    first = synth.generate(SoundRequest("creaky door", 1.5, output_format="wav")).data
    assert synth.generate(SoundRequest("creaky door", 1.5, output_format="wav")).data == first


def test_different_prompts_give_different_audio():
    a = _samples(SoundRequest("creaky door", 1.5))
    b = _samples(SoundRequest("distant thunder", 1.5))
    assert len(a) == len(b) and a != b
    assert sum(x != y for x, y in zip(a, b, strict=True)) > len(a) // 2


def test_prompt_influence_changes_the_sound():
    low = _samples(SoundRequest("whoosh past", 1.0, prompt_influence=0.0))
    high = _samples(SoundRequest("whoosh past", 1.0, prompt_influence=1.0))
    assert low != high


def test_missing_duration_is_derived_from_the_prompt_between_1_and_4_seconds():
    prompts = [f"sound number {i}" for i in range(20)]
    durations = [default_duration(p) for p in prompts]
    assert all(1.0 <= d <= 4.0 for d in durations)
    assert len(set(durations)) > 10  # really depends on the prompt
    assert [default_duration(p) for p in prompts] == durations
    audio = synth.generate(SoundRequest(prompts[0], None, output_format="wav"))
    assert wav_info(audio.data)[2] == round(durations[0] * 44100)


def test_one_shot_fades_in_and_ends_in_silence():
    samples = _samples(SoundRequest("metal clang", 2.0))
    assert all(s == 0 for s in samples[-200:])
    assert abs(samples[0]) < 2000


@pytest.mark.parametrize("prompt", ["rain loop", "spaceship engine", "crowd murmur", "beep beep"])
def test_loop_end_flows_into_its_start_without_a_click(prompt):
    samples = _samples(SoundRequest(prompt, 2.0, loop=True))
    assert len(samples) == 88200
    # A loop must not fade out: its tail is as loud as its body.
    assert _rms(samples[-4410:]) > 0.3 * _rms(samples)
    steps = sorted(abs(samples[i + 1] - samples[i]) for i in range(len(samples) - 1))
    seam = abs(samples[0] - samples[-1])
    assert seam <= steps[int(0.999 * len(steps))]  # no bigger than the ordinary sample steps
    assert samples != _samples(SoundRequest(prompt, 2.0, loop=False))


@pytest.mark.parametrize(
    "request_",
    [
        SoundRequest("x", 0.2),
        SoundRequest("x", 31.0),
        SoundRequest("x", 1.0, prompt_influence=1.5),
        SoundRequest("   ", 1.0),
        SoundRequest("x", 1.0, output_format="flac"),
    ],
)
def test_requests_upstream_would_refuse_are_rejected(request_):
    with pytest.raises(ProviderError) as info:
        synth.generate(request_)
    assert info.value.kind is FailureKind.REJECTED


def test_the_longest_allowed_sound_renders_at_its_full_length():
    audio = synth.generate(SoundRequest("long ambience", 30.0))
    assert abs(mp3_duration_seconds(audio.data) - 30.0) < 0.1


def test_provider_needs_no_key_reports_no_cost_and_admits_it_is_not_ai():
    audio = synth.generate(SoundRequest("pop", 0.5), api_key=None)
    assert (synth.name, synth.needs_key) == ("synth", False)
    assert audio.upstream_cost is None
    assert "NOT AI" in (SynthProvider.__doc__ or "")


def test_pcm16_to_wav_keeps_samples_and_drops_a_trailing_half_frame():
    pcm = array.array("h", [0, 1000, -1000, 32767]).tobytes()
    data = pcm16_to_wav(pcm + b"\x01", 22050)
    assert looks_like_wav(data)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 22050
        assert w.readframes(10) == pcm


def test_encode_mp3_refuses_rates_mp3_cannot_carry():
    with pytest.raises(ValueError):
        encode_mp3(array.array("h", [0] * 100), 44000)


def test_output_format_names_parse_into_codec_rate_and_bitrate():
    assert parse_output_format("mp3_44100_128") == ("mp3", 44100, 128)
    assert parse_output_format("pcm_16000") == ("pcm", 16000, None)
    with pytest.raises(ValueError):
        parse_output_format("wav")


@pytest.mark.parametrize("prompt", ["metal clang", "door slam", "laser zap"])
def test_one_shots_have_leading_silence_and_a_tail_then_silence_for_trimming_to_show(prompt):
    samples = _samples(SoundRequest(prompt, 2.0))
    loud = [i for i, s in enumerate(samples) if abs(s) > 33]  # -60 dBFS
    assert 0.1 * 44100 <= loud[0] <= 0.25 * 44100
    assert len(samples) - loud[-1] >= 0.09 * 44100
