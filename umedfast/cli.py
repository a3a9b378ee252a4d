"""``umedfast-train``: stage-1 SFT, stage-2 AAR PPO, or both.

    umedfast-train --config configs/demo.yaml [--stage sft|ppo|all] [--output-dir DIR] [--resume]
                   [--advantage gae|grpo|rloo] [--no-vrr] [--no-alr] [--no-relevance] [key=value ...]

Multi-process: ``torchrun --nproc_per_node=N -m umedfast.cli --config ...`` (DDP; gloo on CPU, nccl on GPU).
The resolved config is written to ``OUTPUT/config.yaml``; each stage writes ``OUTPUT/<stage>/eval.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="umedfast-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (see configs/demo.yaml); defaults are used when omitted")
    ap.add_argument("--stage", choices=("sft", "ppo", "all"), help="overrides the config's stage")
    ap.add_argument("--output-dir", help="overrides output_dir")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each stage")
    ap.add_argument("--advantage", choices=("gae", "grpo", "rloo"), help="PPO advantage estimator (ppo.advantage)")
    ap.add_argument("--no-vrr", action="store_true", help="ablation: drop the Vision Relevance Reward")
    ap.add_argument("--no-alr", action="store_true", help="ablation: drop the Abnormal Localization Reward")
    ap.add_argument("--no-relevance", action="store_true", help="ablation: drop the judge's relevance reward")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. ppo.k=8")
    return ap


def resolve(args) -> "TrainConfig":  # noqa: F821
    from umedfast.config import load_config

    ov = list(args.overrides)
    if args.stage:
        ov.append(f"stage={args.stage}")
    if args.output_dir:
        ov.append(f"output_dir={args.output_dir}")
    if args.advantage:
        ov.append(f"ppo.advantage={args.advantage}")
    ov += ["ppo.w_vrr=0"] * args.no_vrr + ["ppo.w_alr=0"] * args.no_alr + ["ppo.w_llm=0"] * args.no_relevance
    return load_config(args.config, ov)


def train_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # options may follow the key=value overrides
    from umedfast.config import ConfigError, save_config

    try:
        cfg = resolve(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"umedfast-train: {e}", file=sys.stderr)
        return 2
    if not args.resume:  # never mix a new run into an old one's metrics and checkpoints
        from umedfast.train.checkpoint import previous_run

        for stage in [s for s in ("sft", "ppo") if cfg.stage in (s, "all")]:
            found = previous_run(Path(cfg.output_dir) / stage)
            if found:
                print(f"umedfast-train: {Path(cfg.output_dir) / stage} already holds a run ({found}); pass --resume "
                      "to continue it, or choose another --output-dir", file=sys.stderr)
                return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from umedfast.train.common import resolve_device, setup_threads
    from umedfast.train.distributed import cleanup, init_distributed

    setup_threads(cfg)
    d = init_distributed("cuda" if cfg.device != "cpu" and _cuda() else "cpu")
    resolve_device(cfg, d)  # fail early on device=cuda without CUDA
    out = Path(cfg.output_dir)
    if d.is_main:
        save_config(cfg, out / "config.yaml")
    t0 = time.time()
    results = {}
    try:
        if cfg.stage in ("sft", "all"):
            from umedfast.train.sft import run_sft

            results["sft"] = run_sft(cfg, d, resume=args.resume)
        if cfg.stage in ("ppo", "all"):
            from umedfast.train.ppo import run_ppo

            results["ppo"] = run_ppo(cfg, d, resume=args.resume)
    finally:
        cleanup(d)
    if d.is_main:
        summary = {"wall_s": round(time.time() - t0, 1), "output_dir": str(out)}
        for stage, r in results.items():
            summary[stage] = {"steps": r["steps"], "eval": _headline(r["eval"]),
                              "nonfinite": r["summary"].get("nonfinite", {})}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _headline(ev: dict | None) -> dict | None:
    if not ev:
        return ev
    return {k: ev.get(k) for k in ("accuracy", "mean_iou", "acc_iou50", "format_ok", "n")}


if __name__ == "__main__":
    sys.exit(train_main())
