"""contrastkit report in a real browser: headless Chromium opens the pages of a tiny demo run, a
comparison and a tiny demo study from disk (file://); no SEVERE console entry (a missing file, a
blocked URL, a script error), every <img> decoded (complete and naturalWidth > 0), a 1280×900
screenshot. Skipped where Chromium, chromedriver or selenium are missing (make chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from contrastkit.report import build_report
from tests.report.browser import browser_missing, check_page
from tests.report.page import Page

MISSING = browser_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser check skipped: {MISSING}")


def assert_clean(page: Path, least_images: int, shot: Path | None = None) -> dict:
    result = check_page(page, shot)
    assert result["severe"] == [], result["severe"]
    broken = [src for src, ok, _ in result["images"] if not ok]
    assert broken == []
    assert len(result["images"]) == len(Page(page).images) >= least_images
    return result


def test_run_and_compare_pages_load_cleanly(tiny_run, tiny_plain, tmp_path):
    index = build_report(tiny_run, tmp_path / "run")
    shot = tmp_path / "run.png"
    result = assert_clean(index, 7, shot)  # curves, similarity, 2 plots, 3 failure thumbnails
    assert result["title"] == "Run tiny-demo"
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 900)
    assert_clean(build_report(tiny_run, tmp_path / "compare", compare=tiny_plain), 9)


def test_study_page_and_run_pages_load_cleanly(tiny_study, tmp_path):
    index = build_report(tiny_study, tmp_path / "study")
    assert_clean(index, 3)  # forest, curves, curves by setting
    pages = sorted(index.parent.glob("run-*.html"))
    assert len(pages) == 4
    assert_clean(pages[0], 1)  # its training curves (a study run has no similarity matrix)
