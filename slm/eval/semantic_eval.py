"""`slm eval semantic`: how much phone information each token stream carries (EVAL.md).

For the semantic stream, the first acoustic codebook and the teacher's own k-means units: phone
purity, cluster purity and PNMI against the corpus' exact phone alignments at each stream's frame
rate; and two probes trained on frozen tokens of train-split utterances and scored on the test split,
whose speakers the codec never saw: a frame phone classifier (accuracy against the phone at each
frame's centre, next to majority-class chance; the column the table leads with, as it learns within
a few hundred cheap full-batch steps) and the CTC phone probe of EVAL.md (phone error rate, with its
final training loss and its share of empty outputs, so a probe still in CTC's all-blank phase shows).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adapters.corpus.phones import INVENTORY, SIL
from slm.eval.data import EvalItem, LoadedCodec
from slm.eval.probe import FrameProbeConfig, ProbeConfig, train_frame_probe, train_probe
from slm.eval.report import machine_info, markdown_table, write_json
from slm.eval.units import chance_pnmi, frame_labels, unit_quality


def teacher_units(codec: LoadedCodec, wav: torch.Tensor) -> torch.Tensor | None:
    """Teacher k-means units ``[Ts]`` at the semantic rate from the codec's own frozen centroids
    (sac / sacodec carry them); ``None`` for codecs without a teacher codebook."""
    if not codec.model.needs_teacher_codebook:
        return None
    from adapters.kmeans import KMeansUnits

    x = wav if wav.dim() == 3 else wav[None]
    feats = codec.teacher.features(x)
    cents = codec.model.teacher_centroids()
    km = KMeansUnits(cents, {"rate": codec.model.semantic_rate, "feature_rate": codec.teacher.frame_rate})
    return km.units(feats, codec.teacher.frame_rate)[0]


def stream_codes(codec: LoadedCodec, items: list[EvalItem], with_teacher: bool) -> dict[str, list[np.ndarray]]:
    """Per stream, the codes of every item: ``semantic`` (codebook 1), ``acoustic`` (codebook 1), ``teacher``."""
    out: dict[str, list[np.ndarray]] = {"semantic": [], "acoustic": [], "teacher": []}
    for it in tqdm(items, desc=f"encode {codec.name}", leave=False):
        tok = codec.encode(it.wav)
        out["semantic"].append(tok.semantic[0, 0].numpy())
        if tok.acoustic.shape[1]:
            out["acoustic"].append(tok.acoustic[0, 0].numpy())
        if with_teacher:
            u = teacher_units(codec, it.wav)
            if u is not None:
                out["teacher"].append(u.numpy())
    return {k: v for k, v in out.items() if len(v) == len(items)}


def stream_rates(codec: LoadedCodec) -> dict[str, float]:
    m = codec.model
    return {"semantic": m.semantic_rate, "acoustic": m.acoustic_rate, "teacher": m.semantic_rate}


def stream_sizes(codec: LoadedCodec) -> dict[str, int]:
    m = codec.model
    return {"semantic": m.semantic_codebook_size, "acoustic": max(1, m.acoustic_codebook_size),
            "teacher": m.semantic_codebook_size}


def _probe_items(codes: list[np.ndarray], items: list[EvalItem]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for c, it in zip(codes, items):
        target = [INVENTORY.index(p[2]) for p in it.phones if p[2] != SIL]  # silences are not phones
        if target and len(c):
            out.append((torch.from_numpy(np.asarray(c)).long(), torch.tensor(target)))
    return out


def _frame_items(codes: list[np.ndarray], items: list[EvalItem], rate: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(codes [T], phone id at each frame's centre [T])`` per item; silence is a label here."""
    return [(torch.from_numpy(np.asarray(c)).long(), torch.from_numpy(frame_labels(it.phones, len(c), rate)).long())
            for c, it in zip(codes, items) if len(c)]


def evaluate_semantic(checkpoint: str | Path, train: list[EvalItem], test: list[EvalItem],
                      probe: ProbeConfig | None = None, teacher: str | None = None,
                      frame_probe: FrameProbeConfig | None = None) -> dict:
    """Unit quality on ``test`` and both probes (train on ``train``, scored on ``test``).

    ``probe`` / ``frame_probe`` with ``steps=0`` skip that probe; an empty ``train`` skips both.
    """
    t0, machine = time.perf_counter(), machine_info()
    for it in train + test:
        if not it.phones:
            raise ValueError(f"item {it.id}: expected a 'phones' alignment in the manifest, got none")
    codec = LoadedCodec(checkpoint, teacher_spec=teacher)
    test_codes = stream_codes(codec, test, with_teacher=True)
    train_codes = stream_codes(codec, train, with_teacher=True) if train else {}
    rates, sizes = stream_rates(codec), stream_sizes(codec)
    rows = []
    for stream, codes in test_codes.items():
        phones = np.concatenate([frame_labels(it.phones, len(c), rates[stream]) for it, c in zip(test, codes)])
        flat = np.concatenate(codes)
        q = unit_quality(phones, flat)
        row = {"system": codec.name, "stream": stream, "rate_hz": rates[stream], "codebook": sizes[stream],
               **q.as_dict(), "pnmi_chance": chance_pnmi(phones, flat)}
        if stream in train_codes:  # more frames shrink the estimator's upward bias (see chance_pnmi)
            all_phones = np.concatenate([phones] + [frame_labels(it.phones, len(c), rates[stream])
                                                    for it, c in zip(train, train_codes[stream])])
            all_codes = np.concatenate([flat, *train_codes[stream]])
            row.update(pnmi_all=unit_quality(all_phones, all_codes).pnmi,
                       pnmi_all_chance=chance_pnmi(all_phones, all_codes), frames_all=int(all_codes.size))
            if frame_probe is None or frame_probe.steps > 0:
                fr = train_frame_probe(_frame_items(train_codes[stream], train, rates[stream]),
                                       _frame_items(codes, test, rates[stream]), n_codes=sizes[stream],
                                       n_labels=len(INVENTORY), frame_rate=rates[stream], cfg=frame_probe)
                row.update(frame_acc=fr.accuracy, frame_chance=fr.chance, frame_train_acc=fr.train_accuracy,
                           frame_last_loss=fr.last_loss, frame_steps=fr.steps, frame_best_step=fr.best_step,
                           frame_val_acc=fr.val_accuracy, frame_context=fr.context,
                           frame_context_ms=1000.0 * fr.context / rates[stream])
            if probe is None or probe.steps > 0:
                res = train_probe(_probe_items(train_codes[stream], train), _probe_items(codes, test),
                                  n_codes=sizes[stream], n_labels=len(INVENTORY), frame_rate=rates[stream],
                                  cfg=probe)
                row.update(probe_per=res.per, probe_first_loss=res.first_loss, probe_last_loss=res.last_loss,
                           probe_steps=res.steps, probe_empty=res.empty)
        rows.append(row)
    return {"rows": rows, "machine": machine, "seconds": time.perf_counter() - t0,
            "n_train": len(train), "n_test": len(test)}


COLUMNS = [("system", "system", 0), ("stream", "stream", 0), ("rate_hz", "Hz", 1), ("codebook", "K", 0),
           ("frame_acc", "frame acc", 3), ("frame_chance", "majority", 3),
           ("phone_purity", "phone purity", 3), ("cluster_purity", "cluster purity", 3), ("pnmi", "PNMI", 3),
           ("pnmi_chance", "PNMI chance", 3), ("pnmi_all", "PNMI train+test", 3),
           ("pnmi_all_chance", "chance", 3),
           ("probe_per", "CTC PER", 3), ("probe_last_loss", "CTC loss", 2), ("probe_empty", "CTC empty", 2),
           ("n_codes_used", "codes used", 0), ("n_frames", "frames", 0),
           ("frames_all", "frames train+test", 0)]


def write_semantic_report(results: list[dict], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    write_json(out / "semantic_eval.json", results)
    rows = [r for res in results for r in res["rows"]]
    m = results[0]["machine"] if results else machine_info()
    secs = sum(r["seconds"] for r in results)
    n_train = results[0]["n_train"] if results else 0
    n_test = results[0]["n_test"] if results else 0
    r0 = rows[0] if rows else {}
    frame = ("frame acc: accuracy of a frame phone classifier (code embedding -> conv over "
             f"+-{r0.get('frame_context_ms', 0):.0f} ms -> linear, {r0.get('frame_steps', '?')} full-batch steps) "
             "against the phone at each frame's centre on the held-out test speakers; majority: always the "
             "train set's most frequent phone. " if "frame_acc" in r0 else "")
    ctc = (f"CTC PER: phone error rate of the CTC probe ({r0.get('probe_steps', '?')} steps), CTC loss: its "
           "final training loss (per utterance), CTC empty: share of test utterances it decodes to nothing "
           "(a probe still in CTC's all-blank phase scores PER 1.0). " if "probe_per" in r0 else "")
    intro = (f"Phone purity / cluster purity / PNMI (HuBERT's definitions) on {n_test} test utterances "
             "(PNMI chance: the same codes shuffled over frames, the estimator's floor at this size). "
             f"Probes are trained on frozen tokens of {n_train} train utterances; {frame}{ctc}"
             f"{secs:.0f} s on {m['cpu']} ({m['threads']} threads).")
    text = ["# Semantic quality of token streams", "", intro, "", markdown_table(rows, COLUMNS), ""]
    (out / "semantic_eval.md").write_text("\n".join(text))
    return out / "semantic_eval.md"
