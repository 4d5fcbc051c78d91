"""The dual-stream speech codec family (SAC, SACodec, SecoustiCodec, STACodec + baselines)."""
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
