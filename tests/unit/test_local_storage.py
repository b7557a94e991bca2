"""LocalStorage: files under a root, atomic writes, and HMAC-signed expiring download URLs."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from sfx_backend.storage.base import StorageError
from sfx_backend.storage.local import (
    ExpiredURL,
    InvalidSignature,
    LocalStorage,
    SignedURLError,
    attachment_disposition,
)

KEY = "audio/user-1/job-1.mp3"
AUDIO = b"ID3\x03\x00fake-mp3-bytes"
BASE_URL = "https://api.example.test"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects", base_url=BASE_URL + "/", secret="s3cret-signing-key")


def _split(url: str) -> tuple[str, dict[str, str]]:
    """What the Flask route sees: the decoded <path:key> and the decoded query args."""
    parts = urlsplit(url)
    prefix = "/files/"
    assert parts.path.startswith(prefix)
    return unquote(parts.path[len(prefix) :]), dict(parse_qsl(parts.query, keep_blank_values=True))


def _signed(storage: LocalStorage, key: str = KEY, filename: str = "boom.mp3", ttl: int = 300):
    link = storage.download_url(key, filename=filename, content_type="audio/mpeg", ttl_seconds=ttl)
    key_seen, args = _split(link.url)
    return link, key_seen, args


def test_put_then_get_returns_the_same_bytes(storage: LocalStorage) -> None:
    storage.put(KEY, AUDIO, "audio/mpeg")
    assert storage.get(KEY) == AUDIO
    assert (storage.root / KEY).read_bytes() == AUDIO


def test_delete_removes_the_object_and_a_missing_key_is_fine(storage: LocalStorage) -> None:
    storage.put(KEY, AUDIO, "audio/mpeg")
    storage.delete(KEY)
    storage.delete(KEY)
    with pytest.raises(StorageError):
        storage.get(KEY)


def test_getting_a_missing_key_is_a_storage_error(storage: LocalStorage) -> None:
    with pytest.raises(StorageError, match="no local object"):
        storage.get("audio/nobody/never.mp3")


@pytest.mark.parametrize(
    "key",
    [
        "../escape.mp3",
        "audio/../../escape.mp3",
        "audio/..",
        "/etc/passwd",
        "audio\\..\\escape.mp3",
        "audio/job\x00.mp3",
        "audio//job.mp3",
        "audio/./job.mp3",
        "",
    ],
)
def test_keys_that_could_escape_the_root_are_rejected(storage: LocalStorage, key: str) -> None:
    for operation in (
        lambda: storage.put(key, AUDIO, "audio/mpeg"),
        lambda: storage.get(key),
        lambda: storage.delete(key),
        lambda: storage.download_url(
            key, filename="x.mp3", content_type="audio/mpeg", ttl_seconds=60
        ),
    ):
        with pytest.raises(ValueError):
            operation()
    assert not (storage.root.parent / "escape.mp3").exists()


def test_a_symlink_pointing_outside_the_root_is_rejected(
    storage: LocalStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage.root.mkdir(parents=True)
    (storage.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        storage.put("link/escape.mp3", AUDIO, "audio/mpeg")
    assert not (outside / "escape.mp3").exists()


def test_overwrite_replaces_the_file_atomically_and_leaves_no_temp_files(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.put(KEY, b"old audio", "audio/mpeg")
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spying_replace(src: str, dst: str) -> None:
        # At the moment of the swap the old content must still be intact.
        assert Path(dst).read_bytes() == b"old audio"
        assert Path(src).read_bytes() == AUDIO
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    storage.put(KEY, AUDIO, "audio/mpeg")

    assert len(replaced) == 1 and Path(replaced[0][1]) == storage.path_for(KEY)
    assert storage.get(KEY) == AUDIO
    assert sorted(p.name for p in (storage.root / KEY).parent.iterdir()) == ["job-1.mp3"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.put(KEY, b"old audio", "audio/mpeg")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="No space left"):
        storage.put(KEY, AUDIO, "audio/mpeg")

    assert storage.get(KEY) == b"old audio"
    assert sorted(p.name for p in (storage.root / KEY).parent.iterdir()) == ["job-1.mp3"]


def test_signed_url_resolves_to_the_file_content_type_and_filename(storage: LocalStorage) -> None:
    storage.put(KEY, AUDIO, "audio/mpeg")
    before = datetime.now(tz=UTC)
    link, key_seen, args = _signed(storage, filename='Explosión "big" #1.mp3')

    path, content_type, filename = storage.resolve_signed(key_seen, args)

    assert link.url.startswith(BASE_URL + "/files/audio/user-1/job-1.mp3?")
    assert path.read_bytes() == AUDIO
    assert content_type == "audio/mpeg"
    assert filename == 'Explosión "big" #1.mp3'
    assert link.expires_at.tzinfo is not None
    assert before + timedelta(seconds=298) <= link.expires_at <= before + timedelta(seconds=301)
    assert args["expires"] == str(int(link.expires_at.timestamp()))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sig", "0" * 64),
        ("sig", "é" * 64),
        ("filename", "evil.exe"),
        ("ct", "text/html"),
        ("expires", "9999999999"),
        ("expires", "soon"),
    ],
)
def test_a_tampered_query_arg_is_an_invalid_signature(
    storage: LocalStorage, field: str, value: str
) -> None:
    _, key_seen, args = _signed(storage)
    with pytest.raises(InvalidSignature):
        storage.resolve_signed(key_seen, {**args, field: value})


@pytest.mark.parametrize("missing", ["sig", "expires", "filename", "ct"])
def test_a_url_missing_a_signed_arg_is_an_invalid_signature(
    storage: LocalStorage, missing: str
) -> None:
    _, key_seen, args = _signed(storage)
    del args[missing]
    with pytest.raises(InvalidSignature):
        storage.resolve_signed(key_seen, args)


@pytest.mark.parametrize(
    "other_key", ["audio/user-2/job-1.mp3", "../objects/audio/user-1/job-1.mp3"]
)
def test_a_url_pointed_at_another_key_is_an_invalid_signature(
    storage: LocalStorage, other_key: str
) -> None:
    storage.put("audio/user-2/job-1.mp3", b"someone else's audio", "audio/mpeg")
    _, _, args = _signed(storage)
    with pytest.raises(InvalidSignature):
        storage.resolve_signed(other_key, args)


def test_a_url_signed_with_another_secret_is_an_invalid_signature(
    storage: LocalStorage, tmp_path: Path
) -> None:
    other = LocalStorage(storage.root, base_url=BASE_URL, secret=b"another-secret")
    _, key_seen, args = _signed(other)
    with pytest.raises(InvalidSignature):
        storage.resolve_signed(key_seen, args)


def test_an_expired_url_is_refused_but_works_until_then(storage: LocalStorage) -> None:
    link, key_seen, args = _signed(storage, ttl=60)

    storage.resolve_signed(key_seen, args, now=link.expires_at)
    with pytest.raises(ExpiredURL):
        storage.resolve_signed(key_seen, args, now=link.expires_at + timedelta(seconds=1))
    assert issubclass(ExpiredURL, SignedURLError) and issubclass(InvalidSignature, SignedURLError)


@pytest.mark.parametrize("ttl", [0, -5, 8 * 24 * 3600])
def test_an_out_of_range_ttl_is_rejected(storage: LocalStorage, ttl: int) -> None:
    with pytest.raises(ValueError):
        storage.download_url(KEY, filename="x.mp3", content_type="audio/mpeg", ttl_seconds=ttl)


def test_a_content_type_with_a_newline_is_rejected(storage: LocalStorage) -> None:
    with pytest.raises(ValueError):
        storage.download_url(
            KEY, filename="x.mp3", content_type="audio/mpeg\r\nX-Evil: 1", ttl_seconds=60
        )


def test_check_creates_the_root_and_fails_when_it_is_a_file(tmp_path: Path) -> None:
    fresh = LocalStorage(tmp_path / "new-root", base_url=BASE_URL, secret="k")
    fresh.check()
    assert fresh.root.is_dir()

    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageError):
        LocalStorage(tmp_path / "a-file", base_url=BASE_URL, secret="k").check()


def test_an_empty_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, base_url=BASE_URL, secret="")


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("boom.mp3", 'attachment; filename="boom.mp3"'),
        (
            "Explosión 01.mp3",
            "attachment; filename=\"Explosion 01.mp3\"; filename*=UTF-8''Explosi%C3%B3n%2001.mp3",
        ),
        ('a"b;c.mp3', "attachment; filename=\"a_b_c.mp3\"; filename*=UTF-8''a%22b%3Bc.mp3"),
        (
            "../../etc/passwd",
            "attachment; filename=\"_.._etc_passwd\"; filename*=UTF-8''.._.._etc_passwd",
        ),
        ("爆発.mp3", "attachment; filename=\"_.mp3\"; filename*=UTF-8''%E7%88%86%E7%99%BA.mp3"),
        ("", 'attachment; filename="download"'),
    ],
)
def test_attachment_disposition_has_a_safe_ascii_name_and_an_rfc5987_one(
    filename: str, expected: str
) -> None:
    assert attachment_disposition(filename) == expected
