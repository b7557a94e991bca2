"""The console in a real browser (Debian's chromium, headless): sign-in, usage chart, generate and listen,
history, sessions, device approval, the admin key pool, and its safety (CSRF, no admin view for
producers, no console errors, nothing fetched from another origin).

`CONSOLE_SCREENSHOTS=1` saves a picture of each main view into docs/console/ (see docs/console.md).
"""
from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

from sfx_backend.extensions import db
from sfx_backend.models import User, UserRole
from tests.e2e.conftest import chrome, requested_urls, screenshot, severe_console_entries
from tests.support.pipeline import free_port

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
WAIT = 20


def register(base: str, email: str | None = None) -> dict:
    email = email or f"console-{uuid.uuid4().hex[:8]}@example.com"
    response = requests.post(f"{base}/auth/register", json={"email": email, "password": PASSWORD,
                                                            "client_name": "SFX Plugin (Live 12)"}, timeout=10)
    assert response.status_code == 201, response.text
    return {"email": email, **response.json()}


def settled(base: str, account: dict, used: int) -> None:
    """Wait until the account's generations so far have finished (the jobs run in a thread)."""
    import time
    deadline = time.monotonic() + WAIT
    while requests.get(f"{base}/usage/current", headers=bearer(account), timeout=5).json()["used"] < used:
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.2)


def bearer(account: dict) -> dict:
    return {"Authorization": f"Bearer {account['access_token']}"}


def make_admin(account: dict) -> None:
    db.session.query(User).filter_by(email=account["email"]).update({"role": UserRole.ADMIN})
    db.session.commit()


def wait(driver, condition, timeout: float = WAIT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except TimeoutException:  # say what the page said
        raise AssertionError(f"timed out at {driver.current_url}: console {driver.get_log('browser')}; "
                             f"text: {driver.find_element('tag name', 'body').text[:600]!r}") from None


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, element_id)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver, base: str, email: str, password: str = PASSWORD, path: str = "/console/") -> None:
    driver.get(base + path)
    wait(driver, lambda d: "/console/login" in d.current_url)
    by_id(driver, "email").send_keys(email)
    by_id(driver, "password").send_keys(password)
    css(driver, "#login-form button[type=submit]")[0].click()


def assert_clean(driver, base: str) -> None:
    """No error in the browser's console, and every request went to the app's own origin."""
    severe = severe_console_entries(driver)
    assert severe == [], [entry["message"] for entry in severe]
    # chromium's own pages (chrome://, the start page) are not the network; anything else must be the app.
    network = [url for url in requested_urls(driver) if url.split(":", 1)[0] in ("http", "https", "ws", "wss")]
    assert any(url.startswith(base + "/console/static/") for url in network)
    foreign = [url for url in network if not url.startswith(base + "/")]
    assert foreign == [], foreign


def test_a_wrong_password_shows_the_problems_detail_and_signs_nothing_in(browser, console_url):
    account = register(console_url)
    sign_in(browser, console_url, account["email"], "not the password")
    error = by_id(browser, "form-error")
    wait(browser, lambda d: error.text != "")
    expected = requests.post(f"{console_url}/auth/login", json={"email": account["email"], "password": "x" * 12},
                             timeout=5).json()["detail"]
    assert error.text == expected
    assert "/console/login" in browser.current_url
    assert browser.get_cookie("access_token_cookie") is None
    screenshot(browser, "sign-in-error")

    # The keyboard alone: the page cleared the password and focused it; Enter submits.
    from selenium.webdriver.common.keys import Keys
    assert browser.switch_to.active_element == by_id(browser, "password")
    browser.switch_to.active_element.send_keys(PASSWORD + Keys.ENTER)
    wait(browser, lambda d: d.current_url == console_url + "/console/")

    # A refused generation shows the API's problem detail and the field's message.
    browser.get(console_url + "/console/generate")
    by_id(browser, "prompt").send_keys("   ")
    by_id(browser, "generate-button").click()
    wait(browser, lambda d: by_id(d, "form-error").text != "")
    refused = requests.post(f"{console_url}/usage/generate", json={"prompt": "   "}, headers=bearer(account),
                            timeout=5).json()
    assert refused["code"] == "validation_error"
    assert by_id(browser, "form-error").text.startswith(refused["detail"])
    assert "prompt" in by_id(browser, "form-error").text


def test_a_producer_sees_usage_generates_listens_and_browses_history(browser, console_url):
    account = register(console_url)
    for prompt in ("rain on a tin roof", "distant thunder"):
        assert requests.post(f"{console_url}/usage/generate", json={"prompt": prompt}, headers=bearer(account),
                             timeout=5).status_code == 202
    settled(console_url, account, 2)
    sign_in(browser, console_url, account["email"])

    # This period: the figures and the chart, drawn from the two generations.
    wait(browser, lambda d: by_id(d, "usage-chart").get_attribute("data-rendered") == "2")
    wait(browser, lambda d: by_id(d, "u-used").text == "2")
    assert by_id(browser, "u-limit").text == "10" and by_id(browser, "u-remaining").text == "8"
    assert browser.execute_script("return Chart.getChart('usage-chart').data.datasets.length") == 4
    assert "renews" in by_id(browser, "plan-line").text
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert cookies["access_token_cookie"]["httpOnly"] and browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie.indexOf('access_token_cookie')]") == \
        [0, 0, -1]
    screenshot(browser, "home")

    # Generate: live status, then the sound plays, all without a reload.
    browser.get(console_url + "/console/generate")
    by_id(browser, "prompt").send_keys("heavy wooden door slam, reverb tail")
    by_id(browser, "duration_seconds").send_keys("2")
    browser.execute_script("window.stillHere = true")
    by_id(browser, "generate-button").click()
    seen = set()

    def finished(d):
        seen.add(d.execute_script("return document.getElementById('job-status').getAttribute('data-status')"))
        return "succeeded" in seen
    wait(browser, finished)
    assert seen & {"queued", "running"}, seen  # the status was shown live before the end
    wait(browser, lambda d: d.execute_script("var a = document.querySelector('#job-result audio');"
                                             "return a && a.readyState >= 1 && a.duration > 0"))
    assert browser.execute_script("return window.stillHere") is True
    assert browser.execute_script("return document.querySelector('#job-result audio').play()"
                                  ".then(function () { return 'playing'; })") == "playing"
    screenshot(browser, "generate")

    # History: newest first, searchable, each sound playable (its audio answers 200).
    browser.get(console_url + "/console/history")
    wait(browser, lambda d: len(css(d, "#history-list > li")) == 3)
    prompts = [el.text for el in css(browser, "#history-list .prompt")]
    assert prompts[0] == "heavy wooden door slam, reverb tail" and set(prompts[1:]) == {"rain on a tin roof",
                                                                                        "distant thunder"}
    first_audio = browser.execute_script("var a = document.querySelector('#history-list audio'); a.play();"
                                         "return a.getAttribute('src')")
    wait(browser, lambda d: d.execute_script("return document.querySelector('#history-list audio').readyState") >= 2)
    answer = browser.execute_async_script(
        "var done = arguments[arguments.length - 1]; fetch(arguments[0], {cache: 'no-store'}).then(function (r) {"
        " done([r.status, r.headers.get('content-type'), r.redirected]); });", first_audio)
    assert answer[0] == 200 and answer[1].startswith("audio/") and answer[2] is True
    screenshot(browser, "history")
    by_id(browser, "q").send_keys("THUNDER")
    by_id(browser, "q").submit()
    wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#history-list .prompt')).map(function (e) {"
        " return e.textContent; })") == ["distant thunder"])

    browser.get(console_url + "/console/billing")
    wait(browser, lambda d: len(css(d, "#plans button[data-plan]")) == 3 and "trial" in by_id(d, "sub-line").text)
    screenshot(browser, "billing")
    assert_clean(browser, console_url)


def test_ending_a_session_in_the_console_logs_that_plugin_out(browser, console_url):
    account = register(console_url)  # the plugin's session (SFX Plugin (Live 12)), bearer tokens
    assert requests.get(f"{console_url}/auth/verify", headers=bearer(account), timeout=5).status_code == 200
    sign_in(browser, console_url, account["email"], path="/console/sessions")
    wait(browser, lambda d: len(css(d, "#sessions-table tbody tr")) == 2)
    screenshot(browser, "sessions")
    plugin = [row for row in css(browser, "#sessions-table tbody tr") if "SFX Plugin (Live 12)" in row.text][0]
    plugin.find_element("css selector", "button").click()
    wait(browser, lambda d: len(css(d, "#sessions-table tbody tr")) == 1)
    assert requests.get(f"{console_url}/auth/verify", headers=bearer(account), timeout=5).status_code == 401
    # Ending its own session signs the browser out.
    css(browser, "#sessions-table tbody button")[0].click()
    wait(browser, lambda d: "/console/login" in d.current_url)
    browser.get(console_url + "/console/")
    wait(browser, lambda d: "/console/login" in d.current_url)


def test_an_admin_sees_the_key_pool_and_disables_a_key(browser, console_url):
    admin = register(console_url)
    make_admin(admin)
    for name in ("primary", "backup"):
        added = requests.post(f"{console_url}/admin/api-keys", json={"name": name, "key": f"sk_test_{name}_0123456789"},
                              headers=bearer(admin), timeout=5)
        assert added.status_code == 201, added.text
    for prompt in ("glass shatter", "laser zap", "crowd cheer"):
        requests.post(f"{console_url}/usage/generate", json={"prompt": prompt}, headers=bearer(admin), timeout=5)
    settled(console_url, admin, 3)
    sign_in(browser, console_url, admin["email"], path="/console/admin/keys")
    wait(browser, lambda d: len(css(d, "#keys-table tbody tr[data-key]")) == 2)
    rows = {row.get_attribute("data-key"): row for row in css(browser, "#keys-table tbody tr[data-key]")}
    assert rows["primary"].get_attribute("data-status") == "active" and "0 / 2" in rows["primary"].text
    assert "sk_test_primary_0123456789" not in browser.page_source
    screenshot(browser, "admin-keys")
    rows["backup"].find_element("css selector", "button[data-action=disable]").click()
    wait(browser, lambda d: d.execute_script(
        "var r = document.querySelector(\"#keys-table tr[data-key='backup']\");"
        "return r && r.getAttribute('data-status')") == "disabled")
    listed = {k["name"]: k["status"] for k in requests.get(f"{console_url}/admin/api-keys", headers=bearer(admin),
                                                            timeout=5).json()["items"]}
    assert listed == {"primary": "active", "backup": "disabled"}

    for view, ready in (("jobs", "jobs-chart"), ("usage", "gen-chart")):
        browser.get(f"{console_url}/console/admin/{view}")
        wait(browser, lambda d, ready=ready: by_id(d, ready).get_attribute("data-rendered") == "1")
        screenshot(browser, f"admin-{view}")
    producer = register(console_url)
    browser.get(console_url + "/console/admin/users")
    wait(browser, lambda d: len(css(d, "#users-table tbody tr")) == 2 and len(css(d, "#audit-table tbody tr")) >= 1)
    # Suspend the producer: the row says so, the API refuses their generations, the audit trail has it.
    from selenium.webdriver.support.ui import Select
    row = css(browser, f"#users-table tr[data-user='{producer['email']}']")[0]
    Select(row.find_element("css selector", "select")).select_by_value("suspended")
    row.find_element("css selector", "button").click()
    wait(browser, lambda d: d.execute_script(
        "var r = document.querySelector(arguments[0]); return r && r.querySelector('.user-status').textContent",
        f"#users-table tr[data-user='{producer['email']}']") == "suspended")
    wait(browser, lambda d: "user.status_changed" in by_id(d, "audit-table").text)
    refused = requests.post(f"{console_url}/usage/generate", json={"prompt": "x"}, headers=bearer(producer), timeout=5)
    assert refused.status_code == 403 and refused.json()["code"] == "account_suspended"
    screenshot(browser, "admin-users")
    assert_clean(browser, console_url)


def test_a_producer_gets_no_admin_view(browser, console_url):
    account = register(console_url)
    sign_in(browser, console_url, account["email"], path="/console/admin/keys")
    wait(browser, lambda d: len(css(d, "#forbidden")) == 1)
    assert "for administrators" in by_id(browser, "forbidden").text
    assert css(browser, "nav[aria-label=Admin]") == [] and css(browser, "#keys-table") == []


class _EvilPage(BaseHTTPRequestHandler):
    """Another origin's page that makes the visitor's browser POST a form to the console's API."""
    target = ""

    def do_GET(self):  # noqa: N802 - http.server's naming
        html = (f'<!doctype html><form id="f" method="POST" action="{self.target}/console/auth/logout">'
                '<input name="csrf_access_token" value="guess"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(html)))
        self.end_headers()
        self.wfile.write(html)

    def log_message(self, *args):
        pass


def test_a_forged_cross_origin_post_and_a_post_without_the_csrf_header_fail(browser, console_url):
    account = register(console_url)
    sign_in(browser, console_url, account["email"])
    wait(browser, lambda d: by_id(d, "u-used").text == "0")

    # Same cookies, no X-CSRF-TOKEN header: refused, nothing created.
    status = browser.execute_async_script(
        "var done = arguments[arguments.length - 1]; fetch('/usage/generate', {method: 'POST', credentials: "
        "'same-origin', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({prompt: 'x'})})"
        ".then(function (r) { done(r.status); });")
    assert status in (401, 403)

    # A page on another origin (another port) posting a form: the cookie rides along, the header cannot.
    _EvilPage.target = console_url
    evil = HTTPServer(("127.0.0.1", free_port()), _EvilPage)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_port}/")
        wait(browser, lambda d: d.current_url.startswith(console_url + "/console/auth/logout"))
        assert '"code": "unauthorized"' in browser.page_source or '"code":"unauthorized"' in browser.page_source
    finally:
        evil.shutdown()
    browser.get(console_url + "/console/")
    wait(browser, lambda d: by_id(d, "u-used").text == "0")  # still signed in: the forged sign-out did nothing
    assert requests.get(f"{console_url}/usage/current", headers=bearer(account), timeout=5).json()["reserved"] == 0


def test_the_home_view_reads_at_phone_width(console_url, tmp_path):
    account = register(console_url)
    requests.post(f"{console_url}/usage/generate", json={"prompt": "footsteps on gravel"}, headers=bearer(account),
                  timeout=5)
    settled(console_url, account, 1)
    phone = chrome(tmp_path / "phone", width=390, height=844)
    try:
        sign_in(phone, console_url, account["email"])
        wait(phone, lambda d: by_id(d, "usage-chart").get_attribute("data-rendered") == "1")
        # Nothing wider than the screen: no sideways scrolling.
        assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(phone, "home-phone")
        assert_clean(phone, console_url)
    finally:
        phone.quit()


@pytest.mark.console_env(REQUIRE_EMAIL_VERIFICATION="true")
def test_sign_up_with_verification_on_asks_for_the_address_first(browser, console_url):
    browser.get(console_url + "/console/")
    wait(browser, lambda d: "/console/login" in d.current_url)
    css(browser, "a[href^='/console/signup']")[0].click()
    wait(browser, lambda d: "/console/signup" in d.current_url)
    assert "confirm the address" in by_id(browser, "signup-form").text
    email = f"signup-{uuid.uuid4().hex[:8]}@example.com"
    by_id(browser, "email").send_keys(email)
    by_id(browser, "password").send_keys(PASSWORD)
    by_id(browser, "first_name").send_keys("Ada")
    css(browser, "#signup-form button[type=submit]")[0].click()
    wait(browser, lambda d: d.current_url == console_url + "/console/")
    assert by_id(browser, "who-email").text == email
    wait(browser, lambda d: by_id(d, "verify-banner").is_displayed())
    by_id(browser, "resend-verification").click()
    wait(browser, lambda d: "confirmation link" in by_id(d, "flash").text)
    # Until then a generation is refused with the API's own words.
    browser.get(console_url + "/console/generate")
    by_id(browser, "prompt").send_keys("footsteps")
    by_id(browser, "generate-button").click()
    wait(browser, lambda d: by_id(d, "form-error").text != "")
    token = requests.post(f"{console_url}/auth/login", json={"email": email, "password": PASSWORD},
                          timeout=5).json()["access_token"]
    refused = requests.post(f"{console_url}/usage/generate", json={"prompt": "footsteps"},
                            headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert refused["code"] == "email_not_verified"
    assert by_id(browser, "form-error").text == refused["detail"]


@pytest.mark.console_env(JWT_EXPIRES_IN="2")
def test_an_expired_access_cookie_is_renewed_from_the_refresh_cookie_without_signing_in_again(browser, console_url):
    import time

    account = register(console_url)
    sign_in(browser, console_url, account["email"], path="/console/sessions")
    wait(browser, lambda d: len(css(d, "#sessions-table tbody tr")) == 2)
    first = browser.get_cookie("access_token_cookie")["value"]
    time.sleep(3)
    # An API call from the open page: 401, the page refreshes the cookies, and the call goes through.
    answer = browser.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "document.querySelector('#sessions-table tbody tr:last-child button').click();"
        "setTimeout(function () { done(document.getElementById('flash').textContent); }, 1500);")
    assert answer.startswith("Session ended"), answer
    assert browser.get_cookie("access_token_cookie")["value"] != first
    assert requests.get(f"{console_url}/auth/verify", headers=bearer(account), timeout=5).status_code == 401
    # Opening a page with an expired cookie: through the sign-in page and straight back, no form filled.
    time.sleep(3)
    browser.get(console_url + "/console/history")
    wait(browser, lambda d: d.current_url == console_url + "/console/history" and len(css(d, "#history-summary")) == 1)


@pytest.mark.console_stripe
def test_billing_buttons_open_stripe_checkout_and_the_portal(browser, console_url, fake_stripe):
    account = register(console_url)
    sign_in(browser, console_url, account["email"], path="/console/billing")
    wait(browser, lambda d: len(css(d, "#plans button[data-plan]")) == 3)
    css(browser, "#plans button[data-plan=pro]")[0].click()
    wait(browser, lambda d: d.current_url.startswith(fake_stripe.url + "/pay/"))
    session_id = browser.current_url.rsplit("/", 1)[1]
    session = fake_stripe.sessions[session_id]
    assert session["success_url"] == console_url + "/console/billing?checkout=done"
    assert session["cancel_url"] == console_url + "/console/billing"
    fake_stripe.complete_checkout(session_id)
    browser.get(console_url + "/console/billing?checkout=done")
    wait(browser, lambda d: by_id(d, "sub-line").text not in ("", "…"))
    by_id(browser, "portal-button").click()
    wait(browser, lambda d: d.current_url.startswith(fake_stripe.url + "/portal/"))
