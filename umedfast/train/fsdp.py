"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for models whose weights, gradients and AdamW state do not fit one
device: every rank holds 1/world of each, and gathers a layer's weights only while that layer runs.

``parallel: fsdp2`` (top level of the config) under torchrun. Units: each transformer block (class name ending in
``DecoderLayer`` / ``EncoderLayer`` / ``VisionBlock``: LLaVA's Llama + CLIP layers, Qwen2-VL's text + vision blocks),
the inner model's vision parts (vision tower, projector), then the HF model itself as the root (text embeddings,
final norm, LM head; under LoRA the base model inside peft). Gradients are reduce-scattered and averaged over
ranks, exactly like DDP's all-reduce, so the losses keep their DDP normalization.

Every forward is a collective, which the rest of the loop respects:
- generation runs with ``synced_gpus=True`` (a rank that finished keeps stepping until all have);
- evaluation generates on every rank (same records, only rank 0 writes);
- the PPO forward goes through the root module (:class:`RootPolicyWithValue`), never an inner submodule, so the
  root's weights are gathered; the prompt-shared forward (inner-model calls) is off, as under DDP;
- checkpoints gather full state dicts (:func:`full_model_state`, :func:`full_optimizer_state`) so the files are
  the same ``model.safetensors`` / ``save_pretrained`` layout as DDP and 1 process (``optimizer.pt`` holds the full
  AdamW state keyed by parameter name), and resume loads them back into the shards.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from umedfast.train.distributed import Dist

UNIT_SUFFIXES = ("DecoderLayer", "EncoderLayer", "VisionBlock")


def is_sharded(module) -> bool:
    """True if ``module`` or any submodule is managed by FSDP2."""
    return isinstance(module, torch.nn.Module) and any(isinstance(m, FSDPModule) for m in module.modules())


def _mesh(d: Dist, device: str):

    return init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (d.world,))


def shard_model(model: torch.nn.Module, d: Dist, device: str) -> torch.nn.Module:
    """``fully_shard`` each transformer block of ``model``, its vision parts, then the HF model (the base model of a
    peft model) as the root; returns ``model`` (sharded in place).

    Call before building the optimizer (parameters become DTensor shards). Also marks the model so HF
    ``generate`` syncs ranks by itself (``synced_gpus``) when a caller does not say.
    """
    mesh = _mesh(d, device)
    units = [m for m in model.modules() if type(m).__name__.endswith(UNIT_SUFFIXES)]
    if not units:
        raise ValueError(f"FSDP2: found no transformer blocks ({', '.join(UNIT_SUFFIXES)}) in {type(model).__name__}")
    # the inner model's vision parts (vision tower, projector) become units too: HF generate runs the
    # vision encoder on its own before the decoding loop, outside the root's forward
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    lm = getattr(inner, "language_model", None)  # its embeddings are called from the inner model: stays in root
    parts = [c for c in inner.children() if c is not lm] if inner is not None else []
    for m in units + _not_hf_models(parts):
        if not _is_fsdp_class(m):  # a block reached again through its container
            fully_shard(m, mesh=mesh)
    # root: the HF model itself (a peft model's generate calls the base model's, bypassing peft's forward)
    fully_shard(base, mesh=mesh)
    _init_root(base)
    base._is_fsdp_managed_module = True  # transformers' generate: synced_gpus defaults to True
    return model


def _not_hf_models(mods: list) -> list:
    """Replace each HF ``PreTrainedModel`` (and module container) in ``mods`` by its children (recursively), keeping
    those with parameters.

    ``fully_shard`` swaps a module's class for an ``FSDP<Name>`` subclass, and transformers looks up its
    hidden-state recorders by the exact class (CLIP's vision model then returns no hidden states).
    """
    out = []
    for m in mods:
        if isinstance(m, (PreTrainedModel, torch.nn.ModuleList, torch.nn.ModuleDict)):  # containers: no forward
            out += _not_hf_models(list(m.children()))
        elif any(True for _ in m.parameters()):
            out.append(m)
    return out


def shard_small(module: torch.nn.Module, d: Dist, device: str) -> torch.nn.Module:
    """One FSDP2 unit for a small module (the value head): its gradient is averaged over ranks like the policy's."""
    fully_shard(module, mesh=_mesh(d, device))
    _init_root(module)
    return module


def _init_root(module: torch.nn.Module) -> None:
    """Make ``module`` the FSDP root now. FSDP2 picks as root the first unit to run forward; generation calls the
    vision tower first, which would then claim the root and break the next full forward."""
    fully_shard.state(module)._lazy_init()  # private in torch 2.13; the same call a first root forward makes


def local_fraction(module: torch.nn.Module) -> float:
    """Fraction of ``module``'s parameter elements stored on this rank (1.0 unsharded, ~1/world under FSDP2)."""
    full = local = 0
    for p in module.parameters():
        full += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local / max(1, full)


def scalar(t) -> torch.Tensor:
    """A DTensor (e.g. ``clip_grad_norm_``'s total norm over shards) as a plain tensor; others unchanged."""
    return t.full_tensor() if isinstance(t, DTensor) else t


class RootPolicyWithValue(torch.nn.Module):
    """(logits Float[B, T, V], values Float[B, T]) like :class:`umedfast.model.PolicyWithValue`, through the policy's
    root forward (``output_hidden_states``; the last entry is the final-norm output the value head reads)."""

    def __init__(self, pwv):
        super().__init__()
        self.pwv = pwv

    @property
    def policy(self):
        return self.pwv.policy

    def forward(self, **batch):
        out = self.pwv.policy(**batch, output_hidden_states=True, use_cache=False, return_dict=True)
        return out.logits, self.pwv.value_head(out.hidden_states[-1])


def _full(module: torch.nn.Module, d: Dist) -> dict:
    """Full CPU state dict of a sharded ``module`` on rank 0 ({} elsewhere). Collective: every rank calls it."""
    out = {}
    for k, v in module.state_dict().items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        if d.is_main:  # own compact storage (a gathered tensor can be a view of a padded buffer)
            out[k] = v.detach().to("cpu", copy=True)
    return out


class full_model_state:  # noqa: N801 - used like a module by the checkpoint code
    """What ``save_training_state`` / ``load_training_state`` see as the model under FSDP2.

    ``state_dict()`` gives the full tensors gathered at construction (every rank constructs it; rank 0 writes them);
    ``load_state_dict(full)`` (every rank, each read the file) scatters them into this rank's shards.
    """

    def __init__(self, module: torch.nn.Module, d: Dist):
        self.module, self.d = module, d
        self._full = _full(module, d)

    def state_dict(self) -> dict:
        return self._full

    def load_state_dict(self, sd: dict, strict: bool = True):

        keys = set(self.module.state_dict())
        set_model_state_dict(self.module, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        return sorted(keys - set(sd)), sorted(set(sd) - keys)


class full_optimizer_state:  # noqa: N801
    """The optimizer as the checkpoint code sees it under FSDP2: full (unsharded) state, keyed by parameter name."""

    def __init__(self, module: torch.nn.Module, optimizer, d: Dist):

        self.module, self.optimizer = module, optimizer
        self._full = get_optimizer_state_dict(module, optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state_dict(self) -> dict:
        return self._full

    def load_state_dict(self, sd: dict) -> None:

        # strict=False: parameters that never got a gradient (e.g. CLIP's unused post-layernorm) have no AdamW state
        set_optimizer_state_dict(self.module, self.optimizer, sd,
                                 options=StateDictOptions(full_state_dict=True, strict=False))


def checkpoint_views(model: torch.nn.Module, optimizer, d: Dist, value_head=None, opt_root=None):
    """(model, optimizer, value head) to hand to ``save/load_training_state``: themselves unless sharded.

    ``opt_root``: a module holding every parameter of ``optimizer`` (PPO: policy + value head). Collective under
    FSDP2: every rank calls it.
    """
    if not is_sharded(model):
        return model, optimizer, value_head
    vh = full_model_state(value_head, d) if value_head is not None else None
    return full_model_state(model, d), full_optimizer_state(opt_root or model, optimizer, d), vh


@contextmanager
def gathered_for_save(modules: list, d: Dist):
    """Inside, ``m.state_dict()`` of each sharded module in ``modules`` returns full CPU tensors on rank 0, so
    ``save_pretrained``-style writers work unchanged there. Collective on entry: every rank enters."""
    handles, seen = [], set()
    for m in modules:
        if m is None or id(m) in seen or not is_sharded(m):
            continue
        seen.add(id(m))
        full = _full(m, d)

        def hook(module, state_dict, prefix, local_metadata, full=full):
            for k in list(state_dict):
                if k.startswith(prefix) and k[len(prefix):] in full:
                    state_dict[k] = full[k[len(prefix):]]

        handles.append(m.register_state_dict_post_hook(hook))
    # writers look up key conversions by the model's class: show them the HF class, not FSDP's FSDP<Name> subclass
    swapped = [(m, type(m)) for m in {id(m): m for m in modules if m is not None}.values() if _is_fsdp_class(m)]
    for m, cls in swapped:
        m.__class__ = next(c for c in cls.__bases__ if not _is_fsdp_type(c))
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls
        for h in handles:
            h.remove()


def _is_fsdp_type(c: type) -> bool:

    return issubclass(c, FSDPModule)


def _is_fsdp_class(m) -> bool:
    return _is_fsdp_type(type(m))


def no_sync(module: torch.nn.Module, d: Dist, sync: bool):
    """Context for one backward of a gradient-accumulation step: ``sync=False`` skips the gradient reduction
    (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync``); the last micro-batch syncs."""
    if sync or not d.enabled:
        return nullcontext()
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.no_sync()
    if is_sharded(module):
        @contextmanager
        def off():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        return off()
    return nullcontext()
