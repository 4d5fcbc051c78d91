"""The dualstream-slm Gradio demo: TTS, ASR, continuation, codec lab and spoken dialogue.

The app only talks to the ``SpeechPipeline`` facade (``slm.pipeline``) and to codecs through
``codec.contracts.Codec``; it holds no model code. ``build_app`` takes a *factory*, so the models load
on first use (once, cached) and tests can inject a tiny pipeline::

    app = build_app(lambda: SpeechPipeline.from_pretrained("default", int8=None))
    launch(app, host="127.0.0.1", port=7860)

Every event has an ``api_name`` so ``gradio_client.Client`` can drive the demo (README, "The demo").
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from demos.codec_lab import CodecCache, find_codecs
from demos.limits import DemoLimits, InputError
from slm.generate import Sampling

log = logging.getLogger("dualstream.demo")

DEFAULT_CODEC_DIRS = ("checkpoints/codec",)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Every event that runs a model shares this concurrency group: the CPU is the bottleneck, so the
# limit (DemoLimits.concurrency) must bound all of them together, not each endpoint separately.
MODELS = "models"

HEADER = """
# dualstream-slm
Speech in, speech out through a dual-stream codec: **semantic** tokens (what is said) that a LoRA-tuned
LLM reads and writes, **acoustic** tokens (how it sounds) from a small acoustic head.
Everything runs on this machine's CPU.
"""
MIC_NOTE = ("The microphone needs `localhost` or `https`: browsers block it on plain-http remote pages. "
            "Start the demo with `--share` or `--ssl-certfile/--ssl-keyfile` to record from another machine.")
CSS = """
.latency table { font-size: 0.85em; }
"""


class LazyPipeline:
    """Calls ``factory`` once, on first use, from whichever request needs it first (thread-safe)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._pipeline: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def get(self) -> Any:
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    log.info("loading the speech pipeline (first request)")
                    self._pipeline = self._factory()
        return self._pipeline


@dataclass
class DemoContext:
    """What every tab needs: the lazily loaded pipeline, the codec cache and the limits."""

    pipeline: LazyPipeline
    codecs: CodecCache
    limits: DemoLimits = field(default_factory=DemoLimits)
    # the model's own decoding defaults (``slm.pipeline.model_sampling``): the sampling sliders start there
    sampling: Sampling = field(default_factory=Sampling)


def _as_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (InputError, ValueError, TypeError)):
        return gr.Error(str(e))
    log.error("request failed:\n%s", traceback.format_exc())
    return gr.Error(f"internal error ({type(e).__name__}): {e}")


def user_errors(fn: Callable) -> Callable:
    """Show input problems (and unexpected failures) as a ``gr.Error`` toast instead of a bare
    "Error" badge; works for plain and generator handlers (gradio inspects the wrapper's kind)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _as_gr_error(e) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _as_gr_error(e) from e
    return wrapper


def build_app(pipeline_factory: Callable[[], Any] | None, codec_dirs: list[str | Path] | tuple = DEFAULT_CODEC_DIRS,
              limits: DemoLimits | None = None, *, speech_tabs: bool = True,
              sampling: Sampling | None = None) -> gr.Blocks:
    """The whole demo as a ``gr.Blocks`` with its queue configured (not launched).

    pipeline_factory: returns a ``SpeechPipeline``; called once, on the first request that needs it.
        ``None`` builds the codec lab alone (no speech LM available).
    codec_dirs: folders searched for codec checkpoints for the codec lab.
    limits: per-request limits (duration, upload size, text length, queue).
    sampling: the model's decoding defaults (``slm.pipeline.model_sampling``, read without loading it), where
        the sampling sliders start; None: ``Sampling()``'s.
    """
    from demos.codec_tab import codec_lab_tab
    from demos.speech_tabs import asr_tab, continuation_tab, dialogue_tab, tts_tab, voice_choices

    limits = limits or DemoLimits()
    if pipeline_factory is None:
        speech_tabs = False
    lazy = LazyPipeline(pipeline_factory) if pipeline_factory is not None else None
    codecs = CodecCache(find_codecs(list(codec_dirs)),
                        pipeline_codec=(lambda: lazy.get().codec) if lazy is not None else None)
    ctx = DemoContext(pipeline=lazy, codecs=codecs, limits=limits, sampling=sampling or Sampling())  # type: ignore[arg-type]
    with gr.Blocks(title="dualstream-slm demo") as app:
        gr.Markdown(HEADER)
        with gr.Tabs():
            if speech_tabs:
                with gr.Tab("Text to speech", id="tts"):
                    voice_dd = tts_tab(ctx)
                with gr.Tab("Speech recognition", id="asr"):
                    asr_tab(ctx)
                with gr.Tab("Continuation", id="continue"):
                    continuation_tab(ctx)
            with gr.Tab("Codec lab", id="codec"):
                codec_init = codec_lab_tab(ctx)
            if speech_tabs:
                with gr.Tab("Dialogue", id="dialogue"):
                    dialogue_tab(ctx)
        gr.Markdown(f"<small>{MIC_NOTE} Limits: audio up to {limits.max_audio_seconds:g} s and "
                    f"{limits.max_upload_mb:g} MB, text up to {limits.max_text_chars} characters; "
                    f"{limits.concurrency} request(s) at a time, {limits.queue_size} waiting at most.</small>")
        # Filled on page load, i.e. on the first visit (that is when the models load, once).
        app.load(*codec_init, api_visibility="private")
        if speech_tabs:
            app.load(user_errors(lambda: voice_choices(ctx)), None, voice_dd, api_name="voices")
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return app


def launch(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           limits: DemoLimits | None = None, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
           block: bool = True, quiet: bool = False):
    """Serve ``app``; binds localhost unless ``host`` says otherwise. Returns gradio's (app, local, share)."""
    limits = limits or DemoLimits()
    if host not in LOCAL_HOSTS and not share and not ssl_certfile:
        log.warning("serving on %s over plain http: browsers will block the microphone there. %s", host, MIC_NOTE)
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                      max_file_size=f"{limits.max_upload_mb:g}mb", ssl_certfile=ssl_certfile,
                      ssl_keyfile=ssl_keyfile, ssl_verify=not ssl_certfile, quiet=quiet,
                      show_error=True, theme=gr.themes.Soft(), css=CSS, footer_links=["api"])
