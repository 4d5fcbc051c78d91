"""Codec GAN trainer: loss goes down, exact resume after a kill, checkpoint retention, teacher caches."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from codec.train import CodecTrainConfig, train
from codec.train.checkpointing import list_checkpoints, prune_checkpoints
from codec.train.teacher_cache import write_item, write_meta

SR = 16000
DISC = {"mpd_channels": [4, 8], "stft_ffts": [256, 128], "stft_channels": 4, "periods": [2, 3]}


def make_corpus(root, n=6, k=16, dim=16, seconds=(1.0, 1.6)):
    """Tiny manifest of tones + toy teacher caches (features dim 16 @ 50 Hz, units k=16 @ 12.5 Hz)."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        num = int(SR * seconds[i % len(seconds)])
        t = np.arange(num) / SR
        w = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
        sf.write(root / "wavs" / f"u{i}.wav", w.astype(np.float32), SR)
        rows.append({"id": f"u{i}", "path": f"wavs/u{i}.wav", "text": f"tone number {i}", "speaker": "s",
                     "split": "train" if i < n - 2 else "valid", "duration": num / SR,
                     "words": [[0.0, 0.4, "tone"], [0.4, 0.8, "number"], [0.8, 1.0, str(i)]]})
        write_item(root / "feats", f"u{i}", {"features": torch.randn(-(-num // 320), dim, generator=g).half()})
        write_item(root / "units", f"u{i}", {"units": torch.randint(0, k, (-(-num // 1280),), generator=g).int()})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_meta(root / "feats", {"kind": "features", "teacher": "toy", "frame_rate": 50.0, "dim": dim,
                                "sample_rate": SR})
    write_meta(root / "units", {"kind": "units", "teacher": "toy", "frame_rate": 12.5, "k": k, "sample_rate": SR})
    from safetensors.torch import save_file

    save_file({"centroids": torch.randn(k, dim, generator=g)}, str(root / "km.safetensors"))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def cfg_for(corpus, out, variant="rvq", **kw):
    d = {"model": {"tiny": variant}, "out_dir": str(out), "manifest": str(corpus / "manifest.jsonl"),
         "batch_size": 2, "segment_seconds": 0.64, "steps": 4, "warmup_adv_steps": 2, "ckpt_every": 2,
         "keep_last": 2, "log_every": 1, "sample_every": 0, "discriminator": DISC,
         "teacher_features": str(corpus / "feats"), "teacher_units": str(corpus / "units"),
         "teacher_centroids": str(corpus / "km.safetensors")}
    if variant in ("rvq", "secousticodec"):
        d.update(teacher_units=None, teacher_centroids=None, teacher_features=None)
    d.update(kw)
    return CodecTrainConfig.from_dict(d)


def test_training_lowers_generator_loss(corpus, tmp_path):
    # one fixed batch (2 utterances, crops longer than the audio start at 0), no adversary: the
    # reconstruction loss must go down.
    one = tmp_path / "one"
    make_corpus(one, n=4, seconds=(0.5,))
    cfg = cfg_for(one, tmp_path / "run", steps=12, warmup_adv_steps=100, ckpt_every=100, lr=3e-3)
    r = train(cfg, progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = log[0]["mel/l1"], np.mean([x["mel/l1"] for x in log[-3:]])
    assert last < first * 0.95, (first, last)
    assert r.step == 12 and (r.export_dir / "config.json").exists()


def _state(run):
    ck = list_checkpoints(run)[-1]
    return {**load_file(str(ck / "model.safetensors")), **{f"d.{k}": v for k, v in
                                                          load_file(str(ck / "model_1.safetensors")).items()}}


@pytest.mark.parametrize("variant", ["sac", pytest.param("stacodec", marks=pytest.mark.slow)])
def test_exact_resume(corpus, tmp_path, variant):
    a = train(cfg_for(corpus, tmp_path / "a", variant, steps=4, warmup_adv_steps=1), progress=False)
    train(cfg_for(corpus, tmp_path / "b", variant, steps=2, warmup_adv_steps=1), progress=False)
    b = train(cfg_for(corpus, tmp_path / "b", variant, steps=4, warmup_adv_steps=1), resume=True, progress=False)
    assert a.step == b.step == 4
    steps_b = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps_b == [1, 2, 3, 4]  # really resumed at step 2, not retrained from scratch
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ea, eb = load_file(str(a.export_dir / "model.safetensors")), load_file(str(b.export_dir / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)  # EMA export identical too
    assert eb[next(iter(eb))].dtype == torch.float16


def test_checkpoint_retention(corpus, tmp_path):
    run = tmp_path / "r"
    train(cfg_for(corpus, run, steps=5, ckpt_every=1, keep_last=2, warmup_adv_steps=10), progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000005"]
    (run / "checkpoints" / "step_00000003").mkdir()  # an interrupted write: no trainer_state.json
    assert [p.name for p in prune_checkpoints(run, 2)] == ["step_00000003"]


def test_secousticodec_trains_with_crop_texts(corpus, tmp_path):
    r = train(cfg_for(corpus, tmp_path / "s", "secousticodec", steps=2, warmup_adv_steps=1), progress=False)
    assert (tmp_path / "s" / "text_tokenizer.model").exists() and r.step == 2
    assert any(k.startswith("align/") for k in r.losses), r.losses


def test_config_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown codec train config keys"):
        CodecTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="teacher_units"):
        train(cfg_for(corpus, tmp_path / "x", "stacodec", teacher_units=None), progress=False)


# ---- secousticodec: word-timed alignment in training, the multi-stage schedule ----------------------

def _log(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_secousticodec_word_timed_training_lowers_loss(tmp_path):
    one = make_corpus(tmp_path / "one", n=4, seconds=(0.5,))  # rows carry word times
    r = train(cfg_for(one, tmp_path / "run", "secousticodec", steps=12, warmup_adv_steps=100, ckpt_every=100,
                      lr=3e-3), progress=False)
    log = _log(tmp_path / "run")
    assert all(x["align/timed_items"] == 1.0 for x in log)  # every crop aligned by its word times
    for key in ("mel/l1", "align/contrastive"):
        first, last = log[0][key], np.mean([x[key] for x in log[-3:]])
        assert last < first * 0.95, (key, first, last)
    assert r.step == 12


def test_secousticodec_untimed_rows_fall_back_to_even_spread(tmp_path):
    c = make_corpus(tmp_path / "c", n=4)
    rows = [json.loads(x) for x in (c / "manifest.jsonl").read_text().splitlines()]
    (c / "manifest.jsonl").write_text("".join(json.dumps({**r, "words": []}) + "\n" for r in rows))
    r = train(cfg_for(c, tmp_path / "run", "secousticodec", steps=2, warmup_adv_steps=100), progress=False)
    assert all(x["align/timed_items"] == 0.0 for x in _log(tmp_path / "run")) and r.step == 2
    assert np.isfinite(r.losses["align/contrastive"])


def _acoustic_keys(state):
    return [k for k in state if k.startswith(("decoder.", "encoder.inp.", "encoder.blocks."))]


def test_secousticodec_stages_switch_paths_and_freeze_the_acoustic_side(corpus, tmp_path):
    run = tmp_path / "st"
    train(cfg_for(corpus, run, "secousticodec", steps=6, warmup_adv_steps=1, ckpt_every=2, keep_last=3,
                  semantic_stage_step=2, joint_stage_step=4), progress=False)
    log = _log(run)
    assert [x["train/stage"] for x in log] == [1, 1, 2, 2, 3, 3]  # acoustic, semantic, joint
    assert ["align/contrastive" in x for x in log] == [False, False, True, True, True, True]
    assert all("acoustic/constraint" in x for x in log)
    s2, s4, s6 = (load_file(str(p / "model.safetensors")) for p in list_checkpoints(run))
    frozen = _acoustic_keys(s2)
    assert frozen and all(torch.equal(s2[k], s4[k]) for k in frozen)  # semantic stage: acoustic side frozen
    assert not all(torch.equal(s4[k], s6[k]) for k in frozen)  # joint stage: it trains again
    assert not torch.equal(s2["bottleneck.vae.weight"], s4["bottleneck.vae.weight"])
    with pytest.raises(ValueError, match="joint_stage_step"):
        CodecTrainConfig.from_dict({"semantic_stage_step": 4, "joint_stage_step": 2})
    with pytest.raises(ValueError, match="secousticodec's training stages"):
        train(cfg_for(corpus, tmp_path / "rvq", "rvq", steps=1, semantic_stage_step=1), progress=False)


def test_exact_resume_across_secousticodec_stage_boundaries(corpus, tmp_path):
    kw = {"warmup_adv_steps": 1, "semantic_stage_step": 2, "joint_stage_step": 3}
    a = train(cfg_for(corpus, tmp_path / "a", "secousticodec", steps=4, **kw), progress=False)
    train(cfg_for(corpus, tmp_path / "b", "secousticodec", steps=1, **kw), progress=False)  # stopped in stage 1
    b = train(cfg_for(corpus, tmp_path / "b", "secousticodec", steps=4, **kw), resume=True, progress=False)
    assert a.step == b.step == 4
    log_b = _log(tmp_path / "b")
    assert [x["step"] for x in log_b] == [1, 2, 3, 4] and [x["train/stage"] for x in log_b] == [1, 1, 2, 3]
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ea, eb = load_file(str(a.export_dir / "model.safetensors")), load_file(str(b.export_dir / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


# ---- decoder fine-tune: start from a finished codec, train only the decoder, cosine anneal --------

def _tone(seconds=1.2, f=220.0):
    t = torch.arange(int(SR * seconds)) / SR
    return (0.3 * torch.sin(2 * torch.pi * f * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t)))[None, None]


def test_decoder_finetune_keeps_every_token_and_trains_the_decoder(corpus, tmp_path):
    from codec.model import DualStreamCodec

    base = train(cfg_for(corpus, tmp_path / "base", "sacodec", steps=3, warmup_adv_steps=100), progress=False)
    a = DualStreamCodec.from_pretrained(base.export_dir)
    only = list(a.decode_only)  # what the codec says a fine-tune may change without changing a token
    ft = train(cfg_for(corpus, tmp_path / "ft", "sacodec", steps=6, warmup_adv_steps=3, lr=3e-3,
                       init_from=str(base.export_dir), train_only=only,
                       lr_schedule="cosine", lr_warmup=2), progress=False)
    b = DualStreamCodec.from_pretrained(ft.export_dir)
    sa, sb = a.state_dict(), b.state_dict()
    trained = [k for k in sa if k.startswith(tuple(m + "." for m in only))]
    frozen = [k for k in sa if k not in trained]
    assert trained and frozen
    assert all(torch.equal(sa[k], sb[k]) for k in frozen), [k for k in frozen if not torch.equal(sa[k], sb[k])]
    assert any(not torch.equal(sa[k], sb[k]) for k in trained if k.startswith("decoder."))
    wav = _tone()
    ta, tb = a.encode(wav), b.encode(wav)
    assert torch.equal(ta.semantic, tb.semantic) and torch.equal(ta.acoustic, tb.acoustic)
    assert not torch.equal(a.decode(ta), b.decode(tb))  # same tokens, new audio
    assert a.tokenises_like(b) and b.tokenises_like(a)
    c = DualStreamCodec(type(a.config).from_dict({**a.config.to_dict(), "causal": not a.config.causal}))
    c.load_state_dict(a.state_dict())
    assert not a.tokenises_like(c)  # same weights, another config: other tokens
    info = json.loads((ft.export_dir / "training.json").read_text())
    assert info["init_from"] == str(base.export_dir) and info["train_only"] == only


def test_decoder_finetune_needs_no_teacher_cache(corpus, tmp_path):
    base = train(cfg_for(corpus, tmp_path / "base", "sacodec", steps=1, warmup_adv_steps=100), progress=False)
    with pytest.raises(ValueError, match="teacher_units"):  # the full codec trains on them
        train(cfg_for(corpus, tmp_path / "x", "sacodec", teacher_units=None), progress=False)
    r = train(cfg_for(corpus, tmp_path / "ft", "sacodec", steps=2, warmup_adv_steps=100, teacher_units=None,
                      teacher_features=None, teacher_centroids=None, init_from=str(base.export_dir), train_only=["decoder"]), progress=False)
    assert r.step == 2


def test_decoder_finetune_lowers_the_loss_on_a_fixed_batch(tmp_path):
    one = make_corpus(tmp_path / "one", n=4, seconds=(0.5,))
    base = train(cfg_for(one, tmp_path / "base", steps=2, warmup_adv_steps=100, ckpt_every=100), progress=False)
    train(cfg_for(one, tmp_path / "ft", steps=12, warmup_adv_steps=100, ckpt_every=100, lr=3e-3,
                  init_from=str(base.export_dir), train_only=["decoder"]), progress=False)
    log = _log(tmp_path / "ft")
    assert np.mean([x["mel/l1"] for x in log[-3:]]) < log[0]["mel/l1"] * 0.95


def test_cosine_schedule_is_logged_and_resumes_exactly(corpus, tmp_path):
    kw = {"steps": 4, "warmup_adv_steps": 1, "lr": 1e-3, "disc_lr": 1e-3, "lr_schedule": "cosine",
          "lr_min_ratio": 0.1, "lr_warmup": 1, "train_only": ["decoder"]}
    a = train(cfg_for(corpus, tmp_path / "a", **kw), progress=False)
    # a run cut short (the time limit stops it after its first step), then resumed with the same config:
    # the schedule depends on `steps`, so the cut cannot come from a shorter run
    cut = train(cfg_for(corpus, tmp_path / "b", **kw, max_minutes=1e-9), progress=False)
    assert cut.step == 1
    train(cfg_for(corpus, tmp_path / "b", **kw), resume=True, progress=False)
    # the lr after step s (LambdaLR at s): warm-up 1 step, then cosine from 1e-3 to 1e-4 over 3 steps
    want = [1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi * (s - 1) / 3)) for s in (1, 2, 3, 4)]
    assert np.allclose([x["lr"] for x in _log(tmp_path / "a")], want, rtol=1e-6)
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.step == 4


def test_finetune_config_errors(corpus, tmp_path):
    base = train(cfg_for(corpus, tmp_path / "base", steps=1, warmup_adv_steps=100), progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train(cfg_for(corpus, tmp_path / "x", "rvq", init_from=str(base.export_dir),
                      model={"tiny": "rvq", "dim": 24}), progress=False)
    with pytest.raises(ValueError, match="not modules of the 'rvq' codec"):
        train(cfg_for(corpus, tmp_path / "y", train_only=["decodr"]), progress=False)
    with pytest.raises(ValueError, match="train_only and secousticodec's stage schedule"):
        cfg_for(corpus, tmp_path / "z", "secousticodec", train_only=["decoder"], semantic_stage_step=2)
    with pytest.raises(ValueError, match="lr_schedule"):
        cfg_for(corpus, tmp_path / "w", lr_schedule="linear")
    # a fine-tune's checkpoints resumed with another init_from: its frozen part is not that codec's
    other = train(cfg_for(corpus, tmp_path / "other", steps=1, warmup_adv_steps=100, seed=1), progress=False)
    kw = {"steps": 3, "warmup_adv_steps": 100, "train_only": ["decoder"]}
    train(cfg_for(corpus, tmp_path / "ft", init_from=str(base.export_dir), max_minutes=1e-9, **kw), progress=False)
    with pytest.raises(ValueError, match="trained from another init_from"):
        train(cfg_for(corpus, tmp_path / "ft", init_from=str(other.export_dir), **kw), resume=True, progress=False)
    done = train(cfg_for(corpus, tmp_path / "ft", init_from=str(base.export_dir), **kw), resume=True, progress=False)
    assert done.step == 3
    with pytest.raises(FileNotFoundError, match="not a codec directory"):
        train(cfg_for(corpus, tmp_path / "v", init_from=str(tmp_path / "missing")), progress=False)


def _head_token_dir(codec, corpus, out, seed=0):
    """A token dir as `slm head-tokens` writes it: the codec's own semantic tokens of each train utterance,
    with random acoustic codes standing in for an acoustic head's."""
    from codec.audio import load_audio
    from codec.contracts import CodecTokens
    from codec.train.batches import read_rows
    from codec.train.teacher_cache import item_file

    g = torch.Generator().manual_seed(seed)
    rows, lines = read_rows(str(corpus / "manifest.jsonl"), "train"), []
    for r in rows:
        own = codec.encode(load_audio(r["path"], codec.sample_rate)[None])
        t = CodecTokens(own.semantic, torch.randint(0, codec.acoustic_codebook_size, own.acoustic.shape, generator=g))
        p = item_file(out, r["id"])
        p.parent.mkdir(parents=True, exist_ok=True)
        t.save(p)
        lines.append(json.dumps({"id": r["id"], "tokens": str(p.relative_to(out))}))
    (out / "index.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_head_token_batches_crop_the_tokens_with_the_audio(corpus, tmp_path):
    from codec.contracts import CodecTokens
    from codec.model import DualStreamCodec
    from codec.train.batches import HeadTokens, StepBatches, read_rows

    base = train(cfg_for(corpus, tmp_path / "base", "sacodec", steps=1, warmup_adv_steps=100), progress=False)
    codec = DualStreamCodec.from_pretrained(base.export_dir).eval()
    d = _head_token_dir(codec, corpus, tmp_path / "head")
    rows = read_rows(str(corpus / "manifest.jsonl"), "train")
    hop, seg = codec.semantic_hop, 8 * codec.semantic_hop
    plain = StepBatches(rows, SR, seg, hop, 2, steps=6)
    head = HeadTokens(d, hop)
    both = StepBatches(rows, SR, seg, hop, 2, steps=6, head=head, head_prob=1.0)
    never = StepBatches(rows, SR, seg, hop, 2, steps=6, head=head, head_prob=0.0)
    for step in range(6):
        a, b, c = plain[step], both[step], never[step]
        assert a.starts == b.starts and torch.equal(a.wav, b.wav)  # the same crops as a run without head tokens
        assert c.head == [None, None]
        for uid, s, t in zip(b.ids, b.starts, b.head):
            full = head.tokens(uid)
            f = s // hop
            assert isinstance(t, CodecTokens) and t.semantic.shape[-1] == 8
            assert torch.equal(t.semantic, full.semantic[..., f : f + 8])
            assert torch.equal(t.acoustic, full.acoustic[..., 4 * f : 4 * f + 32])
    with pytest.raises(ValueError, match="semantic grid"):
        head.crop(rows[0]["id"], hop // 2, seg)


def test_forward_on_given_tokens_decodes_them(corpus, tmp_path):
    from codec.contracts import CodecTokens
    from codec.model import DualStreamCodec

    base = train(cfg_for(corpus, tmp_path / "base", "sacodec", steps=1, warmup_adv_steps=100), progress=False)
    codec = DualStreamCodec.from_pretrained(base.export_dir).eval()
    wav = _tone(1.28)
    toks = codec.encode(wav)
    with torch.no_grad():
        given = codec(wav, tokens=toks).wav_hat
        own = codec(wav).wav_hat
        other = codec(wav, tokens=CodecTokens(toks.semantic, (toks.acoustic + 1) % codec.acoustic_codebook_size)).wav_hat
    assert torch.allclose(given, codec.decode(toks)[..., : wav.shape[-1]], atol=1e-5)
    assert torch.allclose(given, own, atol=1e-4)  # the training pass decodes what encode gives
    assert not torch.allclose(given, other, atol=1e-4)
    with pytest.raises(ValueError, match="do not cover"):
        codec(wav[..., : 1280 * 4], tokens=toks)


def test_decoder_finetune_on_head_tokens(corpus, tmp_path):
    from codec.model import DualStreamCodec

    base = train(cfg_for(corpus, tmp_path / "base", "sacodec", steps=1, warmup_adv_steps=100), progress=False)
    a = DualStreamCodec.from_pretrained(base.export_dir).eval()
    d = _head_token_dir(a, corpus, tmp_path / "head")
    kw = {"teacher_units": None, "teacher_features": None, "teacher_centroids": None, "warmup_adv_steps": 100,
          "init_from": str(base.export_dir), "train_only": list(a.decode_only), "head_tokens": str(d)}
    ft = train(cfg_for(corpus, tmp_path / "ft", "sacodec", steps=4, lr=3e-3, head_token_prob=1.0, **kw), progress=False)
    b = DualStreamCodec.from_pretrained(ft.export_dir)
    assert a.tokenises_like(b)  # every token as it was; only the decode path trained
    sa, sb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("decoder."))
    log = _log(tmp_path / "ft")
    assert all(x["head/share"] == 1.0 for x in log)  # every item (all longer than a crop) decoded head tokens
    info = json.loads((ft.export_dir / "training.json").read_text())
    assert info["head_tokens"] == str(d) and info["head_token_prob"] == 1.0
    # what cannot work fails before training, with the reason
    with pytest.raises(ValueError, match="decoder fine-tunes"):
        cfg_for(corpus, tmp_path / "x", "sacodec", head_tokens=str(d))
    with pytest.raises(ValueError, match="decode path only"):
        train(cfg_for(corpus, tmp_path / "y", "sacodec", steps=1, **{**kw, "train_only": ["decoder", "encoder"]}),
              progress=False)
    other = DualStreamCodec.from_pretrained(base.export_dir).eval()
    with torch.no_grad():  # another projector anchors onto other centroids: other semantic tokens
        torch.nn.init.normal_(other.bottleneck.projector[0].weight, std=1.0)
    e = _head_token_dir(other, corpus, tmp_path / "other")
    with pytest.raises(ValueError, match="not this codec's"):
        train(cfg_for(corpus, tmp_path / "z", "sacodec", steps=1, **{**kw, "head_tokens": str(e)}), progress=False)
    with pytest.raises(FileNotFoundError, match="index.jsonl"):
        train(cfg_for(corpus, tmp_path / "w", "sacodec", steps=1, **{**kw, "head_tokens": str(tmp_path)}),
              progress=False)


def test_decoder_finetune_on_head_tokens_lowers_the_loss_and_resumes_exactly(tmp_path):
    one = make_corpus(tmp_path / "one", n=4, seconds=(1.0,))
    base = train(cfg_for(one, tmp_path / "base", "sacodec", steps=1, warmup_adv_steps=100, ckpt_every=100),
                 progress=False)
    from codec.model import DualStreamCodec

    a = DualStreamCodec.from_pretrained(base.export_dir).eval()
    d = _head_token_dir(a, one, tmp_path / "head")
    kw = {"teacher_units": None, "teacher_features": None, "teacher_centroids": None, "warmup_adv_steps": 100,
          "init_from": str(base.export_dir), "train_only": list(a.decode_only), "head_tokens": str(d),
              "head_token_prob": 0.5, "lr": 3e-3, "ckpt_every": 100, "segment_seconds": 0.64}
    train(cfg_for(one, tmp_path / "ft", "sacodec", steps=12, **kw), progress=False)
    log = _log(tmp_path / "ft")
    assert np.mean([x["mel/l1"] for x in log[-3:]]) < log[0]["mel/l1"] * 0.95
    assert 0.0 < np.mean([x["head/share"] for x in log]) < 1.0  # a mix of head and own tokens
    # cut after 2 steps, resumed: the same weights as the run that never stopped
    kw6 = {**kw, "steps": 6, "ckpt_every": 2}
    train(cfg_for(one, tmp_path / "r1", "sacodec", **kw6), progress=False)
    cut = train(cfg_for(one, tmp_path / "r2", "sacodec", **kw6, max_minutes=1e-9), progress=False)
    assert cut.step == 1
    train(cfg_for(one, tmp_path / "r2", "sacodec", **kw6), resume=True, progress=False)
    sa, sb = _state(tmp_path / "r1"), _state(tmp_path / "r2")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_two_process_cli_training(corpus, tmp_path):
    """`slm codec train` under torchrun with two CPU processes: both ranks train on their shards, end with the
    same generator and discriminator weights (the loop checks), rank 0 alone exports and prints the summary,
    and both processes exit 0 (each leaves through codec.runtime.leave_rank)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg_for(corpus, tmp_path / "run", variant="sac").to_dict()))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29531", "--module", "slm", "codec", "train", "--config", str(f)], capture_output=True,
                         text=True, timeout=600, env=env, check=False, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ranks agree: 2 processes" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count('"export"') == 1  # the summary, from rank 0 only
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
