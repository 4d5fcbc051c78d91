"""Speech-LM task metrics through a stand-in pipeline (real espeak speech, real judges, tiny backbone)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from adapters.judges import error_rates
from slm.eval.codec_eval import Judges
from slm.eval.data import EvalItem
from slm.eval.lm_eval import backbone_perplexity, eval_asr, eval_continue, eval_tts
from tests.test_eval_judges import espeak_clip

TEXTS = ["Seven ships sailed across the cold northern sea.", "We will meet at the station tomorrow morning."]


class CharTokenizer:
    def __call__(self, text: str, return_tensors: str = "pt") -> dict:
        return {"input_ids": torch.tensor([[min(ord(c), 127) for c in text]])}


class StandInPipeline:
    """What ``SpeechPipeline`` offers the evaluation: speaks with espeak, 'recognises' by lookup."""

    sample_rate = 16000

    def __init__(self, tmp_path, texts: list[str]) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        self.tmp_path, self.texts, self.calls = tmp_path, texts, []
        self.lm = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        self.tokenizer = CharTokenizer()

    def tts_stream(self, text, voice, **sampling):
        assert isinstance(voice, torch.Tensor) and voice.dim() == 2  # the prompt audio [1, N]
        self.calls.append(("tts", text, sampling))
        wav = torch.from_numpy(espeak_clip(text, self.tmp_path))[None]
        yield wav[:, : wav.shape[-1] // 2]
        yield wav[:, wav.shape[-1] // 2 :]

    def asr(self, wav, sample_rate):
        return self.texts[0] if wav.shape[-1] > 0 else ""

    def continue_(self, wav, sample_rate, seconds=3.0, **sampling):
        return wav[:, : int(seconds * sample_rate)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    items = [EvalItem(id=f"u{i}", wav=torch.from_numpy(espeak_clip(t, tmp))[None], sample_rate=16000, text=t,
                      speaker="espeak:en-us", synth="espeak") for i, t in enumerate(TEXTS)]
    return StandInPipeline(tmp, TEXTS), items, Judges()


@pytest.mark.slow
def test_tts_metrics(setup):
    pipe, items, judges = setup
    r = eval_tts(pipe, items, judges, temperature=0.5)
    assert pipe.calls[0] == ("tts", TEXTS[0], {"temperature": 0.5})
    assert r["n"] == 2 and r["wer"] < 0.3  # real speech of the right text
    assert r["spk_sim"] > 0.7  # same espeak voice as the prompt
    assert 0 < r["first_audio_s"] and r["rtf"] > 0 and 1.0 <= r["dnsmos_ovrl"] <= 5.0
    assert list(r["per_voice"]) == ["espeak:en-us"]
    assert all(it["prompt"] == "u0" for it in r["items"])


@pytest.mark.slow
def test_asr_and_continuation_metrics(setup):
    pipe, items, judges = setup
    r = eval_asr(pipe, items, judges)
    assert r["items"][0]["hyp"] == TEXTS[0]  # the second item is 'recognised' as the first text too
    assert r["wer"] == pytest.approx(error_rates(TEXTS, [TEXTS[0], TEXTS[0]]).wer) and r["wer"] > 0.3
    assert r["whisper_wer"] < 0.3
    c = eval_continue(pipe, items, judges, prompt_seconds=1.5, seconds=1.0)
    assert c["n"] == 2 and all(abs(it["seconds"] - 1.0) < 0.01 for it in c["items"])
    assert c["spk_sim"] > 0.7 and np.isfinite(c["ppl"]) and c["ppl"] > 1.0


def test_backbone_perplexity_is_exp_of_mean_nll():
    pipe = StandInPipeline(None, TEXTS)
    text = "hello there"
    ids = pipe.tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = pipe.lm(input_ids=ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    assert backbone_perplexity(pipe.lm, pipe.tokenizer, text) == pytest.approx(float(nll.exp()), rel=1e-4)
    assert np.isnan(backbone_perplexity(pipe.lm, pipe.tokenizer, "a"))


def test_conditioning_gain_on_the_tiny_pipeline():
    """Real vs shuffled conditioning: identical items give a gain of exactly 0; distinct ones a finite,
    non-zero difference; fewer than two items with text is an error."""
    from slm.eval.conditioning import conditioning_gain
    from tests._tiny_pipeline import tiny_pipeline

    pipe = tiny_pipeline()
    g = torch.Generator().manual_seed(0)
    sr = pipe.sample_rate

    def item(i, text):
        return EvalItem(f"u{i}", (torch.randn(1, int(sr * (0.6 + 0.2 * i)), generator=g) * 0.1).clamp(-1, 1), sr,
                        text, f"spk{i}", "test")

    same = [item(0, "hello there friend")] * 3
    res = conditioning_gain(pipe, same)
    assert res["n"] == 3 and res["tts"]["gain"] == 0.0 and res["asr"]["gain"] == 0.0
    res = conditioning_gain(pipe, [item(0, "hello there friend"), item(1, "a quiet lake at dawn"), item(2, "go")])
    for task in ("tts", "asr"):
        r = res[task]
        assert all(np.isfinite(r[k]) for k in ("real", "shuffled", "gain")) and r["real"] > 0 and r["gain"] != 0.0
    assert "tts_aligned" not in res and "asr_aligned" not in res  # no word times
    # with word times: the aligned form too, its swap putting another item's words at these times
    timed = []
    for i, text in enumerate(["hello there friend", "a quiet lake at dawn", "go"]):
        it = item(i, text)
        dur = it.wav.shape[-1] / sr
        ws = text.split()
        timed.append(dataclasses.replace(it, words=[[k * dur / len(ws), (k + 1) * dur / len(ws), w] for k, w in enumerate(ws)]))
    both = conditioning_gain(pipe, timed)
    r = both["tts_aligned"]
    assert r["real"] != both["tts"]["real"]  # the words inside the span change what the frames are scored on
    assert all(np.isfinite(r[k]) for k in ("real", "shuffled", "gain")) and r["gain"] != 0.0
    # aligned ASR: the words scored after their own frames vs after another item's
    a = both["asr_aligned"]
    assert a["n"] >= 2 and a["real"] != both["asr"]["real"] and a["gain"] != 0.0
    assert all(np.isfinite(a[k]) for k in ("real", "shuffled", "gain"))
    same_t = conditioning_gain(pipe, [timed[0]] * 3)
    assert same_t["tts_aligned"]["gain"] == 0.0 and same_t["asr_aligned"]["gain"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        conditioning_gain(pipe, [item(0, "hello")])


class _RecordingASR:
    """Whisper stand-in: 'hears' the reference for the first batch (the corpus audio) and nothing after."""

    def __init__(self, refs):
        self.refs, self.batches = refs, []

    def transcribe(self, wavs, sr):
        self.batches.append(wavs)
        return list(self.refs) if len(self.batches) == 1 else [""] * len(wavs)


def test_eval_head_voices_the_true_semantic_tokens(monkeypatch):
    """eval_head: the corpus audio, its own codec tokens decoded, and its *true* semantic tokens with acoustic
    codes from the head, each judged; in the model's TTS form (plain, aligned, phone-bridged alike)."""
    from types import SimpleNamespace

    from slm.eval.lm_eval import eval_head
    from tests._tiny_pipeline import tiny_pipeline

    pipe = tiny_pipeline()
    sr = pipe.sample_rate
    g = torch.Generator().manual_seed(0)
    texts = ["hello there friend", "a quiet lake at dawn"]
    items = []
    for i, text in enumerate(texts):
        wav = (torch.randn(1, int(sr * (0.8 + 0.2 * i)), generator=g) * 0.1).clamp(-1, 1)
        dur, ws = wav.shape[-1] / sr, text.split()
        words = [[k * dur / len(ws), (k + 1) * dur / len(ws), w] for k, w in enumerate(ws)]
        phones = [[k * dur / len(ws), (k + 1) * dur / len(ws), "ah"] for k in range(len(ws))]
        items.append(EvalItem(f"u{i}", wav, sr, text, "spk0", "test", phones=phones, words=words))
    decoded = []
    real_decode = pipe.codec.decode
    monkeypatch.setattr(pipe.codec, "decode", lambda t, *a, **k: decoded.append(t) or real_decode(t, *a, **k))
    for aligned, phones in ((False, False), (True, True)):
        pipe.tts_aligned, pipe.tts_phones = aligned, phones
        decoded.clear()
        judges = SimpleNamespace(asr=_RecordingASR(texts))
        r = eval_head(pipe, items, judges, seed=1)
        assert r["n"] == 2 and r["floor"]["wer"] == 0.0 and r["codec"]["wer"] == r["head"]["wer"] == 1.0
        assert len(judges.asr.batches) == 3 and all(len(b) == 2 for b in judges.asr.batches)
        for k, it in enumerate(items):
            own, voiced = decoded[2 * k], decoded[2 * k + 1]
            true = pipe.encode(it.wav, sr)
            assert torch.equal(own.semantic, true.semantic) and torch.equal(own.acoustic, true.acoustic)
            assert torch.equal(voiced.semantic, true.semantic) and voiced.acoustic.shape == true.acoustic.shape
    head, pipe.head = pipe.head, None
    with pytest.raises(ValueError, match="acoustic head"):
        eval_head(pipe, items, SimpleNamespace(asr=_RecordingASR(texts)))
    pipe.head = head


def test_head_token_dir_writes_the_heads_codes_for_the_true_semantic_tokens(tmp_path):
    """`slm head-tokens`: per utterance, the codec's own semantic tokens with the head's acoustic codes; the
    same codes again when an item is rebuilt (seeded by the utterance), a dir grows across manifests, and a
    dir made with other sampling is refused."""
    import json

    from codec.audio import load_audio
    from codec.contracts import CodecTokens
    from codec.train.batches import HeadTokens
    from slm.head_tokens import head_token_dir
    from tests._tiny_pipeline import speechlike_wav, tiny_pipeline

    pipe = tiny_pipeline()
    (tmp_path / "wavs").mkdir()
    rows = []
    for i in range(4):
        p = speechlike_wav(tmp_path / "wavs" / f"u{i}.wav", seconds=0.9 + 0.3 * i)
        rows.append({"id": f"u{i}", "path": p, "text": "hello there", "speaker": f"s{i % 2}", "split": "train",
                     "words": [[0.0, 0.4, "hello"], [0.4, 0.8, "there"]]})
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    out = tmp_path / "head"
    assert head_token_dir("tiny", man, out, pipe=pipe, progress=False) == 3
    index = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert [r["id"] for r in index] == ["u0", "u1", "u2"]
    first = {}
    for r in index:
        t = CodecTokens.load(out / r["tokens"])
        own = pipe.encode(load_audio(str(tmp_path / "wavs" / f"{r['id']}.wav"), pipe.sample_rate), pipe.sample_rate)
        assert torch.equal(t.semantic, own.semantic)  # the true semantic tokens
        assert t.acoustic.shape == own.acoustic.shape and not torch.equal(t.acoustic, own.acoustic)
        first[r["id"]] = t
    (out / index[1]["tokens"]).unlink()
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))  # a larger manifest that holds the first
    assert head_token_dir("tiny", man, out, pipe=pipe, progress=False) == 4
    again = HeadTokens(out, pipe.codec.semantic_hop)
    assert len(again) == 4 and torch.equal(again.tokens("u1").acoustic, first["u1"].acoustic)
    with pytest.raises(ValueError, match="other settings"):
        head_token_dir("tiny", man, out, seed=1, pipe=pipe, progress=False)
    with pytest.raises(ValueError, match="no utterances"):
        head_token_dir("tiny", man, tmp_path / "x", split="test", pipe=pipe, progress=False)
