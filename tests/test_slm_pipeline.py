"""Speech LM end to end on a tiny backbone + tiny codec: save/load, merge, constrained decoding,
streaming, dialogue with the adapter disabled, bad inputs."""
import itertools
from pathlib import Path

import pytest
import torch

from slm.pipeline import SpeechPipeline, split_sentences
from tests.test_slm_helpers import tiny_train_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from slm.train import train

    cfg = tiny_train_config(tmp_path_factory.mktemp("slm"), steps=6)
    final = train(cfg, progress=False)
    return cfg, final


@pytest.fixture(scope="module")
def pipe(trained):
    return SpeechPipeline.from_pretrained(trained[1])


def _spy_generate_frames(monkeypatch, arg: str) -> list:
    """Record the ``arg`` keyword of every ``generate_frames`` call the pipeline makes, directly (continuation) or
    through ``generate_best`` (TTS); the list fills up."""
    import slm.generate as sg
    import slm.pipeline as sp

    seen, real = [], sg.generate_frames

    def spy(*a, **kw):
        seen.append(kw.get(arg))
        return real(*a, **kw)

    monkeypatch.setattr(sp, "generate_frames", spy)
    monkeypatch.setattr(sg, "generate_frames", spy)
    return seen


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None]).logits[0]


def test_bundle_files(trained):
    _, final = trained
    for f in ("slm_config.json", "token_layout.json", "adapter/adapter_config.json", "acoustic_head.json",
              "acoustic_head.safetensors", "codec/config.json"):
        assert (final / f).exists(), f
    # the adapter holds LoRA + the new token rows, not the whole embedding matrix
    from safetensors.torch import load_file

    sd = load_file(str(final / "adapter" / "adapter_model.safetensors"))
    assert any("trainable_tokens" in k for k in sd) and not any(k.endswith("embed_tokens.weight") for k in sd)


def test_save_load_identical_logits_and_merge(trained, pipe):
    from adapters.lora import merge

    final = trained[1]
    ids = torch.tensor([pipe.layout.special_id("tts"), 5, 6, 7, pipe.layout.audio_start, pipe.layout.semantic_offset + 3])
    loaded = _logits(pipe.lm, ids)
    again = SpeechPipeline.from_pretrained(final)
    assert torch.equal(loaded, _logits(again.lm, ids))
    with again.lm.disable_adapter():
        base = _logits(again.lm, ids)
    assert not torch.allclose(base, loaded, atol=1e-4)  # the adapter does something
    merged = merge(again.lm)
    torch.testing.assert_close(_logits(merged, ids), loaded, atol=1e-4, rtol=1e-4)


def test_constrained_decoding_stays_in_span(pipe):
    from slm.generate import Sampling, generate_frames, generate_text
    from slm.templates import asr_prompt, tts_prompt

    lay = pipe.layout
    prompt = tts_prompt(pipe.tokenizer, lay, "hello world")
    # unconstrained, this random tiny model would mostly pick text tokens (300 of 321 ids)
    assert not bool(lay.is_semantic(_logits(pipe.lm, prompt)[-1].argmax()))
    s = Sampling(temperature=1.5, top_k=0, top_p=1.0)
    frames = list(generate_frames(pipe.lm, lay, prompt, pipe.head, s, 20, generator=torch.Generator().manual_seed(0)))
    assert frames and all(0 <= f.code < lay.n_semantic for f in frames)
    assert all(f.acoustic.shape == (pipe.head.cfg.frame_len,) for f in frames)
    vocab = pipe.lm.get_input_embeddings().weight.shape[0]
    ids = generate_text(pipe.lm, asr_prompt(pipe.tokenizer, lay, torch.tensor([1, 2, 3])), lay.text_mask(vocab),
                        {pipe.tokenizer.eos_token_id}, 20, s, torch.Generator().manual_seed(0))
    assert all(i < lay.base_vocab for i in ids)


def test_streaming_equals_offline(pipe):
    text = "the cat sat on the mat. hello world!"
    chunks = list(pipe.tts_stream(text, seed=3, max_seconds=2.0))
    full = pipe.tts(text, seed=3, max_seconds=2.0)
    assert len(chunks) > 2 and full.dim() == 2 and full.shape[0] == 1
    assert torch.equal(torch.cat(chunks, -1), full)
    # and the streamed audio equals decoding the generated tokens offline in one go
    toks = pipe.tts_tokens(text, seed=3, max_seconds=2.0)
    offline = torch.cat([pipe.codec.decode(t).reshape(1, -1).clamp(-1, 1) for t in toks], -1)
    torch.testing.assert_close(full, offline, atol=1e-5, rtol=0)


def test_asr_continue_and_voices(pipe):
    sr = pipe.sample_rate
    wav = torch.randn(1, sr) * 0.1
    assert isinstance(pipe.asr(wav, sr), str)
    out = pipe.continue_(wav, sr, seconds=0.5, seed=0)
    assert out.dim() == 2 and 0 < out.shape[-1] <= int(0.5 * sr) + 2 * sr // 12
    assert pipe.voices()
    assert pipe.tts("hello", voice=pipe.voices()[0], seed=0, max_seconds=1.0).shape[0] == 1


def test_dialogue_uses_base_model(pipe, monkeypatch):
    from adapters.backbones import extend_vocabulary, load_backbone

    seen = {}
    import slm.pipeline as P

    real = P.generate_text

    def spy(model, prompt, *a, **k):
        seen.setdefault("logits", []).append(_logits(model, prompt))
        return real(model, prompt, *a, **k)

    monkeypatch.setattr(P, "generate_text", spy)
    sr = pipe.sample_rate
    turn = pipe.dialogue(torch.randn(1, sr) * 0.1, sr, history=[], seed=0, max_seconds=1.0)
    assert set(turn.latencies) >= {"asr", "chat", "tts", "total"} and turn.reply_audio.shape[0] == 1
    chat_logits = seen["logits"][1]  # second text generation = the chat reply
    bb = load_backbone(pipe.lm.peft_config["default"].base_model_name_or_path or "")
    extend_vocabulary(bb.model, bb.tokenizer, pipe.layout)
    msgs = [{"role": "user", "content": turn.user_text or "(silence)"}]
    ids = bb.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    torch.testing.assert_close(chat_logits, _logits(bb.model, ids[0]), atol=1e-5, rtol=1e-5)


def test_bad_inputs(pipe):
    sr = pipe.sample_rate
    with pytest.raises(ValueError, match="non-empty"):
        pipe.tts("   ")
    with pytest.raises(ValueError, match="at most"):
        pipe.tts("a" * 6000)
    with pytest.raises(ValueError, match="sample rate"):
        pipe.asr(torch.zeros(1, 8000), 8000)
    with pytest.raises(ValueError, match="empty"):
        pipe.asr(torch.zeros(1, 0), sr)
    with pytest.raises(ValueError, match="NaN"):
        pipe.continue_(torch.full((1, sr), float("nan")), sr)
    with pytest.raises(ValueError, match="unknown voice"):
        pipe.tts("hello", voice="nobody")
    with pytest.raises(FileNotFoundError, match="slm_config"):
        SpeechPipeline.from_pretrained("/nonexistent")


def test_split_sentences():
    parts = split_sentences("One. Two!  Three? " + "word " * 100, max_chars=50)
    assert parts[:3] == ["One.", "Two!", "Three?"] and all(len(p) <= 51 for p in parts)


def test_half_bundle_round_trip(trained, pipe, tmp_path):
    from slm.pipeline import save_bundle

    d = save_bundle(tmp_path / "half", pipe.lm, pipe.layout, pipe.head, pipe.codec,
                    trained[0].backbone, half=True)
    small = SpeechPipeline.from_pretrained(d)
    ids = torch.tensor([pipe.layout.special_id("tts"), 5, 6, pipe.layout.audio_start, pipe.layout.semantic_offset + 1])
    full, half = _logits(pipe.lm, ids), _logits(small.lm, ids)
    assert not torch.equal(full, half)  # weights really were rounded
    torch.testing.assert_close(half, full, atol=2e-2, rtol=1e-2)


def test_batch_audio_rejected_and_seeds(pipe):
    sr = pipe.sample_rate
    with pytest.raises(ValueError, match="one clip"):
        pipe.asr(torch.zeros(2, 1, sr), sr)
    a = pipe.tts("hello world", seed=5, max_seconds=1.0)
    assert torch.equal(a, pipe.tts("hello world", seed=5, max_seconds=1.0))
    torch.manual_seed(11)
    pipe.tts("hello world", max_seconds=0.5)  # unseeded: must not reseed torch's global RNG
    after = torch.rand(3)
    torch.manual_seed(11)
    torch.randint(0, 2**62, ())
    assert torch.equal(after, torch.rand(3))


def test_merged_for_inference(trained, pipe):
    """Generation runs on a plain merged copy; its logits equal the adapter's; `lm` keeps the adapter
    (and its exact base model through disable_adapter, see test_dialogue_uses_base_model)."""
    assert pipe.infer_lm is not pipe.lm and not hasattr(pipe.infer_lm, "peft_config")
    assert not any(p.requires_grad for p in pipe.infer_lm.parameters())
    lay = pipe.layout
    ids = torch.tensor([lay.special_id("tts"), 5, 6, 7, lay.audio_start, lay.semantic_offset + 3, lay.semantic_offset + 9])
    torch.testing.assert_close(_logits(pipe.infer_lm, ids), _logits(pipe.lm, ids), atol=1e-4, rtol=1e-4)
    # the adapter's own model is untouched by merging (still wrapped, still different from its base)
    with pipe.lm.disable_adapter():
        base = _logits(pipe.lm, ids)
    assert not torch.allclose(base, _logits(pipe.infer_lm, ids), atol=1e-4)
    plain = SpeechPipeline.from_pretrained(trained[1], merge=False)
    assert plain.infer_lm is plain.lm
    # same seed, same tokens, merged or not (the tiny model's logits are far from ties)
    a = [t.semantic for t in pipe.tts_tokens("hello world", seed=2, max_seconds=1.0)]
    b = [t.semantic for t in plain.tts_tokens("hello world", seed=2, max_seconds=1.0)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    q = SpeechPipeline.from_pretrained(trained[1], int8=True)
    assert q.infer_lm is not q.lm and hasattr(q.lm, "peft_config")
    toks = q.tts_tokens("hello world", seed=2, max_seconds=1.0)
    assert toks and all(t.semantic.max() < q.layout.n_semantic for t in toks)


def test_int8_decoding_voices_through_an_int8_copy_of_the_head(trained):
    """With int8 decoding the acoustic head speaks through an int8 copy (made once per head object): its
    projections close to the exact head's, not equal; ``head`` itself stays exact fp32, and with
    ``head_int8`` off (or a new head) the pipeline speaks with the head it holds."""
    import copy

    from slm.generate import Int8Linear

    q = SpeechPipeline.from_pretrained(trained[1], int8=True)
    h8 = q._speaking_head
    assert q.head_int8 and h8 is not q.head and q._speaking_head is h8
    assert isinstance(h8.out, Int8Linear) and type(q.head.out) is torch.nn.Linear
    assert isinstance(h8.blocks.layers[0].linear1, Int8Linear) and h8.in_proj.weight.dtype == torch.float32
    y = torch.randn(3, q.head.cfg.dim)
    with torch.no_grad():
        exact, approx = q.head.out(y), h8.out(y)
    assert not torch.equal(exact, approx)
    torch.testing.assert_close(approx, exact, atol=0.03 * float(exact.abs().max()), rtol=0)
    toks = q.tts_tokens("hello world", seed=2, max_seconds=1.0)  # speaks through the copy
    assert toks and all(t.acoustic.numel() and t.acoustic.max() < q.head.cfg.codebook_size for t in toks)
    q.head = copy.deepcopy(q.head)
    assert q._speaking_head is not h8 and isinstance(q._speaking_head.out, Int8Linear)
    q.head_int8 = False
    assert q._speaking_head is q.head
    assert SpeechPipeline.from_pretrained(trained[1])._speaking_head is not None
    assert not SpeechPipeline.from_pretrained(trained[1]).head_int8


def test_cli_lists_voices_without_loading_and_asks_for_missing_args(capsys):
    from slm.cli import main
    from tests._tiny_pipeline import tiny_pipeline_dir

    d = tiny_pipeline_dir()
    names = sorted(p.stem for p in Path(d, "voices").glob("*.safetensors"))
    assert names
    assert main(["tts", "--list-voices", "--model", d]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == names
    with pytest.raises(SystemExit, match="--out"):
        main(["tts", "hello", "--model", d])


def test_tts_length_bound_from_text(trained, pipe):
    """`slm train` writes a seconds-per-character bound (from its data) into the model dir; TTS never
    runs past 0.5 s + that bound x the sentence's characters, and a tighter bound gives fewer frames."""
    import json
    from dataclasses import replace

    from slm.generate import Sampling
    from slm.lm_data import load_tokens
    from slm.train import length_bound

    cfg, final = trained
    saved = json.loads((final / "slm_config.json").read_text())["sampling"]
    assert saved == length_bound(load_tokens(cfg.tokens, split="train"), pipe.codec) and saved["max_seconds_per_char"] > 0
    assert pipe.sampling.max_seconds_per_char == saved["max_seconds_per_char"]
    rate = pipe.codec.semantic_rate
    assert Sampling(max_seconds_per_char=0.1).max_frames("x" * 20, 20.0, rate) == int(2.5 * rate)
    assert Sampling().max_frames("x" * 20, 20.0, rate) == int(20.0 * rate)
    with pytest.raises(ValueError, match="max_seconds_per_char"):
        Sampling(max_seconds_per_char=-1.0)
    # the lower bound: half the median, so no training utterance is shorter than it
    assert saved["min_seconds_per_char"] == pytest.approx(saved["max_seconds_per_char"] / 4, abs=1e-4)
    assert pipe.sampling.min_seconds_per_char == saved["min_seconds_per_char"]
    assert Sampling(min_seconds_per_char=0.1).min_frames("x" * 20, rate, 1000) == int(2.0 * rate)
    assert Sampling(min_seconds_per_char=0.1).min_frames("x" * 20, rate, 3) == 3  # within the upper bound
    assert Sampling().min_frames("x" * 20, rate, 1000) == 1
    with pytest.raises(ValueError, match="min_seconds_per_char"):
        Sampling(min_seconds_per_char=-1.0)
    text = "hello there my friend"
    old = pipe.sampling
    try:
        pipe.sampling = replace(old, max_seconds_per_char=0.0)
        free = sum(t.semantic.shape[-1] for t in pipe.tts_tokens(text, seed=0, max_seconds=6.0))
        pipe.sampling = replace(old, max_seconds_per_char=0.01)
        bounded = sum(t.semantic.shape[-1] for t in pipe.tts_tokens(text, seed=0, max_seconds=6.0))
    finally:
        pipe.sampling = old
    assert bounded <= int((0.5 + 0.01 * len(text)) * rate) < free
    # a lower bound keeps every sentence at least that long (both from tts_tokens and the streaming path)
    try:
        pipe.sampling = replace(old, max_seconds_per_char=0.0, min_seconds_per_char=0.2)
        floor = int(0.2 * len(text) * rate)
        assert floor > 1
        for seed in range(3):
            n = sum(t.semantic.shape[-1] for t in pipe.tts_tokens(text, seed=seed, max_seconds=6.0))
            assert n >= floor
            wav = pipe.tts(text, seed=seed, max_seconds=6.0)
            assert wav.shape[-1] >= floor * pipe.sample_rate / rate - 1
    finally:
        pipe.sampling = old


def test_aligned_tts_streams_and_follows_the_model_flag(trained, pipe, tmp_path):
    """Aligned TTS (each word fed before its frames): streaming equals offline, every word gets its frames
    within the per-word cap, and a model dir whose slm_config.json says "tts_aligned" speaks that way."""
    import json
    import shutil

    from slm.templates import split_words

    assert pipe.tts_aligned is False  # the tiny run has no word times: plain form
    text = "the cat sat on the mat. hello world!"
    chunks = list(pipe.tts_stream(text, seed=5, max_seconds=3.0, aligned=True))
    full = pipe.tts(text, seed=5, max_seconds=3.0, aligned=True)
    assert torch.equal(torch.cat(chunks, -1), full)
    toks = pipe.tts_tokens(text, seed=5, max_seconds=3.0, aligned=True)
    offline = torch.cat([pipe.codec.decode(t).reshape(1, -1).clamp(-1, 1) for t in toks], -1)
    torch.testing.assert_close(full, offline, atol=1e-5, rtol=0)
    rate = pipe.codec.semantic_rate
    for sentence, t in zip(split_sentences(text), toks):
        words = split_words(sentence)
        caps = pipe.sampling.word_caps(words, rate)
        assert len(caps) == len(words) and all(c >= 2 for c in caps) and caps[words.index(max(words, key=len))] == max(caps)
        assert len(words) <= t.semantic.shape[-1] <= min(sum(caps), pipe.sampling.max_frames(sentence, 3.0, rate))
    # word timings: where each word's frames are in the audio; asking for them changes nothing
    times: list = []
    assert torch.equal(pipe.tts(text, seed=5, max_seconds=3.0, aligned=True, timings=times), full)
    streamed: list = []
    assert torch.equal(torch.cat(list(pipe.tts_stream(text, seed=5, max_seconds=3.0, aligned=True,
                                                      timings=streamed)), -1), full)
    assert streamed == times
    sr, at = pipe.sample_rate, 0.0
    for sentence, t in zip(split_sentences(text), toks):
        n = t.semantic.shape[-1]
        secs = pipe.codec.decode(t).shape[-1] / sr
        mine = [w for w in times if at - 1e-6 <= w.start < at + secs - 1e-6]
        assert [w.text for w in mine] == split_words(sentence)[: len(mine)] and mine
        assert mine[0].start == pytest.approx(at, abs=1e-3)  # a sentence's first word starts with its audio
        assert mine[-1].end == pytest.approx(at + secs, abs=1e-3)
        assert all(a.end == pytest.approx(b.start, abs=1e-3) for a, b in itertools.pairwise(mine))
        assert sum(round((w.end - w.start) / secs * n) for w in mine) == n  # every frame in one word
        at += secs
    assert times[-1].end == pytest.approx(full.shape[-1] / sr, abs=1e-3)
    plain: list = []
    wav = pipe.tts(text, seed=5, max_seconds=3.0, aligned=False, timings=plain)
    assert [w.text for w in plain] == split_sentences(text) and plain[0].start == 0.0
    assert plain[-1].end == pytest.approx(wav.shape[-1] / sr, abs=1e-3) and plain[0].end == plain[1].start
    assert split_words("Seventy-six trombones, O'Brien!") == ["seventy", "six", "trombones", "o'brien"]
    assert pipe.tts_tokens("?!", seed=0, aligned=True)  # no words: the plain form
    d = tmp_path / "aligned"
    shutil.copytree(trained[1], d)
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({**cfg, "tts_aligned": True}))
    p2 = SpeechPipeline.from_pretrained(d)
    assert p2.tts_aligned is True
    a = p2.tts_tokens(text, seed=5, max_seconds=3.0)
    assert all(torch.equal(x.semantic, y.semantic) for x, y in zip(a, toks))
    plain = p2.tts_tokens(text, seed=5, max_seconds=3.0, aligned=False)
    ref = pipe.tts_tokens(text, seed=5, max_seconds=3.0)
    assert all(torch.equal(x.semantic, y.semantic) for x, y in zip(plain, ref))


def test_phone_bridged_tts_feeds_g2p_phones_and_follows_the_model_flag(trained, pipe, tmp_path, monkeypatch):
    """A model dir whose slm_config.json says "tts_phones" speaks the phone-bridged aligned form: each word
    is fed with its espeak-ng phones; streaming still equals offline."""
    import json
    import shutil

    from adapters.g2p import phonemize
    from slm.templates import word_ids

    d = tmp_path / "phones"
    shutil.copytree(trained[1], d)
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({**cfg, "tts_aligned": True, "tts_phones": True}))
    p2 = SpeechPipeline.from_pretrained(d)
    assert p2.tts_phones is True and pipe.tts_phones is False
    fed = _spy_generate_frames(monkeypatch, "words")
    text = "Hello there, world."
    toks = p2.tts_tokens(text, seed=3, max_seconds=3.0)
    words = ["hello", "there", "world"]
    assert fed == [word_ids(p2.tokenizer, words, phonemize(words))]
    assert fed[0] != word_ids(p2.tokenizer, words)
    chunks = list(p2.tts_stream(text, seed=3, max_seconds=3.0))
    assert torch.equal(torch.cat(chunks, -1), p2.tts(text, seed=3, max_seconds=3.0))
    assert len(words) <= toks[0].semantic.shape[-1]
    fed.clear()
    pipe.tts_tokens(text, seed=3, max_seconds=3.0, aligned=True)
    assert fed == [word_ids(pipe.tokenizer, words)]  # a model without the flag: words alone


def test_aligned_asr_streams_and_follows_the_model_flag(trained, pipe, tmp_path):
    """Aligned ASR (each word written after its frames): the streamed transcript grows word by word to what
    asr(aligned=True) returns; a model dir whose slm_config.json says "asr_aligned" transcribes that way;
    bad audio fails as in the plain form."""
    import json
    import shutil

    sr = pipe.sample_rate
    wav = (torch.randn(1, sr, generator=torch.Generator().manual_seed(3)) * 0.1).clamp(-1, 1)
    assert pipe.asr_aligned is False
    full = pipe.asr(wav, sr, aligned=True, max_new_tokens=30)
    parts = list(pipe.asr_stream(wav, sr, max_new_tokens=30))
    assert (parts[-1] if parts else "") == full
    codes = pipe.encode(wav, sr).semantic[0, 0]
    from slm.generate import transcribe_aligned

    assert len(parts) == len(list(transcribe_aligned(pipe.infer_lm, pipe.layout, codes, 30, word_start=pipe.word_start())))
    assert pipe.asr_tokens(codes, 30, aligned=True) == full
    assert pipe.asr_tokens(codes, 30, aligned=False) == pipe.asr(wav, sr, max_new_tokens=30)
    d = tmp_path / "asr_aligned"
    shutil.copytree(trained[1], d)
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({**cfg, "asr_aligned": True}))
    p2 = SpeechPipeline.from_pretrained(d)
    assert p2.asr_aligned is True and p2.asr(wav, sr, max_new_tokens=30) == full
    with pytest.raises(ValueError):
        p2.asr(torch.zeros(1, 0), sr)


def test_semantic_only_speech_skips_the_head(trained, tmp_path, monkeypatch):
    """`semantic_only`: TTS and continuation are voiced from the semantic tokens alone; the head never runs,
    streaming equals decoding the generated tokens offline with `semantic_only=True`, the model dir's
    slm_config.json flag is followed (the argument wins), and codecs that cannot do it are refused."""
    import json
    import shutil

    from slm.acoustic_head import AcousticHead

    p = SpeechPipeline.from_pretrained(trained[1], semantic_only=True)
    assert p.semantic_only and p.head is not None

    def boom(*a, **k):
        raise AssertionError("the acoustic head ran")

    monkeypatch.setattr(AcousticHead, "forward", boom)
    monkeypatch.setattr(AcousticHead, "generate_frames", boom)
    monkeypatch.setattr(AcousticHead, "voice_vector", boom)
    text = "the cat sat on the mat. hello world!"
    voice = p.voices()[0]
    chunks = list(p.tts_stream(text, voice, seed=3, max_seconds=2.0))
    full = p.tts(text, voice, seed=3, max_seconds=2.0)
    assert len(chunks) > 2 and torch.equal(torch.cat(chunks, -1), full)
    toks = p.tts_tokens(text, voice, seed=3, max_seconds=2.0)
    assert all(int(t.acoustic.abs().sum()) == 0 for t in toks)  # placeholders only
    offline = torch.cat([p.codec.decode(t, semantic_only=True).reshape(1, -1).clamp(-1, 1) for t in toks], -1)
    torch.testing.assert_close(full, offline, atol=1e-5, rtol=0)
    with_codes = torch.cat([p.codec.decode(t).reshape(1, -1).clamp(-1, 1) for t in toks], -1)
    assert not torch.allclose(full, with_codes)  # the acoustic path really is left out
    wav = torch.randn(1, int(0.5 * p.sample_rate)) * 0.1
    assert p.continue_(wav, p.sample_rate, seconds=0.5, seed=1).shape[-1] > 0

    d = tmp_path / "semonly"
    shutil.copytree(trained[1], d)
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({**cfg, "semantic_only": True}))
    assert SpeechPipeline.from_pretrained(d).semantic_only is True
    assert SpeechPipeline.from_pretrained(d, semantic_only=False).semantic_only is False


def test_semantic_only_needs_a_two_stream_codec(tmp_path):
    from slm.train import train

    final = train(tiny_train_config(tmp_path, "secousticodec", steps=1, save_every=100), progress=False)
    with pytest.raises(ValueError, match="decodes its semantic stream alone"):
        SpeechPipeline.from_pretrained(final, semantic_only=True)


def test_classifier_free_guidance(pipe, monkeypatch):
    """``Sampling.cfg_scale``: the semantic log-probs become c + (s - 1)(c - u), the mass on moving to the next
    word / ending stays the conditional's; the unconditional stream reads the same frames in the continuation
    form (the voice's frames, no text); streaming still equals offline; scale 1 is the unguided decoder."""
    import dataclasses

    from slm.generate import Sampling, _guided, generate_frames
    from slm.templates import tts_prompt

    g = torch.Generator().manual_seed(0)
    c, u, sem = torch.randn(10, generator=g), torch.randn(10, generator=g), torch.arange(8)  # 8, 9: not frames
    out = _guided(c, u, sem, 2.0)
    assert torch.equal(out[8:], c[8:])
    assert torch.allclose(torch.logsumexp(out[sem], -1), torch.logsumexp(c[sem], -1))
    lc, lu = c[sem].log_softmax(-1), u[sem].log_softmax(-1)
    torch.testing.assert_close(out[sem].log_softmax(-1), (2 * lc - lu).log_softmax(-1))
    torch.testing.assert_close(_guided(c, c, sem, 3.0), c)  # nothing to guide against
    with pytest.raises(ValueError, match="cfg_scale"):
        Sampling(cfg_scale=0.0)

    # an unconditional stream that is the conditional one (same prompt) must leave greedy decoding unchanged:
    # both decoders read the same frames, step for step
    lay = pipe.layout
    prompt = tts_prompt(pipe.tokenizer, lay, "hello world")
    greedy = Sampling(temperature=0.0, head_temperature=0.0, cfg_scale=3.0)
    same = [f.code for f in generate_frames(pipe.lm, lay, prompt, pipe.head, greedy, 12, uncond_prompt=prompt)]
    off = [f.code for f in generate_frames(pipe.lm, lay, prompt, pipe.head, greedy, 12)]
    assert same == off and len(off) > 3

    seen = _spy_generate_frames(monkeypatch, "uncond_prompt")
    base, text, voice = pipe.sampling, "the cat sat on the mat.", pipe.voices()[0]
    try:
        pipe.sampling = dataclasses.replace(base, cfg_scale=1.0)
        plain = pipe.tts_tokens(text, voice=voice, seed=4, max_seconds=2.0, aligned=True)
        assert seen == [None]
        pipe.sampling = dataclasses.replace(base, cfg_scale=4.0)
        guided = pipe.tts_tokens(text, voice=voice, seed=4, max_seconds=2.0, aligned=True)
        v = pipe._voice(voice).tokens.semantic.reshape(-1)
        want = torch.cat([torch.tensor([lay.special_id("continue"), lay.audio_start]), lay.codes_to_ids(v)])
        assert torch.equal(seen[1], want)
        assert not torch.equal(plain[0].semantic, guided[0].semantic)
        chunks = list(pipe.tts_stream(text, voice=voice, seed=4, max_seconds=2.0, aligned=True))
        assert torch.equal(torch.cat(chunks, -1), pipe.tts(text, voice=voice, seed=4, max_seconds=2.0, aligned=True))
        assert pipe.tts_tokens(text, seed=4, max_seconds=2.0)  # no voice: guidance from the second frame on
    finally:
        pipe.sampling = base


def test_int8_default_comes_from_the_model_dir(trained, tmp_path):
    """``from_pretrained(int8=None)`` (the CLI's and demo's default) decodes with int8 weights when the model dir
    says ``"int8": true``, on CPU; an explicit value wins, and the library default stays fp32."""
    import json
    import shutil

    from slm.generate import Int8Linear

    def int8_layers(p) -> int:  # the fused decoding step's matrices
        return sum(isinstance(m, Int8Linear) for layer in p.infer_lm.fused_step.layers for m in layer)

    d = tmp_path / "m"
    shutil.copytree(trained[1], d)
    assert int8_layers(SpeechPipeline.from_pretrained(d, int8=None)) == 0  # no setting: fp32
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({**cfg, "int8": True}))
    assert int8_layers(SpeechPipeline.from_pretrained(d, int8=None)) > 0
    assert int8_layers(SpeechPipeline.from_pretrained(d)) == 0
    assert int8_layers(SpeechPipeline.from_pretrained(d, int8=False)) == 0
    # "w8a8": int8 activations too, in the backbone's qkv and gate_up; the head's copy keeps int8 weights only;
    # an unknown mode is named
    (d / "slm_config.json").write_text(json.dumps({**cfg, "int8": "w8a8"}))
    p = SpeechPipeline.from_pretrained(d, int8=None)
    assert int8_layers(p) > 0 and all([m.packed is not None for m in layer if isinstance(m, Int8Linear)]
                                      == [True, False, True, False] for layer in p.infer_lm.fused_step.layers)
    assert p.head_int8 == "w8a8" and isinstance(p._speaking_head.out, Int8Linear)
    assert p._speaking_head.out.packed is None
    assert p.tts_tokens("hello world", seed=2, max_seconds=1.0)
    assert SpeechPipeline.from_pretrained(d, int8=True).head_int8 == "weights"  # an explicit value wins
    (d / "slm_config.json").write_text(json.dumps({**cfg, "int8": "int4"}))
    with pytest.raises(ValueError, match="int8 must be"):
        SpeechPipeline.from_pretrained(d, int8=None)


def test_int8_cli_flag():
    """``--int8`` alone: int8 weights; ``--int8 w8a8``; ``--no-int8``: fp32; nothing: the model dir's setting."""
    from slm.cli import build_parser

    def parsed(*flags):
        return build_parser().parse_args(["tts", "hello", *flags]).int8

    assert [parsed(), parsed("--int8"), parsed("--int8", "weights"), parsed("--int8", "w8a8"), parsed("--no-int8")] \
        == [None, "weights", "weights", "w8a8", False]
    with pytest.raises(SystemExit):
        parsed("--int8", "int4")
