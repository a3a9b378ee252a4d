"""Ahead-of-time Triton compiles for an H100/H200 (sm_90) on a machine with no GPU, shared by the kernel tests.

``compile_for_sm90(script)`` runs a script in a fresh interpreter-free process (triton cannot mix interpreted and
compiled kernels in one process). Inside the script, ``from _triton_aot import sm90_resources`` compiles one kernel
variant and reports what the GPU would see: registers, stack frame (spills land there), local memory, shared memory,
tensor-core (wgmma) instructions and global atomics. Registers and stack come from ``cuobjdump -res-usage`` (bundled
with triton) on the cubin, so a compile served from triton's cache reports them too (warm reruns take seconds).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SMEM_LIMIT = 227 * 1024  # H100 / H200 max dynamic shared memory per block (232448 bytes)


def compile_for_sm90(script: str, timeout: int = 1500) -> dict:
    """Run ``script`` (which prints one JSON line last) in a subprocess without TRITON_INTERPRET. Returns the parsed
    JSON; skips the calling test when the triton install has no usable ptxas (the script prints {"skip": reason})."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if env.get("UMEDFAST_AOT_TRITON"):  # another triton install (e.g. the device image's 3.6) shadows the local one
        env["PYTHONPATH"] = env["UMEDFAST_AOT_TRITON"] + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(f"no usable ptxas in this triton install: {res['skip']}")
    return res


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def sm90_resources(fn, signature: dict, constexprs: dict, aligned=(), *, num_warps: int, num_stages: int) -> dict:
    """Compile ``fn`` for sm_90 (inside a compile_for_sm90 script). ``aligned``: argument names the runtime would mark
    16-byte divisible (pointers and strides of aligned tensors), which enables wgmma and pipelined loads."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    k = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    ptx = k.asm["ptx"]
    return {
        "regs": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"]),
        "shared": int(k.metadata.shared), "wgmma": ptx.count("wgmma.mma_async"), "cp_async": ptx.count("cp.async"),
        "atomics": len(re.findall(r"\s(?:red|atom)\.global", ptx)),  # not "cp.async...shared.global"
        "tma": ptx.count("cp.async.bulk.tensor"),  # TMA copies (tensor descriptors)
        # warp specialization happened: the partitions survive in the TTGIR, and Hopper rebalances registers
        "warp_specialized": "ttg.warp_specialize" in k.asm.get("ttgir", "") or "setmaxnreg" in ptx,
    }


def no_ptxas(err: Exception) -> bool:
    """True when ``err`` says the ptxas binary is missing (skip), not that ptxas rejected a kernel (fail)."""
    msg = str(err).lower()
    return isinstance(err, FileNotFoundError) or ("ptxas" in msg and ("not found" in msg or "cannot find" in msg))
