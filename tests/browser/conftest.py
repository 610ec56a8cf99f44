"""A real browser: Debian's headless Chromium driven by Selenium through Debian's chromedriver.

Both come from apt (`scripts/test-tools.sh`, run by `make test`), never from a download at run
time. Without them the tests skip saying so; under CI (CI=true) they fail instead, since a
skipped browser test would hide a page that does not render.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def output_folder(*parts: str) -> Path:
    """A folder under the test output folder ($DESPLIEGUE_TEST_OUTPUT, default test-output/)."""
    folder = Path(os.environ.get("DESPLIEGUE_TEST_OUTPUT", ROOT / "test-output")).joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        reason = (
            f"no browser: {', '.join(missing)} missing; install Debian's chromium and "
            "chromium-driver with scripts/test-tools.sh (root, apt)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser tests: {reason}")
        pytest.skip(reason)
    # Selenium Manager would look for a driver online; the paths are given, so stay offline.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
