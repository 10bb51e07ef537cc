"""The phase handoff under sharded training (FSDP, DeepSpeed ZeRO-3): what a phase's save must hold and the check
that it does.

Each phase starts from the previous phase's saved dir, so that save must hold the *complete* weights (or the
complete LoRA adapter). Under FSDP and ZeRO-3 every rank holds a shard of each parameter; a naive save writes the
shard, an empty tensor (ZeRO-3's placeholders have shape [0]) or nothing at all (transformers 5's
`Trainer.save_model` under FSDP with `fsdp_state_dict_type: SHARDED_STATE_DICT` saves no model file), and the next
phase would fail to load, or load the wrong weights. Owns:

  * `Backend` / `backend_of(accelerator)`: which distributed backend the Trainer's accelerator actually runs
    (`ddp`, `fsdp`, `zero1`..`zero3`, `single`) and the save settings that matter for the handoff.
  * `check_backend(backend, ...)`: refuses, before a phase trains, what cannot hand over complete weights (ZeRO-3
    without `stage3_gather_16bit_weights_on_model_save`, `train.carry_optimizer` with a sharded optimiser,
    `train.lora.across_phases=merge` with sharded weights); warns when FSDP / DeepSpeed was asked for but accelerate
    runs something else (accelerate 1.16 runs FSDP launch configs as plain DDP on a CPU-only machine).
  * `full_state_dict(trainer)`: the phase's final save under FSDP always gathers the full state dict
    (accelerate's `FULL_STATE_DICT`, `Accelerator.get_state_dict`), whatever `fsdp_state_dict_type` the Trainer
    checkpoints inside the phase use.
  * `expected_shapes(model)` / `saved_shapes(dir)` / `verify_saved_weights(dir, expected, backend)`: after each
    phase's save, every parameter the next phase loads is in the saved files with its full shape and no tensor is
    empty; otherwise a `PhasedIFTError` naming the phase dir, the tensors and the fix (before DONE is written, so
    the phase is trained again on the next run).

Imports torch / transformers / safetensors lazily inside the functions; loaded by `train.loop` when a phase trains.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from phased_ift.errors import PhasedIFTError

SHARDED = ("fsdp", "zero3")  # backends whose parameters are sharded across ranks
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class Backend:
    """The distributed backend a phase's Trainer runs, as recorded in hparams.json (`distributed`).

    name: `single` (one process), `ddp`, `fsdp`, `zero1` / `zero2` / `zero3` (DeepSpeed stage).
    gather_on_save: DeepSpeed's `stage3_gather_16bit_weights_on_model_save` (None outside DeepSpeed).
    state_dict_type: accelerate's FSDP `fsdp_state_dict_type` (e.g. "FULL_STATE_DICT"; None outside FSDP).
    fsdp_version: 1 or 2 under FSDP, else None.
    requested: what the launcher asked for through accelerate's environment (`fsdp`, `deepspeed` or None).
    """

    name: str
    gather_on_save: bool | None = None
    state_dict_type: str | None = None
    fsdp_version: int | None = None
    requested: str | None = None

    @property
    def sharded(self) -> bool:
        return self.name in SHARDED


def backend_of(accelerator) -> Backend:
    """The `Backend` of an accelerate `Accelerator` (the Trainer's `trainer.accelerator`), after it is built."""
    from accelerate.utils import DistributedType

    env = os.environ
    requested = ("fsdp" if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else
                 "deepspeed" if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" else None)
    state = accelerator.state
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = state.deepspeed_plugin
        zero = plugin.deepspeed_config.get("zero_optimization", {})
        return Backend(f"zero{int(plugin.zero_stage or 0)}",
                       gather_on_save=bool(zero.get("stage3_gather_16bit_weights_on_model_save", False)),
                       requested=requested)
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        return Backend("fsdp", state_dict_type=str(plugin.state_dict_type).rsplit(".", 1)[-1],
                       fsdp_version=int(getattr(plugin, "fsdp_version", 1) or 1), requested=requested)
    return Backend("ddp" if accelerator.num_processes > 1 else "single", requested=requested)


def check_backend(backend: Backend, *, carry_optimizer: bool, merge: bool, config_hint: str = "") -> None:
    """Refuse, before a phase trains, a setup whose phase save cannot hold the complete weights; warn when the
    launcher asked for a sharded backend that accelerate does not run.

    Args:
        backend: `backend_of(trainer.accelerator)`.
        carry_optimizer: train.carry_optimizer (optimizer.pt is written by rank 0 from its own optimiser state).
        merge: train.lora.across_phases=merge (`merge_and_unload` on the live model).
        config_hint: where the DeepSpeed JSON came from, for the message (e.g. the train.deepspeed path).
    Raises:
        PhasedIFTError: ZeRO-3 without `stage3_gather_16bit_weights_on_model_save: true` (transformers would save
            an empty state dict and a DeepSpeed checkpoint that the next phase cannot load); carry_optimizer under
            FSDP or any ZeRO stage (rank 0's optimiser state is a shard); merge under FSDP or ZeRO-3.
    """
    where = f" ({config_hint})" if config_hint else ""
    if backend.name == "zero3" and not backend.gather_on_save:
        raise PhasedIFTError(
            f"train: DeepSpeed ZeRO-3 without \"stage3_gather_16bit_weights_on_model_save\": true in its "
            f"zero_optimization section{where}: each phase's save would hold no weights (transformers saves an "
            f"empty state dict and a sharded DeepSpeed checkpoint), so the next phase could not start from it. Set "
            f"it to true, as configs/accelerate/ds_zero3.json does.")
    if carry_optimizer and (backend.sharded or backend.name.startswith("zero")):
        raise PhasedIFTError(
            f"train: train.carry_optimizer=true is not supported under {backend.name}: the optimiser state is "
            f"sharded across ranks and optimizer.pt would hold rank 0's shard only. Set train.carry_optimizer=false "
            f"(the paper restarts the optimiser each phase) or train with DDP.")
    if merge and backend.sharded:
        raise PhasedIFTError(
            f"train: train.lora.across_phases=merge is not supported under {backend.name}: merging needs the full "
            f"base weights on one rank. Use train.lora.across_phases=continue (the adapter is gathered and saved "
            f"whole) or train with DDP.")
    if backend.requested == "fsdp" and backend.name != "fsdp" or \
            backend.requested == "deepspeed" and not backend.name.startswith("zero"):
        warnings.warn(f"train: the launcher asked for {backend.requested}, but accelerate runs {backend.name}: "
                      f"weights are not sharded (accelerate 1.16 enables FSDP only on GPUs and other accelerators; "
                      f"see docs/training.md, 'Sharded training').", stacklevel=2)


@contextlib.contextmanager
def full_state_dict(trainer):
    """Make `trainer.save_model` gather the full state dict under FSDP (accelerate's FULL_STATE_DICT) for the
    duration of the block; the FSDP plugin's own setting (used by the Trainer checkpoints inside a phase, which
    resume from shards) is restored afterwards. A null context outside FSDP."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    saved = (plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config)
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = saved


def expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """The tensors a complete save of `model` holds, by the names the saved file uses, with full shapes.

    Built from the model's config on the meta device (no memory, no communication), so it does not depend on how
    the live model is wrapped or sharded (FSDP1 flat parameters, FSDP2 DTensors, ZeRO-3 placeholders). A PEFT
    model gives its adapter's tensors (`peft.get_peft_model_state_dict` of the same adapter config on the meta
    base); any other model its parameters (tied ones once, as `named_parameters` lists them).

    Args:
        model: the unwrapped model (`accelerator.unwrap_model(trainer.model)`), a `PreTrainedModel` or `PeftModel`.
    Returns:
        {tensor name: shape}.
    """
    import torch

    peft = _peft_parts(model)
    base = peft[0] if peft else model
    with torch.device("meta"):
        skeleton = type(base)(copy.deepcopy(base.config))
        if not peft:
            return {n: tuple(p.shape) for n, p in skeleton.named_parameters()}
        from peft import get_peft_model, get_peft_model_state_dict

        wrapped = get_peft_model(skeleton, copy.deepcopy(peft[1]))
        return {n: tuple(t.shape) for n, t in get_peft_model_state_dict(wrapped).items()}


def _peft_parts(model):
    """(base transformers model, active adapter's config) of a PeftModel, else None."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if not isinstance(model, PeftModel):
        return None
    return model.get_base_model(), model.peft_config[model.active_adapter]


def saved_shapes(phase_dir: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the weights saved in `phase_dir`, read from the safetensors headers only (no tensor
    data): `model.safetensors`, the shards of `model.safetensors.index.json`, or `adapter_model.safetensors`.
    Empty when the dir holds no weight file."""
    from safetensors import safe_open

    files = [phase_dir / f for f in WEIGHT_FILES if (phase_dir / f).is_file()]
    index = phase_dir / INDEX_FILE
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files += [phase_dir / s for s in shards]
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                out[key] = tuple(sf.get_slice(key).get_shape())
    return out


def verify_saved_weights(phase_dir: Path, expected: dict[str, tuple[int, ...]], backend: str = "") -> None:
    """Check that a phase's save holds complete weights: a weight file exists, no tensor is empty, every expected
    tensor is there with its full shape.

    A tensor under another name (a model whose saved names differ from its module names) is accepted when the
    saved tensors hold at least as many elements as the expected ones in all; a shard (half the rows) or a missing
    layer is not.

    Args:
        phase_dir: the phase dir just saved.
        expected: `expected_shapes(model)`.
        backend: the `Backend` name, for the message.
    Raises:
        PhasedIFTError: names the dir, the backend, up to five bad tensors (name: saved vs full shape) and the fix.
    """
    saved = saved_shapes(phase_dir)
    under = f" under {backend}" if backend else ""
    fix = ("Nothing was marked DONE: fix the launcher config (FSDP: fsdp_state_dict_type FULL_STATE_DICT or "
           "SHARDED_STATE_DICT both work through phased-ift; DeepSpeed ZeRO-3: stage3_gather_16bit_weights_on_model_"
           "save: true) and run the same command again; the phase is trained again.")
    if not saved:
        raise PhasedIFTError(f"train: the phase save{under} wrote no weights to {phase_dir} (none of "
                             f"{', '.join(WEIGHT_FILES)}, {INDEX_FILE}); the next phase cannot start from it. {fix}")
    bad = [f"{n}: shape {list(s)} is empty" for n, s in saved.items() if math.prod(s) == 0]
    bad += [f"{n}: saved {list(saved[n])}, full {list(s)}" for n, s in expected.items() if n in saved and saved[n] != s]
    missing = [n for n in expected if n not in saved]
    if missing and sum(math.prod(s) for s in saved.values()) < sum(math.prod(s) for s in expected.values()):
        bad += [f"{n}: missing (full {list(expected[n])})" for n in missing]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise PhasedIFTError(f"train: the phase save{under} in {phase_dir} is incomplete: {'; '.join(bad[:5])}{more} "
                             f"({len(expected)} tensors expected, {len(saved)} saved). The next phase would start "
                             f"from wrong weights. {fix}")
