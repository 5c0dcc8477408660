"""``landscape``: loss-landscape analysis of training runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  landscape analyze runs/demo                      # everything, last epoch -> runs/demo/analysis/
  landscape analyze runs/demo --epochs all --analyses eigen,trace,interp
  landscape analyze runs/demo --formats html,json,png,pdf --grid 31 --samples 2000
  landscape analyze ckpt/cifar10/resnet32_our --arch resnet32 --data cifar10   # reference layout
  landscape analyze runs/demo --resume             # finish an interrupted analysis
  landscape analyze runs/study                     # every run of an `okdph sweep` study
  landscape compare runs/study                     # statistics over its runs -> runs/study/compare/
  landscape trajectories runs/study                # every run's paths on one PCA plane
  landscape validate runs/study                    # which measure predicts the gap -> runs/study/validate/
  landscape hessian runs/demo --member hybrid --json
  landscape interp runs/demo --start student_0 --end hybrid --json
  landscape surface runs/demo --member student_0 --grid 11 --json
"""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", type=Path, help="run directory, reference-code folder or state-dict folder"
    )
    p.add_argument("--arch", help="model registry name (reference and state-dict folders)")
    p.add_argument("--data", help="dataset name (reference and state-dict folders)")
    p.add_argument("--data-root", type=Path, help="folder holding the dataset's files (CIFAR)")
    p.add_argument(
        "--samples",
        type=int,
        default=512,
        help="training samples analysed (seeded subset; default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="samples per forward pass, the main memory knob: losses and Hessian products are "
        "sample-weighted means over the batches, only BatchNorm recalibration averages per-batch "
        "statistics; lower it for a large model on a small GPU (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of data subsets, probes and directions"
    )
    p.add_argument(
        "--bn",
        default="recalibrate",
        choices=["recalibrate", "interpolate", "keep"],
        help="BatchNorm statistics at points that are not trained checkpoints",
    )
    p.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    p.add_argument(
        "--lanczos-basis",
        default="device",
        choices=["device", "cpu"],
        help="where eigen-solves keep their Lanczos vectors (basis size x parameters numbers): "
        "with the computation (default) or in host memory, for a large model on a small GPU",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_measure_options(p: argparse.ArgumentParser) -> None:
    """One flag per setting of every registered measure (``--field-name``), typed by its
    default, with the help text of the settings dataclass."""
    import dataclasses

    from landscape.measures.registry import measures, option_defaults

    group = p.add_argument_group("measure settings")
    seen: set[str] = set()
    for measure in measures().values():
        for f in dataclasses.fields(measure.settings):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = option_defaults([measure])[f.name]
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_parser_for(default),
                default=default,
                metavar=f.name.upper(),
                help=f"{f.metadata.get('help', '')} ({measure.name}; default {_show(default)})",
            )


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _parser_for(default: object):
    """argparse ``type`` for a setting with this default: numbers, words, booleans
    (true/false) and comma-separated tuples of numbers."""
    if isinstance(default, bool):
        return _boolean
    if isinstance(default, tuple):
        return _radii
    return type(default) if default is not None else str


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from landscape.measures.registry import default_analyses, measures

    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss-landscape analysis of training runs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "analyze",
        help="every flatness measure for every member; writes a report",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(a)
    a.add_argument("--out", type=Path, help="results folder (default RUN_DIR/analysis)")
    a.add_argument("--epochs", default="last", help="last (default), all, or a list like 10,20,30")
    a.add_argument("--members", help="comma-separated members (default: all)")
    a.add_argument(
        "--analyses",
        default=",".join(default_analyses()),
        help=f"comma-separated subset of {', '.join(measures())} (default: "
        f"{', '.join(default_analyses())})",
    )
    a.add_argument(
        "--per-layer",
        action="store_true",
        help="also the top eigenvalue and trace of each layer's Hessian block (adds 'layers')",
    )
    _add_measure_options(a)
    a.add_argument("--test-samples", type=int, help="test samples for curves (default: --samples)")
    a.add_argument(
        "--formats",
        default="html,json",
        help="html,json,png,svg,pdf (static export needs Chromium)",
    )
    a.add_argument(
        "--self-contained",
        action="store_true",
        help="one report.html with plotly.js inlined (~4.8 MB), to mail or attach",
    )
    a.add_argument(
        "--resume",
        action="store_true",
        help="finish the previous analysis in --out with its settings",
    )
    a.set_defaults(handler=cmd_analyze)

    c = sub.add_parser(
        "compare",
        help="statistics over analysed runs: per method, paired contrasts, verdicts",
    )
    c.add_argument("paths", nargs="+", type=Path, help="a study directory, or run directories")
    c.add_argument(
        "--out",
        type=Path,
        help="output folder (default STUDY/compare, RUN/compare for one run, else compare/ in "
        "the runs' common folder)",
    )
    c.add_argument("--reference", help="method the others are contrasted with (default: okdph)")
    c.add_argument(
        "--max-train-error",
        type=float,
        default=0.01,
        help="runs kept for flatness-vs-generalisation correlations (default %(default)s)",
    )
    c.add_argument("--formats", default="html,json", help="html,json,png,svg,pdf")
    c.add_argument("--self-contained", action="store_true", help="inline plotly.js in the report")
    c.set_defaults(handler=cmd_compare)

    v = sub.add_parser(
        "validate",
        help="which flatness measure predicts generalisation over a study's hyperparameter grid",
    )
    v.add_argument(
        "study", type=Path, help="a study directory from `okdph sweep --vary ...`, analysed"
    )
    v.add_argument("--out", type=Path, help="output folder (default STUDY/validate)")
    v.add_argument(
        "--max-train-error",
        type=float,
        default=0.01,
        help="runs that fit their training set, for the second tau (default %(default)s)",
    )
    v.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="bootstrap resamples of configurations for tau's interval (default %(default)s)",
    )
    v.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    v.add_argument(
        "--declare",
        type=Path,
        metavar="FILE",
        help="also write the declaration of the study that follows (for `okdph sweep "
        "--declare`): the validated measures as its primary family, the analyses they need, "
        "and validate.json's sha256",
    )
    v.add_argument(
        "--baselines",
        default="independent,dml",
        help="methods the declared primary contrasts are against (default %(default)s)",
    )
    v.add_argument(
        "--max-contrasts",
        type=int,
        default=6,
        help="size of the declared primary family (default %(default)s: Holm at 8 seeds)",
    )
    v.add_argument("--formats", default="html,json", help="html,json,png,svg,pdf")
    v.add_argument("--self-contained", action="store_true", help="inline plotly.js in the report")
    v.set_defaults(handler=cmd_validate)

    t = sub.add_parser(
        "trajectories",
        help="several runs' training paths on one joint PCA plane, with the loss on it",
    )
    t.add_argument("paths", nargs="+", type=Path, help="run directories, or a study directory")
    t.add_argument(
        "--out", type=Path, help="output folder (default STUDY/trajectories or ./trajectories)"
    )
    t.add_argument("--grid", type=int, default=21, help="points per axis (odd; default 21)")
    t.add_argument(
        "--max-trajectory",
        type=int,
        default=40,
        help="checkpoints per member, evenly spaced (default %(default)s)",
    )
    t.add_argument("--samples", type=int, default=512, help="training samples (default 512)")
    t.add_argument("--test-samples", type=int, help="test samples (default: --samples)")
    t.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    t.add_argument("--seed", type=int, default=0, help="seed of the data subsets")
    t.add_argument(
        "--bn", default="recalibrate", choices=["recalibrate", "keep"], help="BatchNorm policy"
    )
    t.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    t.add_argument("--self-contained", action="store_true", help="inline plotly.js in the report")
    t.add_argument(
        "--formats", default="html,json", help="html,json,png,svg,pdf (static export: Chromium)"
    )
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(handler=cmd_trajectories)

    h = sub.add_parser("hessian", help="extreme eigenvalues, trace and density of one member")
    _add_run_options(h)
    h.add_argument("--epoch", default="last", help="last (default) or an epoch number")
    h.add_argument("--member", default=None, help="default: the first member")
    h.add_argument("--k", type=int, default=5)
    h.add_argument("--which", default="both", choices=["largest", "smallest", "both"])
    h.add_argument("--tol", type=float, default=1e-3)
    h.add_argument("--trace", action="store_true", help="also estimate the trace (Hutch++)")
    h.add_argument("--density", action="store_true", help="also estimate the spectral density")
    h.add_argument("--json", action="store_true", help="print the full result as JSON")
    h.set_defaults(handler=cmd_hessian)

    i = sub.add_parser("interp", help="loss and accuracy on the line between two members")
    _add_run_options(i)
    i.add_argument("--epoch", default="last", help="last (default) or an epoch number")
    i.add_argument("--start", required=True)
    i.add_argument("--end", required=True)
    i.add_argument("--points", type=int, default=31)
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=cmd_interp)

    s = sub.add_parser("surface", help="a filter-normalised random 2D surface around one member")
    _add_run_options(s)
    s.add_argument("--epoch", default="last", help="last (default) or an epoch number")
    s.add_argument("--member", default=None)
    s.add_argument("--grid", type=int, default=11)
    s.add_argument("--radius", type=float, default=1.0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_surface)
    return parser


def _radii(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,0.5, not {text!r}") from None


def _settings(args: argparse.Namespace, **extra):
    from landscape.pipeline.analyze import AnalyzeSettings

    samples = args.samples
    return AnalyzeSettings(
        samples=samples,
        test_samples=getattr(args, "test_samples", None) or samples,
        seed=args.seed,
        batch_size=args.batch_size,
        bn=args.bn,
        device=args.device,
        lanczos_basis=args.lanczos_basis,
        **extra,
    )


def init_distributed() -> int:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this rank.

    Each rank uses its local GPU when there is one (NCCL), else the CPU (gloo).
    """
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world <= 1 or not dist.is_available():
        return 0
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def cmd_compare(args: argparse.Namespace) -> int:
    from landscape.core.errors import LandscapeError
    from landscape.study.compare import compare_runs, load_runs
    from landscape.study.outputs import too_few_runs, write_compare

    _refuse_a_folder_of_runs(args.paths)
    study, runs = load_runs(args.paths)
    result = compare_runs(
        runs, reference=args.reference, study=study, max_train_error=args.max_train_error
    )
    # Next to what is compared, never into the current directory.
    if study is not None or len(args.paths) == 1:
        default = args.paths[0] / "compare"
    else:
        common = Path(os.path.commonpath([p.resolve() for p in args.paths]))
        if args.out is None and common == Path(common.anchor):
            raise LandscapeError(
                "the runs share no folder to write compare/ into; choose one with --out"
            )
        default = common / "compare"
    out = args.out or default
    result["inputs"] = [str(r.path.resolve()) for r in runs]
    if not (study is not None and args.out is None):  # a study's own folder is its to rewrite
        _refuse_another_comparison(out, result)
    formats = tuple(f for f in args.formats.split(",") if f)
    written, note = write_compare(result, runs, out, formats, args.self_contained)
    print(f"{len(runs)} runs, methods: {', '.join(result['methods'])}")
    sparse = too_few_runs(result)
    if sparse:
        print(sparse)
    for line in result["verdicts"]:
        print(line)
    for line in result["caveats"]:
        print(f"caveat: {line}")
    for method, r in result.get("reported_accuracy", {}).items():
        best, last = r["best_over_epochs_and_networks"], r["students_last_epoch"]
        print(
            f"accuracy as the reference code reports it (best over tested epochs and networks): "
            f"{method} {best['mean']:.4f}, its students at the last epoch {last['mean']:.4f} "
            f"(n = {best['n']})"
        )
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"results: {out}")
    return 0


def _refuse_a_folder_of_runs(paths: list[Path]) -> None:
    """A single folder that is neither a run nor a study but holds runs: say what to give
    instead, in one sentence (not "has no run.json")."""
    from landscape.core.errors import LandscapeError

    if len(paths) != 1 or not paths[0].is_dir():
        return
    folder = paths[0]
    if (folder / "run.json").exists() or (folder / "study.json").exists():
        return
    runs = sorted(c for c in folder.iterdir() if (c / "run.json").exists())
    if len(runs) == 1:
        raise LandscapeError(
            f"{folder} is not a study but holds one run, {runs[0]}; compare needs at least two "
            f"analysed runs of a method: give them, e.g. `landscape compare {runs[0]} OTHER_RUN`, "
            "or a study from `okdph sweep`"
        )
    if runs:
        raise LandscapeError(
            f"{folder} is not a study (no study.json) but holds {len(runs)} runs; give them "
            f"instead: landscape compare {' '.join(str(r) for r in runs)}"
        )


def _refuse_another_comparison(out: Path, result: dict) -> None:
    """Refuse to overwrite a folder holding the comparison of other runs."""
    from landscape.core.errors import LandscapeError

    try:
        held = json.loads((out / "compare.json").read_text())
    except (OSError, ValueError):
        return  # nothing, or nothing readable, to lose
    same = held.get("inputs") == result["inputs"] or (
        "inputs" not in held and held.get("runs") == result["runs"]
    )
    if not same:
        raise LandscapeError(
            f"{out} holds a comparison of other runs; remove it or choose another --out"
        )


def cmd_validate(args: argparse.Namespace) -> int:
    from landscape.core.io import atomic_write_bytes
    from landscape.study.validate_outputs import declaration, validate_study, write_validate

    result = validate_study(
        args.study,
        max_train_error=args.max_train_error,
        n_resamples=args.bootstrap,
        seed=args.seed,
    )
    out = args.out or args.study / "validate"
    formats = tuple(f for f in args.formats.split(",") if f)
    if args.declare and "json" not in formats:
        formats += ("json",)  # the declaration cites validate.json by its digest
    _, note = write_validate(result, out, formats, args.self_contained)
    print(result["paragraph"])
    if args.declare:
        baselines = [b for b in args.baselines.split(",") if b]
        declared = declaration(result, out / "validate.json", baselines, args.max_contrasts)
        args.declare.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.declare, (json.dumps(declared, indent=2) + "\n").encode())
        primary = ", ".join(declared["primary"]["measures"]) or "none (no measure validated)"
        print(f"declared in {args.declare}: primary {primary}; analyses {declared['analyses']}")
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"results: {out}")
    return 0


def cmd_trajectories(args: argparse.Namespace) -> int:
    from landscape.pipeline.context import AnalyzeSettings
    from landscape.pipeline.trajectories import joint_trajectories, write_trajectories

    settings = AnalyzeSettings(
        samples=args.samples,
        test_samples=args.test_samples or args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        bn=args.bn,
        device=args.device,
        grid=args.grid,
        max_trajectory=args.max_trajectory,
    )
    settings.validate()
    result = joint_trajectories(args.paths, settings, show_progress=not args.no_progress)
    single_study = len(args.paths) == 1 and (args.paths[0] / "study.json").exists()
    out = args.out or (args.paths[0] / "trajectories" if single_study else Path("trajectories"))
    formats = tuple(f for f in args.formats.split(",") if f)
    report, note = write_trajectories(result, out, args.self_contained, formats)
    if note:
        print(f"note: {note}", file=sys.stderr)
    ratio = result["explained_variance_ratio"]
    print(
        f"{len(result['paths'])} paths from {len(result['runs'])} runs; PC 1 and PC 2 explain "
        f"{ratio[0]:.1%} and {ratio[1]:.1%} of their variance"
    )
    print(f"report: {report}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if (args.run_dir / "study.json").exists():
        return _analyze_study(args)
    return _analyze_one(args)


def _analyze_study(args: argparse.Namespace) -> int:
    """Analyse every run of a study with the same settings (finished pieces are skipped)."""
    from landscape.core.errors import LandscapeError
    from landscape.study.collect import study_runs

    if args.out is not None:
        raise LandscapeError(
            "--out does not apply to a study: each run is analysed into RUN/analysis"
        )
    _, runs = study_runs(args.run_dir)
    missing = [p.name for p, _ in runs if not (p / "run.json").exists()]
    if missing:
        raise LandscapeError(
            f"{len(missing)} run(s) of the study are not trained yet ({missing[0]} ...); "
            "finish them with `okdph sweep` first"
        )
    for i, (path, _) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {path.name}", file=sys.stderr, flush=True)
        args.run_dir = path
        code = _analyze_one(args)
        if code:
            return code
    return 0


def _analyze_one(args: argparse.Namespace) -> int:
    from landscape.pipeline.analyze import analyze_run
    from landscape.pipeline.summary import costliest, stdout_table

    if init_distributed() != 0:  # other ranks compute their share and stay quiet
        args.no_progress = True

    from landscape.measures.registry import measures, option_defaults

    analyses = tuple(a for a in args.analyses.split(",") if a)
    if args.per_layer and "layers" not in analyses:
        analyses += ("layers",)
    settings = _settings(
        args,
        epochs=args.epochs,
        members=tuple(m for m in (args.members or "").split(",") if m),
        analyses=analyses,
        **{name: getattr(args, name) for name in option_defaults(measures().values())},
    )
    formats = tuple(f for f in args.formats.split(",") if f)
    if args.resume:
        _refuse_resume_conflicts(args, settings.to_dict(), formats)
    outcome = analyze_run(
        args.run_dir,
        settings,
        out=args.out,
        arch=args.arch,
        data=args.data,
        data_root=args.data_root,
        formats=formats,
        self_contained=args.self_contained,
        resume=args.resume,
        show_progress=not args.no_progress,
    )
    if outcome.report is None and "html" in formats:
        return 0  # not rank 0 under torchrun: rank 0 reports
    print(stdout_table(outcome.summary))
    print(f"pieces: {outcome.summary['pieces']} ({outcome.computed} computed now)")
    slowest = costliest(outcome.summary)
    if slowest:
        print("slowest: " + ", ".join(f"{path} {seconds:.1f} s" for path, seconds in slowest))
    if outcome.export_message:
        print(f"note: {outcome.export_message}", file=sys.stderr)
    left_out = outcome.left_out_note()
    if left_out:
        print(f"note: {left_out}", file=sys.stderr)
    print(f"results: {outcome.out}")
    if outcome.report:
        print(f"report: {outcome.report}")
    return 0


# Options of `landscape analyze` that choose where and how to read the run, not what is
# computed: --resume does not store them, so they never conflict with it.
_NOT_STORED = {"run_dir", "arch", "data", "data_root", "out", "resume", "no_progress"}


def _refuse_resume_conflicts(
    args: argparse.Namespace, settings: dict, formats: tuple[str, ...]
) -> None:
    """--resume continues with the settings stored by the previous call: refuse options given
    with it whose values differ from the stored ones (they would be silently dropped)."""
    from landscape.core.errors import LandscapeError
    from landscape.pipeline.store import ResultsStore

    stored = ResultsStore(args.out or args.run_dir / "analysis").read_settings()
    if stored is None:
        return  # analyze_run says there is nothing to resume
    kept = {
        **{k: tuple(v) if isinstance(v, list) else v for k, v in stored["settings"].items()},
        "formats": tuple(stored.get("formats", ())),
        "self_contained": bool(stored.get("self_contained", False)),
    }
    asked = {**settings, "formats": formats, "self_contained": args.self_contained}
    conflicts, seen = [], set()
    for dest in sorted(_explicit_options(args.argv) - _NOT_STORED):
        key = "analyses" if dest == "per_layer" else dest
        if key in kept and key not in seen and asked.get(key) != kept[key]:
            seen.add(key)
            flag = "--" + dest.replace("_", "-")
            conflicts.append(f"{flag} ({_show(asked[key])}, stored {_show(kept[key])})")
    if conflicts:
        raise LandscapeError(
            f"--resume continues with the settings stored in {args.out or args.run_dir / 'analysis'}"
            f", which {' and '.join(conflicts)} would change; drop "
            f"{'it' if len(conflicts) == 1 else 'them'}, or analyse again without --resume"
        )


def _explicit_options(argv: list[str] | None) -> set[str]:
    """Destinations of the options given on the command line, not defaulted: the same
    arguments parsed again with every default suppressed."""
    parser = build_parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    for each in parsers:
        for action in each._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _single(args: argparse.Namespace, **extra):
    from landscape.pipeline.analyze import select_epochs
    from landscape.pipeline.context import Context
    from landscape.pipeline.runs import open_run

    run = open_run(args.run_dir, args.arch, args.data, args.data_root)
    settings = _settings(args, **extra)
    settings.validate()
    epoch = select_epochs(run, args.epoch)[-1]
    return run, Context(run, settings, not args.no_progress), epoch


def _member(run, name: str | None) -> str:
    from landscape.core.errors import LandscapeError

    if name is None:
        return run.members[0]
    if name not in run.members:
        raise LandscapeError(
            f"{run.path} has no member {name!r}; members: {', '.join(run.members)}"
        )
    return name


def _emit(record: dict, args: argparse.Namespace, lines: list[str]) -> None:
    from landscape.core.records import json_safe

    if args.json:
        print(json.dumps(json_safe(record), indent=1))
    else:
        print("\n".join(lines))


def cmd_hessian(args: argparse.Namespace) -> int:
    from landscape.pipeline.analyze import measure_one

    run, ctx, epoch = _single(args, k=args.k, tol=args.tol)
    member = _member(run, args.member)
    record = {"run": str(run.path), "epoch": epoch, "member": member}
    record["eigen"] = measure_one(ctx, "eigen", epoch, member)
    lines = [
        f"{member} at epoch {epoch}: eigenvalues "
        + ", ".join(f"{v:.5g}" for v in record["eigen"]["values"])
    ]
    if args.trace:
        record["trace"] = measure_one(ctx, "trace", epoch, member)
        lines.append(f"trace {record['trace']['value']:.5g} +- {record['trace']['stderr']:.2g}")
    if args.density:
        record["density"] = measure_one(ctx, "density", epoch, member)
        lines.append(
            f"density: {len(record['density']['grid'])} grid points, sigma {record['density']['sigma']:.3g}"
        )
    _emit(record, args, lines)
    return 0


def cmd_interp(args: argparse.Namespace) -> int:
    from landscape.pipeline.analyze import measure_one

    run, ctx, epoch = _single(args, alphas=args.points)
    start, end = _member(run, args.start), _member(run, args.end)
    record = {"run": str(run.path), "epoch": epoch, **measure_one(ctx, "interp", epoch, start, end)}
    lines = [
        f"{start} -> {end} at epoch {epoch}: loss barrier train {record['barrier']['train']:.4g}, "
        f"test {record['barrier']['test']:.4g}; error barrier test "
        f"{record['error_barrier']['test']:.3f}"
    ]
    _emit(record, args, lines)
    return 0


def cmd_surface(args: argparse.Namespace) -> int:
    from landscape.pipeline.analyze import measure_one

    run, ctx, epoch = _single(args, grid=args.grid, radius=args.radius)
    member = _member(run, args.member)
    record = {
        "run": str(run.path),
        "epoch": epoch,
        "member": member,
        **measure_one(ctx, "surface", epoch, member),
    }
    detail = record["detail"]
    lines = [
        f"{member} at epoch {epoch}: {len(record['x'])}x{len(record['y'])} grid, centre loss "
        f"{detail['center_loss']:.4g}, {detail['n_nonfinite']} non-finite points"
    ]
    _emit(record, args, lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``landscape`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = argv  # which options were given (--resume refuses changed ones)
    from landscape.core.errors import LandscapeError

    try:
        return args.handler(args)
    except LandscapeError as err:
        print(f"landscape: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "landscape: interrupted; finished pieces are kept, continue with --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
