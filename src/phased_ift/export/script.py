"""The `run.sh` of an exported stage chain: runs the steps (training stages, LoRA merges) in order and skips the
finished ones, so running it again resumes after the last finished step, as `phased-ift train` does.

A step is done when its output folder holds its marker file: a file the tool itself writes last (LLaMA-Factory's
`train_results.json`, written by `trainer.save_metrics` after the weights are saved), or, for tools that write
none, a `DONE` file that run.sh writes after the command exits with status 0. A step that fails stops the script
(`set -euo pipefail`) before any later step starts from incomplete weights.

    bash run.sh                      every step, in order
    bash run.sh phased/seed_0        only the steps whose name starts with one of the arguments
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

DONE = "DONE"

_STEP_FUNCTION = r'''
ONLY=("$@")
selected() {  # selected NAME: no arguments, or NAME starts with one of them
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local p
  for p in "${ONLY[@]}"; do case "$1" in "$p"*) return 0 ;; esac; done
  return 1
}

step() {  # step NAME OUT_DIR MARKER WRITE_MARKER COMMAND...
  local name=$1 out=$2 marker=$3 write=$4
  shift 4
  selected "$name" || return 0
  if [ -f "$out/$marker" ]; then
    echo "phased-ift: skip $name ($out/$marker exists)"
    return 0
  fi
  echo "phased-ift: run $name -> $out"
  "$@"
  if [ "$write" = 1 ]; then mkdir -p "$out" && date -u +%Y-%m-%dT%H:%M:%SZ > "$out/$marker"; fi
  if [ ! -f "$out/$marker" ]; then
    echo "phased-ift: $name exited without writing $out/$marker; see its log above" >&2
    exit 1
  fi
}
'''


@dataclass(frozen=True)
class Step:
    """One command of run.sh.

    Attributes:
        name: shown in the log and matched by run.sh's arguments, e.g. "phased/seed_0/phase_2".
        out: the step's output folder, relative to the export folder.
        marker: the file in `out` whose presence means the step is done.
        command: the argv; a first element "$VAR" is left unquoted so the tool's command can be overridden.
        write_marker: run.sh writes `marker` after the command succeeds (the tool writes none of its own).
    """

    name: str
    out: str
    marker: str
    command: tuple[str, ...]
    write_marker: bool = False


def _quote(arg: str) -> str:
    return f'"{arg}"' if arg.startswith("$") else shlex.quote(arg)


def run_script(steps: Sequence[Step], header: Sequence[str], variables: dict[str, str]) -> str:
    """The text of run.sh (bash): `header` as comment lines, `variables` as overridable defaults
    (`NAME="${NAME:-value}"`), then one `step` line per step, in order.

    Returns:
        The script text (the caller writes it and marks it executable).
    """
    lines = ["#!/usr/bin/env bash", *(f"# {h}".rstrip() for h in header), "set -euo pipefail",
             'cd "$(dirname "$0")"']
    lines += [f'{k}="${{{k}:-{v}}}"' for k, v in variables.items()]
    lines.append(_STEP_FUNCTION)
    for s in steps:
        lines.append("step " + " ".join([shlex.quote(s.name), shlex.quote(s.out), shlex.quote(s.marker),
                                         "1" if s.write_marker else "0", *(_quote(a) for a in s.command)]))
    lines.append('echo "phased-ift: all steps done"')
    return "\n".join(lines) + "\n"
