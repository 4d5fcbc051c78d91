"""Headless Debian chromium driven by Playwright (never `playwright install`: we use the system browser)."""
from __future__ import annotations

import os
import tempfile

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def open_browser(pw, width: int = 1280, height: int = 900):
    """A persistent context in a fresh user-data dir (no profile state leaks between runs)."""
    return pw.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-demo-"), executable_path=CHROMIUM,
                                                 args=ARGS, headless=True, viewport={"width": width, "height": height})


def upload(page, elem_id: str, path: str) -> None:
    """Put a file into a gradio Audio input (its upload source is the default one)."""
    page.locator(f"#{elem_id} input[type=file]").set_input_files(path)
    page.locator(f"#{elem_id} audio, #{elem_id} .waveform-container, #{elem_id} [data-testid='waveform-controls']") \
        .first.wait_for(state="attached", timeout=30_000)
