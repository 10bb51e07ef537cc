"""Sequential Instruction Tuning (SIT; Hu, Yu, Chen, Ponti 2024, "Fine-tuning Large Language Models with Sequential
Instructions", arXiv 2403.07794; code github.com/hanxuhu/SeqIns): sequential-instruction data and its place in
training.

Owns nothing itself; its modules own one concern each:
  * `sit.generation`  the Seq-Instruct pipeline through the project's LLM client (separate, classify A-D, rewrite,
                      respond, iterate), `phased-ift sit-generate CONFIG`, writes <run_dir>/sit/.
  * `sit.compose`     offline compositions that need no LLM (chain, repeat-input): NOT the paper's LLM pipeline.
  * `sit.mix`         the sequential mix of the training set: which sequential examples join data/train.jsonl,
                      which original each replaces, and what each arm trains on (`Arm.mix`).

This package file imports nothing, so `design` and `phases` can import `sit.mix` without loading the LLM client.
"""
