"""Float samples to stored files: WAV (16/24-bit PCM) and FLAC via soundfile, MP3 via lameenc; tags.

WAV gets a Broadcast Wave `bext` chunk and a `LIST`/`INFO` chunk (riff.py), FLAC Vorbis comments and MP3
an ID3v2.4 tag (mutagen). Samples are clipped to -1..1 here: libsndfile's float-to-integer conversion
wraps rather than clips by default.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone

import lameenc
import numpy as np
import soundfile
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TDRC, TIT2, TSSE, TXXX

from . import riff

MP3_BITRATE_KBPS = 192  # re-encoded from PCM: the upstream's best MP3 rate, so a re-encode loses little
_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}


@dataclass(frozen=True)
class Tags:
    """What a stored file says about itself."""

    prompt: str
    job_id: str  # UUID text; the bext OriginatorReference drops its hyphens (32 characters)
    created_at: datetime
    loudness_lufs: float | None = None
    true_peak_dbtp: float | None = None

    @property
    def reference(self) -> str:
        return self.job_id.replace("-", "")

    @property
    def utc(self) -> datetime:
        return self.created_at.astimezone(timezone.utc)


def _clipped(samples: np.ndarray) -> np.ndarray:
    """Samples within -1..1; copied only when some are outside (a whole copy of a long sound is megabytes)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size and (samples.max() > 1.0 or samples.min() < -1.0):
        return np.clip(samples, -1.0, 1.0)
    return samples


def encode_wav(samples: np.ndarray, rate: int, bit_depth: int, tags: Tags) -> bytes:
    """PCM WAV with bext and LIST/INFO."""
    buf = io.BytesIO()
    soundfile.write(buf, _clipped(samples), rate, format="WAV", subtype=_SUBTYPES[bit_depth])
    bext = riff.bext_for(tags.prompt, tags.reference, tags.utc, tags.loudness_lufs, tags.true_peak_dbtp)
    info = riff.info_payload({"INAM": tags.prompt, "ICMT": tags.prompt, "ISFT": riff.ORIGINATOR,
                              "ICRD": tags.utc.strftime("%Y-%m-%d")})
    return riff.with_chunks(buf.getvalue(), before=[(b"bext", riff.bext_payload(bext))],
                            after=[(b"LIST", info)])


def encode_flac(samples: np.ndarray, rate: int, bit_depth: int, tags: Tags) -> bytes:
    """FLAC with Vorbis comments."""
    buf = io.BytesIO()
    soundfile.write(buf, _clipped(samples), rate, format="FLAC", subtype=_SUBTYPES[bit_depth])
    buf.seek(0)
    flac = FLAC(buf)
    flac["TITLE"] = tags.prompt
    flac["DESCRIPTION"] = tags.prompt
    flac["ENCODER"] = riff.ORIGINATOR
    flac["DATE"] = tags.utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    flac["SFX_JOB_ID"] = tags.job_id
    buf.seek(0)
    flac.save(buf)
    return buf.getvalue()


def encode_mp3(samples: np.ndarray, rate: int, tags: Tags, bitrate_kbps: int = MP3_BITRATE_KBPS) -> bytes:
    """CBR MP3 (lameenc) with an ID3v2 tag."""
    channels = samples.shape[1]
    enc = lameenc.Encoder()
    enc.set_bit_rate(bitrate_kbps)
    enc.set_in_sample_rate(rate)
    enc.set_channels(channels)
    enc.set_quality(5)  # twice as fast as LAME's default 2 and indistinguishable for sound effects
    pcm = np.rint(_clipped(samples) * 32767.0).astype("<i2")
    data = bytes(enc.encode(pcm.tobytes()) + enc.flush())
    return tag_mp3(data, tags)


def tag_mp3(data: bytes, tags: Tags) -> bytes:
    """The MP3 with an ID3v2.4 tag (replacing one already there)."""
    buf = io.BytesIO(data)
    tag = ID3()
    tag.add(TIT2(encoding=3, text=tags.prompt))
    tag.add(COMM(encoding=3, lang="eng", desc="", text=tags.prompt))
    tag.add(TSSE(encoding=3, text=riff.ORIGINATOR))
    tag.add(TDRC(encoding=3, text=tags.utc.strftime("%Y-%m-%dT%H:%M:%S")))
    tag.add(TXXX(encoding=3, desc="sfx_job_id", text=tags.job_id))
    tag.save(buf, v2_version=4)
    return buf.getvalue()
