"""The device approval page (`verification_uri`) in a real browser: Debian's chromium, headless.

A person opens the link the plugin shows, signs in on the page and approves; the plugin's next poll
gets its tokens. The browser's console must stay free of errors (a Content-Security-Policy refusal
would show there), and the page must keep no token anywhere the browser stores things.
"""
from __future__ import annotations

import shutil
import uuid

import pytest
import requests

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "make test installs chromium and chromium-driver (scripts/ensure-services.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As this machine's closed network needs: no background connections to anywhere.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _sign_in_and(browser, url: str, email: str, password: str, button: str) -> tuple[str, str]:
    """Fill in the page and press `button`; the page's outcome (`data-state`) and what it says."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, f"button[value='{button}']").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 15).until(lambda _: status.get_attribute("data-state") in {"approved", "denied", "error"})
    return status.get_attribute("data-state"), status.text


def test_a_person_approves_a_plugins_code_on_the_page_and_the_plugin_signs_in(browser, live_url, client,
                                                                               tmp_path):
    email, password = f"page-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery"
    assert client.post("/auth/register", json={"email": email, "password": password}).status_code == 201
    code = requests.post(f"{live_url}/auth/device/code", json={"client_name": "SFX Plugin (Live 12)"},
                         timeout=5).json()
    pending = requests.post(f"{live_url}/auth/device/token", json={"device_code": code["device_code"]}, timeout=5)
    assert pending.status_code == 400 and pending.json()["code"] == "authorization_pending"

    # The link the plugin shows, on this server: the code is filled in already.
    state, text = _sign_in_and(browser, f"{live_url}/device?code={code['user_code']}", email, password, "approve")
    browser.save_screenshot(str(tmp_path / "device-approved.png"))
    assert state == "approved", text

    signed_in = requests.post(f"{live_url}/auth/device/token", json={"device_code": code["device_code"]},
                              timeout=5)
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    assert tokens["user"]["email"] == email
    me = requests.get(f"{live_url}/auth/sessions", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                      timeout=5).json()
    assert [s["client_name"] for s in me["items"] if s["current"]] == ["SFX Plugin (Live 12)"]

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    stored = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie.length]")
    assert stored == [0, 0, 0]


def test_a_wrong_password_on_the_page_says_so_and_approves_nothing(browser, live_url, client):
    email = f"page-{uuid.uuid4().hex[:8]}@example.com"
    assert client.post("/auth/register", json={"email": email, "password": "correct horse battery"}).status_code == 201
    code = requests.post(f"{live_url}/auth/device/code", json={}, timeout=5).json()

    state, text = _sign_in_and(browser, f"{live_url}/device?code={code['user_code']}", email, "wrong password!",
                               "approve")
    assert state == "error" and text, text
    still = requests.post(f"{live_url}/auth/device/token", json={"device_code": code["device_code"]}, timeout=5)
    assert still.json()["code"] == "authorization_pending"
