"""The processing chain on synthetic signals whose right answers are known (sfx_backend/audio/)."""
from __future__ import annotations

import io
import struct
import uuid
import wave
from datetime import datetime, timezone

import mutagen
import numpy as np
import pyloudnorm
import pytest
import soundfile
from mutagen.flac import FLAC
from mutagen.id3 import ID3
from scipy.signal import upfirdn

from sfx_backend.audio import chain, dsp, riff
from sfx_backend.audio.encode import Tags, encode_wav
from sfx_backend.providers.audio import encode_mp3, pcm16_to_wav

RATE = 48000
JOB_ID = "3f0c2a8e-5b1d-4c6e-9a7f-1d2e3c4b5a69"
TAGS = Tags(prompt="heavy wooden door slam, reverb tail", job_id=JOB_ID,
            created_at=datetime(2026, 1, 5, 10, 0, 4, tzinfo=timezone.utc))


def _pink(seconds: float, rate: int = RATE, seed: int = 7) -> np.ndarray:
    """Pink noise: white noise shaped to 1/f power in the frequency domain."""
    n = int(seconds * rate)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return (x / np.abs(x).max()).astype(np.float32)[:, None]


def _at_lufs(x: np.ndarray, lufs: float, rate: int = RATE) -> np.ndarray:
    return (x * 10 ** ((lufs - pyloudnorm.Meter(rate).integrated_loudness(x)) / 20)).astype(np.float32)


def _tone(seconds: float, freq: float = 440.0, amp: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None]


def _wav16(x: np.ndarray, rate: int = RATE) -> bytes:
    pcm = np.rint(np.clip(x[:, 0], -1, 1) * 32767).astype("<i2").tobytes()
    return pcm16_to_wav(pcm, rate)


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    x, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, rate


def _leading_silence_seconds(x: np.ndarray, rate: int) -> float:
    loud = np.flatnonzero(np.abs(x).max(axis=1) > 10 ** (-60 / 20))
    return loud[0] / rate


# -- loudness and true peak ------------------------------------------------------------------------

def test_pink_noise_at_minus_23_lufs_normalised_to_minus_16_measures_minus_16():
    source = _at_lufs(_pink(5.0) * 0.5, -23.0)
    assert pyloudnorm.Meter(RATE).integrated_loudness(source) == pytest.approx(-23.0, abs=0.01)
    made = chain.process(soundfile_bytes(source, "PCM_24"), chain.AudioOptions(
        output_format="wav", sample_rate=RATE, bit_depth=24, loudness_lufs=-16.0), TAGS)
    stored, rate = _decode(made.data)
    assert pyloudnorm.Meter(rate).integrated_loudness(stored) == pytest.approx(-16.0, abs=0.5)
    assert made.measurement.loudness_lufs == pytest.approx(-16.0, abs=0.5)
    assert made.measurement.true_peak_dbtp <= -1.0


def soundfile_bytes(x: np.ndarray, subtype: str, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _square(seconds: float, freq: float = 997.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.sign(np.sin(2 * np.pi * freq * t + 0.1)).astype(np.float32)[:, None]


def test_a_full_scale_square_wave_ends_at_or_under_minus_1_dbtp():
    source = _square(2.0)
    assert dsp.true_peak_dbtp(source) > 0.0  # its Gibbs overshoot between samples goes above full scale
    made = chain.process(soundfile_bytes(source, "FLOAT"), chain.AudioOptions(
        output_format="wav", sample_rate=RATE, bit_depth=24, loudness_lufs=-6.0), TAGS)
    stored, _ = _decode(made.data)
    assert dsp.true_peak_dbtp(stored) <= -1.0 + 0.01
    assert made.measurement.true_peak_dbtp <= -1.0 + 0.01


def test_the_ceiling_lowers_the_gain_instead_of_clipping_a_spiky_sound():
    x = np.zeros((RATE * 2, 1), np.float32)
    x[:: RATE // 10] = 0.05  # sparse clicks: quiet on average, so -6 LUFS would need a huge gain
    out = dsp.normalize_loudness(x, RATE, -6.0)
    assert dsp.true_peak_dbtp(out) == pytest.approx(-1.0, abs=0.01)
    ratio = out[x != 0] / x[x != 0]
    assert np.allclose(ratio, ratio[0])  # one gain for every sample: shape kept, nothing clipped
    assert dsp.integrated_loudness(out, RATE) < -6.0


def test_true_peak_matches_a_whole_signal_4x_oversampling():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((RATE * 3, 2)) * 0.2).astype(np.float32)
    taps = dsp.firwin(49, 0.25, window=("kaiser", 5.0)) * 4
    reference = np.abs(upfirdn(taps, x, up=4, axis=0)[1::4]).max()  # off-sample phases (phase 0 = samples)
    reference = max(reference, np.abs(upfirdn(taps, x, up=4, axis=0)[2::4]).max(),
                    np.abs(upfirdn(taps, x, up=4, axis=0)[3::4]).max(), np.abs(x).max())
    assert dsp.true_peak(x) == pytest.approx(reference, rel=1e-5)
    # A sine at a quarter of the rate, sampled 45 degrees off its peaks: samples at 0.707, true peak 1.0.
    t = np.arange(RATE) / RATE
    sine = np.sin(2 * np.pi * RATE / 4 * t + np.pi / 4).astype(np.float32)[:, None]
    assert np.abs(sine).max() == pytest.approx(0.7071, abs=1e-3)
    assert dsp.true_peak(sine) == pytest.approx(1.0, abs=0.02)


def test_silence_is_left_alone_and_measures_no_loudness():
    x = np.zeros((RATE, 1), np.float32)
    assert dsp.integrated_loudness(x, RATE) is None
    assert np.array_equal(dsp.normalize_loudness(x, RATE, -16.0), x)


def test_a_sound_shorter_than_a_gating_block_still_gets_a_level():
    short = _tone(0.2)
    assert dsp.integrated_loudness(short, RATE) is not None
    assert dsp.integrated_loudness(dsp.normalize_loudness(short, RATE, -20.0), RATE) == pytest.approx(-20, abs=0.1)


# -- resampling, trimming, loops --------------------------------------------------------------------

def test_resampling_44100_to_48000_keeps_the_tone_and_its_level():
    x = _tone(1.0, freq=1000.0, rate=44100)
    y = dsp.resample(x, 44100, 48000)
    assert y.dtype == np.float32 and y.shape == (48000, 1)
    assert np.argmax(np.abs(np.fft.rfft(y[:, 0] * np.hanning(48000)))) == 1000  # 1 Hz bins: still 1 kHz
    mid = y[4800:-4800, 0]
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # Polyphase, not nearest-sample: nothing but the tone above -60 dB, where picking the nearest sample
    # leaves spurs a hundred times stronger.
    def spur(signal):
        s = np.abs(np.fft.rfft(signal * np.hanning(48000)))
        s /= s.max()
        s[950:1051] = 0  # the tone and its window's own skirt
        return s.max()

    nearest = x[np.minimum(np.rint(np.arange(48000) * 44100 / 48000).astype(int), 44099), 0]
    assert spur(y[:, 0]) < 1e-3 and spur(nearest) > 100 * spur(y[:, 0])


def test_a_tone_after_300_ms_of_silence_trims_to_under_20_ms_and_fades_in():
    x = np.concatenate([np.zeros((int(0.3 * RATE), 1), np.float32), _tone(1.0),
                        np.zeros((int(0.5 * RATE), 1), np.float32)])
    made = chain.process(soundfile_bytes(x, "PCM_24"), chain.AudioOptions(
        output_format="wav", sample_rate=RATE, trim_silence=True), TAGS)
    stored, rate = _decode(made.data)
    assert _leading_silence_seconds(stored, rate) < 0.020
    assert made.measurement.duration_seconds == pytest.approx(1.0, abs=0.01)
    assert abs(stored[0, 0]) < 1e-3 and abs(stored[-1, 0]) < 1e-3  # faded ends: no click


def test_trimming_all_silence_keeps_the_sound_rather_than_an_empty_file():
    x = np.zeros((RATE, 1), np.float32)
    assert dsp.trim_silence(x, RATE).shape == (RATE, 1)


@pytest.mark.parametrize("signal", ["tone", "noise", "sweep"])
def test_the_loop_join_steps_no_more_than_the_signal_itself(signal):
    rng = np.random.default_rng(5)
    if signal == "tone":
        x = _tone(2.0, freq=437.0)
    elif signal == "noise":
        x = (rng.standard_normal((2 * RATE, 2)) * 0.1).astype(np.float32)
    else:
        t = np.arange(2 * RATE) / RATE
        x = (0.5 * np.sin(2 * np.pi * (200 * t + 300 * t ** 2))).astype(np.float32)[:, None]
    looped = dsp.make_loop(x, RATE)
    steps = np.abs(np.diff(looped, axis=0)).max()
    join = np.abs(looped[0] - looped[-1]).max()
    assert join <= steps
    # The end of a raw tone at an arbitrary length does not meet its start: the loop had work to do.
    assert np.abs(x[0] - x[-1]).max() > 0 or signal != "tone"
    # Slope continuity: the step at the join is what the signal had there before the loop was made.
    n = x.shape[0] - looped.shape[0]
    assert np.allclose(looped[0] - looped[-1], x[-n] - x[-n - 1], atol=1e-6)


def test_the_chain_loops_whatever_the_upstream_returned():
    x = _tone(1.5008, freq=333.0)  # ends near a crest: played end to start it would click
    assert abs(float(x[0, 0] - x[-1, 0])) > 10 * np.abs(np.diff(x[:, 0])).max()
    made = chain.process(soundfile_bytes(x, "PCM_24"), chain.AudioOptions(
        output_format="wav", sample_rate=RATE, bit_depth=24, loop=True), TAGS)
    stored, _ = _decode(made.data)
    assert abs(float(stored[0, 0] - stored[-1, 0])) <= np.abs(np.diff(stored[:, 0])).max() + 1e-6


# -- encoding, tags, chunks -------------------------------------------------------------------------

def test_wav_gets_bext_and_info_chunks_that_round_trip_and_wave_still_reads_it():
    prompt = "é" * 200  # 400 bytes of UTF-8: cut at a character boundary within the 256-byte field
    tags = Tags(prompt=prompt, job_id=JOB_ID, created_at=TAGS.created_at)
    data = encode_wav(_tone(0.5), RATE, 24, tags)
    ids = [cid for cid, _ in riff.chunks(data)]
    assert ids[0] == b"bext" and b"fmt " in ids and b"data" in ids and ids[-1] == b"LIST"
    with wave.open(io.BytesIO(data)) as w:  # the standard library's RIFF reader skips what it does not know
        assert (w.getframerate(), w.getsampwidth(), w.getnframes()) == (RATE, 3, RATE // 2)
    bext = riff.parse_bext(dict(riff.chunks(data))[b"bext"])
    assert bext.description == "é" * 128 and len(bext.description.encode()) == 256
    assert bext.originator == "sfx-backend"
    assert bext.originator_reference == JOB_ID.replace("-", "") and len(bext.originator_reference) == 32
    assert (bext.origination_date, bext.origination_time) == ("2026-01-05", "10:00:04")
    info = riff.parse_info(dict(riff.chunks(data))[b"LIST"])
    assert info["INAM"] == prompt and info["ISFT"] == "sfx-backend"
    assert int.from_bytes(data[4:8], "little") == len(data) - 8


# libsndfile's SF_BROADCAST_INFO (sndfile.h), read and written through soundfile's own sf_command binding.
_SFC_GET_BROADCAST_INFO, _SFC_SET_BROADCAST_INFO = 0x10F0, 0x10F1
# The C struct pads two bytes after origination_time so that time_reference_low is 4-byte aligned.
_SF_BROADCAST = struct.Struct("<256s32s32s10s8s2xIIH64shhhhh180sI256s")


def _libsndfile_command(sf: soundfile.SoundFile, command: int, buffer: bytearray) -> int:
    from soundfile import _ffi, _snd
    cbuf = _ffi.from_buffer(buffer)
    return _snd.sf_command(sf._file, command, cbuf, len(buffer))


def test_our_bext_reads_back_in_libsndfile_and_libsndfiles_bext_reads_back_in_our_parser(tmp_path):
    data = encode_wav(_tone(0.25), RATE, 16, TAGS)
    path = tmp_path / "ours.wav"
    path.write_bytes(data)
    buffer = bytearray(_SF_BROADCAST.size)
    with soundfile.SoundFile(path) as sf:
        assert _libsndfile_command(sf, _SFC_GET_BROADCAST_INFO, buffer) == 1  # SF_TRUE: it found our bext
    fields = _SF_BROADCAST.unpack(bytes(buffer))
    assert fields[0].rstrip(b"\0").decode() == TAGS.prompt
    assert fields[1].rstrip(b"\0") == b"sfx-backend" and fields[2].rstrip(b"\0") == JOB_ID.replace("-", "").encode()
    assert (fields[3], fields[4]) == (b"2026-01-05", b"10:00:04")

    # A BWF file written by libsndfile itself, parsed by ours.
    theirs = tmp_path / "theirs.wav"
    info = _SF_BROADCAST.pack(b"made by libsndfile", b"another tool", b"REF123", b"2025-12-31", b"23:59:58",
                              48000, 0, 1, b"", 0, 0, 0, 0, 0, b"", 0, b"")
    with soundfile.SoundFile(theirs, "w", RATE, 1, "PCM_16", format="WAV") as sf:
        assert _libsndfile_command(sf, _SFC_SET_BROADCAST_INFO, bytearray(info)) == 1
        sf.write(np.zeros(1000, np.float32))
    bext = riff.parse_bext(dict(riff.chunks(theirs.read_bytes()))[b"bext"])
    assert (bext.description, bext.originator, bext.originator_reference) == (
        "made by libsndfile", "another tool", "REF123")
    assert (bext.origination_date, bext.origination_time, bext.time_reference) == ("2025-12-31", "23:59:58", 48000)


def test_flac_carries_vorbis_comments_at_the_asked_depth():
    made = chain.process(_wav16(_tone(1.0)), chain.AudioOptions(
        output_format="flac", sample_rate=RATE, bit_depth=24), TAGS)
    flac = FLAC(io.BytesIO(made.data))
    assert flac["TITLE"] == [TAGS.prompt] and flac["SFX_JOB_ID"] == [JOB_ID] and flac["ENCODER"] == ["sfx-backend"]
    assert (flac.info.sample_rate, flac.info.bits_per_sample) == (RATE, 24)
    assert made.measurement.bit_depth == 24 and made.content_type == "audio/flac"


def test_mp3_carries_an_id3v2_tag_with_the_prompt():
    made = chain.process(_wav16(_tone(1.0)), chain.AudioOptions(output_format="mp3", sample_rate=RATE,
                                                                 trim_silence=True), TAGS)
    tag = ID3(io.BytesIO(made.data))
    assert tag["TIT2"].text == [TAGS.prompt] and tag.getall("COMM")[0].text == [TAGS.prompt]
    assert tag.getall("TXXX:sfx_job_id")[0].text == [JOB_ID]
    assert mutagen.File(io.BytesIO(made.data)).info.sample_rate == RATE
    assert made.measurement.bit_depth is None


def test_a_default_mp3_job_keeps_the_upstreams_mp3_and_only_adds_the_tag():
    upstream = encode_mp3(np.rint(_tone(1.0, rate=44100)[:, 0] * 32767).astype("<i2").tobytes(), 44100)
    made = chain.process(upstream, chain.AudioOptions(), TAGS)
    assert made.data.endswith(upstream)  # the same frames, after the tag
    assert ID3(io.BytesIO(made.data))["TIT2"].text == [TAGS.prompt]
    assert made.measurement.sample_rate == 44100


@pytest.mark.parametrize("fmt, depth, width", [("wav", 16, 2), ("wav", 24, 3)])
def test_wav_is_written_at_the_asked_rate_and_depth(fmt, depth, width):
    made = chain.process(_wav16(_tone(1.0, rate=44100), 44100), chain.AudioOptions(
        output_format=fmt, sample_rate=RATE, bit_depth=depth), TAGS)
    with wave.open(io.BytesIO(made.data)) as w:
        assert (w.getframerate(), w.getsampwidth()) == (RATE, width)
    assert (made.measurement.sample_rate, made.measurement.bit_depth, made.measurement.channels) == (RATE, depth, 1)


def test_measurements_and_waveform_describe_the_stored_file():
    x = _tone(2.0, amp=0.25)
    made = chain.process(soundfile_bytes(x, "PCM_16"), chain.AudioOptions(output_format="wav", sample_rate=RATE), TAGS)
    m = made.measurement
    assert m.duration_seconds == pytest.approx(2.0) and m.sample_rate == RATE and m.channels == 1
    assert m.true_peak_dbtp == pytest.approx(20 * np.log10(0.25), abs=0.1)
    assert m.loudness_lufs == pytest.approx(pyloudnorm.Meter(RATE).integrated_loudness(x), abs=0.05)
    assert 900 <= len(made.peaks) <= 1000 and made.samples_per_peak == 96
    lows, highs = zip(*made.peaks, strict=True)
    assert max(highs) == pytest.approx(0.25, abs=1e-3) and min(lows) == pytest.approx(-0.25, abs=1e-3)  # raw


def test_audio_that_does_not_decode_raises_a_processing_error():
    with pytest.raises(chain.ProcessingError):
        chain.process(b"<html>not audio</html>", chain.AudioOptions(output_format="wav"), TAGS)


def test_the_chain_works_in_float32_and_does_not_touch_the_callers_array():
    x = _tone(1.0)
    before = x.copy()
    dsp.normalize_loudness(x, RATE, -20.0)
    dsp.trim_silence(x, RATE)
    dsp.make_loop(x, RATE)
    assert np.array_equal(x, before)
    assert dsp.resample(x, RATE, 44100).dtype == np.float32


def test_uuid_reference_is_32_characters():
    assert len(Tags("x", str(uuid.uuid4()), TAGS.created_at).reference) == 32


@pytest.mark.parametrize("rate, seconds", [(44100, 0.45), (44100, 7.3), (48000, 5.55), (48000, 30.0)])
def test_segmented_loudness_equals_one_pyloudnorm_call_on_the_whole_signal(rate, seconds):
    rng = np.random.default_rng(int(seconds * 10))
    n = int(seconds * rate)
    x = (rng.standard_normal((n, 2)) * np.linspace(0.001, 0.3, n)[:, None]).astype(np.float32)
    x[: n // 3] *= 0.01  # a quiet first third: the relative gate has blocks to drop
    assert dsp.integrated_loudness(x, rate) == pytest.approx(pyloudnorm.Meter(rate).integrated_loudness(x), abs=1e-3)
