"""TTS, ASR, continuation and dialogue tabs: thin handlers over the ``SpeechPipeline`` facade."""
from __future__ import annotations

import os
import tempfile
import time

import gradio as gr
import torch

from codec.segment import PauseConfig
from demos.app import MODELS, DemoContext, user_errors
from demos.limits import InputError, check_text, load_audio_input, to_gradio_audio
from demos.plots import continuation_plot, tokens_over_spectrogram
from slm import READER_ASR_METHODS

DEFAULT_VOICE = "(model default)"
MIC_AND_UPLOAD = ["upload", "microphone"]  # upload first: works on any host (the mic needs https)


def _sampling_controls(ctx: DemoContext, seconds_label: str, seconds_default: float):
    """Temperature / top-k / top-p / seed / length controls shared by TTS and continuation; they start at the
    model's own decoding defaults (``ctx.sampling``)."""
    sp = ctx.sampling
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, 1.5, value=sp.temperature, step=0.05, label="Temperature",
                                    info="0 = greedy; starts at the model's own setting")
            top_k = gr.Slider(0, 200, value=sp.top_k, step=1, label="Top-k", info="0 = off")
            top_p = gr.Slider(0.05, 1.0, value=sp.top_p, step=0.01, label="Top-p")
        with gr.Row():
            seed = gr.Number(-1, precision=0, label="Seed", info="-1 = random; same seed + settings = same audio")
            seconds = gr.Slider(0.5, ctx.limits.max_generate_seconds, step=0.5,
                                value=min(seconds_default, ctx.limits.max_generate_seconds),
                                label=seconds_label)
    return [temperature, top_k, top_p, seed, seconds]


def _sampling_kwargs(temperature: float, top_k: float, top_p: float, seed) -> dict:
    seed = None if seed is None or int(seed) < 0 else int(seed)
    return {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p), "seed": seed}


def _rtf_line(seconds_audio: float, seconds_compute: float, first_chunk: float | None = None) -> str:
    parts = [(f"{seconds_audio:.2f} s of audio in {seconds_compute:.2f} s "
             f"({seconds_audio / max(seconds_compute, 1e-9):.2f}x real time)")]
    if first_chunk is not None:
        parts.append(f"first audio after {first_chunk:.2f} s")
    return " - ".join(parts)


def _timing_line(times: list, most: int = 60) -> str:
    """Where each word is spoken (aligned TTS; whole sentences in the plain form), the first ``most`` of them."""
    if not times:
        return ""
    cells = [f"{w.text} {w.start:.2f}-{w.end:.2f}" for w in times[:most]]
    more = f" ... (+{len(times) - most})" if len(times) > most else ""
    return "\n\nWhen each is spoken (s): " + " · ".join(cells) + more


# ---- text to speech ------------------------------------------------------------------------------
# the TTS / ASR form (SpeechPipeline.tts / asr(aligned=...)): the model's own default, or one of the two asked for
TTS_FORMS = {"model default": None, "aligned": True, "plain": False}
# ASR also by the model's CTC reader of the semantic tokens alone (slm.ctc_reader; models that have one)
ASR_FORMS = {**TTS_FORMS, "CTC reader": "ctc", "CTC reader + LM": "fused"}
DEFAULT_FORM = "model default"


def tts_tab(ctx: DemoContext) -> gr.Dropdown:
    """Returns the voice dropdown: the app fills it from ``pipeline.voices()`` on page load."""
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text", lines=4, max_length=ctx.limits.max_text_chars,
                              placeholder="Type what the model should say.",
                              value="The quick brown fox jumps over the lazy dog.")
            voice = gr.Dropdown([DEFAULT_VOICE], value=DEFAULT_VOICE, label="Voice", allow_custom_value=True,
                                info="a bundled voice, or record / upload a reference clip below")
            reference = gr.Audio(sources=MIC_AND_UPLOAD, type="filepath",
                                 label="Reference voice (optional, a few seconds; overrides the voice above)")
            controls = _sampling_controls(ctx, "Max seconds", 8.0)
            form = gr.Radio(list(TTS_FORMS), value=DEFAULT_FORM, label="How to speak",
                            info="aligned: each word fed right before its frames; plain: from the whole sentence")
            best_of = gr.Slider(1, max(1, ctx.limits.max_best_of), value=min(ctx.sampling.best_of, ctx.limits.max_best_of),
                                step=1, label="Candidates per sentence (best of)",
                                info="above 1: that many takes of each sentence, decoded side by side; the model's "
                                     "CTC reader picks the one that says the text best (clearer, slower to start)")
            best_of_words = gr.Slider(0, ctx.limits.max_best_of_words,
                                      value=min(ctx.sampling.best_of_words, ctx.limits.max_best_of_words), step=1,
                                      label="Choose every N words (0: once per sentence)",
                                      info="with candidates above 1: the reader chooses every N words and the chosen "
                                           "words play at once (speech starts after N words, not a whole sentence)")
            with gr.Row():
                go = gr.Button("Speak", variant="primary")
                stop = gr.Button("Stop")
        with gr.Column():
            live = gr.Audio(label="Live (streamed while it is generated)", streaming=True, autoplay=True,
                            interactive=False, elem_id="tts-live")
            full = gr.Audio(label="Full take", interactive=False, buttons=["download"], elem_id="tts-full")
            info = gr.Markdown(label="Timing", elem_id="tts-info")

    @user_errors
    def on_tts(text_value, voice_name, ref_path, temperature, top_k, top_p, seed, max_seconds, form_value=DEFAULT_FORM,
               best_of=None, best_of_words=None):
        text_value = check_text(text_value, ctx.limits)
        p = ctx.pipeline.get()
        voice_arg = _voice_arg(ctx, p, voice_name, ref_path)
        kwargs = _sampling_kwargs(temperature, top_k, top_p, seed)
        if form_value not in TTS_FORMS:
            raise InputError(f"unknown TTS form {form_value!r}: expected one of {list(TTS_FORMS)}")
        kwargs["aligned"] = TTS_FORMS[form_value]
        if best_of is not None:
            n = int(best_of)
            if not 1 <= n <= ctx.limits.max_best_of:
                raise InputError(f"candidates per sentence: 1..{ctx.limits.max_best_of}, got {n}")
            kwargs["best_of"] = n
        if best_of_words is not None:
            w = int(best_of_words)
            if not 0 <= w <= ctx.limits.max_best_of_words:
                raise InputError(f"choose every N words: 0..{ctx.limits.max_best_of_words}, got {w}")
            aligned = p.tts_aligned if kwargs["aligned"] is None else kwargs["aligned"]
            if kwargs.get("best_of", ctx.sampling.best_of) > 1 and aligned:  # else the slider has nothing to choose
                kwargs["best_of_words"] = w
        chunks, t0, first, times = [], time.perf_counter(), None, []
        for chunk in p.tts_stream(text_value, voice_arg, max_seconds=float(max_seconds), timings=times, **kwargs):
            if chunk.numel() == 0:
                continue
            first = first if first is not None else time.perf_counter() - t0
            chunks.append(chunk.reshape(1, -1))
            yield to_gradio_audio(chunk, p.sample_rate), gr.skip(), "generating..."
        if not chunks:
            raise InputError("the model produced no audio for this text; try a longer sentence or another seed")
        wav = torch.cat(chunks, dim=-1)
        yield gr.skip(), to_gradio_audio(wav, p.sample_rate), _rtf_line(
            wav.shape[-1] / p.sample_rate, time.perf_counter() - t0, first) + _timing_line(times)

    event = go.click(on_tts, [text, voice, reference, *controls, form, best_of, best_of_words], [live, full, info], api_name="tts",
              concurrency_id=MODELS)
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    return voice


def _voice_arg(ctx: DemoContext, p, voice_name: str | None, ref_path):
    """A reference clip (``[1, N]`` at the pipeline's rate) wins over a bundled voice name."""
    if ref_path:
        return load_audio_input(ref_path, ctx.limits, p.sample_rate, name="reference voice")
    if not voice_name or voice_name == DEFAULT_VOICE:
        return None
    return voice_name


def voice_choices(ctx: DemoContext):
    names = list(ctx.pipeline.get().voices())
    return gr.update(choices=[DEFAULT_VOICE, *names], value=DEFAULT_VOICE)


# ---- speech recognition --------------------------------------------------------------------------
def asr_tab(ctx: DemoContext) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            audio = gr.Audio(sources=MIC_AND_UPLOAD, type="filepath", label="Speech", elem_id="asr-input")
            form = gr.Radio(list(ASR_FORMS), value=DEFAULT_FORM, label="How to transcribe",
                            info="aligned: each word written right after its frames, shown as it comes; "
                                 "plain: the transcript after the whole clip; CTC reader: a small reader of the "
                                 "tokens (lower case, no punctuation); CTC reader + LM: the reader kept to real "
                                 "words and scored by the backbone's LM")
            go = gr.Button("Transcribe", variant="primary")
            transcript = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="asr-transcript",
                                    buttons=["copy"])
            info = gr.Markdown(label="Timing")
        with gr.Column(scale=2):
            plot = gr.Plot(label="Semantic tokens under the spectrogram", show_label=False)

    @user_errors
    def on_asr(path, form_value=DEFAULT_FORM):
        if form_value not in ASR_FORMS:
            raise InputError(f"unknown ASR form {form_value!r}: expected one of {list(ASR_FORMS)}")
        p = ctx.pipeline.get()
        wav = load_audio_input(path, ctx.limits, p.sample_rate, name="speech")
        choice = ASR_FORMS[form_value]
        if choice is None and p.asr_method != "lm":  # the model's default is its CTC reader (or joint decoding)
            choice = p.asr_method
        if choice in READER_ASR_METHODS and p.reader is None:
            raise InputError("this model has no CTC reader: choose aligned or plain")
        aligned = p.asr_aligned if choice is None else choice
        label = {"ctc": "CTC reader", "joint": "joint LM + CTC reader", "fused": "CTC reader + LM", True: "aligned form",
                 False: "plain form"}[aligned]
        t0 = time.perf_counter()
        text = ""
        pauses = PauseConfig(max_seconds=ctx.limits.asr_segment_seconds)
        if wav.shape[-1] > pauses.max_seconds * p.sample_rate:  # a long clip: piece by piece, split at pauses
            kw = {"method": "lm", "aligned": aligned} if isinstance(aligned, bool) else {"method": aligned}
            pieces = []
            for seg in p.asr_segments(wav, p.sample_rate, pauses, **kw):
                pieces.append(seg.text)
                text = " ".join(pieces)
                yield text, gr.skip(), f"transcribing... ({seg.end:.1f} s done)"
            label += f", split at pauses into {len(pieces)} pieces of at most {pauses.max_seconds:g} s"
        elif aligned is True:  # words as they are written
            for text in p.asr_stream(wav, p.sample_rate):
                yield text, gr.skip(), "transcribing..."
        elif aligned is False:
            text = p.asr(wav, p.sample_rate, aligned=False, method="lm")
        else:
            text = p.asr(wav, p.sample_rate, method=aligned)
        spent = time.perf_counter() - t0
        tokens = p.encode(wav, p.sample_rate)
        fig = tokens_over_spectrogram(wav, p.sample_rate, tokens.semantic[0], p.codec.semantic_rate)
        n = tokens.semantic.shape[-1]
        yield (text.strip() or "(no words recognised)", fig,
               (f"{wav.shape[-1] / p.sample_rate:.2f} s -> {n} semantic tokens; transcribed in {spent:.2f} s "
                f"({label})"))

    go.click(on_asr, [audio, form], [transcript, plot, info], api_name="asr",
              concurrency_id=MODELS)


# ---- continuation --------------------------------------------------------------------------------
def continuation_tab(ctx: DemoContext) -> None:
    gr.Markdown("The model hears the prompt and keeps talking: it samples semantic tokens after the prompt's "
                "tokens, the acoustic head fills in the acoustic tokens, the codec decodes both.")
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Audio(sources=MIC_AND_UPLOAD, type="filepath", label="Prompt (a few seconds of speech)",
                              elem_id="cont-prompt")
            controls = _sampling_controls(ctx, "Seconds to add", 3.0)
            go = gr.Button("Continue", variant="primary")
        with gr.Column(scale=2):
            with gr.Row():
                cont = gr.Audio(label="Continuation", interactive=False, buttons=["download"], elem_id="cont-audio")
                both = gr.Audio(label="Prompt + continuation", interactive=False, buttons=["download"])
            plot = gr.Plot(label="Prompt and continuation", show_label=False)
            info = gr.Markdown(label="Timing")

    @user_errors
    def on_continue(path, temperature, top_k, top_p, seed, seconds):
        p = ctx.pipeline.get()
        wav = load_audio_input(path, ctx.limits, p.sample_rate, name="prompt")
        t0 = time.perf_counter()
        out = p.continue_(wav, p.sample_rate, seconds=float(seconds),
                          **_sampling_kwargs(temperature, top_k, top_p, seed)).reshape(1, -1)
        spent = time.perf_counter() - t0
        if out.numel() == 0:
            raise InputError("the model produced no continuation; try another seed or a longer prompt")
        sr = p.sample_rate
        return (to_gradio_audio(out, sr), to_gradio_audio(torch.cat([wav, out], dim=-1), sr),
                continuation_plot(wav, out, sr), _rtf_line(out.shape[-1] / sr, spent))

    go.click(on_continue, [prompt, *controls], [cont, both, plot, info], api_name="continue",
              concurrency_id=MODELS)


# ---- dialogue ------------------------------------------------------------------------------------
def _latency_table(latencies: dict[str, float]) -> str:
    stages = {k: v for k, v in latencies.items() if k != "total"}
    total = latencies.get("total", sum(stages.values()))
    rows = "".join(f"| {k} | {v:.2f} s |\n" for k, v in stages.items())
    return "| stage | latency |\n|---|---|\n" + rows + f"| **total** | **{total:.2f} s** |"


def _wav_file(wav: torch.Tensor, sample_rate: int) -> str:
    """Replies go into the chat history as wav files (gradio copies them into its cache)."""
    import soundfile as sf

    d = os.path.join(tempfile.gettempdir(), "dualstream-demo")
    os.makedirs(d, exist_ok=True)
    fd, path = tempfile.mkstemp(suffix=".wav", prefix="reply-", dir=d)
    os.close(fd)
    sf.write(path, wav.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy(), sample_rate)
    return path


def dialogue_tab(ctx: DemoContext) -> None:
    gr.Markdown("Talk to the model: your turn is transcribed (ASR), the backbone answers in its own chat mode, "
                "and the answer is spoken (TTS). Each turn lists the time every stage took.")
    history = gr.State([])
    with gr.Row():
        with gr.Column(scale=2):
            chat = gr.Chatbot(label="Conversation", height=420, elem_id="dialogue-chat")
        with gr.Column(scale=1):
            mic = gr.Audio(sources=MIC_AND_UPLOAD, type="filepath", label="Your turn", elem_id="dialogue-input")
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                clear = gr.Button("New conversation")
            reply = gr.Audio(label="Reply", autoplay=True, interactive=False, elem_id="dialogue-reply")
            latency = gr.Markdown(label="Latency per stage", elem_classes="latency")

    @user_errors
    def on_turn(path, hist: list, messages: list):
        p = ctx.pipeline.get()
        wav = load_audio_input(path, ctx.limits, p.sample_rate, name="your turn")
        turn = p.dialogue(wav, p.sample_rate, list(hist))
        hist = [*hist, {"role": "user", "content": turn.user_text},
                {"role": "assistant", "content": turn.reply_text}][-2 * ctx.limits.max_dialogue_turns:]
        stages = " · ".join(f"{k} {v:.2f} s" for k, v in turn.latencies.items() if k != "total")
        messages = [*(messages or []),
                    {"role": "user", "content": turn.user_text or "(nothing recognised)"},
                    {"role": "assistant", "content": f"{turn.reply_text}\n\n<sub>{stages}</sub>"},
                    {"role": "assistant", "content": {"path": _wav_file(turn.reply_audio, p.sample_rate),
                                                      "mime_type": "audio/wav"}}]
        return hist, messages, to_gradio_audio(turn.reply_audio, p.sample_rate), \
            _latency_table(turn.latencies), None

    send.click(on_turn, [mic, history, chat], [history, chat, reply, latency, mic], api_name="dialogue",
              concurrency_id=MODELS)
    clear.click(lambda: ([], [], None, ""), None, [history, chat, reply, latency], api_name="dialogue_reset")
