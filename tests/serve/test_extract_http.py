"""`"extract": true` on /v1/classify returns each result's contacts."""


def test_http_classify_extract_returns_contacts(thread_server):
    import httpx

    text = "new girl call 4l5 555 O123 or kim at gmail dot com"
    with thread_server() as srv:
        r = httpx.post(
            f"{srv.base}/v1/classify", json={"input": [text, "no contact"], "extract": True}, timeout=30
        )
        plain = httpx.post(f"{srv.base}/v1/classify", json={"input": text}, timeout=30)
        bad = httpx.post(f"{srv.base}/v1/classify", json={"input": text, "extract": "yes"}, timeout=30)
        spec = httpx.get(f"{srv.base}/openapi.json", timeout=30).text
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert [(c["type"], c["value"]) for c in first["contacts"]] == [
        ("phone", "+14155550123"),
        ("email", "kim@gmail.com"),
    ]
    assert text[first["contacts"][0]["start"] : first["contacts"][0]["end"]] == "4l5 555 O123"
    assert second["contacts"] == []
    assert "contacts" not in plain.json()["results"][0]
    assert bad.status_code == 422 and "extract" in bad.json()["error"]["message"] and text not in bad.text
    assert '"extract"' in spec and "ContactItem" in spec
