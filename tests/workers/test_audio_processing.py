"""The processing stage inside the runner: options to stored file, measurements, waveform, failures, slots."""
from __future__ import annotations

import io
import uuid

import numpy as np
import pyloudnorm
import pytest
import soundfile
import sqlalchemy as sa

from sfx_backend.audio import chain, riff
from sfx_backend.extensions import db
from sfx_backend.models import ApiKeyStatus, Job
from tests.workers.conftest import assert_ledger_balances

ALL_ON = {"output_format": "wav", "sample_rate": 48000, "bit_depth": 24, "loudness_lufs": -18.0,
          "trim_silence": True, "duration_seconds": 2.0}


def _job(user, **fields) -> uuid.UUID:
    response = user.generate(**fields)
    assert response.status_code == 202, response.get_json()
    return uuid.UUID(response.get_json()["id"])


def _download(app, client, user, job_id) -> bytes:
    response = user.get(f"/jobs/{job_id}/audio")
    return client.get(response.headers["Location"].removeprefix(app.config["API_BASE_URL"])).data


def test_a_job_with_every_option_is_stored_as_asked_and_measured(app, client, user, make_runner):
    job_id = _job(user, prompt="metal door slam", **ALL_ON)
    assert make_runner().run(job_id).status == "succeeded"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert (body["sample_rate"], body["bit_depth"], body["loudness_lufs"], body["trim_silence"]) == (48000, 24, -18.0,
                                                                                                     True)
    audio = body["audio"]
    data = _download(app, client, user, job_id)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    info = soundfile.info(io.BytesIO(data))
    assert (rate, info.subtype, audio["sample_rate"], audio["bit_depth"]) == (48000, "PCM_24", 48000, 24)
    assert audio["content_type"] == "audio/wav" and audio["channels"] == samples.shape[1]
    assert audio["duration_seconds"] == pytest.approx(samples.shape[0] / rate, abs=1e-3)
    assert pyloudnorm.Meter(rate).integrated_loudness(samples) == pytest.approx(-18.0, abs=0.5)
    assert audio["loudness_lufs"] == pytest.approx(-18.0, abs=0.5) and audio["true_peak_dbtp"] <= -1.0
    # The synth starts with silence and ends with a tail and silence: trimmed, the sound starts at once.
    assert np.flatnonzero(np.abs(samples[:, 0]) > 10 ** (-60 / 20))[0] < 0.02 * rate
    assert audio["duration_seconds"] < 2.0
    bext = riff.parse_bext(dict(riff.chunks(data))[b"bext"])
    assert bext.description == "metal door slam" and bext.originator_reference == job_id.hex
    waveform = user.get(audio["peaks_url"])
    assert waveform.status_code == 200
    peaks = waveform.get_json()
    assert 900 <= len(peaks["peaks"]) <= 1000
    assert max(hi for _, hi in peaks["peaks"]) == pytest.approx(samples.max(), abs=1e-3)  # raw, not normalised
    assert peaks["samples_per_peak"] * len(peaks["peaks"]) >= samples.shape[0]
    assert_ledger_balances(user.id)


def test_the_waveform_is_the_owners_only_and_absent_until_there_is_one(user, make_user, make_runner):
    job_id = _job(user)
    assert user.get(f"/jobs/{job_id}/waveform").status_code == 404  # queued: nothing yet
    make_runner().run(job_id)
    assert user.get(f"/jobs/{job_id}/waveform").status_code == 200
    stranger = make_user().get(f"/jobs/{job_id}/waveform")
    assert stranger.status_code == 404 and stranger.get_json()["code"] == "not_found"
    assert user.get(f"/jobs/{uuid.uuid4()}/waveform").status_code == 404


def test_a_default_mp3_job_is_the_upstreams_mp3_with_a_tag(app, client, user, make_runner, pool, eleven,
                                                           fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user, prompt="glass shatter")
    assert make_runner(eleven).run(job_id).status == "succeeded"
    assert [r.query["output_format"] for r in fake_upstream.requests] == ["mp3_44100_128"]  # as before
    data = _download(app, client, user, job_id)
    assert data.startswith(b"ID3")
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["audio"]["bit_depth"] is None and body["audio"]["sample_rate"] == 44100


@pytest.mark.parametrize("tier, asked", [
    ("pro", ["pcm_48000"]),
    ("creator", ["mp3_44100_192"]),
    (None, ["pcm_48000", "pcm_44100", "mp3_44100_192"]),  # never probed: the upstream's refusals teach the key
])
def test_a_48_khz_job_asks_each_key_for_the_best_its_tier_allows_and_never_disables_it(
        app, client, user, make_runner, pool, eleven, fake_upstream, tier, asked):
    fake_upstream.set_key("key-alpha-0001", tier="creator" if tier is None else tier)
    key, _ = pool.add("alpha", "key-alpha-0001")
    if tier is not None:
        key.tier = tier
    db.session.commit()
    job_id = _job(user, prompt="rain", duration_seconds=1.0, output_format="flac", sample_rate=48000)
    assert make_runner(eleven).run(job_id).status == "succeeded"
    assert [r.query["output_format"] for r in fake_upstream.requests if r.path == "/v1/sound-generation"] == asked
    data = _download(app, client, user, job_id)
    info = soundfile.info(io.BytesIO(data))
    assert (info.format, info.samplerate, info.subtype) == ("FLAC", 48000, "PCM_16")
    db.session.refresh(key)
    assert key.status == ApiKeyStatus.ACTIVE


def test_processing_holds_no_key_slot_and_no_database_transaction(app, user, make_runner, pool, eleven,
                                                                  fake_upstream, monkeypatch):
    fake_upstream.set_key("key-alpha-0001", tier="pro")
    key, _ = pool.add("alpha", "key-alpha-0001")
    key.tier = "pro"
    db.session.commit()
    job_id = _job(user, prompt="wind", duration_seconds=1.0, **{k: v for k, v in ALL_ON.items()
                                                                  if k != "duration_seconds"})
    seen = {}
    real = chain.process

    def watching(data, options, tags):
        seen["in_transaction"] = db.session().in_transaction()
        with db.engine.connect() as other:
            seen["leases"] = other.execute(sa.text("SELECT count(*) FROM key_leases WHERE job_id = :j"),
                                           {"j": job_id}).scalar()
            seen["attempt_committed"] = other.execute(
                sa.text("SELECT count(*) FROM job_attempts WHERE job_id = :j"), {"j": job_id}).scalar()
        return real(data, options, tags)

    monkeypatch.setattr("sfx_backend.services.processing.process", watching)
    assert make_runner(eleven).run(job_id).status == "succeeded"
    assert seen == {"in_transaction": False, "leases": 0, "attempt_committed": 1}


def test_a_processing_failure_fails_refunds_and_keeps_the_upstreams_answer(app, user, make_runner, monkeypatch):
    def broken(data, options, tags):
        raise chain.ProcessingError("ValueError: the encoder gave up")

    monkeypatch.setattr("sfx_backend.services.processing.process", broken)
    job_id = _job(user, prompt="thunder", output_format="wav", loudness_lufs=-14.0)
    assert make_runner().run(job_id).status == "failed"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["error"]["code"] == "processing_failed" and "encoder" not in body["error"]["message"]
    assert body["audio"] is None
    assert user.get("/usage/current").get_json()["remaining"] == 10
    job = db.session.get(Job, job_id)
    kept = app.extensions["sfx"].storage.get(job.original_key)
    assert kept.startswith(b"RIFF")  # the synth's WAV, as it came
    assert not app.extensions["sfx"].spool.path_for(job_id).exists()
    assert_ledger_balances(user.id)


def test_a_spooled_answer_is_processed_when_a_later_delivery_resumes_it(app, client, user, make_runner):
    from sfx_backend.providers.base import GeneratedAudio
    from sfx_backend.providers.synth import SynthProvider
    from sfx_backend.providers.base import SoundRequest

    job_id = _job(user, prompt="bell", duration_seconds=1.0, output_format="flac", sample_rate=48000)
    made = SynthProvider().generate(SoundRequest("bell", 1.0, output_format="source"))
    spool = app.extensions["sfx"].spool
    spool.save(job_id, made.data, {"job_id": str(job_id), "content_type": made.content_type,
                                   "extension": made.extension, "attempts": 0})
    assert make_runner().run(job_id).status == "succeeded"
    info = soundfile.info(io.BytesIO(_download(app, client, user, job_id)))
    assert (info.format, info.samplerate) == ("FLAC", 48000)
    assert isinstance(made, GeneratedAudio)
