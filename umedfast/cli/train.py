"""``umedfast-train``: stage-1 SFT, stage-2 AAR PPO, or both.

    umedfast-train --config configs/demo.yaml [--stage sft|ppo|all] [--output-dir DIR] [--resume]
                   [--advantage gae|grpo|rloo] [--no-vrr] [--no-alr] [--no-relevance] [key=value ...]

Multi-process: ``torchrun --nproc_per_node=N -m umedfast.cli --config ...`` (DDP; gloo on CPU, nccl on GPU).
The resolved config is written to ``OUTPUT/config.yaml``; each stage writes ``OUTPUT/<stage>/eval.json``.

Imports inside functions are deliberate: a mistake is refused in one line before torch loads (torch alone takes
~11 s to import here; `umedfast-train --config missing.yaml` answers in ~2 s).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

from umedfast.config import Advantage, Stage, TrainConfig  # light (yaml): no torch before the input checks


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="umedfast-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (see configs/demo.yaml); defaults are used when omitted")
    ap.add_argument("--stage", choices=get_args(Stage), help="overrides the config's stage")
    ap.add_argument("--output-dir", help="overrides output_dir")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each stage")
    ap.add_argument("--advantage", choices=get_args(Advantage), help="PPO advantage estimator (ppo.advantage)")
    ap.add_argument("--no-vrr", action="store_true", help="ablation: drop the Vision Relevance Reward")
    ap.add_argument("--no-alr", action="store_true", help="ablation: drop the Abnormal Localization Reward")
    ap.add_argument("--no-relevance", action="store_true", help="ablation: drop the judge's relevance reward")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. ppo.k=8")
    return ap


def resolve(args) -> TrainConfig:
    from umedfast.config import load_config

    ov = list(args.overrides)
    if args.stage:
        ov.append(f"stage={args.stage}")
    if args.output_dir:
        ov.append(f"output_dir={args.output_dir}")
    if args.advantage:
        ov.append(f"ppo.advantage={args.advantage}")
    ov += ["rewards.w_vrr=0"] * args.no_vrr + ["rewards.w_alr=0"] * args.no_alr + ["rewards.w_llm=0"] * args.no_relevance
    return load_config(args.config, ov)


def _resume_hint(argv: list[str] | None) -> str:
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return "umedfast-train " + shlex.join([a for a in args if a != "--resume"] + ["--resume"])


def _check_inputs(cfg) -> None:
    """Refuse, before any data is generated or model loaded, what would fail later: model directories umedfast
    cannot load (missing, pickle-only, truncated, LoRA adapter without safetensors), a missing data file, and an
    output directory that cannot be created."""
    from umedfast.errors import MissingPathError, UserError
    from umedfast.model_files import check_model_dir, looks_like_path  # no torch import: refusals come fast

    if looks_like_path(cfg.model.name):
        check_model_dir(cfg.model.name, "model.name")
    if cfg.stage in ("ppo", "all") and cfg.ppo.init_from and looks_like_path(cfg.ppo.init_from):
        check_model_dir(cfg.ppo.init_from, "ppo.init_from")
    if cfg.data.path:
        if not Path(cfg.data.path).is_file():
            raise MissingPathError(f"data.path {cfg.data.path!r} does not exist" if not Path(cfg.data.path).exists()
                                   else f"data.path {cfg.data.path!r} is not a file (give the MAU JSONL)")
        from umedfast.data.records import read_mau_checked

        read_mau_checked(cfg.data.path)  # malformed lines (file:line), no records, missing images: refused now
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A probe file of its own per process: under torchrun every rank runs this check at once, and a shared
        # name let one rank unlink the file another was about to (CI saw "No such file or directory").
        with tempfile.TemporaryFile(dir=out, prefix=".umedfast-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot create or write the output directory {str(out)!r}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2, Ctrl-C prints how to resume and returns 130."""
    args = build_parser().parse_intermixed_args(argv)  # options may follow the key=value overrides
    from umedfast.config import resolve_paths, save_config
    from umedfast.errors import UserError
    from umedfast.train.interrupt import Interrupted, graceful_sigint, stop_requested

    try:
        cfg = resolve_paths(resolve(args))  # every relative path: against the working directory, once, here
        _check_inputs(cfg)
    except UserError as e:
        print(f"umedfast-train: {e}", file=sys.stderr)
        return 2
    if not args.resume:  # never mix a new run into an old one's metrics and checkpoints
        from umedfast.train.training_state import previous_run

        for stage in [s for s in ("sft", "ppo") if cfg.stage in (s, "all")]:
            found = previous_run(Path(cfg.output_dir) / stage)
            if found:
                print(f"umedfast-train: {Path(cfg.output_dir) / stage} already holds a run ({found}); pass --resume "
                      "to continue it, or choose another --output-dir", file=sys.stderr)
                return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stage_now = cfg.stage
    try:
        # torch and the trainers load only here, once the input checks above have passed (one-line refusals < 1 s)
        from umedfast.eval.mau import evaluate_and_write  # the stages' eval.json writer (umedfast.train.heldout)
        from umedfast.train.distributed import cleanup, init_distributed
        from umedfast.train.runtime import resolve_device, setup_threads

        setup_threads(cfg, local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        d = init_distributed("cuda" if cfg.device != "cpu" and _cuda() else "cpu")
        out = Path(cfg.output_dir)
        t0 = time.time()
        results = {}
        try:
            resolve_device(cfg, d)  # fail early on device=cuda without CUDA
            if d.is_main:
                save_config(cfg, out / "config.yaml")
            with graceful_sigint():
                if cfg.stage in ("sft", "all"):
                    from umedfast.train.sft import run_sft

                    stage_now = "sft"
                    results["sft"] = run_sft(cfg, d, resume=args.resume, write_eval=evaluate_and_write)
                    if stop_requested() and cfg.stage == "all":  # Ctrl-C during SFT's last step or evaluation
                        raise Interrupted("sft", results["sft"]["steps"], None)
                if cfg.stage in ("ppo", "all"):
                    from umedfast.train.ppo import run_ppo

                    stage_now = "ppo"
                    results["ppo"] = run_ppo(cfg, d, resume=args.resume, write_eval=evaluate_and_write)
        finally:
            cleanup(d)
    except UserError as e:
        print(f"umedfast-train: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        saved = f"checkpoint {e.checkpoint}" if e.checkpoint else "no new checkpoint"
        print(f"umedfast-train: {e.stage} interrupted at step {e.step} ({saved}); continue with: "
              f"{_resume_hint(argv)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"umedfast-train: {stage_now} stopped by Ctrl-C outside a step boundary (the newest complete "
              f"checkpoint is kept); continue with: {_resume_hint(argv)}", file=sys.stderr)
        return 130
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
    sys.exit(main())
