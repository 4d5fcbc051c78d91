"""How OpenMP threads wait, and what it does to one decoding step of the speech LM on a few-core CPU.

libgomp (torch's OpenMP) reads ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` once, when torch loads, so every
row runs in its own child process. Each child builds the model (the bundled default unless ``--model``),
then times single-token decoding steps (:class:`slm.generate.FusedStep`, the loop TTS runs) with
``--threads`` threads (one row with one thread, for reference). Every policy is measured twice in the same run: on the machine as it is ("idle")
and while one busy-looping process holds a core ("busy": a second job, a browser, the demo's own audio
encoding). Ratios are against ``OMP_WAIT_POLICY=PASSIVE`` (no spinning), the previous project default.

    python benchmarks/omp_wait.py --threads 2 --out docs/results/omp_wait.json --md docs/results/omp_wait.md
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POLICIES = {  # name -> the environment the child starts with (both variables cleared first)
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one thread (passive)": {"OMP_WAIT_POLICY": "PASSIVE", "threads": 1},
    "spin_3k": {"GOMP_SPINCOUNT": "3000"},
    "spin_10k (project default)": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
    "spin_100k": {"GOMP_SPINCOUNT": "100000"},
    "libgomp default": {},
}


def _worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from adapters.backbones import out_cache
    from slm.pipeline import SpeechPipeline

    lm = SpeechPipeline.from_pretrained(spec["model"]).infer_lm
    fused = getattr(lm, "fused_step", None)
    if fused is None:
        raise SystemExit("the model's backbone has no FusedStep (Llama architecture needed)")
    prompt = torch.arange(1, 65).view(1, -1)
    out = lm(prompt, use_cache=True)
    st = fused.start(out_cache(out), prompt.shape[1], prompt.shape[1] + spec["steps"] + 16)
    for _ in range(8):
        st.step(10)
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        st.step(10)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2], "p90_ms": 1e3 * times[int(len(times) * 0.9)]}


def _hog(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def _run(env_extra: dict, spec: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env_extra = dict(env_extra)
    spec = {**spec, "threads": env_extra.pop("threads", spec["threads"])}
    env.update(env_extra, OMP_NUM_THREADS=str(spec["threads"]), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="speech-LM dir or 'default'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="timed decoding steps per row")
    ap.add_argument("--out", help="JSON results")
    ap.add_argument("--md", help="Markdown table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return
    from benchmarks.common import machine, write_json, write_markdown

    spec = {"model": a.model, "threads": a.threads, "steps": a.steps}
    rows = []
    for load in ("idle", "busy"):
        hog = None
        if load == "busy":
            hog = mp.get_context("spawn").Process(target=_hog, args=(3600,), daemon=True)
            hog.start()
        try:
            for name, env in POLICIES.items():
                r = {"policy": name, "env": env, "load": load, "threads": env.get("threads", a.threads),
                     **_run(env, spec)}
                print(json.dumps(r), flush=True)
                rows.append(r)
        finally:
            if hog is not None:
                hog.terminate()
                hog.join()
    base = {r["load"]: r.get("median_ms") for r in rows if r["policy"] == "passive"}
    for r in rows:
        if r.get("median_ms") and base.get(r["load"]):
            r["speedup_vs_passive"] = round(base[r["load"]] / r["median_ms"], 2)
    m = machine(a.threads)
    if a.out:
        write_json(a.out, {"machine": m, "spec": spec, "rows": rows})
    head = (f"One SmolLM2-135M decoding step (speech-LM `{a.model}`, FusedStep), {a.threads} threads, float32; "
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}. 'busy': one busy-looping process holds a core. "
            "Median of the timed steps; ratio vs PASSIVE under the same load.")
    table = [head, "",
             "| policy | env | idle ms | busy ms | idle vs PASSIVE | busy vs PASSIVE |", "|---|---|---|---|---|---|"]
    for name, env in POLICIES.items():
        cells = {r["load"]: r for r in rows if r["policy"] == name}
        fmt = [f"{cells[k].get('median_ms', float('nan')):.1f}" for k in ("idle", "busy")]
        rat = [f"{cells[k].get('speedup_vs_passive', float('nan')):.2f}x" for k in ("idle", "busy")]
        envs = " ".join(f"{k}={v}" for k, v in env.items() if k != "threads") or "(none)"
        table.append(f"| {name} | `{envs}` | {fmt[0]} | {fmt[1]} | {rat[0]} | {rat[1]} |")
    write_markdown(a.md, table)


if __name__ == "__main__":
    main()
