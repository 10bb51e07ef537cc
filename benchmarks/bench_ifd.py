"""IFD scoring speed: phased-ift's scorer vs. the one-example-at-a-time loop of the Cherry LLM reference code.

Four arms score the same seeded sample of Alpaca examples (alpagasus/random_9k, the chat template, the same token
ids) with the same model (SmolLM2-135M-Instruct, float32 weights) in one process, one after the other:
    reference  the per-example procedure of Cherry LLM's `cherry_seletion/data_analysis.py` (Li et al. 2024,
               github tianyi-lab/Cherry_LLM), re-implemented on our token ids: for the response alone and the
               response after the instruction, one forward pass each with the full logits and every hidden state
               (the reference loads the model with output_hidden_states=True), the mean loss from the model, and the
               per-token losses it also saves, one log-softmax per position in a Python loop; fp32
    loop       phased-ift's scorer with batch size 1, fp32 (what batching and bf16 add on top of it)
    batched    phased-ift's scorer in fp32: length-bucketed batches, the LM head only from the first response token
    default    phased-ift's scorer with its defaults (scoring.batch_size=8, scoring.autocast=auto: bf16 autocast
               with the Linear weights stored in bf16 where the hardware runs bf16 natively, else fp32 -- then it
               is the batched arm again; --autocast sets it)
The fp32 arms must agree with the reference within 1e-3 (relative); a bf16 arm's largest relative difference
and its Spearman correlation with the reference are printed (it must rank the examples alike: rho >= 0.99 when
n >= 64). The JSON carries the machine facts (CPU capability string, native bf16), the default arm's precision
with its reason, this machine's matrix-product rate (`machine.compute_limits`) and each arm's fraction of it:
2 x the model's Linear weights x the non-padding tokens of both passes per second (LM head not counted: a lower
bound).

    PHASED_IFT_DATA_HOME=../shared/data python benchmarks/bench_ifd.py --n 512 \
        --out benchmarks/results/ifd_n512.json                                          # the full benchmark
    PHASED_IFT_DATA_HOME=../shared/data python benchmarks/bench_ifd.py --n 32           # a quick check

Options: --batch-size (default 8), --max-length (default 512), --threads (torch threads; default torch's).
With CUDA available every arm runs on the GPU (`modeling.inference_device()`), the reference loop included.
Numbers depend on the machine and on its load: run it on an otherwise idle machine for the reported table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--autocast", default="auto", help="the default arm's scoring.autocast (auto | bf16 | none)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    import numpy as np
    import torch

    from phased_ift.modeling import load_scoring_model
    from phased_ift.scoring.reference import build_reference_set

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = build_reference_set()
    pool = np.flatnonzero(ref.random9k)
    idx = np.random.default_rng(args.seed).choice(pool, args.n, replace=False)
    examples = [ref.examples[i] for i in idx]
    from machine import compute_limits, limit_for, linear_params, machine_facts, precision_facts

    model, tok = load_scoring_model(args.model, "none")
    precision, facts, limits = precision_facts(args.autocast), machine_facts(), compute_limits()
    default_autocast = precision["autocast"]
    print(f"{args.n} examples of alpagasus/random_9k, model {args.model}, max_length {args.max_length}, {facts}; "
          f"default arm {default_autocast} ({precision['reason']}); matmul limits {limits}")

    # The default arm runs as `phased-ift score` does: its own copy (the Linear weights stored in bf16 under bf16).
    model_default, _ = load_scoring_model(args.model, default_autocast)
    arms, labels = ifd_arms(model, model_default, tok, examples, args.max_length, args.batch_size, default_autocast)
    out: dict = {"setup": vars(args), "machine": facts, "precision": precision, "limits": limits}
    out.update(run_arms(arms, labels, args.n, low_precision=default_autocast != "none"))
    flops = 2 * linear_params(args.model) * out["batched"]["tokens"]  # the same sequences in every arm
    for arm in arms:
        rate = limit_for(default_autocast if arm == "default" else "none", limits)
        out[arm]["fraction_of_limit"] = flops / out[arm]["seconds"] / 1e9 / rate
    print("fraction of the matmul limit: " + ", ".join(f"{k} {out[k]['fraction_of_limit']:.0%}" for k in arms))
    t = {k: out[k]["seconds"] for k in arms}
    out["speedup_vs_reference"] = {k: t["reference"] / t[k] for k in ("loop", "batched", "default")}
    out["speedup_vs_loop"] = {k: t["loop"] / t[k] for k in ("batched", "default")}
    print("speed-up vs reference loop: " + ", ".join(f"{k} {v:.2f}x" for k, v in out["speedup_vs_reference"].items())
          + ";  vs batch size 1: " + ", ".join(f"{k} {v:.2f}x" for k, v in out["speedup_vs_loop"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def ifd_arms(model, model_default, tok, examples, max_length: int, batch_size: int, default_autocast: str):
    """The four arms of the module docstring as {name: fn(stats) -> rows} and their labels, after one warm-up pass
    of each precision's kernels. `model` holds fp32 weights; `model_default` is `scoring.load_scoring_model`'s copy
    for `default_autocast` (the same object when it is "none")."""
    from phased_ift.modeling import response_losses
    from phased_ift.scoring.losses import SORT_CHUNK_BATCHES

    def ours(bs: int, autocast: str, stats: dict | None = None) -> list[dict]:
        m = model_default if autocast == default_autocast else model
        chunk = SORT_CHUNK_BATCHES * bs  # the chunks scoring.losses.score_ifd sorts within
        res: list[dict] = []
        for i in range(0, len(examples), chunk):
            res += response_losses(m, tok, examples[i: i + chunk], max_length=max_length, batch_size=bs,
                                   stats=stats, autocast=autocast)
        return res

    arms = {
        "reference": lambda st: [reference_losses(model, tok, e, max_length) for e in examples],
        "loop": lambda st: [response_losses(model, tok, [e], max_length=max_length, batch_size=1)[0]
                            for e in examples],
        "batched": lambda st: ours(batch_size, "none", st),
        "default": lambda st: ours(batch_size, default_autocast, st),
    }
    labels = {"reference": "reference loop (Cherry LLM), fp32", "loop": "phased-ift, batch size 1, fp32",
              "batched": f"phased-ift, batch {batch_size}, fp32", "default": f"phased-ift, batch "
              f"{batch_size}, autocast {default_autocast} (defaults)"}
    ours(2, default_autocast)  # warm-up (both precisions' kernels)
    response_losses(model, tok, examples[:2], max_length=max_length, batch_size=1)
    return arms, labels


def run_arms(arms: dict, labels: dict, n: int, low_precision: bool = True, strict: bool = True) -> dict:
    """Time each arm (the first is the reference) and compare its IFD values with the reference's; returns
    {arm: {"seconds", "examples_per_s", "max_rel_ifd_diff", "spearman", "mean_ifd", "padding_fraction"?,
    "tokens"? (non-padding tokens of both passes, for the batched arms)}}.

    Raises:
        AssertionError: an fp32 arm differs from the reference by 1e-3 (relative) or more, or the default arm in
            bf16 (`low_precision`) ranks the examples differently (Spearman < 0.99, checked from n >= 64). With
            `strict=False` the message goes to the arm's "check_failed" instead (e.g. a model with random weights,
            whose IFD values are all about 1, so bf16 rounding reorders them) and the next arm runs.
    """
    import numpy as np
    from scipy.stats import spearmanr

    out: dict = {}
    ifd_ref = None
    for name, fn in arms.items():
        stats: dict = {}
        t0 = time.perf_counter()
        res = fn(stats)
        sec = time.perf_counter() - t0
        ifd = np.array([r["loss_cond"] / r["loss_uncond"] for r in res if "error" not in r])
        ifd_ref = ifd if ifd_ref is None else ifd_ref
        assert len(ifd) == len(ifd_ref), "the arms failed on different examples"
        max_rel = float(np.max(np.abs(ifd - ifd_ref) / np.abs(ifd_ref)))
        rho = float(spearmanr(ifd, ifd_ref)[0])
        out[name] = {"seconds": sec, "examples_per_s": n / sec, "max_rel_ifd_diff": max_rel, "spearman": rho,
                     "mean_ifd": float(ifd.mean())}
        if stats.get("tokens"):
            out[name]["padding_fraction"] = stats["pad_tokens"] / stats["tokens"]
            out[name]["tokens"] = stats["tokens"] - stats["pad_tokens"]  # non-padding, both IFD passes
        pad = f", padding {out[name]['padding_fraction']:.1%}" if "padding_fraction" in out[name] else ""
        print(f"{labels[name]:<48}: {n / sec:6.2f} examples/s ({sec:.1f} s){pad}; vs reference: max rel. "
              f"IFD diff {max_rel:.1e}, Spearman {rho:.4f}", flush=True)
        try:
            if name == "default" and low_precision:  # a rank correlation says little on a few examples: from 64 on
                assert rho >= 0.99 or n < 64, f"bf16 IFD ranks the examples differently from fp32 (Spearman {rho:.4f})"
            else:
                assert max_rel < 1e-3, f"{name}: IFD values differ from the reference loop's by {max_rel:.2e}"
        except AssertionError as e:
            if strict:
                raise
            out[name]["check_failed"] = str(e)
    return out


def reference_losses(model, tokenizer, example, max_length: int) -> dict:
    """Cherry LLM's per-example IFD computation (cherry mode), on phased-ift's token ids for one example.

    For each of (response after the instruction, response alone): one unbatched forward pass with labels, the full
    [1, T, V] logits and all hidden states; the mean response loss from the model; then the per-token losses that
    the reference stores next to it, one log-softmax + NLL per position in a Python loop (`.item()` each).
    """
    import torch

    from phased_ift.modeling import tokenize_for_ifd

    t = tokenize_for_ifd(tokenizer, example, "chat", max_length)
    if isinstance(t, str):
        return {"error": t}
    out = {}
    for kind, feats in zip(("cond", "uncond"), t):
        ids = torch.tensor([feats["input_ids"]], device=model.device)
        labels = torch.tensor([feats["labels"]], device=model.device)
        with torch.no_grad():
            res = model(ids, labels=labels, output_hidden_states=True)
        token_losses = []
        for i in range(1, ids.shape[1]):
            log_probs = torch.log_softmax(res.logits[0, i - 1], dim=-1)
            token_losses.append(float(torch.nn.functional.nll_loss(log_probs[None], ids[0, i][None])))
        out["loss_" + kind] = float(res.loss)
    return out


if __name__ == "__main__":
    main()
