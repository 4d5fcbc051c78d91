"""The dual-stream speech codec family (SAC, SACodec, SecoustiCodec, STACodec + baselines)."""

# Before torch loads libgomp, which reads them once: how OpenMP threads wait between parallel regions
# (codec.runtime.OMP_DEFAULTS: a bounded spin; measured in the README, "TTS speed on CPU"). A
# choice made by the user wins. codec.runtime imports nothing but os.
from codec.runtime import omp_defaults

omp_defaults()

from codec.contracts import Codec, CodecTokens, SemanticTeacher, check_audio

__all__ = [
    "Codec",
    "CodecConfig",
    "CodecOutput",
    "CodecTokens",
    "DualStreamCodec",
    "SemanticTeacher",
    "TeacherBatch",
    "check_audio",
]


def __getattr__(name: str):
    # Lazy, so `import codec` (contracts only) stays light for callers that never build a model.
    if name == "CodecConfig":
        from codec.config import CodecConfig

        return CodecConfig
    if name in ("DualStreamCodec", "CodecOutput", "TeacherBatch"):
        from codec import model

        return getattr(model, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
