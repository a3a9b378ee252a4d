"""Triton kernels, installed as ``umedfast.kernels`` (see setup.py ``package_dir``)."""
