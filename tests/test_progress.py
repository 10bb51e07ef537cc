"""Progress in logs: LoggedProgress prints plain lines when its console is not a terminal (nohup, sbatch, tee)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.progress import MofNCompleteColumn, TextColumn

from phased_ift.errors import PhasedIFTError
from phased_ift.progress import DEFAULT_INTERVAL_S, LoggedProgress, log_interval


def log_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=100), buf


def lines(buf: io.StringIO) -> list[str]:
    return [" ".join(ln.split()) for ln in buf.getvalue().splitlines() if ln.strip()]


def run(console: Console, total: int, steps: int, interval: float, **kw) -> list[str]:
    with LoggedProgress(TextColumn("score x"), MofNCompleteColumn(), console=console, interval=interval, **kw) as p:
        task = p.add_task("x", total=total)
        for _ in range(steps):
            p.advance(task)
    return lines(console.file)


def test_a_log_gets_a_line_per_interval_and_one_at_the_end():
    console, _ = log_console()
    assert run(console, 5, 5, interval=0) == [f"score x {i}/5" for i in range(1, 6)]
    console, _ = log_console()  # a long interval: the first update and the finished state only
    assert run(console, 5, 5, interval=3600) == ["score x 1/5", "score x 5/5"]


def test_a_step_that_stops_early_logs_where_it_stopped_once():
    console, buf = log_console()
    with pytest.raises(KeyboardInterrupt):
        with LoggedProgress(TextColumn("score x"), MofNCompleteColumn(), console=console, interval=3600) as p:
            task = p.add_task("x", total=10)
            for _ in range(4):
                p.update(task, advance=1)
            raise KeyboardInterrupt
    assert lines(buf) == ["score x 1/10", "score x 4/10"]


def test_disabled_progress_prints_nothing():
    console, buf = log_console()
    run(console, 3, 3, interval=0, disable=True)
    assert buf.getvalue() == ""


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("PHASED_IFT_PROGRESS_INTERVAL", raising=False)
    assert log_interval() == DEFAULT_INTERVAL_S
    monkeypatch.setenv("PHASED_IFT_PROGRESS_INTERVAL", "2.5")
    assert log_interval() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("PHASED_IFT_PROGRESS_INTERVAL", bad)
        with pytest.raises(PhasedIFTError, match="PHASED_IFT_PROGRESS_INTERVAL"):
            log_interval()


def test_the_score_step_reports_progress_to_a_log(tmp_path, monkeypatch):
    from phased_ift.config import load_config
    from phased_ift.data import Example
    from phased_ift.scoring import score_examples

    monkeypatch.setenv("PHASED_IFT_PROGRESS_INTERVAL", "0")
    exs = [Example(f"e{i}", [{"role": "user", "content": "q" * i}, {"role": "assistant", "content": "a b c"}], {})
           for i in range(1, 5)]
    cfg = load_config(None, [f"run_dir={tmp_path}", "scoring.scorer=length", "model.name_or_path=none"])
    console, buf = log_console()
    monkeypatch.setattr("phased_ift.modeling.load_tokenizer", lambda name: None)  # whitespace words
    monkeypatch.setattr("phased_ift.scoring.registry.BAR_SECONDS", 0.0)  # the bar moves with every row
    score_examples(exs, cfg, tmp_path / "length.jsonl", console=console)
    rows = [ln for ln in lines(buf) if ln.startswith("score length")]
    assert [re.search(r" (\d+/\d+) ", ln).group(1) for ln in rows] == ["1/4", "2/4", "3/4", "4/4"]
    # the default moves it at most every 0.2 s: four fast rows show as one move, to the end
    monkeypatch.undo()
    monkeypatch.setenv("PHASED_IFT_PROGRESS_INTERVAL", "0")
    monkeypatch.setattr("phased_ift.modeling.load_tokenizer", lambda name: None)
    console, buf = log_console()
    score_examples(exs, cfg, tmp_path / "again.jsonl", console=console)
    rows = [ln for ln in lines(buf) if ln.startswith("score length")]
    assert [re.search(r" (\d+/\d+) ", ln).group(1) for ln in rows] == ["4/4"]
