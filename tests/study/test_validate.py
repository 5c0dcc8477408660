"""`landscape validate`'s statistics on small synthetic grids, against hand-computed values.

Each table is configurations x seeds x {measure, gap}, built so that every tau, psi, noise floor and
sign-error below can be worked out on paper (the working is in the comments)."""

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from landscape.core.errors import LandscapeError
from landscape.measures.base import Field
from landscape.study import validate as v
from landscape.study.collect import RunRecord

GAP = "gap_accuracy"


def table(axes, cells, seeds=(+0.25, -0.25), measure_noise=0.0, extra=None):
    """A Table from ``{config: (measure mean, gap mean)}``: one run per seed offset, the gap at
    mean + offset (so each configuration's seed variance is 2 * offset^2 / 1) and the measure at
    mean + measure_noise * sign(offset); every run fits its training set unless ``extra`` says."""
    rows = []
    for config, (m, g) in cells.items():
        for s, off in enumerate(seeds):
            values = {
                "m": m + measure_noise * np.sign(off),
                GAP: g + off,
                "gap_loss": 2 * (g + off),
                "train_acc": 1.0,
            }
            values.update((extra or {}).get((config, s), {}))
            rows.append(v.Row(f"{'-'.join(config)}-s{s}", s, config, values))
    return v.Table(axes={k: tuple(x) for k, x in axes.items()}, rows=tuple(rows))


# --------------------------------------------------------------------------------------------
# tau


def test_tau_b_with_ties_is_the_hand_computed_value():
    # pairs of (1,1) (2,3) (2,2) (3,4): 5 concordant, none discordant, one tied in x only:
    # tau-b = (5 - 0) / sqrt((6 - 1) * (6 - 0)).
    assert v.tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    assert v.tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # A constant measure orders nothing: 0, not scipy's NaN; one point has no tau.
    assert v.tau_b([2, 2, 2], [1, 2, 3]) == 0.0
    assert math.isnan(v.tau_b([1], [1]))


def test_bootstrap_resamples_configurations_and_is_degenerate_when_they_agree():
    # Two configurations, each of two seeds that disagree with each other, agreeing across:
    # A = (1,2),(2,1); B = (3,4),(4,3). All four points: 4 concordant, 2 discordant pairs, tau 1/3.
    # A resample of configurations is AB (tau 1/3) or AA / BB (points duplicated: 4 discordant
    # pairs, 2 tied in both, tau-b = -4 / sqrt(4 * 4) = -1); resampling runs would give others.
    x, y, clusters = [1, 2, 3, 4], [2, 1, 4, 3], ["A", "A", "B", "B"]
    assert v.tau_b(x, y) == pytest.approx(1 / 3)
    lo, hi, dist = v.cluster_bootstrap(x, y, clusters, n_resamples=400, seed=3)
    assert len(dist) == 400
    assert set(np.round(dist, 9)) <= {round(1 / 3, 9), -1.0}
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(1 / 3)
    # Configurations that agree perfectly (every run ordered alike): every resample's tau is 1.
    x = [1, 2, 3, 4, 5, 6]
    lo, hi, dist = v.cluster_bootstrap(x, x, [0, 0, 1, 1, 2, 2], n_resamples=300, seed=0)
    assert np.allclose(dist, 1.0) and (lo, hi) == (pytest.approx(1.0), pytest.approx(1.0))
    # Seeded: the same seed gives the same interval; one configuration gives none.
    again = v.cluster_bootstrap([1, 2, 3, 4], [2, 1, 4, 3], clusters, n_resamples=400, seed=3)
    assert np.array_equal(again[2], v.cluster_bootstrap(
        [1, 2, 3, 4], [2, 1, 4, 3], clusters, n_resamples=400, seed=3)[2])  # fmt: skip
    assert math.isnan(v.cluster_bootstrap([1, 2], [1, 2], ["A", "A"], n_resamples=50, seed=0)[0])


def test_kendall_over_all_runs_and_over_the_runs_that_fit():
    axes = {"lr": ("a", "b"), "bs": ("32", "64")}
    cells = {("a", "32"): (1, 1), ("b", "32"): (2, 2), ("a", "64"): (3, 3), ("b", "64"): (4, 4)}
    # The two runs of ("b", "64") do not fit their training set (train error 0.05).
    t = table(axes, cells, extra={(("b", "64"), s): {"train_acc": 0.95} for s in (0, 1)})
    res = v.kendall_runs(t, "m", GAP, n_resamples=200, seed=0)
    # m is constant within a configuration and the gaps are not: of 28 pairs, 24 concordant and
    # 4 tied in m only: tau-b = 24 / sqrt((28 - 4) * 28).
    assert res["tau"] == pytest.approx(24 / math.sqrt(24 * 28))
    assert (res["n_runs"], res["n_configurations"]) == (8, 4)
    fit = v.kendall_runs(t, "m", GAP, n_resamples=200, seed=0, keep=["a-32-s0", "a-32-s1",
                         "b-32-s0", "b-32-s1", "a-64-s0", "a-64-s1"])  # fmt: skip
    assert (fit["n_runs"], fit["n_configurations"]) == (6, 3)
    assert fit["tau"] == pytest.approx(12 / math.sqrt(12 * 15))  # 15 pairs, 3 tied in m
    result = v.validate_table(t, {"m": Field("m")}, n_resamples=50)
    assert result["n_fit_runs"] == 6
    assert result["results"]["m"][GAP]["kendall"]["fit"]["n_runs"] == 6


# --------------------------------------------------------------------------------------------
# granulated tau


# lr has three values, bs two. Configuration means (measure, gap):
#            bs=32        bs=64
#   lr=a     (1, 1)       (3, 1.5)
#   lr=b     (5, 2)       (2, 2.5)
#   lr=c     (6, 3)       (6, 3.5)
# Along lr: bs=32 orders m as the gap (tau 1); bs=64 has m 3, 2, 6 against gaps rising: pairs
# (a,b) discordant, (a,c) and (b,c) concordant, tau 1/3. psi_lr = (1 + 1/3) / 2 = 2/3.
# Along bs: lr=a concordant (+1), lr=b discordant (-1), lr=c a tie in m (0). psi_bs = 0.
# Psi = (2/3 + 0) / 2 = 1/3.
GRID = {"lr": ("a", "b", "c"), "bs": ("32", "64")}
CELLS = {
    ("a", "32"): (1, 1),
    ("b", "32"): (5, 2),
    ("c", "32"): (6, 3),
    ("a", "64"): (3, 1.5),
    ("b", "64"): (2, 2.5),
    ("c", "64"): (6, 3.5),
}


def test_granulated_tau_with_an_axis_of_three_values_and_a_tie():
    g = v.granulated_tau(table(GRID, CELLS), "m", GAP)
    assert g["axes"]["lr"]["taus"] == [pytest.approx(1.0), pytest.approx(1 / 3)]
    assert g["axes"]["lr"]["psi"] == pytest.approx(2 / 3)
    assert g["axes"]["bs"]["taus"] == [pytest.approx(1.0), pytest.approx(-1.0), 0.0]
    assert g["axes"]["bs"]["psi"] == pytest.approx(0.0)
    assert (g["axes"]["lr"]["groups"], g["axes"]["bs"]["groups"]) == (2, 3)
    assert g["Psi"] == pytest.approx(1 / 3)


def test_a_group_of_one_configuration_has_no_tau_and_is_skipped():
    # Without (c, 64): along bs, lr=c is a group of one (skipped); along lr, bs=64 holds a and b
    # only, m 3 then 2 against gaps rising: tau -1. psi_lr = (1 - 1) / 2 = 0, psi_bs = 0.
    cells = {k: x for k, x in CELLS.items() if k != ("c", "64")}
    g = v.granulated_tau(table(GRID, cells), "m", GAP)
    assert g["axes"]["bs"]["groups"] == 2 and g["axes"]["bs"]["skipped"] == 1
    assert g["axes"]["bs"]["psi"] == pytest.approx(0.0)
    assert g["axes"]["lr"]["taus"] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert g["axes"]["lr"]["skipped"] == 0 and g["Psi"] == pytest.approx(0.0)
    # Every group of one: no psi at all.
    lone = v.granulated_tau(table({"lr": ("a", "b")}, {("a",): (1, 1)}), "m", GAP)
    assert lone["axes"]["lr"]["groups"] == 0 and math.isnan(lone["Psi"])


# --------------------------------------------------------------------------------------------
# sign-error


# Gaps of each configuration's two seeds are mean +- 0.25: s2 = (0.25^2 + 0.25^2) / 1 = 0.125,
# floor = sqrt(s2 / 2 + s2 / 2) = sqrt(0.125) = 0.3536, twice the floor 0.7071.
#            bs=32        bs=64
#   lr=a     (1, 1)       (5, 1.5)
#   lr=b     (0.5, 2)     (0, 1.75)
#   lr=c     (2, 3)       (5, 4)
# Pairs differing in one axis (measure diff, gap diff -> sign-error):
#   lr a-b @32: (+0.5, -1) -> 1        lr a-b @64: gap diff 0.25 < floor: not counted
#   lr a-c @32: (-1, -2) -> 0          lr a-c @64: (0, -2.5) -> a tie: 1/2
#   lr b-c @32: (-1.5, -1) -> 0        lr b-c @64: (-5, -2.25) -> 0
#   bs @a: (-4, -0.5) -> 0             bs @b: gap diff 0.25: not counted     bs @c: (-3, -1) -> 0
# 7 of 9 pairs counted, mean sign-error 1.5 / 7.
# Environments: (lr, a, b) 1 [mean |gap diff| (1 + 0.25) / 2 = 0.625 < 0.7071: not qualifying],
# (lr, a, c) 0.25 [2.25: qualifies], (lr, b, c) 0 [1.625: qualifies],
# (bs, 32, 64) 0 [(0.5 + 0.25 + 1) / 3 = 0.583: not qualifying].
# Quantiles of [0, 0, 0.25, 1]: median 0.125, 0.9 -> 0.25 + 0.7 * 0.75 = 0.775.
# Worst: 0.25 at (lr, a, c); the unqualified (lr, a, b) with 1 is left out.
SIGN_CELLS = {
    ("a", "32"): (1, 1),
    ("b", "32"): (0.5, 2),
    ("c", "32"): (2, 3),
    ("a", "64"): (5, 1.5),
    ("b", "64"): (0, 1.75),
    ("c", "64"): (5, 4),
}


def test_sign_error_counts_only_pairs_above_the_noise_floor():
    s = v.sign_errors(table(GRID, SIGN_CELLS), "m", GAP)
    assert s["s2"] == pytest.approx(0.125) and s["df"] == 6
    assert s["floor"] == pytest.approx(math.sqrt(0.125)) and s["seeds"] == 2
    assert (s["pairs"], s["pairs_counted"]) == (9, 7)
    assert s["mean"] == pytest.approx(1.5 / 7)
    envs = {(e["axis"], *e["values"]): e for e in s["environments"]}
    assert envs["lr", "a", "b"]["pairs_counted"] == 1 and envs["bs", "32", "64"]["pairs"] == 3
    assert {k: e["sign_error"] for k, e in envs.items()} == {
        ("lr", "a", "b"): 1.0,
        ("lr", "a", "c"): 0.25,
        ("lr", "b", "c"): 0.0,
        ("bs", "32", "64"): 0.0,
    }
    assert envs["lr", "a", "b"]["mean_abs_gap_difference"] == pytest.approx(0.625)


def test_sign_error_quantiles_and_the_worst_qualifying_environment():
    s = v.sign_errors(table(GRID, SIGN_CELLS), "m", GAP)
    assert s["quantiles"] == {"0.5": pytest.approx(0.125), "0.9": pytest.approx(0.775)}
    assert {(e["axis"], *e["values"]) for e in s["environments"] if e["qualifies"]} == {
        ("lr", "a", "c"),
        ("lr", "b", "c"),
    }
    assert s["worst"] == pytest.approx(0.25)
    assert s["worst_environment"] == {"axis": "lr", "values": ["a", "c"]}
    # A tie in the measure counts 1/2; a measure ordering every counted pair right scores 0.
    assert v.pair_sign_error(0.0, -2.5) == 0.5 and v.pair_sign_error(-1, -2) == 0.0
    assert v.pair_sign_error(1, -2) == 1.0


def test_with_noisier_seeds_fewer_pairs_clear_the_floor():
    # Seed offsets of +-1: s2 = 2, floor = sqrt(2 / 2 + 2 / 2) = 1.414. Counted: lr a-c @32 (gap
    # diff 2, error 0), lr a-c @64 (2.5, a tie: 1/2), lr b-c @64 (2.25, 0); mean 1/6. No
    # environment's mean gap difference clears twice the floor (2.83): no worst case.
    s = v.sign_errors(table(GRID, SIGN_CELLS, seeds=(1.0, -1.0)), "m", GAP)
    assert s["s2"] == pytest.approx(2.0) and s["floor"] == pytest.approx(math.sqrt(2))
    assert s["pairs_counted"] == 3 and s["mean"] == pytest.approx(1 / 6)
    assert s["worst_environment"] is None and math.isnan(s["worst"])
    assert s["environments_qualifying"] == 0


def test_the_floor_is_the_sd_of_a_difference_of_two_means_of_n_seeds():
    # Three seeds at mean -0.5, 0, +0.5: each configuration's squared deviations sum to 0.5 on
    # 2 degrees of freedom, s2 = 0.25; the floor of two means of 3 seeds is sqrt(2 * 0.25 / 3) =
    # 0.408 (not sqrt(s2) = 0.5): a gap difference of 0.45 clears it.
    t = table({"lr": ("a", "b")}, {("a",): (1, 1.0), ("b",): (2, 1.45)}, seeds=(0.5, 0.0, -0.5))
    s = v.sign_errors(t, "m", GAP)
    assert s["s2"] == pytest.approx(0.25) and s["df"] == 4 and s["seeds"] == 3
    assert s["floor"] == pytest.approx(math.sqrt(2 * 0.25 / 3))
    assert (s["pairs"], s["pairs_counted"], s["mean"]) == (1, 1, 0.0)
    assert v.noise_floor(t, GAP)["floor"] == pytest.approx(math.sqrt(1 / 6))


# --------------------------------------------------------------------------------------------
# noise ratio


def test_noise_ratio_is_pooled_seed_sd_over_the_sd_of_configuration_means():
    axes = {"lr": ("a", "b"), "bs": ("32", "64")}
    cells = {("a", "32"): (1, 1), ("b", "32"): (2, 1), ("a", "64"): (3, 1), ("b", "64"): (4, 1)}
    # The measure's seeds are mean +- 0.5: pooled variance (0.25 + 0.25) / 1 = 0.5.
    n = v.noise_ratio(table(axes, cells, measure_noise=0.5), "m")
    assert n["within_sd"] == pytest.approx(math.sqrt(0.5))
    assert n["between_sd"] == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert n["ratio"] == pytest.approx(math.sqrt(0.5) / statistics.stdev([1, 2, 3, 4]))
    # A log field is judged on the log scale.
    log = v.noise_ratio(table(axes, cells, measure_noise=0.5), "m", log=True)
    logs = [[math.log(m - 0.5), math.log(m + 0.5)] for m in (1, 2, 3, 4)]
    within = sum((a - b) ** 2 / 2 for a, b in logs) / 4
    assert log["scale"] == "log"
    assert log["within_sd"] == pytest.approx(math.sqrt(within))
    assert log["between_sd"] == pytest.approx(statistics.stdev([(a + b) / 2 for a, b in logs]))


# --------------------------------------------------------------------------------------------
# criterion, refusals, the whole result


def test_the_criterion_says_which_measures_validate_and_by_how_much():
    t = table(GRID, SIGN_CELLS)
    fields = {"m": Field("m"), "absent_one": Field("absent_one", log=True)}
    r = v.validate_table(t, fields, n_resamples=100, seed=0)
    assert r["absent"] == ["absent_one"] and r["measures"]["m"]["present"] is True
    verdict = r["verdicts"]["m"]
    psi = r["results"]["m"][GAP]["granulated"]["Psi"]
    assert verdict["checks"]["psi"]["margin"] == pytest.approx(psi - 0.2)
    assert verdict["checks"]["sign_error"]["value"] == pytest.approx(1.5 / 7)
    assert verdict["checks"]["sign_error"]["margin"] == pytest.approx(0.4 - 1.5 / 7)
    low = r["results"]["m"][GAP]["kendall"]["all"]["ci_low"]
    assert verdict["checks"]["tau_ci_low"]["margin"] == pytest.approx(low)
    assert verdict["validates"] == (psi >= 0.2 and low > 0 and 1.5 / 7 < 0.4)
    # A stricter declared sign-error threshold fails it, with a negative margin.
    strict = v.Criterion.from_study({"validate": {"sign_error": 0.1}})
    r2 = v.validate_table(t, {"m": Field("m")}, criterion=strict, n_resamples=100)
    check = r2["verdicts"]["m"]["checks"]["sign_error"]
    assert not check["passes"] and check["margin"] == pytest.approx(0.1 - 1.5 / 7)
    assert not r2["verdicts"]["m"]["validates"]
    assert "m (" in r2["paragraph"] and "Not validated" in r2["paragraph"]
    assert "Not in the analysis" not in r2["paragraph"]


def test_a_measure_that_orders_the_grid_validates_and_ranks_first():
    axes = {"lr": ("a", "b", "c"), "bs": ("32", "64")}
    cells = {(lr, bs): (i + 3 * j, i + 3 * j) for i, lr in enumerate("abc")
             for j, bs in enumerate(("32", "64"))}  # fmt: skip
    rows = list(table(axes, cells).rows)
    rows = [v.Row(r.run, r.seed, r.config, {**r.values, "anti": -r.values["m"]}) for r in rows]
    t = v.Table(axes, tuple(rows))
    r = v.validate_table(t, {"anti": Field("anti"), "m": Field("m")}, n_resamples=200)
    assert r["ranking"] == ["m", "anti"]
    assert r["verdicts"]["m"]["validates"] and not r["verdicts"]["anti"]["validates"]
    assert r["results"]["m"][GAP]["granulated"]["Psi"] == pytest.approx(1.0)
    assert r["results"]["m"][GAP]["sign_error"]["mean"] == 0.0
    assert r["paragraph"].startswith(
        "Against gap_accuracy over 12 runs (6 configurations x 2 seeds; axes: lr (3 values), "
        "bs (2 values); 12 runs fit their training set): m predicts the gap (Psi 1.00 >= 0.2"
    )
    assert "Not validated: anti (Psi -1.00 < 0.2" in r["paragraph"]


def test_criterion_from_study_json_and_its_refusals():
    c = v.Criterion.from_study({"validate": {"psi": 0.3, "target": "gap_loss"}})
    assert (c.psi, c.tau_ci_low, c.sign_error, c.target) == (0.3, 0.0, 0.4, "gap_loss")
    assert v.Criterion.from_study({}) == v.Criterion()
    for bad, words in (
        ({"psy": 0.2}, "unknown key 'psy'"),
        ({"psi": "high"}, "psi must be a number"),
        ({"target": "test_acc"}, "target must be one of gap_accuracy, gap_loss"),
    ):
        with pytest.raises(LandscapeError, match=words) as err:
            v.Criterion.from_study({"validate": bad})
        assert "\n" not in str(err.value)


def test_refusals_no_axis_and_one_seed_in_one_sentence():
    flat = v.Table({}, (v.Row("r0", 0, (), {"m": 1.0, GAP: 0.1}),
                        v.Row("r1", 1, (), {"m": 2.0, GAP: 0.2})))  # fmt: skip
    with pytest.raises(LandscapeError, match="varies no training hyperparameter") as err:
        v.validate_table(flat, {"m": Field("m")})
    assert "\n" not in str(err.value) and str(err.value).count(". ") == 0
    single = table(GRID, CELLS, seeds=(0.0,))
    with pytest.raises(LandscapeError, match="every configuration of the study has one seed"):
        v.validate_table(single, {"m": Field("m")})
    # One configuration short of a second seed is refused too, naming it.
    rows = [r for r in table(GRID, CELLS).rows if r.run != "b-64-s1"]
    with pytest.raises(LandscapeError, match="configuration lr=b, bs=64 has one seed"):
        v.check_design(v.Table(GRID, tuple(rows)))


# --------------------------------------------------------------------------------------------
# study.json -> table


def _study(methods, vary, seeds=(0, 1)):
    from okdph.sweep import Study

    study = Study("demo", "matched", tuple(methods), tuple(seeds), vary=vary)
    return study.to_dict()


def test_axes_and_configurations_come_from_study_json():
    study = _study(
        ["okdph", "okdph:mode=code", "dml"],
        {"init": ("shared", "independent"), "epochs": ("3",)},
    )
    axes = v.study_axes(study)
    assert axes == {
        "method": ("okdph", "okdph:mode=code", "dml"),
        "init": ("shared", "independent"),
    }  # epochs has one value: not an axis
    configs = {r["name"]: v.run_configuration(study, r, axes) for r in study["runs"]}
    assert configs["okdph-epochs_3-init_shared-s0"] == ("okdph", "shared")
    assert configs["okdph-mode_code-epochs_3-init_independent-s1"] == (
        "okdph:mode=code",
        "independent",
    )
    assert configs["dml-epochs_3-init_independent-s0"] == ("dml", "independent")
    # One method and nothing varied: no axis (refused by check_design).
    assert v.study_axes(_study(["independent"], {"epochs": ("3",)})) == {}


def test_build_table_averages_each_run_s_students():
    study = _study(["independent"], {"optim.lr": ("0.1", "0.2")})
    records = []
    for r in study["runs"]:
        lr = 0.1 if "lr_0.1" in r["name"] else 0.2
        records.append(
            RunRecord(
                path=Path("/") / r["name"],
                name=r["name"],
                method="independent",
                seed=r["seed"],
                epoch=2,
                kinds={"student_0": "students", "student_1": "students", "ens": "ensemble"},
                values={
                    "student_0": {"lambda_max": 10 * lr, GAP: lr},
                    "student_1": {"lambda_max": 30 * lr, GAP: lr + 0.1},
                    "ens": {"lambda_max": 1000.0},
                },
                settings={},
                definitions={},
                config={"data": "digits"},
            )
        )
    t = v.build_table(study, records)
    assert t.axes == {"optim.lr": ("0.1", "0.2")}
    row = next(r for r in t.rows if r.run == "independent-lr_0.2-s1")
    assert row.config == ("0.2",) and row.seed == 1
    assert row.values["lambda_max"] == pytest.approx(4.0)  # (2 + 6) / 2, the ensemble left out
    assert row.values[GAP] == pytest.approx(0.25)
    fields = v.validation_fields()
    assert "lambda_max" in fields and "weight_norm" in fields and "inverse_margin" in fields
    assert GAP not in fields and "test_acc" not in fields
    assert all(f.correlate for n, f in fields.items() if n not in v.BASELINES)
