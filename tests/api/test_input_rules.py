"""Bad input is a 400 or 422 problem, never a 500: bounded JSON, storable strings, prompts worth sending.

The audit's inputs, each once a 500 with a traceback in the log: a NUL character, a lone surrogate,
JSON nested 20,000 deep and a 5,000-digit integer; and prompts that cost an upstream call for
nothing (only invisible characters, or control characters).
"""
from __future__ import annotations

import logging
import uuid

import pytest

from sfx_backend import create_app
from sfx_backend.api import request_input
from sfx_backend.errors import InvalidJson
from sfx_backend.extensions import db, limiter
from sfx_backend.models import Job, User, UserRole
from tests.conftest import FAST_HASH, TEST_REDIS_URL, ApiUser, make_environ, truncate_all
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"
DEEP = "[" * 20_000 + "]" * 20_000
HUGE = "1" * 5000


def _addr() -> dict:
    return {"REMOTE_ADDR": f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}


@pytest.fixture
def limited_client(_migrated, database_url, tmp_path, encryption_key, redis_db):
    """A client of an app with its abuse limits on, counting in Redis: the login limiter reads each body.

    No RATELIMIT_KEY_PREFIX: the shared limiter keeps the first prefix it is given, which other tests set;
    fresh addresses and emails keep these counters apart."""
    app = create_app(FAST_HASH, environ=make_environ(
        database_url, tmp_path / "instance", encryption_key, RATELIMIT_ENABLED="true",
        REDIS_URL=TEST_REDIS_URL.format(db=redis_db)))
    app.extensions["sfx"].tasks = RecordingTasks()
    with app.app_context():
        yield app.test_client()
        limiter._storage_dead = False
        db.session.remove()
        truncate_all()
        db.engine.dispose()


@pytest.fixture
def admin_user(make_user) -> ApiUser:
    account = make_user()
    db.session.query(User).filter_by(id=uuid.UUID(account.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    return account


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if anything was logged as an unhandled error."""
    caplog.set_level(logging.ERROR, logger="sfx_backend.errors")
    yield
    unhandled = [r for r in caplog.records if getattr(r, "event", None) == "unhandled_error"]
    assert not unhandled, [r.exc_info[1] for r in unhandled if r.exc_info]


def post_raw(client, url: str, text: str, **kw):
    return client.post(url, data=text.encode("utf-8", "surrogatepass"), content_type="application/json", **kw)


def assert_bad_request(response) -> dict:
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "bad_request" and body["status"] == 400
    return body


def assert_invalid(response, field: str) -> list[str]:
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "validation_error"
    assert field in body["errors"], body["errors"]
    return body["errors"][field]


# -- the parser's bounds -------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/auth/login", "/auth/register"])
def test_json_nested_20000_deep_is_a_400_before_login(limited_client, no_tracebacks, url):
    body = assert_bad_request(post_raw(limited_client, url, DEEP, environ_base=_addr()))
    assert "deeper than 32" in body["detail"]
    nested_in_a_field = '{"email": ' + DEEP + ', "password": "x"}'
    assert_bad_request(post_raw(limited_client, url, nested_in_a_field, environ_base=_addr()))


def test_bodies_without_an_email_share_no_per_email_budget(limited_client, no_tracebacks):
    # Three sign-ups an hour per email: a shared bucket for "no email" would make the fourth a 429.
    for _ in range(5):
        response = post_raw(limited_client, "/auth/register", '{"password": "correct horse battery"}',
                            environ_base=_addr())
        assert_invalid(response, "email")
        assert_bad_request(post_raw(limited_client, "/auth/register", DEEP, environ_base=_addr()))


def test_a_5000_digit_integer_is_a_400_before_login(limited_client, no_tracebacks):
    body = assert_bad_request(post_raw(limited_client, "/auth/login", f'{{"email": {HUGE}, "password": "x"}}',
                                       environ_base=_addr()))
    assert "longer than 100 characters" in body["detail"]


def test_deep_json_and_huge_numbers_are_400s_on_authenticated_routes(user, no_tracebacks, queue):
    assert_bad_request(user.post("/usage/generate", data=DEEP, content_type="application/json"))
    assert_bad_request(user.post("/usage/generate", data=f'{{"prompt": "door", "duration_seconds": {HUGE}}}',
                                 content_type="application/json"))
    assert_bad_request(user.client.put("/user/profile", data=f'{{"first_name": {DEEP}}}',
                                       content_type="application/json", headers=user.headers))
    assert queue.sent == []


def test_a_long_but_bounded_number_reaches_the_schema(user, no_tracebacks):
    errors = assert_invalid(user.generate(duration_seconds=10 ** 50), "duration_seconds")
    assert errors  # "must be between 0.5 and 30": the schema's word, not the parser's


@pytest.mark.parametrize("text, accepted", [
    ("[" * 32 + "]" * 32, True),
    ("[" * 33 + "]" * 33, False),
    ('{"a": "' + "[" * 500 + '"}', True),  # brackets inside a string do not nest
    ('{"a": "\\"' + "{" * 500 + '"}', True),  # nor after an escaped quote
    ('{"a": "\\\\", "b": ' + "[" * 40 + "]" * 40 + "}", False),  # an escaped backslash ends the escape
    ("9" * 100, True),
    ("9" * 101, False),
    ("-" + "9" * 99, True),
    ("1." + "5" * 101, False),
    ("NaN", False),
    ('{"a": -Infinity}', False),
    ('{"a": ', False),
])
def test_the_parser_bounds_depth_and_numbers(text, accepted):
    if accepted:
        request_input.loads(text)
    else:
        with pytest.raises(InvalidJson) as caught:
            request_input.loads(text)
        assert isinstance(caught.value, ValueError)  # what get_json(silent=True) callers expect


def test_the_parser_refuses_bytes_that_are_not_utf8_and_bodies_over_its_size():
    with pytest.raises(InvalidJson):
        request_input.loads(b'{"a": "\xed\xa0\x80"}')  # a surrogate written out raw
    with pytest.raises(InvalidJson):
        request_input.loads(b"[" + b"1," * 20 + b"1]", max_bytes=10)


# -- strings no column can store -----------------------------------------------------------------

@pytest.mark.parametrize("bad", ["a\\u0000b", "a\\ud800", "\\udfff@example.com"])
def test_nul_and_lone_surrogates_in_the_login_email_are_422(limited_client, no_tracebacks, bad):
    response = post_raw(limited_client, "/auth/login", f'{{"email": "{bad}", "password": "whatever"}}',
                        environ_base=_addr())
    assert_invalid(response, "email")


@pytest.mark.parametrize("field", ["first_name", "last_name", "password"])
def test_nul_in_registration_fields_is_422_naming_the_field(limited_client, no_tracebacks, field):
    body = {"email": f"nul-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse battery",
            field: "correct horse\\u0000battery"}
    text = "{" + ", ".join(f'"{k}": "{v}"' for k, v in body.items()) + "}"
    messages = assert_invalid(post_raw(limited_client, "/auth/register", text, environ_base=_addr()), field)
    assert messages == ["Must not contain NUL characters."]


@pytest.mark.parametrize("bad, message", [("door\\u0000slam", "NUL"), ("door\\ud800slam", "surrogate")])
def test_nul_and_lone_surrogates_in_a_prompt_are_422_and_charge_nothing(user, queue, no_tracebacks, bad, message):
    messages = assert_invalid(post_raw(user.client, "/usage/generate", f'{{"prompt": "{bad}"}}',
                                       headers=user.headers), "prompt")
    assert message in messages[0]
    assert queue.sent == [] and db.session.query(Job).count() == 0


def test_unstorable_strings_anywhere_in_a_body_or_query_are_named(user, admin_user, no_tracebacks):
    nested = post_raw(user.client, "/usage/generate", '{"prompt": "door", "extra": {"deep": ["ok", "\\u0000"]}}',
                      headers=user.headers)
    assert_invalid(nested, "extra.deep.1")
    key = post_raw(user.client, "/usage/generate", '{"prompt": "door", "\\u0000": 1}', headers=user.headers)
    assert_invalid(key, "\\x00")
    profile = user.client.put("/user/profile", data=b'{"last_name": "\\ud800"}', content_type="application/json",
                              headers=user.headers)
    assert_invalid(profile, "last_name")
    for query in ("q=%00", "q=a%00b&status=active"):
        assert_invalid(admin_user.get(f"/admin/users?{query}"), "q")
    assert_invalid(admin_user.get("/admin/audit?action=%00"), "action")


def test_an_idempotency_key_with_a_control_character_is_422(user, no_tracebacks, queue):
    response = user.generate(headers={"Idempotency-Key": "key\x00one"})
    assert_invalid(response, "Idempotency-Key")
    assert queue.sent == []


# -- prompts worth an upstream call -------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["\u00a0", "\u200b", "\u3000", "\u00a0\u200b\u3000", "\ufeff\u2060",
                                    "\u2028\u2029", " \u200b\u200c\u200d ", "\u180e\u3000"])
def test_a_prompt_of_invisible_characters_only_is_refused(user, queue, prompt):
    assert assert_invalid(user.generate(prompt), "prompt") == ["Must contain at least one visible character."]
    assert queue.sent == []


@pytest.mark.parametrize("prompt", ["door\x07slam", "door\nslam", "\x1b[31mred door", "door\x7f", "door\x85slam",
                                    "door\tslam"])
def test_a_prompt_with_control_characters_is_refused(user, queue, prompt):
    assert assert_invalid(user.generate(prompt), "prompt") == ["Must not contain control characters."]
    assert queue.sent == []


@pytest.mark.parametrize("prompt", ["door slam", "door\u200bslam", "ドアがバタンと閉まる", "\U0001f50a", "e\u0301",
                                    "\u00a0door\u3000", "١٢٣", "...", "¡"])
def test_prompts_with_something_visible_are_accepted(user, prompt):
    response = user.generate(prompt)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["prompt"] == prompt


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_names_with_control_characters_are_refused(user, field):
    response = user.client.put("/user/profile", json={field: "Ann\r\nBcc: all@example.com"}, headers=user.headers)
    assert assert_invalid(response, field) == ["Must not contain control characters."]
