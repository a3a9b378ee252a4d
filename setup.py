"""Thin build driver: maps kernels/ to umedfast.kernels (the CMake extension for csrc/ is added by the ops work)."""
from setuptools import find_packages, setup

packages = find_packages(include=["umedfast", "umedfast.*"]) + ["umedfast.kernels"]
setup(packages=packages, package_dir={"umedfast.kernels": "kernels"}, include_package_data=True)
