"""Reading an answer: which abnormal classes it names, and whether it says the image is normal.

The one home of these rules, shared by the metric (``umedfast.eval.mau``), the rubric judge
(``umedfast.rewards.judge``), the normal-image VRR credit (``umedfast.train``) and the LLM writer's answer check.

A class is named when its label or one of its synonyms (``umedfast.data.CLASS_SYNONYMS[source][label]``) occurs
as whole words, case-insensitive, and is not negated. Rules:
- When one mention lies inside a longer mention of another class ("active tuberculosis" contains "tuberculosis"),
  only the longer one counts, so overlapping synonyms do not name two classes.
- A negated mention ("no effusion", "without evidence of a stone"; a negation cue among the few words before the
  mention in the same clause) names nothing.
- A mention that is only a generic word (``GENERIC_TERMS``: lesion, abnormality, finding, ...) is "weak": it can
  confirm a ground-truth class whose synonym it is, but never counts as naming a wrong class (every answer says
  "an abnormality is detected").
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

# Phrases that state the image has no abnormality. "abnormal" never matches \bnormal\b.
_NORMAL_RE = re.compile(
    r"\b(?:no|without|absence\s+of|free\s+of|not?\s+(?:any|evident|seen|detected))\b[^.;\n]{0,40}?"
    r"\b(?:abnormalit(?:y|ies)|abnormal|lesions?|findings?|pathology|anomal(?:y|ies))\b"
    r"|\bnothing\s+(?:abnormal|suspicious|pathologic)"
    r"|\b(?:normal|unremarkable|healthy)\b",
    re.IGNORECASE,
)


GENERIC_TERMS = frozenset({"lesion", "lesions", "abnormality", "abnormalities", "abnormal", "finding", "findings",
                           "anomaly", "anomalies", "abnormal region", "region"})

_CLAUSE_BREAK = re.compile(r"[.;:!?\n]|\bbut\b|\bhowever\b|\bwhereas\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:no|not|without|absence\s+of|absent|free\s+of|negative\s+for|neither|nor|"
                       r"rule[sd]?\s+out|ruled\s+out)\b", re.IGNORECASE)


def is_negated(text: str, start: int, window_words: int = 6) -> bool:
    """True when a negation cue occurs among the `window_words` words before `start`, in the same clause."""
    before = text[:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    clause = before[breaks[-1].end():] if breaks else before
    words = clause.split()[-window_words:]
    return bool(_NEGATION.search(" ".join(words)))


def says_normal(text: str) -> bool:
    """True when the text states that nothing abnormal is present ("no abnormality", "normal study", ...)."""
    return bool(_NORMAL_RE.search(text or ""))


def _phrase_re(phrase: str) -> re.Pattern:
    # whole words, any run of spaces/underscores/hyphens between the words of a multi-word phrase
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", phrase.strip()) if w]
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s_\-]+".join(words) + r"(?![A-Za-z0-9])", re.IGNORECASE)


class ClassNamer:
    """Finds the class labels named in a text, for one source's vocabulary.

    vocab: {label: [synonym, ...]}; the label itself always counts as its own synonym.
    """

    def __init__(self, vocab: Mapping[str, Iterable[str]]):
        self.patterns: list[tuple[str, re.Pattern]] = []
        for label, syns in vocab.items():
            seen = set()
            for phrase in [label, *syns]:
                key = phrase.strip().lower()
                if key and key not in seen:
                    seen.add(key)
                    self.patterns.append((label, _phrase_re(phrase)))

    def mentions(self, text: str) -> tuple[set[str], set[str]]:
        """(strong, weak) labels mentioned in text, negated mentions excluded.

        strong: named by a specific word; weak: named only by a generic word (see GENERIC_TERMS).
        """
        text = text or ""
        spans = []
        for label, pat in self.patterns:
            for m in pat.finditer(text):
                spans.append((m.start(), m.end(), label))
        strong, weak = set(), set()
        for s, e, lab in spans:
            inside_longer = any(
                s2 <= s and e <= e2 and (e2 - s2) > (e - s) and lab2 != lab for s2, e2, lab2 in spans
            )
            if inside_longer or is_negated(text, s):
                continue
            word = " ".join(text[s:e].lower().split())
            (weak if word in GENERIC_TERMS else strong).add(lab)
        return strong, weak - strong

    def named(self, text: str, gt_labels: Iterable[str] = ()) -> set[str]:
        """Labels named in text: every strong mention, plus weak (generic-word) mentions of ground-truth labels."""
        strong, weak = self.mentions(text)
        return strong | (weak & set(gt_labels))


def build_vocab(labels_by_source: Mapping[str, Iterable[str]],
                synonyms: Mapping[str, Mapping[str, Iterable[str]]] | None = None) -> dict[str, dict[str, list[str]]]:
    """Per-source vocabulary: every label seen in the records plus every label of the synonym table for that source.

    Returns {source: {label: [synonyms]}}.
    """
    synonyms = synonyms or {}
    out: dict[str, dict[str, list[str]]] = {}
    for src in set(labels_by_source) | set(synonyms):
        table = {lab: list(syns) for lab, syns in (synonyms.get(src) or {}).items()}
        lower = {k.lower(): k for k in table}
        for lab in labels_by_source.get(src, ()):
            if lab.lower() not in lower:
                table[lab] = []
                lower[lab.lower()] = lab
        out[src] = table
    return out
