"""What every benchmark JSON says about the machine it ran on, and the limit its numbers are a fraction of.

Owns: `machine_facts` (torch version, threads, CPU count, `modeling.probe_hardware()`: device, CPU model, PyTorch's
CPU capability string, native bf16/fp16), `precision_facts` (how an autocast setting resolved here, with the
reason: `modeling.resolve_autocast`) and `matmul_gflops` (this machine's measured rate of a square matrix product,
the practical compute limit a model pass is compared with). Imported by the scripts in benchmarks/ only.

    python benchmarks/machine.py          # print the facts and the fp32 (and, where native, bf16) matmul rate
"""

from __future__ import annotations

import json
import os
import time


def linear_params(model_name: str = "smollm2-135m-instruct") -> int:
    """Weights of the model's nn.Linear layers except the LM head: the matrix products of a pass cost about
    2 x this many flops per token forward (the LM head, embeddings and attention scores left out)."""
    import torch

    from phased_ift.modeling import load_model

    model = load_model(model_name)
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def machine_facts() -> dict:
    """{"torch", "threads", "cpus", "hardware": `Hardware.to_dict()`}."""
    import torch

    from phased_ift.modeling import probe_hardware

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "hardware": probe_hardware().to_dict()}


def precision_facts(requested: str = "auto") -> dict:
    """{"requested", "autocast": the resolved value, "reason"} for an autocast setting on this machine."""
    from phased_ift.modeling import resolve_autocast

    value, reason = resolve_autocast(requested)
    return {"requested": requested, "autocast": value, "reason": reason}


def matmul_gflops(dtype: str = "float32", n: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of an n x n @ n x n matrix product in `dtype` ("float32" | "bfloat16" | "float16") on the device
    of `modeling.inference_device()` with the current torch threads: 2 n^3 flops per product, the best of repeated
    timings over about `seconds` after one warm-up product."""
    import torch

    from phased_ift.modeling import inference_device

    dev = inference_device()
    a = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def compute_limits() -> dict:
    """{"fp32_gflops", "bf16_gflops" (only where bf16 is native), "fp16_gflops" (GPU)}, measured now."""
    from phased_ift.modeling import probe_hardware

    hw = probe_hardware()
    limits = {"fp32_gflops": matmul_gflops("float32")}
    if hw.native_bf16:
        limits["bf16_gflops"] = matmul_gflops("bfloat16")
    if hw.native_fp16:
        limits["fp16_gflops"] = matmul_gflops("float16")
    return limits


def limit_for(autocast: str, limits: dict) -> float:
    """The matmul rate (GFLOP/s) a pass under `autocast` ("bf16" | "fp16" | "none") is bounded by: that
    precision's when it was measured (native only), else fp32's."""
    return limits.get(f"{autocast}_gflops", limits["fp32_gflops"])


if __name__ == "__main__":
    print(json.dumps({**machine_facts(), "precision": precision_facts(), "limits": compute_limits()}, indent=2))
