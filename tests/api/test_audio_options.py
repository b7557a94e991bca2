"""The generate body's audio options: defaults, echo, and clear 422s for what we do not offer."""
import pytest


def test_defaults_keep_todays_behaviour(user, queue):
    job = user.generate("rain").get_json()
    assert (job["output_format"], job["sample_rate"], job["bit_depth"], job["loudness_lufs"],
            job["trim_silence"]) == ("mp3", 44100, None, None, False)
    wav = user.generate("rain", output_format="wav").get_json()
    assert (wav["sample_rate"], wav["bit_depth"]) == (44100, 16)


def test_every_option_is_accepted_and_echoed(user):
    job = user.generate("rain", output_format="flac", sample_rate=48000, bit_depth=24, loudness_lufs=-16,
                        trim_silence=True, loop=True).get_json()
    assert (job["output_format"], job["sample_rate"], job["bit_depth"], job["loudness_lufs"], job["trim_silence"],
            job["loop"]) == ("flac", 48000, 24, -16.0, True, True)


@pytest.mark.parametrize("fields, bad, says", [
    ({"output_format": "mp3", "bit_depth": 24}, "bit_depth", "MP3 has no bit depth"),
    ({"bit_depth": 16}, "bit_depth", "MP3 has no bit depth"),  # mp3 is the default format
    ({"output_format": "wav", "sample_rate": 22050}, "sample_rate", "44100 or 48000"),
    ({"sample_rate": "48000"}, "sample_rate", "integer"),
    ({"sample_rate": 48000.5}, "sample_rate", "integer"),
    ({"output_format": "wav", "bit_depth": 32}, "bit_depth", "16 or 24"),
    ({"loudness_lufs": -50}, "loudness_lufs", "-40 and -6"),
    ({"loudness_lufs": 0}, "loudness_lufs", "-40 and -6"),
    ({"loudness_lufs": "loud"}, "loudness_lufs", "number"),
    ({"trim_silence": "yes"}, "trim_silence", "boolean"),
    ({"output_format": "aiff"}, "output_format", "mp3, wav, flac"),
])
def test_what_we_do_not_offer_is_a_clear_422_and_charges_nothing(user, queue, fields, bad, says):
    response = user.generate("rain", **fields)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "validation_error" and list(body["errors"]) == [bad]
    assert says.lower() in " ".join(body["errors"][bad]).lower()
    assert queue.sent == [] and user.get("/usage/current").get_json()["reserved"] == 0


def test_null_loudness_and_rate_mean_the_defaults(user):
    job = user.generate("rain", output_format="wav", loudness_lufs=None, sample_rate=None, bit_depth=None)
    assert job.status_code == 202
    assert (job.get_json()["sample_rate"], job.get_json()["bit_depth"], job.get_json()["loudness_lufs"]) == (
        44100, 16, None)


def test_the_same_idempotency_key_with_other_audio_options_is_a_conflict(user):
    first = user.generate("rain", headers={"Idempotency-Key": "k1"}, output_format="wav")
    assert first.status_code == 202
    again = user.generate("rain", headers={"Idempotency-Key": "k1"}, output_format="wav")
    assert again.get_json()["id"] == first.get_json()["id"]
    other = user.generate("rain", headers={"Idempotency-Key": "k1"}, output_format="wav", sample_rate=48000)
    assert other.status_code in (409, 422) and other.get_json()["code"] == "idempotency_conflict"


def test_the_document_lists_the_options_and_the_waveform_route(client):
    spec = client.get("/openapi.json").get_json()
    body = spec["components"]["schemas"]["Generate"]["properties"]
    assert body["sample_rate"]["enum"] == [44100, 48000] and body["bit_depth"]["enum"] == [16, 24]
    assert body["output_format"]["enum"] == ["mp3", "wav", "flac"]
    audio = spec["components"]["schemas"]["Audio"]
    assert {"duration_seconds", "sample_rate", "channels", "bit_depth", "loudness_lufs", "true_peak_dbtp",
            "peaks_url"} <= set(audio["required"])
    assert "null" in audio["properties"]["bit_depth"]["type"]
    waveform = spec["paths"]["/jobs/{job_id}/waveform"]["get"]
    assert waveform["operationId"] == "getJobWaveform" and "404" in waveform["responses"]


def test_a_request_without_audio_options_fingerprints_as_before_they_existed():
    import hashlib
    import json

    from sfx_backend.services.jobs import GenerationParams

    before = {"prompt": "rain", "duration_seconds": 2.0, "prompt_influence": 0.3, "loop": False, "output_format": "wav"}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert GenerationParams(**before).fingerprint() == expected  # a replay across the upgrade is no conflict
    assert GenerationParams(**before, sample_rate=48000).fingerprint() != expected
