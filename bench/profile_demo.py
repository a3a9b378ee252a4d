"""Profile a short demo-like run and print where the time goes (torch.profiler ops + cProfile Python frames).

Run: ``python bench/profile_demo.py [--sft-steps 4] [--ppo-steps 2] [--threads 1] [--out DIR] [--no-experiments]
[--compare-threads]``

What runs: ``configs/demo.yaml`` with overrides that keep the demo's model (tiny LLaVA), data style, batch sizes,
K and token budgets but cut the length (``sft.max_steps``, ``ppo.steps``, a small held-out split), through the real
``umedfast.train.sft.run_sft`` and ``umedfast.train.ppo.run_ppo`` (evaluation and checkpoint writing included, as
in the demo). Data generation happens once before profiling (the demo caches it in OUTPUT/data too).

Prints: wall time per stage; the top torch ops by self CPU time; the top Python functions by cumulative and by
own time (cProfile); then, unless ``--no-experiments``, the measured effect of candidate fixes applied by
monkeypatching (the patches themselves are written for the training engineer as a unified diff; see
bench/RESULTS.md "Profile of the demo run"). Both profilers add overhead (cProfile inflates Python-heavy code),
so shares are indicative; the experiments are timed without profilers.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def demo_config(out_dir: str, sft_steps: int, ppo_steps: int, threads: int, extra=()):
    from umedfast.config import load_config

    return load_config(ROOT / "configs" / "demo.yaml", [
        f"output_dir={out_dir}", f"threads={threads}", "progress=false",
        "data.synth_n=120", "data.max_eval=8", "eval_batch_size=8",
        f"sft.max_steps={sft_steps}", f"ppo.steps={ppo_steps}", *extra])


def run_demo(cfg) -> dict:
    """Both stages as ``umedfast-train --stage all`` runs them; returns wall seconds per stage."""
    from umedfast.train.runtime import setup_threads
    from umedfast.train.ppo import run_ppo
    from umedfast.train.sft import run_sft
    from umedfast.eval.mau import evaluate_and_write

    setup_threads(cfg)
    times = {}
    t0 = time.perf_counter()
    run_sft(cfg, write_eval=evaluate_and_write)
    times["sft"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_ppo(cfg, write_eval=evaluate_and_write)
    times["ppo"] = time.perf_counter() - t0
    return times



def profile_run(cfg, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    prof_py = cProfile.Profile()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        prof_py.enable()
        times = run_demo(cfg)
        prof_py.disable()
    total = sum(times.values())
    print(f"\n== wall time under both profilers: sft {times['sft']:.1f} s, ppo {times['ppo']:.1f} s "
          f"(total {total:.1f} s)")
    print(f"\n== top {top} torch ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))
    st = pstats.Stats(prof_py, stream=io.StringIO())
    print_phases(st, total)
    for key, title in (("cumulative", "cumulative"), ("tottime", "own (tottime)")):
        buf = io.StringIO()
        st.stream = buf
        st.sort_stats(key).print_stats(top)
        print(f"\n== top {top} Python functions by {title} time (cProfile)")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[-8000:])
    return times


# Where a demo run spends its time, by the umedfast/HF function that owns it (cumulative seconds from cProfile;
# phases nest, e.g. collate_chat runs inside sample_candidates and evaluate).
PHASES = [
    ("sft", "run_sft"), ("ppo", "run_ppo"),
    ("model load (load_vlm)", "load_vlm"), ("reference copy (deepcopy)", "deepcopy"),
    ("collate_chat (images, processor, template)", "collate_chat"), ("  record_image (PNG decode)", "record_image"),
    ("generate (HF, KV cache)", "generate"), ("  ppo rollouts (sample_candidates)", "sample_candidates"),
    ("  evaluation (generate_responses)", "generate_responses"),
    ("ppo policy forwards, scoring + training (policy_outputs)", "policy_outputs"),
    ("ppo reference forward", "reference_logprobs"),
    ("rewards (score_rollout, incl. the VRR forward)", "score_rollout"), ("  VRR forward (vrr_forward)", "vrr_forward"),
    ("backward (SFT + PPO)", "backward"), ("optimizer step", "step"),
    ("checkpoints (save_training_state)", "save_training_state"), ("final save (save_checkpoint)", "save_checkpoint"),
    ("eval metrics + eval.json (evaluate_and_write)", "evaluate_and_write"),
]


def print_phases(st: pstats.Stats, total: float) -> None:
    by_name: dict[str, float] = {}
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        if name == "step" and "optim" not in path:
            continue  # only torch.optim's step
        if name in ("backward",) and "torch" not in path:
            continue
        if "umedfast" in path or "transformers" in path or "torch" in path or name == "deepcopy":
            by_name[name] = max(by_name.get(name, 0.0), ct)  # outermost frame of recursive calls
    print("\n== phases (cumulative seconds under the profilers; nested phases overlap)")
    for label, name in PHASES:
        if name in by_name:
            print(f"{label:48s} {by_name[name]:7.2f} s  {100 * by_name[name] / total:5.1f}%")


# --------------------------------------------------------------------------------------------- experiments
def timed_run(cfg) -> dict:
    return run_demo(cfg)


@contextlib.contextmanager
def cached_images():
    """Candidate, not proposed (no measurable gain: PNG decode is 0.07 s of a demo run): decode each record's image
    once per process (SFT re-reads every PNG every epoch, PPO K times per step, evaluation once more)."""
    import functools

    import umedfast.model.collate as col

    orig = col.record_image
    cache = functools.lru_cache(maxsize=4096)(lambda path, meta_key: orig({"image": path, "meta": dict(meta_key)}))

    def record_image(rec):
        img = col._field(rec, "image")
        meta = (rec.get("meta") if isinstance(rec, dict) else getattr(rec, "meta", None)) or {}
        if isinstance(img, (str, os.PathLike)):
            try:
                return cache(str(img), tuple(sorted(meta.items()))).copy()
            except TypeError:  # unhashable meta values: no cache
                pass
        return orig(rec)

    col.record_image = record_image
    try:
        yield
    finally:
        col.record_image = orig


# Patches 1 (collate once per query) and 3 (prompt-shared scoring) landed in umedfast.train.rollout; their
# measured effect is in bench/RESULTS.md. What is left here is the candidate that was not adopted.
EXPERIMENTS = {
    "cached_images": cached_images,
}


def experiments(out_root: Path, args) -> None:
    print("\n== candidate fixes, timed without profilers (same seeds, fresh output dir each run)")
    rows = []

    def one(name, ctx, threads):
        out = out_root / f"{name}_t{threads}_{len(rows)}"
        data = out_root / "data_cache"
        cfg = demo_config(str(out), args.sft_steps, args.ppo_steps, threads, [f"data.path={data}/mau_synth.jsonl"])
        with ctx():
            t = timed_run(cfg)
        rows.append((name, threads, t))
        print(f"{name:28s} threads={threads}: sft {t['sft']:.2f} s, ppo {t['ppo']:.2f} s", flush=True)

    one("warm-up (discarded)", contextlib.nullcontext, args.threads)  # lazy imports, allocator warm-up
    rows.clear()
    for _ in range(args.repeats):  # interleaved, so load changes on the shared box hit every variant alike
        for name, ctx in [("baseline", contextlib.nullcontext), *EXPERIMENTS.items()]:
            one(name, ctx, args.threads)
    print("\nmedian over repeats:")
    for name in ["baseline", *EXPERIMENTS]:
        ts = [t for n, th, t in rows if n == name and th == args.threads]
        sft = sorted(t["sft"] for t in ts)[len(ts) // 2]
        ppo = sorted(t["ppo"] for t in ts)[len(ts) // 2]
        print(f"{name:28s} sft {sft:.2f} s, ppo {ppo:.2f} s")
    if args.compare_threads and args.threads != 2:  # opt-in: on a loaded 2-core box this run can take minutes
        one("baseline", contextlib.nullcontext, 2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-steps", type=int, default=4)
    ap.add_argument("--ppo-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo's threads=0 means all cores)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="", help="run directory (default: a temp dir)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-experiments", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each experiment (median reported)")
    ap.add_argument("--compare-threads", action="store_true", help="also time the baseline with 2 torch threads")
    args = ap.parse_args(argv)
    out_root = Path(args.out or tempfile.mkdtemp(prefix="umedfast_profile_"))
    # the demo generates MAU-Synth into OUTPUT/data on first use; do it once, outside the timings
    from umedfast.data import synth

    data = out_root / "data_cache"
    if not (data / synth.JSONL_NAME).is_file():
        synth.generate(120, data, seed=0, image_size=112, style="compact", progress=False)
    print(f"torch {torch.__version__}, threads {args.threads}, load average {os.getloadavg()}")
    if not args.no_profile:
        cfg = demo_config(str(out_root / "profiled"), args.sft_steps, args.ppo_steps, args.threads,
                          [f"data.path={data}/{synth.JSONL_NAME}"])
        profile_run(cfg, args.top)
    if not args.no_experiments:
        experiments(out_root, args)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
