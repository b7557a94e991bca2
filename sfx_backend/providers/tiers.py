"""ElevenLabs plan tiers and the output formats each may ask for: the one table that says so.

Sources: the SDK's `text_to_sound_effects` client documents `output_format` ("MP3 with 192kbps bitrate
requires you to be subscribed to Creator tier or above. PCM with 44.1kHz sample rate requires you to be
subscribed to Pro tier or above"); ElevenLabs' error documentation names `pcm_48000` with the Pro
formats. Tier names are the values of `/v1/user/subscription`'s `tier` as the SDK lists them
(`pending_subscription_switch_response_model_next_tier.py`: free, starter, creator, pro,
growing_business, scale_2024_08_10, enterprise, plus grant and trial tiers whose rank nothing states).
"""
from __future__ import annotations

import re
from typing import Collection

# The upstream's tier ladder, lowest first. A tier not named here is unknown: its key is asked for what
# a job prefers and the upstream's answer teaches the pool what it may not use.
TIER_RANK: dict[str, int] = {
    "free": 0,
    "starter": 1,
    "creator": 2,
    "pro": 3,
    # Above Pro every format is open, so how these rank among themselves does not matter here.
    "scale": 4,
    "growing_business": 4,
    "enterprise": 4,
}

# Output format -> lowest tier allowed to ask for it. Every format not listed is open to every tier.
FORMAT_MIN_TIER: dict[str, str] = {
    "mp3_44100_192": "creator",
    "pcm_44100": "pro",
    "pcm_48000": "pro",
}

# What every tier may ask for; a tier gate on it says the key's account cannot generate, not its tier.
BASELINE_MP3 = "mp3_44100_128"

# Formats to try per stored container, best first, after the configured PCM format for WAV. The MP3s are
# 44.1 kHz like the WAV the plugin gets, so decoding them needs no resampling.
WAV_FALLBACKS = ("mp3_44100_192", BASELINE_MP3)

_DATED = re.compile(r"_\d{4}_\d{2}_\d{2}$")


def tier_rank(tier: str | None) -> int | None:
    """The rank of an upstream tier name (`scale_2024_08_10` ranks as `scale`), None when unknown."""
    if not tier:
        return None
    return TIER_RANK.get(_DATED.sub("", tier.strip().lower()))


def tier_allows(tier: str | None, fmt: str) -> bool | None:
    """True or False when the table knows the answer for this tier; None for an unknown tier."""
    needed = FORMAT_MIN_TIER.get(fmt)
    if needed is None:
        return True
    rank = tier_rank(tier)
    return None if rank is None else rank >= TIER_RANK[needed]


def choose_format(preferences: Collection[str], tier: str | None, refused: Collection[str] = ()) -> str | None:
    """The first preferred format this key may ask for: allowed by its tier (an unknown tier may try
    anything) and not refused by the upstream for this key before. None when nothing is left."""
    for fmt in preferences:
        if fmt not in refused and tier_allows(tier, fmt) is not False:
            return fmt
    return None
