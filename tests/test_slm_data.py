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
    assert float(model(b)["loss"]) < first
