"""Triton kernels, installed as ``umedfast.kernels`` (see setup.py ``package_dir``).

Names resolve lazily so importing the package never pulls in triton until a kernel is used.
"""
import importlib
import sys
import types

_EXPORTS = {
    "vrr_attention": "vrr_attention",
    "vrr_attention_ref": "vrr_attention",
    "token_logprobs_entropy": "logprob_entropy",
    "token_logprobs_entropy_ref": "logprob_entropy",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value  # resolve once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _KernelsPackage(types.ModuleType):
    """The submodule ``vrr_attention`` shares its name with the function it exports. Importing a submodule makes
    Python set the package attribute of that name to the module object, which would shadow the public function
    (``umedfast.kernels.vrr_attention(...)`` -> "'module' object is not callable"). Exported names therefore never
    bind to submodules; the submodules stay reachable with ``importlib.import_module`` / ``sys.modules``."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _KernelsPackage
