"""umedfast: fast abnormal-aware training (SFT + PPO with IoU and attention rewards) for medical VLMs."""

__version__ = "0.1.0"
