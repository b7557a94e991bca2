"""RIFF/WAVE chunks: the Broadcast Wave `bext` chunk and a `LIST`/`INFO` chunk, written and read.

`bext` follows EBU Tech 3285 (BWF), version 2: Description (256 bytes), Originator (32),
OriginatorReference (32), OriginationDate (10, yyyy-mm-dd), OriginationTime (8, hh:mm:ss),
TimeReference (64-bit sample count, low word first), Version, UMID (64), five loudness values in
hundredths (0x7FFF when not measured), 180 reserved bytes, then CodingHistory. Text fields are
null-padded; a field filled to its length carries no terminator. All integers are little-endian.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timezone

_BEXT_FIXED = struct.Struct("<256s32s32s10s8sIIH64shhhhh180s")
BEXT_FIXED_SIZE = _BEXT_FIXED.size  # 602
_UNMEASURED = 0x7FFF
ORIGINATOR = "sfx-backend"


class RiffError(ValueError):
    """The bytes are not a RIFF/WAVE file this module can walk."""


@dataclass(frozen=True)
class Bext:
    description: str
    originator: str
    originator_reference: str
    origination_date: str  # yyyy-mm-dd
    origination_time: str  # hh:mm:ss
    time_reference: int = 0
    version: int = 2
    loudness_value: float | None = None  # LUFS
    max_true_peak_level: float | None = None  # dBTP
    coding_history: str = ""


def cut_utf8(text: str, limit: int) -> bytes:
    """`text` in UTF-8, cut to at most `limit` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def _hundredths(value: float | None) -> int:
    if value is None:
        return _UNMEASURED
    return max(-32768, min(32766, int(round(value * 100))))


def bext_for(prompt: str, job_ref: str, when: datetime, loudness_lufs: float | None = None,
             true_peak_dbtp: float | None = None) -> Bext:
    """The bext fields for one job: the prompt, who made it, the job id, when (UTC)."""
    when = when.astimezone(timezone.utc)
    return Bext(description=cut_utf8(prompt, 256).decode("utf-8"), originator=ORIGINATOR,
                originator_reference=job_ref, origination_date=when.strftime("%Y-%m-%d"),
                origination_time=when.strftime("%H:%M:%S"), loudness_value=loudness_lufs,
                max_true_peak_level=true_peak_dbtp)


def bext_payload(bext: Bext) -> bytes:
    """The bext chunk's body."""
    fixed = _BEXT_FIXED.pack(
        cut_utf8(bext.description, 256), cut_utf8(bext.originator, 32), cut_utf8(bext.originator_reference, 32),
        bext.origination_date.encode("ascii")[:10], bext.origination_time.encode("ascii")[:8],
        bext.time_reference & 0xFFFFFFFF, bext.time_reference >> 32, bext.version, b"",
        _hundredths(bext.loudness_value), _UNMEASURED, _hundredths(bext.max_true_peak_level),
        _UNMEASURED, _UNMEASURED, b"")
    return fixed + bext.coding_history.encode("ascii", errors="replace")


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def parse_bext(payload: bytes) -> Bext:
    """A bext chunk's body back into its fields."""
    payload = bytes(payload)
    if len(payload) < BEXT_FIXED_SIZE:
        raise RiffError(f"bext chunk is {len(payload)} bytes, shorter than its {BEXT_FIXED_SIZE} fixed bytes")
    (desc, orig, ref, date, time_, low, high, version, _umid, loudness, _lra, peak, _mom, _short,
     _reserved) = _BEXT_FIXED.unpack_from(payload)

    def level(value: int) -> float | None:
        return None if value == _UNMEASURED or version < 2 else value / 100

    return Bext(description=_text(desc), originator=_text(orig), originator_reference=_text(ref),
                origination_date=_text(date), origination_time=_text(time_), time_reference=low | (high << 32),
                version=version, loudness_value=level(loudness), max_true_peak_level=level(peak),
                coding_history=_text(payload[BEXT_FIXED_SIZE:]))


def info_payload(fields: dict[str, str]) -> bytes:
    """A `LIST` chunk's body of type `INFO`: one null-terminated subchunk per four-letter id."""
    out = bytearray(b"INFO")
    for key, value in fields.items():
        if len(key) != 4:
            raise ValueError(f"INFO ids are four characters, not {key!r}")
        out += chunk(key.encode("ascii"), cut_utf8(value, 1023) + b"\0")
    return bytes(out)


def parse_info(payload: bytes) -> dict[str, str]:
    """A `LIST`/`INFO` body back into {id: text}."""
    payload = bytes(payload)
    if payload[:4] != b"INFO":
        raise RiffError("LIST chunk is not of type INFO")
    return {cid.decode("ascii"): _text(bytes(body)) for cid, body in _walk(payload, 4)}


def chunk(chunk_id: bytes, payload: bytes) -> bytes:
    """One RIFF chunk: id, little-endian size, payload, and a pad byte when the size is odd."""
    return chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _walk(data: bytes | memoryview, pos: int) -> list[tuple[bytes, memoryview]]:
    view = memoryview(data)
    out = []
    while pos + 8 <= len(view):
        cid, size = bytes(view[pos:pos + 4]), struct.unpack_from("<I", view, pos + 4)[0]
        body = view[pos + 8: pos + 8 + size]
        if len(body) < size:
            raise RiffError(f"chunk {cid!r} runs past the end of the file")
        out.append((cid, body))
        pos += 8 + size + (size % 2)
    return out


def chunks(wav: bytes) -> list[tuple[bytes, memoryview]]:
    """The (id, payload) chunks of a RIFF/WAVE file, in file order (payloads are views into `wav`)."""
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise RiffError("not a RIFF/WAVE file")
    return _walk(wav, 12)


def with_chunks(wav: bytes, before: list[tuple[bytes, bytes]], after: list[tuple[bytes, bytes]] = ()) -> bytes:
    """The WAV with chunks added: `before` ahead of `fmt ` (where BWF readers look for bext), `after` at the end.

    Chunks of the same ids already in the file are replaced. Written into one buffer: the audio data is
    copied once.
    """
    replaced = {cid for cid, _ in (*before, *after)}
    parts = [*before, *((cid, body) for cid, body in chunks(wav) if cid not in replaced), *after]
    size = 4 + sum(8 + len(body) + len(body) % 2 for _, body in parts)
    out = bytearray(b"RIFF" + struct.pack("<I", size) + b"WAVE")
    for cid, body in parts:
        out += cid + struct.pack("<I", len(body))
        out += body
        if len(body) % 2:
            out += b"\0"
    return bytes(out)
