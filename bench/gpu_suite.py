"""One command for a GPU machine: build the CUDA extension, run the CUDA tests and every CUDA benchmark, write one table.

    python bench/gpu_suite.py                       # on one H100/H200: about 5-8 minutes
    python bench/gpu_suite.py --dry-run             # CPU: plan + collection checks, nothing measured (tested)

Steps, each a subprocess with its own time limit (a failing or timed-out step is recorded and the suite goes on):
  1. build   ``pip install -e . --no-build-isolation --no-deps`` (UMEDFAST_CUDA_ARCHS = this GPU's arch), then checks
             that ``umedfast._C`` reports CUDA; retries without the extension (pure-torch fallback) if the build fails
  2. tests   ``pytest -m cuda tests/`` with TRITON_INTERPRET=0 (compiled kernels, CUDA box ops), UMEDFAST_AUTOTUNE=0
             (first fitting VRR config, no tuning per shape; the AOT tests compile every config)
  3. bench   ``bench/bench_vrr.py -k cuda`` (VRR vs SDPA cuDNN / flash / default, eager + mass, the four shapes,
             peak memory, do_bench medians), ``bench/bench_vrr_variants.py`` (the VRR kernel at B4 H32 N2048 D128
             causal bf16 with each variant (pointer loads / TMA descriptors / warp specialization where supported)
             and each surviving autotune config forced, next to SDPA cuDNN and flash: what each buys, one run),
             ``bench/bench_iou.py -k cuda`` (paired 2^24, pairwise 4096^2),
             ``bench/bench_logprob.py`` (V = 151936, fused vs unfused, fwd and fwd+bwd, peak memory)
  4. ppo     one PPO step (``umedfast.train.ppo_step.ppo_step`` on a state from ``build_state``, the functions
             ``run_ppo`` calls) on a random-init Qwen2-VL-shaped model (~0.5B parameters: 24 layers, width 1536) in bf16
  5. table   ``OUT/gpu_suite.md``: GPU name, driver, torch / triton / CUDA / transformers versions, date, and one row per
             measured case; ``OUT/gpu_suite.json`` holds everything. Paste the markdown into bench/RESULTS.md.

Nothing here needs the internet or flash-attn (the flash_attn provider skips itself).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [  # (name, pytest target, -k filter)
    ("vrr", "bench/bench_vrr.py", "cuda"),
    ("vrr_variants", "bench/bench_vrr_variants.py", None),
    ("iou", "bench/bench_iou.py", "cuda"),
    ("logprob", "bench/bench_logprob.py", None),
]
# per-step limits (s); the expected total on one H100/H200 with 16 cores is ~6-8 min (vrr_variants ~1 min: the
# pointer-load configs come from triton's disk cache after the vrr step, 7 TMA configs compile), the worst case 18 min
LIMITS_S = {"build": 180, "tests": 240, "vrr": 180, "vrr_variants": 150, "iou": 60, "logprob": 120, "ppo": 180}
# ~0.5B parameters with the tiny tokenizer's small vocabulary: 24 layers x (attention 7.1M + MLP 14.2M) at 1536 wide
PPO_OVERRIDES = ["model.name=tiny-qwen2-vl", "model.tiny_text_hidden=1536", "model.tiny_text_layers=24",
                 "model.dtype=bfloat16", "seed=0", "progress=false",
                 "rewards.w_llm=0.0", "rewards.w_vrr=1.0", "rewards.w_alr=1.0"]
PPO_STEP = dict(steps=1, queries_per_step=4, k=8, max_new_tokens=64, ppo_epochs=1, minibatch_size=32,
                advantage="gae")


DRY_LIMIT_S = 900  # a dry run only collects, but on a loaded 2-core CPU one collection can take minutes


def _run(cmd, limit_s, env=None, log=None) -> dict:
    """Run ``cmd`` (list) from the repo root; returns rc, seconds, and the output tail (also appended to ``log``)."""
    if "--collect-only" in cmd:
        limit_s = max(limit_s, DRY_LIMIT_S)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")) + \
            f"\n[gpu_suite] timed out after {limit_s} s"
    if log is not None:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(map(str, cmd))}\n{out}\n")
    return {"cmd": " ".join(map(str, cmd)), "rc": rc, "seconds": round(time.time() - t0, 1), "tail": out[-2000:]}


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(extra)
    return env


def machine_info() -> dict:
    import torch

    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("triton", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    if torch.cuda.is_available():
        cc = torch.cuda.get_device_capability(0)
        info["capability"] = f"{cc[0]}.{cc[1]}"
    return info


# ----------------------------------------------------------------------------------------------------------- steps
def step_build(dry: bool, log) -> dict:
    import torch

    arch = "90"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        arch = f"{major}{minor}"
    cmd = [sys.executable, "-m", "pip", "install", "-e", ".", "--no-build-isolation", "--no-deps", "-q"]
    env = _env(UMEDFAST_CUDA_ARCHS=os.environ.get("UMEDFAST_CUDA_ARCHS", arch),
               MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
    if dry:
        return {"cmd": " ".join(cmd), "rc": None, "dry_run": True, "archs": env["UMEDFAST_CUDA_ARCHS"]}
    res = _run(cmd, LIMITS_S["build"], env=env, log=log)
    if res["rc"] != 0:  # keep the suite going on the pure-torch fallback; the table says the build failed
        res["fallback"] = _run(cmd, LIMITS_S["build"], env=_env(UMEDFAST_SKIP_EXT="1"), log=log)
    probe = ("import umedfast, umedfast.ops as o; import importlib; "
             "C = importlib.import_module('umedfast._C') if o.has_compiled_ops() else None; "
             "print('compiled_ops', o.has_compiled_ops(), getattr(C, 'build_info', lambda: None)())")
    res["probe"] = _run([sys.executable, "-c", probe], 120, env=_env(), log=log)["tail"].strip()[-500:]
    return res


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def step_tests(dry: bool, out: Path, log, paths=("tests/",)) -> dict:
    junit = out / "tests_cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *paths, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if dry:
        cmd = cmd[:-1] + ["--collect-only"]
    # UMEDFAST_AUTOTUNE=0: the tests check numerics with the first fitting config (no tuning sweeps per shape key);
    # the benchmarks autotune
    res = _run(cmd, LIMITS_S["tests"], env=_env(TRITON_INTERPRET="0", UMEDFAST_AUTOTUNE="0"), log=log)
    res["counts"] = _junit_counts(junit)
    if dry:
        res["collected"] = _collected(res["tail"])
    return res


def _collected(text: str) -> int:
    """'12/30 tests collected (18 deselected)' or '12 tests collected' -> 12."""
    import re

    m = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    return int(m.group(1)) if m else 0


def step_bench(name: str, target: str, kfilter: str | None, dry: bool, out: Path, log) -> dict:
    js = out / f"bench_{name}.json"
    cmd = [sys.executable, "-m", "pytest", target, "--benchmark-only", "-q", "-s", "-p", "no:cacheprovider",
           f"--benchmark-json={js}"]
    if kfilter:
        cmd += ["-k", kfilter]
    if dry:
        cmd = [c for c in cmd if not c.startswith("--benchmark-json")] + ["--collect-only"]
    res = _run(cmd, LIMITS_S[name], env=_env(UMEDFAST_BENCH_ROUNDS=os.environ.get("UMEDFAST_BENCH_ROUNDS", "5")),
               log=log)
    if dry:
        res["collected"] = _collected(res["tail"])
    elif js.exists():
        res["rows"] = bench_rows(json.loads(js.read_text()))
    return res


def bench_rows(data: dict) -> list[dict]:
    """pytest-benchmark JSON -> one row per case: name, median ms (do_bench's when the bench recorded one), peak MB
    and the bench's other extra_info fields."""
    rows = []
    for b in data.get("benchmarks", []):
        extra = dict(b.get("extra_info", {}))
        ms = extra.pop("ms", None)
        if ms is None:
            ms = round(b["stats"]["median"] * 1e3, 4)
        peak = extra.pop("peak_mem_mb", None)
        if peak is None and extra.get("extra_mib") is not None:
            peak = round(extra["extra_mib"] * 2**20 / 1e6, 1)
        for k in ("device", "torch", "interpreter", "extra_mib"):
            extra.pop(k, None)
        rows.append({"case": b["name"], "ms": ms, "peak_mb": peak, "extra": extra})
    return rows


def ppo_case() -> dict:
    """One PPO step (rollout, score, advantages, update) with the product's functions, on CUDA in bf16."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_ppo_step import synth_records  # MAU-Synth training records, generated once into a temp dir
    from umedfast.config import load_config
    from umedfast.train.distributed import Dist
    from umedfast.train.ppo_step import build_state, ppo_step
    import tempfile

    tmp = tempfile.mkdtemp(prefix="umedfast_gpu_ppo_")
    cfg = load_config(None, [f"output_dir={tmp}"] + PPO_OVERRIDES + [f"ppo.{k}={v}" for k, v in PPO_STEP.items()])
    t0 = time.time()
    st = build_state(cfg, Dist(), "cuda")
    build_s = time.time() - t0
    params = sum(p.numel() for p in st.bundle.model.parameters())
    records = synth_records()
    q = PPO_STEP["queries_per_step"]
    times, phases = [], {}
    for step in range(3):  # the first step warms up (kernels, autotune, allocator); the other two are timed
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        row = ppo_step(st, [records[(step * q + i) % len(records)] for i in range(q)], step=step,
                       phases=phases if step else None)
        torch.cuda.synchronize()
        times.append(time.time() - t0)
    return {"params_m": round(params / 1e6, 1), "build_s": round(build_s, 1), "warmup_s": round(times[0], 2),
            "step_s": round(sorted(times[1:])[len(times[1:]) // 2], 3),
            "samples_per_s": round(q * PPO_STEP["k"] / sorted(times[1:])[0], 2),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "resp_len": row.get("resp_len"), "phases_s": {k: round(sum(v) / len(v), 3) for k, v in phases.items()}
            if phases else {}}


def step_ppo(dry: bool, out: Path, log) -> dict:
    js = out / "ppo.json"
    if dry:  # the functions and the config exist (no model is built on CPU)
        code = ("import sys; sys.argv=['x']; sys.path.insert(0, 'bench'); import gpu_suite as g; "
                "from umedfast.config import load_config; from umedfast.train.ppo_step import build_state, ppo_step; "
                "cfg = load_config(None, ['output_dir=/tmp/x'] + g.PPO_OVERRIDES + "
                "[f'ppo.{k}={v}' for k, v in g.PPO_STEP.items()]); print('ppo config ok', cfg.model.name)")
        return _run([sys.executable, "-c", code], DRY_LIMIT_S, env=_env(), log=log)
    code = (f"import json, sys; sys.path.insert(0, 'bench'); import gpu_suite as g; "
            f"open({str(js)!r}, 'w').write(json.dumps(g.ppo_case()))")
    res = _run([sys.executable, "-c", code], LIMITS_S["ppo"], env=_env(), log=log)
    if js.exists():
        res["result"] = json.loads(js.read_text())
    return res


# ----------------------------------------------------------------------------------------------------------- table
def _status(res: dict, dry: bool = False) -> str:
    if res.get("dry_run") or res.get("rc") is None or (dry and res.get("rc") in (0, 5)):
        return "dry run"
    return {0: "ok", 124: "TIMED OUT"}.get(res["rc"], f"FAILED (rc {res['rc']})")


def markdown(info: dict, results: dict, dry: bool) -> str:
    lines = [f"### GPU suite ({'DRY RUN on CPU: nothing measured' if dry else 'bench/gpu_suite.py'})", "",
             f"GPU: {info.get('gpu') or 'none'} (compute capability {info.get('capability', 'n/a')}, driver "
             f"{info.get('driver') or 'n/a'}); torch {info['torch']} (CUDA {info.get('cuda')}), triton "
             f"{info.get('triton')}, transformers {info.get('transformers')}, Python {info['python']}; "
             f"{info['date']}, host {info['host']}.", "",
             "| step | status | seconds | notes |", "|---|---|---|---|"]
    for name, res in results.items():
        note = ""
        if name == "build":
            note = res.get("probe", "") or f"archs {res.get('archs', '')}"
            if "fallback" in res:
                note = "CUDA build failed, suite ran on the pure-torch fallback; " + note
        elif name == "tests":
            c = res.get("counts") or {}
            note = (f"{c.get('tests', 0)} tests, {c.get('failures', 0)} failed, {c.get('errors', 0)} errors, "
                    f"{c.get('skipped', 0)} skipped") if c else f"{res.get('collected', 0)} collected"
        elif "collected" in res:
            note = f"{res['collected']} cases collected"
        elif "rows" in res:
            note = f"{len(res['rows'])} cases"
        lines.append(f"| {name} | {_status(res, dry)} | {res.get('seconds', '')} | {note.replace('|', '/')} |")
    for name, res in results.items():
        if res.get("rows"):
            lines += ["", f"**{name}**", "", "| case | median ms | peak MB | details |", "|---|---:|---:|---|"]
            for r in res["rows"]:
                details = ", ".join(f"{k}={v}" for k, v in r["extra"].items() if v is not None)
                lines.append(f"| {r['case']} | {r['ms']} | {r['peak_mb'] if r['peak_mb'] is not None else ''} | "
                             f"{details.replace('|', '/')} |")
    ppo = results.get("ppo", {}).get("result")
    if ppo:
        lines += ["", "**ppo** (one PPO step, random-init Qwen2-VL-shaped model, bf16, 4 queries x K=8, 64 new tokens)",
                  "", "| params (M) | step s (median of 2) | samples/s | peak GB | first step s | phases s |",
                  "|---:|---:|---:|---:|---:|---|",
                  f"| {ppo['params_m']} | {ppo['step_s']} | {ppo['samples_per_s']} | {ppo['peak_mem_gb']} | "
                  f"{ppo['warmup_s']} | {', '.join(f'{k} {v}' for k, v in ppo['phases_s'].items())} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu_results"), help="folder for the table, JSON and log")
    ap.add_argument("--dry-run", action="store_true", help="no build, no timing: print the plan, collect every selection")
    ap.add_argument("--skip-build", action="store_true", help="use the umedfast already installed")
    ap.add_argument("--only", default="",
                    help="comma-separated steps to run (build,tests,vrr,vrr_variants,iou,logprob,ppo)")
    ap.add_argument("--tests", nargs="+", default=["tests/"], help="paths for the `pytest -m cuda` step")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_suite.log"
    log.write_text("")
    only = {s for s in args.only.split(",") if s}
    want = (lambda s: not only or s in only)  # noqa: E731
    info = machine_info()
    if not args.dry_run and not info.get("gpu"):
        print("gpu_suite: no CUDA device here (use --dry-run on CPU)", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    t_start = time.time()

    def done(name, res):
        results[name] = res
        print(f"[gpu_suite] {name}: {_status(res)} in {res.get('seconds', 0)} s "
              f"(total {time.time() - t_start:.0f} s)", flush=True)
        (out / "gpu_suite.json").write_text(json.dumps({"info": info, "results": results}, indent=1))
        (out / "gpu_suite.md").write_text(markdown(info, results, args.dry_run))

    if want("build") and not args.skip_build:
        done("build", step_build(args.dry_run, log))
    if want("tests"):
        done("tests", step_tests(args.dry_run, out, log, args.tests))
    for name, target, kfilter in BENCHES:
        if want(name):
            done(name, step_bench(name, target, kfilter, args.dry_run, out, log))
    if want("ppo"):
        done("ppo", step_ppo(args.dry_run, out, log))
    print(f"[gpu_suite] table: {out / 'gpu_suite.md'}  (total {time.time() - t_start:.0f} s)")
    print((out / "gpu_suite.md").read_text())
    # dry run: rc 5 = nothing collected (the IoU CUDA cases are parametrized by the CUDA devices present)
    failed = [n for n, r in results.items() if r.get("rc") not in ((0, None, 5) if args.dry_run else (0, None))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
