"""How well does a model dir predict *when* to move to the next word (aligned TTS, teacher-forced)?
At each frame boundary inside the span: P(next word's first token) among {semantic tokens, that token}."""
import json
import sys

import torch

from codec.runtime import set_threads

set_threads(2)
from slm.eval.conditioning import _utterances
from slm.eval.data import load_items
from slm.pipeline import SpeechPipeline
from slm.templates import tts_aligned_example

pipe = SpeechPipeline.from_pretrained(sys.argv[1], merge=False)
items = load_items("data/synth2h/manifest.jsonl", "test", 16)
utts = _utterances(pipe, items)
L = pipe.layout
sem_ids = torch.arange(L.semantic_offset, L.semantic_offset + L.n_semantic)
p_at, p_else, acc_at, acc_else, nb, nf = 0.0, 0.0, 0, 0, 0, 0
for u in utts:
    ex = tts_aligned_example(pipe.tokenizer, L, u.text, u.words, u.semantic, u.duration)
    if ex is None:
        continue
    with torch.no_grad():
        logits = pipe.lm(input_ids=ex.input_ids[None]).logits[0].float()
    ids, lab = ex.input_ids, ex.labels
    a = int((ids == L.audio_start).nonzero()[0])
    # the next word's first token for every position inside the span
    for t in range(a + 1, len(ids) - 1):
        if not L.is_semantic(ids[t]):
            continue  # decisions are made after a frame
        nxt = [int(ids[j]) for j in range(t + 1, len(ids)) if lab[j] != -100 and not L.is_semantic(ids[j])]
        if not nxt or nxt[0] == L.audio_end:
            continue
        cand = torch.cat([sem_ids, torch.tensor([nxt[0]])])
        pr = torch.softmax(logits[t, cand], -1)[-1].item()
        if int(ids[t + 1]) == nxt[0]:
            p_at += pr; acc_at += pr > 0.5; nb += 1
        else:
            p_else += pr; acc_else += pr > 0.5; nf += 1
res = {"boundaries": nb, "mean_p_move_at_boundary": p_at / nb, "frames": nf, "mean_p_move_elsewhere": p_else / nf,
       "moves_at_boundary(p>.5)": acc_at / nb, "false_moves(p>.5)": acc_else / nf}
print(json.dumps(res, indent=1))
