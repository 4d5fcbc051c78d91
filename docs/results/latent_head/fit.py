"""Diagnostic: does a head that *regresses* the codec's acoustic latent voice the true semantic tokens more
intelligibly than the bundled head, which classifies each 8192-way code?

The bundled codec's acoustic stream is one SimVQ codebook (64-d vectors, 50 Hz, 4 per semantic frame). The
cross-entropy head must pick one of 8192 codes per position from ~140k training frames and gets 13.5 %
top-1 on the valid split; a wrong pick is as wrong as any other. A regression head predicts the 4 x 64
latent values instead (MSE), where a near miss is nearly right, then either

* ``quantised``: snaps each predicted vector to its nearest codebook vector (codes, as the contract asks), or
* ``direct``: feeds the predicted latent to the decoder as it is (no codes).

Trained on the `slm head-fit` cache of the bundled model (LM frozen, its TTS form), voice = the mean latent of
the speaker's reference codes. Scored like the head row of `slm eval head` on the 16 held-out items of
data/synth2h (true semantic tokens teacher-forced through the LM). Run from the repo root:

    python docs/results/latent_head/fit.py runs/headfit/cache runs/latent_head [--steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from codec.runtime import set_threads


class LatentHead(nn.Module):
    """LM state + semantic token + voice -> the frame's ``ratio`` acoustic latent vectors (normalised)."""

    def __init__(self, d_in: int, n_sem: int, lat: int, ratio: int, dim: int = 512, blocks: int = 3):
        super().__init__()
        self.ratio, self.lat = ratio, lat
        self.inp = nn.Linear(d_in, dim)
        self.sem = nn.Embedding(n_sem, dim)
        self.voice = nn.Linear(lat, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                                                  nn.Linear(2 * dim, dim)) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ratio * lat))

    def forward(self, h, sem, voice):
        x = self.inp(h) + self.sem(sem) + self.voice(voice)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x).view(-1, self.ratio, self.lat)


def codebook(codec) -> torch.Tensor:
    """The SimVQ's effective codebook ``[K, 64]`` (frozen random codes through the learnt map)."""
    vq = codec.bottleneck.vq
    k = codec.config.acoustic_codebook_size
    with torch.no_grad():
        return vq.decode(torch.arange(k)[None, None])[0].T.float()  # [K, 64]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("out")
    ap.add_argument("--model", default="checkpoints/default")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout-voice", type=float, default=0.2)
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--skip-fit", action="store_true")
    args = ap.parse_args()
    set_threads(2)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from codec.model import DualStreamCodec
    from slm.head_fit import load_cache

    codec = DualStreamCodec.from_pretrained(Path(args.model) / "codec").float().eval()
    cb = codebook(codec)  # [K, 64]
    info = json.loads((Path(args.cache) / "info.json").read_text())
    from safetensors.torch import load_file

    refs = load_file(str(Path(args.cache) / "voices.safetensors"))
    speakers = info["speakers"]
    tr, va = load_cache(args.cache, "train", speakers), load_cache(args.cache, "valid", speakers)
    mu = cb.mean(0)
    sd = cb.std(0).mean()
    vmean = torch.stack([(cb[refs[s].reshape(-1).clamp_min(0)].mean(0) - mu) / sd for s in speakers])  # [S, 64]

    def target(codes):
        return (cb[codes.clamp_min(0)] - mu) / sd  # [F, r, 64]

    ratio = tr.codes.shape[1]
    head = LatentHead(tr.h.shape[1], info["n_semantic"], cb.shape[1], ratio)
    ck = out / "latent_head.pt"
    log = []
    if not args.skip_fit:
        opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(0)
        t0 = time.time()

        @torch.no_grad()
        def evaluate():
            head.eval()
            se, n, hit, tot = 0.0, 0, 0, 0
            for i in range(0, va.sem.numel(), 4096):
                sl = slice(i, i + 4096)
                p = head(va.h[sl].float(), va.sem[sl], vmean[va.speaker[sl]])
                y = target(va.codes[sl])
                se += float(((p - y) ** 2).sum())
                n += y.numel()
                d = torch.cdist(p.reshape(-1, cb.shape[1]) * sd + mu, cb)
                hit += int((d.argmin(1) == va.codes[sl].reshape(-1)).sum())
                tot += d.shape[0]
            head.train()
            return se / n, hit / tot

        best = [float("inf"), -1, None]
        base = float(((target(va.codes) - vmean[va.speaker][:, None]) ** 2).mean().detach())
        for step in range(args.steps + 1):
            if step % 250 == 0:
                mse, acc = evaluate()
                rec = {"step": step, "valid_mse": mse, "valid_r2": 1 - mse / base, "valid_code_acc": acc,
                       "seconds": round(time.time() - t0, 1)}
                log.append(rec)
                print(json.dumps(rec), flush=True)
                if mse < best[0]:  # keep the best-on-valid weights (it overfits the training voices)
                    best[:] = [mse, step, {k: v.clone() for k, v in head.state_dict().items()}]
            if step == args.steps:
                break
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            for pg in opt.param_groups:
                pg["lr"] = lr
            idx = torch.randint(0, tr.sem.numel(), (args.batch,), generator=g)
            v = vmean[tr.speaker[idx]]
            v = v * (torch.rand(len(idx), 1, generator=g) > args.dropout_voice)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                p = head(tr.h[idx].float(), tr.sem[idx], v)
            loss = ((p.float() - target(tr.codes[idx])) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.load_state_dict(best[2])
        torch.save({"state": head.state_dict(), "mu": mu, "sd": sd, "step": best[1]}, ck)
        (out / "fit_log.json").write_text(json.dumps({"baseline_mse_voice_mean": base, "best_step": best[1],
                                                      "log": log}, indent=1))
    else:
        head.load_state_dict(torch.load(ck)["state"])
    head.eval()

    # ---- head row on the held-out items ---------------------------------------------------------------------
    from adapters.judges import error_rates
    from codec.contracts import CodecTokens
    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items
    from slm.eval.lm_eval import _np, _resample, voice_prompts
    from slm.pipeline import SpeechPipeline
    from slm.templates import with_phones

    pipe = SpeechPipeline.from_pretrained(args.model)
    pipe.codec = pipe.codec.float()
    items = load_items("data/synth2h/manifest.jsonl", "test", args.items, sample_rate=16000)
    prompts = voice_prompts(items)
    vref = {}
    for spk, it in prompts.items():
        t = pipe.encode(_resample(it.wav, it.sample_rate, pipe.sample_rate), pipe.sample_rate)
        vref[spk] = (cb[t.acoustic.reshape(-1)].mean(0) - mu) / sd
    wavs = {"floor": [], "codec": [], "voice mean direct": [], "latent quantised": [], "latent direct": []}
    bn = pipe.codec.bottleneck
    with torch.no_grad():
        for it in items:
            wav = _resample(it.wav, it.sample_rate, pipe.sample_rate)
            toks = pipe.encode(wav, pipe.sample_rate)
            sem = toks.semantic[0, 0]
            words = with_phones(it.words, it.phones) if it.words else None
            ex = pipe.tts_form_example(sem, it.text, words, wav.shape[-1] / pipe.sample_rate)
            o = pipe.infer_lm(input_ids=ex.input_ids[None], output_hidden_states=True)
            h = o.hidden_states[-1][0, ex.semantic_pos - 1].float()
            p = head(h, sem, vref[it.speaker].expand(len(sem), -1)) * sd + mu  # [Ts, r, 64]
            lat = p.reshape(-1, cb.shape[1])  # [Ta, 64]
            codes = torch.cdist(lat, cb).argmin(1)
            q = CodecTokens(toks.semantic, codes.view(1, 1, -1), None)
            s = bn.sem_up(bn.back(bn.teacher_codebook.centroids[sem])[None].transpose(1, 2))
            z = s + bn.ac_up(bn.ac_out(lat.T[None]))
            z0 = s + bn.ac_up(bn.ac_out((vref[it.speaker] * sd + mu)[None, :, None].expand(1, -1, lat.shape[0])))
            for key, w in (("voice mean direct", pipe.codec.decoder(z0)), ("codec", pipe.codec.decode(toks)), ("latent quantised", pipe.codec.decode(q)),
                           ("latent direct", pipe.codec.decoder(z))):
                wavs[key].append(_np(_resample(w.reshape(1, -1), pipe.sample_rate, 16000)))
            wavs["floor"].append(_np(_resample(it.wav, it.sample_rate, 16000)))
    judges = Judges(metrics=("asr",))
    refs_txt = [it.text for it in items]
    res = {"n": len(items)}
    for key, ws in wavs.items():
        er = error_rates(refs_txt, judges.asr.transcribe(ws, 16000))
        res[key] = {"wer": er.wer, "cer": er.cer}
        print(key, res[key], flush=True)
    (out / "head_row.json").write_text(json.dumps(res, indent=1))
    import soundfile as sf

    for key in ("latent quantised", "latent direct"):
        sf.write(str(out / f"{key.replace(' ', '_')}_0.wav"), wavs[key][0].reshape(-1), 16000)


if __name__ == "__main__":
    main()
