"""Unit quality (purity, PNMI), frame labelling and the CTC probe on tiny synthetic problems."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.corpus.phones import PHONE_TO_ID
from slm.eval.probe import CTCProbe, ProbeConfig, greedy_decode, reverse_padded, train_probe
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
