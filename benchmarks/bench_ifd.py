"""IFD scoring speed: length-bucketed batches vs. the one-example-at-a-time loop of the Cherry LLM reference code.

Three arms score the same seeded sample of Alpaca examples (alpagasus/random_9k, the chat template, the same token
ids) with the same model (SmolLM2-135M-Instruct, float32, CPU) in one process, one after the other:
    reference  the per-example procedure of Cherry LLM's `cherry_seletion/data_analysis.py` (Li et al. 2024,
               github tianyi-lab/Cherry_LLM), re-implemented on our token ids: for the response alone and the
               response after the instruction, one forward pass each with the full logits and every hidden state
               (the reference loads the model with output_hidden_states=True), the mean loss from the model, and the
               per-token losses it also saves, one log-softmax per position in a Python loop
    loop       phased-ift's scorer with batch size 1 (what batching alone buys)
    batched    phased-ift's scorer: length-bucketed batches, the LM head only from the first response token
The script asserts that the IFD values agree (rel. 1e-3) and prints examples/s of each and the ratios.

    PHASED_IFT_DATA_HOME=../shared/data python benchmarks/bench_ifd.py --n 512          # the full benchmark
    PHASED_IFT_DATA_HOME=../shared/data python benchmarks/bench_ifd.py --n 32           # a quick check

Options: --batch-size (default 16), --max-length (default 512), --threads (torch threads; default torch's).
Numbers depend on the machine and on its load: run it on an otherwise idle machine for the reported table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch

    from phased_ift.agreement import build_reference_set
    from phased_ift.modeling import load_model, load_tokenizer
    from phased_ift.scoring import response_losses

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = build_reference_set()
    pool = np.flatnonzero(ref.random9k)
    idx = np.random.default_rng(args.seed).choice(pool, args.n, replace=False)
    examples = [ref.examples[i] for i in idx]
    model, tok = load_model(args.model), load_tokenizer(args.model)
    print(f"{args.n} examples of alpagasus/random_9k, model {args.model}, max_length {args.max_length}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")

    response_losses(model, tok, examples[:2], max_length=args.max_length, batch_size=2)  # warm-up

    t0 = time.perf_counter()
    reference = [reference_losses(model, tok, e, args.max_length) for e in examples]
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    loop = [response_losses(model, tok, [e], max_length=args.max_length, batch_size=1)[0] for e in examples]
    t_loop = time.perf_counter() - t0

    stats: dict = {}
    t0 = time.perf_counter()
    batched = []
    for i in range(0, len(examples), 16 * args.batch_size):  # the chunking scoring.score_ifd uses
        batched += response_losses(model, tok, examples[i: i + 16 * args.batch_size], max_length=args.max_length,
                                   batch_size=args.batch_size, stats=stats)
    t_batch = time.perf_counter() - t0

    ifd_ref = np.array([r["loss_cond"] / r["loss_uncond"] for r in reference if "error" not in r])
    ifd_loop = np.array([r["loss_cond"] / r["loss_uncond"] for r in loop if "error" not in r])
    ifd_batch = np.array([r["loss_cond"] / r["loss_uncond"] for r in batched if "error" not in r])
    assert len(ifd_ref) == len(ifd_loop) == len(ifd_batch), "the arms failed on different examples"
    max_rel = max(float(np.max(np.abs(x - ifd_ref) / np.abs(ifd_ref))) for x in (ifd_loop, ifd_batch))
    assert max_rel < 1e-3, f"IFD values differ from the reference loop's by {max_rel:.2e} (relative)"
    n = len(examples)
    print(f"reference loop (Cherry LLM)  : {n / t_ref:8.2f} examples/s ({t_ref:.1f} s)")
    print(f"phased-ift, batch size 1     : {n / t_loop:8.2f} examples/s ({t_loop:.1f} s)")
    print(f"phased-ift, batched (bs {args.batch_size:3d}) : {n / t_batch:8.2f} examples/s ({t_batch:.1f} s), "
          f"padding {stats['pad_tokens'] / stats['tokens']:.1%} of tokens")
    print(f"speed-up vs reference loop   : {t_ref / t_batch:.2f}x;  batching alone (vs batch size 1): "
          f"{t_loop / t_batch:.2f}x   (max relative IFD difference {max_rel:.1e}, mean IFD {ifd_batch.mean():.3f})")


def reference_losses(model, tokenizer, example, max_length: int) -> dict:
    """Cherry LLM's per-example IFD computation (cherry mode), on phased-ift's token ids for one example.

    For each of (response after the instruction, response alone): one unbatched forward pass with labels, the full
    [1, T, V] logits and all hidden states; the mean response loss from the model; then the per-token losses that
    the reference stores next to it, one log-softmax + NLL per position in a Python loop (`.item()` each).
    """
    import torch

    from phased_ift.scoring import tokenize_for_ifd

    t = tokenize_for_ifd(tokenizer, example, "chat", max_length)
    if isinstance(t, str):
        return {"error": t}
    out = {}
    for kind, feats in zip(("cond", "uncond"), t):
        ids = torch.tensor([feats["input_ids"]])
        labels = torch.tensor([feats["labels"]])
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
