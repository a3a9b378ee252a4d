"""Trainers: stage-1 abnormal-aware SFT (``sft.run_sft``) and stage-2 AAR PPO (``ppo.run_ppo``, one iteration in
``ppo_step``), with atomic checkpoints (``training_state``), torchrun data parallelism (``distributed``, ``fsdp``)
and metrics (``metrics``). docs/architecture.md maps every module."""
