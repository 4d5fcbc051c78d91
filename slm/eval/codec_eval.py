"""`slm eval codec`: reconstruction quality of codec checkpoints on a manifest's test split (EVAL.md).

One row per checkpoint (+ a ground-truth row): bitrate, PESQ-wb/nb, STOI, mel distance, WER of
Whisper on the reconstruction (the ground-truth row's WER is the floor), DNSMOS OVRL/SIG/BAK,
speaker similarity original vs reconstruction, and encode+decode real-time factor. Judges cache
by audio hash, so rerunning an unchanged table only re-runs the codecs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slm.eval.data import EvalItem, LoadedCodec
from slm.eval.report import machine_info, markdown_table, plot_quality_vs_bitrate, write_json

ALL_METRICS = ("fidelity", "asr", "dnsmos", "speaker")
COLUMNS = [("system", "system", 0), ("bitrate", "bps", 0), ("pesq_wb", "PESQ-wb", 2), ("pesq_nb", "PESQ-nb", 2),
           ("stoi", "STOI", 3), ("mel_distance", "mel dist", 3), ("wer", "WER", 3), ("cer", "CER", 3),
           ("dnsmos_ovrl", "DNSMOS OVRL", 2), ("dnsmos_sig", "SIG", 2), ("dnsmos_bak", "BAK", 2),
           ("spk_sim", "spk sim", 3), ("rtf", "RTF", 4), ("n", "n", 0)]


@dataclass
class Judges:
    """The judges one evaluation run shares (one Whisper, one DNSMOS session, one cache)."""

    metrics: tuple[str, ...] = ALL_METRICS
    whisper: str | None = None
    beam_size: int = 1

    def __post_init__(self) -> None:
        from adapters.judges import (
            DNSMOS,
            FidelityJudge,
            JudgeCache,
            SpeakerSimilarity,
            WhisperASR,
            WhisperConfig,
        )

        bad = set(self.metrics) - set(ALL_METRICS)
        if bad:
            raise ValueError(f"unknown metrics {sorted(bad)}: expected a subset of {ALL_METRICS}")
        self.cache = JudgeCache()
        self.asr = WhisperASR(WhisperConfig(model=self.whisper, beam_size=self.beam_size), self.cache)
        self.mos = DNSMOS(self.cache)
        self.spk = SpeakerSimilarity(self.cache)
        self.fid = FidelityJudge(self.cache)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def score(items: list[EvalItem], outputs: list[np.ndarray], judges: Judges, reference: bool) -> list[dict]:
    """Per-item metrics of ``outputs`` (16 kHz, one per item); ``reference``: outputs are the originals."""
    from adapters.judges import error_rates

    sr = items[0].sample_rate
    per = [{"id": it.id, "synth": it.synth} for it in items]
    if "asr" in judges.metrics:
        hyps = judges.asr.transcribe(outputs, sr, progress=True)
        for p, it, h in zip(per, items, hyps):
            p["hyp"], p["ref"] = h, it.text
            r = error_rates([it.text], [h])
            p["wer_edits"], p["cer"], p["n_words"] = r.wer * r.n_words, r.cer, r.n_words
    for p, it, out in tqdm(list(zip(per, items, outputs)), desc="judges", leave=False):
        orig = it.wav[0].numpy()
        if "fidelity" in judges.metrics and not reference:
            p.update(judges.fid(orig, out, sr).as_dict())
        if "dnsmos" in judges.metrics:
            m = judges.mos(out, sr)
            p.update(dnsmos_ovrl=m.ovrl, dnsmos_sig=m.sig, dnsmos_bak=m.bak)
        if "speaker" in judges.metrics and not reference:
            p["spk_sim"] = judges.spk(orig, out, sr)
    return per


def summarise(per: list[dict]) -> dict:
    """Means over items; WER is corpus-level (total edits / total words)."""
    out: dict = {"n": len(per)}
    for k in ("pesq_wb", "pesq_nb", "stoi", "mel_distance", "cer", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak",
              "spk_sim"):
        if any(k in p for p in per):
            out[k] = _mean([p.get(k, float("nan")) for p in per])
    if any("n_words" in p for p in per):
        words = sum(p["n_words"] for p in per)
        out["wer"] = sum(p["wer_edits"] for p in per) / words if words else float("nan")
    return out


def _by_synth(per: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for p in per:
        groups.setdefault(p["synth"], []).append(p)
    return {s: summarise(g) for s, g in sorted(groups.items())}


def reconstruct_all(codec: LoadedCodec, items: list[EvalItem]) -> tuple[list[np.ndarray], float]:
    """Reconstructions at 16 kHz and the encode+decode real-time factor (seconds per audio second)."""
    import torchaudio.functional as AF

    outs, spent, audio_s = [], 0.0, 0.0
    sr = codec.model.sample_rate
    for it in tqdm(items, desc=f"codec {codec.name}", leave=False):
        wav = it.wav if sr == it.sample_rate else AF.resample(it.wav, it.sample_rate, sr)
        t = time.perf_counter()
        rec = codec.reconstruct(wav)
        spent += time.perf_counter() - t
        audio_s += wav.shape[-1] / sr
        if sr != it.sample_rate:
            rec = AF.resample(rec, sr, it.sample_rate)
        outs.append(rec[0].clamp(-1, 1).numpy().astype(np.float32))
    return outs, spent / audio_s


def evaluate_codecs(checkpoints: list[str | Path], items: list[EvalItem], judges: Judges,
                    teacher: str | None = None) -> dict:
    """Ground-truth row + one row per checkpoint; returns ``{"rows", "per_synth", "items", "machine"}``."""
    t0, machine = time.perf_counter(), machine_info()  # threads as set for the run, before any library
    gt_per = score(items, [it.wav[0].numpy() for it in items], judges, reference=True)
    rows = [{"system": "ground truth", "variant": "-", "bitrate": items[0].sample_rate * 16, **summarise(gt_per)}]
    per_synth = {"ground truth": _by_synth(gt_per)}
    per_item = {"ground truth": gt_per}
    for ckpt in checkpoints:
        codec = LoadedCodec(ckpt, teacher_spec=teacher)
        outs, rtf = reconstruct_all(codec, items)
        per = score(items, outs, judges, reference=False)
        name = codec.name
        rows.append({"system": name, "variant": codec.model.config.variant, "bitrate": float(codec.model.bitrate),
                     "path": str(ckpt), "rtf": rtf, **summarise(per)})
        per_synth[name], per_item[name] = _by_synth(per), per
        del codec
    import torch

    if torch.get_num_threads() != machine["threads"]:  # a library changed it mid-run: say so
        machine["threads_at_end"] = torch.get_num_threads()
    return {"rows": rows, "per_synth": per_synth, "items": per_item, "machine": machine,
            "seconds": time.perf_counter() - t0, "metrics": list(judges.metrics),
            "audio_seconds": float(sum(it.wav.shape[-1] / it.sample_rate for it in items))}


def write_codec_report(result: dict, out_dir: str | Path, title: str = "Codec reconstruction") -> Path:
    out = Path(out_dir)
    write_json(out / "codec_eval.json", result)
    rows = result["rows"]
    m = result["machine"]
    intro = (f"{rows[0]['n']} items, {result['audio_seconds']:.0f} s of audio; judges: "
             f"{', '.join(result['metrics'])}; evaluation took {result['seconds']:.0f} s on {m['cpu']} "
             f"({m['threads']} threads).")
    note = ("Ground-truth WER is Whisper's floor on the original audio; RTF = encode+decode seconds per "
            "second of audio (one process, float32).")
    lines = [f"# {title}", "", intro, "", note, "", markdown_table(rows, COLUMNS), ""]
    lines += ["## Per synthesizer", ""]
    synth_cols = [("system", "system", 0), ("synth", "synth", 0), ("pesq_wb", "PESQ-wb", 2), ("stoi", "STOI", 3),
                  ("wer", "WER", 3), ("dnsmos_ovrl", "DNSMOS", 2), ("spk_sim", "spk sim", 3), ("n", "n", 0)]
    srows = [{"system": s, "synth": k, **v} for s, by in result["per_synth"].items() for k, v in by.items()]
    lines += [markdown_table(srows, synth_cols), ""]
    (out / "codec_eval.md").write_text("\n".join(lines))
    systems = [r for r in rows if r["system"] != "ground truth"]
    if systems:
        plot_quality_vs_bitrate(systems, out / "codec_eval.png",
                                [("pesq_wb", "PESQ-wb"), ("stoi", "STOI"), ("wer", "WER (Whisper-base)"),
                                 ("dnsmos_ovrl", "DNSMOS OVRL"), ("spk_sim", "speaker similarity")],
                                reference=rows[0])
    return out / "codec_eval.md"
