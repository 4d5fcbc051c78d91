"""Semantic teachers (Whisper via CTranslate2, any transformers speech encoder) and their feature cache."""
from adapters.teachers.cache import cache_teacher_features, manifest_items
from adapters.teachers.models import HFTeacher, WhisperCT2Teacher, load_teacher

__all__ = ["HFTeacher", "WhisperCT2Teacher", "cache_teacher_features", "load_teacher", "manifest_items"]
