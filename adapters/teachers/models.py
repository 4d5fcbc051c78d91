"""Semantic teachers: frozen speech encoders implementing ``codec.contracts.SemanticTeacher``.

* :class:`WhisperCT2Teacher` — the offline default, Whisper-base's encoder through CTranslate2
  (faster-whisper). SAC's semantic stream is itself a Whisper-encoder tokenizer (GLM-4-Voice).
* :class:`HFTeacher` — any transformers speech encoder (HuBERT, WavLM, wav2vec2, Whisper) from a
  hub id or a local dir, one hidden layer (STACodec: HuBERT-base layer 9 or WavLM-Large layer 23).
* :func:`load_teacher` parses a spec: ``"whisper-base-ct2"``, ``"facebook/hubert-base-ls960:9"``,
  ``"/local/dir:6"``.

Features are cached on disk once (:func:`adapters.feature_cache.cache_teacher_features`); codec
training reads the cache and never runs a teacher in its loop.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from codec.contracts import check_audio

WHISPER_MAX_MEL_FRAMES = 3000  # Whisper's encoder sees at most 30 s (3000 mel frames at 100 Hz)


class WhisperCT2Teacher:
    """Whisper encoder features ``[B, T, 512]`` at 50 Hz via CTranslate2 (int8 on CPU).

    The log-mel is computed on the *unpadded* audio (faster-whisper's ``FeatureExtractor`` with
    ``padding=0``): CTranslate2's encoder accepts short mels, so 2 s of audio costs 2 s of compute
    and gives ``N / 320`` frames instead of Whisper's fixed 1500. Audio longer than 30 s is encoded
    in 30 s chunks and concatenated.
    """

    sample_rate = 16000
    frame_rate = 50.0

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu",
                 compute_type: str = "int8", cpu_threads: int = 1) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.feature_extractor import FeatureExtractor

        if model_dir is None:
            from adapters.assets import whisper_base_dir

            model_dir = whisper_base_dir()
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "model.bin").exists():
            raise FileNotFoundError(f"{self.model_dir} is not a CTranslate2 Whisper dir (no model.bin)")
        self._whisper = WhisperModel(str(self.model_dir), device=device, compute_type=compute_type,
                                     cpu_threads=cpu_threads)
        n_mels = self._whisper.feature_extractor.mel_filters.shape[0]
        self._fx = FeatureExtractor(feature_size=n_mels)
        self.name = f"whisper-ct2:{self.model_dir.name}"
        self.dim = int(self._encode(np.zeros((1, n_mels, 2), np.float32)).shape[-1])

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        from faster_whisper.transcribe import get_ctranslate2_storage

        out = self._whisper.model.encode(get_ctranslate2_storage(np.ascontiguousarray(mels)), to_cpu=True)
        return np.asarray(out)

    def _mel(self, wav: np.ndarray) -> np.ndarray:
        mel = self._fx(wav, padding=0)  # [M, N/160]
        if mel.shape[-1] % 2:  # the encoder halves time with a stride-2 conv; keep frame counts exact
            mel = np.concatenate([mel, mel[:, -1:]], axis=-1)
        return mel

    @torch.no_grad()
    def features(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``wav [B, 1, N]`` at 16 kHz -> ``[B, T, 512]`` float32 at 50 Hz (``T = ceil(N / 320)``).

        ``lengths`` (``[B]`` samples) lets a padded batch be encoded per item; items of equal
        length (the usual case for training crops) share one encoder call.
        """
        wav = check_audio(wav, self.sample_rate, self.sample_rate, name="teacher input")
        b, _, n = wav.shape
        lens = [n] * b if lengths is None else [int(x) for x in lengths]
        mels = [self._mel(wav[i, 0, : lens[i]].cpu().numpy()) for i in range(b)]
        t_out = math.ceil(n / 320)
        out = torch.zeros(b, t_out, self.dim)
        if len({m.shape[-1] for m in mels}) == 1 and mels[0].shape[-1] <= WHISPER_MAX_MEL_FRAMES:
            feats = self._encode(np.stack(mels))
            out[:, : feats.shape[1]] = torch.from_numpy(feats[:, :t_out])
            return out
        for i, mel in enumerate(mels):
            chunks = [self._encode(mel[None, :, s : s + WHISPER_MAX_MEL_FRAMES])
                      for s in range(0, mel.shape[-1], WHISPER_MAX_MEL_FRAMES)]
            f = np.concatenate(chunks, axis=1)[0, :t_out]
            out[i, : f.shape[0]] = torch.from_numpy(f)
        return out


class HFTeacher:
    """Hidden states of one layer of a transformers speech encoder, ``[B, T, D]``.

    ``model_id_or_dir``: a hub id (``facebook/hubert-base-ls960``, ``microsoft/wavlm-large``) or a
    local ``save_pretrained`` dir. ``layer`` indexes ``hidden_states`` (0 = the CNN/conv output,
    ``L`` = the last layer). Whisper checkpoints use only their encoder (50 Hz, input padded to 30 s
    as the HF encoder requires, then trimmed to the audio's length).
    """

    def __init__(self, model_id_or_dir: str | os.PathLike, layer: int, device: str = "cpu") -> None:
        from transformers import AutoConfig, AutoModel

        self.source = str(model_id_or_dir)
        self.layer = int(layer)
        self.device = torch.device(device)
        config = AutoConfig.from_pretrained(self.source)
        self.is_whisper = config.model_type == "whisper"
        if self.is_whisper:
            from transformers import WhisperFeatureExtractor, WhisperModel

            self.model = WhisperModel.from_pretrained(self.source).get_encoder()
            try:
                self._fx = WhisperFeatureExtractor.from_pretrained(self.source)
            except OSError:  # a bare model dir without preprocessor_config.json
                self._fx = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
            self.sample_rate = int(self._fx.sampling_rate)
            self.frame_rate = self.sample_rate / (self._fx.hop_length * 2)
            n_layers = config.encoder_layers
        else:
            self.model = AutoModel.from_pretrained(self.source)
            self.sample_rate = 16000
            hop = int(np.prod(getattr(config, "conv_stride", [320])))
            self.frame_rate = self.sample_rate / hop
            n_layers = config.num_hidden_layers
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"layer must be in 0..{n_layers} for {self.source}, got {self.layer}")
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(config.d_model if self.is_whisper else config.hidden_size)
        self.name = f"hf:{Path(self.source).name if os.path.isdir(self.source) else self.source}:{self.layer}"

    @torch.no_grad()
    def features(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``wav [B, 1, N]`` -> ``[B, T, D]`` float32 at ``frame_rate`` (``T ≈ N / hop``)."""
        wav = check_audio(wav, self.sample_rate, self.sample_rate, name="teacher input")
        n = wav.shape[-1]
        t_out = math.ceil(n * self.frame_rate / self.sample_rate)
        if self.is_whisper:
            fx = self._fx([w[0].cpu().numpy() for w in wav], sampling_rate=self.sample_rate, return_tensors="pt")
            hs = self.model(fx.input_features.to(self.device), output_hidden_states=True).hidden_states
        else:
            x = wav[:, 0].to(self.device)
            # wav2vec2-style models expect zero-mean unit-variance input (their feature extractor's default)
            x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7)
            hs = self.model(x, output_hidden_states=True).hidden_states
        h = hs[self.layer].float().cpu()[:, :t_out]
        if h.shape[1] < t_out:  # conv front-ends drop a partial last frame: repeat the last one
            h = torch.cat([h, h[:, -1:].expand(-1, t_out - h.shape[1], -1)], dim=1)
        return h


def load_teacher(spec: str, device: str = "cpu") -> WhisperCT2Teacher | HFTeacher:
    """Build a teacher from a spec string.

    * ``"whisper-base-ct2"`` (or ``"whisper-ct2"``): the embedded CTranslate2 Whisper-base;
    * ``"whisper-ct2:/dir"``: another CTranslate2 Whisper dir;
    * ``"<hub id or local dir>:<layer>"``: :class:`HFTeacher`, e.g. ``facebook/hubert-base-ls960:9``.
    """
    teacher: WhisperCT2Teacher | HFTeacher
    if spec in ("whisper-base-ct2", "whisper-ct2"):
        teacher = WhisperCT2Teacher(device=device)
    elif spec.startswith("whisper-ct2:"):
        teacher = WhisperCT2Teacher(spec.split(":", 1)[1], device=device)
    else:
        src, sep, layer = spec.rpartition(":")
        if not sep or not layer.isdigit() or not src:
            raise ValueError(f"teacher spec must be 'whisper-base-ct2', 'whisper-ct2:DIR' or 'MODEL:LAYER' "
                             f"(e.g. facebook/hubert-base-ls960:9), got {spec!r}")
        teacher = HFTeacher(src, int(layer), device=device)
    teacher.spec = spec  # recorded in caches and exports, so encode time rebuilds the same teacher
    return teacher
