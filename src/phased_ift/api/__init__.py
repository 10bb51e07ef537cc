"""The public Python API: the verbs of a script or a notebook, importable from `phased_ift` (docs/api.md).

    import phased_ift as pift
    examples = pift.load_data(dataset)                       # records, a datasets.Dataset, a file, a named source
    scores = pift.score(examples, "ifd", model=MODEL)        # {id: difficulty}; higher = harder
    phases = pift.split(examples, scores, k=3)               # 3 lists of Examples, easy -> hard
    pift.export_phases(phases, "out", to="llama-factory", model=MODEL)
    pift.train_phases(phases, run_dir="runs/mine", model=MODEL)   # or LLaMA-Factory trains the export

Every verb works on data in memory (Alpaca-style dicts, a `datasets.Dataset` / `DatasetDict`, `Example`s) and on a
run dir: a config (`Config`, a YAML path, or a run dir holding the config.yaml that `phased-ift run` writes), for
which `train_phases`, `generate_answers`, `evaluate`, `write_report` and `run` run the pipeline's own step
(`pipeline.run_command`) under the run dir's lock, exactly as the CLI does. The training, generation, export and
report verbs are not called `train`, `generate`, `export`, `report`: those names are submodules of the package.

The package owns only the conversions between those inputs and the library's; the work is done where it always
is (each verb's docstring names its source):

    inputs.py   `configure` (a config from a path, a run dir or the defaults, plus dotted overrides), `load_data`,
                `score`, `split`, and their results `Scores` and `Phases` (which remember scorer and split settings)
    steps.py    `write_run` (phases in memory as a split run dir, as `phased-ift split` leaves one),
                `export_phases`, `train_phases`, `generate_answers`, `evaluate`, `write_report`, `run`

User errors raise `PhasedIFTError` with one line naming the input and the fix.
"""

from phased_ift.api.inputs import ConfigLike, DataLike, Phases, Scores, configure, load_data, score, split
from phased_ift.api.steps import (evaluate, export_phases, generate_answers, run, train_phases, write_report,
                                  write_run)

__all__ = ["ConfigLike", "DataLike", "Phases", "Scores", "configure", "evaluate", "export_phases",
           "generate_answers", "load_data", "run", "score", "split", "train_phases", "write_report", "write_run"]
