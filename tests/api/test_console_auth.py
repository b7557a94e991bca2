"""The console's browser sign-in: tokens in HttpOnly cookies, CSRF double submit on every change, and the
bearer API exactly as before (a request with the header never needs CSRF)."""
from __future__ import annotations

import uuid
from html.parser import HTMLParser

import jwt as pyjwt
import pytest

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, User, UserRole, utcnow

PASSWORD = "correct horse battery"


def _sign_in(client, email: str, password: str = PASSWORD):
    return client.post("/console/auth/login", json={"email": email, "password": password})


def _cookie(client, name: str, path: str = "/") -> str | None:
    found = client.get_cookie(name, path=path)
    return found.value if found else None


@pytest.fixture
def browser(client, user):
    """The test client as a browser signed in to the console as `user`."""
    response = _sign_in(client, user.email)
    assert response.status_code == 200, response.get_json()
    return client


def test_sign_in_sets_httponly_cookies_and_the_body_carries_no_token(client, user):
    response = _sign_in(client, user.email)
    assert response.status_code == 200
    assert set(response.get_json()) == {"user"} and response.get_json()["user"]["email"] == user.email
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    assert set(cookies) == {"access_token_cookie", "refresh_token_cookie", "csrf_access_token", "csrf_refresh_token"}
    for name in ("access_token_cookie", "refresh_token_cookie"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
    for name in ("csrf_access_token", "csrf_refresh_token"):
        assert "HttpOnly" not in cookies[name]  # the page's script reads these to repeat them
    assert "Path=/console/auth/refresh" in cookies["refresh_token_cookie"]
    assert "Secure" in cookies["access_token_cookie"]  # APP_ENV=test is not development
    assert response.headers["Cache-Control"] == "no-store"


def test_a_wrong_password_is_the_same_401_problem_as_the_api(client, user):
    response = _sign_in(client, user.email, "wrong password!!")
    api = client.post("/auth/login", json={"email": user.email, "password": "wrong password!!"})
    assert response.status_code == 401 and response.mimetype == "application/problem+json"
    assert response.get_json()["detail"] == api.get_json()["detail"]
    assert not response.headers.getlist("Set-Cookie")


def test_reads_ride_on_the_cookie_and_changes_need_the_csrf_header(browser, user):
    assert browser.get("/auth/verify").get_json()["user"]["email"] == user.email
    body = {"prompt": "door slam"}
    without = browser.post("/usage/generate", json=body)
    assert without.status_code == 401 and "X-CSRF-TOKEN" in without.get_json()["detail"]
    wrong = browser.post("/usage/generate", json=body, headers={"X-CSRF-TOKEN": "0" * 32})
    assert wrong.status_code == 401
    assert db.session.query(Job).count() == 0
    right = browser.post("/usage/generate", json=body, headers={"X-CSRF-TOKEN": _cookie(browser, "csrf_access_token")})
    assert right.status_code == 202, right.get_json()


def test_a_cross_site_form_post_with_the_cookie_is_refused(browser):
    # What a page on another origin can make a browser send: the cookies, a form body, no custom header.
    forged = browser.post("/auth/logout", data={"csrf_access_token": "guess"},
                          headers={"Origin": "http://evil.example"})
    assert forged.status_code == 401
    assert browser.get("/auth/verify").status_code == 200  # still signed in


def test_a_bearer_request_never_needs_csrf_even_with_cookies_present(browser, make_user):
    other = make_user()
    # The header wins: this is `other`, whatever the cookies say, and no CSRF header is asked for.
    me = browser.get("/auth/verify", headers=other.headers).get_json()["user"]["email"]
    assert me == other.email
    assert browser.post("/usage/generate", json={"prompt": "rain"}, headers=other.headers).status_code == 202
    assert other.post("/auth/logout").status_code == 200
    # A revoked bearer token stays refused; it does not fall back to the cookies.
    assert browser.get("/auth/verify", headers=other.headers).status_code == 401


def test_the_csrf_claim_is_stable_so_a_refresh_replay_within_grace_gets_the_same_pair(client, user):
    first = client.post("/auth/refresh", headers={"Authorization": f"Bearer {user.refresh_token}"}).get_json()
    again = client.post("/auth/refresh", headers={"Authorization": f"Bearer {user.refresh_token}"}).get_json()
    assert first == again
    claims = pyjwt.decode(first["access_token"], options={"verify_signature": False})
    assert len(claims["csrf"]) == 32 and claims["csrf"] != claims["jti"]


def test_refresh_from_the_cookie_rotates_and_logout_ends_the_browser_session(browser, user):
    old_access = _cookie(browser, "access_token_cookie")
    assert browser.post("/console/auth/refresh").status_code == 401  # no CSRF header
    rotated = browser.post("/console/auth/refresh",
                           headers={"X-CSRF-TOKEN": _cookie(browser, "csrf_refresh_token", "/console")})
    assert rotated.status_code == 200, rotated.get_json()
    assert _cookie(browser, "access_token_cookie") != old_access
    sessions = user.get("/auth/sessions").get_json()["items"]
    console = [s for s in sessions if s["client_name"] == "Console (browser)"]
    assert len(console) == 1
    out = browser.post("/console/auth/logout", headers={"X-CSRF-TOKEN": _cookie(browser, "csrf_access_token")})
    assert out.status_code == 200
    assert _cookie(browser, "access_token_cookie") is None
    browser.set_cookie("access_token_cookie", _cookie_value_before := old_access)  # a copy kept elsewhere
    assert browser.get("/auth/verify").status_code == 401 and _cookie_value_before
    assert user.get("/auth/verify").status_code == 200  # the API session is another session


def test_sign_up_creates_the_account_and_signs_the_browser_in(client):
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post("/console/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201 and response.get_json()["user"]["status"] == "trial"
    assert client.get("/auth/verify").get_json()["user"]["email"] == email
    assert client.post("/console/auth/register", json={"email": email, "password": PASSWORD}).status_code == 409


def test_pages_need_a_sign_in_and_admin_pages_an_admin(client, user):
    signed_out = client.get("/console/history")
    assert signed_out.status_code == 302 and signed_out.headers["Location"].startswith("/console/login?next=")
    _sign_in(client, user.email)
    page = client.get("/console/history")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert b"/console/admin/" not in page.data  # no admin links for a producer
    for path in ("/console/admin/keys", "/console/admin/jobs", "/console/admin/usage", "/console/admin/users"):
        assert client.get(path).status_code == 403, path
    db.session.query(User).filter_by(id=uuid.UUID(user.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    assert client.get("/console/admin/keys").status_code == 200
    assert b"/console/admin/keys" in client.get("/console/").data


def test_sign_in_only_sends_back_to_console_paths(client):
    for target in ("https://evil.example/", "//evil.example/x", "/auth/logout"):
        html = client.get("/console/login", query_string={"next": target}).get_data(as_text=True)
        assert 'data-next="/console/"' in html, target


def test_history_search_finds_prompts_case_insensitively_and_literally(user):
    for prompt in ("Heavy DOOR slam", "rain on a tin roof", "door creak 100%", "window"):
        assert user.generate(prompt).status_code == 202
    found = user.get("/jobs", query_string={"q": "door"}).get_json()
    assert sorted(j["prompt"] for j in found["items"]) == ["Heavy DOOR slam", "door creak 100%"]
    assert found["total"] == 2
    assert [j["prompt"] for j in user.get("/jobs", query_string={"q": "100%"}).get_json()["items"]] == \
        ["door creak 100%"]
    assert user.get("/jobs", query_string={"q": "%"}).get_json()["total"] == 1  # % is a character, not a wildcard


def test_admin_jobs_overview_counts_by_hour_and_status(client, user):
    db.session.query(User).filter_by(id=uuid.UUID(user.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    assert user.get("/admin/jobs/overview").status_code == 200
    ids = [user.generate(f"sound {i}").get_json()["id"] for i in range(3)]
    job = db.session.get(Job, uuid.UUID(ids[0]))
    job.status, job.error_code, job.error_message, job.finished_at = (JobStatus.FAILED, "upstream_unavailable",
                                                                      "No key could take it.", utcnow())
    db.session.commit()
    data = user.get("/admin/jobs/overview").get_json()
    assert len(data["hours"]) == 24
    assert data["totals"]["queued"] == 2 and data["totals"]["failed"] == 1
    assert data["hours"][-1]["queued"] == 2 and data["queued_now"] == 2
    assert data["oldest_queued"]["id"] == ids[1]
    assert data["recent_failures"][0] == {"id": ids[0], "finished_at": data["recent_failures"][0]["finished_at"],
                                          "code": "upstream_unavailable", "message": "No key could take it."}


def test_admin_jobs_overview_is_for_admins(user):
    assert user.get("/admin/jobs/overview").status_code == 403


def test_the_generate_form_offers_exactly_the_options_the_generate_schema_takes(client, user, monkeypatch):
    from marshmallow import Schema, fields, validate

    from sfx_backend.api import schemas

    _sign_in(client, user.email)
    offered = client.get("/console/generate").get_data(as_text=True)
    for control in ('id="prompt"', 'value="mp3"', 'value="wav"', 'value="flac"', 'id="sample_rate"',
                    'value="48000"', 'id="bit_depth"', 'value="24"', 'id="loudness_lufs"', 'id="trim_silence"'):
        assert control in offered, control
    assert _unlabelled(offered) == []

    class WithoutAudioOptions(Schema):  # the generate body before the audio options existed
        prompt = fields.String(required=True)
        duration_seconds = fields.Float(load_default=None, allow_none=True)
        prompt_influence = fields.Float(load_default=0.3)
        loop = fields.Boolean(load_default=False)
        output_format = fields.String(load_default="mp3", validate=validate.OneOf(["mp3", "wav"]))
    monkeypatch.setattr(schemas, "GenerateSchema", WithoutAudioOptions)
    older = client.get("/console/generate").get_data(as_text=True)
    assert 'id="prompt"' in older and 'value="mp3"' in older and 'value="wav"' in older
    assert 'id="sample_rate"' not in older and 'id="trim_silence"' not in older and 'value="flac"' not in older


class _Fields(HTMLParser):
    """The form fields of a page, and whether each has a label (`<label for>` or a wrapping `<label>`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, bool]] = []
        self.label_for: set[str] = set()
        self.in_label = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "label":
            self.in_label += 1
            if attrs.get("for"):
                self.label_for.add(attrs["for"])
        elif tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            self.fields.append((attrs.get("id") or attrs.get("name") or tag, self.in_label > 0))

    def handle_endtag(self, tag):
        if tag == "label":
            self.in_label -= 1


def _unlabelled(html: str) -> list[str]:
    parser = _Fields()
    parser.feed(html)
    return [name for name, wrapped in parser.fields if not wrapped and name not in parser.label_for]


def test_every_field_of_every_page_has_a_label(client, user):
    pages = ["/console/login", "/console/signup"]
    for page in pages:
        assert _unlabelled(client.get(page).get_data(as_text=True)) == [], page
    db.session.query(User).filter_by(id=uuid.UUID(user.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    _sign_in(client, user.email)
    for page in ("/console/", "/console/generate", "/console/history", "/console/sessions", "/console/billing",
                 "/console/device", "/console/admin/keys", "/console/admin/jobs", "/console/admin/usage",
                 "/console/admin/users"):
        html = client.get(page).get_data(as_text=True)
        assert "<main" in html and _unlabelled(html) == [], page
