"""Judges: offline rubric, and the OpenAI judge against a real local HTTP server with the real openai client."""
import json
import logging

import pytest
from _fake_llm import FakeLLM

from umedfast.boxes import format_box
from umedfast.rewards.judge import JudgeItem, OpenAIJudge, RubricJudge, make_judge, parse_score

BOX = format_box((0.1, 0.2, 0.3, 0.4))


def test_rubric_judge_orders_answers():
    j = RubricJudge()
    full = JudgeItem("What is abnormal?", f"An abnormal finding is visible. It is located at {BOX}. "
                     "The diagnosis is nodule.", labels=("nodule",))
    wrong_class = JudgeItem("q", f"An abnormal finding is visible, located at {BOX}. The diagnosis is mass.",
                            labels=("nodule",))
    no_box = JudgeItem("q", "An abnormal finding is visible. The diagnosis is nodule.", labels=("nodule",))
    s = j.score([full, wrong_class, no_box])
    assert s[0] == pytest.approx(1.0)
    assert s[0] > s[1] and s[0] > s[2]
    assert s[1] == pytest.approx(0.6)
    normal_ok = JudgeItem("q", "No abnormality is seen; the image is normal.", labels=())
    normal_bad = JudgeItem("q", f"A nodule at {BOX}.", labels=())
    assert j.score([normal_ok, normal_bad]) == [1.0, 0.0]
    assert j.score([full]) == [s[0]]  # deterministic


def test_rubric_wants_exactly_the_ground_truth_classes():
    j = RubricJudge()
    base = f"An abnormal finding is visible, located at {BOX}. The diagnosis is "
    others = ("mass", "active tuberculosis")
    one = JudgeItem("q", base + "nodule.", labels=("nodule",), other_classes=others)
    extra = JudgeItem("q", base + "nodule and mass.", labels=("nodule",), other_classes=others)
    both = JudgeItem("q", base + "obsolete tuberculosis and active tuberculosis.",
                     labels=("obsolete tuberculosis", "active tuberculosis"), other_classes=("mass",))
    half = JudgeItem("q", base + "obsolete tuberculosis.", labels=("obsolete tuberculosis", "active tuberculosis"))
    nested = JudgeItem("q", base + "liver mass.", labels=("liver lesion",), synonyms=("liver mass",),
                       other_classes=("mass",))
    assert j.score([one, extra, both, half, nested]) == pytest.approx([1.0, 0.6, 1.0, 0.8, 1.0])


def test_rubric_exact_class_credit_gives_no_half_credit_for_naming_one_of_two():
    """``judge.rubric_classes=exact``: a two-class image answered with one class named twice (the second finding
    copying the first) gets no class credit, as the evaluation's accuracy counts it; one-class images unchanged."""
    from umedfast.config import load_config

    two = ("effusion", "mass")
    answer = ("Detection: two abnormal regions. Localization: first, {b}. Localization: second, {b}. "
              "Recognition: first, it is effusion. Recognition: second, it is {c}.")
    both = JudgeItem("q", answer.format(b=BOX, c="mass"), labels=two, other_classes=("nodule",))
    copied = JudgeItem("q", answer.format(b=BOX, c="effusion"), labels=two, other_classes=("nodule",))
    single = JudgeItem("q", answer.format(b=BOX, c="effusion"), labels=("effusion",), other_classes=("mass",))
    assert RubricJudge().score([both, copied, single]) == pytest.approx([1.0, 0.8, 1.0])
    exact = make_judge(load_config(None, ["judge.rubric_classes=exact"]).judge)
    assert exact.score([both, copied, single]) == pytest.approx([1.0, 0.6, 1.0])
    assert make_judge(load_config(None, []).judge).classes == "fraction"  # the default is unchanged
    with pytest.raises(ValueError, match="rubric class credit"):
        RubricJudge("most")


def test_parse_score():
    assert parse_score('{"score": 0.8}') == 0.8
    assert parse_score(' {"score": "0.25"} ') == 0.25
    assert parse_score("```json\n{\"score\": 0.6}\n```") == 0.6
    assert parse_score("0.3") == 0.3 and parse_score("1") == 1.0 and parse_score("0") == 0.0
    assert parse_score("7") == pytest.approx(0.7) and parse_score("10.") == 1.0  # a 0-10 scale
    assert parse_score('{"score": 7}') == pytest.approx(0.7)


@pytest.mark.parametrize("reply", [
    "Error 500: upstream overloaded", "I'd say 7", "score: 0.8 because", "no idea", "", "   ", None,
    "11", "-1", "500", '{"score": 12}', '{"score": -0.5}', '{"score": NaN}', '{"score": Infinity}', "nan", "inf",
    '{"score": true}', '{"score": null}', '{"score": "high"}', '{"grade": 0.8}', "[0.8]", '{"score": 0.8',
    "0.8 0.9", "1e3",
])
def test_parse_score_refuses_anything_but_a_score_in_range(reply):
    assert parse_score(reply) is None


class _JudgeServer(FakeLLM):
    """The shared scripted OpenAI-compatible server (tests/_fake_llm.py) answering as a judge. ``mode`` picks the
    reply: "ok" (0.9 when the judged answer names a nodule, else 0.1, after 0.05 s so requests overlap), "slow"
    (1.5 s), "error" (HTTP 500), or one of the fixed texts in ``REPLIES``."""

    REPLIES = {"garbage": "garbage", "overloaded": "Error 500: upstream overloaded", "out_of_range": "11",
               "json_out_of_range": '{"score": 42}', "bare": "7"}
    ACTIONS = {"slow": "sleep", "error": "500"}  # FakeLLM actions; every other mode: "slow" = 0.05 s, then reply

    def __init__(self):
        super().__init__()
        self.formats: list = []
        self.mode = "ok"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode, self.default = mode, self.ACTIONS.get(mode, "slow")

    def good_answer(self, body) -> str:
        self.formats.append(body.get("response_format"))
        prompt = body["messages"][0]["content"]
        return self.REPLIES.get(self.mode) or json.dumps(
            {"score": 0.9 if "nodule" in prompt.split("Assistant answer:")[1] else 0.1})


@pytest.fixture(scope="module")
def server():
    s = _JudgeServer()
    yield s
    s.server.shutdown()


def _items(n):
    return [JudgeItem(f"q{i}", f"answer {i} nodule" if i % 2 == 0 else f"answer {i} other", labels=("nodule",))
            for i in range(n)]


def test_openai_judge_scores_caches_and_bounds_concurrency(server, monkeypatch, caplog):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    server.mode = "ok"
    j = make_judge("openai", base_url=server.base_url, model="judge", api_key_env="TEST_JUDGE_KEY", concurrency=3)
    caplog.set_level(logging.DEBUG)
    s = j.score(_items(10))
    assert s == [0.9, 0.1] * 5
    assert 1 <= server.max_inflight <= 3
    assert "Bearer sk-secret-123" in server.auth
    n = len(server.requests)
    assert j.score(_items(10)) == s and len(server.requests) == n  # cache
    assert j.stats["cache_hits"] == 10 and j.stats["failures"] == 0
    assert "sk-secret-123" not in caplog.text and "sk-secret" not in repr(j)


def test_openai_judge_failures_are_neutral(server):
    j = OpenAIJudge(base_url=server.base_url, model="judge", retries=0, timeout_s=0.5, neutral=0.5)
    server.mode = "garbage"
    assert j.score(_items(2)) == [0.5, 0.5]
    server.mode = "error"
    assert j.score(_items(2)[:1] + [JudgeItem("z", "z")]) == [0.5, 0.5]
    server.mode = "slow"
    assert j.score([JudgeItem("slow", "slow")]) == [0.5]
    assert j.stats["failures"] == 5
    server.mode = "ok"
    dead = OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m", retries=0, timeout_s=0.5)
    assert dead.score(_items(1)) == [0.5] and dead.stats["failures"] == 1


def test_rubric_gives_full_credit_to_every_normal_template_answer():
    # the offline judge must not punish the answers the SFT data teaches for normal images
    from umedfast.data import templates

    phrases = [s for style in (templates._FULL, templates._COMPACT) for s in style["normal"]]
    items = [JudgeItem("q", s.format(modality="chest X-ray"), labels=()) for s in phrases]
    assert RubricJudge().score(items) == [1.0] * len(items)


def test_openai_judge_counts_error_text_and_out_of_range_replies_as_failures(server):
    """An HTTP 200 whose text is an error message or a number outside [0, 10] is a counted failure, never a score
    (the old parser read "Error 500: upstream overloaded" as 500 -> 1.0, a full reward)."""
    j = OpenAIJudge(base_url=server.base_url, model="judge", retries=0, timeout_s=5, neutral=0.5)
    for mode in ("overloaded", "out_of_range", "json_out_of_range"):
        server.mode = mode
        assert j.score([JudgeItem(mode, "a nodule")]) == [0.5], mode
    assert j.stats["failures"] == 3 and j.stats["bad_replies"] == 3 and j.stats["request_errors"] == 0
    server.mode = "bare"
    assert j.score([JudgeItem("bare", "a nodule")]) == [pytest.approx(0.7)]
    assert j.stats["failures"] == 3
    # a failure is not cached: the same item is asked again once the server recovers
    server.mode = "ok"
    assert j.score([JudgeItem("overloaded", "a nodule")]) == [0.9]
    # evaluation's judge gives NaN (left out and counted), not a score
    from umedfast.eval.judged import make_eval_judge
    ej = make_eval_judge("openai", base_url=server.base_url, model="judge", timeout_s=5)
    server.mode = "overloaded"
    s = ej.score([JudgeItem("eval", "a nodule")])
    assert s[0] != s[0] and ej.stats["bad_replies"] == 1
    server.mode = "ok"


def test_openai_judge_json_mode_sends_response_format(server):
    server.mode = "ok"
    server.formats.clear()
    j = OpenAIJudge(base_url=server.base_url, model="judge", json_mode=True)
    assert j.score([JudgeItem("json", "a nodule")]) == [0.9]
    assert server.formats == [{"type": "json_object"}]


def test_agreement_between_judges():
    from umedfast.rewards.judge import agreement

    a = [0.0, 0.3, 0.6, 1.0, None, float("nan")]
    b = [0.1, 0.2, 0.9, 0.8, 0.5, 0.5]
    r = agreement(a, b)
    assert r["n"] == 4 and r["pass_agreement"] == 1.0
    assert r["spearman"] == pytest.approx(0.8) and 0.8 < r["pearson"] < 1.0
    assert r["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.3 + 0.2) / 4)
    assert agreement([0.5, 0.5], [0.1, 0.9])["spearman"] is None  # a constant judge has no rank correlation
    assert agreement([], [])["n"] == 0
