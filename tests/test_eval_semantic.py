"""Unit quality (purity, PNMI), frame labelling and the CTC probe on tiny synthetic problems."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.corpus.phones import PHONE_TO_ID
from slm.eval.probe import (
    CTCProbe,
    FrameProbeConfig,
    ProbeConfig,
    greedy_decode,
    reverse_padded,
    train_frame_probe,
    train_probe,
)
from slm.eval.units import chance_pnmi, frame_labels, unit_quality


def test_frame_labels_take_the_phone_at_each_frame_centre():
    phones = [[0.0, 0.1, "sil"], [0.1, 0.3, "k"], [0.3, 0.5, "ae"]]
    ids = frame_labels(phones, n_frames=6, frame_rate=10.0)  # centres 0.05 .. 0.55 s
    want = [PHONE_TO_ID[p] for p in ("sil", "k", "k", "ae", "ae", "ae")]
    assert ids.tolist() == want
    with pytest.raises(ValueError, match="inventory"):
        frame_labels([[0.0, 0.1, "xx"]], 2, 10.0)


def test_pnmi_ground_truth_codes_is_one_and_random_codes_near_zero():
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 40, size=100_000)
    perfect = unit_quality(phones, phones * 7 + 3)  # any relabelling of the phones themselves
    assert perfect.pnmi == pytest.approx(1.0, abs=1e-9)
    assert perfect.phone_purity == pytest.approx(1.0) and perfect.cluster_purity == pytest.approx(1.0)
    rand = unit_quality(phones, rng.integers(0, 100, size=phones.size))
    assert rand.pnmi < 0.05
    split = unit_quality(phones, phones * 2 + rng.integers(0, 2, size=phones.size))  # each phone -> 2 codes
    assert split.pnmi == pytest.approx(1.0, abs=1e-9) and split.cluster_purity == pytest.approx(0.5, abs=0.01)
    assert chance_pnmi(phones, phones) < 0.01  # shuffling destroys the perfect code's information
    few = phones[:2000]  # few frames, many codes: the plug-in estimate is biased up, the floor shows it
    assert chance_pnmi(few, rng.integers(0, 1024, size=few.size)) > 0.3
    with pytest.raises(ValueError, match="one code per phone"):
        unit_quality(phones[:10], phones[:9])


def _synthetic_items(n: int, rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # each phone is spoken as 1-2 frames of its own code (two codes per phone, like k-means units)
    items = []
    for _ in range(n):
        target = rng.integers(0, 8, size=int(rng.integers(3, 7)))
        codes = np.concatenate([np.full(int(rng.integers(1, 3)), 2 * p + int(rng.integers(0, 2))) for p in target])
        items.append((torch.from_numpy(codes).long(), torch.from_numpy(target).long()))
    return items


def test_ctc_probe_learns_a_tiny_problem():
    rng = np.random.default_rng(0)
    train, test = _synthetic_items(200, rng), _synthetic_items(20, rng)
    cfg = ProbeConfig(embed_dim=16, hidden=32, layers=1, steps=150, batch_size=16, lr=1e-2, min_rate=25.0)
    res = train_probe(train, test, n_codes=16, n_labels=8, frame_rate=12.5, cfg=cfg, progress=False)
    assert res.upsample == 2
    assert res.last_loss < 0.5 * res.first_loss
    assert res.per < 0.5


def test_greedy_decode_collapses_repeats_and_blanks():
    logp = torch.full((6, 3), -10.0)
    for t, k in enumerate([0, 0, 2, 0, 1, 1]):  # blank = 2
        logp[t, k] = 0.0
    assert greedy_decode(logp, 6, blank=2) == [0, 0, 1]


def test_probe_output_does_not_depend_on_batch_padding():
    x = torch.arange(10.0).view(2, 5, 1)
    assert reverse_padded(x, torch.tensor([5, 3]))[..., 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    probe = CTCProbe(n_codes=32, n_labels=5, upsample=2, cfg=ProbeConfig(embed_dim=8, hidden=8)).eval()
    long, short = torch.randint(0, 32, (7,)), torch.randint(0, 32, (4,))
    batch = torch.stack([long, torch.cat([short, torch.zeros(3, dtype=torch.long)])])
    with torch.no_grad():
        both = probe(batch, torch.tensor([7, 4]))
        alone = probe(short[None])
    assert torch.allclose(both[1, :8], alone[0], atol=1e-6)


def _frame_problem(n: int, rng: np.random.Generator, random_codes: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # phones of 1-3 frames; label 0 (silence-like) is the most frequent; codes: two k-means-like codes per
    # phone, or codes that carry nothing about the phone
    items = []
    for _ in range(n):
        phones = np.where(rng.random(8) < 0.3, 0, rng.integers(1, 8, size=8))
        labels = np.concatenate([np.full(int(rng.integers(1, 4)), p) for p in phones])
        codes = rng.integers(0, 16, size=labels.size) if random_codes else 2 * labels + rng.integers(0, 2, labels.size)
        items.append((torch.from_numpy(codes).long(), torch.from_numpy(labels).long()))
    return items


@pytest.mark.parametrize("random_codes", [False, True])
def test_frame_probe_reads_phone_codes_and_not_random_ones(random_codes):
    rng = np.random.default_rng(0)
    train, test = _frame_problem(150, rng, random_codes), _frame_problem(30, rng, random_codes)
    cfg = FrameProbeConfig(steps=120, context_s=0.08)
    res = train_frame_probe(train, test, n_codes=16, n_labels=8, frame_rate=12.5, cfg=cfg, progress=False)
    assert res.context == 1 and 0.2 < res.chance < 0.5  # label 0 is ~30% of frames
    if random_codes:
        assert abs(res.accuracy - res.chance) < 0.06
    else:
        assert res.accuracy > 0.98 and res.last_loss < 0.5 * res.first_loss
    again = train_frame_probe(train, test, n_codes=16, n_labels=8, frame_rate=12.5, cfg=cfg, progress=False)
    assert again.accuracy == res.accuracy  # seeded
    with pytest.raises(ValueError, match="codes in"):
        train_frame_probe([(torch.tensor([0, 99]), torch.tensor([0, 1]))], test, 16, 8, 12.5, cfg, progress=False)


def test_semantic_report_has_the_probe_columns(tmp_path, monkeypatch):
    import json

    from slm.eval import semantic_eval as se
    from slm.eval.data import EvalItem

    rng = np.random.default_rng(0)
    phone_set = ["sil", "k", "ae", "t", "s", "iy"]

    def item(i: int) -> EvalItem:
        seq, t, phones = rng.choice(phone_set, size=10), 0.0, []
        for p in seq:
            d = float(rng.choice([0.08, 0.16]))
            phones.append([t, t + d, str(p)])
            t += d
        return EvalItem(id=f"u{i}", wav=torch.zeros(1, int(t * 16000)), sample_rate=16000, text="", speaker="s",
                        synth="x", phones=phones)

    def codes(codec, items, with_teacher):  # semantic = the phone itself, acoustic = noise
        sem = [frame_labels(it.phones, round(it.phones[-1][1] * 12.5), 12.5) for it in items]
        return {"semantic": sem, "acoustic": [rng.integers(0, 64, size=len(c)) for c in sem]}

    class FakeCodec:
        name = "fake"

        def __init__(self, path, teacher_spec=None):
            pass

    monkeypatch.setattr(se, "LoadedCodec", FakeCodec)
    monkeypatch.setattr(se, "stream_codes", codes)
    monkeypatch.setattr(se, "stream_rates", lambda c: {"semantic": 12.5, "acoustic": 12.5})
    monkeypatch.setattr(se, "stream_sizes", lambda c: {"semantic": 64, "acoustic": 64})
    train, test = [item(i) for i in range(60)], [item(100 + i) for i in range(10)]
    res = se.evaluate_semantic("unused", train, test, probe=ProbeConfig(embed_dim=8, hidden=8, layers=1, steps=3),
                               frame_probe=FrameProbeConfig(steps=60))
    md = se.write_semantic_report([res], tmp_path).read_text()
    for header in ("frame acc", "majority", "CTC PER", "CTC loss", "CTC empty"):
        assert f"| {header} |" in md
    rows = {r["stream"]: r for r in json.loads((tmp_path / "semantic_eval.json").read_text())[0]["rows"]}
    assert rows["semantic"]["frame_acc"] > 0.95 > rows["acoustic"]["frame_acc"]
    for key in ("frame_chance", "probe_per", "probe_last_loss", "probe_empty"):
        assert key in rows["acoustic"]


def test_ctc_probe_starts_at_the_label_prior():
    rng = np.random.default_rng(0)
    train, test = _synthetic_items(50, rng), _synthetic_items(5, rng)
    cfg = {"embed_dim": 8, "hidden": 8, "layers": 1, "steps": 1, "batch_size": 50}
    prior = train_probe(train, test, 16, 8, 12.5, ProbeConfig(**cfg), progress=False)
    flat = train_probe(train, test, 16, 8, 12.5, ProbeConfig(**cfg, prior_init=False), progress=False)
    assert prior.first_loss < 0.8 * flat.first_loss
