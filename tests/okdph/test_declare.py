"""``okdph sweep --declare FILE``: what the analysis will test is written into study.json when
the study starts, and cannot be changed silently afterwards."""

import json

from okdph.cli import main

SWEEP = ["sweep", "--preset", "demo", "--methods", "independent,okdph", "--seeds", "0"]


def _declare(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(json.dumps(body) if not isinstance(body, str) else body)
    return str(path)


def test_a_declaration_is_written_into_study_json_and_kept(tmp_path, capsys):
    body = {
        "primary": {"measures": ["lambda_max"], "baselines": ["independent"]},
        "provenance": "validated by runs/grid/validate/validate.json sha256 abc",
    }
    declared = _declare(tmp_path, "d.json", body)
    out = tmp_path / "study"
    argv = [*SWEEP, "--out", str(out), "--declare", declared, "--print-commands"]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["primary"] == body["primary"] and study["provenance"] == body["provenance"]
    assert main(argv) == 0  # the same declaration again: the same study
    other = _declare(tmp_path, "e.json", {"primary": {"measures": ["trace"]}})
    capsys.readouterr()
    assert main([*SWEEP, "--out", str(out), "--declare", other, "--print-commands"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "declares other primary" in err
    assert main([*SWEEP, "--out", str(out), "--print-commands"]) == 0  # no --declare: kept


def test_bad_declarations_are_one_sentence(tmp_path, capsys):
    cases = {
        "missing.json": None,
        "notjson.json": "{primary",
        "list.json": "[1, 2]",
        "typo.json": {"primray": {}},
    }
    for name, body in cases.items():
        path = str(tmp_path / name) if body is None else _declare(tmp_path, name, body)
        argv = [*SWEEP, "--out", str(tmp_path / "s"), "--declare", path, "--print-commands"]
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and name in err
    assert not (tmp_path / "s").exists()
