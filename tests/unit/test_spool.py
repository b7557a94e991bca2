"""The local audio spool: what it keeps, what it refuses to hand back, and what it cleans up."""
from __future__ import annotations

import os
import stat
import time
import uuid

import pytest

from sfx_backend.storage.spool import AudioSpool, SpoolError

AUDIO = b"ID3\x04\x00" + os.urandom(4000)


@pytest.fixture
def spool(tmp_path) -> AudioSpool:
    return AudioSpool(tmp_path / "spool")


def test_saved_audio_and_metadata_load_back_unchanged(spool):
    job_id = uuid.uuid4()
    spool.save(job_id, AUDIO, {"content_type": "audio/mpeg", "attempts": 2})
    data, meta = spool.load(job_id)
    assert data == AUDIO
    assert meta["content_type"] == "audio/mpeg" and meta["attempts"] == 2 and meta["size"] == len(AUDIO)


def test_nothing_spooled_loads_as_none_and_discarding_it_is_fine(spool):
    assert spool.load(uuid.uuid4()) is None
    spool.discard(uuid.uuid4())


def test_the_directory_is_created_on_first_save_and_only_the_owner_can_read(spool):
    assert not spool.directory.exists()
    job_id = uuid.uuid4()
    spool.save(job_id, AUDIO, {})
    assert stat.S_IMODE(spool.path_for(job_id).stat().st_mode) == 0o600
    assert [p.name for p in spool.directory.iterdir()] == [f"{job_id}.spool"]  # no temporary file left


def test_saving_again_replaces_the_file(spool):
    job_id = uuid.uuid4()
    spool.save(job_id, b"first", {"n": 1})
    spool.save(job_id, AUDIO, {"n": 2})
    data, meta = spool.load(job_id)
    assert data == AUDIO and meta["n"] == 2


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-1],  # torn data
    lambda raw: raw[:20],  # torn header
    lambda raw: raw[:-5] + b"xxxxx",  # same length, other bytes
    lambda raw: b"something else entirely",
])
def test_a_damaged_file_is_refused(spool, damage):
    job_id = uuid.uuid4()
    spool.save(job_id, AUDIO, {"content_type": "audio/mpeg"})
    path = spool.path_for(job_id)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SpoolError):
        spool.load(job_id)


def test_discard_removes_the_file(spool):
    job_id = uuid.uuid4()
    spool.save(job_id, AUDIO, {})
    spool.discard(job_id)
    assert spool.load(job_id) is None


def test_sweep_removes_only_old_spool_and_temporary_files(spool):
    old, fresh = uuid.uuid4(), uuid.uuid4()
    spool.save(old, AUDIO, {})
    spool.save(fresh, AUDIO, {})
    leftover = spool.directory / f".{old}.abc123.tmp"  # a save interrupted by a crash
    leftover.write_bytes(b"partial")
    unrelated = spool.directory / "README"
    unrelated.write_text("not ours")
    long_ago = time.time() - spool.max_age_seconds - 60
    for path in (spool.path_for(old), leftover, unrelated):
        os.utime(path, (long_ago, long_ago))
    assert spool.sweep() == 2
    assert spool.load(old) is None and spool.load(fresh) is not None
    assert not leftover.exists() and unrelated.exists()


def test_a_missing_directory_sweeps_as_empty(spool):
    assert spool.sweep() == 0
