"""Speech-LM task metrics (EVAL.md) over the ``SpeechPipeline`` facade: TTS, ASR-by-token, continuation.

Works with any object offering ``sample_rate``, ``tts_stream(text, voice)``, ``asr(wav, sr)`` and
``continue_(wav, sr, seconds)`` (+ ``lm``/``tokenizer`` for the continuation's perplexity).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from slm.eval.codec_eval import Judges
from slm.eval.data import EvalItem


def _resample(wav: Tensor, sr_from: int, sr_to: int) -> Tensor:
    if sr_from == sr_to:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, sr_from, sr_to)


def _np(wav: Tensor) -> np.ndarray:
    return wav.detach().reshape(-1).float().clamp(-1, 1).cpu().numpy()


def voice_prompts(items: list[EvalItem]) -> dict[str, EvalItem]:
    """Per speaker, the utterance used as the voice prompt: the first one in manifest order."""
    out: dict[str, EvalItem] = {}
    for it in items:
        out.setdefault(it.speaker, it)
    return out


def eval_tts(pipe, items: list[EvalItem], judges: Judges, **sampling) -> dict:
    """Each item's sentence spoken in its speaker's voice (prompt: another utterance of that speaker).

    Reports Whisper WER on the output, speaker similarity to the prompt, DNSMOS, real-time factor
    (generation seconds per output second) and time to first audio chunk."""
    from adapters.judges import error_rates

    prompts = voice_prompts(items)
    outs, per = [], []
    for it in tqdm(items, desc="tts"):
        prompt = prompts[it.speaker]
        voice = _resample(prompt.wav, prompt.sample_rate, pipe.sample_rate)
        t0 = time.perf_counter()
        chunks, first = [], None
        for c in pipe.tts_stream(it.text, voice, **sampling):
            if first is None and c.shape[-1]:
                first = time.perf_counter() - t0
            chunks.append(c)
        spent = time.perf_counter() - t0
        wav = torch.cat(chunks, -1) if chunks else torch.zeros(1, 0)
        dur = wav.shape[-1] / pipe.sample_rate
        outs.append(_np(_resample(wav, pipe.sample_rate, 16000)) if wav.shape[-1] else np.zeros(1600, np.float32))
        per.append({"id": it.id, "speaker": it.speaker, "ref": it.text, "seconds": dur,
                    "rtf": spent / dur if dur else float("nan"), "first_audio_s": first if first is not None else spent,
                    "prompt": prompt.id})
    hyps = judges.asr.transcribe(outs, 16000)
    for p, it, out, h in zip(per, items, outs, hyps):
        p["hyp"] = h
        p["spk_sim"] = judges.spk(prompts[it.speaker].wav[0].numpy(), out, 16000)
        m = judges.mos(out, 16000)
        p.update(dnsmos_ovrl=m.ovrl, dnsmos_sig=m.sig, dnsmos_bak=m.bak)
    by_voice: dict[str, list[dict]] = {}
    for p in per:
        by_voice.setdefault(p["speaker"], []).append(p)

    def summary(ps: list[dict]) -> dict:
        er = error_rates([p["ref"] for p in ps], [p["hyp"] for p in ps])
        return {"wer": er.wer, "cer": er.cer, "n": len(ps), **{k: float(np.nanmean([p[k] for p in ps]))
                for k in ("spk_sim", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "rtf", "first_audio_s")}}

    return {"task": "tts", **summary(per), "per_voice": {v: summary(ps) for v, ps in sorted(by_voice.items())},
            "items": per}


@torch.no_grad()
def eval_head(pipe, items: list[EvalItem], judges: Judges, seed: int = 0) -> dict:
    """Where TTS loses intelligibility, stage by stage, on the same items (Whisper WER / CER of each):

    * ``floor``: the corpus audio;
    * ``codec``: the item's own codec tokens decoded (what the codec keeps);
    * ``head``: the item's true semantic tokens, teacher-forced through the LM in the model's own TTS form,
      with the acoustic head sampling every frame's acoustic codes in the prompt speaker's voice (as
      :func:`eval_tts` prompts): what TTS would give if the LM picked every semantic token right.

    TTS itself (the LM choosing the semantic tokens) is :func:`eval_tts`; the gap from ``head`` to it is the
    LM's, from ``codec`` to ``head`` the acoustic head's."""
    from adapters.judges import error_rates
    from slm.templates import with_phones

    if pipe.head is None:
        raise ValueError("eval_head needs a model with an acoustic head (its codec has acoustic codebooks)")
    voices = {spk: pipe._voice(_resample(p.wav, p.sample_rate, pipe.sample_rate))  # each prompt encoded once
              for spk, p in voice_prompts(items).items()}
    gen = torch.Generator().manual_seed(seed)
    wavs: dict[str, list[np.ndarray]] = {"floor": [], "codec": [], "head": []}
    for it in tqdm(items, desc="head"):
        wav = _resample(it.wav, it.sample_rate, pipe.sample_rate)
        toks = pipe.encode(wav, pipe.sample_rate)
        words = with_phones(it.words, it.phones) if it.words else None
        voiced = pipe.voice_semantic(toks.semantic[0, 0], it.text, words, voices[it.speaker], gen,
                                     wav.shape[-1] / pipe.sample_rate)
        for key, t in (("codec", toks), ("head", voiced)):
            wavs[key].append(_np(_resample(pipe.codec.decode(t).reshape(1, -1), pipe.sample_rate, 16000)))
        wavs["floor"].append(_np(_resample(it.wav, it.sample_rate, 16000)))
    refs = [it.text for it in items]
    res: dict = {"task": "head", "n": len(items)}
    for key, ws in wavs.items():
        er = error_rates(refs, judges.asr.transcribe(ws, 16000))
        res[key] = {"wer": er.wer, "cer": er.cer}
    return res


def eval_asr(pipe, items: list[EvalItem], judges: Judges, aligned: bool | None = None, method: str | None = None) -> dict:
    """WER of the pipeline's ASR-by-token next to Whisper's WER on the same audio. ``method`` / ``aligned``:
    as SpeechPipeline.asr (None: the model's defaults); the row says which ran (``form``: joint, ctc, or the
    LM's aligned / plain form)."""
    from adapters.judges import error_rates

    hyps, spent = [], 0.0
    for it in tqdm(items, desc="asr"):
        t0 = time.perf_counter()
        wav = _resample(it.wav, it.sample_rate, pipe.sample_rate)
        kw = {k: v for k, v in (("aligned", aligned), ("method", method)) if v is not None}
        hyps.append(pipe.asr(wav, pipe.sample_rate, **kw))
        spent += time.perf_counter() - t0
    whisper = judges.asr.transcribe([it.wav[0].numpy() for it in items], items[0].sample_rate if items else 16000)
    refs = [it.text for it in items]
    ours, floor = error_rates(refs, hyps), error_rates(refs, whisper)
    audio_s = sum(it.wav.shape[-1] / it.sample_rate for it in items)
    method = method or getattr(pipe, "asr_method", "lm")
    form = method if method != "lm" else (
        "aligned" if (getattr(pipe, "asr_aligned", False) if aligned is None else aligned) else "plain")
    return {"task": "asr", "form": form, "wer": ours.wer, "cer": ours.cer, "whisper_wer": floor.wer, "whisper_cer": floor.cer,
            "n": len(items), "rtf": spent / audio_s if audio_s else float("nan"),
            "items": [{"id": it.id, "ref": r, "hyp": h, "whisper": w}
                      for it, r, h, w in zip(items, refs, hyps, whisper)]}


@torch.no_grad()
def backbone_perplexity(lm, tokenizer, text: str) -> float:
    """Perplexity of ``text`` under the backbone (LoRA adapter disabled when there is one)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[-1] < 2:
        return float("nan")
    ctx = lm.disable_adapter() if hasattr(lm, "disable_adapter") else torch.no_grad()
    with ctx:
        out = lm(input_ids=ids.to(next(lm.parameters()).device), labels=ids.to(next(lm.parameters()).device))
    return float(math.exp(float(out.loss)))


def eval_continue(pipe, items: list[EvalItem], judges: Judges, prompt_seconds: float = 3.0,
                  seconds: float = 3.0, **sampling) -> dict:
    """Continue each item's first ``prompt_seconds``: DNSMOS of the continuation, speaker similarity to
    the prompt, and the backbone perplexity of the continuation's Whisper transcript."""
    per, outs, prompts = [], [], []
    for it in tqdm(items, desc="continue"):
        n = int(prompt_seconds * it.sample_rate)
        prompt = it.wav[:, :n]
        out = pipe.continue_(_resample(prompt, it.sample_rate, pipe.sample_rate), pipe.sample_rate, seconds,
                             **sampling)
        o = _np(_resample(out, pipe.sample_rate, 16000)) if out.shape[-1] else np.zeros(1600, np.float32)
        outs.append(o)
        prompts.append(_np(_resample(prompt, it.sample_rate, 16000)))
        per.append({"id": it.id, "seconds": len(o) / 16000})
    texts = judges.asr.transcribe(outs, 16000)
    for p, pr, o, t in zip(per, prompts, outs, texts):
        m = judges.mos(o, 16000)
        p.update(transcript=t, dnsmos_ovrl=m.ovrl, spk_sim=judges.spk(pr, o, 16000),
                 ppl=backbone_perplexity(pipe.lm, pipe.tokenizer, t) if t.strip() else float("nan"))
    mean = {k: float(np.nanmean([p[k] for p in per])) if per else float("nan")
            for k in ("dnsmos_ovrl", "spk_sim", "ppl")}
    return {"task": "continue", **mean, "n": len(per), "items": per}
