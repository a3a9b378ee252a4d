"""Relevance reward r_LLM: a judge scores how well a response answers the query, in [0, 1].

Two judges share one interface, ``judge.score(items) -> list[float]``:

- ``RubricJudge`` (default, offline, deterministic): the correct class is named, the three diagnostic steps
  (detection -> localization -> recognition) are present, and a valid box is written (or, for a normal image, the
  response says so and writes no box).
- ``OpenAIJudge``: any OpenAI-compatible endpoint through the ``openai`` client, with a rubric prompt asking for a
  score in [0, 1]; async with bounded concurrency, an in-memory cache, a timeout and retries. Only a bare number or
  a JSON ``{"score": x}`` with x in [0, 10] is a score (``parse_score``). Any failure (an HTTP error, a timeout, a
  reply such as "Error 500: upstream overloaded" or "11") gives the neutral score and is counted in
  ``stats["failures"]`` (split into ``bad_replies`` and ``request_errors``): training never stops for the judge. The API key is read from
  an environment variable and never logged.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from umedfast.answers import says_normal
from umedfast.boxes import parse_boxes
from umedfast.config import RUBRIC_CLASSES, JudgeConfig

log = logging.getLogger(__name__)

__all__ = ["JudgeItem", "RubricJudge", "OpenAIJudge", "agreement", "make_judge", "parse_score"]


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees for one candidate. ``labels``: ground-truth class names (empty = normal image);
    ``synonyms``: extra accepted spellings of those classes."""

    query: str
    response: str
    reference: str = ""
    labels: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    box_format: str = "norm1000"
    other_classes: tuple[str, ...] = ()  # classes of the same source that are NOT in the image (naming one is wrong)


_DETECT_RE = re.compile(r"\b(abnormal|lesion|finding|detect|present|observe|shows?|visible|there is|there are)", re.I)
_LOCATE_RE = re.compile(r"\b(locat|locali|region|box|area|at \[|position|upper|lower|left|right|cent(er|re))", re.I)
_RECOG_RE = re.compile(r"\b(diagnos|consistent with|suggest|recogni|likely|class|impression|indicat|is an?|identified)",
                       re.I)


def _names_class(text: str, names: Sequence[str]) -> bool:
    t = text.lower()
    return any(n and re.search(r"(?<![a-z0-9])" + re.escape(n.lower()) + r"(?![a-z0-9])", t) for n in names)


class RubricJudge:
    """Deterministic offline rubric: 0.4 correct classes, 0.3 the three steps (0.1 each), 0.3 box validity.

    The class part is 0.4 x the fraction of ground-truth classes named (each by its label or a synonym), and 0 when
    any class in ``other_classes`` is named: the evaluation counts an answer correct only when the named set equals
    the ground-truth set, and a rubric that ignored wrong or missing classes let PPO drift to the commonest class.
    ``classes="exact"`` gives the class part only when every ground-truth class is named: with the fraction, an
    answer that names one class of a two-class image twice keeps half the credit, a hedge PPO learned (docs/training.md).
    """

    name = "rubric"

    def __init__(self, classes: str = "fraction") -> None:
        if classes not in RUBRIC_CLASSES:
            raise ValueError(f"unknown rubric class credit {classes!r}; expected one of {RUBRIC_CLASSES}")
        self.classes = classes
        self.stats = {"calls": 0, "failures": 0, "cache_hits": 0}

    def score_one(self, it: JudgeItem) -> float:

        boxes = parse_boxes(it.response, it.box_format)
        text = it.response
        if not it.labels:  # normal image: say so, write no box
            return 0.7 * says_normal(text) + 0.3 * (len(boxes) == 0)
        labels, syn = list(dict.fromkeys(it.labels)), tuple(it.synonyms)
        if len(labels) == 1:
            n_named = int(_names_class(text, (labels[0],) + syn))
        else:  # several classes: each must be written by its own label
            n_named = sum(_names_class(text, (lab,)) for lab in labels)
        gt_names = [x.lower() for x in labels + list(syn)]
        # a wrong class is another class of the source that is not a word inside a ground-truth name ("mass" in
        # "liver mass" is not a wrong class)
        wrong = _names_class(text, tuple(c for c in it.other_classes if not any(c.lower() in g for g in gt_names)))
        cls = 0.0 if wrong else n_named / len(labels)
        if self.classes == "exact":
            cls = float(cls == 1.0)
        steps = sum(bool(r.search(text)) for r in (_DETECT_RE, _LOCATE_RE, _RECOG_RE)) / 3.0
        valid_box = any(x2 > x1 and y2 > y1 for x1, y1, x2, y2 in boxes)
        return round(0.4 * cls + 0.3 * steps + 0.3 * valid_box, 6)

    def score(self, items: Sequence[JudgeItem]) -> list[float]:
        self.stats["calls"] += len(items)
        return [self.score_one(it) for it in items]


RUBRIC_PROMPT = """You grade a medical image assistant's answer for relevance and correctness.
Ground-truth abnormal classes: {labels}
Reference answer: {reference}
User question: {query}
Assistant answer: {response}

Score from 0 to 1: 1 = names the correct abnormality (or correctly says the image is normal), walks through
detection, localization and recognition, and gives a plausible location; 0 = irrelevant or wrong.
Reply with JSON only: {{"score": <number between 0 and 1>}}"""

_BARE_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.S)


def _in_range(v: float) -> float | None:
    """A score on the 0-1 scale (values in (1, 10] are read as a 0-10 scale); None outside [0, 10] or NaN."""
    if not (0.0 <= v <= 10.0):  # also False for NaN
        return None
    return v / 10.0 if v > 1.0 else v


def parse_score(text: str | None) -> float | None:
    """Score in [0, 1] from a judge reply, or None (a counted failure, never a score).

    Only two reply shapes count, after stripping whitespace and one Markdown code fence:
    - a JSON object with a numeric ``"score"`` (a number, or a string holding a bare number): ``{"score": 0.8}``;
    - a bare number, optionally followed by a full stop: ``0.8``, ``7``.
    The value must lie in [0, 10]: [0, 1] is the asked-for scale, (1, 10] is read as a 0-10 scale (7 -> 0.7).
    Anything else is None: free text that merely contains a number ("Error 500: upstream overloaded",
    "I'd say 7"), a number outside [0, 10] (-1, 11, 500), NaN/inf, booleans, an object without "score".
    """
    if not isinstance(text, str):
        return None
    t = text.strip()
    m = _FENCE_RE.match(t)
    if m:
        t = m.group(1).strip()
    if t.startswith("{"):
        try:
            obj = json.loads(t)
        except ValueError:
            return None
        if not isinstance(obj, dict) or "score" not in obj:
            return None
        v = obj["score"]
        if isinstance(v, str) and _BARE_NUM_RE.fullmatch(v.strip()):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return _in_range(float(v))
    t = t.removesuffix(".")
    if _BARE_NUM_RE.fullmatch(t):
        return _in_range(float(t))
    return None


@dataclass
class OpenAIJudge:
    """LLM judge against an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``api_key_env`` names the environment variable holding the key (local servers accept any non-empty key).
    """

    base_url: str
    model: str
    api_key_env: str = "UMEDFAST_JUDGE_API_KEY"
    concurrency: int = 8
    timeout_s: float = 30.0
    retries: int = 2
    neutral: float = 0.5
    temperature: float = 0.0
    max_tokens: int = 32
    json_mode: bool = False  # send response_format={"type": "json_object"} (llama.cpp, vLLM: constrained JSON)
    # failures = bad_replies (HTTP 200 whose text is not a score, see parse_score) + request_errors (HTTP errors,
    # timeouts, refused connections, after the client's retries)
    stats: dict = field(default_factory=lambda: {"calls": 0, "failures": 0, "cache_hits": 0, "bad_replies": 0,
                                                 "request_errors": 0})
    name: str = "openai"

    def __post_init__(self) -> None:
        self._cache: dict[str, float] = {}
        self.latencies: list[float] = []  # seconds of every request that returned (failed replies included)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _key(self, it: JudgeItem) -> str:
        blob = json.dumps([self.model, it.query, it.response, it.reference, list(it.labels)])
        return hashlib.sha256(blob.encode()).hexdigest()

    async def _one(self, client, sem: asyncio.Semaphore, it: JudgeItem) -> float:
        prompt = RUBRIC_PROMPT.format(labels=", ".join(it.labels) or "none (normal image)", reference=it.reference,
                                      query=it.query, response=it.response)
        extra = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        async with sem:
            t0 = time.perf_counter()
            try:
                resp = await client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}],
                    temperature=self.temperature, max_tokens=self.max_tokens, **extra)
                reply = resp.choices[0].message.content if resp.choices else None
                self.latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - any judge failure is neutral, never fatal
                log.warning("judge request failed (%s); using neutral score", type(e).__name__)
                self.stats["request_errors"] += 1
                self.stats["failures"] += 1
                return self.neutral
        s = parse_score(reply)
        if s is None:
            log.warning("judge reply is not a score in [0, 10] (%r); using neutral score", (reply or "")[:60])
            self.stats["bad_replies"] += 1
            self.stats["failures"] += 1
            return self.neutral
        self._cache[self._key(it)] = s
        return s

    async def ascore(self, items: Sequence[JudgeItem]) -> list[float]:
        from openai import AsyncOpenAI  # lazy: openai (~5 s, measured) only for requests to an LLM endpoint

        out: list[float | None] = [None] * len(items)
        todo = []
        for i, it in enumerate(items):
            k = self._key(it)
            if k in self._cache:
                out[i] = self._cache[k]
                self.stats["cache_hits"] += 1
            else:
                todo.append(i)
        self.stats["calls"] += len(todo)
        if todo:
            key = os.environ.get(self.api_key_env) or "EMPTY"
            client = AsyncOpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout_s,
                                 max_retries=self.retries)
            sem = asyncio.Semaphore(max(1, self.concurrency))
            try:
                res = await asyncio.gather(*(self._one(client, sem, items[i]) for i in todo))
            finally:
                await client.close()
            for i, s in zip(todo, res):
                out[i] = s
        return [float(s) for s in out]

    def score(self, items: Sequence[JudgeItem]) -> list[float]:
        """Blocking wrapper; works whether or not the caller already runs an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(items))
        box: list = []
        t = threading.Thread(target=lambda: box.append(asyncio.run(self.ascore(items))))
        t.start(); t.join()
        return box[0]


def agreement(a: Sequence[float | None], b: Sequence[float | None], *, threshold: float = 0.5) -> dict:
    """How well two judges agree on the same items (None/NaN = a failed score, left out of the pairs).

    Returns n (pairs scored by both), pass_agreement (both >= threshold or both below), pearson, spearman (rank
    correlation, ties averaged; None when either side is constant) and mean_abs_diff."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))]
    n = len(pairs)
    if not n:
        return {"n": 0, "pass_agreement": None, "pearson": None, "spearman": None, "mean_abs_diff": None}

    def pearson(xs, ys):
        mx, my = sum(xs) / n, sum(ys) / n
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sx, sy = math.sqrt(sum((x - mx) ** 2 for x in xs)), math.sqrt(sum((y - my) ** 2 for y in ys))
        return sxy / (sx * sy) if sx > 0 and sy > 0 else None

    def ranks(xs):
        order = sorted(range(n), key=lambda i: xs[i])
        r = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2.0
            i = j + 1
        return r

    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"n": n, "pass_agreement": sum((x >= threshold) == (y >= threshold) for x, y in pairs) / n,
            "pearson": pearson(xs, ys), "spearman": pearson(ranks(xs), ranks(ys)),
            "mean_abs_diff": sum(abs(x - y) for x, y in pairs) / n}


def make_judge(kind: JudgeConfig | str = "rubric", **kw):
    """The judge of a ``JudgeConfig`` (the config's ``judge`` section), or of a kind name plus keyword settings:
    "rubric" (offline default) or "openai" (needs ``base_url`` and ``model``)."""
    if isinstance(kind, JudgeConfig):
        cfg, kind = kind, kind.kind
        if kind == "rubric":
            kw = {"classes": cfg.rubric_classes, **kw}
        if kind == "openai":
            kw = {"base_url": cfg.base_url, "model": cfg.model, "api_key_env": cfg.api_key_env,
                  "concurrency": cfg.concurrency, "timeout_s": cfg.timeout_s, "retries": cfg.retries,
                  "neutral": cfg.neutral, "json_mode": cfg.json_mode, **kw}
    if kind == "rubric":
        return RubricJudge(**kw)
    if kind == "openai":
        if not kw.get("base_url") or not kw.get("model"):
            raise ValueError("the openai judge needs judge.base_url and judge.model")
        return OpenAIJudge(**kw)
    raise ValueError(f"unknown judge {kind!r}; expected 'rubric' or 'openai'")
