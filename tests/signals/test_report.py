"""The HTML cluster report: escaped, self-contained, and rendered by headless Chromium (screenshot)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from signals.linking import LinkConfig, link_frame
from signals.report import render_report, write_report

TEMPLATE = (
    "new in town {name} sweet and discreet upscale companion available all night long for generous "
    "gentlemen only no rush call {phone} {extra}"
)


def _clusters():
    now = datetime.now(UTC)
    names = ["Kim", "Ana", "Lia", "Mia"]
    extras = ["<script>alert(1)</script>", "& more", '"quoted"', "it's me"]
    rows = [
        TEMPLATE.format(name=n, phone=f"415-555-01{i:02d}", extra=e)
        for i, (n, e) in enumerate(zip(names, extras, strict=True))
    ]
    rows += [
        "second persona text about massage spa open late call 212-555-0199 ask for Jo please",
        "completely other words for the same phone, available today 212.555.0199 thanks a lot",
    ]
    df = pd.DataFrame(
        {
            "text": rows,
            "score_adult_services": [0.9, 0.8, 0.7, 0.95, 0.3, 0.2],
            "city": ["sf", "sf", "la", "la", "ny", "ny"],
            "posted_at": [now - timedelta(days=d) for d in range(6)],
        }
    )
    return link_frame(df, LinkConfig(similarity=0.5))


def _chromium() -> str | None:
    return next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


def test_report_is_escaped_and_self_contained():
    res = _clusters()
    page = render_report(res.clusters, res.report, top=10)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"""(?:src|href)\s*=|<link|@import|url\(|https?://""", page)
    assert page.count('class="card"') == len(res.clusters) == 2
    assert 'mark class="slot"' in page and "template" in page and "persona" in page
    assert "415" not in page and "0199" not in page  # contact values are never shown
    with pytest.raises(ValueError):
        render_report(res.clusters, top=0)


def test_report_in_headless_chromium(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    res = _clusters()
    page = write_report(tmp_path / "out.report.html", res.clusters, res.report)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1000,700",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000  # a rendered page, not a blank image
