"""The token dir of the semantic-only decoder fine-tune: the head tokens (runs/headdec/head_tokens) with every
acoustic code overwritten by the most frequent one of their first 500 utterances. Run from the repo root:

    python docs/results/voice_decoder/constant_tokens.py
"""
import json
from pathlib import Path

import torch

from codec.contracts import CodecTokens

src, dst = Path("runs/headdec/head_tokens"), Path("runs/semonly/const_tokens")
dst.mkdir(parents=True, exist_ok=True)
index = [json.loads(x) for x in (src / "index.jsonl").read_text().splitlines()]
counts = torch.zeros(8192, dtype=torch.long)
for rec in index[:500]:
    counts += torch.bincount(CodecTokens.load(src / rec["tokens"]).acoustic.flatten(), minlength=8192)
code = int(counts.argmax())
for rec in index:
    t = CodecTokens.load(src / rec["tokens"])
    p = dst / rec["tokens"]
    p.parent.mkdir(parents=True, exist_ok=True)
    CodecTokens(t.semantic, torch.full_like(t.acoustic, code), t.global_).save(p, metadata={"acoustic": f"constant {code}"})
(dst / "index.jsonl").write_text((src / "index.jsonl").read_text())
(dst / "info.json").write_text(json.dumps({"acoustic": "constant", "code": code, "from": str(src)}))
print("code", code, len(index))
