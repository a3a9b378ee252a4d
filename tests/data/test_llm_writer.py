"""LLM writer against a real OpenAI-compatible HTTP server on 127.0.0.1, through the real ``openai`` client:
success + cache/resume, 429 then success, garbage then template fallback, timeouts; the key never shows."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from umedfast.boxes import parse_boxes
from umedfast.data import MAURecord
from umedfast.data.llm_writer import LLMWriter, validate_answer
from umedfast.data.templates import write_response

from _fake_llm import KEY, FakeLLM

@pytest.fixture
def server():
    s = FakeLLM()
    yield s
    s.close()


@pytest.fixture
def records(tmp_path):
    Image.fromarray(np.full((40, 50), 90, np.uint8), "L").save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 50), 30, np.uint8), "L").save(tmp_path / "b.png")
    mk = lambda rid, img, f: MAURecord(id=rid, image=str(tmp_path / img), source="nih", modality="X-ray",  # noqa
                                       findings=f, query="", response="", image_size=[50, 40])
    return [mk("r1", "a.png", [{"label": "nodule", "box_xyxy": [5.0, 5.0, 20.0, 25.0]}]),
            mk("r2", "b.png", [])]


def _writer(server, tmp_path, **kw):
    kw.setdefault("timeout", 5.0)
    kw.setdefault("concurrency", 2)
    return LLMWriter("fake-model", base_url=server.base_url, api_key=KEY, cache_dir=tmp_path / "cache",
                     backoff=0.01, **kw)


def test_success_cache_and_resume(server, records, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    w = _writer(server, tmp_path)
    out = w.write_all(records, progress=False)
    assert w.stats.llm_ok == 2 and w.stats.fallback == 0 and w.stats.requests == 4
    assert (w.stats.prompt_tokens, w.stats.completion_tokens) == (44, 28)
    assert "nodule" in out[0].response and parse_boxes(out[0].response) == [(0.1, 0.125, 0.4, 0.625)]
    assert "normal" in out[1].response and out[0].meta["writer"] == "llm" and out[0].query
    assert all(a == f"Bearer {KEY}" for a in server.auth)
    # the diagnosis request carried the image and the category + box
    first = [r for r in server.requests if isinstance(r["messages"][-1]["content"], list)]
    assert first and first[0]["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2
    # resume: a new writer answers from the cache without any request
    n = len(server.requests)
    w2 = _writer(server, tmp_path)
    again = w2.write_all([MAURecord(**{**r.to_dict(), "response": ""}) for r in records], progress=False)
    assert w2.stats.cached == 2 and len(server.requests) == n
    assert [r.response for r in again] == [r.response for r in out]
    assert KEY not in caplog.text and KEY not in repr(w) and KEY not in json.dumps(w.stats.as_dict())


def test_429_and_500_then_success(server, records, tmp_path):
    server.script = ["429", "500"]
    w = _writer(server, tmp_path, concurrency=1)
    w.write_all(records[:1], progress=False)
    assert w.stats.retries == 2 and w.stats.llm_ok == 1 and w.stats.fallback == 0


def test_garbage_then_template_fallback(server, records, tmp_path):
    server.script = ["ok", "garbage", "ok", "garbage"]  # two attempts, each: diagnosis ok, reflection garbage
    w = _writer(server, tmp_path, concurrency=1, attempts=2)
    r = w.write_all(records[:1], progress=False)[0]
    assert w.stats.invalid == 2 and w.stats.fallback == 1 and w.stats.llm_ok == 0
    assert r.response == write_response(r.findings, r.image_size, r.modality, key=r.id)
    assert r.meta["writer"] == "template-fallback" and "nodule" in r.meta["fallback_reason"]
    assert not list((tmp_path / "cache").rglob("*.json"))  # fallbacks are not cached: a rerun tries again


def test_timeout_retried_then_exhausted(server, records, tmp_path):
    server.script = ["sleep"]
    w = _writer(server, tmp_path, concurrency=1, timeout=0.3)
    w.write_all(records[:1], progress=False)
    assert w.stats.retries == 1 and w.stats.llm_ok == 1
    server.script = ["sleep", "sleep"]
    w = _writer(server, tmp_path, concurrency=1, timeout=0.3, max_retries=1)
    r = w.write_all(records[1:], progress=False)[0]
    assert w.stats.request_errors == 1 and w.stats.fallback == 1 and "APITimeoutError" in r.meta["fallback_reason"]


def test_bounded_concurrency(server, records, tmp_path):
    server.default = "slow"
    many = [MAURecord(**{**records[i % 2].to_dict(), "id": f"x{i}"}) for i in range(8)]
    w = _writer(server, tmp_path, concurrency=2, send_image=False)
    w.write_all(many, progress=False)
    assert w.stats.llm_ok + w.stats.cached == 8 and server.max_inflight == 2


def test_missing_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMWriter("m", base_url="http://127.0.0.1:9/v1")


def test_validate_answer(records):
    r = records[0]
    assert validate_answer("Detection: yes. Localization: [100,125,400,625]. Recognition: Nodule.", r, "norm1000") \
        is None
    assert "label" in validate_answer("Localization: [100,125,400,625]. Recognition: mass.", r, "norm1000")
    assert "box" in validate_answer("Recognition: nodule at [600,600,900,900].", r, "norm1000")
    assert validate_answer("No abnormality; normal image.", records[1], "norm1000") is None
    assert "box" in validate_answer("Normal. [1,2,3,4]", records[1], "norm1000")


def test_text_only_requests_are_plain_strings_with_a_token_cap(server, records, tmp_path):
    """A text-only server (llama.cpp with a GGUF chat template) gets string content, never a list of parts."""
    server.default = "ok"
    n = len(server.requests)
    w = _writer(server, tmp_path / "text_only", send_image=False, max_tokens=123)
    w.write_all(records[:1], progress=False)
    new = server.requests[n:]
    assert new and all(isinstance(m["content"], str) for r in new for m in r["messages"])
    assert all(r.get("max_tokens") == 123 for r in new)
