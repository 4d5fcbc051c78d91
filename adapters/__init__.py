"""Bridges to outside models and tools: LLM backbones, LoRA, semantic teachers, judges, synthesizers."""

# Before torch loads libgomp, which reads them once: how OpenMP threads wait (codec.runtime). A choice
# made by the user wins.
from codec.runtime import omp_defaults  # codec/__init__ applies them first

omp_defaults()
