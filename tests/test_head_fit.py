"""Acoustic context in the head (each frame sees the previous frames' codes) and `slm head-fit` (a head trained
afresh on a frozen LM from cached hidden states): the context is the utterance's own past and never another's,
sampling frame after frame equals the teacher-forced pass, the cache holds what the head reads at inference,
fitting lowers the held-out loss, resumes exactly, and the new model dir speaks with its new head."""
import json

import pytest
import torch

from slm.acoustic_head import AcousticHead, AcousticHeadConfig, FrameContext, frame_context, sample


def _head(context=2, **kw):
    torch.manual_seed(0)
    cfg = {"backbone_dim": 24, "n_semantic": 16, "codebook_size": 40, "n_codebooks": 2, "ratio": 2, "dim": 32, "n_layers": 2,
               "n_heads": 4, "context": context}
    return AcousticHead(AcousticHeadConfig(**{**cfg, **kw})).eval()


def test_frame_context_is_the_same_utterances_past():
    codes = torch.arange(12).reshape(6, 2)  # frames 0..5, two codes each
    item = torch.tensor([0, 0, 0, 1, 1, 1])
    ctx = frame_context(codes, item, 2)
    assert ctx.shape == (6, 4)
    assert ctx[0].tolist() == [-1, -1, -1, -1]  # first frame of an utterance: nothing before
    assert ctx[1].tolist() == [-1, -1, 0, 1]  # oldest first: [frame t-2, frame t-1]
    assert ctx[2].tolist() == [0, 1, 2, 3]
    assert ctx[3].tolist() == [-1, -1, -1, -1]  # utterance 1 never sees utterance 0
    assert ctx[5].tolist() == [6, 7, 8, 9]
    skipped = codes.clone()
    skipped[1] = -100  # an ignored target is "none" as context, not a code
    assert frame_context(skipped, item, 1)[2].tolist() == [-1, -1]
    hist = FrameContext(2, 2)  # what generation keeps: the same window
    for t in range(3):
        assert hist.tensor()[0].tolist() == ctx[t].tolist()
        hist.push(codes[t])


def test_context_changes_the_prediction_and_none_is_the_default():
    head = _head()
    h, sem = torch.randn(3, 24), torch.tensor([1, 5, 9])
    codes = torch.randint(0, 40, (3, 4))
    none = torch.full((3, 8), -1)
    a = head(h, sem, codes).logits
    assert torch.equal(a, head(h, sem, codes, context=none).logits)
    b = head(h, sem, codes, context=torch.randint(0, 40, (3, 8))).logits
    assert not torch.allclose(a, b)
    drop = _head(context_dropout=1.0).train()  # training with the context always blanked == no context
    torch.manual_seed(1)
    x = drop(h, sem, codes, context=torch.randint(0, 40, (3, 8))).logits
    torch.manual_seed(1)
    assert torch.equal(x, drop(h, sem, codes).logits)
    with pytest.raises(ValueError, match="context must be"):
        head(h, sem, codes, context=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="context must be >= 0"):
        _head(context=-1)


@torch.no_grad()
def _reference(head, h, sem, ctx, temperature, top_k, generator):
    """Whole-prefix form: the teacher-forced pass over context + frame prefix at every step."""
    codes = torch.zeros(h.shape[0], 0, dtype=torch.long)
    for _ in range(head.cfg.frame_len):
        logits = head._run(head._inputs(h, sem, codes, None, ctx))[:, -1].float()
        codes = torch.cat([codes, sample(logits, temperature, top_k, 1.0, generator)[:, None]], dim=1)
    return codes


def test_generate_with_context_equals_the_teacher_forced_pass():
    head = _head()
    h, sem = torch.randn(3, 24), torch.tensor([1, 5, 9])
    ctx = torch.randint(-1, 40, (3, 8))
    for seed in range(4):
        a = head.generate(h, sem, None, 0.9, 8, torch.Generator().manual_seed(seed), ctx)
        b = _reference(head, h, sem, ctx, 0.9, 8, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)
    # frame after frame: each frame's context is the codes sampled for the frames before it (and a prompt's)
    T = 5
    h, sem = torch.randn(T, 24), torch.randint(0, 16, (T,))
    past = torch.randint(0, 40, (1, 4))
    out = head.generate_frames(h, sem, None, 0.0, 0, None, past=past)
    seen = torch.cat([past, out])
    for t in range(T):
        ctx = torch.cat([torch.full((8,), -1), seen[: t + 1].reshape(-1)])[-8:]
        assert torch.equal(out[t], head.generate(h[t : t + 1], sem[t : t + 1], None, 0.0, 0, None, ctx[None])[0])
    # a head without context samples all frames at once, as before
    flat = _head(context=0)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(flat.generate_frames(h, sem, None, 0.9, 8, torch.Generator().manual_seed(3)),
                       flat.generate(h, sem, None, 0.9, 8, g))


def test_context_head_save_load_identical(tmp_path):
    head = _head()
    head.save_pretrained(tmp_path)
    back = AcousticHead.from_pretrained(tmp_path)
    assert back.cfg.context == 2
    h, sem, codes, ctx = torch.randn(2, 24), torch.tensor([3, 4]), torch.randint(0, 40, (2, 4)), torch.randint(-1, 40, (2, 8))
    assert torch.equal(head(h, sem, codes, context=ctx).logits, back(h, sem, codes, context=ctx).logits)


def test_slm_train_with_a_context_head_lowers_the_loss(tmp_path):
    """Inside `slm train` the context comes from each example's own frames in the packed batch."""
    from slm.train import train
    from tests.test_slm_helpers import tiny_train_config

    cfg = tiny_train_config(tmp_path, steps=6, head={"dim": 32, "n_layers": 1, "n_heads": 2, "context": 2},
                            save_every=6)
    final = train(cfg, progress=False)
    assert AcousticHead.from_pretrained(final).cfg.context == 2
    log = [r for r in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) if "head/loss" in r]
    assert log[-1]["head/loss"] < log[0]["head/loss"]


def _corpus(tmp_path, n=8):
    from tests._tiny_pipeline import speechlike_wav

    (tmp_path / "wavs").mkdir()
    rows = []
    for i in range(n):
        p = speechlike_wav(tmp_path / "wavs" / f"u{i}.wav", seconds=0.9 + 0.2 * (i % 3))
        rows.append({"id": f"u{i}", "path": p, "text": "hello there", "speaker": f"s{i % 2}",
                     "split": "valid" if i >= n - 2 else "train", "words": [[0.0, 0.4, "hello"], [0.4, 0.8, "there"]]})
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return man


def test_head_fit_caches_fits_resumes_and_writes_a_model(tmp_path, monkeypatch):
    from safetensors import safe_open

    import slm.head_fit as hf
    from codec.audio import load_audio
    from slm.pipeline import SpeechPipeline
    from tests._tiny_pipeline import tiny_pipeline, tiny_pipeline_dir

    monkeypatch.setattr(hf, "SHARD", 2)  # several shards from a few utterances
    pipe = tiny_pipeline()
    man = _corpus(tmp_path)
    info = hf.cache_head_features(tiny_pipeline_dir(), man, tmp_path / "cache", pipe=pipe, progress=False)
    assert info["splits"] == {"train": {"utterances": 6, "shards": 3}, "valid": {"utterances": 2, "shards": 1}}
    # the cache holds what the head reads: the LM's state before each true semantic token of the TTS form
    with safe_open(str(tmp_path / "cache" / "train" / "shard_0000.safetensors"), "pt") as st:
        table = json.loads(st.metadata()["utterances"])
        hid, sem = st.get_tensor("h"), st.get_tensor("sem")
    u = table[1]
    wav = load_audio(str(tmp_path / "wavs" / f"{u['id']}.wav"), pipe.sample_rate)
    own = pipe.encode(wav, pipe.sample_rate).semantic[0, 0]
    ex = pipe.tts_form_example(own, "hello there", [[0.0, 0.4, "hello"], [0.4, 0.8, "there"]],
                               wav.shape[-1] / pipe.sample_rate)
    with torch.no_grad():
        want = pipe.infer_lm(input_ids=ex.input_ids[None], output_hidden_states=True).hidden_states[-1][0, ex.semantic_pos - 1]
    got = hid[u["offset"] : u["offset"] + u["frames"]]
    assert torch.equal(sem[u["offset"] : u["offset"] + u["frames"]], own)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)
    # resumable: a finished shard is not rebuilt; another setting is refused
    (tmp_path / "cache" / "train" / "shard_0001.safetensors").unlink()
    hf.cache_head_features(tiny_pipeline_dir(), man, tmp_path / "cache", pipe=pipe, progress=False)
    assert (tmp_path / "cache" / "train" / "shard_0001.safetensors").is_file()
    with pytest.raises(ValueError, match="another setting"):
        hf.cache_head_features(tiny_pipeline_dir(), man, tmp_path / "cache", limit=3, pipe=pipe, progress=False)

    cfg = {"cache": str(tmp_path / "cache"), "head": {"context": 2, "dim": 32, "n_layers": 1, "n_heads": 2},
               "steps": 30, "batch_frames": 32, "lr": 3e-3, "warmup": 2, "eval_every": 10}
    full = hf.fit_head(hf.HeadFitConfig(out=str(tmp_path / "full"), **cfg), progress=False)
    log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"] and log[-1]["valid_loss"] < log[0]["valid_loss"]
    # exact resume: a run stopped after step 10 (its checkpoint) and continued ends where the uninterrupted one did
    part = hf.HeadFitConfig(out=str(tmp_path / "cut"), **cfg)
    assert hf.fit_head(part, progress=False, stop_after=10)["step"] == 10
    again = hf.fit_head(part, progress=False)
    assert again["valid_loss"] == full["valid_loss"] and again["train_loss"] == full["train_loss"]
    with pytest.raises(ValueError, match="other settings"):
        hf.fit_head(hf.HeadFitConfig(out=str(tmp_path / "cut"), **{**cfg, "lr": 1e-3}), progress=False)

    dest = hf.write_model(tiny_pipeline_dir(), tmp_path / "full" / "best", tmp_path / "model", {"steps": 30})
    assert json.loads((dest / "slm_config.json").read_text())["head_fit"] == {"steps": 30}
    new = SpeechPipeline.from_pretrained(dest)
    assert new.head.cfg.context == 2
    wav = new.tts("hello there", seed=0, max_seconds=1.0)
    assert wav.shape[-1] > 0 and torch.isfinite(wav).all()
    toks = new.tts_tokens("hello there", seed=0, max_seconds=1.0)[0]
    assert toks.acoustic.shape[-1] == toks.semantic.shape[-1] * new.head.cfg.ratio
    with pytest.raises(ValueError, match="new dir"):
        hf.write_model(dest, tmp_path / "full" / "best", dest)
    bad = _head(context=0)
    bad.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="does not fit"):
        hf.write_model(tiny_pipeline_dir(), tmp_path / "bad", tmp_path / "model2")
