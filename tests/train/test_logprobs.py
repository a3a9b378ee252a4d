"""umedfast.train.logprobs: the log-probs, values and entropy PPO reads.

- Scoring at the sampling temperature: log-probs, entropy and reference log-probs are those of softmax(logits / T),
  the distribution the candidates were drawn from, on both the prompt-shared and the full path.
- The prompt-shared forward (``policy_outputs(..., k=K)``: the prompt runs once, its KV cache is repeated K times)
  gives the full forward's log-probs, values, entropy and gradients (the speed-up is worth nothing otherwise).
"""
import pytest
import torch

from umedfast.config import load_config
from umedfast.data import splits, synth
from umedfast.model import model_inputs
from umedfast.train.distributed import Dist
from umedfast.train.logprobs import policy_outputs, reference_logprobs
from umedfast.train.ppo_step import build_state
from umedfast.train.rollout import sample_candidates


@pytest.fixture(scope="module")
def state_and_records(tmp_path_factory, one_thread):
    """A PPO state on the tiny LLaVA (as run_ppo builds it, no SFT checkpoint) and two MAU-Synth training records."""
    out = tmp_path_factory.mktemp("logprobs")
    recs = synth.generate(24, out / "data", seed=0, image_size=112, style="compact", progress=False)
    records = (splits.select(recs, "train") or recs)[:2]
    cfg = load_config(None, [f"output_dir={out}", "model.name=tiny-llava", "seed=0", "progress=false", "ppo.k=3",
                             "ppo.max_new_tokens=6", "rewards.w_llm=0", "rewards.w_vrr=0"])
    return build_state(cfg, Dist(), "cpu"), records


def test_logprobs_entropy_and_reference_follow_the_temperature(state_and_records):
    st, records = state_and_records
    torch.manual_seed(0)
    T = 0.5
    ro = sample_candidates(st.bundle, records, k=3, temperature=T, top_p=1.0, max_new_tokens=6)
    m, P, L = ro.response_mask.bool(), ro.prompt_width, ro.response_ids.shape[1]
    with torch.no_grad():
        logits = st.bundle.model(**model_inputs(ro.batch)).logits[:, P - 1:P - 1 + L].double()
        want = torch.log_softmax(logits / T, -1)
        want_lp = want.gather(-1, ro.response_ids[..., None]).squeeze(-1)
        want_ent = -(want.exp() * want).sum(-1)
        at_one = torch.log_softmax(logits, -1).gather(-1, ro.response_ids[..., None]).squeeze(-1)
        for k in (1, 3):  # full forward, prompt-shared forward
            lp, _, ent = policy_outputs(st.policy_with_value, ro.batch, ro.response_ids, P, need_entropy=True, k=k,
                                        bundle=st.bundle, temperature=T)
            ref = reference_logprobs(st.bundle.model, ro.batch, ro.response_ids, P, k=k, bundle=st.bundle,
                                     temperature=T)
            torch.testing.assert_close(lp[m].double(), want_lp[m], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ent[m].double(), want_ent[m], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ref[m], lp[m], atol=1e-5, rtol=1e-5)
    assert (want_lp[m] - at_one[m]).abs().max() > 1e-2  # T = 0.5 really is a different distribution here


def test_prefix_shared_outputs_match_full_forward(state_and_records):
    st, records = state_and_records
    torch.manual_seed(0)
    ro = sample_candidates(st.bundle, records, k=3, temperature=1.0, top_p=1.0, max_new_tokens=6)
    m = ro.response_mask.bool()
    pwv = st.policy_with_value
    params = [p for p in pwv.parameters() if p.requires_grad]

    def run(fn):
        pwv.zero_grad(set_to_none=True)
        lp, v, ent = fn()
        ((lp * m).sum() + (v * m).sum() + (ent * m).sum()).backward()
        return lp.detach(), v.detach(), ent.detach(), [p.grad.clone() if p.grad is not None else None for p in params]

    full = run(lambda: policy_outputs(pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True))
    shared = run(lambda: policy_outputs(pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True,
                                        k=3, bundle=st.bundle))
    for a, b in zip(full[:3], shared[:3]):
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)
    for ga, gb in zip(full[3], shared[3]):
        assert (ga is None) == (gb is None)
        if ga is not None:  # mathematically-zero grads (attention key biases) differ only by rounding noise
            torch.testing.assert_close(ga, gb, atol=1e-6 + 1e-4 * float(ga.abs().max()), rtol=1e-3)
