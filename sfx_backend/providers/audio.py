"""Audio helpers shared by the providers and the test fakes: WAV wrapping, MP3 encoding, formats."""
from __future__ import annotations

import array
import io
import re
import sys
import wave

import lameenc

MP3_BITRATE_KBPS = 128
# Sample rates an MPEG-1/2/2.5 layer III stream can carry; lameenc rejects anything else.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

_FORMAT_RE = re.compile(r"^(?P<codec>[a-z][a-z0-9]*)_(?P<rate>\d+)(?:_(?P<bitrate>\d+))?$")

Int16Samples = bytes | bytearray | memoryview | array.array


def parse_output_format(fmt: str) -> tuple[str, int, int | None]:
    """Split an upstream format name (`mp3_44100_128`, `pcm_44100`) into (codec, rate, kbps)."""
    m = _FORMAT_RE.match(fmt or "")
    if not m:
        raise ValueError(f"not an output format name: {fmt!r}")
    bitrate = m.group("bitrate")
    return m.group("codec"), int(m.group("rate")), int(bitrate) if bitrate else None


def sample_rate_of(fmt: str) -> int:
    """Sample rate encoded in an upstream format name (`pcm_44100` -> 44100)."""
    return parse_output_format(fmt)[1]


def _le_bytes(samples: Int16Samples) -> bytes:
    """Little-endian int16 bytes from raw bytes or an array('h')."""
    if isinstance(samples, array.array):
        if samples.typecode != "h":
            raise ValueError("expected an array('h') of int16 samples")
        if sys.byteorder == "big":
            # WAV and lameenc both want little-endian; copy so the caller's array is untouched.
            samples = array.array("h", samples)
            samples.byteswap()
        return samples.tobytes()
    return bytes(samples)


def pcm16_to_wav(pcm: Int16Samples, sample_rate: int, channels: int = 1) -> bytes:
    """Wrap raw 16-bit little-endian PCM in a RIFF/WAVE container."""
    data = _le_bytes(pcm)
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        # A stream cut mid-frame would make `wave` readers choke; drop the partial frame.
        data = data[: len(data) - len(data) % frame_bytes]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data)
    return buf.getvalue()


def encode_mp3(
    samples_int16_mono: Int16Samples,
    sample_rate: int,
    bitrate_kbps: int = MP3_BITRATE_KBPS,
    quality: int = 5,
) -> bytes:
    """Encode mono int16 PCM to a CBR MP3 (128 kbps by default) with lameenc."""
    if sample_rate not in MP3_SAMPLE_RATES:
        raise ValueError(f"MP3 cannot carry a {sample_rate} Hz sample rate")
    enc = lameenc.Encoder()
    enc.set_bit_rate(bitrate_kbps)
    enc.set_in_sample_rate(sample_rate)
    enc.set_channels(1)
    # 5 is about twice as fast as LAME's default 2 and indistinguishable for sound effects.
    enc.set_quality(quality)
    data = _le_bytes(samples_int16_mono)
    if len(data) % 2:
        data = data[:-1]
    return bytes(enc.encode(data) + enc.flush())


def looks_like_mp3(data: bytes) -> bool:
    """True when `data` starts with an ID3 tag or an MPEG audio frame sync."""
    if data[:3] == b"ID3":
        return True
    return len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0


def looks_like_wav(data: bytes) -> bool:
    """True when `data` starts with a RIFF/WAVE header."""
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def wav_info(data: bytes) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of a WAV file held in memory."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getnframes()


# Layer III bitrates (kbps) by bitrate index, for MPEG-1 and for MPEG-2/2.5.
_MP3_KBPS = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mp3_duration_seconds(data: bytes) -> float:
    """Duration of a layer III stream by walking its frame headers (no decoding); 0.0 if none."""
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        # Syncsafe size: 7 bits per byte, so tag bytes can never fake a frame sync.
        pos = 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])
    samples, rate = 0, 0
    while pos + 4 <= len(data):
        b1, b2 = data[pos + 1], data[pos + 2]  # byte 3 (mode, emphasis) does not change the size
        version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
        br_idx, sr_idx = b2 >> 4, (b2 >> 2) & 3
        if data[pos] != 0xFF or (b1 & 0xE0) != 0xE0 or layer != 1 or version == 1:
            break
        if br_idx in (0, 15) or sr_idx == 3:
            break
        rate = _MP3_RATES[version][sr_idx]
        kbps = _MP3_KBPS[1 if version == 3 else 2][br_idx]
        per_frame = 1152 if version == 3 else 576
        size = per_frame // 8 * kbps * 1000 // rate + ((b2 >> 1) & 1)
        samples += per_frame
        pos += size
    return samples / rate if rate else 0.0
