"""Pure functions on audio: bytes or samples in, bytes or samples out; no I/O beyond memory."""
from .convert import DecodeError, PcmAudio, decode_to_pcm16

__all__ = ["DecodeError", "PcmAudio", "decode_to_pcm16"]
