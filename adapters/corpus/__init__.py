"""Synthetic multi-speaker, phone-aligned English corpus (espeak-ng, flite, festival) from fortunes text.

``build.build_corpus(out_dir, hours, seed, workers)`` writes wavs + ``manifest.jsonl``; see
``build`` for the record format and split rule, ``phones`` for the shared phone inventory.
"""
