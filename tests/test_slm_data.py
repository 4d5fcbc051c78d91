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
