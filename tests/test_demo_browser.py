"""End to end in a real browser: headless chromium loads the demo, runs TTS and ASR, and sees audio and a
transcript appear (tiny random models: the content is noise, the plumbing is what is tested)."""
import pytest

from tests._browser import CHROMIUM, have_chromium, open_browser, upload

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have_chromium(), reason=f"{CHROMIUM} not found: apt-get install chromium "
                                                             "(scripts/setup.sh installs it)")]


@pytest.fixture(scope="module")
def url():
    from demos.app import build_app
    from demos.limits import DemoLimits
    from tests._tiny_pipeline import serve, tiny_codec_root, tiny_pipeline

    app = build_app(tiny_pipeline, codec_dirs=[tiny_codec_root()], limits=DemoLimits(max_generate_seconds=3.0))
    yield serve(app)
    app.close()


def test_tts_and_asr_in_the_browser(url, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests._tiny_pipeline import speechlike_wav

    with sync_playwright() as pw:
        browser = open_browser(pw)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load")
            page.get_by_role("button", name="Speak").click()
            # the full take appears once streaming ends: a downloadable wav served by the app
            link = page.locator("#tts-full a[download]")
            link.wait_for(timeout=90_000)
            assert link.get_attribute("href").endswith(".wav")
            assert "real time" in page.locator("#tts-info").inner_text()

            page.get_by_role("tab", name="Speech recognition").click()
            upload(page, "asr-input", speechlike_wav(tmp_path / "clip.wav", 1.2))
            page.get_by_role("button", name="Transcribe").click()
            page.wait_for_function("() => (document.querySelector('#asr-transcript textarea')?.value ?? '').length > 0",
                                   timeout=90_000)
            assert page.locator("#asr-transcript textarea").input_value().strip()
            assert not errors, errors
        finally:
            browser.close()
