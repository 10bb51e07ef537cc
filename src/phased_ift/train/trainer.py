"""The TRL side of one phase: the trainer class, its arguments, its loss and its batches.

Owns:
  * `sft_config`: the `SFTConfig` of a phase (from the config and the phase's `PhaseHparams`).
  * `PhaseSFTTrainer`: TRL's `SFTTrainer` with the response-only LM head (`response_head_loss`), batches above
    train.max_batch_tokens run as several passes of one optimizer step (`split_batch`), the `bucket_order` sampler
    (`BucketSampler`) or an arm's sampler (`samplers.SAMPLERS`) and SDPA's math backend for short CPU passes
    (`short_pass_attention`).
  * `build_trainer` (model, dataset, trainer of a phase), `load_optimizer_state` (train.carry_optimizer),
    `save_phase_weights` (the model / adapter / merged model and optimizer.pt, complete under FSDP / ZeRO-3 and
    checked: `train.sharded`).

Imports torch, transformers and trl at module level: `train.loop` imports this module only when a phase trains, so
`import phased_ift.train` and dry-run plans stay light.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from phased_ift import modeling  # modeling.load_checkpoint: tests patch it
from phased_ift.config import Config
from phased_ift.modeling import resolve_autocast
from phased_ift.train import sharded
from phased_ift.train.disk import CHECKPOINTS_KEPT
from phased_ift.train.plan import PhaseHparams
from phased_ift.train.samplers import SAMPLERS

# TRL 1.16 calls a transformers 5 property deprecated in favour of is_activation_checkpointing once per phase.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)


def sft_config(cfg: Config, hp: PhaseHparams, out_dir: Path, seed: int, save_steps: int) -> SFTConfig:
    """The Trainer arguments of a phase: hp's epochs / learning rate, the train section's optimiser, batching,
    precision and logging settings; Trainer checkpoints in `out_dir` every `save_steps` steps (one kept).

    train.batching=bucket asks for `group_by_length`, which `PhaseSFTTrainer` replaces by `BucketSampler`. An arm
    with its own sampler (hp.sampler) gets "sequential" (no bucketing), which its sampler then replaces.
    """
    t, m = cfg.train, cfg.model
    on_cpu = not torch.cuda.is_available()
    autocast = resolve_autocast(m.autocast)[0]
    sampling = "sequential" if t.order == "sequential" or hp.sampler else (
        "group_by_length" if t.batching == "bucket" else "random")
    return SFTConfig(
        output_dir=str(out_dir), seed=seed, data_seed=seed,
        num_train_epochs=hp.epochs, max_steps=t.max_steps, learning_rate=hp.learning_rate,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        # transformers 5: warmup_steps < 1 is a fraction of the phase's steps (warmup_ratio is gone)
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2, max_grad_norm=t.max_grad_norm,
        # fp32 weights + bf16 autocast: Trainer refuses bf16 on a machine without a bf16 GPU unless use_cpu is set.
        bf16=autocast == "bf16", fp16=autocast == "fp16", use_cpu=on_cpu,
        train_sampling_strategy=sampling, length_column_name="length",
        packing=t.batching == "packing", padding_free=t.batching == "packing", max_length=m.max_length,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=save_steps,
        save_total_limit=CHECKPOINTS_KEPT,  # train.disk counts the checkpoints that exist at once from it
        report_to=t.report_to, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.dataloader_workers, deepspeed=t.deepspeed or None,
        # The labels column from tokenize_example is used as is (loss on the response only).
        dataset_kwargs={"skip_prepare_dataset": t.batching != "packing"}, remove_unused_columns=False,
    )


def uses_response_head(lm_head: str) -> bool:
    """Whether train.lm_head resolves to the response-only LM head ("auto": everywhere but CUDA)."""
    return lm_head == "response" or (lm_head == "auto" and not torch.cuda.is_available())


def response_head_loss(model, inputs: dict, num_items_in_batch=None, num_processes: int = 1,
                       average_across_devices: bool = False):
    """Next-token cross-entropy on the response tokens, with the LM head applied only where it is needed.

    The model runs its own forward (PEFT, DDP and autocast wrappers included) with `logits_to_keep` = the sequence
    positions that predict a labelled token in at least one row of the batch, so the logits of shared prompt
    positions and trailing padding are never computed: [B, T, V] becomes [B, K, V], K <= T - 1.

    Args:
        model: the (wrapped) causal LM, as `Trainer.compute_loss` receives it.
        inputs: a collated batch: input_ids [B, T], labels [B, T] (-100 = no loss), attention_mask / position_ids.
        num_items_in_batch: labelled next-token targets in the whole (accumulated, all-rank) batch, as Trainer
            counts them over labels[..., 1:]; None = this micro-batch's count.
        num_processes, average_across_devices: as TRL's SFTTrainer: the loss is multiplied by the number of
            processes when the token count covers all ranks (DDP averages the gradients).

    Returns:
        (loss: scalar tensor, outputs of the model forward).

    Source: the same loss as TRL's SFTTrainer (sum of -log p over labels[:, 1:] != -100, divided by the token
    count); TRL computes it with a fused chunked LM head that, without Triton (CPU), scores every position in
    float32 and recomputes the head in backward (measured here: 240 vs. 333 tokens/s on a plain LoRA step).
    """
    labels = inputs["labels"]
    target = labels[:, 1:]
    mask = target != -100
    keep = mask.any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:  # no labelled token: keep one position so the loss stays connected to the graph
        keep = torch.zeros(1, dtype=torch.long, device=labels.device)
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    outputs = model(**forward, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits  # [B, K, V]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target[:, keep].reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
    if average_across_devices and num_items_in_batch is not None:
        loss = loss * num_processes
    return loss, outputs


def split_batch(inputs: dict, max_tokens: int) -> list[dict]:
    """Cut a collated batch into row groups of at most `max_tokens` padded tokens (rows x longest row) each.

    Rows stay in order; each group is trimmed to its own longest row (right padding, from attention_mask). A batch
    within the budget, one without attention_mask (padding-free packing) or a single row comes back whole.

    Args:
        inputs: tensors [B, T] (input_ids, labels, attention_mask, optional position_ids); other values are kept.
        max_tokens: the budget; <= 0 means no limit.

    Returns:
        A list of batches with the same keys.
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if max_tokens <= 0 or mask is None or ids.size(0) == 1 or ids.numel() <= max_tokens:
        return [inputs]
    lengths = mask.sum(dim=1).tolist()
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > max_tokens:
            groups.append((start, i, longest))
            start, longest = i, 0
        longest = max(longest, n)
    groups.append((start, len(lengths), longest))
    return [{k: (v[a:b, :width] if hasattr(v, "dim") and v.dim() == 2 and v.shape[:2] == ids.shape else v)
             for k, v in inputs.items()} for a, b, width in groups]


def bucket_order(lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 50) -> list[int]:
    """A training order of indices whose consecutive `batch_size` slices are batches of similar length.

    A seeded permutation is cut into mega-batches of `mega_batches` x `batch_size` examples, each sorted by length
    and cut into batches; then the order of all batches is shuffled (seeded), except that the batch holding the
    longest example comes first (an out-of-memory shows at once, as in transformers' LengthGroupedSampler).
    Unlike LengthGroupedSampler, whose mega-batches shrink to a quarter of the data (48 examples in a phase of 200,
    so small phases get more padding than the one-off union), the mega-batch size does not depend on the phase
    size, and batches do not run from long to short inside a mega-batch (no length curriculum inside a phase).

    Returns:
        A permutation of range(len(lengths)).
    """
    rng = random.Random(seed)
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    size = mega_batches * batch_size
    batches = []
    for m in range(0, len(perm), size):
        mega = sorted(perm[m: m + size], key=lambda i: lengths[i], reverse=True)
        batches += [mega[b: b + batch_size] for b in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    if batches:
        first = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(first))
    return [i for b in batches for i in b]


def short_pass_attention(input_ids, max_len: int):
    """A context for one forward pass: SDPA's math backend when the pass runs on CPU with at most `max_len`
    positions (input_ids [B, T], T <= max_len), else a null context.

    On CPU, PyTorch's flash-attention kernel has a slow backward for short sequences: in a SmolLM2-135M LoRA step on
    8 rows of ~140 tokens it took ~18% of the step, while the math backend (matmul, softmax, matmul; O(T^2)
    memory, hence the length limit) ran the same step ~12% faster. Both compute the same attention. Only
    `F.scaled_dot_product_attention` reads the choice (attn_implementation="sdpa", the default of `load_model`).
    """
    if max_len <= 0 or input_ids.device.type != "cpu" or input_ids.shape[-1] > max_len:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class BucketSampler(torch.utils.data.Sampler):
    """`bucket_order` of the dataset's "length" column, reshuffled each epoch (seed + epoch)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(bucket_order(self.lengths, self.batch_size, self.seed + self.epoch))


class PhaseSFTTrainer(SFTTrainer):
    """SFTTrainer with the response-only LM head (logs the loss only: no entropy / token accuracy metrics) and
    batches above train.max_batch_tokens run as several forward/backward passes of one optimizer step; short CPU
    passes use SDPA's math backend (`short_pass_attention`); `bucket` replaces the length-grouped sampler by
    `BucketSampler`, and `sampler` (an arm's, `samplers.SAMPLERS`) replaces any sampler. With every option off it
    behaves as `SFTTrainer`.

    Args (keyword, besides SFTTrainer's):
        response_head: use `response_head_loss` instead of TRL's loss.
        max_batch_tokens: padded-token cap per forward pass (`split_batch`; <= 0 = none).
        bucket: sample with `BucketSampler` (needs a "length" column).
        math_attention_max_len: `short_pass_attention`'s limit (0 = never).
        sampler: `(n rows, training args) -> torch Sampler` of the training set, used instead of any other.
    """

    def __init__(self, *args, response_head: bool = False, max_batch_tokens: int = 0, bucket: bool = False,
                 math_attention_max_len: int = 0, sampler=None, **kwargs) -> None:
        self.response_head, self.max_batch_tokens = response_head, max_batch_tokens
        self.bucket, self.math_attention_max_len, self.sampler_factory = bucket, math_attention_max_len, sampler
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The attention backend is fixed at forward time; autograd runs the matching backward.
        with short_pass_attention(inputs["input_ids"], self.math_attention_max_len):
            if not self.response_head:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = response_head_loss(model, inputs, num_items_in_batch, self.accelerator.num_processes,
                                               self.args.average_tokens_across_devices)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.sampler_factory is not None:
            return self.sampler_factory(len(dataset), self.args)
        if not self.bucket or "length" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        return BucketSampler(dataset["length"], self.args.per_device_train_batch_size, self.args.data_seed
                             if self.args.data_seed is not None else self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        parts = split_batch(inputs, self.max_batch_tokens)
        # Without a token count for the whole step the loss is a per-pass mean: splitting would reweight it.
        if len(parts) == 1 or num_items_in_batch is None:
            return super().training_step(model, inputs, num_items_in_batch)
        total = 0.0
        for i, part in enumerate(parts):
            # One gradient all-reduce per step (DDP): the passes before the last one accumulate locally.
            sync = i == len(parts) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                total = total + super().training_step(model, part, num_items_in_batch)
        return total


def model_for_phase(cfg: Config, init_dir: str | None, base: str):
    """The starting weights of a phase (`modeling.load_checkpoint`, trainable): the base model (phase 1) or the
    previous phase's saved dir.

    LoRA continue: base + the previous adapter with is_trainable=True (otherwise PEFT loads it frozen); frozen
    base weights in bf16 under bf16 autocast. LoRA merge: the previous phase saved a merged full model; a new
    adapter goes on top. Full fine-tuning: the previous full model. QLoRA: as LoRA continue, on the base loaded in
    4-bit NF4 each phase (`modeling.load_checkpoint(quantize_4bit=...)`), matmuls in the autocast dtype (bf16 /
    fp16; fp32 without autocast); the saved checkpoint is the adapter only.
    """
    m, t = cfg.model, cfg.train
    lora = t.lora if t.method in ("lora", "qlora") else None
    autocast = resolve_autocast(m.autocast)[0]
    compute = {"bf16": "bfloat16", "fp16": "float16"}.get(autocast, "float32")
    return modeling.load_checkpoint(init_dir or base, trainable=True, dtype=m.dtype,
                                    attn_implementation=m.attn_implementation,
                                    trust_remote_code=m.trust_remote_code, base=base, lora=lora,
                                    bf16_frozen_base=t.method == "lora" and autocast == "bf16"
                                    and t.lora.across_phases == "continue",
                                    quantize_4bit=compute if t.method == "qlora" else None,
                                    gradient_checkpointing=t.gradient_checkpointing)


def build_trainer(cfg: Config, rows: list[dict], tokenizer, init_dir: str | None, base: str, hp: PhaseHparams,
                  seed: int, trainer_dir: Path, callbacks: Sequence = ()) -> PhaseSFTTrainer:
    """The trainer of one phase on pre-tokenised rows, from `init_dir` (None = the base model), with Trainer
    checkpoints in `trainer_dir` every train.save_steps steps (never when save_steps <= 0); an arm's sampler
    (hp.sampler, `samplers.SAMPLERS`) orders the examples.

    The training arguments come first: under DeepSpeed ZeRO-3 they make from_pretrained load the weights sharded.
    Transformers' PrinterCallback is removed: with disable_tqdm it prints every log dict to stdout, which the rich
    bar and losses.jsonl replace. So are the reporting callbacks that train.report_to adds (they log each phase
    from step 0): `tracking.PhaseReporter`, which `train_arm` passes in `callbacks`, drives them with a step offset.
    """
    from datasets import Dataset
    from transformers import set_seed
    from transformers.integrations import get_reporting_integration_callbacks
    from transformers.trainer_callback import PrinterCallback

    save_steps = cfg.train.save_steps if cfg.train.save_steps > 0 else 10**9
    args = sft_config(cfg, hp, trainer_dir, seed, save_steps)
    set_seed(seed)  # the LoRA initialisation of phase 1 is seeded too
    model = model_for_phase(cfg, init_dir, base)
    columns = ["input_ids", "labels", "attention_mask", "length"] if cfg.train.batching != "packing" else \
        ["input_ids", "labels"]
    dataset = Dataset.from_list([{c: r[c] for c in columns} for r in rows])
    # Not with activation checkpointing: its recomputation runs outside compute_loss, and torch's checkpoint
    # refuses a recomputed forward that saves other tensors than the first one did.
    math_len = 0 if cfg.train.gradient_checkpointing else cfg.train.math_attention_max_len
    sampler = (lambda n, a: SAMPLERS[hp.sampler](n, a, cfg.train)) if hp.sampler else None
    trainer = PhaseSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=list(callbacks), response_head=uses_response_head(cfg.train.lm_head),
                              max_batch_tokens=cfg.train.max_batch_tokens,
                              bucket=args.train_sampling_strategy == "group_by_length",  # sft_config's choice
                              math_attention_max_len=math_len, sampler=sampler)
    for cls in [PrinterCallback, *get_reporting_integration_callbacks(args.report_to)]:
        trainer.remove_callback(cls)
    return trainer


def load_optimizer_state(trainer: PhaseSFTTrainer, path: Path, learning_rate: float) -> None:
    """train.carry_optimizer: the AdamW moments and step count of the previous phase continue (from its
    optimizer.pt); the learning rate and schedule restart for this phase."""
    trainer.create_optimizer()
    trainer.optimizer.load_state_dict(torch.load(path, weights_only=True))
    for group in trainer.optimizer.param_groups:
        group["lr"] = learning_rate
        group.pop("initial_lr", None)


def save_phase_weights(trainer: PhaseSFTTrainer, tokenizer, phase_dir: Path, merge: bool,
                       save_optimizer: bool, backend: str = "") -> None:
    """Save the phase's model or adapter (or, with `merge`, the adapter merged into a full model), the tokenizer
    and with `save_optimizer` optimizer.pt into `phase_dir`, then check on rank 0 that the saved weights are
    complete (`sharded.verify_saved_weights`).

    Every rank calls this: under ZeRO-3 / FSDP gathering the weights for `save_model` is collective; files are
    written on rank 0 only. Under FSDP the save always gathers the full state dict (`sharded.full_state_dict`,
    whatever fsdp_state_dict_type says); under ZeRO-3 `Trainer.save_model` gathers the 16-bit weights
    (stage3_gather_16bit_weights_on_model_save, checked before the phase trained).

    Raises:
        PhasedIFTError: the saved weights are incomplete (a missing, empty or shard-shaped tensor).
    """
    merged = trainer.model.merge_and_unload() if merge else None
    if not merge:
        with sharded.full_state_dict(trainer):
            trainer.save_model(str(phase_dir))
    if not trainer.is_world_process_zero():
        return
    phase_dir.mkdir(parents=True, exist_ok=True)
    if merged is not None:
        merged.save_pretrained(phase_dir)
    tokenizer.save_pretrained(phase_dir)
    if save_optimizer:
        torch.save(trainer.optimizer.state_dict(), phase_dir / "optimizer.pt")
    model = merged if merged is not None else trainer.accelerator.unwrap_model(trainer.model)
    sharded.verify_saved_weights(phase_dir, sharded.expected_shapes(model), backend)
