"""``umedfast-data``: build MAU datasets.

    umedfast-data synth --n 2000 --out data/mau_synth            # MAU-Synth images + mau_synth.jsonl
    umedfast-data build --source nih --root /data/nih --out data/nih.jsonl [--writer template|llm] [--skip-bad]
    umedfast-data stats data/mau_synth/mau_synth.jsonl           # counts per source / class / modality / split

The LLM writer reads the key from OPENAI_API_KEY (never printed); --base-url points at any OpenAI-compatible server.

Imports inside functions are deliberate: `stats` and refusals must not wait for torch or the writers' clients.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

from umedfast.boxes import FORMATS
from umedfast.config import AnswerStyle


def _add_writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box-format", default="norm1000", choices=sorted(FORMATS), help="box text format in answers")
    p.add_argument("--style", default="full", choices=get_args(AnswerStyle), help="template answer style")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="umedfast-data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="generate MAU-Synth (procedural images with known lesions)")
    s.add_argument("--n", type=int, required=True, help="number of images")
    s.add_argument("--out", required=True, help="output folder (images/ and mau_synth.jsonl)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    _add_writer_args(s)

    b = sub.add_parser("build", help="build MAU records from a source dataset")
    b.add_argument("--source", required=True, choices=["deeplesion", "kidneystone", "nih", "tbx11k", "kvasir"])
    b.add_argument("--root", required=True, help="dataset folder in the official layout")
    b.add_argument("--out", required=True, help="output JSONL")
    b.add_argument("--writer", default="template", choices=["template", "llm"])
    b.add_argument("--skip-bad", action="store_true", help="skip (and count) bad entries instead of failing")
    b.add_argument("--normals", action="store_true", help="nih: add 'No Finding' images from Data_Entry_2017*.csv")
    b.add_argument("--limit", type=int, default=None, help="keep only the first N images")
    _add_writer_args(b)
    g = b.add_argument_group("LLM writer (--writer llm; key from OPENAI_API_KEY)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model", default=None, help="model name on the endpoint")
    g.add_argument("--cache-dir", default=None, help="answer cache (default: <out>.llm_cache)")
    g.add_argument("--concurrency", type=int, default=4)
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=4)
    g.add_argument("--no-image", action="store_true", help="do not send the image (text-only models)")

    t = sub.add_parser("stats", help="counts per source / class / modality / split of a MAU JSONL")
    t.add_argument("file")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return ap


def compute_stats(records) -> dict:
    """Counts: total, normal, multi-lesion, per source / class / modality / split, and per source x split."""
    return {
        "records": len(records),
        "normal": sum(1 for r in records if not r.findings),
        "multi_lesion": sum(1 for r in records if len(r.findings) > 1),
        "findings": sum(len(r.findings) for r in records),
        "source": dict(Counter(r.source for r in records).most_common()),
        "class": dict(Counter(f["label"] for r in records for f in r.findings).most_common()),
        "modality": dict(Counter(r.modality for r in records).most_common()),
        "split": dict(Counter(r.split for r in records).most_common()),
        "source_split": {s: dict(Counter(r.split for r in records if r.source == s)) for s in
                         sorted({r.source for r in records})},
    }


def _print_stats(st: dict) -> None:
    print(f"records {st['records']}  findings {st['findings']}  normal {st['normal']}  "
          f"multi-lesion {st['multi_lesion']}")
    for key in ("source", "modality", "split", "class"):
        print(f"\n{key}:")
        width = max((len(k) for k in st[key]), default=0)
        for k, v in st[key].items():
            print(f"  {k:<{width}}  {v}")


def _cmd_synth(a) -> int:
    from umedfast.data import synth

    recs = synth.generate(a.n, a.out, seed=a.seed, image_size=a.image_size, box_format=a.box_format, style=a.style,
                          workers=a.workers)
    print(f"wrote {len(recs)} records to {Path(a.out) / synth.JSONL_NAME}")
    return 0


def _cmd_build(a) -> int:
    from umedfast.data.build import findings_to_records, write_records
    from umedfast.data.records import write_mau
    from umedfast.data.sources import load_source

    kw = {"normals": True} if (a.normals and a.source == "nih") else {}
    findings = load_source(a.source, a.root, skip_bad=a.skip_bad, **kw)
    records = findings_to_records(findings)
    if a.limit is not None:
        records = records[:a.limit]
    llm = None
    if a.writer == "llm":
        if not a.model:
            raise ValueError("--writer llm needs --model")
        from umedfast.data.llm_writer import LLMWriter

        llm = LLMWriter(a.model, base_url=a.base_url, cache_dir=a.cache_dir or f"{a.out}.llm_cache",
                        fmt=a.box_format, style=a.style, concurrency=a.concurrency, timeout=a.timeout,
                        max_retries=a.max_retries, send_image=not a.no_image)
    write_records(records, writer=a.writer, fmt=a.box_format, style=a.style, llm_writer=llm)
    write_mau(records, a.out)
    print(f"wrote {len(records)} records ({len(findings)} findings read) to {a.out}")
    if findings.skipped:
        print(f"skipped {len(findings.skipped)} bad entries:", file=sys.stderr)
        for m in findings.skipped[:20]:
            print(f"  {m}", file=sys.stderr)
        if len(findings.skipped) > 20:
            print(f"  ... and {len(findings.skipped) - 20} more", file=sys.stderr)
    if llm is not None:
        print("llm writer: " + json.dumps(llm.stats.as_dict()))
    return 0


def _cmd_stats(a) -> int:
    from umedfast.data.records import read_mau

    st = compute_stats(read_mau(a.file))
    if a.json:
        print(json.dumps(st, indent=1))
    else:
        _print_stats(st)
    return 0


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        return {"synth": _cmd_synth, "build": _cmd_build, "stats": _cmd_stats}[a.cmd](a)
    except (ValueError, OSError) as e:  # user errors (UserError is a ValueError): one line, exit 2
        msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        print(f"umedfast-data {a.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
