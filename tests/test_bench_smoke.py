"""Smoke test of bench/bench_ppo_step.py: the RL step providers run, and the prompt-shared forward that PPO uses
(``policy_outputs(..., k=K)``) gives the same log-probs, values, entropy and gradients as the full one (the bench's
speed claim is only meaningful if the outputs are the same)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_ppo_step as bps  # noqa: E402

TINY = bps.StepSizes(queries=2, k=2, max_new_tokens=5)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_prefix_shared_outputs_match_full_forward(one_thread, records):
    from umedfast.train.logprobs import policy_outputs
    from umedfast.train.rollout import sample_candidates

    torch.manual_seed(0)
    step = bps.UmedfastStep("gae", sizes=bps.StepSizes(queries=2, k=3, max_new_tokens=6), records=records)
    ro = sample_candidates(step.bundle, records[:2], k=3, temperature=1.0, top_p=1.0, max_new_tokens=6)
    m = ro.response_mask.bool()
    params = [p for p in step.pwv.parameters() if p.requires_grad]

    def run(fn):
        step.pwv.zero_grad(set_to_none=True)
        lp, v, ent = fn()
        ((lp * m).sum() + (v * m).sum() + (ent * m).sum()).backward()
        return lp.detach(), v.detach(), ent.detach(), [p.grad.clone() if p.grad is not None else None for p in params]

    full = run(lambda: policy_outputs(step.pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True))
    shared = run(lambda: policy_outputs(step.pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True,
                                        k=3, bundle=step.bundle))
    for a, b in zip(full[:3], shared[:3]):
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)
    for ga, gb in zip(full[3], shared[3]):
        assert (ga is None) == (gb is None)
        if ga is not None:  # mathematically-zero grads (attention key biases) differ only by rounding noise
            torch.testing.assert_close(ga, gb, atol=1e-6 + 1e-4 * float(ga.abs().max()), rtol=1e-3)


def test_trl_provider_reason_or_runs(one_thread, records):
    reason = bps.trl_available()
    if reason:
        assert "trl" in reason  # the bench skips TRL with this reason
        pytest.skip(reason)
    step = bps.TRLStep(sizes=TINY, records=records)
    out = step()
    assert out["samples"] == TINY.batch and out["loss"] == out["loss"]
