"""Device sign-in in a real browser (Debian's chromium, headless): the plugin shows a code and a link
(`verification_uri_complete`, the console's device view); the person signs in to the console there,
approves, and the plugin's next poll gets its tokens. Denying tells the plugin `access_denied`.
"""
from __future__ import annotations

import pytest
import requests

from tests.e2e.conftest import screenshot
from tests.e2e.test_console import assert_clean, by_id, css, register, sign_in, wait

pytestmark = pytest.mark.slow


def test_device_code_approval_in_the_console_signs_the_polling_plugin_in(browser, console_url):
    account = register(console_url)
    code = requests.post(f"{console_url}/auth/device/code", json={"client_name": "SFX Plugin (Bitwig)"},
                         timeout=5).json()
    assert code["verification_uri"] == f"{console_url}/console/device"
    sign_in(browser, console_url, account["email"], path=f"/console/device?code={code['user_code']}")
    wait(browser, lambda d: d.current_url.startswith(console_url + "/console/device?"))
    assert by_id(browser, "user_code").get_attribute("value") == code["user_code"]
    assert "SFX Plugin (Bitwig)" in by_id(browser, "waiting-client").text
    screenshot(browser, "device")
    css(browser, "#device-form button[value=approve]")[0].click()
    wait(browser, lambda d: by_id(d, "status").get_attribute("data-state") in {"approved", "error"})
    assert by_id(browser, "status").get_attribute("data-state") == "approved", by_id(browser, "status").text
    signed_in = requests.post(f"{console_url}/auth/device/token", json={"device_code": code["device_code"]}, timeout=5)
    assert signed_in.status_code == 200 and signed_in.json()["user"]["email"] == account["email"]
    assert_clean(browser, console_url)


def test_denying_in_the_console_tells_the_plugin_access_denied(browser, console_url):
    account = register(console_url)
    code = requests.post(f"{console_url}/auth/device/code", json={}, timeout=5).json()
    sign_in(browser, console_url, account["email"], path=f"/console/device?code={code['user_code']}")
    wait(browser, lambda d: d.current_url.startswith(console_url + "/console/device?"))
    css(browser, "#device-form button[value=deny]")[0].click()
    wait(browser, lambda d: by_id(d, "status").get_attribute("data-state") == "denied")
    poll = requests.post(f"{console_url}/auth/device/token", json={"device_code": code["device_code"]}, timeout=5)
    assert poll.status_code == 400 and poll.json()["code"] == "access_denied"
