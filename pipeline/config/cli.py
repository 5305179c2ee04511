"""The command line every entry point shares: Hydra overrides in, one clear line out on bad input.

python -m pipeline[.search|.report|.compare|.config] [--params FILE] [--config-dir DIR] [-v]
    [-m] [KEY=VALUE ...]          -m: Hydra's multirun, each combination of a sweep in turn
optim-race[-search|-report|-compare|-config] ...       the same, as installed (pyproject.toml)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.metadata
import itertools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

import pipeline
from pipeline.config import ConfigError, check, compose, load_params

Command = Callable[[argparse.Namespace, DictConfig], int]


def shown_prog(prog: str, script: str) -> str:
    """The name `--help` shows: `script` when this process was started as that console script
    (sys.argv[0] is its path), else `prog`, the `python -m pipeline...` form."""
    started = Path(sys.argv[0]).name if sys.argv else ""  # the wrapper strips a .exe
    return script if started == script else prog


def version() -> str:
    """The installed distribution's version; pipeline.__version__ when run from a checkout."""
    try:
        return importlib.metadata.version("optim-race")
    except importlib.metadata.PackageNotFoundError:
        return pipeline.__version__


def parser(prog: str, description: str | None, *, detach: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(description or "").strip().splitlines()[0] if description else None,
        epilog="Overrides use Hydra's grammar, e.g. search.n_trials=40 task=moons "
        "'search.optimizers=[adam,sgd]' sampler=random pruner=none",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    p.add_argument(
        "--params",
        metavar="FILE",
        help="read an already composed config (DVC's params.yaml) instead of composing conf/",
    )
    p.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also look for config groups (task/, optimizer/, ...) here, before conf/",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Lightning's own logging")
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="Hydra's sweep: task=moons,planar seed=0,1 runs every combination, one after another",
    )
    if detach:
        p.add_argument(
            "--no-wait",
            action="store_true",
            help="launcher=slurm: submit this command itself as a Slurm job and return at once "
            "(the report command shows the study meanwhile)",
        )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line that gives `args` again (--no-wait and -m aside)."""
    argv = [*args.overrides]
    if args.params:
        argv += ["--params", str(args.params)]
    argv += [f"--config-dir={d}" for d in args.config_dir]
    return argv + (["-v"] if args.verbose else [])


def load(args: argparse.Namespace, *, as_written: bool = False) -> DictConfig:
    """The checked config; `as_written` leaves what check() fills in (see config.checks)."""
    if args.params:
        cfg = load_params(args.params)
        _place(cfg, args.overrides, config_dirs=args.config_dir)
    else:
        cfg = compose(args.overrides, config_dirs=args.config_dir)
    if args.verbose:
        OmegaConf.update(cfg, "trainer.verbose", True, force_add=True)
    # A params file (DVC's stages) keeps the fixed study name and report folder its outputs say.
    fixed = bool(args.params)
    check(cfg, config_dirs=args.config_dir, fill=not as_written, fixed_paths=fixed)
    return cfg


# With a params file, the overrides a DVC stage of many tasks passes: which task it runs and
# where its study and report go. Everything else comes from the params file (dvc exp run -S).
PLACING = ("task", "search.study_name", "search.storage", "report.dir")


def _place(cfg: DictConfig, overrides: Sequence[str], *, config_dirs: Sequence[str]) -> None:
    """Apply a params file's placing overrides; task=NAME takes conf/'s task NAME whole."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key not in PLACING or not value:
            raise ConfigError(
                "--params",
                f"takes only {', '.join(k + '=' for k in PLACING)} beside it (got {override!r}); "
                "change the rest in the params file (dvc exp run -S KEY=VALUE)",
            )
        if key == "task":
            cfg.task = compose([override], config_dirs=config_dirs).task
        else:
            parsed = OmegaConf.select(OmegaConf.from_dotlist([override]), key)
            OmegaConf.update(cfg, key, parsed, merge=False)


def run(
    command: Command,
    argv: Sequence[str] | None,
    *,
    prog: str,
    script: str,
    description: str | None,
    as_written: bool = False,
    detach: bool = False,
) -> int:
    """Parse, compose, check, then run `command`; a ConfigError anywhere is one line and exit 2.

    `prog` is the `python -m` form, `script` the console script's name (shown_prog picks);
    `detach` offers --no-wait (the command reads args.no_wait)."""
    args = parser(shown_prog(prog, script), description, detach=detach).parse_args(argv)
    try:
        if args.multirun:
            return _multirun(command, args, as_written=as_written)
        cfg = load(args, as_written=as_written)
        return command(args, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of Hydra sweep overrides (task=moons,planar seed=range(0,2)), in
    Hydra's order: the last key varies fastest, as Hydra's basic sweeper runs them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError("--multirun", f"not a Hydra sweep: {str(exc).splitlines()[0]}") from None
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    return [list(combination) for combination in itertools.product(*choices)]


def _multirun(command: Command, args: argparse.Namespace, *, as_written: bool) -> int:
    """Each combination as its own command, one after another; every one is composed and
    checked before the first runs, so bad input runs nothing. Stops at the first that fails."""
    if args.params:
        raise ConfigError("--multirun", "sweeps overrides; a params file has none")
    runs = []
    for overrides in sweep(args.overrides):
        one = argparse.Namespace(**{**vars(args), "overrides": overrides, "multirun": False})
        runs.append((one, load(one, as_written=as_written)))
    for i, (one, cfg) in enumerate(runs, 1):
        print(f"multirun {i}/{len(runs)}: {' '.join(one.overrides)}", file=sys.stderr, flush=True)
        code = command(one, cfg)
        if code != 0:
            print(
                f"error: multirun {i}/{len(runs)} exited {code}; the rest not run", file=sys.stderr
            )
            return code
    return 0


def leave(code: int) -> NoReturn:
    """Exit with `code`, skipping only the interpreter's teardown of its loaded modules.

    With torch and Lightning loaded that teardown takes about 0.9 s of every command (and of
    every worker process) and frees nothing the operating system would not. Everything a
    normal exit does that anyone can observe still happens, in the same order: other
    non-daemon threads are joined, atexit handlers run (a user's logger, multiprocessing
    joining its children, logging's flush), and stdout and stderr are flushed. CPython has
    no public call for "run the exit handlers", hence atexit._run_exitfuncs.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say anyway
            stream.flush()
    os._exit(code)
