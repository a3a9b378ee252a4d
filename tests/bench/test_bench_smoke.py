"""Smoke test of bench/bench_ppo_step.py: both RL step providers run, and the umedfast one times THE training step.

(That the prompt-shared forward the bench times gives the full forward's outputs is a correctness test of
``umedfast.train.logprobs``: tests/train/test_logprobs.py.)"""
import importlib.util
import sys
from pathlib import Path

import pytest


def _load_bench(name: str):
    """Import bench/<name>.py by path (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


bps = _load_bench("bench_ppo_step")

TINY = bps.StepSizes(queries=2, k=2, max_new_tokens=5)


@pytest.fixture(scope="module")
def records():
    return bps.synth_records()[:4]


@pytest.mark.parametrize("advantage", ["grpo", "gae"])
def test_bench_times_the_training_step(one_thread, records, advantage, monkeypatch):
    """The bench's umedfast provider runs THE step of training (umedfast.train.ppo_step.ppo_step), not a copy."""
    import umedfast.train.ppo_step as ps

    calls = []
    real = ps.ppo_step
    monkeypatch.setattr(ps, "ppo_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    step = bps.UmedfastStep(advantage, sizes=TINY, records=records)
    out = step()
    assert calls == [1]
    assert out["samples"] == TINY.batch and 1 <= out["resp_len"] <= TINY.max_new_tokens
    assert list(step.phases) == ["rollout", "score", "advantages", "update", "stats"]
    # ALR alone can be 0 for every candidate of an untrained model (zero advantages): check the optimizer ran
    assert step.opt.state, "AdamW never stepped"
    assert not hasattr(bps, "_Phases")  # the old hand copy of the step is gone


def test_trl_provider_reason_or_runs(one_thread, records):
    reason = bps.trl_available()
    if reason:
        assert "trl" in reason  # the bench skips TRL with this reason
        pytest.skip(reason)
    step = bps.TRLStep(sizes=TINY, records=records)
    out = step()
    assert out["samples"] == TINY.batch and out["loss"] == out["loss"]
