"""Open a report page in headless Chromium (selenium): console errors, images, a screenshot.

Used by tests/report/test_report_browser.py and to take docs/report-screenshot.png:

    .venv/bin/python -m tests.report.browser PAGE.html SHOT.png [--full-page]

Chromium and its driver come from Debian (``make chromium``); selenium from requirements.txt.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["browser_missing", "check_page"]

_IMAGES = """
return Array.from(document.images).map(
  (im) => [im.getAttribute('src'), im.complete && im.naturalWidth > 0, im.naturalWidth]);
"""


def _binaries() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return browser, shutil.which("chromedriver")


def browser_missing() -> str | None:
    """Why the browser check cannot run here (``None``: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    browser, driver = _binaries()
    if browser is None:
        return "no chromium on PATH (make chromium: apt-get install chromium chromium-driver)"
    if driver is None:
        return "no chromedriver on PATH (make chromium: apt-get install chromium-driver)"
    return None


def check_page(
    page: Path, screenshot: Path | None = None, size: tuple[int, int] = (1280, 900), full_page: bool = False
) -> dict[str, Any]:
    """Load ``page`` via ``file://``; returns ``{"severe": [...], "images": [(src, loaded, width)],
    "title": str, "log": [...]}`` and saves a ``size`` viewport screenshot if asked."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={size[0]},{size[1]}",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.binary_location = browser or ""
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(page).resolve().as_uri())
        # the load event fired (get returns then): every <img> has finished or failed
        images = [tuple(x) for x in driver.execute_script(_IMAGES)]
        log = driver.get_log("browser")
        if screenshot is not None:
            # the viewport itself at ``size`` (the window's size would include the browser's frame);
            # full_page: as tall as the document
            height = (
                driver.execute_script("return document.documentElement.scrollHeight")
                if full_page
                else size[1]
            )
            metrics = {"width": size[0], "height": int(height), "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.execute_script("window.scrollTo(0, 0)")
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return {
            "title": driver.title,
            "images": images,
            "log": log,
            "severe": [e for e in log if e.get("level") == "SEVERE"],
        }
    finally:
        driver.quit()


if __name__ == "__main__":
    full = "--full-page" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--full-page"]
    result = check_page(Path(args[0]), Path(args[1]) if len(args) > 1 else None, full_page=full)
    broken = [src for src, ok, _ in result["images"] if not ok]
    print(
        f"{result['title']}: {len(result['images'])} images, {len(broken)} broken {broken}, "
        f"{len(result['severe'])} SEVERE console entries {result['severe']}"
    )
    sys.exit(1 if broken or result["severe"] else 0)
