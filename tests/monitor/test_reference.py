"""The reference is found through the registered model's MLflow run (its validation dataset input and
recorded fingerprint), and refused when it is missing or not the data the model was calibrated on;
the HTML report renders in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from adrisk.cli import main
from model.artifact import load_meta, save_meta
from model.schema import LabelSchema
from tests.conftest import DATA_DIR, LABELS

N = 120


@pytest.fixture()
def registered(tiny_artifact, tmp_path):
    """A registered copy of the tiny model whose run records ``validation.jsonl`` (120 rows) as its
    validation data, with that file's fingerprint in ``adrisk.json``, as ``adrisk train`` leaves it."""
    from model.registry import log_pyfunc_model
    from training.config import DataConfig
    from training.data import fingerprint, prepare_frame, read_table

    rows = pd.read_json(DATA_DIR / "validation.jsonl", lines=True).sample(frac=1.0, random_state=2)
    val = tmp_path / "data" / "validation.jsonl"
    val.parent.mkdir()
    rows[:N].to_json(val, orient="records", lines=True, force_ascii=False)
    rows[N : 2 * N].to_json(tmp_path / "current.jsonl", orient="records", lines=True, force_ascii=False)
    frame, _ = prepare_frame(read_table(val), DataConfig(path=str(val)), LabelSchema(labels=LABELS), str(val))
    fp = fingerprint(frame, LABELS)
    art = shutil.copytree(tiny_artifact, tmp_path / "model")
    save_meta(art, load_meta(art).model_copy(update={"data_fingerprint": {"validation": fp}}))
    with mlflow.start_run():
        mlflow.log_params({"data.text_column": "text", "data.labels_column": "labels"})
        ds = mlflow.data.from_pandas(
            frame.drop(columns=["text"]), source=str(val), name=f"validation-{fp[:12]}"
        )
        mlflow.log_input(ds, context="validation")
        log_pyfunc_model(art, "risky-ads")
    return tmp_path, val


def _run(tmp_path: Path, *extra: str) -> int:
    return main(["monitor", "--model", "models:/risky-ads/1", "--current", str(tmp_path / "current.jsonl"),
                 "--threads", "1", "--mlflow", "off", *extra])  # fmt: skip


def test_reference_found_through_the_model_run(registered, capsys):
    tmp_path, val = registered
    rc = _run(tmp_path, "--report", str(tmp_path / "rep"))
    assert rc in (0, 10, 11), capsys.readouterr().err
    import json

    v = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    assert v["reference"]["path"] == str(val) and v["reference"]["found"].startswith("model run")
    assert v["reference"]["rows"] == N and v["model"]["version"] == "1"
    _screenshot_if_chromium(tmp_path / "rep" / "report.html", tmp_path)


@pytest.mark.parametrize("change, message", [("edit", "fingerprint"), ("delete", "does not exist here")])
def test_reference_changed_or_gone_is_refused(registered, change, message, capsys):
    tmp_path, val = registered
    if change == "edit":
        lines = val.read_text().splitlines()
        val.write_text("\n".join(lines[1:]) + "\n")
    else:
        val.unlink()
    rc = _run(tmp_path, "--verdict", str(tmp_path / "v.json"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "reference not found" in err[0] and message in err[0]
    assert "--reference" in err[0] and not (tmp_path / "v.json").exists()


def _chromium() -> str | None:
    return next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


def _screenshot_if_chromium(page: Path, tmp_path: Path) -> None:
    """The report renders in headless Chromium (skipped where Chromium is not installed)."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        timeout=90,
    )
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-500:]
    assert 'id="status"' in dom.stdout.decode() and "<img" in dom.stdout.decode()
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1100,1400", page.as_uri()],
        capture_output=True,
        timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page with plots
