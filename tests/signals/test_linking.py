"""Persona linking, hub cap, template clusters, cluster risk and bad input (signals/linking.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from signals.linking import SLOT, LinkConfig, Linker, LinkError, link_columns, link_frame, summary

BASE_A = (
    "hey guys new in town sweet and discreet upscale companion available all night long for "
    "generous gentlemen only no rush ever call {phone} ask for {name}"
)
BASE_B = (
    "looking for a hard working warehouse associate to join our friendly team full time position "
    "with benefits apply today by sending your resume to {phone} thanks"
)


def _corpus() -> pd.DataFrame:
    rows = [
        BASE_A.format(phone="415-555-0101", name="Kim"),
        BASE_A.format(phone="415 555 0102", name="Ana"),  # same template, other phone
        BASE_A.format(phone="(415) 555-0101", name="Lia"),  # same phone as row 0, written differently
        BASE_B.format(phone="212-555-0199"),
        "totally different text about a bicycle for sale cheap pickup only call 212.555.0199",  # phone of row 3
        BASE_B.format(phone="646-555-0123"),
        "short",
    ]
    return pd.DataFrame(
        {
            "text": rows,
            "score_adult_services": [0.9, 0.8, 0.95, 0.1, 0.2, 0.05, 0.0],
            "score_scam": [0.0, 0.1, 0.0, 0.7, 0.1, 0.6, 0.0],
            "flagged": [True, True, True, True, False, True, False],
            "city": ["sf", "sf", "la", "ny", "ny", "ny", None],
            "posted_at": pd.date_range("2026-01-01", periods=7, freq="D", tz="UTC"),
        }
    )


def test_personas_and_templates():
    df = _corpus()
    res = link_frame(df, LinkConfig(similarity=0.5), chunk_size=3)  # chunks cut across clusters
    p, t = res.persona_id, res.template_id
    assert p[0] == p[2] == 0 and p[1] != p[0]  # shared phone in two written forms
    assert p[3] == p[4] == 3 and p[5] != p[3]
    assert t[0] == t[1] == t[2] == 0 and res.template_size[0] == 3
    assert t[3] == t[5] == 3 and t[4] == 4 and res.template_size[4] == 1
    assert t[6] == 6  # too short: its own cluster
    contacts = [json.loads(c) for c in res.contacts]
    assert [c["value"] for c in contacts[2]] == ["+14155550101"]
    assert contacts[6] == []
    # ids do not depend on the chunk size
    res2 = link_frame(df, LinkConfig(similarity=0.5), chunk_size=100)
    assert np.array_equal(res2.persona_id, p) and np.array_equal(res2.template_id, t)


def test_template_text_has_shared_words_and_slots():
    res = link_frame(_corpus(), LinkConfig(similarity=0.5))
    row = res.clusters[(res.clusters["kind"] == "template") & (res.clusters["cluster_id"] == 0)].iloc[0]
    assert "upscale companion" in row["template"] and "<phone>" in row["template"]
    assert SLOT in row["template"]  # the names differ
    segs = json.loads(row["template_segments"])
    slot_values = [v for s in segs if "slot" in s for v in s["slot"]]
    assert "<name>" not in slot_values or len(segs) > 1
    assert any("text" in s for s in segs) and any("slot" in s for s in segs)


def test_cluster_risk_columns_and_ranking():
    res = link_frame(_corpus(), LinkConfig(similarity=0.5))
    c = res.clusters
    tpl = c[(c["kind"] == "template") & (c["cluster_id"] == 0)].iloc[0]
    assert tpl["size"] == 3
    assert tpl["score_max"] == pytest.approx(0.95, abs=1e-6)
    assert tpl["score_mean"] == pytest.approx((0.9 + 0.8 + 0.95) / 3, abs=1e-6)
    assert tpl["share_flagged"] == 1.0 and tpl["n_places"] == 2 and tpl["n_contacts"] == 2
    assert tpl["first_seen"] < tpl["last_seen"]
    per = c[(c["kind"] == "persona") & (c["cluster_id"] == 3)].iloc[0]
    assert per["share_flagged"] == 0.5 and per["n_contacts"] == 1
    assert list(c["rank"]) == list(range(1, len(c) + 1))
    assert c["priority"].is_monotonic_decreasing


def test_identical_text_links_without_contacts():
    text = "the same long advertisement text without any contact in it at all, posted twice"
    res = link_frame(pd.DataFrame({"text": [text, "other words entirely " * 3, text]}))
    assert res.persona_id[0] == res.persona_id[2] == 0 and res.persona_id[1] == 1


def test_hub_cap_stops_a_shared_number_and_is_reported():
    rng = random.Random(13)
    texts = []
    for i in range(100):
        words = " ".join(
            rng.choice(["rose", "blue", "sky", "cat", "sea", "tree", "car", "sun"]) for _ in range(12)
        )
        hub = " call 800-555-0000" if i % 10 < 3 else ""  # 30% of the corpus shares one number
        texts.append(f"{words} {i} own line 415-555-{i:04d}{hub}")
    res = link_frame(pd.DataFrame({"text": texts}), LinkConfig(hub_cap=20, link_identical_text=False))
    assert len(np.unique(res.persona_id)) == 100  # nothing merged through the hub
    assert res.report["hub_contacts_cut"] == 1 and res.report["largest_hub"] == 30
    assert res.report["hub_links_cut"] == 30
    assert all("+18005550000" in res.contacts[i] for i in range(100) if i % 10 < 3)  # kept in the rows
    assert "hub cap 20: 1 contact" in summary(res)
    merged = link_frame(pd.DataFrame({"text": texts}), LinkConfig(hub_cap=50, link_identical_text=False))
    assert len(np.unique(merged.persona_id)) == 100 - 30 + 1


def test_bad_input_each_row_has_an_outcome():
    many = " ".join(f"(415) 555-{i:04d}" for i in range(10_000))
    texts = [
        None,
        "",
        "   ",
        12.5,
        "x" * 1_000_000 + " call 415-555-0123",
        many,
        "ok call 415-555-0123 now please",
    ]
    res = link_frame(pd.DataFrame({"text": texts}))
    out = link_columns(res)
    assert len(out) == len(texts) and list(out.columns) == [
        "contacts",
        "persona_id",
        "template_id",
        "template_size",
    ]
    assert res.report["ads_without_text"] == 4
    assert res.report["ads_over_contact_cap"] == 1
    assert len(json.loads(res.contacts[5])) == 10_000  # kept, just not used for linking
    assert res.persona_id[4] == res.persona_id[6] == 4  # the 1 MB ad still links by its phone
    assert res.persona_id[5] == 5


def test_bad_config_and_missing_column_are_clear_errors():
    with pytest.raises(LinkError, match="similarity"):
        Linker(LinkConfig(similarity=0))
    with pytest.raises(LinkError, match="hub_cap"):
        Linker(LinkConfig(hub_cap=1))
    with pytest.raises(LinkError, match="region"):
        Linker(LinkConfig(region="XX"))
    with pytest.raises(LinkError, match="text column 'body'"):
        link_frame(pd.DataFrame({"text": ["a"]}), LinkConfig(text_column="body"))


def test_minhash_matches_datasketch():
    from datasketch import MinHash

    lk = Linker(LinkConfig(num_perm=32, seed=3))
    hashes = np.array([5, 17, 123456789, 4_000_000_000], dtype=np.uint64)
    ours = lk.perm.signatures(hashes, np.array([0, 4]))[0]
    ref = MinHash(num_perm=32, seed=3, hashfunc=int)
    ref.update_batch(hashes.tolist())
    assert np.array_equal(ours.astype(np.uint64), ref.hashvalues)


def test_empty_input():
    res = link_frame(pd.DataFrame({"text": pd.Series([], dtype=object)}))
    assert len(res.persona_id) == 0 and len(res.clusters) == 0


def test_two_worker_processes_give_identical_output():
    df = pd.concat([_corpus()] * 3, ignore_index=True)
    one = link_frame(df, LinkConfig(similarity=0.5), chunk_size=4)
    two = link_frame(df, LinkConfig(similarity=0.5, workers=2), chunk_size=4)
    assert np.array_equal(one.persona_id, two.persona_id) and np.array_equal(one.template_id, two.template_id)
    assert one.contacts == two.contacts and one.report["contacts"] == two.report["contacts"] > 0
    pd.testing.assert_frame_equal(one.clusters, two.clusters)


def _phone(i: int) -> str:
    return f"415-{200 + i // 10_000:03d}-{i % 10_000:04d}"


def test_personas_chained_by_single_links_are_split_at_the_bound():
    """10,000 ads where ad i shares one phone with ad i+1 (recycled numbers make such chains): no
    persona above the bound, the chain cut in few places, pairs that share two contacts kept."""
    n = 10_000
    texts = [f"call {_phone(i)} or {_phone(i + 1)}" for i in range(n)]
    strong = list(range(5, n - 1, 97))
    for i in strong:  # ads i and i+1 also share an e-mail: two independent links
        texts[i] += f" mail kim{i}@mail.com"
        texts[i + 1] += f" mail kim{i}@mail.com"
    cfg = LinkConfig()
    res = link_frame(pd.DataFrame({"text": texts}), cfg)
    p = res.persona_id
    assert np.bincount(p).max() <= cfg.max_persona
    assert all(p[i] == p[i + 1] for i in strong)
    assert (p[:-1] == p[1:]).mean() >= 0.9  # split, not shattered
    assert res.report["personas_split"] == 1
    (split,) = res.report["persona_splits"]
    assert split["ads"] == n and split["parts"] == len(np.unique(p)) and split["component"] == 0
    assert "1 persona component(s) above" in summary(res)
    from signals.report import render_report

    page = render_report(res.clusters, res.report)
    assert "split" in page and str(n) in page


def test_personas_under_the_bound_are_not_split():
    n = LinkConfig().max_persona
    texts = [f"call {_phone(i)} or {_phone(i + 1)}" for i in range(n)]
    res = link_frame(pd.DataFrame({"text": texts}))
    assert len(np.unique(res.persona_id)) == 1 and res.report["personas_split"] == 0
