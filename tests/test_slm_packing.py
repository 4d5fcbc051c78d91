"""Packed rows: each example attends only to itself (block-diagonal causal mask, positions from 0)."""
import pytest
import torch

from slm.lm_data import TaskMix, collate, load_tokens, make_examples, pack
from slm.packing import block_causal_mask, lm_inputs, position_ids
from slm.templates import IGNORE
from tests.test_slm_helpers import tiny_codec, tiny_token_dir, tiny_train_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from slm.train import SpeechLM, build

    codec = tiny_codec("sacodec")
    cfg = tiny_train_config(tmp_path_factory.mktemp("pk"))
    torch.manual_seed(0)
    bb, layout, lm, head = build(cfg, codec)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter, so the test goes through it
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    utts = load_tokens(tiny_token_dir("sacodec"), split="train")
    ex = make_examples(utts, bb.tokenizer, layout, TaskMix(tts=0.5, asr=0.3, continue_=0.2), seed=0, epoch=0)
    model = SpeechLM(lm, head, 1.0, True).eval()
    return bb.tokenizer, layout, utts, ex, model, head.cfg.frame_len


def _collate(setup, packs):
    tok, layout, utts, _, _, frame_len = setup
    return collate(packs, utts, tok.pad_token_id, frame_len, layout.semantic_offset)


def test_positions_and_mask():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1, -1]])
    assert position_ids(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    m = block_causal_mask(seg)[0, 0]
    assert m.shape == (7, 7) and m.dtype == torch.bool
    assert m[4].tolist() == [False, False, False, True, True, False, False]  # B sees only B, causally
    assert m[2].tolist() == [True, True, True, False, False, False, False]
    assert bool(m.any(-1).all())  # no empty row (padding attends to padding): no NaN from SDPA
    f = block_causal_mask(seg, torch.float32)[0, 0]
    assert f[4, 3] == 0 and f[4, 2] == torch.finfo(torch.float32).min


def test_collate_records_segments(setup):
    _, _, _, ex, _, _ = setup
    b = _collate(setup, [[ex[0], ex[1]], [ex[2]]])
    n0, n1, n2 = len(ex[0][0]), len(ex[1][0]), len(ex[2][0])
    assert b.segment_ids[0, :n0].eq(0).all() and b.segment_ids[0, n0 : n0 + n1].eq(1).all()
    assert b.segment_ids[1, :n2].eq(0).all() and b.segment_ids[1, n2:].eq(-1).all()
    assert int(b.labels[0, n0]) == IGNORE  # B's first token is never a target of A's last state
    assert pack(ex, 10_000, one_per_row=True) == [[e] for e in ex]
    # the head reads the state before each semantic token: always inside that token's own example
    packed = _collate(setup, pack(ex, 4 * max(len(e) for e, _ in ex)))
    pos = packed.head_mask.nonzero()
    here, nxt = packed.segment_ids[pos[:, 0], pos[:, 1]], packed.segment_ids[pos[:, 0], pos[:, 1] + 1]
    assert len(pos) and bool((here == nxt).all()) and bool((here >= 0).all())
    assert int((packed.segment_ids.amax(-1) > 0).sum()) > 0  # some row really holds several examples


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_example_sees_only_itself(setup, impl):
    _, _, _, ex, model, _ = setup
    lm = model.lm
    lm.base_model.model.set_attn_implementation(impl)
    try:
        a, b_ = ex[0], ex[1]
        na, nb = len(a[0]), len(b_[0])
        batch = _collate(setup, [[a, b_], [ex[2]]])  # second row makes the first one padded-batch company
        with torch.no_grad():
            out = lm(**lm_inputs(lm, batch.input_ids, batch.attention_mask, batch.segment_ids, "block"),
                     output_hidden_states=True)
            alone = lm(input_ids=b_[0].input_ids[None], output_hidden_states=True)
            concat = lm(**lm_inputs(lm, batch.input_ids, batch.attention_mask, batch.segment_ids, "concat"))
        packed_b = out.logits[0, na : na + nb]
        torch.testing.assert_close(packed_b, alone.logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.hidden_states[-1][0, na : na + nb], alone.hidden_states[-1][0], atol=1e-4,
                                   rtol=1e-4)
        assert torch.isfinite(out.logits).all()  # padded rows too
        # the old behaviour (causal over the row) does differ: the test can fail
        assert (concat.logits[0, na : na + nb] - alone.logits[0]).abs().max() > 1e-3
    finally:
        lm.base_model.model.set_attn_implementation("sdpa")


def test_packed_loss_is_token_weighted_mean(setup):
    _, _, _, ex, model, _ = setup
    items = ex[:4]
    with torch.no_grad():
        packed = model(_collate(setup, [items[:3], items[3:]]))
        alone = [model(_collate(setup, [[it]])) for it in items]
    n_lm = [int((it[0].labels[1:] != IGNORE).sum()) for it in items]  # targets after the causal shift
    n_head = [it[0].semantic_pos.numel() for it in items]
    want_lm = sum(n * float(o["lm/loss"]) for n, o in zip(n_lm, alone)) / sum(n_lm)
    want_head = sum(n * float(o["head/loss"]) for n, o in zip(n_head, alone)) / sum(n_head)
    assert float(packed["lm/loss"]) == pytest.approx(want_lm, rel=1e-4)
    assert float(packed["head/loss"]) == pytest.approx(want_head, rel=1e-4)


def test_config_rejects_unknown_packing(tmp_path):
    from slm.train import TrainConfig

    with pytest.raises(ValueError, match="packing"):
        TrainConfig(packing="diagonal")
    f = tmp_path / "c.yaml"
    f.write_text("packing: none\n")
    assert TrainConfig.from_yaml(f).packing == "none"
