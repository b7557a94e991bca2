"""Browser fixtures: Debian's chromium, headless, driven by selenium; and the app served on a port of its
own whose API_BASE_URL is that very address (so download links stay on the page's origin)."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import make_environ, serve_app
from tests.support.billing import STRIPE_ENV, fake_stripe, localstripe_url, stripe_server  # noqa: F401 - fixtures
from tests.support.inline_jobs import InlineJobs
from tests.support.pipeline import free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


def chrome(profile: Path, width: int = 1280, height: int = 900):
    """A headless chromium as this machine's closed network needs: no background connections anywhere."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "make test installs chromium and chromium-driver (scripts/ensure-services.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--autoplay-policy=no-user-gesture-required",
                 "--mute-audio", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = chrome(tmp_path / "profile")
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network for since the last call (chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def severe_console_entries(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, name: str) -> None:
    """docs/console/<name>.png, when CONSOLE_SCREENSHOTS=1 (how the docs' pictures are made)."""
    if os.environ.get("CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


@pytest.fixture
def console_app(request, _migrated, database_url, tmp_path, encryption_key):
    """`@pytest.mark.console_env(NAME="value")` adds settings to the app's environment;
    `@pytest.mark.console_stripe` points its billing at the fake Stripe."""
    port = free_port()
    marker = request.node.get_closest_marker("console_env")
    env = make_environ(database_url, tmp_path / "instance", encryption_key, API_BASE_URL=f"http://127.0.0.1:{port}",
                       **(marker.kwargs if marker else {}))
    if request.node.get_closest_marker("console_stripe"):  # billing against the fake Stripe
        env.update(STRIPE_ENV, STRIPE_API_BASE=request.getfixturevalue("fake_stripe").url)
    for application in serve_app(env):
        application.extensions["sfx"].tasks = InlineJobs(application)
        application.config["CONSOLE_TEST_PORT"] = port
        yield application
        application.extensions["sfx"].tasks.join()


@pytest.fixture
def console_url(console_app):
    """The console's app over HTTP at its API_BASE_URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", console_app.config["CONSOLE_TEST_PORT"], console_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield console_app.config["API_BASE_URL"]
    server.shutdown()
    thread.join(5)
