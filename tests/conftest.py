"""Test-wide environment: Triton runs in its CPU interpreter, and nothing may touch a model hub."""
import os

# Must be set before any module imports triton-jitted kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
