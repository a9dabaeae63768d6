"""``adrisk link --engine spark`` on a real local Spark (local[2]): the same output files as the local
linker on synthetic ads with seeded obfuscation, rows without text kept, one Spark run for all checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine is the optional extra: pip install "adrisk[spark]"')

from batch.spark import get_spark  # noqa: E402
from bench.link_spark import synthetic_ads  # noqa: E402
from bench.persona_agreement import pair_counts  # noqa: E402

pytestmark = pytest.mark.slow  # a JVM and Spark jobs: seconds each

LINK = ["contacts", "persona_id", "template_id", "template_size"]


def _phone(i: int) -> str:
    return f"415-{300 + i // 10_000:03d}-{i % 10_000:04d}"


def _corpus() -> pd.DataFrame:
    """2,000 synthetic scored ads plus a 120-ad chain of single shared numbers (a persona component
    above ``max_persona``, split by the size-constrained single linkage) and rows without text."""
    df = synthetic_ads(2000, seed=11)
    chain = pd.DataFrame({"text": [f"new in town call {_phone(i)} or {_phone(i + 1)}" for i in range(120)]})
    chain["score_adult_services"], chain["score_scam"], chain["flagged"] = 0.7, 0.1, True
    df = pd.concat([df, chain], ignore_index=True)
    df.loc[[3, 500, 1700], "text"] = [None, "", None]
    df["id"] = np.arange(len(df))
    df["error"] = np.where(df["text"].isna(), "missing_text", None)
    return df


@pytest.fixture(scope="module")
def spark():
    session = get_spark("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def linked(spark, tmp_path_factory):
    """The same scored file linked by `adrisk link` and by `adrisk link --engine spark`."""
    from adrisk.cli import main

    work = tmp_path_factory.mktemp("spark-link")
    df = _corpus()
    local, spark_out = work / "local.parquet", work / "spark.parquet"
    df.to_parquet(local)
    df.to_parquet(spark_out)
    assert main(["link", str(local)]) == 0
    assert main(["link", str(spark_out), "--engine", "spark", "--master", "local[2]"]) == 0
    return work, df


def test_spark_link_writes_what_the_local_linker_writes(linked):
    work, df = linked
    local, spark_out = pd.read_parquet(work / "local.parquet"), pd.read_parquet(work / "spark.parquet")
    assert list(spark_out.columns) == list(local.columns) == [*df.columns, *LINK]
    for col in ("persona_id", "template_id"):
        precision, recall, pairs, _ = pair_counts(spark_out[col], local[col])
        assert precision >= 0.99 and recall >= 0.99 and pairs > 1000, col
    # stronger than the bar: the same ids (smallest row), sizes and contacts on every row
    pd.testing.assert_frame_equal(spark_out, local)
    assert local["persona_id"].value_counts().max() <= 50  # the chain was split at the bound...
    assert local["persona_id"].iloc[-120:].nunique() > 1  # ...by both engines alike (frames equal)
    c_local = pd.read_parquet(work / "local.clusters.parquet")
    c_spark = pd.read_parquet(work / "spark.clusters.parquet")
    assert list(c_spark.columns) == list(c_local.columns) and len(c_local) > 100
    pd.testing.assert_frame_equal(c_spark, c_local, check_dtype=False, rtol=1e-6)
    page = (work / "spark.parquet.report.html").read_text(encoding="utf-8")
    assert page.count('class="card"') >= 50 and "split" in page


def test_rows_without_text_keep_their_row_and_error(linked):
    work, df = linked
    out = pd.read_parquet(work / "spark.parquet")
    for row in (3, 500, 1700):
        assert out.loc[row, "id"] == row and out.loc[row, "persona_id"] == row
        assert out.loc[row, "template_size"] == 1 and json.loads(out.loc[row, "contacts"]) == []
    assert out.loc[[3, 1700], "error"].tolist() == ["missing_text", "missing_text"]
    assert out["id"].tolist() == df["id"].tolist()


def test_persona_only_clusters_and_rows_without_text(spark):
    """No template cluster at all (the table still gets its template columns) and text-less rows."""
    from batch.spark_link import link_chunks_spark
    from signals.linking import LinkConfig, link_frame

    df = pd.DataFrame(
        {"text": ["call 415-555-0101 now", "call 415 555 0101 please \ud83d", None, "", 42]}
    )  # a lone surrogate (a cut emoji) links like any text
    local = link_frame(df, LinkConfig())
    out = link_chunks_spark(lambda: iter([df]), LinkConfig(), spark=spark)
    assert out.persona_id.tolist() == local.persona_id.tolist() == [0, 0, 2, 3, 4]
    assert out.template_id.tolist() == local.template_id.tolist() and out.contacts == local.contacts
    pd.testing.assert_frame_equal(out.clusters, local.clusters, check_dtype=False)
    assert out.report["ads_without_text"] == local.report["ads_without_text"] == 3


def test_score_link_engine_spark_links_with_the_spark_linker(tmp_path, monkeypatch):
    """`score --link --engine spark` hands the link pass to `link_chunks_spark` with the master
    (checked without a JVM: the Spark linker is replaced by the local one, which it equals)."""
    import batch.spark_link
    from adrisk.cli import _link, build_parser
    from signals.linking import link_chunks

    calls = []

    def fake(make_chunks, config, *, master=None, **_):
        calls.append(master)
        return link_chunks(make_chunks, config)

    monkeypatch.setattr(batch.spark_link, "link_chunks_spark", fake)
    out = tmp_path / "scored.parquet"
    _corpus().head(50).to_parquet(out)
    args = build_parser().parse_args(
        ["score", "--model", "m", "--input", "in.csv", "--output", str(out), "--link", "--engine", "spark",
         "--master", "local[3]"]
    )  # fmt: skip
    _link(args)
    assert calls == ["local[3]"] and "persona_id" in pd.read_parquet(out).columns
