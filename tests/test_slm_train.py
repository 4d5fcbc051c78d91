"""Speech-LM training: loss goes down (LM + head), exact resume, Ka=0 codecs, 2-process CPU run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slm.train import train
from tests.test_slm_helpers import tiny_train_config


def _log(cfg):
    return [json.loads(x) for x in Path(cfg.out_dir, "train_log.jsonl").read_text().splitlines()]


def test_training_lowers_lm_and_head_loss(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=12, batch_size=4, save_every=100)
    train(cfg, progress=False)
    log = _log(cfg)
    first, last = log[0], log[-1]
    assert last["lm/loss"] < first["lm/loss"] - 0.05
    assert last["head/loss"] < first["head/loss"] - 0.5


def test_exact_resume(tmp_path):
    full = tiny_train_config(tmp_path / "a", steps=4, save_every=2)
    train(full, progress=False)
    resumed = tiny_train_config(tmp_path / "b", steps=4, save_every=3)
    train(resumed, progress=False, stop_after=2)  # "killed" after step 2: its checkpoint is the last thing written
    assert not Path(resumed.out_dir, "final").exists()
    train(resumed, progress=False)
    a = load_file(str(Path(full.out_dir, "checkpoints/latest/trainable.safetensors")))
    b = load_file(str(Path(resumed.out_dir, "checkpoints/latest/trainable.safetensors")))
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_codec_without_acoustic_stream(tmp_path):
    from slm.pipeline import SpeechPipeline

    cfg = tiny_train_config(tmp_path, variant="secousticodec", steps=2)
    final = train(cfg, progress=False)
    assert not (final / "acoustic_head.json").exists()
    pipe = SpeechPipeline.from_pretrained(final)
    assert pipe.head is None and pipe.voices()  # voices carry the global embedding the decoder needs
    wav = pipe.tts("hello world", seed=0, max_seconds=1.0)
    assert wav.shape[0] == 1 and wav.shape[1] > 0


def test_config_rejects_unknown_keys(tmp_path):
    from slm.train import TrainConfig

    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(f)


def test_init_from_fine_tunes_a_saved_model(tmp_path):
    """`init_from` starts from a model dir's adapter and head (fp16 bundle included): same logits as the
    saved model before any step, a lower first loss than a fresh start, and the codec defaults to its own."""
    from slm.pipeline import SpeechPipeline
    from slm.train import build

    a = tiny_train_config(tmp_path / "a", steps=6, batch_size=4, save_every=100, save_half=True)
    train(a, progress=False)
    src = Path(a.out_dir, "final")
    b = tiny_train_config(tmp_path / "b", steps=2, batch_size=4, save_every=100, init_from=str(src), codec="",
                          lora={"r": 2, "alpha": 2})  # ignored: the loaded adapter's settings apply
    pipe = SpeechPipeline.from_pretrained(src, merge=False)
    _, layout, lm, head = build(b, pipe.codec)
    ids = torch.tensor([[1, 2, layout.audio_start, layout.semantic_offset + 3, layout.semantic_offset + 5]])
    with torch.no_grad():
        assert torch.equal(lm.eval()(ids).logits, pipe.lm.eval()(ids).logits)
    for (n, p), (_, q) in zip(head.state_dict().items(), pipe.head.state_dict().items()):
        assert torch.equal(p, q), n
    assert lm.peft_config["default"].r == 4 and any(p.requires_grad for p in lm.parameters())
    train(b, progress=False)  # codec: the model's own (b.codec is empty)
    assert _log(b)[0]["lm/loss"] < _log(a)[0]["lm/loss"] - 0.05
    info = json.loads(Path(b.out_dir, "final", "slm_config.json").read_text())
    assert info["init_from"] == str(src.resolve()) and info["lora"]["r"] == 4


def test_init_from_keeps_the_models_decoding_settings_and_reader(tmp_path, capsys):
    """A fine-tune keeps its model's sampling (less the length bounds, which come from the run's data),
    int8 choice, CTC reader and the ASR settings that use it; the model's speech forms that the run does not
    train are named, not copied. A move onto another codec (remap_semantic) leaves the reader behind."""
    from slm.ctc_reader import CTCReader, ReaderConfig
    from slm.pipeline import SpeechPipeline
    from tests.conftest import TINY_READER

    a = tiny_train_config(tmp_path / "a", steps=2, save_every=100)
    src = train(a, progress=False)
    theirs = json.loads((src / "slm_config.json").read_text())
    CTCReader(ReaderConfig(n_codes=SpeechPipeline.from_pretrained(src).layout.n_semantic, **TINY_READER)
              ).save_pretrained(src / "ctc_reader")
    fused = {"beam": 3, "lm_weight": 0.4, "lexicon": "wordfreq:5000"}
    (src / "slm_config.json").write_text(json.dumps({
        **theirs, "sampling": {**theirs["sampling"], "temperature": 0.3, "max_seconds_per_char": 9.0},
        "int8": True, "asr_method": "fused", "asr_fused": fused, "asr_joint": {"beam": 2}, "tts_phones": True}))
    capsys.readouterr()
    final = train(tiny_train_config(tmp_path / "b", steps=1, save_every=100, init_from=str(src), codec=""),
                  progress=False)
    info = json.loads((final / "slm_config.json").read_text())
    assert info["sampling"]["temperature"] == 0.3 and info["int8"] is True
    assert info["sampling"]["max_seconds_per_char"] == theirs["sampling"]["max_seconds_per_char"]  # the run's
    assert (info["asr_method"], info["asr_fused"], info["asr_joint"]) == ("fused", fused, {"beam": 2})
    assert "tts_phones" not in info
    for f in ("config.json", "model.safetensors"):
        assert (final / "ctc_reader" / f).read_bytes() == (src / "ctc_reader" / f).read_bytes()
    assert SpeechPipeline.from_pretrained(final).asr_method == "fused"  # a working model dir
    out = capsys.readouterr().out
    assert "keeping" in out and "ctc_reader/" in out and "tts_phones" in out

    moved = tiny_train_config(tmp_path / "c", steps=1, save_every=100, init_from=str(src), remap_semantic=True,
                              codec=str(src / "codec"))
    info = json.loads((train(moved, progress=False) / "slm_config.json").read_text())
    assert info["int8"] is True and info["sampling"]["temperature"] == 0.3
    assert not {"asr_method", "asr_fused", "asr_joint"} & set(info)
    assert not (tmp_path / "c" / "final" / "ctc_reader").exists()


def test_init_from_rejects_a_model_of_another_codec(tmp_path):
    from slm.train import build
    from tests.test_slm_helpers import tiny_codec, tiny_codec_dir

    a = tiny_train_config(tmp_path / "a", steps=1, save_every=100)
    train(a, progress=False)
    b = tiny_train_config(tmp_path / "b", "secousticodec", init_from=str(Path(a.out_dir, "final")),
                          codec=tiny_codec_dir("secousticodec"))
    with pytest.raises(ValueError, match="token layout"):
        build(b, tiny_codec("secousticodec"))
    c = tiny_train_config(tmp_path / "d", init_from=str(Path(a.out_dir, "final")))
    other = tiny_codec()
    with torch.no_grad():
        next(p for p in other.parameters() if p.is_floating_point()).add_(1.0)
    with pytest.raises(ValueError, match="not the model's own"):
        build(c, other)  # same sizes, other weights: its tokens mean something else
    tuned = tiny_codec()  # a decoder fine-tune of the model's codec: same tokens, so accepted
    with torch.no_grad():
        next(p for n, p in tuned.named_parameters() if n.startswith("decoder.")).add_(1.0)
    build(c, tuned)
    with pytest.raises(FileNotFoundError, match="not a speech-LM model dir"):
        build(tiny_train_config(tmp_path / "c", init_from=str(tmp_path)), tiny_codec())


def test_set_decoder_takes_a_decoder_fine_tune_and_refuses_other_tokens(tmp_path):
    from codec.model import DualStreamCodec
    from slm.pipeline import set_decoder
    from tests.test_slm_helpers import tiny_codec

    a = tiny_train_config(tmp_path / "a", steps=1, save_every=100)
    train(a, progress=False)
    model = Path(a.out_dir, "final")
    before = {f.name: f.read_bytes() for f in (model / "codec").iterdir()}
    other = tiny_codec()
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.startswith("encoder.")).add_(1.0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not tokenise as"):
        set_decoder(model, tmp_path / "other")
    assert {f.name: f.read_bytes() for f in (model / "codec").iterdir()} == before  # left as it was
    tuned = tiny_codec()
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if n.startswith("decoder."):
                p.mul_(1.5)
    tuned.save_pretrained(tmp_path / "tuned")
    set_decoder(model, tmp_path / "tuned")
    got = DualStreamCodec.from_pretrained(model / "codec")
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in got.state_dict().items())
    info = json.loads((model / "slm_config.json").read_text())
    assert info["codec_decoder_from"] == str((tmp_path / "tuned").resolve()) and info["codec"] == "codec"
    assert not any(p.name.endswith(".new") for p in model.iterdir())
    from slm.pipeline import SpeechPipeline

    pipe = SpeechPipeline.from_pretrained(model)  # loads, and speaks through the new decoder
    assert pipe.codec.tokenises_like(tiny_codec())


def test_bounded_training_extends_a_finished_run(tmp_path):
    """Raising `steps` of a finished run trains on from its checkpoint, rewrites final/ and records both
    plans; a rerun of a finished plan trains nothing."""
    from dataclasses import asdict

    import yaml

    from slm.recipe_steps import lm_train_bounded

    cfg = tiny_train_config(tmp_path, steps=2, save_every=2)
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(asdict(cfg)))
    final = lm_train_bounded(f)
    assert json.loads((final / "slm_config.json").read_text())["trained_steps"] == 2
    f.write_text(yaml.safe_dump({**asdict(cfg), "steps": 4}))
    final = lm_train_bounded(f)
    assert json.loads((final / "slm_config.json").read_text())["trained_steps"] == 4
    info = json.loads(Path(cfg.out_dir, "recipe_train.json").read_text())
    assert [(s["steps_planned"], s["steps_trained"]) for s in info["segments"]] == [(2, 2), (4, 4)]
    assert info["steps_trained"] == 4 and not info["stopped_by_time"]
    n_logged = len(_log(cfg))
    lm_train_bounded(f)  # done: nothing trains
    assert len(_log(cfg)) == n_logged
    assert [r["step"] for r in _log(cfg)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=3, save_every=3, batch_size=1)
    from dataclasses import asdict

    import yaml

    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(asdict(cfg)))
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nimport torch\nimport torch.distributed as dist\n"
        "torch.set_num_threads(1)\n"
        "from slm.train import TrainConfig, train\n"
        "cfg = TrainConfig.from_yaml(sys.argv[1])\n"
        "train(cfg, progress=False)\n"
        "open(f'world_{dist.get_rank()}.txt', 'w').write(str(dist.get_world_size()))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", str(script), str(f)], capture_output=True, text=True, timeout=600, env=env, check=False,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    # two real ranks (one file each: printed lines of two processes can interleave on a shared stdout)
    assert [(tmp_path / f"world_{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    assert "ranks agree: 2 processes" in res.stdout  # train() compared the weights of both ranks
    # the schedule steps once per optimizer step on every rank (not once per process: it would run 2x fast)
    from slm.train import _lr_lambda

    lrs = [r["lr"] for r in _log(cfg)]
    assert lrs == pytest.approx([cfg.lr * _lr_lambda(cfg)(s) for s in range(1, len(lrs) + 1)])


@pytest.mark.slow
def test_two_process_fsdp2_cpu_training(tmp_path):
    """FSDP2 over two CPU processes, launched with configs/accelerate/fsdp_cpu.yaml (accelerate itself offers
    FSDP only on GPUs; slm.train switches a CPU run to FSDP2): it trains on sharded weights, evaluates (samples
    from a gathered copy on rank 0), resumes exactly, and its model dir holds the gathered weights."""
    from dataclasses import asdict

    import yaml

    from slm.pipeline import SpeechPipeline

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}

    def launch(name: str, *extra: str):
        cfg = tiny_train_config(tmp_path / name, steps=3, save_every=2, batch_size=1, eval_every=2, eval_samples=1)
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(asdict(cfg)))
        res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                              str(root / "configs" / "accelerate" / "fsdp_cpu.yaml"), "--main_process_port", "29519",
                              "-m", "slm", "train", "--config", str(f), *extra],
                             capture_output=True, text=True, timeout=300, env=env, check=False, cwd=str(tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        return cfg, res

    full, res = launch("full")
    assert "ranks agree: 2 processes (FSDP, gathered shards)" in res.stdout  # sharded, and both ranks agree
    resumed, _ = launch("resumed", "--stop-after", "2")
    assert not Path(resumed.out_dir, "final").exists()
    launch("resumed")
    a = load_file(str(Path(full.out_dir, "checkpoints/latest/trainable.safetensors")))
    b = load_file(str(Path(resumed.out_dir, "checkpoints/latest/trainable.safetensors")))
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k  # exact resume: gathered optimizer state and per-rank RNG
    assert [r["step"] for r in _log(full)] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"]))
                                                                 for r in _log(full))
    assert Path(full.out_dir, "samples", "step_000002", "samples.jsonl").is_file()
    pipe = SpeechPipeline.from_pretrained(Path(full.out_dir, "final"), merge=False)
    params = {"lm": dict(pipe.lm.named_parameters()), "head": dict(pipe.head.named_parameters())}
    for k, t in a.items():  # the model dir holds the whole (gathered) trained weights
        part, name = k.split(".", 1)
        assert torch.equal(params[part][name].detach(), t), k
    wav = pipe.tts("hello world", seed=0, max_seconds=1.0)
    assert wav.shape[0] == 1 and wav.shape[1] > 0


@pytest.mark.slow
def test_two_process_deepspeed_zero2_cpu_training(tmp_path):
    """DeepSpeed ZeRO-2 over two CPU processes (configs/accelerate/deepspeed_cpu.yaml), with gradient
    accumulation: it trains the same weights as plain data-parallel training from the same config (DeepSpeed
    owns the accumulation, loss scaling, clipping and the optimizer step), resumes exactly from its ZeRO
    partitions, and refuses to resume a DeepSpeed checkpoint without DeepSpeed."""
    pytest.importorskip("deepspeed")
    from dataclasses import asdict

    import yaml

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "DS_ACCELERATOR": "cpu"}

    def launch(name: str, *extra: str, deepspeed: bool = True, ok: bool = True):
        cfg = tiny_train_config(tmp_path / name, steps=3, save_every=2, batch_size=1, grad_accum=2,
                                max_grad_norm=0.05)  # small enough that clipping acts
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(asdict(cfg)))
        how = (["-m", "accelerate.commands.launch", "--config_file",
                str(root / "configs" / "accelerate" / "deepspeed_cpu.yaml"), "--main_process_port", "29523"]
               if deepspeed else ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29525"])
        res = subprocess.run([sys.executable, *how, "-m", "slm", "train", "--config", str(f), *extra],
                             capture_output=True, text=True, timeout=300, env=env, check=False, cwd=str(tmp_path))
        assert (res.returncode == 0) == ok, res.stderr[-3000:]
        return cfg, res

    full, res = launch("full")
    assert "ranks agree: 2 processes (DeepSpeed)" in res.stdout
    ckpt = Path(full.out_dir, "checkpoints/latest")
    assert sorted(p.name for p in (ckpt / "deepspeed" / "zero").glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # one per rank
    a = load_file(str(ckpt / "trainable.safetensors"))
    ddp, _ = launch("ddp", deepspeed=False)
    c = load_file(str(Path(ddp.out_dir, "checkpoints/latest/trainable.safetensors")))
    assert [r["loss"] for r in _log(full)] == pytest.approx([r["loss"] for r in _log(ddp)], rel=1e-4)
    for k in a:  # same updates as data-parallel AdamW (up to float summation order)
        if k.endswith("in_proj_bias"):  # its key part has zero gradient: Adam turns rounding noise into full steps
            continue
        assert torch.allclose(a[k], c[k], rtol=0, atol=2e-7), (k, float((a[k] - c[k]).abs().max()))
    resumed, _ = launch("resumed", "--stop-after", "2")
    assert not Path(resumed.out_dir, "final").exists()
    launch("resumed")
    b = load_file(str(Path(resumed.out_dir, "checkpoints/latest/trainable.safetensors")))
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k  # exact resume: each rank's optimizer partition and RNG
    _, res = launch("resumed", deepspeed=False, ok=False)  # its checkpoint only resumes under DeepSpeed
    assert "was written under DeepSpeed" in res.stderr


def test_deepspeed_config_comes_from_the_training_config(tmp_path):
    """The DeepSpeed config takes micro-batch, accumulation and clipping from the training config; a value
    that disagrees, or ZeRO-3 (sharded weights), is a clear error."""
    from types import SimpleNamespace

    from slm.train import _deepspeed_config

    cfg = tiny_train_config(tmp_path, batch_size=3, grad_accum=2, max_grad_norm=0.5)

    def acc(**ds):
        return SimpleNamespace(num_processes=2, state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(
            deepspeed_config={"zero_optimization": {"stage": 2}, **ds})))

    a = acc(train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps=1, gradient_clipping=1.0)
    _deepspeed_config(a, cfg)
    got = a.state.deepspeed_plugin.deepspeed_config
    assert (got["train_micro_batch_size_per_gpu"], got["gradient_accumulation_steps"], got["gradient_clipping"],
            got["train_batch_size"]) == (3, 2, 0.5, 12)
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=8 but the training config gives 3"):
        _deepspeed_config(acc(train_micro_batch_size_per_gpu=8), cfg)
    three = acc()
    three.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"] = 3
    with pytest.raises(ValueError, match="ZeRO stage 3 shards the weights"):
        _deepspeed_config(three, cfg)


def test_lm_loss_is_also_logged_split_into_text_and_audio_targets(tmp_path):
    """lm/loss_text (transcripts) and lm/loss_audio (semantic tokens): together they are lm/loss."""
    import math

    from slm.train import BatchSource, SpeechLM, TaskMix, build
    from tests.test_slm_helpers import tiny_codec

    cfg = tiny_train_config(tmp_path, batch_size=4, tasks={"tts": 0.5, "asr": 0.5, "continue": 0.0})
    bb, layout, lm, head = build(cfg, tiny_codec())
    from slm.lm_data import load_tokens

    src = BatchSource(load_tokens(cfg.tokens, split="train"), bb.tokenizer, layout, TaskMix.from_dict(cfg.tasks), cfg,
                      head.cfg.frame_len)
    b = src(0)
    model = SpeechLM(lm, head, 1.0, True, cfg.packing, text_vocab=layout.base_vocab)
    with torch.no_grad():
        out = model(b)
    lab = b.labels[:, 1:]
    n_text = int(((lab >= 0) & (lab < layout.base_vocab)).sum())
    n_audio = int((lab >= layout.base_vocab).sum())
    assert n_text > 0 and n_audio > 0
    mix = (n_text * out["lm/loss_text"] + n_audio * out["lm/loss_audio"]) / (n_text + n_audio)
    assert math.isclose(float(mix), float(out["lm/loss"]), rel_tol=1e-4)
    train(cfg, progress=False)
    assert {"lm/loss_text", "lm/loss_audio"} <= set(_log(cfg)[0])


def test_a_run_keeps_the_layout_it_started_with(tmp_path):
    """A run records its token layout; resuming (or extending) it keeps those specials even when the
    defaults have changed since (here: a run begun before <|interleave|> existed)."""
    from slm.layout import TokenLayout

    cfg = tiny_train_config(tmp_path, steps=2, save_every=2)
    first = train(tiny_train_config(tmp_path / "probe", steps=1, save_every=1), progress=False)
    new = TokenLayout.load(first)
    assert "<|interleave|>" in new.specials
    TokenLayout(new.base_vocab, new.n_semantic).save(cfg.out_dir)  # the older default, 5 specials
    train(cfg, progress=False)
    assert "<|interleave|>" not in TokenLayout.load(Path(cfg.out_dir, "final")).specials
    final = train(tiny_train_config(tmp_path, steps=4, save_every=2), progress=False)  # resumes from step 2
    assert [r["step"] for r in _log(cfg)] == [1, 2, 3, 4]
    assert TokenLayout.load(final).vocab_size == new.vocab_size - 1


def test_remap_semantic_moves_a_model_onto_a_new_codec(tmp_path):
    """`remap_semantic`: a model trained on one codec starts on another whose teacher centroids are a
    permutation of its own; each new code gets exactly the trained row of the old code at its centroid, the
    adapter is kept and the head starts fresh. Codecs without teacher centroids are refused clearly."""
    from slm.pipeline import SpeechPipeline
    from slm.train import TrainConfig, build, semantic_remap
    from tests.test_slm_helpers import tiny_codec

    g = torch.Generator().manual_seed(0)
    base = tiny_codec()  # the tiny codec's centroids start equal: give them distinct places
    with torch.no_grad():
        base.bottleneck.teacher_codebook.centroids.normal_(generator=g)
    base.save_pretrained(tmp_path / "old_codec")
    a = tiny_train_config(tmp_path / "a", steps=3, save_every=100, codec=str(tmp_path / "old_codec"))
    train(a, progress=False)
    src = Path(a.out_dir, "final")
    old = SpeechPipeline.from_pretrained(src, merge=False)
    new = tiny_codec()
    cents = new.bottleneck.teacher_codebook.centroids
    perm = torch.randperm(cents.shape[0], generator=g)
    with torch.no_grad():
        cents.copy_(base.bottleneck.teacher_codebook.centroids[perm])
    mapping, info = semantic_remap(old.codec, new)
    assert torch.equal(mapping, perm) and info["distance"] < 1e-4 * info["spacing"]
    new_dir = tmp_path / "new_codec"
    new.save_pretrained(new_dir)

    b = tiny_train_config(tmp_path / "b", init_from=str(src), codec=str(new_dir), remap_semantic=True,
                          head={"dim": 16, "n_layers": 1, "n_heads": 2})
    with pytest.raises(ValueError, match="not the model's own"):
        build(tiny_train_config(tmp_path / "c", init_from=str(src), codec=str(new_dir)), new)
    _, layout, lm, head = build(b, new)
    ids = torch.arange(layout.n_semantic) + layout.semantic_offset
    text = torch.tensor([1, 2, 3, layout.audio_start])
    with torch.no_grad():
        emb_new, emb_old = lm.get_input_embeddings(), old.lm.get_input_embeddings()
        assert torch.equal(emb_new(ids[None]), emb_old((perm + layout.semantic_offset)[None]))
        assert torch.equal(emb_new(text[None]), emb_old(text[None]))  # text rows and specials untouched
        x = torch.cat([text, ids[:5]])[None]
        y = torch.cat([text, perm[:5] + layout.semantic_offset])[None]
        hn = lm.eval()(x, output_hidden_states=True).hidden_states[-1]
        ho = old.lm.eval()(y, output_hidden_states=True).hidden_states[-1]
        assert torch.allclose(hn, ho, atol=1e-5)  # same adapter: the same sequence of rows gives the same states
    assert head is not None and head.cfg.dim == 16 and old.head.cfg.dim != 16  # a fresh head, the run's settings
    train(b, progress=False)  # and it trains from there
    info = json.loads(Path(b.out_dir, "final", "slm_config.json").read_text())
    assert info["init_from"] == str(src.resolve()) and info["remap_semantic"] is True

    with pytest.raises(ValueError, match="teacher centroids"):
        semantic_remap(old.codec, tiny_codec("rvq"))
    with pytest.raises(ValueError, match="set init_from"):
        TrainConfig(remap_semantic=True, codec=str(new_dir))


def test_manifest_tokens_are_cached_per_codec_content(tmp_path, monkeypatch):
    """`slm train` with a manifest tokenises once into a cache keyed by the codec's files, not only its path: a
    codec retrained in place gets fresh tokens (the old key reused the first codec's), and the token files
    name the codec that made them."""
    import json
    import shutil
    import types

    import soundfile as sf

    from codec.contracts import CodecTokens
    from codec.model import DualStreamCodec
    from slm.train import _tokenize
    from tests.test_slm_helpers import tiny_codec_dir, tiny_train_config

    monkeypatch.setenv("DUALSTREAM_CACHE", str(tmp_path / "cache"))
    rng = torch.Generator().manual_seed(0)
    wav = tmp_path / "a.wav"
    sf.write(wav, (torch.randn(8000, generator=rng) * 0.1).numpy(), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "path": str(wav), "text": "hi", "speaker": "s",
                                                  "split": "train"}) + "\n")
    cdir = tmp_path / "codec"
    shutil.copytree(tiny_codec_dir("sacodec"), cdir)
    cfg = tiny_train_config(tmp_path, codec=str(cdir), tokens="", manifest=str(tmp_path / "m.jsonl"))
    acc = types.SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    first = _tokenize(cfg, DualStreamCodec.from_pretrained(cdir), acc)
    assert _tokenize(cfg, DualStreamCodec.from_pretrained(cdir), acc) == first  # cached: the same dir
    _, meta = CodecTokens.load_with_metadata(Path(first) / "a.safetensors")
    assert meta["variant"] == "sacodec" and meta["codec"] == str(cdir.resolve())
    codec = DualStreamCodec.from_pretrained(cdir)
    with torch.no_grad():
        for p in codec.parameters():
            p.add_(0.01)
    codec.save_pretrained(cdir)  # retrained in place
    assert _tokenize(cfg, DualStreamCodec.from_pretrained(cdir), acc) != first


def test_written_model_files_follow_the_umask(tmp_path):
    """Every file of a model dir (adapter, head, codec, voices, config) and a token file gets the umask's
    mode, as other files do: safetensors alone leaves its files 0600, unreadable by the group sharing them."""
    import os
    import stat

    from codec.contracts import CodecTokens

    old = os.umask(0o027)
    try:
        final = train(tiny_train_config(tmp_path / "a", steps=1, save_every=100), progress=False)
        CodecTokens(torch.zeros(1, 1, 4, dtype=torch.long), torch.zeros(1, 1, 4, dtype=torch.long)).save(
            final / "tokens.safetensors")
    finally:
        os.umask(old)
    files = [f for f in final.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files) and (final / "adapter" / "adapter_model.safetensors") in files
    assert {f.relative_to(final).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == \
        {f.relative_to(final).as_posix(): oct(0o640) for f in files}
