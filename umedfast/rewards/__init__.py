"""Rewards for stage-2 PPO: relevance judge, Abnormal Localization Reward (IoU), Vision Relevance Reward (attention)."""
