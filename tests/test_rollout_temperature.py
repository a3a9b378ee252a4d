"""Scoring at the sampling temperature: PPO's log-probs, entropy and reference log-probs are those of
softmax(logits / T), the distribution the candidates were drawn from, on both the prompt-shared and the full path."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_ppo_step as bps  # noqa: E402


def test_logprobs_entropy_and_reference_follow_the_temperature():
    from umedfast.model import model_inputs
    from umedfast.train.logprobs import policy_outputs, reference_logprobs
    from umedfast.train.rollout import sample_candidates

    torch.manual_seed(0)
    records = bps.synth_records()[:2]
    step = bps.UmedfastStep("gae", sizes=bps.StepSizes(queries=2, k=3, max_new_tokens=6), records=records)
    T = 0.5
    ro = sample_candidates(step.bundle, records, k=3, temperature=T, top_p=1.0, max_new_tokens=6)
    m, P, L = ro.response_mask.bool(), ro.prompt_width, ro.response_ids.shape[1]
    with torch.no_grad():
        logits = step.bundle.model(**model_inputs(ro.batch)).logits[:, P - 1:P - 1 + L].double()
        want = torch.log_softmax(logits / T, -1)
        want_lp = want.gather(-1, ro.response_ids[..., None]).squeeze(-1)
        want_ent = -(want.exp() * want).sum(-1)
        at_one = torch.log_softmax(logits, -1).gather(-1, ro.response_ids[..., None]).squeeze(-1)
        for k in (1, 3):  # full forward, prompt-shared forward
            lp, _, ent = policy_outputs(step.pwv, ro.batch, ro.response_ids, P, need_entropy=True, k=k,
                                        bundle=step.bundle, temperature=T)
            ref = reference_logprobs(step.bundle.model, ro.batch, ro.response_ids, P, k=k, bundle=step.bundle,
                                     temperature=T)
            torch.testing.assert_close(lp[m].double(), want_lp[m], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ent[m].double(), want_ent[m], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ref[m], lp[m], atol=1e-5, rtol=1e-5)
    assert (want_lp[m] - at_one[m]).abs().max() > 1e-2  # T = 0.5 really is a different distribution here
