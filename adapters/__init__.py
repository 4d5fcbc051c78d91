"""Bridges to outside models and tools: LLM backbones, LoRA, semantic teachers, judges, synthesizers."""
