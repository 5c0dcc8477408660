"""``okdph``: train groups of students with online distillation and write run directories."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time, to keep the command's start-up fast
    from okdph.methods.base import Method

EXAMPLES = """examples:
  okdph train                                   # the demo preset: OKDPH on digits (CPU, ~1 min)
  okdph train --preset mnist1d --out runs/m1d
  okdph train --preset demo --set method=dml epochs=5 seed=1
  okdph train --preset cifar10-resnet32 --set data.root=~/data data.download=true
  okdph train --resume runs/m1d                 # continue from the last checkpoint
  okdph train --set model=my_pkg.models:Net data=my_pkg.data:load   # import paths
  okdph sweep --preset mnist1d --methods independent,dml,okdph --seeds 0-7 --out runs/study
  okdph presets                                 # list presets
  okdph list models                             # models, methods, datasets or augmentations
"""


SWEEP_EXAMPLES = """examples:
  okdph sweep --preset demo --methods independent,dml,okdph --seeds 0-7 --out runs/study
  okdph sweep --preset mnist1d --methods okdph,okdph:mode=code,okdph:fusion_every=none,dml \\
      --seeds 0-7 --vary init=shared,independent --out runs/ablation
  okdph sweep ... --print-commands > jobs.txt     # one `okdph train` line per run
  okdph sweep ... --launcher slurm --slurm partition=gpu,gpus_per_node=1,timeout_min=600
Rerunning a sweep skips finished runs and resumes interrupted ones; then
  landscape analyze runs/study && landscape compare runs/study
"""


def _user_errors() -> tuple[type[Exception], ...]:
    from okdph.augment import AugmentError
    from okdph.config import ConfigError
    from okdph.data import DataError
    from okdph.models import ModelError
    from okdph.run import RunDirError

    return ConfigError, DataError, RunDirError, AugmentError, ModelError


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okdph",
        description="Online knowledge distillation (OKDPH and its peers).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a group of students into a run directory",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--preset", default="demo", help="named configuration (see `okdph presets`)")
    _add_overrides(
        train,
        "override config fields: epochs=5, method=dml, method.omega=0.5, "
        "optim.lr=0.05, model.width=32, data.root=DIR",
    )
    train.add_argument("--out", type=Path, help="run directory (default: runs/<preset>-<time>)")
    train.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    train.add_argument(
        "--dry-run", action="store_true", help="one epoch of two batches, for smoke tests"
    )
    train.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.set_defaults(handler=cmd_train)

    sw = sub.add_parser(
        "sweep",
        help="train methods x variants x seeds into one study directory",
        epilog=SWEEP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument("--preset", default="demo", help="named configuration every run starts from")
    sw.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods; method options make ablations: okdph:mode=code",
    )
    sw.add_argument("--seeds", default="0,1,2", help="seeds: 0,1,2 or 0-7 (default %(default)s)")
    _add_overrides(sw, "overrides for every run (as for train)")
    sw.add_argument(
        "--vary",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="extra grid axes, e.g. init=shared,independent (repeatable: every one is an axis)",
    )
    sw.add_argument(
        "--protocol",
        default="matched",
        choices=["matched", "reference"],
        help="matched: same views, init rule, schedule and seeds for all (default); "
        "reference: each method as its paper ran it",
    )
    sw.add_argument("--out", type=Path, required=True, help="study directory")
    sw.add_argument(
        "--declare",
        type=Path,
        metavar="FILE",
        help="JSON file of what the analysis will test (primary, relevance, validate, analyses, "
        "provenance), written into study.json when the study starts",
    )
    sw.add_argument(
        "--share-from",
        type=Path,
        action="append",
        default=[],
        metavar="STUDY",
        help="copy runs that STUDY finished with the same configuration (analyses included) "
        "instead of training them again, e.g. a control arm both studies need; repeatable",
    )
    sw.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once (one per CUDA device when there are several)",
    )
    sw.add_argument(
        "--launcher",
        default="processes",
        choices=["processes", "slurm", "local"],
        help="processes: here, --workers at once (default); slurm: one SLURM job per run "
        "through submitit, preempted jobs requeued and resumed; local: the same jobs as local "
        "processes (submitit's local executor)",
    )
    sw.add_argument(
        "--slurm",
        default="",
        metavar="KEY=V,...",
        help="submitit parameters: partition=gpu,gpus_per_node=1,timeout_min=600,"
        "tasks_per_node=1,... (other keys go to SLURM as slurm_<key>)",
    )
    sw.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `okdph train` line per unfinished run (for a scheduler) and exit",
    )
    sw.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sw.set_defaults(handler=cmd_sweep)

    presets = sub.add_parser("presets", help="list the named configurations")
    presets.set_defaults(handler=cmd_presets)

    lister = sub.add_parser(
        "list",
        help="list the models, methods, datasets (built-in and from installed entry points) or "
        "augmentations",
    )
    lister.add_argument("what", choices=["models", "methods", "datasets", "augmentations"])
    lister.set_defaults(handler=cmd_list)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from okdph import trainer
    from okdph.config import ConfigError, apply_overrides
    from okdph.distributed import init_from_env
    from okdph.presets import preset_config

    world = init_from_env()  # under torchrun: every rank trains its shard of each batch
    progress = not args.no_progress and world.is_main
    max_batches = 2 if args.dry_run else 0
    if args.resume is not None:
        if args.overrides or args.out:
            raise ConfigError(
                "--resume continues a run with its saved config; drop --set and --out"
            )
        out = args.resume
        try:
            run, metrics = trainer.resume(
                out, progress=progress, max_batches=max_batches, device=args.device
            )
        except KeyboardInterrupt:
            return _interrupted(out)
    else:
        cfg = apply_overrides(preset_config(args.preset), args.overrides)
        if args.device:
            cfg.device = args.device
        cfg.validate()  # before --dry-run replaces the epochs, which would hide epochs=0
        if args.dry_run:
            cfg.epochs = 1
        if args.print_config:
            from okdph.methods import method_options

            shown = cfg.to_dict()
            # A method's defaults live in its own Config: show the values the run would use.
            shown["method_args"] = method_options(cfg.method, cfg.method_args)
            print(json.dumps(shown, indent=2))
            return 0
        out = args.out or Path("runs") / f"{args.preset}-{datetime.now():%Y%m%d-%H%M%S}"
        out = Path(str(world.broadcast_object(str(out))))  # rank 0's clock names the run
        try:
            run, metrics = trainer.train(
                cfg,
                out,
                overwrite=args.overwrite,
                progress=progress,
                max_batches=max_batches,
                command=["okdph", *sys.argv[1:]],
            )
        except KeyboardInterrupt:
            return _interrupted(out)
    if not world.is_main:
        return 0
    accs = {k.split("/")[0]: v for k, v in metrics.items() if k.endswith("/test_acc")}
    if accs:
        print("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    print(f"run directory: {run.path}")
    return 0


def _interrupted(path: Path) -> int:
    """Tell how to continue a run stopped by Ctrl-C; exit code 130, as for SIGINT."""
    from okdph.run import RunDir

    if RunDir(path).exists():
        hint = f"; continue with `okdph train --resume {shlex.quote(str(path))}`"
    else:
        hint = f" before anything was written to {path}"
    print(f"okdph: interrupted{hint}", file=sys.stderr)
    return 130


def cmd_sweep(args: argparse.Namespace) -> int:
    from okdph.sweep import (
        Study,
        parse_seeds,
        parse_vary,
        print_commands,
        read_declaration,
        sweep,
    )

    study = Study(
        preset=args.preset,
        protocol=args.protocol,
        methods=tuple(m for m in args.methods.split(",") if m),
        seeds=parse_seeds(args.seeds),
        vary=parse_vary(args.vary),
        overrides=tuple(args.overrides),
        declared=read_declaration(args.declare) if args.declare else {},
    )
    if args.print_commands:
        print("\n".join(print_commands(study, args.out)))
        return 0
    from okdph.launch import parse_slurm

    try:
        outcomes = sweep(
            study,
            args.out,
            workers=args.workers,
            launcher=args.launcher,
            slurm=parse_slurm(args.slurm),
            progress=not args.no_progress,
            share_from=args.share_from,
        )
    except KeyboardInterrupt:
        print(
            "okdph: interrupted; run the same command again to continue the study "
            "(finished runs are skipped)",
            file=sys.stderr,
        )
        return 130
    failed = [name for name, o in outcomes.items() if not o.startswith(("trained", "skipped"))]
    print(f"study: {args.out} ({len(outcomes) - len(failed)} of {len(outcomes)} runs finished)")
    for name in failed:
        print(f"  {name}: {outcomes[name]}", file=sys.stderr)
    return 1 if failed else 0


def cmd_presets(args: argparse.Namespace) -> int:
    from okdph.presets import list_presets

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    for p in presets:
        print(f"{p.name:<{width}}  {p.description}")
    return 0


def _plugin_note(entry, builtin: list[str]) -> str:
    """How ``okdph list`` marks an entry point: its distribution (and when a built-in hides it)."""
    hidden = "; hidden by the built-in of that name" if entry.name in builtin else ""
    return f"(entry point of {entry.distribution}{hidden})"


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from okdph.models import list_models
        from okdph.models.registry import PLUGINS

        builtin = list_models(plugins=False)
        lines = builtin + [f"{e.name}  {_plugin_note(e, builtin)}" for e in PLUGINS.entries()]
        print("\n".join(lines))
    elif args.what == "methods":
        from okdph.config import ConfigError
        from okdph.methods import list_methods, method_class
        from okdph.methods.base import PLUGINS

        builtin = list_methods(plugins=False)
        for name in builtin:
            _print_method(name, method_class(name))
        for entry in PLUGINS.entries():
            note = _plugin_note(entry, builtin)
            if entry.name in builtin:
                print(f"{entry.name:<12} {note}")
                continue
            try:
                cls = PLUGINS.load(entry.name)
            except ConfigError as err:  # listed with the reason instead of failing the listing
                print(f"{entry.name:<12} {note}: {err}")
                continue
            assert cls is not None  # the name comes from the group's own entries
            _print_method(entry.name, cls, note)
    elif args.what == "datasets":
        from okdph.data import PLUGINS, list_datasets

        builtin = list_datasets(plugins=False)
        lines = builtin + [f"{e.name}  {_plugin_note(e, builtin)}" for e in PLUGINS.entries()]
        print("\n".join(lines))
    else:
        from okdph.augment import list_ops

        for name, doc in list_ops().items():
            print(f"{name:<12} {doc}")
    return 0


def _print_method(name: str, cls: type[Method], note: str = "") -> None:
    import textwrap

    doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip()
    # The docstring's first paragraph, whole: its first line often ends mid-sentence.
    summary = " ".join(doc.split("\n\n")[0].split())
    indent = " " * 13
    print(
        textwrap.fill(
            summary or "(no description)",
            width=100,
            initial_indent=f"{name:<12} ",
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    )
    fields = dataclasses.fields(cls.Config) if dataclasses.is_dataclass(cls.Config) else ()
    switches = [_switch(f) for f in fields if f.default is not dataclasses.MISSING]
    for line in ([note] if note else []) + (switches or ["(no switches)"]):
        print(indent + line)


def _switch(f: dataclasses.Field) -> str:
    """``method.KEY=DEFAULT``, and the allowed values of a switch that declares them."""
    choices = f.metadata.get("choices")
    text = f"method.{f.name}={f.default!r}"
    return f"{text}  one of {', '.join(choices)}" if choices else text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``okdph`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    from okdph.trainer import TrainingDiverged

    try:
        code = args.handler(args)
        # Output still buffered when a reader such as `head` has gone would fail at exit,
        # outside this try.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _reader_gone()
    except _user_errors() as err:
        print(f"okdph: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"okdph: training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("okdph: interrupted", file=sys.stderr)
        return 130


def _reader_gone() -> int:
    """Quiet end for `okdph presets | head`: the reader closed stdout, as it may."""
    try:
        # What is left in the buffer would be flushed, and fail again, at exit; send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor
        pass
    return 141  # what a shell reports for a program killed by SIGPIPE (128 + 13)


if __name__ == "__main__":
    sys.exit(main())
