"""``umedfast-data`` end to end: synth -> stats, build (template, skip-bad, llm against a local server)."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from umedfast.data import read_mau
from umedfast.cli.data import main


def test_synth_then_stats(tmp_path, capsys):
    assert main(["synth", "--n", "12", "--out", str(tmp_path / "s"), "--seed", "2", "--image-size", "96",
                 "--style", "compact", "--box-format", "shikra"]) == 0
    recs = read_mau(tmp_path / "s" / "mau_synth.jsonl")
    assert len(recs) == 12 and all(r.image_size == [96, 96] for r in recs)
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "s" / "mau_synth.jsonl"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["records"] == 12 and sum(st["split"].values()) == 12 and sum(st["source"].values()) == 12
    assert st["findings"] == sum(st["class"].values()) == sum(len(r.findings) for r in recs)


def _kvasir(root, bad=False):
    (root / "images").mkdir(parents=True)
    for stem in ("p1", "p2"):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
    data = {"p1": {"height": 40, "width": 40, "bbox": [{"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 30}]},
            "p2": {"height": 40, "width": 40, "bbox": [{"xmin": 2, "ymin": 3, "xmax": 20 if not bad else 99,
                                                        "ymax": 30}]}}
    (root / "kavsir_bboxes.json").write_text(json.dumps(data))


def test_build_template_and_skip_bad(tmp_path, capsys):
    _kvasir(tmp_path / "kv", bad=True)
    out = tmp_path / "out" / "kv.jsonl"
    assert main(["build", "--source", "kvasir", "--root", str(tmp_path / "kv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "kavsir_bboxes.json: entry 'p2'" in err and "outside" in err and not out.exists()
    assert main(["build", "--source", "kvasir", "--root", str(tmp_path / "kv"), "--out", str(out), "--skip-bad"]) == 0
    cap = capsys.readouterr()
    assert "skipped 1 bad entries" in cap.err
    recs = read_mau(out)
    assert len(recs) == 1 and "polyp" in recs[0].response and recs[0].image.endswith("p1.jpg")


def test_build_with_llm_writer(tmp_path, capsys, monkeypatch):
    from _fake_llm import KEY, FakeLLM

    _kvasir(tmp_path / "kv")
    server = FakeLLM()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        out = tmp_path / "kv.jsonl"
        assert main(["build", "--source", "kvasir", "--root", str(tmp_path / "kv"), "--out", str(out), "--writer",
                     "llm", "--base-url", server.base_url, "--model", "fake", "--concurrency", "2"]) == 0
    finally:
        server.close()
    cap = capsys.readouterr()
    stats = json.loads(cap.out.split("llm writer: ")[1])
    assert stats["llm_ok"] == 2 and stats["prompt_tokens"] == 44 and KEY not in cap.out + cap.err
    assert all(r.meta["writer"] == "llm" for r in read_mau(out))
    assert (tmp_path / "kv.jsonl.llm_cache").is_dir()


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "umedfast.cli.data", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "synth" in r.stdout and "build" in r.stdout and "stats" in r.stdout
