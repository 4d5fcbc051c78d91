"""Bridges to outside models and tools: LLM backbones, LoRA, semantic teachers, judges, synthesizers."""
import os

# Before torch loads libgomp, which reads this once: on busy few-core machines OpenMP spin-waiting
# makes two threads ~10x slower than one (DESIGN.md §8). A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
