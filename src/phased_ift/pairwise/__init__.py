"""Pairwise judging: two arms' answers to the same prompt compared by an LLM judge, in both orders, and the check of
that judge against GPT-4's preferences.

    judge.py    the pairwise step (`judge_all`, `phased-ift pairwise`): templates, parsers, judgement rows, win rates
    check.py    `phased-ift judge-check`: agreement with AlpacaEval's GPT-4 annotations, kappa, position and length
                bias, whether the judge qualifies (`QUALIFY`)

The verdict and win-rate math on plain values is `phased_ift.winrate`'s (below the statistics); single-answer
grading (MT-Bench, SeqEval) is a benchmark of the evaluate step (`phased_ift.evals`). Callers import the submodules.
"""
