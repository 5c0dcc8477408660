"""The HTML report renders offline in a real browser; static export works or says how to enable it."""

import re
import subprocess

import plotly.graph_objects as go
import pytest
from analysis_cases import fast_settings

from landscape.pipeline.analyze import analyze_run
from landscape.report import html as report_module
from landscape.report.html import ExportUnavailable, export_figures, find_browser

needs_browser = pytest.mark.skipif(
    find_browser() is None, reason="no Chromium found (apt-get install chromium)"
)


def _dump_dom(html_path, tmp_path):
    cmd = [
        find_browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        html_path.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow
@needs_browser
def test_report_renders_every_figure_offline(tiny_run, tmp_path):
    outcome = analyze_run(tiny_run, fast_settings(), show_progress=False)
    html = outcome.report.read_text()
    assert "cdn.plot.ly" not in html and "<script src='plotly.min.js'></script>" in html
    dom = _dump_dom(outcome.report, tmp_path)
    figures = len(re.findall(r'class="plotly-graph-div', html))
    rendered = len(re.findall(r'class="[^"]*js-plotly-plot', dom))
    assert figures >= 10 and rendered == figures
    # 2D figures draw into SVG; every one of them has its main SVG in the rendered page.
    assert dom.count('class="main-svg"') >= figures
    assert "Flatness by member" in dom and "Settings" in dom


@pytest.mark.slow
@needs_browser
def test_static_export_writes_png_svg_pdf(tmp_path):
    figs = {
        "line": go.Figure(go.Scatter(y=[1, 3, 2])),
        "surface3d": go.Figure(go.Surface(z=[[1, 2], [3, 4]])),
    }
    paths = export_figures(figs, tmp_path, ["png", "svg", "pdf"], width=300, height=200, scale=1)
    assert sorted(p.name for p in paths) == sorted(
        f"{s}.{e}" for s in figs for e in ("png", "svg", "pdf")
    )
    assert (tmp_path / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "line.svg").read_bytes()[:400]
    assert (tmp_path / "surface3d.pdf").read_bytes()[:5] == b"%PDF-"


def test_without_a_browser_html_and_json_are_still_written(tiny_run, monkeypatch):
    monkeypatch.setattr(report_module, "find_browser", lambda: None)
    with pytest.raises(
        ExportUnavailable, match="needs a Chromium.*apt-get install chromium"
    ) as err:
        export_figures({"x": go.Figure()}, tiny_run, ["png"])
    assert "pip install" not in str(err.value)  # kaleido is installed: name only what is missing
    outcome = analyze_run(
        tiny_run,
        fast_settings(analyses=("eigen",)),
        formats=("html", "json", "png"),
        show_progress=False,
    )
    assert (
        "static export needs" in outcome.export_message
        and "HTML and JSON were written" in outcome.export_message
    )
    assert outcome.report.exists() and (outcome.out / "summary.json").exists()
    assert list((outcome.out / "figures").glob("*.json")) and not list(
        (outcome.out / "figures").glob("*.png")
    )


def test_self_contained_report_travels_alone(tiny_run, tmp_path):
    out = tmp_path / "alone"
    outcome = analyze_run(
        tiny_run,
        fast_settings(analyses=("eigen",)),
        out=out,
        self_contained=True,
        show_progress=False,
    )
    html = outcome.report.read_text()
    assert "<script src='plotly.min.js'>" not in html and not (out / "plotly.min.js").exists()
    assert len(html) > 3_000_000 and "plotly.js v" in html[:5_000_000]
    assert "--self-contained" not in html  # no note about a file it does not need
    beside = analyze_run(tiny_run, fast_settings(analyses=("eigen",)), show_progress=False)
    assert "landscape analyze --self-contained" in beside.report.read_text()
    # --resume keeps the choice
    again = analyze_run(tiny_run, out=out, resume=True, show_progress=False)
    assert "<script src='plotly.min.js'>" not in again.report.read_text()
