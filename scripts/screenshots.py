"""Take the README screenshots of every demo tab with headless chromium.

    .venv/bin/python scripts/screenshots.py                      # bundled default model, if trained
    .venv/bin/python scripts/screenshots.py --model tiny         # tiny random pipeline (plumbing only)
    .venv/bin/python scripts/screenshots.py --model DIR --codec-dir checkpoints/codec --out docs/screenshots

Inputs are real speech synthesised with espeak-ng (installed by scripts/setup.sh); each tab is run once
and captured after its outputs appear.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCE = "Speech tokens carry what is said, and acoustic tokens carry how it sounds."


def speech_clip(out: Path) -> str:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), SENTENCE], check=True)
    return str(out)


def pipeline_factory(model: str):
    if model == "tiny":
        from tests._tiny_pipeline import tiny_pipeline

        return tiny_pipeline
    from slm.pipeline import SpeechPipeline

    return lambda: SpeechPipeline.from_pretrained(model)


def shoot(url: str, out: Path, clip: str, codec_label: str | None) -> None:
    from playwright.sync_api import sync_playwright

    from tests._browser import open_browser

    def settle(page, name: str) -> None:
        time.sleep(1.5)  # plots and waveforms render after the values arrive
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        print(f"wrote {out / f'{name}.png'}")

    with sync_playwright() as pw:
        browser = open_browser(pw, 1280, 860)
        page = browser.new_page()
        try:
            _tabs(page, url, clip, codec_label, settle)
        except Exception:
            page.screenshot(path=str(out / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()


def _tabs(page, url: str, clip: str, codec_label: str | None, settle) -> None:
    from tests._browser import upload

    page.goto(url, wait_until="load")
    page.get_by_role("button", name="Speak").click()
    page.locator("#tts-full a[download]").wait_for(timeout=300_000)
    settle(page, "tts")

    page.get_by_role("tab", name="Speech recognition").click()
    upload(page, "asr-input", clip)
    page.get_by_role("button", name="Transcribe").click()
    page.wait_for_function("() => (document.querySelector('#asr-transcript textarea')?.value ?? '').length > 0",
                           timeout=300_000)
    settle(page, "asr")

    page.get_by_role("tab", name="Continuation").click()
    upload(page, "cont-prompt", clip)
    page.get_by_role("button", name="Continue").click()
    page.locator("#cont-audio a[download]").wait_for(timeout=300_000)
    settle(page, "continuation")

    page.get_by_role("tab", name="Codec lab").click()
    upload(page, "codec-input", clip)
    if codec_label:
        page.locator("#codec-dd input").click()
        page.get_by_role("option", name=codec_label).first.click()
    page.get_by_role("button", name="Reconstruct").click()
    page.wait_for_function("() => (document.querySelector('#codec-metrics')?.innerText ?? '').includes('bitrate')",
                           timeout=300_000)
    settle(page, "codec_lab")

    page.get_by_role("tab", name="Dialogue").click()
    upload(page, "dialogue-input", clip)
    page.get_by_role("button", name="Send").click()
    page.locator("#dialogue-reply a[download], #dialogue-reply audio").first.wait_for(state="attached",
                                                                                     timeout=300_000)
    settle(page, "dialogue")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="pipeline dir, 'default', or 'tiny' (random, tests' model)")
    ap.add_argument("--codec-dir", action="append", default=None, help="codec checkpoint folder(s)")
    ap.add_argument("--codec", default=None, help="codec lab checkpoint to pick (label prefix, e.g. codec/rvq)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()

    import torch

    from demos.app import build_app
    from tests._tiny_pipeline import serve

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = build_app(pipeline_factory(args.model), codec_dirs=args.codec_dir or [str(ROOT / "checkpoints" / "codec")])
    url = serve(app)
    try:
        shoot(url, out, speech_clip(Path(tempfile.mkdtemp()) / "speech.wav"), args.codec)
    except Exception:
        print(f"failed; the page as it was is in {out / 'failed.png'}", file=sys.stderr)
        raise
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
