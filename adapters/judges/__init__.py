"""Judges for evaluation: Whisper ASR (packed, cached), DNSMOS, Resemblyzer speaker similarity,
PESQ/STOI/mel distance, and the one text normaliser behind every WER (EVAL.md).

Heavy models load lazily on first use; every judge output is cached by audio content hash.
"""
from adapters.judges.asr import WhisperASR, WhisperConfig
from adapters.judges.cache import JudgeCache, audio_hash
from adapters.judges.quality import DNSMOS, MOS, Fidelity, FidelityJudge, SpeakerSimilarity
from adapters.judges.text import ErrorRates, error_rates, normalize_text, wer

__all__ = [
           "DNSMOS",
           "MOS",
           "ErrorRates",
           "Fidelity",
           "FidelityJudge",
           "JudgeCache",
           "SpeakerSimilarity",
           "WhisperASR",
           "WhisperConfig",
           "audio_hash",
           "error_rates",
           "normalize_text",
           "wer",
]
