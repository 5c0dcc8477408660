"""``okdph sweep``: train a grid of methods x variants x seeds into one study directory.

Every run is a normal run directory, ``<study>/<method>[-<variant>]-s<seed>/``; ``study.json``
records the grid, the protocol and every run's overrides, so ``landscape compare`` knows what was
compared with what (:func:`read_study` is the one reader of that file). Rerunning a sweep skips
finished runs and resumes interrupted ones; running one run (its state on disk, train or resume,
its command line, its submitit job) lives in :mod:`okdph.jobs`.

Protocols (recorded in study.json):

* ``matched`` (default): every method gets the preset's architecture, per-student views (see
  :func:`okdph.session.view_pipelines`), schedule and seeds, and one initialisation rule
  (``init=shared`` unless set or varied): differences are the methods' alone.
* ``reference``: each method as its paper or code ran it: OKDPH as the preset says; the other
  methods with their own default initialisation and the first listed augmentation for every
  network (OKDPH's baselines used one augmentation).

Method entries may carry method options: ``okdph:mode=code``, ``okdph:fusion_every=none`` are
ablations with their own run names (``okdph-mode_code-s0``).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from okdph import jobs
from okdph.config import ConfigError, TrainConfig, apply_overrides
from okdph.jobs import TrainJob, run_state, submit_and_wait, train_or_resume
from okdph.presets import preset_config
from okdph.run import RunDir, atomic_write_bytes, check_creatable

PROTOCOLS = ("matched", "reference")
STUDY_VERSION = 1


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid."""

    name: str
    method: str
    variant: str
    seed: int
    overrides: tuple[str, ...]


@dataclass
class Study:
    """The grid of a sweep; ``study.json`` is its ``to_dict``."""

    preset: str
    protocol: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    vary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    # What the analysis will test, fixed before any run trains (``--declare FILE``): written into
    # study.json beside the grid, and not part of the grid.
    declared: dict[str, Any] = field(default_factory=dict)

    def runs(self) -> list[PlannedRun]:
        """Every run of the grid, methods outermost, seeds innermost."""
        keys = sorted(self.vary)
        combos = list(itertools.product(*(self.vary[k] for k in keys))) or [()]
        out = []
        for entry in self.methods:
            method, options = parse_method(entry)
            for combo in combos:
                varied = [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
                label = [_label(o) for o in options] + [_label(v) for v in varied]
                variant = "-".join(label)
                for seed in self.seeds:
                    overrides = (
                        f"method={method}",
                        *self._protocol_overrides(method),
                        *self.overrides,
                        *(f"method.{o}" for o in options),
                        *varied,
                        f"seed={seed}",
                    )
                    name = "-".join(p for p in (method, variant, f"s{seed}") if p)
                    out.append(PlannedRun(name, method, variant, seed, overrides))
        return out

    def _protocol_overrides(self, method: str) -> tuple[str, ...]:
        base = preset_config(self.preset)
        set_keys = {o.split("=", 1)[0] for o in (*self.overrides, *self.vary)}
        if self.protocol == "matched":
            return () if "init" in set_keys else ("init=shared",)
        if method == "okdph":
            return ()
        own = () if "augment" in set_keys else (f"augment={base.augment[0]}",)
        return (*own, *(() if "init" in set_keys else ("init=auto",)))

    def config(self, run: PlannedRun) -> TrainConfig:
        """The resolved training config of one run."""
        return apply_overrides(preset_config(self.preset), list(run.overrides))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STUDY_VERSION,
            "preset": self.preset,
            "protocol": self.protocol,
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "vary": {k: list(v) for k, v in self.vary.items()},
            "overrides": list(self.overrides),
            "runs": [asdict(r) for r in self.runs()],
        }


def parse_method(entry: str) -> tuple[str, list[str]]:
    """``"okdph:mode=code:beta=0.5"`` -> ``("okdph", ["mode=code", "beta=0.5"])``."""
    method, *options = entry.split(":")
    for o in options:
        if "=" not in o:
            raise ConfigError(f"method option {o!r} of {entry!r} is not of the form key=value")
    return method, options


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-7"`` (or a mix, ``"0-3,8"``) as a tuple of seeds."""
    seeds: list[int] = []
    try:
        for part in (p for p in text.split(",") if p):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"seeds must look like 0,1,2 or 0-7, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds must be distinct non-negative integers, not {text!r}")
    return tuple(seeds)


def parse_vary(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["init=shared,independent"]`` -> ``{"init": ("shared", "independent")}``."""
    out = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--vary takes key=v1,v2, not {item!r}")
        out[key] = tuple(v for v in values.split(",") if v)
    return out


def _label(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key.split('.')[-1]}_{value}".replace("/", "_").replace(",", "_")


def open_study(out: Path, study: Study) -> list[PlannedRun]:
    """Check every run's config, then create ``out`` and its study.json (or check that an
    existing one describes the same grid); returns the runs."""
    if study.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {study.protocol!r}")
    from okdph.methods import list_methods

    known = list_methods()
    for entry in study.methods:
        if parse_method(entry)[0] not in known:
            raise ConfigError(
                f"unknown method {parse_method(entry)[0]!r}; available methods: {', '.join(known)}"
            )
    if not study.methods:
        raise ConfigError("--methods lists no method")
    runs = study.runs()
    for run in runs:
        study.config(run).validate()  # every cell is valid before anything is written
    path = out / "study.json"
    record = json.loads(json.dumps(study.to_dict()))  # as stored: tuples become lists
    if path.exists():
        try:
            old = read_study(path) or {}
        except StudyFileError as err:
            raise StudyFileError(f"{err}; move it away to start a new study") from None
        # Entries a user added (primary, relevance) and the creation time are not the grid.
        if {k: old.get(k) for k in record} != record:
            raise ConfigError(
                f"{out} holds a different study (its study.json differs); use another --out"
            )
        changed = sorted(k for k, v in study.declared.items() if old.get(k) != v)
        if changed:
            raise ConfigError(
                f"{out}/study.json declares other {', '.join(changed)} than --declare gives; a "
                "declaration is fixed when the study starts (edit study.json by hand to change it "
                "in the open)"
            )
        return runs
    check_creatable(out)
    out.mkdir(parents=True, exist_ok=True)
    record.update(study.declared)
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return runs


def train_command(study: Study, run: PlannedRun, out: Path, state: str) -> list[str]:
    """The ``okdph train`` command line of one run (:func:`okdph.jobs.train_command`)."""
    return jobs.train_command(study.preset, run.overrides, out / run.name, state)


def sweep(
    study: Study,
    out: Path,
    *,
    workers: int = 1,
    launcher: str = "processes",
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
    share_from: Sequence[Path] = (),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, str]:
    """Train every unfinished run of ``study`` into ``out``; returns ``{run: outcome}``.

    Runs that another study in ``share_from`` finished with the same configuration are copied
    from it first (:func:`share_runs`), so two studies can share an arm without training it twice.

    ``workers > 1`` trains that many runs at once as ``okdph train`` subprocesses, each on a CUDA
    device no other worker holds when there are several, else all on the default device.
    ``launcher="slurm"`` submits every run as a SLURM job through submitit with the ``slurm``
    parameters (``"local"``: submitit's local executor), see :mod:`okdph.launch`; the jobs are
    :class:`okdph.jobs.TrainJob`.
    """
    runs = open_study(out, study)
    for source in share_from:
        for name in share_runs(study, runs, out, source):
            log(f"sweep: {name} shared from {source} (finished there, same configuration)")
    states = {r.name: run_state(out / r.name) for r in runs}
    todo = [r for r in runs if states[r.name] != "done"]
    outcomes = {r.name: "skipped (done)" for r in runs if states[r.name] == "done"}
    log(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train -> {out}")
    started = time.perf_counter()

    def report(i: int, run: PlannedRun, outcome: str) -> None:
        outcomes[run.name] = outcome
        elapsed = time.perf_counter() - started
        left = len(todo) - i
        eta = f", ETA {elapsed / i * left / 60:.1f} min" if left else ""
        log(f"[{i}/{len(todo)}] {run.name}: {outcome} ({elapsed / 60:.1f} min{eta})")

    if launcher in ("slurm", "local"):
        submitted = [
            (
                r.name,
                TrainJob(
                    study.config(r).to_dict(),
                    str(out / r.name),
                    train_command(study, r, out, "new")[2:],
                ),
            )
            for r in todo
        ]
        outcomes.update(submit_and_wait(submitted, out / "submitit", launcher, slurm or {}, log))
        return outcomes
    if workers <= 1:
        from okdph import trainer

        for i, run in enumerate(todo, 1):
            log(f"[{i - 1}/{len(todo)}] {run.name}: {states[run.name]}")
            try:
                train_or_resume(
                    out / run.name,
                    study.config(run),
                    train_command(study, run, out, "new")[2:],
                    states[run.name],
                    progress,
                )
                report(i, run, "trained")
            except trainer.TrainingDiverged as err:
                report(i, run, f"diverged ({err})")
        return outcomes
    devices = _devices()
    pending = list(todo)
    active: dict[subprocess.Popen, tuple[PlannedRun, str | None]] = {}
    done = 0
    while pending or active:
        while pending and len(active) < workers:
            run = pending.pop(0)
            cmd = train_command(study, run, out, states[run.name])
            env = dict(os.environ)
            device = None
            if devices:  # the least used device: a finished worker's GPU is handed on
                held = [d for _, d in active.values()]
                device = min(devices, key=held.count)
                env["CUDA_VISIBLE_DEVICES"] = device
            active[subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)] = (run, device)
        time.sleep(0.2)
        for proc in [p for p in active if p.poll() is not None]:
            run, _ = active.pop(proc)
            done += 1
            report(
                done, run, "trained" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            )
    return outcomes


def share_runs(study: Study, runs: Sequence[PlannedRun], out: Path, source: Path) -> list[str]:
    """Copy into ``out`` every run of ``runs`` not yet there that ``source`` (another study's
    directory) holds finished with exactly the configuration this study plans for it, analyses
    included; returns the names copied. A run whose configuration differs is left to train.

    The copy goes to a temporary name first and is renamed into place, so an interrupted copy
    never looks like a run.
    """
    if not source.is_dir():
        raise ConfigError(f"--share-from {source}: no such study directory")
    shared = []
    for run in runs:
        here, there = out / run.name, source / run.name
        if here.exists() or run_state(there) != "done":
            continue
        planned = json.loads(json.dumps(study.config(run).to_dict()))
        if RunDir(there).read_info().get("config") != planned:  # "done": run.json was read
            continue
        partial = out / f".{run.name}.sharing"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(there, partial)
        os.replace(partial, here)
        shared.append(run.name)
    return shared


def _devices() -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] if count > 1 else []


def print_commands(study: Study, out: Path) -> list[str]:
    """One shell line per unfinished run, for another scheduler (study.json is written)."""
    runs = open_study(out, study)
    lines = []
    for run in runs:
        state = run_state(out / run.name)
        if state != "done":
            cmd = train_command(study, run, out, state)
            lines.append(shlex.join(["okdph", *cmd[3:]]))
    return lines


class StudyFileError(ConfigError):
    """A study.json that okdph cannot read: not JSON, not an object, a version this okdph does
    not know, or a missing or mistyped entry (one sentence naming the file)."""


# The entries every study.json holds, with their JSON types (runs: a list of PlannedRun dicts).
_STUDY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "preset": str,
    "protocol": str,
    "methods": list,
    "seeds": list,
    "vary": dict,
    "overrides": list,
    "runs": list,
}
_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "method": str,
    "variant": str,
    "seed": int,
    "overrides": list,
}


#: What a declaration file (``okdph sweep --declare FILE``) may hold: the primary family and the
#: relevance thresholds of ``landscape compare``, the criterion of ``landscape validate``, the
#: analyses the study's recipe runs, and free text saying where the choice came from.
DECLARABLE = ("primary", "relevance", "validate", "analyses", "provenance")


def read_declaration(path: str | Path) -> dict[str, Any]:
    """The entries of a declaration file, checked: a JSON object whose keys are in
    :data:`DECLARABLE` (others are refused, so that a typo does not silently declare nothing)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the declaration {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"the declaration {path} is not JSON ({err.msg}, line {err.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"the declaration {path} must be a JSON object")
    unknown = sorted(set(data) - set(DECLARABLE))
    if unknown:
        raise ConfigError(
            f"the declaration {path} has unknown entries {', '.join(unknown)}; it may hold "
            f"{', '.join(DECLARABLE)}"
        )
    return data


def read_study(path: str | Path) -> dict[str, Any] | None:
    """The study.json of a study directory (or the file itself), validated; ``None`` when there
    is none. The one reader of the format :func:`open_study` writes.

    Returns the stored dict: ``version``, ``preset``, ``protocol``, ``methods``, ``seeds``,
    ``vary``, ``overrides``, ``runs`` (each ``name``, ``method``, ``variant``, ``seed``,
    ``overrides``), ``created``, and whatever else a user added (``primary``, ``relevance``).
    Raises :class:`StudyFileError` for a file that is not such a study.
    """
    path = Path(path)
    file = path if path.name == "study.json" or path.is_file() else path / "study.json"
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StudyFileError(f"{file} is not valid JSON") from None
    if not isinstance(record, dict):
        raise StudyFileError(f"{file} holds a {type(record).__name__}, not a study object")
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StudyFileError(f"{file} has no format version; it was not written by okdph sweep")
    if version > STUDY_VERSION:
        raise StudyFileError(
            f"{file} has format version {version}, newer than this okdph reads "
            f"({STUDY_VERSION}); upgrade okdph"
        )
    _check_entries(record, _STUDY_FIELDS, file, "")
    for i, run in enumerate(record["runs"]):
        if not isinstance(run, dict):
            raise StudyFileError(f"{file}: runs[{i}] is a {type(run).__name__}, not an object")
        _check_entries(run, _RUN_FIELDS, file, f"runs[{i}].")
    return record


def _check_entries(
    record: dict[str, Any], fields: dict[str, type | tuple[type, ...]], file: Path, prefix: str
) -> None:
    for key, kind in fields.items():
        value = record.get(key)
        if value is None:
            raise StudyFileError(f"{file} has no {prefix}{key} entry")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StudyFileError(
                f"{file}: {prefix}{key} is a {type(value).__name__}, not a "
                f"{getattr(kind, '__name__', kind)}"
            )


def load_study(path: Path) -> dict[str, Any]:
    """The study.json of a study directory (:func:`read_study`; a ConfigError when absent)."""
    record = read_study(path)
    if record is None:
        raise ConfigError(f"{path} is not a study directory (it has no study.json)")
    return record
