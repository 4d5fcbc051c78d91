"""Decoding loop details (slm.generate, AcousticHead.generate): the fast paths compute what the plain
ones compute."""
import itertools
import os

import pytest
import torch

from slm.acoustic_head import AcousticHead, AcousticHeadConfig, sample
from slm.generate import (
    Decoder,
    Sampling,
    _output_rows,
    _pick,
    _positions,
    generate_best,
    generate_frames,
    generate_text,
    transcribe_aligned,
)
from slm.layout import TokenLayout


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def layout():
    return TokenLayout(base_vocab=500, n_semantic=64)


def _full(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids[None], output_hidden_states=True)
    return out.logits[0, -1], out.hidden_states[-1][0, -1]


def test_allowed_rows_logits_equal_full_projection(lm, layout):
    allowed = layout.audio_mask(600).nonzero().flatten()
    assert not _output_rows(lm, allowed)[2]  # a small set: its rows only
    assert _output_rows(lm, torch.arange(590))[2]  # big sets: the full projection, then gather
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    dec = Decoder(lm, prompt, allowed)
    logits, hidden = _full(lm, prompt)
    assert dec.logits.shape == (allowed.numel(),)
    torch.testing.assert_close(dec.logits, logits[allowed], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec.hidden, hidden, atol=1e-6, rtol=1e-6)
    dec.push(int(allowed[3]))  # and with the cache
    logits, hidden = _full(lm, torch.cat([prompt, allowed[3:4]]))
    torch.testing.assert_close(dec.logits, logits[allowed], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec.hidden, hidden, atol=1e-6, rtol=1e-6)


def _reference_pick(logits, allowed, s, recent, gen):
    """The loop's original form: penalise over the whole vocabulary, then gather the allowed ids."""
    logits = logits.clone()
    window = recent[-s.repetition_window:]
    if s.repetition_penalty != 1.0 and window:
        idx = torch.tensor(sorted(set(window)))
        v = logits[idx]
        logits[idx] = torch.where(v > 0, v / s.repetition_penalty, v * s.repetition_penalty)
    return int(allowed[int(sample(logits[allowed][None], s.temperature, s.top_k, s.top_p, gen)[0])])


def test_pick_with_penalty_matches_full_vocabulary_reference():
    torch.manual_seed(1)
    full = torch.randn(600) * 3
    allowed = torch.arange(500, 570)
    pos = _positions(allowed, 600)
    s = Sampling(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.8)
    recent = [501, 503, 503, 7, 560, 12]  # includes ids outside `allowed`
    for seed in range(30):
        a = _pick(full[allowed], allowed, pos, s, recent, torch.Generator().manual_seed(seed))
        b = _reference_pick(full, allowed, s, recent, torch.Generator().manual_seed(seed))
        assert a == b
    # a subset of `allowed` (no <|audio_end|> before min_frames) equals sampling among those ids only
    subset = torch.arange(0, 70, 2)
    for seed in range(10):
        a = _pick(full[allowed], allowed, pos, s, recent, torch.Generator().manual_seed(seed), subset)
        b = _reference_pick(full, allowed[subset], s, recent, torch.Generator().manual_seed(seed))
        assert a == b and a in allowed[subset].tolist()


def test_generate_frames_fast_path_equals_full_path(lm, layout, monkeypatch):
    import slm.generate as G

    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    s = Sampling(temperature=1.0, top_k=10, top_p=0.95, repetition_penalty=1.3)
    fast = [f.code for f in generate_frames(lm, layout, prompt, None, s, 12, generator=torch.Generator().manual_seed(4),
                                            min_frames=5)]
    monkeypatch.setattr(G, "_output_rows", lambda model, allowed: None)
    plain = [f.code for f in generate_frames(lm, layout, prompt, None, s, 12, generator=torch.Generator().manual_seed(4),
                                             min_frames=5)]
    assert fast == plain and len(fast) >= 5 and all(0 <= c < layout.n_semantic for c in fast)
    # text decoding is unchanged too (greedy): equals transformers' own greedy generate
    ids = generate_text(lm, prompt[:3], torch.ones(600, dtype=torch.bool), set(), 8)
    with torch.no_grad():
        ref = lm.generate(prompt[None, :3], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert ids == ref[0, 3:].tolist()


@torch.no_grad()
def _generate_reference(head, h, sem, voice=None, temperature=0.8, top_k=50, generator=None):
    """The plain form of AcousticHead.generate: the whole prefix through the teacher-forced pass every step."""
    codes = torch.zeros(h.shape[0], 0, dtype=torch.long)
    for _ in range(head.cfg.frame_len):
        logits = head._run(head._inputs(h, sem, codes, voice))[:, -1].float()  # [N, C]
        codes = torch.cat([codes, sample(logits, temperature, top_k, 1.0, generator)[:, None]], dim=1)
    return codes


def test_head_generate_equals_reference():
    torch.manual_seed(0)
    head = AcousticHead(AcousticHeadConfig(backbone_dim=24, n_semantic=16, codebook_size=40, n_codebooks=2, ratio=3,
                                           dim=32, n_layers=2, n_heads=4)).eval()
    h, sem, voice = torch.randn(3, 24), torch.tensor([1, 5, 9]), torch.randn(3, 32)
    for seed in range(5):
        for v in (None, voice):
            a = head.generate(h, sem, v, 0.9, 8, torch.Generator().manual_seed(seed))
            b = _generate_reference(head, h, sem, v, 0.9, 8, torch.Generator().manual_seed(seed))
            assert a.shape == (3, 6) and torch.equal(a, b)
    assert torch.equal(head.generate(h, sem, None, 0.0), _generate_reference(head, h, sem, None, 0.0))


def test_sample_top_k_top_p_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, float("-inf"), -0.5]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, 3, 1.0, gen) for _ in range(3000)])[:, 0]
    assert set(draws.tolist()) == {0, 1, 2}  # only the 3 best
    want = logits[0, :3].softmax(-1)
    torch.testing.assert_close(torch.bincount(draws, minlength=3).float() / 3000, want, atol=0.03, rtol=0)
    # top-p: the smallest set whose mass reaches 0.6 is {0, 1} here (0.39 + 0.24 of the full softmax)
    draws = torch.stack([sample(logits, 1.0, 0, 0.6, gen) for _ in range(500)])[:, 0]
    assert set(draws.tolist()) == {0, 1}
    assert set(sample(logits.expand(4, -1), 0.5, 5, 0.9, gen).tolist()) <= {0, 1, 2, 3, 4}
    assert sample(logits, 0.0).item() == 0


def test_fused_step_matches_transformers(lm, layout):
    from slm.generate import FusedStep, inference_copy

    fast = inference_copy(lm)
    assert fast is not lm and isinstance(fast.fused_step, FusedStep) and not hasattr(lm, "fused_step")
    for a, b in zip(lm.parameters(), fast.parameters(), strict=True):  # same values; the original untouched
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    allowed = layout.audio_mask(600).nonzero().flatten()
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    dec = Decoder(fast, prompt, allowed, max_new=5)
    assert dec.fast is not None
    seq = prompt.tolist()
    for t in (510, 520, 530, 511):
        dec.push(t)
        seq.append(t)
        logits, hidden = _full(lm, torch.tensor(seq))
        torch.testing.assert_close(dec.hidden, hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dec.logits, logits[allowed], atol=1e-5, rtol=1e-5)
    dec.push(512)
    with pytest.raises(RuntimeError, match="full"):
        dec.push(513)  # beyond prompt + max_new
    # several tokens in one pass (an aligned-TTS word): the same state as one by one, and as transformers'
    one, many, ref = Decoder(fast, prompt, allowed, max_new=9), Decoder(fast, prompt, allowed, max_new=9), Decoder(lm, prompt, allowed)
    for chunk in ([7, 8, 9], [510], [11, 12]):
        for t in chunk:
            one.push(t)
        many.push_many(chunk)
        ref.push_many(chunk)
        torch.testing.assert_close(many.hidden, one.hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(many.logits, one.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref.logits, one.logits, atol=1e-5, rtol=1e-5)
    assert many.ids == one.ids == ref.ids
    one.push(530)
    many.push(530)
    torch.testing.assert_close(many.logits, one.logits, atol=1e-5, rtol=1e-5)  # the cache after it is the same too
    s = Sampling(temperature=1.0, top_k=10, top_p=0.95, repetition_penalty=1.3)
    a = [f.code for f in generate_frames(fast, layout, prompt, None, s, 10, generator=torch.Generator().manual_seed(3))]
    b = [f.code for f in generate_frames(lm, layout, prompt, None, s, 10, generator=torch.Generator().manual_seed(3))]
    assert a == b
    # text: the whole-vocabulary projection then gather, also through the fused step
    text = torch.ones(600, dtype=torch.bool)
    assert generate_text(fast, prompt[:3], text, set(), 6) == generate_text(lm, prompt[:3], text, set(), 6)
    assert not FusedStep.supports(torch.nn.Linear(2, 2))


def _decodes_close(models, lm, ids, tol: float) -> None:
    """Each of ``models`` decodes a few tokens after ``ids`` with logits within ``tol`` of ``lm``'s."""
    for model in models:
        dec, ref = Decoder(model, ids, max_new=3), Decoder(lm, ids)
        for t in (7, 9, 11):
            dec.push(t)
            ref.push(t)
            torch.testing.assert_close(dec.logits, ref.logits, atol=tol, rtol=tol)


def test_int8(lm, layout):
    import copy

    from slm.generate import Int8Linear, inference_copy, quantize_int8

    q = inference_copy(lm, int8=True, bf16_prompt=False)
    assert not q.fused_step.prefill_prompt
    assert all(isinstance(m, Int8Linear) for layer in q.fused_step.layers for m in layer if isinstance(m, torch.nn.Module))
    assert type(q.model.layers[0].mlp.up_proj) is torch.nn.Linear  # the prompt runs on fp32 weights
    lin = q.fused_step.layers[0][4]
    x = torch.randn(1, 1, 32)
    assert not torch.equal(lin(x), lin.dense(x))  # one row: the int8 kernel, close to fp32, not equal
    torch.testing.assert_close(lin(x), lin.dense(x), atol=0.02, rtol=0.02)
    assert torch.equal(lin(x.expand(1, 40, 32)), lin.dense(x.expand(1, 40, 32)))  # many rows: fp32 weights
    # models without a fused step get Int8Linear in place of their own linears
    plain = copy.deepcopy(lm)
    assert quantize_int8(plain) == 2 * 7
    ids = torch.tensor([1, 2, 3, layout.audio_start])
    _decodes_close((q, plain), lm, ids, 0.05)
    s = Sampling(temperature=0.8)
    frames = list(generate_frames(q, layout, ids, None, s, 6, generator=torch.Generator().manual_seed(0)))
    assert frames and all(0 <= f.code < layout.n_semantic for f in frames)


@pytest.mark.parametrize("mode", ["weights", "w8a8"])
def test_bf16_prompt(lm, layout, mode):
    """int8 decoding with ``bf16_prompt``: the prompt runs through the fused loop (FusedStep.prefill) with its
    matrices on bf16 copies of the weights; its K/V and last hidden state stay close to transformers' fp32
    forward, decoding goes on from them, side-by-side rows start from them; bf16_prompt needs int8."""
    import torch.nn.functional as F

    from slm.generate import Decoder, FusedStep, inference_copy

    q = inference_copy(lm, int8=mode, bf16_prompt=True)
    f = q.fused_step
    assert f.prefill_prompt
    lin = f.layers[0][4]
    assert lin.bulk.dtype == torch.bfloat16 and torch.equal(lin.bulk, lin.dense.weight.bfloat16())
    many = torch.randn(40, 32)
    assert torch.equal(lin.rows_kernel()(many), F.linear(many.bfloat16(), lin.bulk))  # > max_rows: bf16 copy
    assert lin(many[None]).dtype == torch.float32  # forward casts back
    ids = torch.tensor([5, 9, 2, 7, 1, 3, 8, layout.audio_start])
    dec, ref = Decoder(q, ids, max_new=4), Decoder(lm, ids)
    assert len(dec.cache.layers) == len(ref.cache.layers)
    for a, b in zip(dec.cache.layers, ref.cache.layers):
        assert a.keys.shape == b.keys.shape and a.keys.dtype == torch.float32
        torch.testing.assert_close(a.keys, b.keys, atol=0.05, rtol=0.05)
        torch.testing.assert_close(a.values, b.values, atol=0.05, rtol=0.05)
    torch.testing.assert_close(dec.logits, ref.logits, atol=0.1, rtol=0.1)
    for t in (7, 9, 11):  # decoding goes on from the prefilled K/V (int8 steps)
        dec.push(t)
        ref.push(t)
        torch.testing.assert_close(dec.logits, ref.logits, atol=0.1, rtol=0.1)
    # the prefill itself is exact in fp32: the loop on fp32 weights gives transformers' K/V to rounding
    f32 = inference_copy(lm)
    cache, hid = f32.fused_step.prefill(ids)
    want = Decoder(lm, ids)
    torch.testing.assert_close(hid, want.hidden, atol=1e-5, rtol=1e-5)
    for a, b in zip(cache.layers, want.cache.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
    s = Sampling(temperature=0.8)
    frames = list(generate_best(q, layout, ids, None, s, 6, 2, lambda fr, k: float(len(fr)),
                                generator=torch.Generator().manual_seed(0)))
    assert frames and all(0 <= fr.code < layout.n_semantic for fr in frames)
    with pytest.raises(ValueError, match="bf16_prompt"):
        FusedStep(inference_copy(lm), None, bf16_prompt=True)
    with pytest.raises(ValueError, match="at least one token"):
        f.prefill(torch.tensor([], dtype=torch.long))


def test_int8_w8a8(lm, layout):
    """The w8a8 mode: int8 activations as well, through the integer kernel at a few rows, the fp32 weights for
    the prompt; close to fp32 but further than weights-only; the same modes as settings, and a clear error for
    others."""
    import copy

    from slm.generate import Int8Linear, inference_copy, int8_mode, quantize_int8

    assert [int8_mode(x) for x in (None, False, True, "weights", "w8a8")] == [None, None, "weights", "weights", "w8a8"]
    for bad in ("int4", 1, "W8A8"):
        with pytest.raises(ValueError, match="int8 must be"):
            int8_mode(bad)
    with pytest.raises(ValueError, match="int8 must be"):
        inference_copy(lm, int8="int4")
    q, w = inference_copy(lm, int8="w8a8", bf16_prompt=False), inference_copy(lm, int8="weights", bf16_prompt=False)
    mats = [[m for m in layer if isinstance(m, torch.nn.Module)] for layer in q.fused_step.layers]
    assert mats and all(isinstance(m, Int8Linear) for layer in mats for m in layer)
    # int8 activations on qkv and gate_up; o and down (inputs with outlier channels) keep int8 weights only
    assert all([m.packed is not None for m in layer] == [True, False, True, False] for layer in mats)
    assert all(m.packed is None for layer in w.fused_step.layers for m in layer if isinstance(m, torch.nn.Module))
    lin, ref = q.fused_step.layers[0][4], w.fused_step.layers[0][4]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32)
    exact = lin.dense(x)
    assert not torch.equal(lin(x), exact)
    torch.testing.assert_close(lin(x), exact, atol=0.05, rtol=0.05)
    assert (lin(x) - exact).abs().mean() > (ref(x) - exact).abs().mean()  # activations rounded too
    many = x[:, :1].expand(1, 40, 32)
    assert torch.equal(lin(many), lin.dense(many))  # many rows: fp32 weights
    plain = copy.deepcopy(lm)
    assert quantize_int8(plain, activations=True) == 2 * 7
    assert all(m.packed is not None for m in plain.modules() if isinstance(m, Int8Linear))
    ids = torch.tensor([1, 2, 3, layout.audio_start])
    _decodes_close((q, plain), lm, ids, 0.1)
    # side by side rows through the integer kernel
    s = Sampling(temperature=0.8)
    frames = list(generate_best(q, layout, ids, None, s, 6, 2, lambda fr, k: float(len(fr)),
                                generator=torch.Generator().manual_seed(0)))
    assert frames and all(0 <= f.code < layout.n_semantic for f in frames)


@pytest.fixture(params=["hd8", "hd64"])
def native_lm(request, lm):
    """The tiny stack (head size 8: torch's int8 kernel and SDPA inside the C++ loop), and one with head size 64
    and sizes that are multiples of 64 (the loop's own VNNI int8 kernel and attention, where the CPU has them)."""
    if request.param == "hd8":
        return lm
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=600, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_native_layer_loop_gives_the_python_loops_results(native_lm, layout):
    """int8 decoding's layer loop in C++ (``slm.native``, built on first use) against the Python loop on the same
    int8 matrices: the hidden states and the K/V it writes for one token, a word's tokens in one pass, and rows side
    by side at their own positions (one fed nothing); a whole generation samples the same frames. With the weights'
    bf16 copies, as without. Passes of more rows than the int8 kernel takes without bf16 copies, and the w8a8
    mode, keep the Python loop."""
    from adapters.backbones import out_cache
    from slm.generate import BF16_BULK_ROWS, inference_copy

    lm = native_lm

    q = inference_copy(lm, int8=True, bf16_prompt=False)
    f = q.fused_step
    assert f._native is not None, "the native decoding step did not build (it needs g++ and ninja: make setup)"
    assert f.native_rows(1) and f.native_rows(32) and not f.native_rows(33)
    assert inference_copy(lm, int8="w8a8", bf16_prompt=False).fused_step._native is None
    assert inference_copy(lm).fused_step._native is None  # fp32: the Python loop, exact to transformers
    # with bf16 copies of the weights, passes of more than BF16_BULK_ROWS rows multiply on them, in both loops
    qb = inference_copy(lm, int8=True, bf16_prompt=True)
    assert qb.fused_step.layers[0][1].max_rows == BF16_BULK_ROWS and qb.fused_step.native_rows(40)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])

    def run(q) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        f = q.fused_step
        st = f.start(out_cache(q(ids, use_cache=True)), 6, 30)
        hid = [st.step(7), st.step(9), st.step_many([3, 4, 5]), st.step(11), st.step_many([5, 6, 7, 8, 9, 10])]
        b = f.start_batch(out_cache(q(ids, use_cache=True)), 6, 30, 3)
        hid += [b.step([[1], [2, 3], [4]])[:2], b.step([[4, 5, 6], [7], []])[:2], b.step([[8], [9], [10]])]
        return hid, [st.k, st.v, b.k[:, :2], b.v[:, :2]]

    s = Sampling(temperature=0.8)
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    for model in (q, qb):
        f = model.fused_step
        native_hid, native_kv = run(model)
        kept, f._native = f._native, None
        try:
            python_hid, python_kv = run(model)
            want = [fr.code for fr in generate_frames(model, layout, prompt, None, s, 8,
                                                      generator=torch.Generator().manual_seed(3))]
        finally:
            f._native = kept
        for a, b in zip(native_hid + native_kv, python_hid + python_kv):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        got = [fr.code for fr in generate_frames(model, layout, prompt, None, s, 8,
                                                 generator=torch.Generator().manual_seed(3))]
        assert got == want
    f = q.fused_step
    # what it is given is checked, with a message rather than a crash
    st = f.start(out_cache(q(ids, use_cache=True)), 6, 30)
    with pytest.raises(RuntimeError, match="K/V must be contiguous float32"):
        f.native_forward(f.embed[[7]].view(1, 1, -1), st.k[:, :, :, :10], st.v, torch.tensor([[6]]), st.cos, st.sin,
                         None, 7)
    with pytest.raises(RuntimeError, match="position out of range"):
        f.native_forward(f.embed[[7]].view(1, 1, -1), st.k, st.v, torch.tensor([[30]]), st.cos, st.sin, None, 7)


def test_native_attention_reads_the_shared_positions_once_with_the_same_bits(native_lm):
    """Side-by-side rows after one prompt hold its K/V alike, and after an adopt the positions before it too: the C++
    loop's attention reads row 0's copy of those positions for every row. Same bits as reading each row's own (the
    outputs and the K/V written, over steps of one token, a word and a row fed nothing); row 0's copy is what is
    read (a spoiled copy in the other rows changes nothing); a row writing inside the shared positions is refused."""
    from adapters.backbones import out_cache
    from slm import native
    from slm.generate import inference_copy

    q = inference_copy(native_lm, int8=True, bf16_prompt=False)
    f = q.fused_step
    assert f._native is not None, "the native decoding step did not build (it needs g++ and ninja: make setup)"
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])

    def run(shared: bool, spoil: bool = False) -> list[torch.Tensor]:
        b = f.start_batch(out_cache(q(ids, use_cache=True)), 6, 30, 3)
        assert b.shared == 6
        out = [b.step([[1], [2, 3], [4]])]
        b.adopt(1)
        assert b.shared == 8 and b.t.tolist() == [8, 8, 8]
        if spoil:  # rows 1 and 2 lose their copy of the shared positions
            b.k[:, 1:, :, :8] += 1.0
            b.v[:, 1:, :, :8] -= 1.0
        if not shared:
            b.shared = 0
        out += [b.step([[5], [6], [7]]), b.step([[8, 9], [], [10]]), b.step([[11], [12], [13]])]
        return out + [b.k[:, :1], b.v[:, :1], b.k[:, :, :, 8:], b.v[:, :, :, 8:]]

    plain = run(False)
    for a, b in zip(run(True), plain):
        assert torch.equal(a, b)
    if f.hd % 16 == 0 and native.int8_kernel() in ("amx", "avx512-vnni") and not os.environ.get("SLM_NATIVE_SDPA"):
        spoiled = run(True, spoil=True)
        for a, b in zip(spoiled, plain):
            assert torch.equal(a, b)  # row 0's copy read for every row
        assert not torch.equal(run(False, spoil=True)[1], plain[1])  # each row's own copy: the spoiling shows
    b = f.start_batch(out_cache(q(ids, use_cache=True)), 6, 30, 2)
    b.shared = 7
    with pytest.raises(RuntimeError, match="inside the shared positions"):
        b.step([[1], [2]])


def test_native_int8_kernel_computes_what_torchs_does():
    """The native loop's int8 matmul (``slm.native.int8_mm``: 24-bit fixed-point activations through AVX512-VNNI
    where the CPU has it, torch's kernel elsewhere) against ``torch._weight_int8pack_mm``: 1-12 rows, output
    sizes that are not multiples of its 4-row blocks, rows with a wide range of magnitudes, an all-zero row; a
    row holding NaN gives what torch's kernel gives (it falls back). Both round one fp32-or-better sum to bf16,
    so at most a rare last-bit difference; a slip in the byte split or the offset would be far off."""
    from slm.native import int8_kernel, int8_mm

    assert int8_kernel() in ("amx", "avx512-vnni", "torch"), "the native library did not build (make setup)"
    g = torch.Generator().manual_seed(0)
    for rows, n, k in ((1, 70, 128), (2, 8, 64), (3, 33, 192), (4, 64, 64), (7, 13, 128), (12, 21, 64)):
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        scale = (torch.rand(n, generator=g) / 50 + 1e-3).bfloat16()
        x = torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) ** 6 * 30  # magnitudes over ~1e6
        x[-1, : k // 2] *= 1e-6
        x = x.bfloat16()
        if rows > 2:
            x[1] = 0
        want = torch._weight_int8pack_mm(x, w, scale)
        got = int8_mm(x, w, scale, w.sum(1, dtype=torch.int32))
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
        torch.testing.assert_close(got.float(), want.float(), rtol=1 / 128, atol=1e-6)
        assert (got == want).float().mean() > 0.97
        if rows > 2:
            assert not got[1].any()
    x = torch.randn(2, 64).bfloat16()
    x[0, 5] = float("nan")
    w = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
    scale = torch.full((8,), 0.01).bfloat16()
    got, want = int8_mm(x, w, scale, w.sum(1, dtype=torch.int32)), torch._weight_int8pack_mm(x, w, scale)
    assert got[0].isnan().all() and torch.equal(got[1], want[1])


@pytest.mark.parametrize("amx", ["1", "0"])
def test_native_int8_kernel_sums_exactly(amx, monkeypatch):
    """Where the CPU has AVX512-VNNI, ``int8_mm`` is exact up to its one rounding of each activation row to a
    24-bit fixed-point integer: its output is the exact sum of those integers times the int8 weights, scaled, then
    rounded to fp32 and bf16. Checked bit for bit against that computed in float64 (exact below 2^53), on the AMX
    tiles (from two rows up, blocks of 16 outputs; 2-23 rows cover one to five groups of 5 and a second pass over
    the weights past 20) and on the VNNI path (``SLM_NATIVE_AMX=0``, and output sizes that are not multiples of
    16), so the two kernels give the same bits."""
    from slm.native import int8_kernel, int8_mm

    monkeypatch.setenv("SLM_NATIVE_AMX", amx)
    kernel = int8_kernel()
    if kernel not in ("amx", "avx512-vnni"):
        pytest.skip(f"no own int8 kernel on this CPU ({kernel})")
    assert amx == "1" or kernel == "avx512-vnni"
    g = torch.Generator().manual_seed(1)
    for rows, n, k in ((2, 32, 64), (3, 48, 192), (5, 16, 128), (6, 64, 64), (11, 32, 256), (20, 16, 64),
                       (23, 48, 128), (4, 37, 64), (1, 32, 128)):
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
        scale = (torch.rand(n, generator=g) / 50 + 1e-3).bfloat16()
        x = (torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) ** 6 * 30).bfloat16()
        x[0, ::3] = 0
        xd = x.double()
        mx = xd.abs().amax(1, keepdim=True)
        step = torch.where(mx > 0, torch.exp2(torch.frexp(mx).exponent.double() - 23), torch.zeros_like(mx))
        X = torch.where(step > 0, torch.round(xd / torch.where(step > 0, step, 1)), 0)  # ties to even, as the CPU
        want = ((X @ w.double().T) * step * scale.double()).float().bfloat16()
        got = int8_mm(x, w, scale, w.sum(1, dtype=torch.int32))
        assert torch.equal(got, want), (rows, n, k)


def test_native_layer_loop_falls_back_when_it_cannot_build(lm, monkeypatch):
    """No compiler (a failed build) or ``SLM_NATIVE=0``: decoding keeps the Python loop; a failed build says why
    once, as a warning."""
    from slm import native
    from slm.generate import inference_copy

    def broken(verbose):
        raise RuntimeError("Error building extension 'slm_native_fused_layers'\nc++: not found")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match="could not be built.*c\\+\\+: not found"):
        q = inference_copy(lm, int8=True, bf16_prompt=False)
    assert q.fused_step._native is None
    assert len(Decoder(q, torch.tensor([1, 2, 3]), max_new=2).logits) == 600  # and it decodes
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("SLM_NATIVE", "0")
    assert native.fused_layers() is None and "op" not in native._state


def test_w8a8_smoothing(lm, layout):
    """Calibrated smoothing (``act_max``) moves an outlier channel's range into the weights: the same product,
    closer to fp32 than plain w8a8 when one channel is large; a FusedStep calibrates its w8a8 matrices from token ids."""
    import copy

    from slm.generate import FusedStep, Int8Linear

    lm = copy.deepcopy(lm).eval()  # FusedStep makes the model's weights views of its fused matrices

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16, bias=False)
    x = torch.randn(8, 64)
    x[:, 5] *= 60  # one large channel sets a per-call activation scale alone
    plain, smooth = Int8Linear(lin, activations=True), Int8Linear(lin, activations=True, act_max=x.abs().amax(0))
    exact = lin(x)
    with torch.no_grad():
        err = [float((m(x) - exact).abs().mean()) for m in (plain, smooth)]
    assert err[1] < 0.5 * err[0]
    with pytest.raises(ValueError, match="act_max has shape"):
        Int8Linear(lin, activations=True, act_max=torch.ones(3))
    with pytest.raises(ValueError, match="activations=True"):
        Int8Linear(lin, act_max=torch.ones(64))
    ids = torch.tensor([1, 2, 3, layout.audio_start, 7, 9])
    f = FusedStep(lm, "w8a8", ids)
    mats = [m for layer in f.layers for m in layer if isinstance(m, Int8Linear)]
    assert len(mats) == 4 * len(f.layers)
    assert [m.inv is not None and m.packed is not None for m in mats] == [True, False, True, False] * len(f.layers)
    assert all(m.inv is None for layer in FusedStep(lm, "w8a8").layers for m in layer if isinstance(m, Int8Linear))
    assert all(m.inv is None for layer in FusedStep(lm, "weights", ids).layers  # calibration is for w8a8 only
               for m in layer if isinstance(m, Int8Linear))
    with pytest.raises(ValueError, match="at least one token"):
        FusedStep(lm, "w8a8", torch.tensor([], dtype=torch.long))
    # the calibrated step decodes close to fp32
    cache = Decoder(lm, ids[:4]).cache
    ref = FusedStep(lm).start(cache, 4, 8)
    st = f.start(Decoder(lm, ids[:4]).cache, 4, 8)
    for t in (7, 9, 11):
        torch.testing.assert_close(st.step(t), ref.step(t), atol=0.1, rtol=0.1)


def test_tap_inputs_sees_what_the_model_feeds_its_matrices(lm):
    """``FusedStep.tap_inputs`` (the calibration pass: int8 activation maxima, quantizer Hessians) gives each fused
    matrix exactly what transformers' forward feeds the projections it fuses, sequence by sequence; the loop is
    restored afterwards, also when the callback fails; an empty sequence is a clear error."""
    import copy

    from slm.generate import FusedStep

    lm = copy.deepcopy(lm).eval()
    step = FusedStep(lm)
    seqs = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([7, 3, 9])]
    got: dict = {}
    step.tap_inputs(seqs, lambda i, j, x: got.setdefault((i, j), []).append(x.clone()))
    want: dict = {}
    hooks = []
    for i, layer in enumerate(lm.get_decoder().layers):
        for j, mod in ((1, layer.self_attn.q_proj), (2, layer.self_attn.o_proj), (4, layer.mlp.gate_proj),
                       (5, layer.mlp.down_proj)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=(i, j): want.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        for ids in seqs:
            lm(input_ids=ids[None])
    for h in hooks:
        h.remove()
    assert got.keys() == want.keys() and len(got) == 4 * len(step.layers)
    for key, xs in got.items():
        assert [x.shape[0] for x in xs] == [5, 3] and len(want[key]) == 2
        for a, b in zip(xs, want[key]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    kept = step.layers

    def boom(i, j, x):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        step.tap_inputs(seqs[0], boom)
    assert step.layers is kept
    ref = step.start(Decoder(lm, seqs[0]).cache, 5, 7).step(3)
    torch.testing.assert_close(ref, FusedStep(lm).start(Decoder(lm, seqs[0]).cache, 5, 7).step(3))
    with pytest.raises(ValueError, match="at least one token"):
        step.tap_inputs([seqs[0], torch.tensor([], dtype=torch.long)], lambda i, j, x: None)
    with pytest.raises(TypeError, match="one per sequence"):  # a plain list of ids is not 5 one-token sequences
        step.tap_inputs([1, 2, 3, 4, 5], lambda i, j, x: None)


def _aligned_run(model, layout, words, cap, seed, max_frames=60, monkeypatch=None):
    import slm.generate as G

    seen = []

    class Recording(G.Decoder):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self)

    monkeypatch.setattr(G, "Decoder", Recording)
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0)
    frames = list(generate_frames(model, layout, prompt, None, s, max_frames, generator=torch.Generator().manual_seed(seed),
                                  words=words, max_word_frames=cap))
    return frames, seen[0].ids[len(prompt):]


def _spans(ids, layout):
    """Split the ids after the prompt into (text run, frame count) pairs."""
    out = []
    for t in ids:
        if layout.is_semantic(torch.tensor(t)):
            out[-1][1] += 1
        elif not out or out[-1][1]:
            out.append([[t], 0])
        else:
            out[-1][0].append(t)
    return out


def test_aligned_generation_feeds_every_word_in_order(lm, layout, monkeypatch):
    words = [[7, 8], [9], [10, 11, 12], [13]]
    for cap, seed in [(1, 0), (3, 1), (5, 2), (5, 3)]:
        frames, ids = _aligned_run(lm, layout, words, cap, seed, monkeypatch=monkeypatch)
        spans = _spans(ids, layout)
        # the words, whole and in order, each followed by 1..cap frames; no other text in the span
        assert [t for t, _ in spans] == words
        # the last frame is yielded but not fed (nothing follows it), so count it on the last span
        counts = [n for _, n in spans[:-1]] + [len(frames) - sum(n for _, n in spans[:-1])]
        assert all(1 <= n <= cap for n in counts), counts
        assert all(0 <= f.code < layout.n_semantic for f in frames)
        if cap == 1:
            assert len(frames) == len(words)
    # one cap per word
    frames, ids = _aligned_run(lm, layout, words, [1, 2, 1, 3], 0, monkeypatch=monkeypatch)
    counts = [n for _, n in _spans(ids, layout)]
    counts[-1] = len(frames) - sum(counts[:-1])
    assert all(1 <= n <= c for n, c in zip(counts, [1, 2, 1, 3])) and counts[0] == counts[2] == 1
    with pytest.raises(ValueError, match="4 words"):
        _aligned_run(lm, layout, words, [1, 2], 0, monkeypatch=monkeypatch)


def test_aligned_generation_moves_on_when_the_model_says_so(lm, layout, monkeypatch):
    import slm.generate as G

    words = [[7], [9, 9], [10], [13]]
    pick = G._pick

    def eager(logits, allowed, pos, s, recent, gen, subset=None):
        """Choose to move on (next word, or <|audio_end|> after the last) whenever that is allowed."""
        other = [int(i) for i in (subset if subset is not None else range(allowed.numel()))
                 if not layout.is_semantic(allowed[int(i)])]
        return int(allowed[other[0]]) if other else pick(logits, allowed, pos, s, recent, gen, subset)

    monkeypatch.setattr(G, "_pick", eager)
    frames, ids = _aligned_run(lm, layout, words, 8, 0, monkeypatch=monkeypatch)
    # one frame per word (a word must have one before the model may leave it), then the end
    assert len(frames) == len(words) and [t for t, _ in _spans(ids, layout)] == words
    with pytest.raises(ValueError, match="non-empty"):
        next(generate_frames(lm, layout, torch.tensor([1, layout.audio_start]), None, Sampling(), 5, words=[[7], []]))


def test_aligned_asr_writes_a_word_where_the_model_puts_its_mass_on_text(layout, monkeypatch):
    """Aligned ASR's decisions, on a scripted model: after a "boundary" frame text wins and a two-token word is
    written, then the model turns back to frames; every frame is fed once, in order; the words owed at the
    end come out until <|audio_end|>; the text budget is kept."""
    import slm.generate as G

    V, off, end = 600, layout.semantic_offset, layout.audio_end
    boundary = {off + 3, off + 5}
    fed = []

    class Scripted:
        def __init__(self, model, prompt, allowed=None, need_hidden=True, max_new=None):
            self.ids = prompt.tolist()
            fed.extend(self.ids)
            self.logits = self._next()

        def _next(self):
            lg = torch.full((V,), -20.0)
            last = self.ids[-1]
            tail = len(self.ids) - 1 - max(i for i, t in enumerate(self.ids) if not 0 <= t < layout.base_vocab)
            if last in boundary or (last == off + 9 and tail == 0):  # a word's end (frame 9: the last frame)
                lg[7] = 5.0
            elif last == 7:
                lg[8] = 5.0  # the word's second token
            elif last == 8 and self.ids[-3] == off + 9 and tail == 2:
                lg[11] = 5.0  # at the end: one more word owed
            elif last == 11:
                lg[end] = 5.0
            else:
                lg[off + 1] = 5.0  # the next frame
            return lg

        def push(self, t):
            self.ids.append(t)
            fed.append(t)
            self.logits = self._next()

    monkeypatch.setattr(G, "Decoder", Scripted)
    codes = torch.tensor([1, 3, 2, 5, 4, 9])
    words = list(transcribe_aligned(None, layout, codes))
    assert words == [[7, 8], [7, 8], [7, 8, 11]]
    frames = [t for t in fed if layout.is_semantic(torch.tensor(t))]
    assert frames == (codes + off).tolist()
    assert fed == [layout.special_id("asr"), layout.audio_start, off + 1, off + 3, 7, 8, off + 2, off + 5, 7, 8, off + 4,
                   off + 9, 7, 8, 11]
    # with the tokens that begin a word marked, the tail's next word is a word of its own
    starts = torch.zeros(V, dtype=torch.bool)
    starts[[7, 11]] = True
    fed.clear()
    assert list(transcribe_aligned(None, layout, codes, word_start=starts)) == [[7, 8], [7, 8], [7, 8], [11]]
    fed.clear()
    assert [t for w in transcribe_aligned(None, layout, codes, max_new_tokens=3) for t in w] == [7, 8, 7]
    with pytest.raises(ValueError, match="at least one"):
        list(transcribe_aligned(None, layout, torch.tensor([], dtype=torch.long)))


def test_aligned_asr_keeps_words_apart_when_the_model_would_run_on(layout, monkeypatch):
    """A model that always wants more text (its English prior running on): with word starts marked it still
    writes one word per frame, each begun by a word-start token, and at most max_tail_words at the end."""
    import slm.generate as G

    V = 600

    class Chatty:
        def __init__(self, model, prompt, allowed=None, need_hidden=True, max_new=None):
            self.ids = prompt.tolist()
            self.logits = self._next()

        def _next(self):
            lg = torch.full((V,), -20.0)
            lg[8 if self.ids[-1] == 7 else 7] = 5.0  # " the" then "y" then " the" ...: never a frame
            lg[9] = 4.0  # a continuation token that is not the best
            return lg

        def push(self, t):
            self.ids.append(t)
            self.logits = self._next()

    monkeypatch.setattr(G, "Decoder", Chatty)
    starts = torch.zeros(V, dtype=torch.bool)
    starts[7] = True
    codes = torch.arange(6)
    words = list(transcribe_aligned(None, layout, codes, word_start=starts, max_tail_words=2))
    assert words == [[7, 8]] * (len(codes) - 1 + 2)
    # unmarked, the same model runs on for max_word_tokens at every frame (and twice in the tail)
    run_on = list(transcribe_aligned(None, layout, codes, max_new_tokens=40, max_word_tokens=4))
    assert run_on == [[7, 8, 7, 8]] * (len(codes) - 1 + 2)
    # and the budget bounds all text
    assert sum(map(len, transcribe_aligned(None, layout, codes, max_new_tokens=10, max_word_tokens=4))) == 10


def test_aligned_asr_on_a_real_model_writes_only_text(lm, layout):
    codes = torch.randint(0, layout.n_semantic, (12,), generator=torch.Generator().manual_seed(0))
    for threshold in (0.01, 0.5, 0.99):
        out = [t for w in transcribe_aligned(lm, layout, codes, max_new_tokens=20, threshold=threshold) for t in w]
        assert len(out) <= 20 and all(0 <= t < layout.base_vocab for t in out)
    # the fused one-token step (inference_copy) writes the same words as transformers' forward
    from slm.generate import inference_copy

    fast = inference_copy(lm)
    assert getattr(fast, "fused_step", None) is not None
    for threshold in (0.01, 0.3):
        assert (list(transcribe_aligned(lm, layout, codes, max_new_tokens=20, threshold=threshold))
                == list(transcribe_aligned(fast, layout, codes, max_new_tokens=20, threshold=threshold)))


def test_candidates_decoded_side_by_side_follow_the_one_by_one_loop(lm, layout, monkeypatch):
    """generate_candidates' rows, each fed its own tokens (a frame, a whole word, or nothing once it has ended)
    in one padded pass: replaying each row's sampled choices through generate_frames (the one-sequence loop)
    gives the same frames, hidden states and acoustic codes; the batched state equals per-row states."""
    import slm.generate as G
    from slm.generate import generate_candidates, inference_copy

    fast = inference_copy(lm)
    head = AcousticHead(AcousticHeadConfig(backbone_dim=32, n_semantic=64, codebook_size=16, n_codebooks=1, ratio=2,
                                           dim=16, n_layers=1, n_heads=2, context=2)).eval()
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    words = [[7, 8], [9], [10, 11, 12], [13]]
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.2, head_temperature=0.0)
    picks: dict[int, list[int]] = {}
    pick = G._pick

    def recording(logits, allowed, pos, sp, recent, gen, subset=None):
        """The loop's own pick, except that it moves on (next word, or the end) a quarter of the times it may:
        the tiny random model alone almost never does, and the rows should go apart."""
        tok = pick(logits, allowed, pos, sp, recent, gen, subset)
        ways = [int(allowed[i]) for i in (subset if subset is not None else range(allowed.numel()))
                if not layout.is_semantic(allowed[int(i)])]
        if ways and float(torch.rand((), generator=gen)) < 0.25:
            tok = ways[0]
        picks.setdefault(id(recent), []).append(tok)
        return tok

    monkeypatch.setattr(G, "_pick", recording)
    for kw in ({"words": words, "max_word_frames": [3, 2, 4, 5], "min_frames": 6}, {"min_frames": 3}):
        picks.clear()
        cands = generate_candidates(fast, layout, prompt, head, s, 14, 4, None, torch.Generator().manual_seed(1), **kw)
        assert len(cands) == 4 and len({tuple(f.code for f in c) for c in cands}) > 1
        assert len({len(c) for c in cands}) > 1  # the rows went apart (different lengths: ragged feeds)
        scripts = list(picks.values())
        assert len(scripts) == 4
        for cand, script in zip(cands, scripts, strict=True):
            it = iter(script)
            monkeypatch.setattr(G, "_pick", lambda *a, it=it, **k: next(it))
            one = list(generate_frames(fast, layout, prompt, head, s, 14, None, None, **kw))
            monkeypatch.setattr(G, "_pick", recording)
            assert [f.code for f in one] == [f.code for f in cand]
            ws = [f.word for f in cand]
            assert ws == [f.word for f in one]
            if "words" in kw:  # each frame knows its word: in order, every word its frames, within its cap
                assert ws[0] == 0 and all(b - a in (0, 1) for a, b in itertools.pairwise(ws))
                assert all(ws.count(k) <= cap for k, cap in enumerate(kw["max_word_frames"]))
            else:
                assert set(ws) == {0}
            torch.testing.assert_close(torch.stack([f.hidden for f in cand]), torch.stack([f.hidden for f in one]),
                                       atol=1e-5, rtol=1e-5)
            assert torch.equal(torch.stack([f.acoustic for f in cand]), torch.stack([f.acoustic for f in one]))
            assert len(cand) >= kw["min_frames"]
    monkeypatch.setattr(G, "_pick", pick)
    # the same seed, the same candidates; models without a fused step draw them one after another
    a = generate_candidates(fast, layout, prompt, head, s, 10, 3, None, torch.Generator().manual_seed(2), words=words)
    b = generate_candidates(fast, layout, prompt, head, s, 10, 3, None, torch.Generator().manual_seed(2), words=words)
    assert [[f.code for f in c] for c in a] == [[f.code for f in c] for c in b]
    gen, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq = generate_candidates(lm, layout, prompt, None, s, 8, 2, None, gen)
    assert [[f.code for f in c] for c in seq] == [[f.code for f in generate_frames(lm, layout, prompt, None, s, 8,
                                                                                   None, ref)] for _ in range(2)]
    with pytest.raises(ValueError, match="n must be"):
        generate_candidates(fast, layout, prompt, head, s, 10, 0)
    # the batched state itself: ragged feeds equal each row's own state
    dec = Decoder(fast, prompt, None)
    batch = fast.fused_step.start_batch(dec.cache, 4, 20, 3)
    rows = [fast.fused_step.start(Decoder(fast, prompt, None).cache, 4, 20) for _ in range(3)]
    for feeds in ([[510], [7, 8, 9], []], [[], [511], [12, 13]], [[520, 521], [530], [531]]):
        h = batch.step(feeds)
        for r, (state, f) in enumerate(zip(rows, feeds, strict=True)):
            if f:
                torch.testing.assert_close(h[r], state.step_many(f), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="feeds"):
        batch.step([[1]])
    with pytest.raises(RuntimeError, match="full"):
        batch.step([[1] * 12, [], []])


def test_best_of_chosen_every_few_words_streams_the_chosen_rows(lm, layout, monkeypatch):
    """generate_best with ``every``: the rows wait after each ``every`` words, the score ranks them, the best row's
    frames are yielded before the next words are drawn, and all rows go on from its state. The frames made are
    those of one sequence: each frame's hidden state equals a full forward over the prompt, words and frames before
    it, and the acoustic codes equal the head's over that sequence with its context (nothing of the other rows
    leaks in). ``every = 0``: the whole candidate the score ranks highest (generate_candidates')."""
    import slm.generate as G
    from slm.generate import generate_best, generate_candidates, inference_copy

    fast = inference_copy(lm)
    head = AcousticHead(AcousticHeadConfig(backbone_dim=32, n_semantic=64, codebook_size=16, n_codebooks=1, ratio=2,
                                           dim=16, n_layers=1, n_heads=2, context=2)).eval()
    prompt = torch.tensor([1, 2, 3, layout.audio_start])
    words = [[7, 8], [9], [10, 11, 12], [13], [14, 15], [16]]
    kw = {"words": words, "max_word_frames": [3, 2, 4, 5, 3, 3], "min_frames": 6}
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, head_temperature=0.0)
    pick = G._pick

    def moving(logits, allowed, pos, sp, recent, gen, subset=None):
        """The loop's pick, moving on a third of the times it may (the tiny random model alone rarely does)."""
        tok = pick(logits, allowed, pos, sp, recent, gen, subset)
        ways = [int(allowed[i]) for i in (subset if subset is not None else range(allowed.numel()))
                if not layout.is_semantic(allowed[int(i)])]
        return ways[0] if ways and float(torch.rand((), generator=gen)) < 0.35 else tok

    monkeypatch.setattr(G, "_pick", moving)
    calls: list[tuple[list[int], int | None]] = []

    def rank(codes: list[int]) -> float:  # any fixed ranking of a row's frames
        return float(sum(c * (i + 1) for i, c in enumerate(codes)) % 97)

    def score(frames, spoken):
        calls.append(([f.code for f in frames], spoken))
        return rank(calls[-1][0])

    for every in (1, 2):
        calls.clear()
        it = generate_best(fast, layout, prompt, head, s, 20, 3, score, every, None, torch.Generator().manual_seed(3),
                           **kw)
        first = next(it)
        assert len(calls) == 3 and calls[0][1] == every  # the first frame came after one choice, at `every` words
        out = [first, *it]
        groups = [calls[i : i + 3] for i in range(0, len(calls), 3)]
        assert all(len(g) == 3 and len({c[1] for c in g}) == 1 for g in groups) and len(groups) > 1
        assert [g[0][1] for g in groups[:-1]] == list(range(every, len(words), every))[: len(groups) - 1]
        assert groups[-1][0][1] is None or len(out) == 20  # the sentence's end is a choice too (or the cap ended it)
        done: list[int] = []
        for g in groups:  # each choice: the rows share what was chosen before; the one yielded scored highest
            assert all(c[0][: len(done)] == done for c in g)
            assert len({tuple(c[0]) for c in g}) > 1  # the rows went apart after the last choice
            done = max((c[0] for c in g), key=rank)
        assert [f.code for f in out] == done
        ws = [f.word for f in out]  # aligned rules hold across the choices
        assert ws[0] == 0 and all(b - a in (0, 1) for a, b in itertools.pairwise(ws))
        assert all(ws.count(k) <= cap for k, cap in enumerate(kw["max_word_frames"]))
        # one sequence: prompt + first word, then each frame's token, each later word before its first frame
        seq = prompt.tolist() + words[0]
        for i, f in enumerate(out):
            if i and f.word != out[i - 1].word:
                seq += words[f.word]
            _, h = _full(lm, torch.tensor(seq))
            torch.testing.assert_close(f.hidden, h, atol=1e-5, rtol=1e-5)
            seq.append(f.code + layout.semantic_offset)
        ac = head.generate_frames(torch.stack([f.hidden for f in out]), torch.tensor([f.code for f in out]),
                                  temperature=0.0)
        assert torch.equal(torch.stack([f.acoustic for f in out]), ac)
    # every = 0: one choice among whole candidates, the same draws as generate_candidates
    calls.clear()
    whole = list(generate_best(fast, layout, prompt, head, s, 20, 3, score, 0, None, torch.Generator().manual_seed(3),
                               **kw))
    cands = generate_candidates(fast, layout, prompt, head, s, 20, 3, None, torch.Generator().manual_seed(3), **kw)
    assert [c[1] for c in calls] == [None] * 3
    assert [c[0] for c in calls] == [[f.code for f in c] for c in cands]
    assert [f.code for f in whole] == max((c[0] for c in calls), key=rank)
    monkeypatch.setattr(G, "_pick", pick)
    with pytest.raises(ValueError, match="best_of_words"):
        Sampling(best_of=2, best_of_words=-1)


def test_int8_rows_kernel_matches_forward():
    """What FusedStep's loop calls (:meth:`Int8Linear.rows_kernel` on ``[rows, in]``) gives the int8 kernels' products
    bit for bit in both forms, in the kernel's dtype (bf16 from the weight-only kernel), the fp32 weights above
    ``max_rows``, and the bias; ``forward`` gives the same in the input's shape and dtype."""
    from slm.generate import Int8Linear

    torch.manual_seed(0)
    for bias in (False, True):
        lin = torch.nn.Linear(48, 24, bias=bias)
        for act in (False, True):
            m = Int8Linear(lin, max_rows=4, activations=act, act_max=torch.rand(48) + 0.5 if act else None)
            run = m.rows_kernel()
            for rows in (1, 3, 5):
                x = torch.randn(rows, 48)
                with torch.no_grad():  # the kernels called by hand; above max_rows the fp32 weights
                    if rows > 4:
                        ref = lin(x)
                    elif act:
                        ref = torch.ops.quantized.linear_dynamic(x * m.inv, m.packed, False)
                    else:
                        ref = torch._weight_int8pack_mm(x.to(torch.bfloat16), m.qweight, m.scale).float()
                    ref = ref if not bias or rows > 4 else ref + lin.bias
                    y = run(x)
                    assert torch.equal(m(x[None]), ref[None])  # forward: [1, rows, in] in, fp32 out
                assert y.dtype == (torch.bfloat16 if not (act or bias) and rows <= 4 else torch.float32)  # bias: fp32
                assert torch.equal(y.float(), ref), (bias, act, rows)


def test_fused_step_layers_setter(lm):
    """Setting ``FusedStep.layers`` rebuilds what its loop calls: a wrapped matrix is called on ``[rows, in]``."""
    import copy

    from slm.generate import FusedStep

    f = FusedStep(copy.deepcopy(lm).eval())
    seen = []
    n1, qkv, o, n2, gu, down = f.layers[0]

    def spy(x):
        seen.append(tuple(x.shape))
        return down(x)

    f.layers = [(n1, qkv, o, n2, gu, spy)] + f.layers[1:]
    x = f.embed[torch.tensor([[1, 2, 3]])]
    cos, sin = f.rotary(x, torch.arange(3)[None])
    f.layers_forward(x, cos[0][:, None], sin[0][:, None], lambda i, q, k, v: torch.nn.functional.
                     scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                                  enable_gqa=True))
    assert seen == [(3, down.in_features)]
