"""Catch a generation cap shorter than the answers it must produce.

A two-finding MAU-Synth answer in the compact style is 66-82 tokens; with ``max_new_tokens=48`` every such answer
was cut before its "Recognition" step, so it could never be scored correct, and PPO was rewarded for writing one
finding instead of two. This check measures the reference answers once and says so before training.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthReport:
    """How many reference answers (tokens incl. EOS) exceed a generation cap."""

    n: int
    n_over: int
    longest: int
    cap: int

    @property
    def fraction_over(self) -> float:
        return self.n_over / self.n if self.n else 0.0

    def message(self, what: str) -> str:
        return (f"{what}={self.cap} truncates {self.n_over} of {self.n} reference answers "
                f"({100 * self.fraction_over:.1f}%; the longest is {self.longest} tokens with EOS): truncated answers "
                f"lose their last steps (often the class), so they score as wrong. Raise {what} to >= {self.longest}.")


def response_lengths(tokenizer, records) -> list[int]:
    """Token count (with one EOS) of each record's reference ``response``."""
    texts = [r.response or "" for r in records]
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(x) + 1 for x in ids]


def check_generation_cap(tokenizer, records, cap: int, what: str, *, warn: bool = True) -> LengthReport:
    """Measure ``records``' reference answers against ``cap`` new tokens; warn (once per call) when any exceeds it.
    ``what`` names the config key in the message (e.g. ``"ppo.max_new_tokens"``)."""
    lengths = response_lengths(tokenizer, records)
    rep = LengthReport(len(lengths), sum(n > cap for n in lengths), max(lengths, default=0), cap)
    if warn and rep.n_over:
        warnings.warn(rep.message(what), stacklevel=2)
    return rep
