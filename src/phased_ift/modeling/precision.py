"""Which precision the matrix products run in: `auto` resolved from the hardware.

Owns: the hardware probe (`probe_hardware` -> `Hardware`: the device, the CPU capability string, native bf16 and
fp16) and the auto rule (`resolve_autocast`). Every pass that has a precision setting (model.autocast for training,
the frozen LoRA base weights, generation and the reference loss; scoring.autocast for ifd/loss) takes the value
`resolve_autocast` gives, so "auto" means the same everywhere.

The rule (issue 12): bf16 only where the hardware runs it natively (CUDA with bf16 support, Ampere and later; a CPU
with AVX512-BF16 or AMX tiles, or an Arm CPU whose oneDNN reports bf16), fp16 on a CUDA GPU without bf16 (its fast
path), fp32 ("none") otherwise. Measured on a 2-core AVX2 CPU without bf16 instructions: a 2048^2 matrix product
runs at 104 GFLOP/s in fp32 and 0.8 GFLOP/s in bf16 (emulated), so bf16 there is two orders of magnitude slower.
An explicit setting (bf16, fp16, none) is always kept.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

# The values config.AUTOCAST_CHOICES accepts (config is not imported here: it imports the steps, which import this).
AUTOCAST_CHOICES = ("auto", "bf16", "fp16", "none")


@dataclass(frozen=True)
class Hardware:
    """What the precision rule looks at. `device` is "cuda" or "cpu"; `cpu_capability` is PyTorch's ATen dispatch
    level (`torch.backends.cpu.get_cpu_capability()`, e.g. "AVX2", "AVX512"); `name` the GPU or CPU model."""

    device: str
    name: str
    cpu_capability: str
    native_bf16: bool
    native_fp16: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles on x86 (`torch.cpu` probes); on Arm, oneDNN's bf16 check (the BF16 extension).
    On x86 the oneDNN check alone is not enough: it is also true on AVX512 CPUs that emulate bf16."""
    import torch

    if platform.machine().lower() in ("arm64", "aarch64"):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def probe_hardware() -> Hardware:
    """The hardware of this process's passes: the first CUDA device when there is one, else the CPU."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        return Hardware("cuda", torch.cuda.get_device_name(0), capability,
                        native_bf16=bool(torch.cuda.is_bf16_supported()), native_fp16=True)
    return Hardware("cpu", _cpu_name(), capability, native_bf16=_cpu_native_bf16(), native_fp16=False)


def resolve_autocast(requested: str, hardware: Hardware | None = None) -> tuple[str, str]:
    """(the autocast to use: "bf16" | "fp16" | "none", the reason in words).

    Args:
        requested: "auto", or an explicit "bf16" / "fp16" / "none" (returned as is).
        hardware: the probe's result (default: `probe_hardware()`); tests pass a stand-in.
    Raises:
        ValueError: `requested` is not one of AUTOCAST_CHOICES.
    """
    if requested not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {AUTOCAST_CHOICES}, got {requested!r}")
    if requested != "auto":
        return requested, "set explicitly"
    hw = hardware or probe_hardware()
    if hw.device == "cuda":
        if hw.native_bf16:
            return "bf16", f"auto: {hw.name} supports bf16"
        return "fp16", f"auto: {hw.name} has no bf16; fp16 is its fast path"
    if hw.native_bf16:
        return "bf16", f"auto: CPU {hw.cpu_capability} with native bf16 ({hw.name})"
    return "none", f"auto: CPU {hw.cpu_capability} without native bf16 ({hw.name}): fp32"


def resolve_config_precision(cfg, hardware: Hardware | None = None):
    """(`cfg` with model.autocast and scoring.autocast resolved, {"model.autocast": [value, reason], ...,
    "hardware": `Hardware.to_dict()`}). A config without "auto" comes back unchanged (the same object).

    The pipeline calls it before anything reads these fields, so cache keys, the Trainer arguments, the run dir's
    config.yaml and the plan all see the concrete value.
    """
    import dataclasses

    hw = hardware or probe_hardware()
    record: dict = {"hardware": hw.to_dict()}
    sections = {}
    for section in ("model", "scoring"):
        sub = getattr(cfg, section)
        value, reason = resolve_autocast(sub.autocast, hw)
        record[f"{section}.autocast"] = [value, reason]
        if value != sub.autocast:
            sections[section] = dataclasses.replace(sub, autocast=value)
    return (dataclasses.replace(cfg, **sections) if sections else cfg), record


def describe_precision(record: dict) -> str:
    """One line for the plan and the run dir's config.yaml, e.g. "precision: model.autocast=none, scoring.autocast=
    none (auto: CPU AVX2 without native bf16 (AMD EPYC): fp32)"."""
    parts = [f"{k}={v[0]}" for k, v in record.items() if k != "hardware"]
    reasons = sorted({v[1] for k, v in record.items() if k != "hardware"})
    return f"precision: {', '.join(parts)} ({'; '.join(reasons)})"


def inference_dtype(dtype: str, autocast: str, hardware: Hardware | None = None) -> str:
    """The weight dtype of generation and reference-loss passes: `dtype` (model.dtype) when it is not float32;
    on a CUDA device, the autocast's dtype (bf16 -> "bfloat16", fp16 -> "float16": inference needs no fp32
    master weights); on a CPU, float32 (the measured fast path of the quickstart, and the only one without
    native bf16)."""
    if dtype != "float32":
        return dtype
    hw = hardware or probe_hardware()
    value = resolve_autocast(autocast, hw)[0]
    if hw.device == "cuda" and value != "none":
        return {"bf16": "bfloat16", "fp16": "float16"}[value]
    return "float32"
