"""The embedded broker never hands a worker half a message (sfx_backend/broker_files.py)."""
from __future__ import annotations

from queue import Empty

import pytest
from kombu import Connection
from kombu.transport import filesystem

from sfx_backend import broker_files


def _channel(tmp_path, transport):
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path), "store_processed": False}
    connection = Connection("filesystem://", transport=transport, transport_options=options)
    return connection, connection.default_channel


def test_kombus_own_transport_lets_a_reader_take_a_message_its_writer_has_not_finished(tmp_path, monkeypatch):
    """What the embedded broker did before: the file exists, empty, while its writer holds the lock."""
    connection, channel = _channel(tmp_path, filesystem.Transport)
    seen = []
    real_lock = filesystem.lock

    def reader_polls_now(f, flags):  # between kombu's open() and its write()
        real_lock(f, flags)
        try:
            seen.append(channel._get("jobs"))
        except Exception as exc:  # noqa: BLE001 - what a worker would have met
            seen.append(exc)

    monkeypatch.setattr(filesystem, "lock", reader_polls_now)
    channel._put("jobs", {"body": "x" * 1000})
    connection.release()
    assert len(seen) == 1 and isinstance(seen[0], Exception)  # an empty file that does not decode


def test_a_message_is_invisible_until_it_is_whole_then_read_exactly_once(tmp_path, monkeypatch):
    connection, channel = _channel(tmp_path, broker_files.Transport)
    seen = []
    real_replace = broker_files.os.replace

    def reader_polls_before_the_rename(src, dst):
        with pytest.raises(Empty):
            channel._get("jobs")  # the written file does not count yet
        seen.append("polled")
        real_replace(src, dst)

    monkeypatch.setattr(broker_files.os, "replace", reader_polls_before_the_rename)
    payload = {"body": "x" * 100_000, "headers": {"task": "sfx.jobs.generate"}}
    channel._put("jobs", payload)
    assert seen == ["polled"]
    assert channel._get("jobs") == payload
    with pytest.raises(Empty):
        channel._get("jobs")
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing partial left behind
    connection.release()


def test_the_embedded_broker_uses_the_atomic_transport(tmp_path):
    from sfx_backend import create_app
    from tests.conftest import FAST_HASH, TEST_SECRETS

    app = create_app(FAST_HASH, environ={"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path), **TEST_SECRETS})
    celery = app.extensions["celery"]
    assert celery.conf.broker_url.startswith("filesystem://")  # no broker configured: the embedded one
    with celery.connection_for_write() as connection:
        assert connection.transport_cls == "sfx_backend.broker_files:Transport"
        assert isinstance(connection.transport, broker_files.Transport)
