"""Batched vs one-prompt-at-a-time greedy generation, side by side in one process (same model, same prompts).

    /work/venv/bin/python benchmarks/bench_generate.py                       # 64 vicuna/koala prompts, 128 tokens
    /work/venv/bin/python benchmarks/bench_generate.py --n 8 --max-new-tokens 16   # a quick check

Both runs go through `generate.generate_answers` (the code the pipeline uses) with the already loaded model, so
the times exclude loading. Reports generated tokens/s of each run, the speed ratio (target >= 4x), and how many
answers are identical (greedy decoding: batched and single outputs differ only where float rounding under left
padding flips a near-tie; the first differing token position is reported). Prints one JSON object; --out also
writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(args: argparse.Namespace) -> dict:
    import torch

    from phased_ift.data import load_test_set
    from phased_ift.runio import read_jsonl
    from phased_ift.generation import generate_answers
    from phased_ift.modeling import load_for_inference
    from phased_ift.modeling import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    half = args.n // 2
    prompts = load_test_set("vicuna", limit=half, seed=args.seed) + load_test_set("koala", limit=args.n - half,
                                                                                  seed=args.seed)
    path = resolve_model_path(args.model)
    loaded = load_for_inference(path)
    loaded[0].to(args.device)
    from machine import machine_facts

    # Generation runs in the weights' dtype (fp32 on a CPU: `modeling.inference_dtype`), no autocast.
    out: dict = {"model": args.model, "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                 "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
                 "threads": torch.get_num_threads(), "device": args.device, "machine": machine_facts(),
                 "precision": {"dtype": str(next(loaded[0].parameters()).dtype).removeprefix("torch."),
                               "autocast": "none"}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bs in (("single", 1), ("batched", args.batch_size)):
            f = Path(tmp) / label / "bench.jsonl"
            t0 = time.perf_counter()
            generate_answers(path, prompts, args.max_new_tokens, bs, "chat", f, loaded=loaded,
                             max_batch_tokens=args.max_batch_tokens)
            secs = time.perf_counter() - t0
            rows[label] = {r["id"]: r for r in read_jsonl(f)}
            toks = sum(r["output_tokens"] for r in rows[label].values())
            out[label] = {"seconds": round(secs, 2), "tokens": toks, "tokens_per_s": round(toks / secs, 2),
                          "finish_length": sum(r["finish_reason"] == "length" for r in rows[label].values())}
    out["speedup"] = round(out["batched"]["tokens_per_s"] / out["single"]["tokens_per_s"], 2)
    out["wall_ratio"] = round(out["single"]["seconds"] / out["batched"]["seconds"], 2)
    tok = loaded[1]
    same, first_diff = 0, []
    for i, r in rows["single"].items():
        a, b = r["output"], rows["batched"][i]["output"]
        if a == b:
            same += 1
        else:
            ta, tb = tok(a)["input_ids"], tok(b)["input_ids"]
            first_diff.append(next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb))))
    out["identical_outputs"] = same
    out["first_diff_token_positions"] = sorted(first_diff)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=64, help="prompts: half vicuna, half koala (seeded sample)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch-tokens", type=int, default=4096, help="padded prompt tokens per batch (0 = no cap)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="", help="also write the JSON result here")
    args = p.parse_args()
    res = run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
