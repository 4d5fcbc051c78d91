"""The dual-stream speech codec family (SAC, SACodec, SecoustiCodec, STACodec + baselines)."""
import os

# Before torch loads libgomp, which reads this once: on busy few-core machines OpenMP spin-waiting
# makes two threads ~10x slower than one (DESIGN.md §8). A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
