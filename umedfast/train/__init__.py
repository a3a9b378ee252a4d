"""Trainers: stage-1 abnormal-aware SFT (``sft.run_sft``) and stage-2 AAR PPO (``ppo.run_ppo``), with atomic
checkpoints (``checkpoint``), torchrun data parallelism (``distributed``) and metrics (``metrics``)."""
