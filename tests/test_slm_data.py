"""LM data: token dirs, task mixing, packing, collation for the acoustic head."""
import pytest
import torch

from slm.lm_data import TaskMix, collate, load_tokens, make_examples, pack
from slm.templates import IGNORE
from tests.test_slm_helpers import tiny_backbone_dir, tiny_token_dir


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoTokenizer

    from slm.layout import TokenLayout

    tok = AutoTokenizer.from_pretrained(tiny_backbone_dir())
    utts = load_tokens(tiny_token_dir("sacodec"), split="train")
    layout = TokenLayout.for_tokenizer(tok, 16)
    layout.extend_tokenizer(tok)
    return tok, layout, utts


def test_load_tokens_frames(setup):
    _, _, utts = setup
    assert len(utts) == 5 and all(u.split == "train" for u in utts)
    u = utts[0]
    assert u.acoustic.shape == (u.semantic.numel(), 4)  # tiny sacodec: r=4, Ka=1


def test_task_mix_is_seeded_and_follows_ratios(setup):
    tok, layout, utts = setup
    only_asr = make_examples(utts, tok, layout, TaskMix(tts=0, asr=1, continue_=0), seed=0, epoch=0)
    assert {e.task for e, _ in only_asr} == {"asr"}
    a = make_examples(utts, tok, layout, TaskMix(), seed=3, epoch=1)
    b = make_examples(utts, tok, layout, TaskMix(), seed=3, epoch=1)
    assert [(e.task, i) for e, i in a] == [(e.task, i) for e, i in b]
    c = make_examples(utts * 10, tok, layout, TaskMix(), seed=3, epoch=2)
    assert len({e.task for e, _ in c}) == 3


def test_pack_and_collate(setup):
    tok, layout, utts = setup
    ex = make_examples(utts, tok, layout, TaskMix(), seed=0, epoch=0)
    longest = max(len(e) for e, _ in ex)
    packs = pack(ex, max_len=2 * longest)
    assert sum(len(p) for p in packs) == len(ex) and len(packs) < len(ex)
    assert all(sum(len(e) for e, _ in p) <= 2 * longest for p in packs)
    assert pack(ex, max_len=3) == []  # nothing fits: dropped, not truncated
    b = collate(packs, utts, tok.pad_token_id, 4, layout.semantic_offset)
    assert b.input_ids.shape == b.labels.shape == b.head_mask.shape
    # the head reads the state *before* each semantic token, and that token's code is its input
    pos = b.head_mask.nonzero()
    nxt = b.input_ids[pos[:, 0], pos[:, 1] + 1]
    assert bool(layout.is_semantic(nxt).all())
    assert torch.equal(b.head_sem[b.head_mask], nxt - layout.semantic_offset)
    assert bool((b.head_codes[b.head_mask] >= 0).all()) and bool((b.head_codes[~b.head_mask] == IGNORE).all())
    assert int(b.head_mask.sum()) == sum(u.semantic.numel() for u in utts)


def _with_words(u):
    """The utterance with made-up word times spread over its duration (the tiny token dir has none)."""
    from dataclasses import replace

    words = u.text.rstrip(".").split()
    dur = u.semantic.numel() / 12.5
    step = dur / len(words)
    return replace(u, words=[[i * step, (i + 0.8) * step, w] for i, w in enumerate(words)], duration=dur)


def test_interleave_example_alternates_text_and_the_frames_of_its_words(setup):
    import random

    from slm.templates import interleave_example, parse

    tok, layout, utts = setup
    u = _with_words(max(utts, key=lambda x: len(x.text.split())))
    n, seen = u.semantic.numel(), set()
    for seed in range(30):
        ex = interleave_example(tok, layout, u.words, u.semantic, u.duration, random.Random(seed), u.acoustic)
        assert ex.task == "interleave" and int(ex.input_ids[0]) == layout.special_id("interleave")
        assert ex.labels[0] == IGNORE and torch.equal(ex.labels[1:], ex.input_ids[1:])  # all of it is learned
        assert int((ex.input_ids == layout.audio_start).sum()) == int((ex.input_ids == layout.audio_end).sum())
        sem = layout.is_semantic(ex.input_ids)
        assert torch.equal(sem.nonzero().flatten(), ex.semantic_pos)
        codes = layout.ids_to_codes(ex.input_ids[sem])
        # speech spans are runs of the utterance's frames, in order, with the matching acoustic rows
        frames = [next(j for j in range(n) if torch.equal(ex.acoustic[k], u.acoustic[j]) and
                       int(u.semantic[j]) == int(codes[k])) for k in range(len(codes))] if len(codes) else []
        assert frames == sorted(frames)
        p = parse(ex.input_ids, layout, tok)
        assert p.task == "interleave" and torch.equal(p.codes, codes) and p.complete
        text_words = set(p.text.split())
        assert text_words <= set(u.text.rstrip(".").split())
        seen.add((bool(len(codes)), bool(text_words)))
    assert (True, True) in seen  # both modalities in one sequence
    assert interleave_example(tok, layout, u.words[:1], u.semantic, u.duration, random.Random(0)) is None


def test_interleave_task_mix_falls_back_and_needs_the_special(setup):
    from slm.layout import TokenLayout

    tok, layout, utts = setup
    mix = TaskMix(tts=0, asr=0, continue_=0, interleave=1)
    ex = make_examples([_with_words(u) for u in utts] + utts, tok, layout, mix, seed=0, epoch=0)
    tasks = {i: e.task for e, i in ex}
    assert all(tasks[i] == "interleave" for i in range(len(utts)))  # with word times
    assert all(tasks[len(utts) + i] == "tts" for i in range(len(utts)))  # without: TTS instead
    old = TokenLayout(layout.base_vocab, layout.n_semantic)  # a model dir from before the task
    with pytest.raises(ValueError, match="no <\\|interleave\\|>"):
        make_examples(utts, tok, old, mix, seed=0, epoch=0)


def test_interleaved_batch_trains_lm_and_head(setup, tmp_path):
    from slm.train import BatchSource, SpeechLM, build
    from tests.test_slm_helpers import tiny_codec, tiny_train_config

    _, _, utts = setup
    cfg = tiny_train_config(tmp_path, batch_size=2, tasks={"tts": 0, "asr": 0, "continue": 0, "interleave": 1})
    bb, layout, lm, head = build(cfg, tiny_codec())
    src = BatchSource([_with_words(u) for u in utts], bb.tokenizer, layout, TaskMix.from_dict(cfg.tasks), cfg,
                      head.cfg.frame_len)
    b = src(0)
    assert b.head_mask.any() and (b.input_ids == layout.special_id("interleave")).any()
    model = SpeechLM(lm, head, 1.0, True, cfg.packing, text_vocab=layout.base_vocab)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(6):
        out = model(b)
        first = first if first is not None else float(out["loss"].detach())
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(out["lm/loss_text"]) and torch.isfinite(out["lm/loss_audio"])
    with torch.no_grad():
        assert float(model(b)["loss"]) < first


def test_word_frames_gives_every_word_frames_in_order():
    from slm.templates import word_frames

    words = [[0.0, 0.3, "a"], [0.4, 0.9, "b"], [1.0, 1.6, "c"]]
    assert word_frames(words, 20, 2.0) == [0, 4, 10, 20]  # starts at 0.4 s and 1.0 s of 2 s over 20 frames
    # word times squeezed together (or past the end) still give each word at least one frame
    assert word_frames([[0, 0, "a"], [0, 0, "b"], [5, 5, "c"]], 3, 1.0) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least 3 frames"):
        word_frames(words, 2, 2.0)


def test_tts_aligned_example_puts_each_word_before_its_frames(setup):
    from slm.templates import parse, tts_aligned_example, word_frames, word_ids

    tok, layout, utts = setup
    u = _with_words(max(utts, key=lambda x: len(x.text.split())))
    ex = tts_aligned_example(tok, layout, u.text, u.words, u.semantic, u.duration, u.acoustic)
    ids, labels = ex.input_ids, ex.labels
    a, b = int((ids == layout.audio_start).nonzero()[0]), int((ids == layout.audio_end).nonzero()[0])
    assert b == len(ids) - 1 and ex.task == "tts"
    sem = layout.is_semantic(ids)
    assert torch.equal(sem.nonzero().flatten(), ex.semantic_pos) and torch.equal(ex.acoustic, u.acoustic)
    assert torch.equal(layout.ids_to_codes(ids[sem]), u.semantic)
    # inside the span: word k's tokens, then exactly the frames word_frames gives it
    cuts, span, p = word_frames(u.words, u.semantic.numel(), u.duration), ids[a + 1 : b].tolist(), 0
    for k, w in enumerate(word_ids(tok, [w[2] for w in u.words])):
        assert span[p : p + len(w)] == w
        assert labels[a + 1 + p] == (w[0] if k else IGNORE)  # learned: when to move on to word k (not word 1)
        assert bool((labels[a + 2 + p : a + 1 + p + len(w)] == IGNORE).all())  # the rest of a word is fed
        p += len(w)
        n = cuts[k + 1] - cuts[k]
        assert n >= 1 and bool(layout.is_semantic(torch.tensor(span[p : p + n])).all()) and labels[a + 1 + p] == ids[a + 1 + p]
        p += n
    assert p == len(span) and labels[b] == layout.audio_end and bool((labels[: a + 1] == IGNORE).all())
    parsed = parse(ids, layout, tok)
    assert parsed.text == u.text and torch.equal(parsed.codes, u.semantic)
    assert parsed.extra["words"] == " ".join(w[2] for w in u.words)
    # with a voice prompt its codes come first, unaligned and not learned
    pr = utts[0]
    ex2 = tts_aligned_example(tok, layout, u.text, u.words, u.semantic, u.duration, None, pr.text, pr.semantic)
    a2 = int((ex2.input_ids == layout.audio_start).nonzero()[0])
    n = pr.semantic.numel()
    assert torch.equal(layout.ids_to_codes(ex2.input_ids[a2 + 1 : a2 + 1 + n]), pr.semantic)
    assert bool((ex2.labels[: a2 + 1 + n] == IGNORE).all()) and ex2.semantic_pos.numel() == u.semantic.numel()
    # no word times, or fewer frames than words: no aligned example
    assert tts_aligned_example(tok, layout, u.text, [], u.semantic, u.duration) is None
    assert tts_aligned_example(tok, layout, u.text, u.words, u.semantic[: len(u.words) - 1], u.duration) is None


def test_asr_aligned_example_puts_each_word_after_its_frames(setup):
    from slm.templates import asr_aligned_example, parse, word_frames, word_ids

    tok, layout, utts = setup
    u = _with_words(max(utts, key=lambda x: len(x.text.split())))
    ex = asr_aligned_example(tok, layout, u.words, u.semantic, u.duration, u.acoustic)
    ids, labels = ex.input_ids, ex.labels
    assert ex.task == "asr" and ids[0] == layout.special_id("asr") and ids[1] == layout.audio_start
    assert int(ids[-1]) == layout.audio_end and labels[-1] == layout.audio_end
    sem = layout.is_semantic(ids)
    assert torch.equal(sem.nonzero().flatten(), ex.semantic_pos) and torch.equal(layout.ids_to_codes(ids[sem]), u.semantic)
    cuts, p = word_frames(u.words, u.semantic.numel(), u.duration), 2
    for k, w in enumerate(word_ids(tok, [w[2] for w in u.words])):
        n = cuts[k + 1] - cuts[k]
        assert bool(layout.is_semantic(ids[p : p + n]).all())
        # frames are learned (the model says "not yet a word" by predicting the next frame), but not the first
        assert torch.equal(labels[p + (k == 0) : p + n], ids[p + (k == 0) : p + n]) and (k or labels[p] == IGNORE)
        p += n
        assert ids[p : p + len(w)].tolist() == w and labels[p : p + len(w)].tolist() == w  # then the word, learned
        p += len(w)
    assert p == len(ids) - 1
    parsed = parse(ids, layout, tok)
    assert parsed.task == "asr" and torch.equal(parsed.codes, u.semantic) and parsed.complete
    assert parsed.text == parsed.extra["words"] == " ".join(w[2] for w in u.words)
    assert asr_aligned_example(tok, layout, [], u.semantic, u.duration) is None
    assert asr_aligned_example(tok, layout, u.words, u.semantic[: len(u.words) - 1], u.duration) is None


def test_asr_aligned_share_of_the_task_mix(setup):
    tok, layout, utts = setup
    with_words = [_with_words(u) for u in utts]

    def aligned(ex):
        ids = ex.input_ids
        b = int((ids == layout.audio_end).nonzero()[0])
        return bool(layout.is_text(ids[2:b]).any())

    mix = TaskMix(tts=0, asr=1, continue_=0, asr_aligned=1)
    ex = make_examples(with_words, tok, layout, mix, seed=0, epoch=0)
    assert {e.task for e, _ in ex} == {"asr"} and all(aligned(e) for e, _ in ex)
    assert not any(aligned(e) for e, _ in make_examples(utts, tok, layout, mix, seed=0, epoch=0))  # no word times
    # asr_aligned=0: exactly the data of before the option existed (resume stays exact)
    plain = TaskMix(tts=0.5, asr=0.5, continue_=0)
    a = make_examples(with_words, tok, layout, plain, seed=1, epoch=0)
    b = make_examples(utts, tok, layout, plain, seed=1, epoch=0)
    assert [(torch.equal(x.input_ids, y.input_ids), i) for (x, i), (y, _) in zip(a, b)] == [(True, i) for _, i in a]


def test_tts_aligned_share_of_the_task_mix(setup):
    tok, layout, utts = setup
    with_words = [_with_words(u) for u in utts]

    def aligned(ex):
        ids = ex.input_ids
        a, b = int((ids == layout.audio_start).nonzero()[0]), int((ids == layout.audio_end).nonzero()[0])
        return bool(layout.is_text(ids[a + 1 : b]).any())

    mix = TaskMix(tts=1, asr=0, continue_=0, prompt_prob=0, tts_aligned=1)
    assert all(aligned(e) for e, _ in make_examples(with_words, tok, layout, mix, seed=0, epoch=0))
    # without word times the plain form; with tts_aligned=0 the data are those of before the option existed
    assert not any(aligned(e) for e, _ in make_examples(utts, tok, layout, mix, seed=0, epoch=0))
    plain = TaskMix(tts=1, asr=0, continue_=0)
    a = make_examples(with_words, tok, layout, plain, seed=1, epoch=0)
    b = make_examples(utts, tok, layout, plain, seed=1, epoch=0)
    assert [(torch.equal(x.input_ids, y.input_ids), i) for (x, i), (y, _) in zip(a, b)] == [(True, i) for _, i in a]
    half = make_examples(with_words * 20, tok, layout, TaskMix(tts=1, asr=0, continue_=0, tts_aligned=0.5), 0, 0)
    share = sum(aligned(e) for e, _ in half) / len(half)
    assert 0.3 < share < 0.7


def test_aligned_tts_batch_trains_and_the_model_dir_flag(setup, tmp_path):
    from slm.train import BatchSource, SpeechLM, build, speaks_aligned
    from tests.test_slm_helpers import tiny_codec, tiny_train_config

    _, _, utts = setup
    cfg = tiny_train_config(tmp_path, batch_size=2, tasks={"tts": 1, "asr": 0, "continue": 0, "tts_aligned": 1})
    timed = [_with_words(u) for u in utts]
    assert speaks_aligned(cfg, timed) and not speaks_aligned(cfg, utts)  # no word times: nothing aligned learned
    assert not speaks_aligned(tiny_train_config(tmp_path), timed)
    bb, layout, lm, head = build(cfg, tiny_codec())
    b = BatchSource(timed, bb.tokenizer, layout, TaskMix.from_dict(cfg.tasks), cfg, head.cfg.frame_len)(0)
    # text tokens inside audio spans carry labels (when to move on to the next word), and the head still
    # reads the state before every semantic token
    inside = torch.zeros_like(b.input_ids, dtype=torch.bool)
    for r in range(b.input_ids.shape[0]):
        open_ = False
        for t in range(b.input_ids.shape[1]):
            i = int(b.input_ids[r, t])
            open_ = (open_ or i == layout.audio_start) and i != layout.audio_end
            inside[r, t] = open_ and i < layout.base_vocab
    assert bool((b.labels[inside] != IGNORE).any()) and bool((b.labels[inside] == IGNORE).any())
    nxt = b.input_ids[:, 1:][b.head_mask[:, :-1]]
    assert bool(layout.is_semantic(nxt).all())
    model = SpeechLM(lm, head, 1.0, True, cfg.packing, text_vocab=layout.base_vocab)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = float(model(b)["loss"].detach())
    for _ in range(6):
        model(b)["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert float(model(b)["loss"].detach()) < first


def test_word_phones_follow_the_word_starts():
    """Each phone goes to the word whose span (its start to the next word's) holds the phone's midpoint, the
    split word_frames makes of the frames; pauses are left out."""
    from slm.templates import with_phones, word_phones

    words = [[0.0, 0.3, "a"], [0.4, 0.9, "b c"], [1.0, 1.6, "d"]]
    phones = [[0.0, 0.05, "sil"], [0.05, 0.2, "ah"], [0.2, 0.45, "b"], [0.45, 0.7, "iy"], [0.7, 0.95, "s"],
              [0.95, 1.05, "iy"], [1.05, 1.5, "d"], [1.5, 1.6, "sil"]]
    assert word_phones(words, phones) == [["ah", "b"], ["iy", "s"], ["iy", "d"]]
    assert with_phones(words, phones) == [[0.0, 0.3, "a", ["ah", "b"]], [0.4, 0.9, "b c", ["iy", "s"]],
                                          [1.0, 1.6, "d", ["iy", "d"]]]
    assert with_phones(words, None) is words and with_phones(None, phones) is None and with_phones([], phones) == []


def _with_phones(u):
    from dataclasses import replace

    u = _with_words(u)
    return replace(u, words=[[*w, ["k", "ae", "t"][: 1 + i % 3]] for i, w in enumerate(u.words)])


def test_tts_phones_example_feeds_each_words_phones_before_its_frames(setup):
    """The phone-bridged aligned TTS form: each word's tokens are followed by its phones, fed and never
    learned; frames, their labels and when-to-move-on are those of the plain aligned form."""
    from slm.templates import IGNORE, parse, phone_text, tts_aligned_example, word_ids

    tok, layout, utts = setup
    u = _with_phones(max(utts, key=lambda x: len(x.text.split())))
    plain = tts_aligned_example(tok, layout, u.text, u.words, u.semantic, u.duration, u.acoustic)
    ex = tts_aligned_example(tok, layout, u.text, u.words, u.semantic, u.duration, u.acoustic, phones=True)
    assert torch.equal(tts_aligned_example(tok, layout, u.text, u.words, u.semantic, u.duration, u.acoustic).input_ids,
                       plain.input_ids)  # entries with phones, phones=False: the plain aligned form
    assert torch.equal(ex.input_ids[ex.semantic_pos], plain.input_ids[plain.semantic_pos])
    assert torch.equal(ex.labels[ex.semantic_pos], plain.labels[plain.semantic_pos])
    ws = word_ids(tok, [w[2] for w in u.words], [w[3] for w in u.words])
    assert all(w[: len(p)] == p for w, p in zip(ws, word_ids(tok, [w[2] for w in u.words])))  # the word, then...
    assert all(len(w) > len(p) for w, p in zip(ws, word_ids(tok, [w[2] for w in u.words])))  # ...its phones
    a = int((ex.input_ids == layout.audio_start).nonzero()[0])
    span, p = ex.input_ids[a + 1 :].tolist(), 0
    for k, w in enumerate(ws):
        assert span[p : p + len(w)] == w and ex.labels[a + 1 + p] == (w[0] if k else IGNORE)
        assert bool((ex.labels[a + 2 + p : a + 1 + p + len(w)] == IGNORE).all())  # phones are fed, not learned
        p += len(w)
        while layout.is_semantic(torch.tensor(span[p])):
            p += 1
    assert span[p:] == [layout.audio_end]
    parsed = parse(ex.input_ids, layout, tok)
    assert parsed.text == u.text and torch.equal(parsed.codes, u.semantic)
    assert phone_text(["hh", "ah"]) == " ( hh ah )"
    with pytest.raises(ValueError, match="phone lists"):
        word_ids(tok, ["a", "b"], [["ah"]])


def test_tts_phones_share_of_the_task_mix(setup, tmp_path):
    from slm.templates import phone_text
    from slm.train import speaks_phones, speech_forms
    from tests.test_slm_helpers import tiny_train_config

    tok, layout, utts = setup
    timed, phoned = [_with_words(u) for u in utts], [_with_phones(u) for u in utts]
    mix = TaskMix(tts=1, asr=0, continue_=0, prompt_prob=0, tts_aligned=1, tts_phones=1)
    with_ph = make_examples(phoned, tok, layout, mix, seed=0, epoch=0)
    without = make_examples(timed, tok, layout, mix, seed=0, epoch=0)  # no phones in the entries: plain aligned
    assert [i for _, i in with_ph] == [i for _, i in without]
    for (x, i), (y, _) in zip(with_ph, without):  # each word's phones, and nothing else, come in addition
        extra = sum(len(tok(phone_text(w[3]), add_special_tokens=False)["input_ids"]) for w in phoned[i].words)
        assert len(x) - len(y) == extra > 0
    # tts_phones=0: exactly the aligned data of before the option existed (resume stays exact)
    old = TaskMix(tts=1, asr=0, continue_=0, tts_aligned=0.5)
    a = make_examples(phoned, tok, layout, old, seed=2, epoch=0)
    b = make_examples(timed, tok, layout, old, seed=2, epoch=0)
    assert [(torch.equal(x.input_ids, y.input_ids), i) for (x, i), (y, _) in zip(a, b)] == [(True, i) for _, i in a]
    cfg = tiny_train_config(tmp_path, tasks={"tts": 1, "asr": 0, "continue": 0, "tts_aligned": 1, "tts_phones": 1})
    assert speaks_phones(cfg, phoned) and not speaks_phones(cfg, timed)
    assert speech_forms(cfg, phoned) == {"tts_aligned": True, "asr_aligned": False, "tts_phones": True}
    no_aligned = tiny_train_config(tmp_path, tasks={"tts": 1, "asr": 0, "continue": 0, "tts_phones": 1})
    assert not speaks_phones(no_aligned, phoned)  # phones only exist inside the aligned form


def test_training_a_form_the_token_dir_cannot_give_is_an_error(tmp_path):
    """tts_aligned / asr_aligned without word times, tts_phones without phones or without the aligned form:
    a clear error before any training, not a run that silently trains the plain forms."""
    from slm.train import train
    from tests.test_slm_helpers import tiny_train_config

    base = {"tts": 1, "asr": 1, "continue": 0}
    for extra, msg in (({"tts_aligned": 1}, "tts_aligned > 0 .* no word times"),
                       ({"asr_aligned": 0.5}, "asr_aligned > 0 .* no word times"),
                       ({"tts_phones": 1}, "tts_phones > 0 needs tasks.tts_aligned")):
        with pytest.raises(ValueError, match=msg):
            train(tiny_train_config(tmp_path / next(iter(extra)), tasks={**base, **extra}), progress=False)
        assert not (tmp_path / next(iter(extra)) / "run" / "checkpoints").exists()
    from slm.train import _check_forms

    cfg = tiny_train_config(tmp_path, tasks={**base, "tts_aligned": 1, "tts_phones": 1})
    with pytest.raises(ValueError, match="tts_phones > 0 .* no phone times"):
        _check_forms(cfg, {"tts_aligned": True, "asr_aligned": False, "tts_phones": False}, "tokens")
    _check_forms(cfg, {"tts_aligned": True, "asr_aligned": False, "tts_phones": True}, "tokens")


def test_tokens_of_another_codec_are_refused(tmp_path):
    """A run's codec against its token dir: another acoustic depth, ids past the codebook, or a file that names
    another variant are clear errors (they used to surface as an index error mid-training, or not at all)."""
    import json
    import shutil

    from codec.contracts import CodecTokens, token_metadata
    from tests.test_slm_helpers import tiny_codec

    sac = tiny_codec("sacodec")
    assert len(load_tokens(tiny_token_dir("sacodec"), codec=sac)) == 6  # its own tokens load
    with pytest.raises(ValueError, match="does not come from this codec: 4 acoustic codes per frame .the codec makes 2"):
        load_tokens(tiny_token_dir("sacodec"), codec=tiny_codec("stacodec"))
    with pytest.raises(ValueError, match=r"semantic ids 0\.\.\d+ \(the codec has 27\)|acoustic codes per frame"):
        load_tokens(tiny_token_dir("sacodec"), codec=tiny_codec("secousticodec"))
    d = tmp_path / "toks"
    shutil.copytree(tiny_token_dir("sacodec"), d)
    t = CodecTokens.load(d / "u0.safetensors")
    bad = CodecTokens(semantic=t.semantic + 16, acoustic=t.acoustic, global_=t.global_, lengths=t.lengths)
    bad.save(d / "u0.safetensors")
    with pytest.raises(ValueError, match=r"u0.safetensors does not come from this codec: semantic ids 1[6-9]\.\.\d+ \(the codec has 16\)"):
        load_tokens(d, codec=sac)
    t.save(d / "u0.safetensors", metadata={**token_metadata(sac), "variant": "stacodec"})
    with pytest.raises(ValueError, match="u0.safetensors was encoded by another codec.*variant stacodec .this codec: sacodec"):
        load_tokens(d, codec=sac)
    assert len(load_tokens(d)) == 6  # without a codec to judge by, as before
    assert json.loads((d / "index.jsonl").read_text().splitlines()[0])["id"] == "u0"
