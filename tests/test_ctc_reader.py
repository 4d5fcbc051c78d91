"""The CTC reader of semantic tokens and joint (LM + CTC) ASR: exact prefix scores, training, resume,
save/load, and the pipeline's ASR methods."""
import itertools
import json
import math
import shutil

import pytest
import torch

from slm.ctc_reader import (
    CTCPrefixScorer,
    CTCReader,
    JointConfig,
    ReaderConfig,
    ReaderTrainConfig,
    joint_transcribe,
    normalize,
    train_reader,
)
from tests.test_slm_helpers import tiny_token_dir

TINY = {"dim": 32, "layers": 1, "heads": 2, "ff_mult": 2}


def test_normalize():
    assert normalize("  Hello, World!  It's 2-3 o'clock. ") == "hello world it's o'clock"
    assert normalize("...") == ""


def test_prefix_scores_are_exact():
    """Against torch's CTC loss (full scores) and brute force over every string (prefix scores)."""
    torch.manual_seed(0)
    T, alpha = 5, "ab"
    logp = torch.randn(T, 3, dtype=torch.float64).log_softmax(-1)
    sc = CTCPrefixScorer(logp, blank=2, alphabet=alpha)

    def full_ref(h: str) -> float:
        if not h:
            return float(logp[:, 2].double().sum())
        tgt = torch.tensor([[alpha.index(c) for c in h]])
        return -float(torch.nn.functional.ctc_loss(logp[:, None].double(), tgt, torch.tensor([T]),
                                                   torch.tensor([len(h)]), blank=2, reduction="sum"))

    every = ["".join(p) for n in range(T + 1) for p in itertools.product(alpha, repeat=n)]
    assert math.isclose(sum(math.exp(full_ref(s)) for s in every), 1.0, rel_tol=1e-6)
    for h in ["", "a", "ab", "aa", "bab", "abba", "aaa"]:
        assert sc.full(h) == pytest.approx(full_ref(h), abs=1e-9)
        brute = sum(math.exp(full_ref(s)) for s in every if s.startswith(h))
        assert sc.prefix(h) == pytest.approx(math.log(brute) if brute > 0 else -math.inf, abs=1e-9)
    assert sc.prefix("aaaaaa") == -math.inf  # 6 characters cannot come out of 5 frames


def test_reader_shapes_and_bad_input():
    r = CTCReader(ReaderConfig(n_codes=16, **TINY))
    out = r(torch.randint(0, 16, (2, 7)), torch.tensor([7, 4]))
    assert out.shape == (2, 14, len(r.cfg.alphabet) + 1)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 14))
    with pytest.raises(ValueError, match="another codec"):
        r(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="divisible"):
        ReaderConfig(dim=30, heads=4)


def _cfg(tmp_path, **kw):
    return ReaderTrainConfig(token_dir=tiny_token_dir(), out_dir=str(tmp_path), steps=30, batch_size=4, lr=3e-3,
                             eval_every=10, reader={**TINY, "upsample": 8}, **kw)


def test_training_lowers_the_loss_resumes_exactly_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="raise the reader's upsample"):  # 0.6-0.8 s clips of ~30 characters
        train_reader(ReaderTrainConfig(**{**_cfg(tmp_path / "c").__dict__, "reader": dict(TINY)}), progress=False)
    full = train_reader(_cfg(tmp_path / "a"), progress=False)
    losses = [r["loss"] for r in full["log"]]
    assert losses[-1] < losses[0]
    assert "valid_cer" in full["log"][-1]
    # left after 7 steps (between evaluations: its state is saved all the same), 7 more of the resumed run, then
    # to the end: the same weights as the uninterrupted run (stop_after counts the steps of each run)
    part = train_reader(_cfg(tmp_path / "b"), progress=False, stop_after=7)
    assert part["step"] == 7 and not (tmp_path / "b" / "reader").exists()
    assert train_reader(_cfg(tmp_path / "b"), progress=False, stop_after=7)["step"] == 14
    train_reader(_cfg(tmp_path / "b"), progress=False)
    a = CTCReader.from_pretrained(tmp_path / "a" / "reader")
    b = CTCReader.from_pretrained(tmp_path / "b" / "reader")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    codes = torch.randint(0, a.cfg.n_codes, (9,))
    assert torch.equal(a.log_probs(codes), b.log_probs(codes)) and a.transcribe(codes) == b.transcribe(codes)
    with pytest.raises(ValueError, match="another reader config"):
        train_reader(ReaderTrainConfig(**{**_cfg(tmp_path / "b").__dict__, "steps": 40}), progress=False)


def test_from_pretrained_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a CTC reader dir"):
        CTCReader.from_pretrained(tmp_path)
    r = CTCReader(ReaderConfig(n_codes=16, **TINY))
    r.save_pretrained(tmp_path)
    meta = (tmp_path / "config.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (tmp_path / "config.json").write_text(meta)
    with pytest.raises(ValueError, match="format 99"):
        CTCReader.from_pretrained(tmp_path)


def _spelling(text: str, frames_per_char: int = 2) -> torch.Tensor:
    """CTC log-probs that spell ``text`` almost surely (each character, then a blank)."""
    alpha = ReaderConfig().alphabet
    rows = []
    for c in text:
        rows += [alpha.index(c)] * frames_per_char + [len(alpha)]
    return torch.nn.functional.one_hot(torch.tensor(rows), len(alpha) + 1).float().mul(30).log_softmax(-1)


def test_joint_decoding_follows_the_reader_at_weight_one(pipe_with_reader):
    """With w = 1 and every text token a candidate, the beam spells what the reader spells (in the LM's own
    tokens), and ends there; with w = 0 it is the LM's own choice, which differs."""
    pipe = pipe_with_reader[1]
    from slm.templates import asr_prompt

    vocab = pipe.lm.get_input_embeddings().weight.shape[0]
    text_ids = pipe.layout.text_mask(vocab).nonzero().flatten()
    prompt = asr_prompt(pipe.tokenizer, pipe.layout, torch.tensor([1, 2, 3, 4]))
    target = "the cat sat on the mat"
    scorer = CTCPrefixScorer(_spelling(target), blank=len(ReaderConfig().alphabet))
    ids = joint_transcribe(pipe.infer_lm, pipe.tokenizer, prompt, text_ids, pipe.tokenizer.eos_token_id, scorer,
                           JointConfig(ctc_weight=1.0, beam=4, pre_beam=len(text_ids) + 1, max_new_tokens=40))
    assert normalize(pipe.tokenizer.decode(ids)) == target
    lm_only = joint_transcribe(pipe.infer_lm, pipe.tokenizer, prompt, text_ids, pipe.tokenizer.eos_token_id, scorer,
                               JointConfig(ctc_weight=0.0, beam=4, max_new_tokens=40))
    assert normalize(pipe.tokenizer.decode(lm_only)) != target
    with pytest.raises(ValueError, match="ctc_weight"):
        JointConfig(ctc_weight=1.5)


def test_pipeline_asr_methods(pipe_with_reader, monkeypatch):
    import slm.pipeline as sp

    pipe = pipe_with_reader[1]
    assert pipe.reader is not None
    sr = pipe.sample_rate
    wav = torch.randn(1, sr // 2) * 0.1
    codes = pipe.encode(wav, sr).semantic[0, 0]
    calls = []
    real = sp.joint_transcribe
    monkeypatch.setattr(sp, "joint_transcribe", lambda *a, **kw: calls.append(a[-1]) or real(*a, **kw))
    out = pipe.asr(wav, sr, max_new_tokens=12)  # the model's asr_method
    assert isinstance(out, str) and len(calls) == 1 and calls[0].max_new_tokens == 12
    assert pipe.asr(wav, sr, method="ctc") == pipe.reader.transcribe(codes)
    assert pipe.asr(wav, sr, method="lm", aligned=False, max_new_tokens=12) == pipe.asr_tokens(codes, 12, False, "lm")
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown ASR method"):
        pipe.asr(wav, sr, method="beam")
    ctc_default = sp.SpeechPipeline(pipe.lm, pipe.tokenizer, pipe.layout, pipe.codec, pipe.head, reader=pipe.reader,
                                    asr_method="ctc")  # a model dir's slm_config.json "asr_method"
    assert ctc_default.asr(wav, sr) == pipe.reader.transcribe(codes)
    with pytest.raises(ValueError, match="another codec's tokens"):
        sp.SpeechPipeline(pipe.lm, pipe.tokenizer, pipe.layout, pipe.codec, pipe.head,
                          reader=CTCReader(ReaderConfig(n_codes=pipe.layout.n_semantic + 1, **TINY)))


def test_methods_that_need_a_reader_say_so(pipe_with_reader, tmp_path):
    from slm.pipeline import SpeechPipeline

    d = tmp_path / "m"
    shutil.copytree(pipe_with_reader[0], d)
    shutil.rmtree(d / "ctc_reader")
    cfg = json.loads((d / "slm_config.json").read_text())
    (d / "slm_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "asr_method"}))
    p = SpeechPipeline.from_pretrained(d)
    assert p.reader is None and p.asr_method == "lm"
    with pytest.raises(ValueError, match="needs a CTC reader"):
        p.asr(torch.randn(1, p.sample_rate // 2) * 0.1, p.sample_rate, method="joint")
    with pytest.raises(ValueError, match="needs a CTC reader"):
        SpeechPipeline(p.lm, p.tokenizer, p.layout, p.codec, p.head, asr_method="ctc")


def test_token_noise():
    from slm.ctc_reader import corrupt

    torch.manual_seed(0)
    codes = torch.cat([torch.randint(0, 50, (4, 200, 1)), torch.randint(0, 8, (4, 200, 2))], -1)
    lens = torch.tensor([200, 150, 100, 20])
    assert torch.equal(corrupt(codes, lens, [50, 8, 8], 0.0, 0.0, 4), codes)
    sub = corrupt(codes, lens, [50, 8, 8], 0.2, 0.0, 4)
    assert int(sub[..., 1:].max()) < 8 and int(sub[..., 0].max()) >= 8  # each column from its own codebook
    changed = (sub[..., 0] != codes[..., 0]).float().mean()
    assert 0.12 < changed < 0.25  # 0.2, less the draws that equal the old code
    masked = corrupt(codes, lens, [50, 8, 8], 0.0, 0.3, 4)
    hit = (masked != codes).any(-1)
    for i, n in enumerate(lens.tolist()):
        assert not hit[i, n:].any()  # padding stays as it was
    assert 0.15 < hit[0].float().mean() < 0.4
    one = corrupt(codes[..., 0], lens, [50], 0.3, 0.0, 4)  # [B, T] in, [B, T] out
    assert one.shape == (4, 200)
    with pytest.raises(ValueError, match="time_mask"):
        ReaderTrainConfig(time_mask=1.0)


def test_reader_of_both_streams(tmp_path, pipe_with_reader):
    """acoustic=True: the reader takes each frame's acoustic codes beside its semantic code, trains (loss
    falls), saves and loads, reads what the pipeline's codec gives, and a reader of other codes is refused."""
    from slm.acoustic_head import frames_from_acoustic
    from slm.ctc_reader import reader_codes
    from slm.pipeline import SpeechPipeline

    pipe = pipe_with_reader[1]
    cfg = _cfg(tmp_path / "a", acoustic=True, substitute=0.05, time_mask=0.1)
    cfg.reader["n_codes"] = pipe.layout.n_semantic  # as `--install` sets it
    res = train_reader(cfg, progress=False)
    losses = [r["loss"] for r in res["log"]]
    assert losses[-1] < losses[0]
    r = CTCReader.from_pretrained(tmp_path / "a" / "reader")
    ratio = round(pipe.codec.acoustic_rate / pipe.codec.semantic_rate)
    assert r.cfg.acoustic_per_frame == ratio * pipe.codec.n_acoustic_codebooks
    assert r.cfg.acoustic_codes >= pipe.codec.config.acoustic_codebook_size and r.cfg.columns == 1 + ratio
    sr = pipe.sample_rate
    wav = torch.randn(1, sr // 2) * 0.1
    toks = pipe.encode(wav, sr)[0]
    sem, ac = toks.semantic[0, 0], frames_from_acoustic(toks.acoustic[0], toks.ratio)
    both = reader_codes(sem, ac, r.cfg.columns)
    assert both.shape == (len(sem), r.cfg.columns)
    other = both.clone()
    other[:, 1:] = (other[:, 1:] + 1) % r.cfg.acoustic_codes
    assert not torch.equal(r.log_probs(both), r.log_probs(other))  # the acoustic codes are read
    with pytest.raises(ValueError, match="acoustic codes per semantic frame"):
        reader_codes(sem, None, r.cfg.columns)
    with pytest.raises(ValueError, match=rf"expected codes \[B, T, {r.cfg.columns}\]"):
        r(sem[None])
    p2 = SpeechPipeline(pipe.lm, pipe.tokenizer, pipe.layout, pipe.codec, pipe.head, reader=r, asr_method="ctc")
    assert p2.asr(wav, sr) == r.transcribe(both)
    with pytest.raises(ValueError, match="needs a CTC reader|acoustic codes per semantic frame"):
        p2.asr_tokens(sem, method="ctc")  # semantic codes alone are not enough for this reader
    bad = CTCReader(ReaderConfig(**{**r.cfg.__dict__, "acoustic_per_frame": r.cfg.acoustic_per_frame + 1}))
    with pytest.raises(ValueError, match="another codec's tokens"):
        SpeechPipeline(pipe.lm, pipe.tokenizer, pipe.layout, pipe.codec, pipe.head, reader=bad)


def test_best_of_speaks_the_candidate_the_reader_scores_highest(pipe_with_reader):
    """Sampling.best_of = 3: each sentence's 3 candidates come from the seeded generator (side by side,
    slm.generate.generate_candidates), the reader's log p(text | tokens) picks one, and the stream decodes exactly
    that one (chunks = offline)."""
    import dataclasses

    from slm.generate import generate_candidates, generate_frames
    from slm.pipeline import SpeechPipeline, _generator

    pipe = pipe_with_reader[1]
    text = "hello there"
    base = pipe.sampling
    pipe.sampling = dataclasses.replace(base, best_of=3, temperature=1.0)
    try:
        sentence, prompt, s, hi, v, _, kw = next(pipe._tts_plan(text, None, None, None, None, 2.0, 7, None))
        gen = _generator(7)
        cands = generate_candidates(pipe.infer_lm, pipe.layout, prompt, pipe._speaking_head, s, hi, 3,
                                    pipe._voice_vec(v), gen, **kw)
        codes = [[f.code for f in c] for c in cands]
        assert len({tuple(c) for c in codes}) > 1  # the candidates differ
        scores = [pipe.reader_score(sentence, c) for c in codes]
        best = max(range(3), key=scores.__getitem__)
        assert best != 0  # (with this seed) so best-of differs from the first draw
        toks = pipe.tts_tokens(text, seed=7, max_seconds=2.0)
        assert toks[0].semantic[0, 0].tolist() == codes[best]
        chunks = list(pipe.tts_stream(text, seed=7, max_seconds=2.0))
        torch.testing.assert_close(torch.cat(chunks, -1), pipe._decode(toks[0]).reshape(1, -1).float().clamp(-1, 1),
                                   atol=1e-4, rtol=0)
        pipe.sampling = dataclasses.replace(base, temperature=1.0)
        one = [f.code for f in generate_frames(pipe.infer_lm, pipe.layout, prompt, pipe._speaking_head, s, hi,
                                               pipe._voice_vec(v), _generator(7), **kw)]
        assert pipe.tts_tokens(text, seed=7, max_seconds=2.0)[0].semantic[0, 0].tolist() == one  # best_of 1
        assert pipe.tts_tokens(text, seed=7, max_seconds=2.0, best_of=3)[0].semantic[0, 0].tolist() == codes[best]
    finally:
        pipe.sampling = base
    # best_of_words: a choice every word, each scored against the words spoken so far (the last against the
    # sentence); what is chosen streams, and the stream equals the offline tokens of the same seed
    said: list[str] = []
    score = pipe.reader_score
    pipe.reader_score = lambda t, *a, **k: (said.append(t), score(t, *a, **k))[1]
    try:
        long = "hello there my friend"
        toks = pipe.tts_tokens(long, seed=7, max_seconds=2.0, aligned=True, best_of=3, best_of_words=1)
        assert said[:6] == ["hello"] * 3 + ["hello there"] * 3 and said[-1] == long
        chunks = list(pipe.tts_stream(long, seed=7, max_seconds=2.0, aligned=True, best_of=3, best_of_words=1))
    finally:
        del pipe.reader_score
    torch.testing.assert_close(torch.cat(chunks, -1), pipe._decode(toks[0]).reshape(1, -1).float().clamp(-1, 1),
                               atol=1e-4, rtol=0)
    # -inf when there are no frames, or too few to spell the text
    assert pipe.reader_score("a", []) == -math.inf
    assert pipe.reader_score("abcdefghij" * 5, [1]) == -math.inf
    bare = SpeechPipeline(pipe.lm, pipe.tokenizer, pipe.layout, pipe.codec, pipe.head,
                          sampling=dataclasses.replace(base, best_of=2))
    with pytest.raises(ValueError, match="no ctc_reader"):
        bare.tts(text, max_seconds=1.0)
    with pytest.raises(ValueError, match="best_of"):
        dataclasses.replace(base, best_of=0)


def test_tts_cli_best_of_words(pipe_with_reader, tmp_path, monkeypatch, capsys):
    """`slm tts --best-of N --best-of-words W` speaks what pipe.tts(best_of=N, best_of_words=W) does; a bad W is
    refused with its range."""
    import soundfile as sf

    from slm.cli import lm, main

    final, pipe = pipe_with_reader
    monkeypatch.setattr(lm, "_pipe", lambda *a, **k: pipe)
    out = tmp_path / "x.wav"
    text = "hello there my friend"
    argv = ["tts", text, "--out", str(out), "--model", str(final), "--seed", "3", "--max-seconds", "2", "--aligned",
            "--best-of", "3", "--best-of-words", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    want = pipe.tts(text, seed=3, max_seconds=2.0, aligned=True, best_of=3, best_of_words=1)
    got = torch.from_numpy(sf.read(out, dtype="float32")[0])
    assert got.numel() == want.shape[-1] > 0
    torch.testing.assert_close(got, want.reshape(-1).float(), atol=1e-4, rtol=0)  # 16-bit wav rounding
    assert main([*argv[:-1], "-2"]) != 0
    assert "best_of_words must be in 0..64" in capsys.readouterr().err
