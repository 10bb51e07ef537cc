"""IFD scoring speed: length-bucketed batches vs. the one-example-at-a-time loop of the Cherry LLM reference code.

Both arms score the same seeded sample of Alpaca examples (alpagasus/random_9k, the chat template) with the same
model (SmolLM2-135M-Instruct, float32, CPU) in one process, one after the other; the script asserts that their IFD
values agree (rel. 1e-3) and prints examples/s of each and the ratio.

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
    loop = [response_losses(model, tok, [e], max_length=args.max_length, batch_size=1)[0] for e in examples]
    t_loop = time.perf_counter() - t0

    stats: dict = {}
    t0 = time.perf_counter()
    batched = []
    for i in range(0, len(examples), 16 * args.batch_size):  # the chunking scoring.score_ifd uses
        batched += response_losses(model, tok, examples[i: i + 16 * args.batch_size], max_length=args.max_length,
                                   batch_size=args.batch_size, stats=stats)
    t_batch = time.perf_counter() - t0

    ifd_loop = np.array([r["loss_cond"] / r["loss_uncond"] for r in loop if "error" not in r])
    ifd_batch = np.array([r["loss_cond"] / r["loss_uncond"] for r in batched if "error" not in r])
    assert len(ifd_loop) == len(ifd_batch), "the two arms failed on different examples"
    max_rel = float(np.max(np.abs(ifd_loop - ifd_batch) / np.abs(ifd_loop)))
    assert max_rel < 1e-3, f"batched IFD differs from the loop's by {max_rel:.2e} (relative)"
    n = len(examples)
    print(f"one-at-a-time loop : {n / t_loop:8.2f} examples/s ({t_loop:.1f} s)")
    print(f"batched (bs {args.batch_size:3d})   : {n / t_batch:8.2f} examples/s ({t_batch:.1f} s), "
          f"padding {stats['pad_tokens'] / stats['tokens']:.1%} of tokens")
    print(f"speed-up           : {t_loop / t_batch:.2f}x   (max relative IFD difference {max_rel:.1e}, "
          f"mean IFD {ifd_batch.mean():.3f})")


if __name__ == "__main__":
    main()
