"""A job per format and option set through a real worker process, S3 (nanio) and the fake upstream;
each file downloaded from its presigned URL and measured here."""
from __future__ import annotations

import io
import uuid
import wave

import numpy as np
import pyloudnorm
import pytest
import requests
import soundfile
from mutagen.flac import FLAC
from mutagen.id3 import ID3

from sfx_backend import create_app
from sfx_backend.audio import dsp, riff
from tests.conftest import FAST_HASH, make_environ
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.nanio_server import nanio  # noqa: F401 - fixture
from tests.support.processes import start_worker, stop, wait_for

pytestmark = pytest.mark.slow

KEY = "el-key-audio-2222"
JOBS = {
    "mp3-default": {"prompt": "laser zap", "duration_seconds": 1.0},
    "wav-everything": {"prompt": "door slam", "duration_seconds": 2.0, "output_format": "wav", "sample_rate": 48000,
                       "bit_depth": 24, "loudness_lufs": -16.0, "trim_silence": True, "loop": True},
    "flac-44k": {"prompt": "rain", "duration_seconds": 1.5, "output_format": "flac", "loudness_lufs": -23.0},
    "mp3-48k": {"prompt": "wind", "duration_seconds": 1.5, "sample_rate": 48000, "loudness_lufs": -20.0},
}


def _measure(data: bytes) -> tuple[np.ndarray, int, float, float]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate, pyloudnorm.Meter(rate).integrated_loudness(samples), dsp.true_peak_dbtp(samples)


def test_every_format_and_option_set_through_a_real_worker_and_s3(app, database_url, tmp_path, encryption_key,
                                                                  redis_db, nanio):  # noqa: F811
    bucket = f"sfx-{uuid.uuid4().hex[:10]}"
    with FakeElevenLabs(keys={KEY: 5}) as upstream:
        upstream.set_key(KEY, tier="pro")
        env = make_environ(database_url, tmp_path / "pipeline", encryption_key,
                           CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
                           CELERY_QUEUE=f"sfx-test-{uuid.uuid4().hex[:8]}", STORAGE_BACKEND="s3",
                           S3_ENDPOINT_URL=nanio.endpoint_url, S3_BUCKET=bucket, AWS_ACCESS_KEY_ID=nanio.access_key,
                           AWS_SECRET_ACCESS_KEY=nanio.secret_key, SFX_PROVIDER="elevenlabs",
                           ELEVEN_LABS_BASE_URL=upstream.url, ELEVEN_LABS_API_KEYS=KEY, LOG_LEVEL="info")
        pipeline = create_app(FAST_HASH, environ=env)
        with pipeline.app_context():
            pipeline.extensions["sfx"].storage.ensure_bucket()
            worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
            try:
                client = pipeline.test_client()
                token = client.post("/auth/register", json={"email": f"a-{uuid.uuid4().hex[:8]}@example.com",
                                                            "password": "correct horse battery"}).get_json()
                headers = {"Authorization": f"Bearer {token['access_token']}"}
                ids = {}
                for name, body in JOBS.items():
                    response = client.post("/usage/generate", headers=headers, json=body)
                    assert response.status_code == 202, response.get_json()
                    ids[name] = response.get_json()["id"]

                def all_finished():
                    jobs = {n: client.get(f"/jobs/{i}", headers=headers).get_json() for n, i in ids.items()}
                    done = all(j["status"] in ("succeeded", "failed") for j in jobs.values())
                    return jobs if done else None

                jobs = wait_for(all_finished, 90, interval=0.2, what="the audio jobs")
                waveforms = {n: client.get(j["audio"]["peaks_url"], headers=headers).get_json()
                             for n, j in jobs.items() if j["audio"]}
            finally:
                stop(worker)
            log = (tmp_path / "worker.log").read_text()
            assert all(j["status"] == "succeeded" for j in jobs.values()), (jobs, log[-3000:])
            files = {n: requests.get(j["audio"]["url"], timeout=5).content for n, j in jobs.items()}

    for name, job in jobs.items():
        audio, data = job["audio"], files[name]
        assert len(data) == audio["size_bytes"]
        samples, rate, loudness, peak = _measure(data)
        assert (audio["sample_rate"], audio["channels"]) == (rate, samples.shape[1])
        assert audio["duration_seconds"] == pytest.approx(samples.shape[0] / rate, abs=1e-3)
        assert audio["loudness_lufs"] == pytest.approx(loudness, abs=0.05)
        assert audio["true_peak_dbtp"] == pytest.approx(peak, abs=0.05)
        target = JOBS[name].get("loudness_lufs")
        if target is not None:
            assert loudness == pytest.approx(target, abs=0.5) and peak <= -1.0 + 0.05
        peaks = waveforms[name]["peaks"]
        assert 900 <= len(peaks) <= 1000 and all(-1 <= lo <= hi <= 1 for lo, hi in peaks)

    mp3 = files["mp3-default"]
    assert ID3(io.BytesIO(mp3))["TIT2"].text == ["laser zap"] and jobs["mp3-default"]["audio"]["bit_depth"] is None

    wav = files["wav-everything"]
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getsampwidth()) == (48000, 3)
    bext = riff.parse_bext(dict(riff.chunks(wav))[b"bext"])
    assert bext.description == "door slam" and bext.originator == "sfx-backend"
    assert bext.originator_reference == jobs["wav-everything"]["id"].replace("-", "")
    assert riff.parse_info(dict(riff.chunks(wav))[b"LIST"])["INAM"] == "door slam"
    samples, *_ = _measure(wav)
    assert np.abs(samples[0] - samples[-1]).max() <= np.abs(np.diff(samples, axis=0)).max()  # the loop's join

    flac = FLAC(io.BytesIO(files["flac-44k"]))
    assert flac["TITLE"] == ["rain"] and (flac.info.sample_rate, flac.info.bits_per_sample) == (44100, 16)

    assert soundfile.info(io.BytesIO(files["mp3-48k"])).samplerate == 48000
    asked = [r.query["output_format"] for r in upstream.requests if r.path == "/v1/sound-generation"]
    assert sorted(asked) == sorted(["mp3_44100_128", "pcm_48000", "pcm_44100", "pcm_48000"])
