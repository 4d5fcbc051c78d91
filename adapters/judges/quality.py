"""Reference-free and reference-based audio judges: DNSMOS, Resemblyzer speaker similarity,
PESQ (wb/nb), STOI and log-mel distance. All take float audio at 16 kHz (resampled if not).

Every judge caches per content hash (``JudgeCache``), so rescoring identical audio is free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adapters.judges.asr import SAMPLE_RATE, as_mono16k
from adapters.judges.cache import JudgeCache, audio_hash


@dataclass
class MOS:
    ovrl: float
    sig: float
    bak: float


class DNSMOS:
    """Microsoft DNSMOS P.835 (speechmos' bundled ONNX models): OVRL / SIG / BAK on 1..5."""

    judge_id = "dnsmos/p835/v1"

    def __init__(self, cache: JudgeCache | None = None, threads: int = 1) -> None:
        self.cache = cache if cache is not None else JudgeCache()
        self.threads = threads
        self._model = None

    def _load(self):
        # speechmos' own loader opens ONNX sessions with one thread per core; on a shared CPU that
        # contends with everything else, so we open them with a chosen thread count instead.
        import os

        import onnxruntime as ort
        from speechmos import dnsmos

        d = os.path.join(os.path.dirname(dnsmos.__file__), "dnsmos_models")
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.threads
        m = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
        m.primary_model_path = os.path.join(d, "sig_bak_ovr.onnx")
        m.onnx_sess = ort.InferenceSession(m.primary_model_path, so, providers=["CPUExecutionProvider"])
        m.p808_onnx_sess = ort.InferenceSession(os.path.join(d, "model_v8.onnx"), so,
                                                providers=["CPUExecutionProvider"])
        return m

    def __call__(self, wav, sample_rate: int = SAMPLE_RATE) -> MOS:
        a = np.clip(as_mono16k(wav, sample_rate), -1.0, 1.0)  # speechmos rejects values outside [-1, 1]

        def run() -> dict:
            if self._model is None:
                self._model = self._load()
            r = self._model(a, SAMPLE_RATE, False)
            return {"ovrl": float(r["ovrl_mos"]), "sig": float(r["sig_mos"]), "bak": float(r["bak_mos"])}

        return MOS(**self.cache.get_or_compute(self.judge_id, audio_hash(a, SAMPLE_RATE), run))


class SpeakerSimilarity:
    """Cosine of Resemblyzer d-vectors (GE2E VoiceEncoder, its bundled ``pretrained.pt``).

    ``preprocess_wav`` trims long silences and normalises volume, as Resemblyzer expects.
    """

    judge_id = "speaker/resemblyzer/v1"

    def __init__(self, cache: JudgeCache | None = None) -> None:
        self.cache = cache if cache is not None else JudgeCache()
        self._encoder = None

    def embed(self, wav, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        a = as_mono16k(wav, sample_rate)

        def run() -> list[float]:
            from resemblyzer import VoiceEncoder, preprocess_wav

            if self._encoder is None:
                self._encoder = VoiceEncoder("cpu", verbose=False)
            p = preprocess_wav(a.astype(np.float64), source_sr=SAMPLE_RATE)
            if len(p) < SAMPLE_RATE // 4:  # all silence after trimming: embed the raw clip instead
                p = a.astype(np.float64)
            return self._encoder.embed_utterance(p).astype(float).tolist()

        return np.asarray(self.cache.get_or_compute(self.judge_id, audio_hash(a, SAMPLE_RATE), run))

    def __call__(self, wav_a, wav_b, sample_rate: int = SAMPLE_RATE) -> float:
        ea, eb = self.embed(wav_a, sample_rate), self.embed(wav_b, sample_rate)
        return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-9))


@dataclass
class Fidelity:
    pesq_wb: float
    pesq_nb: float
    stoi: float
    mel_distance: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _align(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(ref), len(deg))  # codecs may pad or trim a few samples at the end
    return ref[:n], deg[:n]


def pesq_score(ref: np.ndarray, deg: np.ndarray, mode: str) -> float:
    """ITU-T P.862 (``mode`` 'wb' or 'nb') at 16 kHz; NaN when PESQ finds no speech."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(SAMPLE_RATE, ref, deg, mode))
    except PesqError:
        return float("nan")


def mel_distance(ref: np.ndarray, deg: np.ndarray) -> float:
    """Mean |log10 mel(ref) - log10 mel(deg)| (80 mels, 1024-pt FFT, hop 256; DAC's mel-L1 flavour)."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=256, n_mels=80, power=1.0)
    with torch.no_grad():
        a = mel(torch.from_numpy(ref)).clamp_min(1e-5).log10()
        b = mel(torch.from_numpy(deg)).clamp_min(1e-5).log10()
    return float((a - b).abs().mean())


class FidelityJudge:
    """PESQ-wb, PESQ-nb, STOI and mel distance of a reconstruction against its original."""

    judge_id = "fidelity/v1"

    def __init__(self, cache: JudgeCache | None = None) -> None:
        self.cache = cache if cache is not None else JudgeCache()

    def __call__(self, ref, deg, sample_rate: int = SAMPLE_RATE) -> Fidelity:
        r, d = _align(as_mono16k(ref, sample_rate), as_mono16k(deg, sample_rate))

        def run() -> dict:
            from pystoi import stoi

            return {"pesq_wb": pesq_score(r, d, "wb"), "pesq_nb": pesq_score(r, d, "nb"),
                    "stoi": float(stoi(r, d, SAMPLE_RATE, extended=False)), "mel_distance": mel_distance(r, d)}

        key = audio_hash(r, SAMPLE_RATE) + audio_hash(d, SAMPLE_RATE)
        return Fidelity(**self.cache.get_or_compute(self.judge_id, key, run))
