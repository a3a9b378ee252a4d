"""Hostile input through the real command-line tools: every user mistake is one line on stderr, exit status 2,
never a traceback, and it is refused before any model is loaded (these probes run in about a second each).

Each probe runs ``python -m umedfast.<tool>`` in a subprocess on files the test writes, as a user would.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _train_helpers import env


def _run(module, *args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def one_line_error(p, *needles, code=2):
    """Assert the process failed with ``code`` and exactly one stderr line holding every needle; return it."""
    err = p.stderr.strip()
    assert p.returncode == code, f"rc={p.returncode}\nSTDOUT:{p.stdout[-2000:]}\nSTDERR:{p.stderr[-4000:]}"
    assert "Traceback" not in p.stderr and len(err.splitlines()) == 1, p.stderr[-4000:]
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    print(f"PROBE exit {p.returncode}: {err}")  # pytest -s lists every probe's line
    return err


def train(*args, **kw):
    return _run("umedfast.cli", *args, **kw)


def evaluate(*args, **kw):
    return _run("umedfast.cli.eval", *args, **kw)


def data(*args, **kw):
    return _run("umedfast.cli.data", *args, **kw)


def _record(i, image, **kw):
    d = {"id": f"r{i}", "image": image, "source": "nih", "modality": "X-ray",
         "findings": [{"label": "nodule", "box_xyxy": [1, 2, 10, 12]}], "query": "q?", "response": "a.",
         "split": "train" if i % 2 else "test", "image_size": [32, 32]}
    d.update(kw)
    return d


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _png(path: Path, size=32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size * size) % 251).astype(np.uint8).reshape(size, size), "L").save(path)
    return path


def _safetensors(path: Path, truncate: int = 0) -> Path:
    """A valid one-tensor safetensors file (written by hand), optionally cut ``truncate`` bytes short."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(16)
    path.write_bytes(blob[:len(blob) - truncate])
    return path


def _model_dir(root: Path, *, weights="safetensors", adapter=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (root / "tokenizer.json").write_text("{}")
    if weights == "safetensors":
        _safetensors(root / "model.safetensors")
    elif weights == "truncated":
        _safetensors(root / "model.safetensors", truncate=5)
    elif weights == "pickle":
        (root / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    if adapter:
        (root / "adapter").mkdir()
        (root / "adapter" / "adapter_config.json").write_text("{}")
        if adapter == "pickle":
            (root / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    return root


# ------------------------------------------------------------------------------------------------ umedfast-train
def test_train_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lr: 1e-3\n  epochs: [1,\n")
    one_line_error(train("--config", bad, "--output-dir", tmp_path / "o"), "bad.yaml:", "invalid YAML")
    bad.write_text("- a\n- b\n")
    one_line_error(train("--config", bad, "--output-dir", tmp_path / "o"), "must hold a mapping")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    one_line_error(train("--config", bad, "--output-dir", tmp_path / "o"), "not UTF-8")
    one_line_error(train("--config", tmp_path / "nope.yaml"), "nope.yaml", "does not exist")
    assert not (tmp_path / "o" / "config.yaml").exists()


@pytest.mark.parametrize("override,needle", [
    ("ppo.kk=1", "unknown config key 'ppo.kk'"),
    ("ppo.k", "not key=value"),
    ("=3", "not key=value"),
    ("ppo.k=abc", "ppo.k must be an integer"),
    ("ppo.lr=[1,", "ppo.lr must be a number"),
    ("sft.lr=nan", "sft.lr must be a finite number"),
    ("sft", "not key=value"),
    ("model=3", "is a section"),
    ("threads=many", "threads must be auto or an integer"),
    # values checked at load time, before a model is loaded
    ("sft.lr=0", "sft.lr must be > 0"),
    ("ppo.lr=-1e-5", "ppo.lr must be > 0"),
    ("ppo.value_lr=0", "ppo.value_lr must be > 0"),
    ("ppo.max_new_tokens=0", "ppo.max_new_tokens must be >= 1"),
    ("sft.eval_max_new_tokens=0", "sft.eval_max_new_tokens must be >= 1"),
    ("ppo.minibatch_size=0", "ppo.minibatch_size must be >= 1"),
    ("ppo.queries_per_step=0", "ppo.queries_per_step must be >= 1"),
    ("ppo.temperature=0", "ppo.temperature must be > 0"),
    ("ppo.steps=-1", "ppo.steps must be >= 0"),
    ("ppo.k=1", "ppo.k=1 with rewards.alr_norm=max"),
    ("ppo.giou_weight=0.5", "config key 'ppo.giou_weight' moved to 'rewards.giou_weight'"),
])
def test_train_bad_override_is_one_line(tmp_path, override, needle):
    one_line_error(train("--output-dir", tmp_path / "o", override), needle)
    assert not (tmp_path / "o" / "config.yaml").exists()


def test_train_k1_without_max_normalization_is_allowed():
    from umedfast.config import load_config

    cfg = load_config(None, ["ppo.k=1", "rewards.alr_norm=none", "rewards.vrr_norm=none"])
    assert cfg.ppo.k == 1


def test_train_model_directory_errors(tmp_path):
    out = tmp_path / "o"
    one_line_error(train("--output-dir", out, f"model.name={tmp_path / 'no-such-model'}"),
                   "model.name", "does not exist", "never downloads")
    one_line_error(train("--output-dir", out, "model.name=llava-hf/llava-1.5-7b-hf"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(train("--output-dir", out, f"model.name={empty}"), "has no config.json")
    pick = _model_dir(tmp_path / "pickle", weights="pickle")
    one_line_error(train("--output-dir", out, f"model.name={pick}"), "only pickle weights (pytorch_model.bin)",
                   "safetensors")
    trunc = _model_dir(tmp_path / "trunc", weights="truncated")
    one_line_error(train("--output-dir", out, f"model.name={trunc}"), "model.safetensors is truncated")
    lora = _model_dir(tmp_path / "lora", adapter="pickle")
    one_line_error(train("--output-dir", out, f"model.name={lora}"), "adapter_model.bin (a pickle)",
                   "no adapter_model.safetensors")
    one_line_error(train("--output-dir", out, "--stage", "ppo", f"ppo.init_from={pick}"), "ppo.init_from",
                   "only pickle weights")
    # a relative model path is taken from the working directory
    one_line_error(train("--output-dir", "o", "model.name=./pickle", cwd=tmp_path), "only pickle weights")


def test_peft_is_never_handed_a_pickle(tmp_path):
    from umedfast.errors import UserError
    from umedfast.model.loading import _load_adapter

    d = _model_dir(tmp_path / "m", adapter="pickle")
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        _load_adapter(None, d / "adapter")


def test_train_data_file_errors(tmp_path):
    out = tmp_path / "o"
    one_line_error(train("--output-dir", out, f"data.path={tmp_path / 'none.jsonl'}"), "data.path", "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(train("--output-dir", out, f"data.path={empty}"), "holds no records")
    binary = tmp_path / "weights.jsonl"
    binary.write_bytes(b"\x80\x04\x95\xff\x00\x00pickle")
    one_line_error(train("--output-dir", out, f"data.path={binary}"), "weights.jsonl:1: not UTF-8")
    img = _png(tmp_path / "d" / "images" / "a.png")
    bad = _jsonl(tmp_path / "d" / "bad.jsonl", [_record(1, "images/a.png"), _record(2, "images/a.png"),
                                                '{"id": "r3", "image": '])
    one_line_error(train("--output-dir", out, f"data.path={bad}"), "bad.jsonl:3: invalid JSON")
    unordered = _jsonl(tmp_path / "d" / "box.jsonl", [_record(1, "images/a.png",
                                                              findings=[{"label": "x", "box_xyxy": [9, 2, 1, 12]}])])
    one_line_error(train("--output-dir", out, f"data.path={unordered}"), "box.jsonl:1:", "not ordered")
    lost = _jsonl(tmp_path / "d" / "lost.jsonl", [_record(i, "images/a.png" if i < 3 else f"images/gone{i}.png")
                                                  for i in range(1, 8)])
    err = one_line_error(train("--output-dir", out, f"data.path={lost}"), "5 of 7 records", "missing image files",
                         "gone3.png", "and 2 more")
    assert "gone6.png" not in err  # names the first few only
    assert img.is_file()
    assert not (out / "config.yaml").exists()  # all refused before anything was written


def test_train_output_dir_not_creatable(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(train("--output-dir", tmp_path / "afile" / "run"), "cannot create or write the output directory")


# ------------------------------------------------------------------------------------------------- umedfast-eval
def test_eval_checkpoint_errors(tmp_path):
    img = _png(tmp_path / "d" / "images" / "a.png")
    good = _jsonl(tmp_path / "d" / "mau.jsonl", [_record(2, "images/a.png")])
    one_line_error(evaluate("--checkpoint", tmp_path / "missing", "--data", good), "--checkpoint", "does not exist")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    one_line_error(evaluate("--checkpoint", half, "--data", good), "no model*.safetensors")
    trunc = _model_dir(tmp_path / "trunc", weights="truncated")
    one_line_error(evaluate("--checkpoint", trunc, "--data", good), "is truncated or not a safetensors file")
    nottok = _model_dir(tmp_path / "notok")
    (nottok / "tokenizer.json").unlink()
    one_line_error(evaluate("--checkpoint", nottok, "--data", good), "no tokenizer files")
    # a second checkpoint's problem is found before the first one is evaluated
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--checkpoint", trunc, "--data", good), "truncated")
    assert img.is_file()


def test_eval_run_data_errors(tmp_path):
    _png(tmp_path / "d" / "images" / "a.png")
    bad = _jsonl(tmp_path / "d" / "bad.jsonl", [_record(2, "images/a.png"), "[1, 2]"])
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--data", bad), "bad.jsonl:2:", "expected a JSON object")
    lost = _jsonl(tmp_path / "d" / "lost.jsonl", [_record(2, "images/a.png"), _record(4, "images/b.png")])
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--data", lost), "1 of 2 records", "b.png")
    size = _jsonl(tmp_path / "d" / "size.jsonl", [_record(2, "images/a.png", image_size=["W", 32])])
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--data", size), "size.jsonl:1:", "image_size")
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--data", tmp_path / "none.jsonl"), "none.jsonl",
                   "no such file")
    good = _jsonl(tmp_path / "d" / "good.jsonl", [_record(2, "images/a.png")])
    (tmp_path / "afile").write_text("x")
    one_line_error(evaluate("--checkpoint", "tiny-llava", "--data", good, "--out", tmp_path / "afile" / "o"),
                   "cannot create the output directory")


def _eval_dir(root: Path, rows) -> Path:
    root.mkdir(parents=True)
    (root / "eval.json").write_text(json.dumps({"accuracy": 1.0, "mean_iou": 0.5, "acc_iou50": 0.5, "format_ok": 1.0,
                                                "per_source": {}, "n": 2}))
    _jsonl(root / "eval.predictions.jsonl", rows)
    return root


def test_eval_table_compare_report_malformed_files(tmp_path):
    ok = [{"id": "a", "correct": True, "iou": 0.5, "iou50": True}, {"id": "b", "correct": False, "iou": None}]
    a = _eval_dir(tmp_path / "a", ok)
    b = _eval_dir(tmp_path / "b", [ok[0], "{'id': 'b'}"])
    one_line_error(evaluate("compare", a, b), "eval.predictions.jsonl:2: invalid JSON")
    c = _eval_dir(tmp_path / "c", [ok[0], {"id": "b", "iou": None}])
    one_line_error(evaluate("compare", a, c), "eval.predictions.jsonl:2:", "needs 'id' and 'correct'")
    d = _eval_dir(tmp_path / "d", [ok[0]])
    one_line_error(evaluate("compare", a, d), "different records")
    one_line_error(evaluate("compare", a, tmp_path / "none"), "no predictions file")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00binary")
    one_line_error(evaluate("compare", a, tmp_path / "bin.jsonl"), "bin.jsonl:1: not UTF-8")

    bad_eval = tmp_path / "e" / "eval.json"
    bad_eval.parent.mkdir()
    bad_eval.write_text('{\n  "accuracy": 0.5,\n  oops\n}')
    one_line_error(evaluate("table", bad_eval), "eval.json:3: invalid JSON")
    bad_eval.write_text("[1, 2]")
    one_line_error(evaluate("table", bad_eval), "expected a JSON object")
    bad_eval.write_bytes(b"\x00\xff\xfe")
    one_line_error(evaluate("table", bad_eval), "not UTF-8")

    metrics = _jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}, "not json"])
    one_line_error(evaluate("report", "--metrics", metrics, "--out", tmp_path / "r1"), "metrics.jsonl:2: invalid JSON")
    one_line_error(evaluate("report", "--eval", b, "--out", tmp_path / "r2"), "eval.predictions.jsonl:2: invalid JSON")
    bench = tmp_path / "vqa_rad.json"
    bench.write_text('{"vqa_rad": 0.5}')
    one_line_error(evaluate("report", "--bench", bench, "--out", tmp_path / "r3"), "vqa_rad.json",
                   "expected {benchmark: {metric: value}}")


def test_eval_bench_malformed_benchmark_file(tmp_path):
    root = tmp_path / "vqa"
    root.mkdir()
    (root / "VQA_RAD Dataset Public.json").write_text('{"not": "a list"}')
    one_line_error(evaluate("bench", "--checkpoint", "tiny-llava", "--benchmark", "vqa_rad", "--root", root),
                   "expected a JSON list")
    (root / "VQA_RAD Dataset Public.json").write_text('[{"question": "q"')
    one_line_error(evaluate("bench", "--checkpoint", "tiny-llava", "--benchmark", "vqa_rad", "--root", root),
                   "invalid JSON at line 1")


def test_benchmark_by_name_fallback_stays_inside_root(tmp_path):
    from umedfast.data.benchmarks import load_vqa_rad

    outside = _png(tmp_path / "secret" / "img1.jpg")
    root = tmp_path / "vqa"
    (root / "imgs").mkdir(parents=True)
    os.symlink(outside, root / "imgs" / "img1.jpg")  # a link out of the dataset root is never followed
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps([
        {"question": "q", "answer": "yes", "answer_type": "CLOSED", "image_name": "sub/img1.jpg",
         "phrase_type": "test_freeform"}]))
    with pytest.raises(FileNotFoundError, match="not found under"):
        load_vqa_rad(root)
    _png(root / "imgs" / "deeper" / "img1.jpg")
    (root / "imgs" / "img1.jpg").unlink()
    assert load_vqa_rad(root)[0].image == str((root / "imgs" / "deeper" / "img1.jpg").resolve())


# ------------------------------------------------------------------------------------------------- umedfast-data
def test_data_stats_hostile_files(tmp_path):
    (tmp_path / "model.bin").write_bytes(bytes(range(255, -1, -1)) * 4)
    one_line_error(data("stats", tmp_path / "model.bin"), "model.bin:1: not UTF-8")
    one_line_error(data("stats", tmp_path / "none.jsonl"), "none.jsonl", "no such file")
    rows = [_record(1, "a.png"), _record(2, "a.png", findings=[{"label": "x", "box_xyxy": [1, 2, "3", 4]}])]
    one_line_error(data("stats", _jsonl(tmp_path / "s1.jsonl", rows)), "s1.jsonl:2:", "must be 4 numbers")
    rows[1] = _record(2, "a.png", findings=[{"label": "x", "box_xyxy": [1, 2, float("inf"), 4]}])
    (tmp_path / "s2.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # json writes Infinity
    one_line_error(data("stats", tmp_path / "s2.jsonl"), "s2.jsonl:2:", "non-finite")
    rows[1] = _record(2, "a.png", image_size=[32, "big"])
    one_line_error(data("stats", _jsonl(tmp_path / "s3.jsonl", rows)), "s3.jsonl:2:", "image_size")
    rows[1] = _record(2, "a.png", meta=[1])
    one_line_error(data("stats", _jsonl(tmp_path / "s4.jsonl", rows)), "s4.jsonl:2:", "'meta' must be an object")
    rows[1] = _record(2, "../../etc/passwd")
    one_line_error(data("stats", _jsonl(tmp_path / "s5.jsonl", rows)), "s5.jsonl:2:", "leaves the JSONL folder")
    p = data("stats", _jsonl(tmp_path / "ok.jsonl", rows[:1]))
    assert p.returncode == 0 and "records 1" in p.stdout


def _kvasir(root: Path, n=3) -> Path:
    (root / "images").mkdir(parents=True)
    boxes = {}
    for i in range(n):
        Image.fromarray(np.full((40, 48, 3), 60 + i, np.uint8)).save(root / "images" / f"k{i}.jpg", quality=95)
        boxes[f"k{i}"] = {"height": 40, "width": 48, "bbox": [{"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 30}]}
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    return root


def test_data_build_truncated_image_is_caught_at_build_time(tmp_path):
    root = _kvasir(tmp_path / "kv")
    jpg = root / "images" / "k1.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])  # the header still reads, the pixels do not
    one_line_error(data("build", "--source", "kvasir", "--root", "kv", "--out", "kv/mau.jsonl", cwd=tmp_path),
                   "kavsir_bboxes.json: entry 'k1'", "cannot read image", "k1.jpg")
    p = data("build", "--source", "kvasir", "--root", "kv", "--out", "kv/mau.jsonl", "--skip-bad", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "wrote 2 records" in p.stdout and "skipped 1 bad entries" in p.stderr and "Traceback" not in p.stderr


def test_data_build_wrong_shaped_sources(tmp_path):
    kv = _kvasir(tmp_path / "kv")
    (kv / "kavsir_bboxes.json").write_text(json.dumps({"k0": ["not", "an", "object"]}))
    one_line_error(data("build", "--source", "kvasir", "--root", kv, "--out", tmp_path / "o.jsonl"),
                   "entry 'k0'", "must be an object")

    tb = tmp_path / "tbx"
    (tb / "annotations" / "json").mkdir(parents=True)
    (tb / "imgs").mkdir()
    ann = tb / "annotations" / "json" / "TBX11K_train_only_tb.json"
    ann.write_text("[]")
    one_line_error(data("build", "--source", "tbx11k", "--root", tb, "--out", tmp_path / "o.jsonl"),
                   "TBX11K_train_only_tb.json", "expected a COCO detection object")
    ann.write_text(json.dumps({"images": ["x.png"], "annotations": [], "categories": []}))
    one_line_error(data("build", "--source", "tbx11k", "--root", tb, "--out", tmp_path / "o.jsonl"),
                   "images[0]", "must be an object")
    ann.write_text(json.dumps({"images": [], "annotations": [7], "categories": []}))
    one_line_error(data("build", "--source", "tbx11k", "--root", tb, "--out", tmp_path / "o.jsonl"),
                   "annotations[0]", "must be an object")

    ks = tmp_path / "ks"
    (ks / "train" / "images").mkdir(parents=True)
    (ks / "train" / "labels").mkdir()
    _png(ks / "train" / "images" / "s0.png", 40)
    (ks / "train" / "labels" / "s0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (ks / "data.yaml").write_text("names:\n  0: Tas_Var\n")  # Roboflow's newer layout: names as a mapping
    p = data("build", "--source", "kidneystone", "--root", ks, "--out", tmp_path / "ks.jsonl")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "ks.jsonl").read_text().splitlines()[0])["findings"][0]["label"] == "kidney stone"
    (ks / "data.yaml").write_text("names:\n  stone: 0\n")
    one_line_error(data("build", "--source", "kidneystone", "--root", ks, "--out", tmp_path / "ks.jsonl"),
                   "data.yaml", "class indices")
    (ks / "data.yaml").write_text("names: [stone\n")
    one_line_error(data("build", "--source", "kidneystone", "--root", ks, "--out", tmp_path / "ks.jsonl"),
                   "data.yaml:", "invalid YAML")
    (ks / "data.yaml").write_text("names: [stone]\n")
    (ks / "train" / "labels" / "s0.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\n")
    one_line_error(data("build", "--source", "kidneystone", "--root", ks, "--out", tmp_path / "ks.jsonl"),
                   "s0.txt:2:", "not UTF-8")


def test_data_build_non_utf8_csv(tmp_path):
    root = tmp_path / "nih"
    _png(root / "images" / "00000001_000.png", 64)
    (root / "BBox_List_2017.csv").write_bytes(
        b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,1,2,10,10\n"
        b"00000001_000.png,Mass,1,2,10,10 \xe9t\xe9\n")
    one_line_error(data("build", "--source", "nih", "--root", root, "--out", tmp_path / "o.jsonl"),
                   "BBox_List_2017.csv:3:", "not UTF-8", "column 33")
    (root / "DL_info.csv").write_bytes(b"\xff\xfeF\x00")
    one_line_error(data("build", "--source", "deeplesion", "--root", root, "--out", tmp_path / "o.jsonl"),
                   "DL_info.csv:1:", "not UTF-8")


def test_data_synth_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    err = one_line_error(data("synth", "--n", "2", "--image-size", "32", "--out", tmp_path / "f"))
    assert "umedfast-data synth: error:" in err


def test_train_batch_larger_than_the_data_is_one_line(tmp_path):
    from _train_helpers import TINY

    one_line_error_last = train("--output-dir", tmp_path / "o", "--stage", "sft", *TINY, "sft.batch_size=1000")
    err = one_line_error_last.stderr.strip().splitlines()
    assert one_line_error_last.returncode == 2 and "Traceback" not in one_line_error_last.stderr
    assert "cannot fill one optimizer step" in err[-1] and "lower sft.batch_size" in err[-1]  # (INFO logs above)
