"""The generation-cap check measures real MAU-Synth answers with the shipped tokenizer."""
import warnings

import pytest

from umedfast.train.length_check import check_generation_cap, response_lengths


@pytest.fixture(scope="module")
def synth_records(tmp_path_factory):
    from umedfast.data import read_mau, synth

    out = tmp_path_factory.mktemp("synth")
    synth.generate(60, out, seed=3, image_size=64, box_format="norm1000", style="compact", progress=False)
    return read_mau(out / synth.JSONL_NAME)


@pytest.fixture(scope="module")
def tokenizer():
    from umedfast.model.processors import tiny_tokenizer

    return tiny_tokenizer("llava")


def test_two_finding_answers_need_more_tokens_than_one(synth_records, tokenizer):
    lengths = response_lengths(tokenizer, synth_records)
    by_n = {}
    for rec, n in zip(synth_records, lengths):
        by_n.setdefault(len(rec.findings), []).append(n)
    assert set(by_n) >= {0, 1, 2}
    assert max(by_n[1]) < min(by_n[2])  # each finding adds its own localization + recognition steps


def test_cap_below_the_longest_answer_warns_with_counts(synth_records, tokenizer):
    lengths = response_lengths(tokenizer, synth_records)
    cap = sorted(lengths)[len(lengths) // 2]
    with pytest.warns(UserWarning, match=r"ppo\.max_new_tokens=\d+ truncates \d+ of 60"):
        rep = check_generation_cap(tokenizer, synth_records, cap, "ppo.max_new_tokens")
    assert rep.n_over == sum(n > cap for n in lengths) > 0
    assert rep.longest == max(lengths)


def test_cap_covering_every_answer_is_silent(synth_records, tokenizer):
    longest = max(response_lengths(tokenizer, synth_records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = check_generation_cap(tokenizer, synth_records, longest, "ppo.max_new_tokens")
    assert rep.n_over == 0 and rep.fraction_over == 0.0
