"""slm.fused_asr: the reader's CTC beam search with a lexicon and LM shallow fusion."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from slm.ctc_reader import ALPHABET, CTCPrefixScorer
from slm.fused_asr import FusionConfig, Lexicon, TextScorer, ctc_align, fused_nbest, fused_transcribe, lm_text

BLANK = len(ALPHABET)


def _frames(rows: list[dict[str, float]]) -> torch.Tensor:
    """Log-probs ``[T, C]`` from per-frame probabilities of a few symbols ("-" is the blank); every other
    symbol gets a tiny share (below the decoder's pruning)."""
    out = torch.full((len(rows), BLANK + 1), 1e-9, dtype=torch.float64)
    for t, r in enumerate(rows):
        for c, p in r.items():
            out[t, BLANK if c == "-" else ALPHABET.index(c)] = p
    return (out / out.sum(1, keepdim=True)).log()


def _spell(text: str) -> list[dict[str, float]]:
    rows = []
    for c in text:
        rows += [{c: 0.9, "-": 0.1}, {"-": 0.95, c: 0.05}]
    return rows


def test_lm_text():
    assert lm_text("i think i'm here") == "I think I'm here" and lm_text("") == ""


def test_lexicon_lookup_and_sources(tmp_path):
    lex = Lexicon.from_texts(["The cat sat.", "the CAT ran; a dog's bone"])
    assert len(lex) == 7 and "cat" in lex and "dog's" in lex and "dogs" not in lex
    assert lex.word_logp("the") == pytest.approx(math.log(2 / 9)) and lex.word_logp("zebra") == -math.inf
    assert lex.lookahead("ca") == lex.word_logp("cat")
    assert lex.lookahead("") == max(lex.logp.tolist()) and lex.lookahead("cx") == -math.inf
    f = tmp_path / "words.txt"
    f.write_text("red\t3\nrad\t1\n\nred\n")
    lf = Lexicon.from_spec(str(f))
    assert lf.word_logp("red") == pytest.approx(math.log(4 / 5))
    assert Lexicon.from_spec("words.txt", base=tmp_path).words == lf.words
    assert "zebra" in lf.extend(["a zebra"]) and lf.extend(["a zebra"]).word_logp("zebra") == lf.word_logp("rad")
    with pytest.raises(FileNotFoundError, match="wordfreq"):
        Lexicon.from_spec("nope.txt", base=tmp_path)
    with pytest.raises(ValueError, match="empty lexicon"):
        Lexicon.from_texts(["... !!!"])
    big = Lexicon.from_spec("wordfreq:2000")  # the package the default lexicon comes from
    assert len(big) > 1500 and "the" in big and big.word_logp("the") > big.word_logp("water")


def test_beam_search_finds_the_most_probable_labelling():
    """No LM, no lexicon, a beam as wide as all prefixes: the result is the labelling with the highest total CTC
    probability (brute force over every string), which the best path (greedy) misses here."""
    x = _frames([{"a": 0.35, "b": 0.25, "-": 0.4}] * 2)
    got = fused_transcribe(x, BLANK, lambda ts: [0.0] * len(ts), None, FusionConfig(beam=64, lm_weight=0, word_bonus=0))
    assert got == "a"  # greedy: two blanks, ""
    torch.manual_seed(1)
    for _ in range(5):
        p = torch.rand(4, 3) + 0.05
        p = p / p.sum(1, keepdim=True)
        x = _frames([{"a": float(r[0]), "b": float(r[1]), "-": float(r[2])} for r in p])
        sc = CTCPrefixScorer(x, BLANK)
        best = max(("".join(s) for n in range(5) for s in itertools.product("ab", repeat=n)), key=sc.full)
        got = fused_transcribe(x, BLANK, lambda ts: [0.0] * len(ts), None,
                               FusionConfig(beam=64, lm_weight=0, word_bonus=0))
        assert got == best


def test_lexicon_keeps_words_real_and_the_lm_picks_between_them():
    # "r?d": the middle letter is e or a, evenly
    rows = _spell("the r") + [{"e": 0.45, "a": 0.45, "-": 0.1}, {"-": 0.95}] + _spell("d cat")
    x = _frames(rows)
    lex = Lexicon.from_texts(["the red rad cat"])
    likes = {"red": lambda t: -1.0 if "red" in t else -9.0, "rad": lambda t: -1.0 if "rad" in t else -9.0}
    for word, f in likes.items():
        calls: list[str] = []

        def lm(ts, f=f, calls=calls):
            calls.extend(ts)
            return [f(t) for t in ts]

        got = fused_transcribe(x, BLANK, lm, lex, FusionConfig(beam=8, lm_weight=1.0, word_bonus=0.0))
        assert got == f"the {word} cat"
        assert calls and all(t == "" or set(t.split()) <= set(lex.words) for t in calls)  # whole words only
    # a spelling the lexicon lacks is replaced by the nearest word it has ("cot" -> "cat")
    x2 = _frames(_spell("the c") + [{"o": 0.7, "a": 0.25, "-": 0.05}, {"-": 0.95}] + _spell("t"))
    assert fused_transcribe(x2, BLANK, lambda ts: [0.0] * len(ts), None, FusionConfig(lm_weight=0)) == "the cot"
    assert fused_transcribe(x2, BLANK, lambda ts: [0.0] * len(ts), lex, FusionConfig(lm_weight=0)) == "the cat"
    with pytest.raises(ValueError, match="log-probs must be"):
        fused_transcribe(x2[:, :5], BLANK, lambda ts: [0.0] * len(ts), lex)
    with pytest.raises(ValueError, match="beam"):
        FusionConfig(beam=0)
    with pytest.raises(ValueError, match="text_lm"):
        FusionConfig(text_lm="other")


def test_lm_lag_scores_word_ends_in_fewer_batches_and_the_lm_still_decides():
    """``lm_lag``: words that end within a few frames of each other share one LM call (ranked meanwhile on an
    estimate), and the LM still picks between two equally spelled words."""
    rows = _spell("the r") + [{"e": 0.45, "a": 0.45, "-": 0.1}, {"-": 0.95}] + _spell("d cat sat on a mat")
    x = _frames(rows)
    lex = Lexicon.from_texts(["the red rad cat sat on a mat"])
    for word in ("red", "rad"):
        batches: dict[int, list[list[str]]] = {}
        for lag in (0, 8, 1000):
            calls = batches.setdefault(lag, [])

            def lm(ts, word=word, calls=calls):
                calls.append(list(ts))
                return [-1.0 * len(t.split()) - (0.0 if word in t.split() else 8.0 * ("r" in t)) for t in ts]

            got = fused_transcribe(x, BLANK, lm, lex, FusionConfig(beam=8, lm_weight=1.0, word_bonus=1.0, lm_lag=lag))
            assert got == f"the {word} cat sat on a mat", lag
            assert all(t == "" or set(t.split()) <= set(lex.words) for c in calls for t in c)
        assert len(batches[8]) < len(batches[0])
        assert len(batches[1000]) == 1  # nothing scored before the clip's end: one call for the finals
    with pytest.raises(ValueError, match="lm_lag"):
        FusionConfig(lm_lag=-1)


def test_nbest_is_ranked_and_led_by_the_transcript():
    rows = _spell("the r") + [{"e": 0.45, "a": 0.45, "-": 0.1}, {"-": 0.95}] + _spell("d cat")
    x = _frames(rows)
    lex = Lexicon.from_texts(["the red rad cat"])
    cfg = FusionConfig(beam=8, lm_weight=0.5, word_bonus=1.5)

    def lm(ts):
        return [-1.0 if "red" in t else -3.0 for t in ts]

    hyps = fused_nbest(x, BLANK, lm, lex, cfg)
    assert [h.text for h in hyps][:2] == ["the red cat", "the rad cat"]
    assert hyps[0].text == fused_transcribe(x, BLANK, lm, lex, cfg)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    sc = CTCPrefixScorer(x, BLANK)
    for h in hyps:
        assert h.score == pytest.approx(h.ctc + 0.5 * h.lm + 1.5 * len(h.text.split()))
        assert h.lm == lm([h.text])[0] and h.ctc == pytest.approx(sc.full(h.text), abs=1e-6)
    with pytest.raises(ValueError, match="rescore"):
        FusionConfig(rescore_n=0)


def test_ctc_align_is_the_best_path():
    """The frames ctc_align gives each label are those of the most probable single path (brute force over every
    path of a few frames), repeats included."""
    torch.manual_seed(3)
    C, blank = 4, 3
    for labels in ([0], [0, 1], [1, 1], [2, 0, 2], [0, 0, 0]):
        for _ in range(4):
            lp = torch.randn(6, C).log_softmax(-1)
            best, first = -math.inf, None
            for path in itertools.product(range(C), repeat=6):
                out, starts, prev = [], [], None
                for t, c in enumerate(path):
                    if c != blank and c != prev:
                        out.append(c)
                        starts.append(t)
                    prev = c
                if out == labels:
                    s = sum(float(lp[t, c]) for t, c in enumerate(path))
                    if s > best:
                        best, first = s, starts
            assert ctc_align(lp, torch.tensor(labels), blank) == first
    assert ctc_align(torch.zeros(3, C), torch.tensor([], dtype=torch.long), blank) == []
    with pytest.raises(ValueError, match="cannot emit"):
        ctc_align(torch.zeros(2, C).log_softmax(-1), torch.tensor([1, 1]), blank)  # a repeat needs a blank between


def test_aligned_asr_scores_follow_the_template(pipe_with_reader):
    """The speech LM's log p(words | tokens) in the aligned ASR form equals the word tokens' log-probs in
    asr_aligned_example for the same cuts; sequences scored together give what each gives alone."""
    from slm.templates import IGNORE, asr_aligned_example

    pipe = pipe_with_reader[1]
    n = pipe.layout.n_semantic
    codes = torch.randint(0, n, (10,))
    words = ["the", "cat", "sat"]
    wof = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    ex = asr_aligned_example(pipe.tokenizer, pipe.layout, [(0.0, 0.3, "the"), (0.3, 0.7, "cat"), (0.7, 1.0, "sat")],
                             codes, 1.0)
    with torch.no_grad():
        lp = pipe.infer_lm(input_ids=ex.input_ids[None]).logits[0].float().log_softmax(-1)
    want = sum(float(lp[j - 1, int(y)]) for j, y in enumerate(ex.labels)
               if int(y) != IGNORE and int(y) < pipe.layout.base_vocab)
    other = (["a", "dog"], torch.randint(0, n, (4,)), [0, 1, 1, 1])
    both = pipe.aligned_asr_scores([words, other[0], ["x"]], [codes, other[1], []], [wof, other[2], []])
    assert both[0] == pytest.approx(want, abs=1e-3)
    assert both[1] == pytest.approx(pipe.aligned_asr_scores([other[0]], [other[1]], [other[2]])[0], abs=1e-3)
    assert both[2] == -math.inf  # no frames
    assert pipe.aligned_asr_scores([words], [codes], [[0] * 10])[0] != pytest.approx(want, abs=1e-3)  # cuts count
    for bad in (([words], [codes, codes], [wof]), ([words], [codes], [wof[:-1]]),
                       ([words], [codes], [[0, 1, 0] + wof[3:]]), ([words], [codes], [wof[:-1] + [3]]),
                       ([[]], [codes], [wof])):
        with pytest.raises(ValueError, match="word|frames"):
            pipe.aligned_asr_scores(*bad)


def test_text_scorer_incremental_equals_a_full_forward(pipe_with_reader):
    pipe = pipe_with_reader[1]
    pipe.fusion = FusionConfig(lm_dtype="float32")
    sc = pipe.text_scorer()
    assert next(sc.model.parameters()).dtype == torch.float32
    texts = ["i saw", "i saw the", "i saw the cat", "a dog", "i saw a dog"]
    sc.prefetch(texts[:1] + texts[3:4])
    got = sc(texts)
    base = sc.model
    V = pipe.layout.base_vocab
    for t, g in zip(texts, got):  # one forward over the whole text, no cache
        words = t.split()
        ids = [sc.start_id] + [i for k, w in enumerate(words) for i in sc._word_ids(" ".join(words[:k]), w)]
        with torch.no_grad():
            lp = base(input_ids=torch.tensor([ids])).logits[0, :, :V].float().log_softmax(-1)
        assert g == pytest.approx(sum(float(lp[j - 1, ids[j]]) for j in range(1, len(ids))), abs=1e-3)
    assert sc._word_ids("", "i") == pipe.tokenizer("I", add_special_tokens=False).input_ids
    # the scorer's model is the backbone without the adapter: its text logits equal the adapter-disabled LM's
    ids = torch.tensor([[sc.start_id, 5, 6, 7]])
    with torch.no_grad(), pipe.lm.disable_adapter():
        ref = pipe.lm(input_ids=ids).logits[..., :V]
    with torch.no_grad():
        assert torch.allclose(base(input_ids=ids).logits[..., :V], ref, atol=1e-5)


def test_text_scorer_batches_each_word_level_and_bf16_agrees(pipe_with_reader):
    """Texts whose first words are not scored yet cost one forward per word count (all siblings in one batch),
    not one per text; the bfloat16 copy scores within a few hundredths of a nat of float32."""
    pipe = pipe_with_reader[1]
    pipe.fusion = FusionConfig(lm_dtype="float32")
    sc = pipe.text_scorer()
    texts = [f"{a} {b} {c}" for a in ("i", "a") for b in ("saw", "had") for c in ("it", "the", "one")]  # 12
    sc.reset()
    sc.forwards = 0
    got = sc(texts)
    assert sc.forwards == 4  # the start, then the 2 first words, the 4 pairs and the 12 texts: a batch each
    sc.reset()
    one = [sc([t])[0] for t in texts]  # one at a time, from scratch each: the same scores
    assert got == pytest.approx(one, abs=1e-4)
    assert sc.step is not None  # a Llama backbone: the hand-written forward; transformers' gives the same
    plain = TextScorer(sc.model, pipe.tokenizer, base_only=False, vocab=pipe.layout.base_vocab)
    assert plain.step is None and plain(texts) == pytest.approx(got, abs=1e-4)
    k_step, k_plain = sc.state[texts[-1]][1][-1][0], plain.state[texts[-1]][1][-1][0]
    assert k_step.shape == k_plain.shape and torch.allclose(k_step, k_plain, atol=1e-4)
    pipe.fusion = FusionConfig(lm_dtype="bfloat16")
    bf = pipe.text_scorer()
    assert next(bf.model.parameters()).dtype == torch.bfloat16 and bf is not sc
    lo = bf(texts)
    assert lo == pytest.approx(got, abs=0.05 * len(texts[0].split()) + 0.02 * max(abs(g) for g in got))
    assert all(s < 0 for s in lo)
    with pytest.raises(ValueError, match="lm_dtype"):
        FusionConfig(lm_dtype="float16")
    assert FusionConfig().dtype("meta") == torch.float32 and FusionConfig(lm_dtype="float32").dtype() == torch.float32


def test_pipeline_fused_method(pipe_with_reader, tmp_path, monkeypatch):
    pipe = pipe_with_reader[1]
    sr = pipe.sample_rate
    wav = torch.randn(1, sr // 2) * 0.1
    (tmp_path / "words.txt").write_text("the\ncat\nsat\na\n")
    pipe.fusion = FusionConfig(beam=4, lexicon=str(tmp_path / "words.txt"))
    out = pipe.asr(wav, sr, method="fused")
    assert isinstance(out, str) and set(out.split()) <= {"the", "cat", "sat", "a"}
    assert pipe.asr(wav, sr, method="fused") == out  # deterministic
    # the LM's caches hold what the beam can extend (plus the final texts), not every text ever scored
    long = fused_transcribe(_frames(_spell("the cat sat a cat " * 6)), BLANK, pipe.text_scorer(), pipe.lexicon(),
                            pipe.fusion)
    assert long == ("the cat sat a cat " * 6).strip()
    assert len(pipe.text_scorer().state) <= 2 * pipe.fusion.beam + 1
    # rescoring: the n-best re-ranked by the speech LM's aligned ASR log p; weight 0 keeps fused ASR's order
    from slm.fused_asr import fused_nbest as nbest

    logp = _frames(_spell("the ") + [{"c": 0.4, "s": 0.4, "-": 0.2}, {"-": 0.95}] + _spell("at a cat"))
    codes = torch.randint(0, pipe.layout.n_semantic, (logp.shape[0] // pipe.reader.cfg.upsample,))
    monkeypatch.setattr(pipe.reader, "log_probs", lambda c: logp)  # a reader that spells "the [cs]at a cat"
    hyps = nbest(logp, pipe.reader.blank, pipe.text_scorer(), pipe.lexicon(), pipe.fusion)
    assert {h.text for h in hyps} == {"the cat a cat", "the sat a cat"}
    pipe.fusion = FusionConfig(beam=4, lexicon=str(tmp_path / "words.txt"), rescore_weight=1e6, rescore_n=2)
    ranked = pipe._rescore(codes, logp, hyps)
    assert [h.text for h, _ in sorted(ranked, key=lambda x: -x[0].score)] == [h.text for h in hyps]
    assert ranked[0][1] == max(a for _, a in ranked)  # a huge weight: the speech LM's choice
    assert pipe.asr_tokens(codes, method="fused") == ranked[0][0].text
    pipe.fusion = FusionConfig(beam=4, lexicon="missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        pipe.asr(wav, sr, method="fused")


def test_model_dir_fusion_settings(pipe_with_reader, tmp_path):
    import shutil

    from slm.pipeline import SpeechPipeline

    d = tmp_path / "m"
    shutil.copytree(pipe_with_reader[0], d)
    (d / "lexicon.txt").write_text("hello\nworld\n")
    cfg = json.loads((d / "slm_config.json").read_text())
    cfg.update(asr_method="fused", asr_fused={"beam": 3, "lm_weight": 0.2, "lexicon": "lexicon.txt", "lm_lag": 0})
    (d / "slm_config.json").write_text(json.dumps(cfg))
    p = SpeechPipeline.from_pretrained(d)
    assert p.asr_method == "fused" and p.fusion.beam == 3 and p.fusion.lm_weight == 0.2 and p.fusion.lm_lag == 0
    assert p.lexicon().words == ["hello", "world"]  # relative to the model dir
    out = p.asr(torch.randn(1, p.sample_rate // 2) * 0.1, p.sample_rate)
    assert set(out.split()) <= {"hello", "world"}


def test_cli_asr_fused_overrides(pipe_with_reader, tmp_path, capsys):
    """`slm asr --method fused` takes --lexicon, --lm-dtype and --lm-lag; a bad dtype is refused by the parser, a
    negative lag by the settings."""
    import soundfile as sf

    from slm.cli import main
    from slm.cli.lm import _asr_pipe

    sr = pipe_with_reader[1].sample_rate
    wav = tmp_path / "a.wav"
    sf.write(wav, (torch.randn(sr // 2) * 0.1).numpy(), sr)
    (tmp_path / "words.txt").write_text("the\ncat\nsat\n")
    outs = []
    for dtype in ("float32", "bfloat16"):
        rc = main(["asr", str(wav), "--model", str(pipe_with_reader[0]), "--method", "fused", "--lexicon",
                   str(tmp_path / "words.txt"), "--lm-dtype", dtype])
        out, err = capsys.readouterr()
        assert rc in (0, None), err
        outs.append(out.strip())
    assert all(set(o.split()) <= {"the", "cat", "sat"} for o in outs)
    import argparse

    args = argparse.Namespace(model=str(pipe_with_reader[0]), int8=False, lexicon=None, lm_weight=None,
                              lm_dtype="bfloat16", lm_lag=None)
    assert _asr_pipe(args).fusion.lm_dtype == "bfloat16" and _asr_pipe(args).fusion.lm_lag == 8
    args.lm_lag = 4
    assert _asr_pipe(args).fusion.lm_lag == 4
    rc = main(["asr", str(wav), "--model", str(pipe_with_reader[0]), "--method", "fused", "--lexicon",
               str(tmp_path / "words.txt"), "--lm-lag", "3"])
    out, err = capsys.readouterr()
    assert rc in (0, None) and set(out.split()) <= {"the", "cat", "sat"}, err
    rc = main(["asr", str(wav), "--model", str(pipe_with_reader[0]), "--method", "fused", "--lm-lag", "-2"])
    out, err = capsys.readouterr()
    assert rc not in (0, None) and "lm_lag must be >= 0" in out + err and not out.strip().startswith("the")
    with pytest.raises(SystemExit):
        main(["asr", str(wav), "--model", str(pipe_with_reader[0]), "--lm-dtype", "float16"])


def test_text_scorer_adapted_uses_the_speech_lm_and_its_step(pipe_with_reader):
    """text_lm "adapted": the merged speech LM scores, through its own FusedStep, what one full forward gives."""
    pipe = pipe_with_reader[1]
    pipe.fusion = FusionConfig(text_lm="adapted")
    sc = pipe.text_scorer()
    assert sc.model is pipe.infer_lm and sc.step is pipe.infer_lm.fused_step is not None
    V = pipe.layout.base_vocab
    for t, g in zip(["i saw", "i saw the cat"], sc(["i saw", "i saw the cat"])):
        words = t.split()
        ids = [sc.start_id] + [i for k, w in enumerate(words) for i in sc._word_ids(" ".join(words[:k]), w)]
        with torch.no_grad():
            lp = pipe.infer_lm(input_ids=torch.tensor([ids])).logits[0, :, :V].float().log_softmax(-1)
        assert g == pytest.approx(sum(float(lp[j - 1, ids[j]]) for j in range(1, len(ids))), abs=1e-3)
