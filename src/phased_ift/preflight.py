"""The checks `phased-ift run` makes before any heavy work, so a bad config fails in seconds, not after training.

Owns `preflight`: data sources and local paths exist, test sets load, the model package is installed, the scorer is
registered, each grader's prompts and templates load, endpoints answer, and the training method is supported here
(qlora needs a CUDA GPU). Owns `check_disk_space`, the plan's disk line: the estimate of what training still writes
(`train.disk.estimate_disk_need`) and a warning when the run dir's filesystem has less free space. The checks
themselves belong to the modules that own each concern; this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path
from rich.console import Console

from phased_ift.config import Config
from phased_ift.data import SOURCES, load_test_set, source_path
from phased_ift.diskerrors import free_space, human_bytes
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.step import check_benchmarks
from phased_ift.modeling import NAMED_MODELS, gguf_path, resolve_model_path
from phased_ift.rundir import RunDir
from phased_ift.scoring import SCORERS
from phased_ift.train import require_method_support
from phased_ift.train.disk import DiskNeed, describe_need, estimate_disk_need


def preflight(cfg: Config, dry_run: bool = False) -> list[str]:
    """Check what can be checked cheaply before any heavy work: data sources, test sets, the model, the scorer,
    the judge endpoint.

    Returns:
        Named sources missing from the data home that a dry run plans with their upstream size (dry runs only).

    Raises:
        PhasedIFTError: a missing data file (says where to put it), an unknown test set, a missing model package,
            an unknown scorer, a grader's missing prompts or bad template (MT-Bench, SeqEval, with a judge), an
            unreachable judge, train.method=qlora without a CUDA GPU or bitsandbytes while training is not
            finished (the last two not in dry runs).
    """
    missing: list[str] = []
    for ds in cfg.data.train:
        if ds.name:
            try:
                source_path(ds.name)
            except PhasedIFTError:
                info = SOURCES.get(ds.name)
                if not (dry_run and info is not None and info.records):
                    raise
                missing.append(ds.name)
        elif _looks_local(ds.path) and not Path(ds.path).exists():
            raise PhasedIFTError(f"data source path {ds.path} does not exist; fix data.train[].path or use a named "
                                 f"source (`phased-ift data sources`).")
    for name in cfg.generate.test_sets:
        load_test_set(name, limit=1)  # unknown names / missing files raise here, before training
    check_benchmarks(cfg)  # each benchmark that runs loads its prompts (a bad template fails before training)
    if cfg.model.name_or_path in NAMED_MODELS:
        gguf_path(cfg.model.name_or_path)  # the package is installed (conversion happens later, once)
    else:
        resolve_model_path(cfg.model.name_or_path)  # a local path must exist; hub ids pass
    if cfg.scoring.scorer not in SCORERS:
        raise PhasedIFTError(f"config: scoring.scorer={cfg.scoring.scorer!r} is not one of {sorted(SCORERS)}.")
    if cfg.scoring.scorer == "judge" and not cfg.scoring.judge.enabled:
        raise PhasedIFTError("config: scoring.scorer=judge needs scoring.judge.base_url and scoring.judge.model.")
    if not dry_run:
        for what, ep in (("scoring.judge", cfg.scoring.judge), ("judge", cfg.judge)):
            if ep.enabled and (what == "judge" or cfg.scoring.scorer == "judge"):
                _check_reachable(what, ep.base_url)

        require_method_support(cfg, RunDir(cfg.run_dir))  # qlora on a CPU fails here, before scoring
    return missing


def check_disk_space(cfg: Config, console: Console) -> DiskNeed | None:
    """Print the disk line of the plan: what training still writes to the run dir (`train.disk.estimate_disk_need`,
    in decimal units: 1 GB = 10^9 bytes) and the free space of its filesystem (`shutil.disk_usage` of the run dir
    or its nearest existing parent, `diskerrors.free_space`); then a warning when the free space is below the need.
    A warning, not an error: the estimate leaves out the small files and may differ from the real need; a write
    that does not fit stops the run with exit status 74 and keeps the finished phases (`diskerrors`).

    Returns:
        The estimate, or None when the model's tensor shapes cannot be read without loading it (printed as
        unknown).
    """
    run = RunDir(cfg.run_dir)
    need = estimate_disk_need(cfg, run)
    base, free = free_space(run.root)
    where = f"{human_bytes(free)} free on the filesystem of {base}" if free is not None else "free space unknown"
    if need is None:
        console.print(f"disk: the need of training is unknown (no safetensors header of {cfg.model.name_or_path} "
                      f"here, e.g. a hub id not in the local cache yet); {where}", highlight=False)
        return None
    console.print(f"{describe_need(need)}; {where}", highlight=False)
    if free is not None and free < need.total:
        console.print(f"[yellow]warning:[/] run_dir {run.root} has {human_bytes(free)} free (on the filesystem of "
                      f"{base}), less than the about {human_bytes(need.total)} training still needs. Free space "
                      f"there, or point run_dir at a larger disk (run_dir=/other/disk/run); else the run stops at "
                      f"the first write that does not fit (exit status 74, finished phases kept).", highlight=False)
    return need


def _looks_local(path: str) -> bool:
    """A file path rather than a Hugging Face hub id (which has no suffix and does not start with . / ~)."""
    return path.startswith((".", "/", "~")) or bool(Path(path).suffix)


def _check_reachable(what: str, base_url: str) -> None:
    """Fail fast (5 s) when nothing answers at an endpoint; any HTTP answer, even an error, counts as reachable."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5.0).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        raise PhasedIFTError(f"{what}.base_url {base_url} is unreachable ({e}). Start the server "
                             f"(e.g. `python -m llama_cpp.server --model FILE.gguf --port 8000`) or fix the URL; "
                             f"or remove the endpoint to run without it.") from None
