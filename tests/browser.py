"""Headless Chromium for the tests that look at a page (the web page, OHIF), driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); nothing here reaches
beyond this machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def chromium_missing() -> str | None:
    """Why a browser cannot be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for binary in ("chromium", "chromedriver"):
        if shutil.which(binary) is None:
            return f"{binary} not found (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def chromium(
    profile: Path, width: int = 1366, height: int = 900, webgl: bool = False, console: bool = False
) -> Iterator:
    """A headless Chromium (Selenium ``WebDriver``) with its profile in ``profile``.

    Args:
        webgl: WebGL on SwiftShader, ANGLE's CPU renderer (OHIF's cornerstone3D draws with
            WebGL; without a GPU, ``--disable-gpu`` leaves it none).
        console: keep the browser console at every level (``driver.get_log("browser")``).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    graphics = (
        ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        if webgl
        else ["--disable-gpu"]
    )
    for flag in (
        "--headless", "--no-sandbox", *graphics, "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(flag)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
