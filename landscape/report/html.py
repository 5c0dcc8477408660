"""The HTML report and static figure export.

``write_report`` writes one ``report.html`` that works offline: plotly.js is written once beside it
(``plotly.min.js``) or inlined, figures are embedded as divs, and every setting is shown. Text that
comes from files (member names, paths, settings) is HTML-escaped.

``export_figures`` writes PNG/SVG/PDF through kaleido in one browser session. Without a Chromium it
raises ``ExportUnavailable`` with a sentence saying how to enable export; HTML and JSON need none.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import plotly.io as pio

from landscape.core.io import atomic_write_bytes

STATIC_FORMATS = ("png", "svg", "pdf")


class ExportUnavailable(RuntimeError):
    """Static export cannot run here (no kaleido or no Chromium); the message says how to fix it."""


def _settings_table(settings: Mapping[str, Any]) -> str:
    rows = []
    for key, value in settings.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(shown))}</td></tr>")
    return "<table class='settings'>" + "".join(rows) + "</table>"


class HtmlBlock:
    """Markup placed among a section's figures as it is (a table, a note); whoever builds it
    escapes the text it holds."""

    def __init__(self, markup: str) -> None:
        self.markup = markup

    def to_html(self, **_: Any) -> str:
        return self.markup

    def _repr_html_(self) -> str:
        """Shown as HTML where a notebook displays it (``display(block)``)."""
        return self.markup


def format_cell(value: Any) -> str:
    """A table cell's text: floats to 4 significant digits, missing or non-finite as an en dash,
    anything else as it is."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class HtmlTable(HtmlBlock):
    """A plain HTML ``<table>`` (a Plotly table renders names as markdown, "student_0" as
    "student 0", cuts its last row and leaves blank space under it). Keeps its cells, so the
    table can be written as CSV beside the figures' files.

    Args:
        headers: column headings.
        rows: one list of values per row (see :func:`format_cell`).
        title: a caption above the table.
    """

    def __init__(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
    ) -> None:
        self.headers = list(headers)
        self.rows = [[format_cell(v) for v in row] for row in rows]
        self.title = title
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption>{html.escape(title)}</caption>" if title else ""
        super().__init__(
            f"<div class='table-wrap'><table class='data'>{caption}<thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table></div>"
        )

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.headers)
        writer.writerows(self.rows)
        return buf.getvalue()


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[tuple[str, str, Sequence[go.Figure | HtmlBlock]]],
    settings: Mapping[str, Any],
    *,
    inline_plotlyjs: bool = False,
    command: str = "landscape analyze",
) -> Path:
    """Write a self-contained HTML report.

    Args:
        path: the ``report.html`` to write (its folder receives ``plotly.min.js`` unless inlined).
        title: page title (escaped).
        sections: ``(heading, explanatory text, figures)``; heading and text are escaped;
            an :class:`HtmlBlock` among the figures is placed as it is.
        settings: every setting of the analysis, shown as a table at the end.
        inline_plotlyjs: embed plotly.js in the page (one ~4.5 MB file) instead of beside it.
        command: the command that wrote the page, named in the note on how to write it as one
            file (``landscape compare``: ``landscape compare --self-contained``).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn = any(not isinstance(f, HtmlBlock) for _, _, figs in sections for f in figs)
    if not drawn:  # text and tables only: no plotly.js, and no note about it
        script = ""
    elif inline_plotlyjs:
        script = f"<script>{plotly.offline.get_plotlyjs()}</script>"
    else:
        js = path.parent / "plotly.min.js"
        if not js.exists():
            atomic_write_bytes(js, plotly.offline.get_plotlyjs().encode())
        script = "<script src='plotly.min.js'></script>"
    needs = (
        ""
        if inline_plotlyjs or not drawn
        else "<p class='note'>The figures need <code>plotly.min.js</code> from this folder; to "
        f"send the report alone, write it with <code>{html.escape(command)} --self-contained</code>."
        "</p>"
    )
    body = []
    for i, (heading, text, figures) in enumerate(sections):
        body.append(f"<section id='s{i}'><h2>{html.escape(heading)}</h2>")
        if text:
            body.append(f"<p>{html.escape(text)}</p>")
        for fig in figures:
            if isinstance(fig, HtmlBlock):
                body.append(fig.markup)
                continue
            body.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    config={"displaylogo": False, "responsive": True},
                )
            )
        body.append("</section>")
    toc = "".join(
        f"<li><a href='#s{i}'>{html.escape(h)}</a></li>" for i, (h, _, _) in enumerate(sections)
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{script}
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.25rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; }}
table.settings {{ border-collapse: collapse; font-size: 0.85rem; }}
table.settings th, table.settings td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left;
  vertical-align: top; }}
table.settings td {{ font-family: monospace; word-break: break-all; }}
p.note {{ font-size: 0.85rem; color: #666; }}
div.table-wrap {{ overflow-x: auto; margin: 1rem 0; }}
table.data {{ border-collapse: collapse; font-size: 0.85rem; }}
table.data caption {{ text-align: left; font-weight: 600; padding: 4px 0; }}
table.data th, table.data td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left;
  vertical-align: top; }}
table.data th {{ background: #f4f4f4; }}
ul.lines li {{ margin: 0.3rem 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1>{needs}<ul>{toc}<li><a href='#settings'>Settings</a></li></ul>
{"".join(body)}
<section id='settings'><h2>Settings</h2>{_settings_table(settings)}</section>
</body></html>
"""
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


_NO_KALEIDO = (
    "static export needs the kaleido package (pip install 'okdph-landscape[export]'); "
    "HTML and JSON were written"
)
_NO_BROWSER = (
    "static export needs a Chromium, which kaleido drives, and none was found (Debian/Ubuntu: "
    "apt-get install chromium; or set BROWSER_PATH to a Chrome or Chromium binary); "
    "HTML and JSON were written"
)


def find_browser() -> str | None:
    """Path of a Chromium/Chrome kaleido can drive, or None."""
    if os.environ.get("BROWSER_PATH") and Path(os.environ["BROWSER_PATH"]).exists():
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def export_static(
    figures: Mapping[str, go.Figure], folder: str | Path, formats: Sequence[str]
) -> tuple[list[Path], str | None]:
    """:func:`export_figures` for the static ones among ``formats`` (html and json are written
    elsewhere); returns the files and, when export is unavailable, the sentence saying why
    instead of raising (HTML and JSON are still there)."""
    static = [f for f in formats if f in STATIC_FORMATS]
    if not static:
        return [], None
    try:
        return export_figures(figures, folder, static), None
    except ExportUnavailable as err:
        return [], str(err)


def export_figures(
    figures: Mapping[str, go.Figure],
    folder: str | Path,
    formats: Sequence[str] = STATIC_FORMATS,
    *,
    width: int = 900,
    height: int | None = None,
    scale: float = 2.0,
) -> list[Path]:
    """Write every figure in every static format, batched in one browser session.

    Args:
        figures: file stem -> figure.
        folder: destination folder.
        formats: any of ``png``, ``svg``, ``pdf``.
        width, height, scale: image size in CSS pixels (height: the figure's own) and PNG scale.

    Returns:
        The files written.

    Raises:
        ExportUnavailable: kaleido or a browser is missing.
    """
    formats = [f for f in formats if f in STATIC_FORMATS]
    if not formats or not figures:
        return []
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ExportUnavailable(_NO_KALEIDO) from None
    browser = find_browser()
    if browser is None:
        raise ExportUnavailable(_NO_BROWSER)
    os.environ.setdefault("BROWSER_PATH", browser)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figs, paths = [], []
    for stem, fig in figures.items():
        for fmt in formats:
            figs.append(fig)
            paths.append(folder / f"{stem}.{fmt}")
    try:
        pio.write_images(figs, [str(p) for p in paths], width=width, height=height, scale=scale)
    except Exception as err:  # kaleido reports a missing/broken browser with several types
        if "chrom" in str(err).lower() or "browser" in str(err).lower():
            raise ExportUnavailable(_NO_BROWSER) from None
        raise
    return paths
