"""RL math on numbers checkable by hand."""
import math

import pytest
import torch

from umedfast.rl import (entropy_from_logits, gae_advantages, grpo_advantages, kl_penalty, masked_mean,
                         masked_whiten, policy_loss, rloo_advantages, token_rewards, value_loss)
from umedfast.rl.advantages import group_advantages, last_token_index
from umedfast.rl.losses import gather_logprobs


def test_masked_mean_and_empty_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_whiten_ignores_padding():
    x = torch.tensor([[1.0, 3.0, 1e6]])
    m = torch.tensor([[1, 1, 0]])
    w = masked_whiten(x, m)
    # mean 2, unbiased var 2 -> (+-1)/sqrt(2)
    assert w[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-5)
    assert w[0, 2].item() == 0.0
    keep = masked_whiten(x, m, shift_mean=False)
    assert keep[0, :2].tolist() == pytest.approx([2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)], rel=1e-5)


def test_kl_estimators():
    lp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(math.log(2))
    # r = 0.5: (0.5 - 1) - log 0.5 = -0.5 + 0.6931
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(lp, lp, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k9")


def test_token_rewards_put_sequence_reward_on_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = token_rewards(torch.tensor([2.0, 1.0]), kl, m, kl_coef=0.5)
    assert r[0].tolist() == pytest.approx([-0.05, -0.1, 2.0 - 0.15])
    assert r[1].tolist() == pytest.approx([1.0 - 0.25, 0.0, 0.0])
    assert last_token_index(m).tolist() == [2, 0]


def test_gae_by_hand():
    # gamma=1, lam=1: advantage = (sum of future rewards) - V_t
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.2, 0.1]])
    m = torch.ones(1, 3)
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.8, 0.9])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    # lam=0: one-step TD errors delta_t = r_t + gamma V_{t+1} - V_t
    adv0, _ = gae_advantages(r, v, m, gamma=0.9, lam=0.0)
    assert adv0.tolist()[0] == pytest.approx([0.9 * 0.2 - 0.5, 0.9 * 0.1 - 0.2, 1.0 - 0.1])
    # gamma=0.5, lam=0.5, two tokens: d1 = 1 - 0.1 = 0.9; d0 = 0 + .5*.1 - .5 = -.45; A0 = d0 + .25*d1
    adv2, _ = gae_advantages(r[:, 1:], v[:, 1:] * 0 + torch.tensor([[0.5, 0.1]]), m[:, 1:], gamma=0.5, lam=0.5)
    assert adv2.tolist()[0] == pytest.approx([-0.45 + 0.25 * 0.9, 0.9])


def test_gae_padding_does_not_leak():
    r = torch.tensor([[0.0, 1.0, 99.0]])
    v = torch.tensor([[0.0, 0.0, 50.0]])
    m = torch.tensor([[1, 1, 0]])
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([1.0, 1.0, 0.0])
    assert ret[0, 2].item() == 0.0


def test_grpo_and_rloo_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])  # two queries, K=3
    rloo = rloo_advantages(r, 3)
    # query 0: 1 - 0 = 1; 0 - 0.5 = -0.5; 0 - 0.5 = -0.5; query 1: 1 - 2 = -1; 2 - 1.5 = 0.5
    assert rloo.tolist() == pytest.approx([1.0, -0.5, -0.5, -1.0, 0.5, 0.5])
    g = grpo_advantages(r, 3)
    std0 = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert g[:3].tolist() == pytest.approx([(2 / 3) / std0, -(1 / 3) / std0, -(1 / 3) / std0], rel=1e-4)
    assert grpo_advantages(torch.ones(4), 2).abs().max().item() == 0.0  # equal rewards: no signal, no NaN
    with pytest.raises(ValueError):
        grpo_advantages(r, 4)
    tok = group_advantages(r, torch.tensor([[1, 1]] * 6), 3, "rloo")
    assert tok[:, 0].tolist() == pytest.approx(rloo.tolist())


def test_policy_loss_clips():
    m = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0]])
    loss, frac = policy_loss(new, old, adv, m, clip_eps=0.2)
    # token 0: ratio 1.5 clipped to 1.2 -> -1.2; token 1: ratio 0.5 -> min(0.5, 0.8) = 0.5 -> -0.5
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2, rel=1e-5)
    assert frac.item() == pytest.approx(0.5)
    loss_neg, _ = policy_loss(new, old, -adv, m, clip_eps=0.2)
    # negative advantage: token0 max(1.5, 1.2) = 1.5; token1 max(0.5, 0.8) = 0.8
    assert loss_neg.item() == pytest.approx((1.5 + 0.8) / 2, rel=1e-5)


def test_value_loss_clips():
    m = torch.ones(1, 1)
    # v moved from 0 to 1, target 1: unclipped error 0, clipped v = 0.2 -> error 0.64; max -> 0.64 * 0.5
    assert value_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1), m, 0.2).item() == pytest.approx(0.32)
    assert value_loss(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), m, 0.2).item() == 0.0


def test_entropy_and_gather():
    logits = torch.zeros(1, 1, 4)
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    lp = gather_logprobs(logits, torch.tensor([[2]]))
    assert lp.item() == pytest.approx(math.log(0.25))
