"""The dual-stream speech codec family (SAC, SACodec, SecoustiCodec, STACodec + baselines)."""
from codec.contracts import Codec, CodecTokens, SemanticTeacher, check_audio

__all__ = ["Codec", "CodecTokens", "SemanticTeacher", "check_audio"]
