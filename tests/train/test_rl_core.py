"""Issue 13: the RL core's defects, each on numbers checkable by hand (KL in the reward, detached critic,
positional bias of early advantages, sampling == scoring, truncation penalty, uniform groups, VRR query)."""
import math

import pytest
import torch

from umedfast.config import ConfigError, PPOConfig, RewardsConfig, load_config
from umedfast.rl import gae_advantages, kl_penalty, masked_whiten, token_rewards, value_loss
from umedfast.train.ppo_step import sequence_reward, uniform_groups


# ------------------------------------------------------------------------------------------------ KL in the reward
def _score_function_gradient(theta, ref_logp, kind):
    """Exact E_{a~pi}[grad log pi(a) * (-kl_a)]: the gradient a fixed per-token reward -kl_a gives the policy."""
    logp = torch.log_softmax(theta, 0)
    p = logp.exp().detach()
    kl = kl_penalty(logp.detach(), ref_logp, kind)  # a reward: no gradient through it
    g = torch.zeros_like(theta)
    for a in range(theta.numel()):
        (ga,) = torch.autograd.grad(logp[a], theta, retain_graph=True)
        g += p[a] * ga * (-kl[a])
    return g


def test_k1_in_the_reward_is_the_kl_gradient_and_k3_is_not():
    # pi = softmax([0, 1, 2]) = (0.090, 0.245, 0.665); ref uniform over 3 actions
    theta = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.full((3,), -math.log(3.0), dtype=torch.float64)
    logp = torch.log_softmax(theta, 0)
    kl = (logp.exp() * (logp - ref)).sum()  # KL(pi || uniform) = log 3 - H(pi)
    (true,) = torch.autograd.grad(-kl, theta)
    # by hand: d KL / d theta_i = p_i (log p_i - sum_j p_j log p_j)
    p = logp.detach().exp()
    by_hand = -(p * (logp.detach() - (p * logp.detach()).sum()))
    torch.testing.assert_close(true, by_hand)
    torch.testing.assert_close(_score_function_gradient(theta, ref, "k1"), true)
    k3 = _score_function_gradient(theta, ref, "k3")
    assert (k3 - true).norm() > 0.5 * true.norm()  # k3 as a reward is far from the KL gradient


def test_gae_with_k3_is_refused_and_k1_is_the_default():
    assert PPOConfig().kl_estimator == "k1"
    with pytest.raises(ConfigError, match="k3"):
        load_config(None, ["ppo.advantage=gae", "ppo.kl_estimator=k3"])
    assert load_config(None, ["ppo.advantage=grpo", "ppo.kl_estimator=k3"]).ppo.kl_estimator == "k3"
    assert load_config("configs/demo.yaml").ppo.kl_estimator == "k1"


# ------------------------------------------------------------------------------------------------ critic
def test_value_loss_unclipped_when_clip_is_off():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    m = torch.ones(1, 2)
    # unclipped: 0.5 * mean((1-2)^2, (0-1)^2) = 0.5
    assert value_loss(v, old, ret, m, clip_range=0.0).item() == pytest.approx(0.5)
    # clipped at 0.2: first token max((1-2)^2, (0.2-2)^2) = 3.24 -> 0.5 * (3.24 + 1) / 2 = 1.06
    assert value_loss(v, old, ret, m, clip_range=0.2).item() == pytest.approx(1.06)


@pytest.fixture(scope="module")
def tiny():
    from umedfast.data import splits, synth
    from umedfast.model import PolicyWithValue, ValueHead, hidden_size, load_vlm

    import tempfile
    recs = synth.generate(12, tempfile.mkdtemp(), seed=0, image_size=64, style="compact", progress=False)
    bundle = load_vlm("tiny-llava", seed=0)
    vh = ValueHead(hidden_size(bundle.base_model))
    torch.nn.init.normal_(vh.summary.weight, std=0.1)  # a critic that already moved (zero-init gives 0 grads)
    return recs, bundle, PolicyWithValue(bundle, vh).eval()


def test_critic_gradient_never_reaches_the_backbone(tiny):
    """Backbone gradients are identical with vf_coef 0 and 0.5; the value head gets a gradient only from vf."""
    from umedfast.train.distributed import Dist
    from umedfast.train.ppo_step import minibatch_loss
    from umedfast.train.logprobs import policy_outputs
    from umedfast.train.rollout import sample_candidates

    recs, bundle, pwv = tiny
    torch.manual_seed(0)
    ro = sample_candidates(bundle, recs[:2], k=2, temperature=1.0, top_p=1.0, max_new_tokens=6)
    m = ro.response_mask
    adv = torch.randn(m.shape) * m
    ret = torch.randn(m.shape) * m + 3.0

    def grads(vf_coef):
        pwv.zero_grad(set_to_none=True)
        lp, v, ent = policy_outputs(pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True, k=2,
                                    bundle=bundle)
        p = PPOConfig(k=2, vf_coef=vf_coef, ent_coef=0.01)
        loss, _ = minibatch_loss(p, Dist(), lp, v, ent, lp.detach(), v.detach(), adv, ret, lp.detach(), m)
        loss.backward()
        back = {n: q.grad.clone() for n, q in bundle.model.named_parameters() if q.grad is not None}
        head = pwv.value_head.summary.weight.grad
        return back, None if head is None else head.clone()

    b0, h0 = grads(0.0)
    b1, h1 = grads(0.5)
    assert b0 and set(b0) == set(b1)
    for n in b0:
        torch.testing.assert_close(b0[n], b1[n], atol=0, rtol=0)
    assert h1 is not None and h1.abs().sum() > 0
    assert h0 is None or h0.abs().sum() == 0


# ------------------------------------------------------------------------------------------------ positional bias
def _first_token_advantages(lam, long_len=80, short_len=35, reward=1.0):
    """Two answers with the SAME reward, a young critic (V = 0), GAE then whitening: first-token advantages."""
    L = long_len
    mask = torch.zeros(4, L)
    mask[0, :long_len] = mask[1, :short_len] = mask[2, :long_len] = mask[3, :short_len] = 1
    seq_r = torch.tensor([reward, reward, 0.0, 0.0])  # a second pair with reward 0: whitening has a spread
    r = token_rewards(seq_r, torch.zeros(4, L), mask, kl_coef=0.1)
    adv, _ = gae_advantages(r, torch.zeros(4, L), mask, gamma=1.0, lam=lam)
    return adv[:, 0], masked_whiten(adv, mask)[:, 0]


def test_lambda_one_removes_the_positional_bias_of_early_advantages():
    raw, white = _first_token_advantages(lam=0.95)
    # by hand: A_0 = lam^(T-1) * R, so 0.95^79 = 0.0174 for the long answer and 0.95^34 = 0.1748 for the short
    assert raw[:2].tolist() == pytest.approx([0.95 ** 79, 0.95 ** 34], rel=1e-4)
    assert white[0] < white[1] - 0.2  # the long answer's first token is pushed down whatever its reward
    raw, white = _first_token_advantages(lam=1.0)
    assert raw.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])  # A_t = R - V_t = R at every position
    assert white[0].item() == pytest.approx(white[1].item())  # same reward -> same first-token advantage
    assert PPOConfig().lam == 1.0


def test_critic_warmup_updates_only_the_value_head(tiny):
    from umedfast.train.distributed import Dist
    from umedfast.train.ppo_step import minibatch_loss
    from umedfast.train.logprobs import policy_outputs
    from umedfast.train.rollout import sample_candidates

    recs, bundle, pwv = tiny
    ro = sample_candidates(bundle, recs[:1], k=2, temperature=1.0, top_p=1.0, max_new_tokens=5)
    m = ro.response_mask
    pwv.zero_grad(set_to_none=True)
    lp, v, ent = policy_outputs(pwv, ro.batch, ro.response_ids, ro.prompt_width, need_entropy=True)
    loss, _ = minibatch_loss(PPOConfig(k=2), Dist(), lp, v, ent, lp.detach() - 0.1, v.detach(), torch.ones_like(m),
                             torch.ones_like(m), lp.detach(), m, policy_weight=0.0)
    loss.backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in bundle.model.parameters())
    assert pwv.value_head.summary.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ sampling == scoring
def test_checkpoint_generation_config_does_not_change_rollouts(tiny):
    """A checkpoint whose generation_config sets a repetition penalty, top-k and suppressed tokens samples exactly
    what a clean model samples (those processors would make sampling != scoring)."""
    from umedfast.train.rollout import sample_candidates

    recs, bundle, _ = tiny
    kw = dict(k=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5, step=2)
    clean = sample_candidates(bundle, recs[:2], **kw)
    gc = bundle.model.generation_config
    saved = gc.to_dict()
    try:
        gc.repetition_penalty, gc.top_k, gc.no_repeat_ngram_size = 5.0, 2, 2
        common = clean.response_ids[clean.response_mask.bool()]
        frequent = int(torch.mode(common).values)  # the most frequent sampled token
        gc.suppress_tokens, gc.bad_words_ids = [frequent], [[frequent]]
        dirty = sample_candidates(bundle, recs[:2], **kw)
    finally:
        for key, value in saved.items():
            setattr(gc, key, value)
    assert torch.equal(clean.response_ids, dirty.response_ids)
    assert bundle.model.generation_config.repetition_penalty == saved.get("repetition_penalty")  # restored


# ------------------------------------------------------------------------------------------------ truncation
def test_truncation_flag_and_penalty(tiny):
    from umedfast.train.rollout import _assemble
    from umedfast.model import collate_chat

    recs, bundle, _ = tiny
    tok = bundle.tokenizer
    gen = collate_chat(bundle, recs[:2], for_generation=True)
    a = [5, 6, tok.eos_token_id, tok.pad_token_id]  # ends with EOS
    b = [5, 6, 7, 8]  # hit the cap of 4 without EOS
    ro = _assemble(bundle, recs[:2], gen, torch.tensor([a, b]), cap=4)
    assert ro.truncated.tolist() == [False, True]
    p = PPOConfig(truncation_penalty=0.5)
    assert sequence_reward(p, torch.tensor([2.0, 2.0]), ro.truncated).tolist() == [2.0, 1.5]
    assert sequence_reward(PPOConfig(), torch.tensor([2.0, 2.0]), ro.truncated).tolist() == [2.0, 2.0]


def test_uniform_groups_by_hand():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 2.0])  # K = 3: group 0 all agree, group 1 does not
    assert uniform_groups(r, 3).tolist() == [True, True, True, False, False, False]


# ------------------------------------------------------------------------------------------------ VRR query
def test_vrr_query_producer_is_one_position_before_the_class_token(tiny):
    from umedfast.train.rollout_rewards import class_token_mask
    from umedfast.train.rollout import rollout_from_texts

    recs, bundle, _ = tiny
    rec = next(r for r in recs if r.findings)
    ro = rollout_from_texts(bundle, [rec], [rec.response])
    labels = [[f["label"] for f in rec.findings]]
    own = class_token_mask(bundle, ro, labels, "token")
    prod = class_token_mask(bundle, ro, labels, "producer")
    assert own.sum() > 0 and torch.equal(prod[:, :-1], own[:, 1:])
    with pytest.raises(ValueError):
        class_token_mask(bundle, ro, labels, "next")


def test_vrr_first_mention_reads_each_class_once(tiny):
    from umedfast.model import phrase_token_positions
    from umedfast.train.rollout_rewards import class_token_mask
    from umedfast.train.rollout import rollout_from_texts

    recs, bundle, _ = tiny
    tok = bundle.tokenizer
    rec = next(r for r in recs if len(r.findings) == 1)
    lab = rec.findings[0]["label"]
    text = (f"Detection: two abnormal regions. Localization: first, [100,100,300,300]. Localization: second, "
            f"[110,100,300,310]. Recognition: first, {lab}. Recognition: second, {lab}.")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    every = phrase_token_positions(tok, ids, lab)
    first = phrase_token_positions(tok, ids, lab, first_only=True)
    assert first and set(first) < set(every)
    assert lab in tok.decode([ids[i] for i in first]) and tok.decode([ids[i] for i in first]).count(lab) == 1
    assert max(first) < min(set(every) - set(first))  # the first mention comes before the repeat
    ro = rollout_from_texts(bundle, [rec], [text])
    all_m = class_token_mask(bundle, ro, [[lab]], "producer", "all")
    first_m = class_token_mask(bundle, ro, [[lab]], "producer", "first")
    assert int(first_m.sum()) == len(first) and int(all_m.sum()) == len(every)
    assert bool((all_m | first_m).eq(all_m).all())  # the first mention's positions are among all mentions'
    with pytest.raises(ValueError, match="vrr_mentions"):
        class_token_mask(bundle, ro, [[lab]], "producer", "last")


# ------------------------------------------------------------------------------------------------ span advantages
def test_span_advantages_credit_each_span_with_its_part():
    from umedfast.rl import span_advantages

    # 2 answers of 6 tokens: answer 0 = [pre, pre, box, box, after, after]; answer 1 writes no box (4 tokens)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    in_box = torch.tensor([[0, 0, 1, 1, 0, 0], [0] * 6], dtype=torch.bool)
    after = torch.tensor([[0, 0, 0, 0, 1, 1], [0] * 6], dtype=torch.bool)
    full = torch.full((2, 6), 3.0) * mask
    kl_r = -0.1 * mask  # -kl_coef * kl_t
    kl_togo = gae_advantages(kl_r, torch.zeros_like(kl_r), mask, 1.0, 1.0)[0]  # what span_advantages adds
    assert kl_togo[0].tolist() == pytest.approx([-0.6, -0.5, -0.4, -0.3, -0.2, -0.1])
    adv = span_advantages(full, kl_r, mask, in_box, after, torch.tensor([0.5, 9.0]), torch.tensor([-1.0, 9.0]))
    assert adv[0].tolist() == pytest.approx([3.0, 3.0, 0.5 - 0.4, 0.5 - 0.3, -1.0 - 0.2, -1.0 - 0.1])
    assert adv[1].tolist() == [3.0, 3.0, 3.0, 3.0, 0.0, 0.0]  # no box: the whole-answer advantage, padding 0


def test_box_token_spans_on_a_real_answer(tiny):
    from umedfast.model import box_token_spans

    _, bundle, _ = tiny
    tok = bundle.tokenizer
    text = "Detection: one abnormal region. Localization: [250,250,420,429], upper left. Recognition: it is nodule."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    in_box, after = box_token_spans(tok, ids)
    pieces = [tok.decode(ids[: i + 1]) for i in range(len(ids))]
    box_text = "".join(p[len(q):] for p, q, f in zip(pieces, [""] + pieces[:-1], in_box) if f)
    assert box_text.strip() == "[250,250,420,429]" or "[250,250,420,429]" in box_text
    first_box = in_box.index(True)
    assert not any(after[:first_box]) and all(after[i] or in_box[i] for i in range(first_box, len(ids)))
    assert not any(a and b for a, b in zip(in_box, after))
    assert "nodule" in tok.decode([t for t, f in zip(ids, after) if f])
    assert box_token_spans(tok, tok("Detection: normal.", add_special_tokens=False)["input_ids"]) == (
        [False] * len(tok("Detection: normal.", add_special_tokens=False)["input_ids"]),) * 2


def test_span_gains_against_the_greedy_anchor_and_the_group():
    from types import SimpleNamespace
    from umedfast.train.ppo_step import span_gains

    # one query, K = 2: candidates total 3.0 (ALR 1.0) and 1.0 (ALR 0.25); the anchor total 2.0 (ALR 0.5)
    comb = SimpleNamespace(alr=torch.tensor([1.0, 0.25]))
    rw = SimpleNamespace(combined=comb, anchor_alr=torch.tensor([0.5]), anchor_total=torch.tensor([2.0]))
    sc = SimpleNamespace(rewards=rw, seq_reward=torch.tensor([3.0, 1.0]))
    ro = SimpleNamespace(anchor=SimpleNamespace(truncated=torch.tensor([False])))
    box, rest = span_gains(PPOConfig(k=2, baseline="greedy"), sc, ro)
    assert box.tolist() == [0.5, -0.25] and rest.tolist() == [0.5, -0.75]
    box, rest = span_gains(PPOConfig(k=2, baseline="group"), sc, ro)  # leave-one-out: the other candidate
    assert box.tolist() == [0.75, -0.75] and rest.tolist() == [1.25, -1.25]


# ------------------------------------------------------------------------------------------------ per-query baselines
def _anchored(baseline, anchor=None, k=3):
    from umedfast.train.ppo_step import anchored_values

    g = torch.Generator().manual_seed(0)
    B, L = 6, 5
    mask = torch.ones(B, L)
    mask[1, 3:] = 0
    mask[4, 2:] = 0
    r = torch.randn(B, L, generator=g) * 0.1 * mask
    v = torch.randn(B, L, generator=g)
    ret = gae_advantages(r, torch.zeros_like(v), mask, 1.0, 1.0)[0]  # G_t
    adv = gae_advantages(r, anchored_values(v, r, mask, 1.0, k, baseline, anchor), mask, 1.0, 1.0)[0]
    return r, v, mask, ret, adv


def test_group_baseline_is_leave_one_out_at_the_first_token_and_critic_change_later():
    _, v, mask, G, adv = _anchored("group")
    g0 = G[:, 0].view(-1, 3)
    loo = ((g0.sum(1, keepdim=True) - g0) / 2).flatten()
    assert torch.allclose(adv[:, 0], G[:, 0] - loo, atol=1e-6)  # RLOO against the query's other candidates
    expect = (G - loo[:, None] - (v - v[:, :1])) * mask  # later tokens: the critic's change since the start
    assert torch.allclose(adv, expect, atol=1e-6)
    # a constant shift of one query's returns (an "easy image") does not change that query's advantages
    r2 = torch.zeros(6, 5)
    r2[:3, -1] = 5.0  # a sequence reward 5 higher for every candidate of query 0
    from umedfast.train.ppo_step import anchored_values
    a_plain = gae_advantages(torch.zeros(6, 5), anchored_values(v, torch.zeros(6, 5), torch.ones(6, 5), 1.0, 3, "group"),
                             torch.ones(6, 5), 1.0, 1.0)[0]
    a_shift = gae_advantages(r2, anchored_values(v, r2, torch.ones(6, 5), 1.0, 3, "group"), torch.ones(6, 5),
                             1.0, 1.0)[0]
    assert torch.allclose(a_plain, a_shift, atol=1e-6)


def test_greedy_baseline_is_the_anchor_reward():
    anchor = torch.tensor([0.7, -0.2])
    _, v, mask, G, adv = _anchored("greedy", anchor)
    b = anchor.repeat_interleave(3)
    assert torch.allclose(adv[:, 0], G[:, 0] - b, atol=1e-6)
    assert torch.allclose(adv, (G - b[:, None] - (v - v[:, :1])) * mask, atol=1e-6)


def test_baseline_config_is_checked():
    assert load_config(None, ["ppo.baseline=greedy"]).ppo.baseline == "greedy"
    with pytest.raises(ConfigError, match="ppo.baseline must be critic, group or greedy"):
        load_config(None, ["ppo.baseline=mean"])
    with pytest.raises(ConfigError, match="applies to advantage=gae"):
        load_config(None, ["ppo.baseline=group", "ppo.advantage=grpo", "ppo.kl_estimator=k3"])


def _greedy_advantages(center: bool, anchor_total: torch.Tensor, seq_reward: torch.Tensor) -> torch.Tensor:
    """ppo_step.advantages on a hand-built rollout: K=3 candidates of 2 queries, 4 tokens, the greedy baseline."""
    from types import SimpleNamespace

    from umedfast.train.distributed import Dist
    from umedfast.train.ppo_step import advantages

    B, L = 6, 4
    mask = torch.ones(B, L)
    mask[2, 2:] = 0
    cfg = PPOConfig(k=3, baseline="greedy", center_advantages=center, kl_coef=0.0)
    st = SimpleNamespace(cfg=cfg, device="cpu", d=Dist(), rewards=RewardsConfig())
    ro = SimpleNamespace(response_mask=mask, truncated=torch.zeros(B, dtype=torch.bool),
                         anchor=SimpleNamespace(truncated=torch.zeros(2, dtype=torch.bool)))
    sc = SimpleNamespace(seq_reward=seq_reward, kl=torch.zeros(B, L), old_v=torch.zeros(B, L),
                         rewards=SimpleNamespace(anchor_total=anchor_total))
    return advantages(st, ro, sc)[0], mask


def test_center_advantages_removes_the_mean_the_greedy_baseline_leaves():
    """Sampled answers below their greedy answer all get negative advantages under the greedy baseline (every sampled
    token pushed down); ``center_advantages`` subtracts the batch mean, keeping the order and the scale."""
    anchor = torch.tensor([1.0, 2.0])
    seq = torch.tensor([0.2, 0.8, 0.5, 1.0, 1.9, 1.2])  # every candidate at or below its query's greedy answer
    plain, mask = _greedy_advantages(False, anchor, seq)
    centred, _ = _greedy_advantages(True, anchor, seq)
    m = mask.bool()
    assert plain[m].max() <= 0 and plain[m].mean() < -0.5  # the offset the option removes
    assert abs(float(centred[m].mean())) < 1e-5
    assert torch.allclose(centred[m].std(), torch.tensor(1.0), atol=1e-4)  # (Bessel-corrected, as masked_var)
    assert torch.equal(centred[:, 0].argsort(), plain[:, 0].argsort())  # same order of candidates
    with pytest.raises(ConfigError, match="center_advantages applies"):
        load_config(None, ["ppo.center_advantages=true"])  # the critic baseline is always centred
    assert load_config(None, ["ppo.center_advantages=true", "ppo.baseline=greedy"]).ppo.center_advantages


def test_greedy_anchor_rollout_is_argmax_and_joins_the_reward_group(tiny):
    """The anchor is the argmax answer (what evaluation decodes) and enters the ALR/VRR max of its query."""
    from umedfast.rewards.judge import RubricJudge
    from umedfast.train.rollout_rewards import score_rollout
    from umedfast.train.rollout import rollout_from_texts, sample_candidates

    recs, bundle, _ = tiny
    kw = dict(k=1, temperature=1.0, top_p=1.0, max_new_tokens=10)
    g1 = sample_candidates(bundle, recs[:2], seed=1, step=0, greedy=True, **kw)
    g2 = sample_candidates(bundle, recs[:2], seed=9, step=7, greedy=True, **kw)
    assert torch.equal(g1.response_ids, g2.response_ids)  # no sampling key involved
    with torch.no_grad():
        from umedfast.model import collate_chat, model_inputs
        batch = collate_chat(bundle, recs[:2], for_generation=True)
        first = bundle.model(**model_inputs(batch)).logits[:, -1].argmax(-1)
    assert torch.equal(g1.response_ids[:, 0], first)
    # rewards: query 0's candidates are the reference answer and a no-box answer; its anchor a box twice as wide
    r = next(x for x in recs if x.findings)
    texts = [r.response, "Detection: nothing. Recognition: unclear."]
    ro = rollout_from_texts(bundle, [r, r], texts)
    ro.anchor = rollout_from_texts(bundle, [r], ["Detection: nothing. Recognition: unclear."])
    cfg = RewardsConfig(w_vrr=0.0, w_llm=0.0)
    rw = score_rollout(bundle, ro, RubricJudge(), cfg, 2)
    assert rw.anchor_total.shape == (1,) and rw.anchor_total.item() == 0.0
    assert rw.combined.total.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    ro.anchor = rollout_from_texts(bundle, [r], [r.response])  # an anchor as good as the best candidate
    rw = score_rollout(bundle, ro, RubricJudge(), cfg, 2)
    assert rw.anchor_total.item() == pytest.approx(rw.combined.total[0].item())


# ------------------------------------------------------------------------------------------------ query weights
def test_inverse_mean_weights_restore_the_cross_entropy_balance():
    """A binary decision, rewards 1 (right) / 0 (wrong): the plain policy gradient on the logit is p(1-p); with the
    1/E[R] weight it is (1-p), the cross-entropy pull of a query the policy gets right with probability p."""
    from umedfast.rl import inverse_mean_weights

    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # K = 4: query 0 right 1/4, query 1 right 3/4
    w = inverse_mean_weights(r, 4, floor=0.0)
    assert w.tolist() == [4.0] * 4 + [pytest.approx(4 / 3)] * 4
    for p_right, wq in ((0.25, 4.0), (0.75, 4 / 3)):
        plain = p_right * (1 - p_right)  # d E[R] / d logit
        assert plain * wq == pytest.approx(1 - p_right)
    # the floor shifts rewards that can be negative; a group at the floor is capped by min_mean, not divided by 0
    assert inverse_mean_weights(torch.tensor([-0.3, -0.3]), 2, floor=-0.3).tolist() == [10.0, 10.0]
    with pytest.raises(ConfigError, match="query_weight"):
        load_config(None, ["ppo.query_weight=inverse_mean", "ppo.advantage=rloo", "ppo.baseline=critic"])
