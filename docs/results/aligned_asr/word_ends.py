"""How well does a model dir read words in the aligned ASR form (teacher-forced, held-out test items)?

After every frame of the span: P(text) = the probability mass on text tokens against the next frame /
<|audio_end|> (what `generate.transcribe_aligned` thresholds at 0.5), at a word's true end (the next token is
its first) and elsewhere; and at the true ends, whether the most likely text token is the word's first token
(teacher-forced word accuracy). Usage: python docs/results/aligned_asr/word_ends.py MODEL_DIR [OUT.json]"""
import json
import sys

import torch

from codec.runtime import set_threads

set_threads(2)
from slm.eval.conditioning import _utterances
from slm.eval.data import load_items
from slm.pipeline import SpeechPipeline
from slm.templates import asr_aligned_example

pipe = SpeechPipeline.from_pretrained(sys.argv[1], merge=False)
items = load_items("data/synth2h/manifest.jsonl", "test", 16)
utts = _utterances(pipe, items)
L = pipe.layout
at, elsewhere, right, n_words = [], [], 0, 0
after_word = []  # P(text) right after a word's last token, where a frame (or <|audio_end|>) comes next
for u in utts:
    ex = asr_aligned_example(pipe.tokenizer, L, u.words or [], u.semantic, u.duration)
    if ex is None:
        continue
    with torch.no_grad():
        logits = pipe.lm(input_ids=ex.input_ids[None]).logits[0].float()
    ids = ex.input_ids
    for t in range(2, len(ids) - 1):
        if not bool(L.is_semantic(ids[t])):
            if int(ids[t]) < L.base_vocab and int(ids[t + 1]) >= L.base_vocab:  # a word's last token
                lg = logits[t]
                text = torch.logsumexp(lg[: L.base_vocab], 0)
                other = torch.logsumexp(torch.cat([lg[L.semantic_offset : L.semantic_offset + L.n_semantic],
                                                   lg[L.audio_end : L.audio_end + 1]]), 0)
                after_word.append(float(torch.sigmoid(text - other)))
            continue  # decisions are made after a frame
        lg = logits[t]
        text = torch.logsumexp(lg[: L.base_vocab], 0)
        other = torch.logsumexp(torch.cat([lg[L.semantic_offset : L.semantic_offset + L.n_semantic],
                                           lg[L.audio_end : L.audio_end + 1]]), 0)
        p = float(torch.sigmoid(text - other))
        if int(ids[t + 1]) < L.base_vocab:  # a word starts here
            at.append(p)
            n_words += 1
            right += int(lg[: L.base_vocab].argmax()) == int(ids[t + 1])
        else:
            elsewhere.append(p)
res = {"model": sys.argv[1], "items": len(utts), "word_ends": len(at), "frames_elsewhere": len(elsewhere),
       "mean_p_text_at_word_end": sum(at) / max(len(at), 1),
       "mean_p_text_elsewhere": sum(elsewhere) / max(len(elsewhere), 1),
       "word_ends_found(p>.5)": sum(p > 0.5 for p in at) / max(len(at), 1),
       "false_word_ends(p>.5)": sum(p > 0.5 for p in elsewhere) / max(len(elsewhere), 1),
       "teacher_forced_first_token_accuracy": right / max(n_words, 1),
       "mean_p_text_after_a_word": sum(after_word) / max(len(after_word), 1),
       "more_text_after_a_word(p>.5)": sum(p > 0.5 for p in after_word) / max(len(after_word), 1)}
print(json.dumps(res, indent=1))
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        f.write(json.dumps(res, indent=1) + "\n")
