"""Triton kernels, installed as ``umedfast.kernels`` (see setup.py ``package_dir``).

Names resolve lazily so importing the package never pulls in triton until a kernel is used.
"""
import importlib

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
        # Cache the function: importing the submodule `vrr_attention` set the package attribute of the same name
        # to the module object, which would otherwise shadow the function on every later access.
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
