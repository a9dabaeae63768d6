"""The verdict's rules, exit codes and file: which signals make a window drifted, when labels are
needed, and when ``retrain --when-stale`` trains."""

from __future__ import annotations

import json

import pytest

from monitor.verdict import (
    EXIT_CODES,
    MonitorSettings,
    Status,
    Verdict,
    VerdictError,
    decide,
    load_verdict,
    prevalence_changed,
    retrain_advised,
    write_verdict,
)


def _drift(auc=0.5, p=0.5, novel=0.0, psi=0.01):
    return {
        "text": {"auc": auc, "threshold": 0.55, "drifted": auc > 0.55},
        "embedding": {
            "p_value": p,
            "alpha": 0.01,
            "drifted": p < 0.01,
            "novel_share": novel,
            "novel_quantile": 0.99,
        },
        "scores": {"scam": {"psi": psi, "drifted": psi > 0.25}},
    }


def _prev(changed=False):
    return {
        "scam": {"em": 0.1, "ratio": 2.5, "ratio_interval": [2.0, 3.0], "reference": 0.04, "changed": changed}
    }


def _perf(dropped=False):
    m = {"estimated": 0.7, "reference_estimated": 0.9, "alert_band": 0.05, "dropped": dropped}
    return {"scam": {"precision": m, "recall": {**m, "dropped": False}}}


@pytest.mark.parametrize(
    "drift, prev, perf, status",
    [
        (_drift(), _prev(), _perf(), Status.STABLE),
        (_drift(auc=0.7), _prev(), _perf(), Status.RETRAIN),
        (_drift(p=0.001), _prev(), _perf(), Status.RETRAIN),
        (_drift(psi=0.4), _prev(), _perf(), Status.RETRAIN),
        (_drift(), _prev(changed=True), _perf(), Status.RETRAIN),
        (_drift(), _prev(), _perf(dropped=True), Status.RETRAIN),
        (_drift(auc=0.9, novel=0.5), _prev(), _perf(), Status.LABELS_NEEDED),
        (_drift(novel=0.5), _prev(), _perf(), Status.STABLE),  # novelty alone is not drift
    ],
)
def test_decide(drift, prev, perf, status):
    got, reasons = decide(drift, prev, perf, MonitorSettings())
    assert got is status
    assert bool(reasons) is (status is not Status.STABLE)
    assert EXIT_CODES[got] == {Status.STABLE: 0, Status.RETRAIN: 10, Status.LABELS_NEEDED: 11}[status]


def test_prevalence_change_needs_the_whole_interval_beyond_the_factor():
    assert prevalence_changed([2.5, 3.5], 2.0)
    assert prevalence_changed([0.2, 0.45], 2.0)  # downwards too
    assert not prevalence_changed([1.9, 3.0], 2.0)  # large, but the interval reaches inside
    assert not prevalence_changed([0.5, 6.0], 2.0)  # large but within noise
    assert prevalence_changed([0.0, 0.05], 2.0)  # a label that vanished
    # the default factor, on what the shift suite's windows gave: a weak label's prevalence cut to
    # x0.3 (EM ratio 0.51) is a change; unshifted windows (their widest ratios) are not
    limit = MonitorSettings().prevalence_ratio
    assert prevalence_changed([0.32, 0.75], limit)
    assert not prevalence_changed([1.07, 1.75], limit)
    assert not prevalence_changed([1.02, 2.32], limit)


def _verdict(status: Status, version="3", name="risky-ads") -> Verdict:
    return Verdict(status=status, retrain=status is Status.RETRAIN, exit_code=EXIT_CODES[status],
                   reasons=["text: AUC"], model={"name": name, "version": version})  # fmt: skip


def test_retrain_advised_only_for_a_retrain_verdict_about_the_champion():
    assert retrain_advised(_verdict(Status.RETRAIN), "risky-ads", "3")[0]
    assert not retrain_advised(_verdict(Status.STABLE), "risky-ads", "3")[0]
    advised, why = retrain_advised(_verdict(Status.LABELS_NEEDED), "risky-ads", "3")
    assert not advised and "labels needed" in why
    with pytest.raises(VerdictError, match="@champion is version 4"):
        retrain_advised(_verdict(Status.RETRAIN), "risky-ads", "4")
    with pytest.raises(VerdictError, match="another"):
        retrain_advised(_verdict(Status.RETRAIN, name="another"), "risky-ads", "3")


def test_verdict_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "v.json"
    write_verdict(path, _verdict(Status.RETRAIN))
    assert load_verdict(path).status is Status.RETRAIN
    assert json.loads(path.read_text())["schema_version"] == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VerdictError, match="not an adrisk monitor verdict"):
        load_verdict(tmp_path / "bad.json")
    (tmp_path / "new.json").write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 99}))
    with pytest.raises(VerdictError, match="schema_version 99"):
        load_verdict(tmp_path / "new.json")
    with pytest.raises(VerdictError, match="not found"):
        load_verdict(tmp_path / "missing.json")
