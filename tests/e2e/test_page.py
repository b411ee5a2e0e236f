"""The upload page in a real headless Chromium (Debian's package) driven by Playwright."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.photos import encode, photo
from tests.support.stack import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background connections, no first-run UI.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.mark.parametrize("javascript", [True, False])
def test_upload_a_photo_and_see_the_top_five(browser: Browser, stack: Stack, tmp_path: Path,
                                             javascript: bool) -> None:
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(encode(photo("chelsea")))
    page.goto(stack.url + "/")
    page.set_input_files("#file", str(cat))
    page.click("#submit")
    page.wait_for_selector("#predictions li")
    labels = page.locator("#predictions li .label").all_inner_texts()
    assert len(labels) == 5
    assert any(word in labels[0].lower() for word in ("cat", "tabby", "tiger", "lynx")), labels
    assert page.locator("#preview").get_attribute("src")
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0  # the preview really shows
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    context.close()


def test_a_non_image_shows_a_readable_error(browser: Browser, stack: Stack, tmp_path: Path) -> None:
    page = browser.new_page()
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a photo")
    page.goto(stack.url + "/")
    page.set_input_files("#file", str(fake))
    page.click("#submit")
    error = page.wait_for_selector("#error")
    assert error is not None
    text = error.inner_text().lower()
    assert "image" in text and "{" not in text  # words, not raw JSON
    page.close()
