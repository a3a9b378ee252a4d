"""Pure RL math for stage-2 PPO: masked statistics, KL estimators, advantages (GAE / GRPO / RLOO), PPO losses.

Every function is a small, side-effect-free tensor function, unit-tested on numbers checkable by hand; the training
loop in ``umedfast.train.ppo`` only calls them.
"""
from umedfast.rl.advantages import (
    credit_tokens,
    gae_advantages,
    group_advantages,
    grpo_advantages,
    inverse_mean_weights,
    rloo_advantages,
    span_advantages,
    token_rewards,
)
from umedfast.rl.losses import entropy_from_logits, kl_penalty, policy_loss, value_loss
from umedfast.rl.stats import masked_mean, masked_var, masked_whiten

__all__ = [
    "masked_mean", "masked_var", "masked_whiten", "kl_penalty", "token_rewards", "gae_advantages",
    "grpo_advantages", "inverse_mean_weights", "rloo_advantages", "span_advantages", "credit_tokens",
    "group_advantages", "policy_loss", "value_loss", "entropy_from_logits",
]
