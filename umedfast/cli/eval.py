"""umedfast-eval: evaluate checkpoints on MAU data and print the paper's tables; external benchmarks; reports.

  umedfast-eval --checkpoint DIR [--checkpoint DIR2 ...] --data FILE.jsonl [--split test]
                [--generalization category|source|modality [--held-out A,B]] [--judge rubric|openai ...]
                [--report DIR] [--out DIR]                                  -> Table 2 (and Tables 7-9 layout)
  umedfast-eval table EVAL.json|DIR ... [--names a,b] [--group source|modality|label]
  umedfast-eval ablation --root DIR [--run --config FILE [--seeds 0,1,2] [--rows ...] key=value ...]
                         | --full DIR --wo-vrr DIR --wo-alr DIR --wo-aar DIR                   -> Table 6
                         (pooled paired 95% intervals of each PPO row over its seeds vs SFT)
  umedfast-eval bench --checkpoint DIR --benchmark vqa_rad|slake|pmc_vqa|pneumoniamnist --root DIR
  umedfast-eval report --eval DIR [--metrics FILE.jsonl] [--checkpoint DIR] --out DIR
  umedfast-eval compare RUN_A RUN_B [--names a,b] [--json FILE]   -> paired B - A with 95% intervals, McNemar p

Imports inside functions are deliberate: tables, comparisons and refusals never load torch (~11 s here).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from umedfast.config import Generalization, JudgeKind, Split
from umedfast.eval import tables as T

SUBCOMMANDS = ("run", "table", "ablation", "bench", "report", "compare")
METRICS = ("accuracy", "mean_iou", "acc_iou50", "format_ok")


def load_model(spec: str, device: str):
    """The policy to evaluate (``umedfast.model.checkpoint.load_model_or_checkpoint``)."""
    from umedfast.model.checkpoint import load_model_or_checkpoint  # torch: only after the instant input checks

    return load_model_or_checkpoint(spec, device)


def check_checkpoint(spec: str) -> None:
    """Refuse a --checkpoint that cannot load (missing, missing files, pickle-only, truncated) in one line."""
    from umedfast.model_files import check_model_dir, looks_like_path

    if looks_like_path(spec):
        check_model_dir(spec, "--checkpoint")


def _names(specs, names_arg):
    if names_arg:
        names = [n.strip() for n in names_arg.split(",")]
        if len(names) != len(specs):
            raise SystemExit(f"--names gives {len(names)} names for {len(specs)} entries")
        return names
    names, seen = [], {}
    for s in specs:
        n = Path(s).name or str(s)
        # runs/x/sft/final -> x-sft-final
        if Path(s).name in ("final", "eval.json", "sft", "ppo") and Path(s).parent.name:
            n = "-".join(Path(s).parts[-3:]).removesuffix("-eval.json")
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}-{seen[n]}")  # output directories must not collide
    return names


def _print_tables(results, group: str, columns=None, title_prefix: str = "") -> list:
    out = []
    for metric in METRICS:
        t = T.results_table(results, metric=metric, group=group, columns=columns)
        t.title = title_prefix + t.title
        print(T.render_text(t), end="\n\n")
        out.append(t)
    return out


def cmd_run(a) -> int:
    from umedfast.data import read_mau
    from umedfast.data.splits import select

    if a.generalization and a.split == "all":
        raise SystemExit("--generalization selects the held-out part of a split: use --split test (the default)")
    records = read_mau(a.data)
    held = [h.strip() for h in a.held_out.split(",")] if a.held_out else None
    records = select(records, a.split, a.generalization, held) if a.split != "all" else records
    if a.limit:
        records = records[: a.limit]
    if not records:
        raise SystemExit(f"no records in {a.data} for split={a.split} generalization={a.generalization}")
    from umedfast.data.records import check_images

    check_images(records, a.data)  # before any model is loaded
    judge = None
    if a.judge:
        from umedfast.eval.judged import make_eval_judge
        judge = make_eval_judge(a.judge, base_url=a.judge_base_url, model=a.judge_model, api_key_env=a.judge_key_env)
    names = _names(a.checkpoint, a.names)
    for spec in a.checkpoint:  # every checkpoint checked before the first one is evaluated
        check_checkpoint(spec)
    out_root = Path(a.out)
    try:  # an output folder that cannot be written is found before any model is loaded
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"cannot create the output directory {a.out!r}: {e.strerror or e}") from None
    from umedfast.eval.mau import evaluate_and_write  # imports torch: after the input checks, which are instant
    results = []
    for spec, name in zip(a.checkpoint, names):
        print(f"[umedfast-eval] {name}: {len(records)} records from {a.data} (split={a.split})", file=sys.stderr)
        bundle = load_model(spec, a.device)
        m = evaluate_and_write(bundle, records, out_root / name / "eval.json", batch_size=a.batch_size,
                               max_new_tokens=a.max_new_tokens, greedy=not a.sample, box_format=a.box_format,
                               judge=judge)
        results.append((name, m))
        del bundle
    _print_tables(results, "source")
    if a.generalization:
        group = {"category": "label", "source": "source", "modality": "modality"}[a.generalization]
        from umedfast.data.splits import DEFAULT_HELD_OUT
        cols = held or list(DEFAULT_HELD_OUT[a.generalization])
        if group == "source":  # records may carry the synth- prefix
            present = {s for _, m in results for s in m["per_source"]}
            cols = [c if c in present else f"synth-{c}" for c in cols]
        t = T.generalization_table(results, group=group, held_out=cols)
        print(T.render_text(t), end="\n\n")
    if a.report:
        from umedfast.eval.report import build_report
        path = build_report(a.report, eval_dirs=[out_root / n for n in names], names=names, metrics_jsonl=a.metrics,
                            checkpoint=a.checkpoint[-1], device=a.device, n_samples=a.report_samples)
        print(f"report: {path}")
    return 0


def cmd_compare(a) -> int:
    from umedfast.eval.paired import deltas_json, format_deltas, paired_deltas, read_predictions

    names = _names([a.run_a, a.run_b], a.names)
    deltas = paired_deltas(read_predictions(a.run_a), read_predictions(a.run_b), n_boot=a.bootstrap, seed=a.seed)
    print(format_deltas(names[0], names[1], deltas))
    if a.json:
        Path(a.json).write_text(json.dumps({"a": names[0], "b": names[1], "deltas": deltas_json(deltas)}, indent=2))
    return 0


def cmd_table(a) -> int:
    results = [(n, T.load_eval(p)) for n, p in zip(_names(a.paths, a.names), a.paths)]
    cols = [c.strip() for c in a.columns.split(",")] if a.columns else None
    _print_tables(results, a.group, cols)
    return 0


# Table 6 (umedfast.eval.ablation): w/o AAR is the SFT model, trained once; every PPO row starts from its final
# checkpoint, once per PPO seed (DIR/<row>/seed<S>), and is compared with it paired over the same test images.
def ablation_commands(root, config: str | None, overrides=(), seeds=(0, 1, 2),
                      rows=None) -> list[tuple[str, list[str]]]:
    """(run name, argv for `python -m umedfast.cli`) for SFT then every PPO row x seed (``rows``: PPO row keys of
    ``umedfast.eval.ablation.ROWS``, default all four)."""
    from umedfast.eval.ablation import PPO_ROWS, ROWS, run_dir

    root = Path(root)
    sft_final = run_dir(root, "wo_aar", None) / "sft" / "final"
    # --resume: a run that crashed before writing eval.json continues from its checkpoint (or starts fresh)
    base = ([f"--config={config}"] if config else [])
    out = [("wo_aar", base + ROWS["wo_aar"][1] + [f"--output-dir={run_dir(root, 'wo_aar', None)}", "--resume",
                                                  *overrides])]
    for key in rows or PPO_ROWS:
        for seed in seeds:
            out.append((f"{key}/seed{seed}", base + ROWS[key][1] + [
                f"--output-dir={run_dir(root, key, seed)}", "--resume", f"ppo.init_from={sft_final}", *overrides,
                f"seed={seed}"]))
    return out


def _share_data(root: Path, out_dir: Path) -> None:
    """Link the SFT run's generated MAU-Synth folders (data/, data_eval/) into a PPO run's output directory, so
    every run trains and evaluates on the same files without generating them again."""
    for name in ("data", "data_eval"):
        src, dst = root / "wo_aar" / name, out_dir / name
        if src.is_dir() and not dst.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=True)


def run_ablations(root, config: str | None, overrides=(), seeds=(0, 1, 2), rows=None) -> None:
    """Train the ablation runs whose eval.json is missing (umedfast-train in a subprocess each, with its progress)."""
    import subprocess

    from umedfast.eval.ablation import run_dir

    for name, argv in ablation_commands(root, config, overrides, seeds, rows):
        key, _, seed = name.partition("/seed")
        out_dir = run_dir(root, key, int(seed) if seed else None)
        try:
            T.load_eval(out_dir)
            print(f"[umedfast-eval] {name}: eval.json present, not retraining", file=sys.stderr)
            continue
        except FileNotFoundError:
            pass
        if key != "wo_aar":
            _share_data(Path(root), out_dir)
        cmd = [sys.executable, "-m", "umedfast.cli", *argv]
        print(f"[umedfast-eval] training {name}: {' '.join(cmd)}", file=sys.stderr)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise SystemExit(f"ablation run {name} failed (exit {rc}); command: {' '.join(cmd)}")


def cmd_ablation(a) -> int:
    seeds = tuple(int(x) for x in a.seeds.split(",") if x.strip())
    rows = [r.strip() for r in a.rows.split(",")] if a.rows else None
    if a.run:
        if not a.root:
            raise SystemExit("--run needs --root DIR (SFT goes to DIR/wo_aar, PPO rows to DIR/<row>/seed<S>)")
        run_ablations(a.root, a.config, a.overrides, seeds, rows)
    if a.root and (Path(a.root) / "wo_aar").is_dir():
        from umedfast.eval.ablation import ablation_report

        try:
            text, data = ablation_report(a.root)
            print(text, end="\n\n")
            if a.json:
                Path(a.json).write_text(json.dumps(data, indent=2))
        except FileNotFoundError as e:  # eval.json only (no predictions): the plain tables below still print
            print(f"[umedfast-eval] no paired table: {e}", file=sys.stderr)
    runs = {}
    for key, _label in T.ABLATION_ROWS:
        path = getattr(a, key, None) or (Path(a.root) / key if a.root else None)
        if path is None:
            continue
        try:
            if a.root and not getattr(a, key, None):
                from umedfast.eval.ablation import seed_dirs
                found = seed_dirs(a.root, key)
                path = found[0] if found else path  # the first seed's run stands for the row in the plain tables
            runs[key] = T.load_eval(path)
        except FileNotFoundError as e:
            print(f"[umedfast-eval] skipping {key}: {e}", file=sys.stderr)
    if not runs:
        raise SystemExit("no ablation results found: give --root DIR (with wo_aar/ and <row>/seed<S>/) or the "
                         "per-run directories")
    for metric in METRICS:
        print(T.render_text(T.ablation_table(runs, metric=metric)), end="\n\n")
    return 0


def cmd_bench(a) -> int:
    from umedfast.data.benchmarks import load_benchmark
    from umedfast.eval.benchmark_metrics import evaluate_benchmark

    kw = {"split": a.split} if a.split else {}
    samples = load_benchmark(a.benchmark, a.root, **kw)
    if a.limit:
        samples = samples[: a.limit]
    if not samples:
        raise SystemExit(f"no {a.benchmark} questions under {a.root}")
    check_checkpoint(a.checkpoint)
    bundle = load_model(a.checkpoint, a.device)
    metrics, rows = evaluate_benchmark(bundle, samples, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
    print(json.dumps(metrics, indent=2))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{a.benchmark}.json").write_text(json.dumps(metrics, indent=2))
        with open(out / f"{a.benchmark}.predictions.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 0


def cmd_report(a) -> int:
    from umedfast.eval.report import build_report

    evals = a.eval or []
    path = build_report(a.out, eval_dirs=evals, names=_names(evals, a.names) if evals else [],
                        metrics_jsonl=a.metrics, checkpoint=a.checkpoint, device=a.device, n_samples=a.samples,
                        benchmark_files=a.bench or ())
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umedfast-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")

    def model_args(s):
        s.add_argument("--device", default="cpu")
        s.add_argument("--batch-size", type=int, default=8)
        s.add_argument("--limit", type=int, default=0, help="evaluate only the first N items (0 = all)")

    r = sub.add_parser("run", help="generate on MAU records and score (the default command)")
    r.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint directory or tiny-llava / tiny-qwen2-vl; repeat for several table rows")
    r.add_argument("--names", help="comma-separated row names (default: directory names)")
    r.add_argument("--data", required=True, help="MAU JSONL (umedfast-data build/synth)")
    r.add_argument("--split", default="test", choices=(*get_args(Split), "all"))
    r.add_argument("--generalization", choices=[g for g in get_args(Generalization) if g],
                   help="evaluate on the held-out part of a generalization split (Tables 7-9)")
    r.add_argument("--held-out", help="comma-separated held-out classes / sources / modalities")
    r.add_argument("--max-new-tokens", type=int, default=192, help="full-style answers run to ~130 tokens")
    r.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    r.add_argument("--box-format", default="norm1000")
    r.add_argument("--judge", choices=get_args(JudgeKind), help="also report judged accuracy")
    r.add_argument("--judge-base-url")
    r.add_argument("--judge-model")
    r.add_argument("--judge-key-env", default="UMEDFAST_JUDGE_API_KEY",
                   help="environment variable that holds the judge's API key")
    r.add_argument("--out", default="eval_out", help="writes OUT/<name>/eval.json and predictions")
    r.add_argument("--report", help="also write an HTML report into this directory")
    r.add_argument("--metrics", help="training metrics JSONL for the report's curves")
    r.add_argument("--report-samples", type=int, default=6)
    model_args(r)
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("table", help="print tables from existing eval.json files")
    t.add_argument("paths", nargs="+")
    t.add_argument("--names")
    t.add_argument("--group", default="source", choices=sorted(T.GROUP_KEYS))
    t.add_argument("--columns", help="comma-separated columns (e.g. held-out categories)")
    t.set_defaults(func=cmd_table)

    ab = sub.add_parser("ablation", help="Table 6 from the four ablation runs' eval.json")
    ab.add_argument("--root", help="directory with full/, wo_vrr/, wo_alr/, wo_aar/ run outputs")
    for key, label in T.ABLATION_ROWS:
        ab.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"output directory or eval.json of {label}")
    ab.add_argument("--run", action="store_true", help="train the runs whose eval.json is missing first")
    ab.add_argument("--config", help="umedfast-train YAML config for --run")
    ab.add_argument("--seeds", default="0,1,2", help="PPO seeds per row for --run (comma-separated)")
    ab.add_argument("--rows", help="PPO rows for --run (default all: rel_only,wo_vrr,wo_alr,full)")
    ab.add_argument("--json", help="also write the pooled paired table as JSON here")
    ab.add_argument("overrides", nargs="*", metavar="key=value", help="extra umedfast-train overrides for --run")
    ab.set_defaults(func=cmd_ablation)

    b = sub.add_parser("bench", help="external benchmark (VQA-RAD, SLAKE, PMC-VQA, PneumoniaMNIST)")
    b.add_argument("--checkpoint", required=True)
    b.add_argument("--benchmark", required=True, choices=("vqa_rad", "slake", "pmc_vqa", "pneumoniamnist"))
    b.add_argument("--root", required=True, help="local copy of the benchmark")
    b.add_argument("--split", help="benchmark split (default: its test split)")
    b.add_argument("--max-new-tokens", type=int, default=32)
    b.add_argument("--out", help="write <benchmark>.json and predictions here")
    model_args(b)
    b.set_defaults(func=cmd_bench)

    rp = sub.add_parser("report", help="HTML report from eval outputs and training metrics")
    rp.add_argument("--eval", action="append", help="eval output directory (eval.json + predictions); repeatable")
    rp.add_argument("--names")
    rp.add_argument("--metrics", help="training metrics JSONL")
    rp.add_argument("--checkpoint", help="model for the attention heatmaps (omit to skip them)")
    rp.add_argument("--samples", type=int, default=6)
    rp.add_argument("--bench", action="append", help="<benchmark>.json written by `bench --out`; repeatable")
    rp.add_argument("--device", default="cpu")
    rp.add_argument("--out", required=True)
    rp.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="paired B - A on the same images: 95%% bootstrap intervals, McNemar p")
    c.add_argument("run_a", help="eval output directory or eval.predictions.jsonl of the baseline")
    c.add_argument("run_b", help="the same for the run compared with it")
    c.add_argument("--names", help="comma-separated names of A and B")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", help="also write the deltas here")
    c.set_defaults(func=cmd_compare)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]  # `umedfast-eval --checkpoint ... --data ...` is the run command
    a = build_parser().parse_args(argv)
    if not getattr(a, "func", None):
        build_parser().print_help()
        return 2
    from umedfast.errors import UserError

    try:
        return a.func(a)
    except (FileNotFoundError, UserError) as e:  # bad input (file:line where it has one): one line, no traceback
        print(f"umedfast-eval: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # the commands' own refusals (raise SystemExit("...")): same one line, status 2
        if isinstance(e.code, str):
            print(f"umedfast-eval: {e.code}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
