"""Generation: the checkpoints' answers on the test sets (the generate step) and serving checkpoints to a server.

    backends.py   `BACKENDS` (hf, vllm, server), `register_backend`, `Completion`, `load_for_backend`
    step.py       the generate step: `generate_all`, `generate_answers`, `plan_batches`, multi-turn test sets
    answers.py    the generations file later steps read: `read_generations`, `settings_path`, `turn_key`
    serving.py    the served model names and the vLLM / llama.cpp commands (`phased-ift serve-command`)

Callers import from `phased_ift.generation`; the submodules are its layout.
"""

from phased_ift.generation.answers import read_generations, settings_path, turn_key
from phased_ift.generation.backends import (BACKENDS, Backend, Completion, HFBackend, ServerBackend, VLLMBackend,
                                            load_for_backend, register_backend, stop_token_ids, trim_at_stop)
from phased_ift.generation.serving import served_checkpoints, served_name, serve_commands
from phased_ift.generation.step import (MAX_PROMPT_TOKENS, generate_all, generate_answers, next_turn_examples,
                                        plan_batches, turn_count)

__all__ = ["BACKENDS", "Backend", "Completion", "HFBackend", "MAX_PROMPT_TOKENS", "ServerBackend", "VLLMBackend",
           "generate_all", "generate_answers", "load_for_backend", "next_turn_examples", "plan_batches",
           "read_generations", "register_backend", "serve_commands", "served_checkpoints", "served_name",
           "settings_path", "stop_token_ids", "trim_at_stop", "turn_count", "turn_key"]
