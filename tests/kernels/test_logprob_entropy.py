"""Fused token log-prob / entropy (kernels/logprob_entropy.py) against a float64 full-logits oracle.

Triton runs in its CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); ``backend="torch"`` forces the
chunked torch path that plain CPU uses. Accuracy rule (DESIGN.md, from flash-attention's tests): the error against
float64 is at most 2x the error of torch computing the same thing in the same dtype, plus a floor of 1e-6 x scale
for fp32 where both errors are at rounding level.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from umedfast.kernels import token_logprobs_entropy, token_logprobs_entropy_ref
from umedfast.kernels import logprob_entropy as lpe
from _triton_aot import compile_for_sm90

N, H = 37, 48
BACKENDS = ["triton", "torch"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: with the team's jobs on 2 shared cores, intra-op thread handoffs cost more than the math
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(v, *, seed=0, bias=False, scale=0.3, n=N, h=H, ignore=(3, 20)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * scale
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[0], targets[1] = 0, v - 1  # first and last vocabulary entries (last sits in the partial chunk)
    for i in ignore:
        targets[i] = -100
    g_lp = torch.randn(n, generator=g, dtype=torch.float64)
    g_ent = torch.randn(n, generator=g, dtype=torch.float64)
    return hidden, weight, b, targets, g_lp, g_ent


def _run(fn, dtype, hidden, weight, bias, targets, g_lp, g_ent, **kw):
    """Values and grads of sum(g_lp * logprob + g_ent * entropy) with inputs cast to dtype; all returned as float64."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    lp, ent = fn(leaves[0], leaves[1], targets, bias=leaves[2], **kw)
    ((lp.double() * g_lp).sum() + (ent.double() * g_ent).sum()).backward()
    out = {"logprob": lp, "entropy": ent, "dhidden": leaves[0].grad, "dweight": leaves[1].grad}
    if bias is not None:
        out["dbias"] = leaves[2].grad
    return {k: v.detach().double() for k, v in out.items()}


def _check_rule(ours, same_dtype, ref, floor_rel):
    for name, r in ref.items():
        err = (ours[name] - r).abs().max().item()
        err_pt = (same_dtype[name] - r).abs().max().item()
        bound = 2 * err_pt + floor_rel * max(1.0, r.abs().max().item())
        assert torch.isfinite(ours[name]).all(), name
        assert err <= bound, f"{name}: error {err:.3e} > bound {bound:.3e} (torch same-dtype error {err_pt:.3e})"


def _compare(v, dtype, backend, *, floor_rel=1e-6, chunk_size=128, **problem_kw):
    temperature = problem_kw.pop("temperature", 1.0)
    args = _problem(v, **problem_kw)
    kw = dict(temperature=temperature)
    ref = _run(token_logprobs_entropy_ref, torch.float64, *args, **kw)
    same = _run(token_logprobs_entropy_ref, dtype, *args, **kw)
    ours = _run(token_logprobs_entropy, dtype, *args, chunk_size=chunk_size, backend=backend, **kw)
    _check_rule(ours, same, ref, floor_rel)
    return ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [1000, 1031])
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_values_and_grads_match_float64(backend, v, bias):
    _compare(v, torch.float32, backend, bias=bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_temperature(backend, temperature):
    ours = _compare(1031, torch.float32, backend, temperature=temperature, bias=True)
    # temperature really changes the distribution: entropy grows with it
    hot = _run(token_logprobs_entropy, torch.float32, *_problem(1031, bias=True), temperature=temperature * 2,
               chunk_size=128, backend=backend)
    valid = _problem(1031)[3] != -100
    assert (hot["entropy"][valid] > ours["entropy"][valid]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_inputs(backend):
    # bf16 inputs; the op returns float32 values and bf16 grads (dtypes: test_bf16_output_dtypes)
    _compare(1031, torch.bfloat16, backend, floor_rel=0.0, scale=0.5)


def test_bf16_output_dtypes():
    hidden, weight, _, targets, _, _ = _problem(1000)
    h = hidden.bfloat16().requires_grad_()
    w = weight.bfloat16().requires_grad_()
    lp, ent = token_logprobs_entropy(h, w, targets, chunk_size=64)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == ent.shape == (N,)
    (lp.sum() + ent.sum()).backward()
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_gives_zero_and_no_gradient(backend):
    hidden, weight, bias, targets, g_lp, g_ent = _problem(1031, bias=True)
    out = _run(token_logprobs_entropy, torch.float32, hidden, weight, bias, targets, g_lp, g_ent,
               chunk_size=128, backend=backend)
    ign = targets == -100
    assert ign.sum() == 2
    assert (out["logprob"][ign] == 0).all() and (out["entropy"][ign] == 0).all()
    assert (out["dhidden"][ign] == 0).all()
    assert (out["dhidden"][~ign].abs().sum(1) > 0).all()
    # the ignored rows' hidden states do not reach the weight gradient either
    hidden2 = hidden.clone()
    hidden2[ign] = torch.randn(int(ign.sum()), H, dtype=torch.float64) * 10
    out2 = _run(token_logprobs_entropy, torch.float32, hidden2, weight, bias, targets, g_lp, g_ent,
                chunk_size=128, backend=backend)
    torch.testing.assert_close(out2["dweight"], out["dweight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out2["logprob"], out["logprob"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    hidden, weight, _, targets, g_lp, g_ent = _problem(1000)
    targets = torch.full_like(targets, -100)
    out = _run(token_logprobs_entropy, torch.float32, hidden, weight, None, targets, g_lp, g_ent,
               chunk_size=128, backend=backend)
    for name in ("logprob", "entropy", "dhidden", "dweight"):
        assert (out[name] == 0).all(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_input_and_single_output_gradient(backend):
    hidden, weight, _, targets, _, _ = _problem(1000)
    h3 = hidden[:36].float().reshape(4, 9, H).requires_grad_()
    w = weight.float().requires_grad_()
    t3 = targets[:36].reshape(4, 9)
    lp, ent = token_logprobs_entropy(h3, w, t3, chunk_size=128, backend=backend)
    assert lp.shape == ent.shape == (4, 9)
    ent.sum().backward()  # only entropy feeds the loss: the logprob gradient arrives as None
    h2 = hidden[:36].float().requires_grad_()
    w2 = weight.float().requires_grad_()
    lp_r, ent_r = token_logprobs_entropy_ref(h2, w2, targets[:36])
    ent_r.sum().backward()
    torch.testing.assert_close(lp.reshape(-1), lp_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h3.grad.reshape(36, H), h2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trainable", ["hidden", "weight"])
def test_gradient_to_one_input_only(backend, trainable):
    # frozen LM head (LoRA elsewhere) or frozen trunk: the other gradient is skipped, the one asked for is right
    hidden, weight, _, targets, g_lp, g_ent = _problem(1031)
    h, w = hidden.float(), weight.float()
    (h if trainable == "hidden" else w).requires_grad_()
    lp, ent = token_logprobs_entropy(h, w, targets, chunk_size=128, backend=backend)
    ((lp * g_lp.float()).sum() + (ent * g_ent.float()).sum()).backward()
    ref = _run(token_logprobs_entropy_ref, torch.float64, hidden, weight, None, targets, g_lp, g_ent)
    got, want = (h.grad, ref["dhidden"]) if trainable == "hidden" else (w.grad, ref["dweight"])
    assert (h if trainable == "weight" else w).grad is None
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [13, 200, 5000])
def test_torch_path_any_chunk(chunk_size):
    # the torch path takes any chunk width (narrow, not a power of two, wider than V)
    _compare(1031, torch.float32, "torch", chunk_size=chunk_size, n=9, ignore=(2,))


def test_large_logits_are_stable():
    # logits of several hundred: a naive exp overflows; the online max keeps everything finite
    for backend in BACKENDS:
        # logits reach ~1600 here: fp32 rounds them by ulp(1600) = 1.2e-4, an error whose size depends on the
        # summation order of h @ W^T (Triton's BLOCK_H tiles vs MKL), hence the floor of 1e-5 x output scale
        ours = _compare(1031, torch.float32, backend, scale=40.0, floor_rel=1e-5)
        assert ours["entropy"].min() >= -1e-4


def test_uniform_distribution_entropy_is_log_v():
    v = 1031
    hidden = torch.zeros(5, H)
    weight = torch.randn(v, H)
    lp, ent = token_logprobs_entropy(hidden, weight, torch.tensor([0, 5, 1030, -100, 7]), chunk_size=64)
    logv = torch.log(torch.tensor(float(v)))
    torch.testing.assert_close(ent[[0, 1, 2, 4]], logv.expand(4))
    torch.testing.assert_close(lp[[0, 1, 2, 4]], -logv.expand(4))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch op produces (inputs and gradient buffers included)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # uint8 tensors are the interpreter's byte copies of argument storages, not tensors of this op
            if isinstance(t, torch.Tensor) and t.dtype != torch.uint8:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_materializes_n_by_v(backend):
    n, h, v = 64, 8, 1031  # H << N so the [V, H] weight gradient is smaller than [N, V]
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    with _LargestTensor() as mode:
        lp, ent = token_logprobs_entropy(hidden, weight, targets, chunk_size=128, backend=backend)
        (lp.sum() - 0.1 * ent.sum()).backward()
    assert mode.largest < n * v // 4, f"largest tensor {mode.largest} elements vs N*V = {n * v}"
    with _LargestTensor() as mode_ref:  # the check can fail: the oracle does materialize [N, V]
        token_logprobs_entropy_ref(hidden, weight, targets)
    assert mode_ref.largest >= n * v


def test_backend_choice(monkeypatch):
    calls = []
    for name in ("_fwd_torch", "_fwd_triton"):
        orig = getattr(lpe, name)
        monkeypatch.setattr(lpe, name, lambda *a, _o=orig, _n=name: calls.append(_n) or _o(*a))
    hidden, weight, _, targets, _, _ = _problem(1000)
    token_logprobs_entropy(hidden.float(), weight.float(), targets)  # interpreter on, CPU tensors: Triton
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # plain CPU: the chunked torch path
    token_logprobs_entropy(hidden.float(), weight.float(), targets)
    assert calls == ["_fwd_triton", "_fwd_torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    hidden = torch.randn(2, 0, H, requires_grad=True)
    weight = torch.randn(300, H, requires_grad=True)
    lp, ent = token_logprobs_entropy(hidden, weight, torch.zeros(2, 0, dtype=torch.long), backend=backend)
    assert lp.shape == ent.shape == (2, 0)
    (lp.sum() + ent.sum()).backward()
    assert (weight.grad == 0).all() and hidden.grad.shape == hidden.shape


def test_clear_errors():
    hidden, weight = torch.randn(4, H), torch.randn(100, H)
    with pytest.raises(ValueError, match="targets must be in"):
        token_logprobs_entropy(hidden, weight, torch.tensor([0, 1, 100, 2]))
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs_entropy(hidden, weight, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weight must be"):
        token_logprobs_entropy(hidden, torch.randn(100, H + 1), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_entropy(hidden, weight, torch.tensor([0, 1, 2, 3]), temperature=0.0)
    with pytest.raises(ValueError, match="share dtype"):
        token_logprobs_entropy(hidden, weight.double(), torch.tensor([0, 1, 2, 3]))


def test_triton_backward_is_bitwise_deterministic_and_chunked(monkeypatch):
    """The backward has no atomics: two runs give bitwise equal gradients. V = 1031 with BLOCK_V = 64 crosses
    several vocabulary chunks (2 * BLOCK_V each under the interpreter), so dh sums chunk products in order."""
    chunks = []
    orig = lpe._lpe_dlogits_kernel
    monkeypatch.setattr(lpe, "_lpe_dlogits_kernel", type("Spy", (), {
        "__getitem__": lambda self, grid: (lambda *a, **k: chunks.append(a[13]) or orig[grid](*a, **k))})())
    runs = [_run(token_logprobs_entropy, torch.bfloat16, *_problem(1031, bias=True, n=21, ignore=(4,)),
                 chunk_size=64, backend="triton") for _ in range(2)]
    assert sorted(set(chunks)) == list(range(0, 1031, 128)), chunks
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_weight_gradient_is_written_in_the_parameter_dtype():
    """dW is produced chunk by chunk in the parameter's dtype: no fp32 [V, H] buffer (780 MiB at V=152k, H=896)."""
    n, h, v = 16, 64, 1031
    hidden = torch.randn(n, h).bfloat16().requires_grad_()
    weight = torch.randn(v, h).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,))
    largest_fp32 = 0

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest_fp32
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    largest_fp32 = max(largest_fp32, t.numel())
            return out

    lp, ent = token_logprobs_entropy(hidden, weight, targets, chunk_size=64, backend="triton")
    with Spy():
        (lp.sum() + ent.sum()).backward()
    assert weight.grad.dtype == torch.bfloat16
    assert largest_fp32 < v * h // 4, largest_fp32


_SM90_SCRIPT = r"""
import json, sys
import torch
from _triton_aot import sm90_resources, no_ptxas
from umedfast.kernels import logprob_entropy as mod

TY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
F32 = ("m_ptr", "s_ptr", "t_ptr", "zt_ptr", "mx_ptr", "logs_ptr", "ent_ptr", "glp_ptr", "gent_ptr")
rows = []

UNIT = ("stride_hh", "stride_wh")  # the JIT specializes integer arguments equal to 1 (contiguous last dims)

def sig_of(fn, ptrs, unit=UNIT):
    return {n: ptrs.get(n, "fp32" if n == "inv_temp" else "i32") for n in fn.arg_names if n not in unit}

try:
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = TY[dtype]
        prec = "ieee" if dtype == torch.float32 else "tf32"
        tiles = mod._tiles(dtype)
        blocks = {k: tiles[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
        launch = dict(num_warps=tiles["num_warps"], num_stages=tiles["num_stages"])
        ptrs = {"h_ptr": "*" + t, "w_ptr": "*" + t, "b_ptr": "*" + t, "tgt_ptr": "*i64", "dz_ptr": "*" + t}
        ptrs.update({n: "*fp32" for n in F32})
        aligned = ("h_ptr", "w_ptr", "dz_ptr", "stride_hn", "stride_wv", "stride_dzn")
        for name, fn, extra in (("fwd", mod._lpe_fwd_kernel, {}),
                                ("dlogits", mod._lpe_dlogits_kernel, {"IGNORE": -100})):
            const = dict(HAS_BIAS=True, UPCAST=False, DOT_PRECISION=prec, **blocks, **extra, stride_hh=1, stride_wh=1)
            al = [n for n in aligned if n in fn.arg_names]
            r = sm90_resources(fn, sig_of(fn, ptrs), const, al, **launch)
            rows.append(dict(kernel=name, dtype=t, config=f"{blocks['BLOCK_N']}x{blocks['BLOCK_V']}x{blocks['BLOCK_H']}"
                             f" w{launch['num_warps']} s{launch['num_stages']}", **r))
        mm = mod._matmul_config(dtype)
        # dh += dz @ W_c (fp32 accumulator; A row-major) and dW_c = dz^T @ h (A = a transposed view: unit row stride)
        for accumulate, c_type, unit in ((True, "fp32", ("stride_ak", "stride_bn", "stride_cn")),
                                         (False, t, ("stride_am", "stride_bn", "stride_cn"))):
            fn = mod._matmul_kernel
            const = dict(ACCUMULATE=accumulate, BLOCK_M=mm["BLOCK_M"], BLOCK_N=mm["BLOCK_N"], BLOCK_K=mm["BLOCK_K"],
                         GROUP_M=8, UPCAST=False, DOT_PRECISION=prec, **{u: 1 for u in unit})
            sig = sig_of(fn, {"a_ptr": "*" + t, "b_ptr": "*" + t, "c_ptr": "*" + c_type}, unit)
            al = [n for n in ("a_ptr", "b_ptr", "c_ptr", "stride_am", "stride_ak", "stride_bk", "stride_cm")
                  if n not in unit]
            r = sm90_resources(fn, sig, const, al, num_warps=mm["num_warps"], num_stages=mm["num_stages"])
            rows.append(dict(kernel="matmul_acc" if accumulate else "matmul", dtype=t,
                             config=f"{mm['BLOCK_M']}x{mm['BLOCK_N']}x{mm['BLOCK_K']} w{mm['num_warps']} "
                                    f"s{mm['num_stages']}", **r))
except Exception as e:
    if no_ptxas(e):
        print(json.dumps({"skip": str(e)[:300]})); sys.exit(0)
    raise
print(json.dumps({"rows": rows}))
"""


def test_every_config_compiles_for_sm90_without_spills_or_atomics():
    """No GPU here: compile every tile config the launchers can pick (forward, dlogits, both GEMMs; bf16, fp16, fp32)
    ahead of time for an H100 (sm_90, triton's bundled ptxas), so GPU-only compile errors fail CI. Asserts: no
    spills (no stack frame, no local memory), shared memory within 227 KB, tensor-core (wgmma) dots for half inputs,
    and no global atomics (the backward is deterministic). A subprocess, because triton cannot mix interpreted and
    compiled kernels in one process. ~1-2 min cold on 2 shared cores, seconds from triton's cache."""
    rows = compile_for_sm90(_SM90_SCRIPT)["rows"]
    assert len(rows) == 12
    print("\n| kernel | dtype | tiles | registers | stack (spills) | shared KB | wgmma | atomics |")
    for r in rows:
        print(f"| {r['kernel']} | {r['dtype']} | {r['config']} | {r['regs']} | {r['stack']} | {r['shared'] / 1024:g} "
              f"| {r['wgmma']} | {r['atomics']} |")
    for r in rows:
        assert r["stack"] == 0 and r["local"] == 0, f"spills: {r}"
        assert r["shared"] <= 227 * 1024, r
        assert r["atomics"] == 0, r
        if r["dtype"] != "fp32":
            assert r["wgmma"] > 0, r
