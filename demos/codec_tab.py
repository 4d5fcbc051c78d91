"""The codec lab tab: upload -> reconstruction with a chosen checkpoint, A/B players, plots, PESQ/STOI."""
from __future__ import annotations

import time

import gradio as gr

from demos.app import MODELS, DemoContext, user_errors
from demos.codec_lab import acoustic_options, fidelity, metrics_markdown, reconstruct
from demos.limits import InputError, load_audio_input, to_gradio_audio
from demos.plots import ab_spectrograms, token_streams


def codec_lab_tab(ctx: DemoContext) -> tuple:
    """Returns ``(fn, inputs, outputs)`` for the app to run on page load (sets the bitrate slider)."""
    choices = ctx.codecs.choices()
    gr.Markdown("Reconstruct a clip through a codec checkpoint and compare original (A) with "
                "reconstruction (B): what the semantic and acoustic streams keep, at what bitrate.")
    with gr.Row():
        with gr.Column(scale=1):
            audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech clip", elem_id="codec-input")
            codec_dd = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Codec checkpoint",
                                   elem_id="codec-dd",
                                   info="codec checkpoints found under the codec folders (--codec-dir)")
            n_acoustic = gr.Slider(0, 8, value=8, step=1, label="Acoustic codebooks kept (bitrate)",
                                   info="fixed unless the codec decodes a truncated residual stream")
            run = gr.Button("Reconstruct", variant="primary")
            metrics = gr.Markdown(label="Metrics", elem_id="codec-metrics")
        with gr.Column(scale=2):
            with gr.Row():
                audio_a = gr.Audio(label="A: original (codec sample rate)", interactive=False)
                audio_b = gr.Audio(label="B: reconstruction", interactive=False, buttons=["download"])
            spec_plot = gr.Plot(label="Spectrograms A / B", show_label=False)
            tok_plot = gr.Plot(label="Token streams", show_label=False)

    @user_errors
    def on_codec(label: str | None):
        if not label:
            return gr.update()
        options = acoustic_options(ctx.codecs.get(label))
        top = max(options)
        # A fixed acoustic stream shows its one value, greyed out (the slider needs min < max).
        return gr.update(minimum=min(options) if len(options) > 1 else 0, maximum=max(top, 1), value=top,
                         interactive=len(options) > 1)

    @user_errors
    def on_run(path, label: str | None, keep: float):
        if not label:
            raise InputError("no codec checkpoint found: train one (`slm codec train`) or pass --codec-dir")
        codec = ctx.codecs.get(label)
        wav = load_audio_input(path, ctx.limits, codec.sample_rate, name="speech clip")
        t0 = time.perf_counter()
        options = acoustic_options(codec)
        # the slider may still show the previous codec's range (API callers, or a click that beat the
        # dropdown's update): a count this codec cannot decode means "all codebooks"
        keep = int(keep) if int(keep) in options else max(options)
        rec = reconstruct(codec, wav, n_acoustic=keep, encode=lambda x: ctx.codecs.encode(label, codec, x))
        seconds = time.perf_counter() - t0
        scores = fidelity(wav, rec.audio, codec.sample_rate)
        label_b = f"{label} @ {rec.bitrate:,.0f} bps"
        return (to_gradio_audio(wav, codec.sample_rate), to_gradio_audio(rec.audio, codec.sample_rate),
                ab_spectrograms(wav, rec.audio, codec.sample_rate, label_b),
                token_streams(rec.tokens.semantic[0], rec.tokens.acoustic[0], codec.semantic_rate,
                              codec.acoustic_rate),
                metrics_markdown(rec, codec, scores, seconds))

    codec_dd.change(on_codec, codec_dd, n_acoustic, api_name="codec_options", show_progress="hidden")
    run.click(on_run, [audio_in, codec_dd, n_acoustic], [audio_a, audio_b, spec_plot, tok_plot, metrics],
              api_name="codec",
              concurrency_id=MODELS)
    return on_codec, codec_dd, n_acoustic
