"""Pages generated at build time (mkdocs-gen-files), so they cannot drift from the code.

- reference/cli.md: every command's ``--help``, from the argument parsers themselves;
- reference/measures.md: every registered measure, its definition version, settings and fields,
  from the measure registry;
- tutorials/*.ipynb: the notebooks, copied as committed (rendered, not re-run);
- index.md: the README, its links made relative to the site.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import mkdocs_gen_files

from landscape.cli import build_parser as landscape_parser
from landscape.measures.registry import default_analyses, measures
from okdph.cli import build_parser as okdph_parser

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _help_text(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so that the page does not depend on the terminal that built it.
    parser.formatter_class = _fixed_width(parser.formatter_class)
    return parser.format_help()


def _fixed_width(base: type) -> type:
    class Formatter(base):  # type: ignore[misc, valid-type]
        def __init__(self, prog: str, **kwargs: object) -> None:
            kwargs["width"] = 100
            super().__init__(prog, **kwargs)

    return Formatter


def cli_page() -> str:
    lines = [
        "# Command line",
        "",
        "Generated from the argument parsers (`okdph.cli.build_parser`, "
        "`landscape.cli.build_parser`) when the site is built: this is exactly what "
        "`--help` prints.",
        "",
    ]
    for tool, parser in (("okdph", okdph_parser()), ("landscape", landscape_parser())):
        lines += [f"## `{tool}`", "", "```text", _help_text(parser).rstrip(), "```", ""]
        for name, sub in _subcommands(parser):
            lines += [f"### `{tool} {name}`", "", "```text", _help_text(sub).rstrip(), "```", ""]
    return "\n".join(lines)


def measures_page() -> str:
    defaults = set(default_analyses())
    lines = [
        "# Measures (generated)",
        "",
        "Every measure the registry holds when the site is built, with its definition version "
        "(recorded in every result; a stored result of an older version is recomputed), its "
        "settings (each a `landscape analyze` flag) and the fields it adds to `summary.json` "
        "and `landscape compare`. What each one computes, with formulas and sources: "
        "[Measures](../concepts/measures.md).",
        "",
        "| measure | scope | default | definition |",
        "|---|---|---|---|",
    ]
    registry = measures()
    for name, measure in registry.items():
        default = "yes" if name in defaults else "by name"
        lines.append(f"| `{name}` | {measure.scope.value} | {default} | `{measure.definition}` |")
    lines.append("")
    for name, measure in registry.items():
        lines += [f"## `{name}`", "", f"`{measure.definition}`", ""]
        settings = dataclasses.fields(measure.settings)
        if settings:
            lines += ["| flag | default | meaning |", "|---|---|---|"]
            for f in settings:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                flag = "--" + f.name.replace("_", "-")
                meaning = str(f.metadata.get("help", "")).replace("|", "\\|")
                lines.append(f"| `{flag}` | `{default}` | {meaning} |")
            lines.append("")
        fields = [f for f in measure.fields if f.compare or f.correlate]
        if fields:
            lines += [
                "| field | compared | log scale | invariant | in validate |",
                "|---|---|---|---|---|",
            ]
            for f in fields:
                marks = ["yes" if v else "" for v in (f.compare, f.log, f.invariant, f.correlate)]
                lines.append(f"| `{f.name}` | " + " | ".join(marks) + " |")
            lines.append("")
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_page())
with mkdocs_gen_files.open("reference/measures.md", "w") as page:
    page.write(measures_page())
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    with mkdocs_gen_files.open(f"tutorials/{notebook.name}", "w") as page:
        page.write(notebook.read_text())
# The home page is the README, its links made relative to the site.
with mkdocs_gen_files.open("index.md", "w") as page:
    page.write((ROOT / "README.md").read_text().replace("](docs/", "]("))
