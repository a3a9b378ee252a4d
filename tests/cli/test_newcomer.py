"""The newcomer path, run as a user would: the README's demo command verbatim (relative --output-dir, from the repo
root layout and from another folder), `umedfast-data synth/build` with relative paths, relocatable JSONL folders,
`threads: auto`, Ctrl-C (exit 130 with a checkpoint and a resume hint) and `kill -9` + `--resume` (each step once in
metrics.jsonl). Every run is a real subprocess on files the test writes; sizes are tiny.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import TINY, env, metrics, sigkill_when
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# Tiny sizes appended to the README command (the demo itself trains for ~8 minutes). threads stays as the demo's.
DEMO_TINY = [o for o in TINY if not o.startswith("threads=")] + [
    "sft.epochs=1", "sft.batch_size=4", "sft.max_steps=2", "ppo.steps=1", "ppo.queries_per_step=2", "ppo.k=2",
    "ppo.max_new_tokens=6", "ppo.minibatch_size=4"]


def _demo_size_overrides() -> list[str]:
    from umedfast.config import DataConfig

    extra = []
    if "synth_eval_n" in DataConfig.__dataclass_fields__:  # an extra evaluation set, if the config has one
        extra.append("data.synth_eval_n=0")
    return extra


def readme_demo_command() -> list[str]:
    """The `umedfast-train ...` part of the README's demo command (between the demo-command markers), as argv."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- demo-command -->\s*```\n(.*?)\n```\s*<!-- /demo-command -->", text, re.S).group(1)
    parts = [p.strip() for p in block.replace("\\\n", " ").split("&&")]
    train = [p for p in parts if p.startswith("umedfast-train")]
    assert len(train) == 1, block
    return shlex.split(train[0])


def _console(argv: list[str]) -> list[str]:
    """The console script itself when it is on PATH (as the README user types it), else ``python -m``."""
    exe = shutil.which(argv[0])
    module = {"umedfast-train": "umedfast.cli", "umedfast-data": "umedfast.cli.data"}[argv[0]]
    return [exe, *argv[1:]] if exe else [sys.executable, "-m", module, *argv[1:]]


def _run(argv, cwd, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(_console(argv), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{argv}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-5000:]}"
    assert "Traceback" not in p.stderr
    return p


def test_readme_demo_command_is_what_the_tests_run():
    argv = readme_demo_command()
    assert argv[0] == "umedfast-train" and "--output-dir" in argv
    out = argv[argv.index("--output-dir") + 1]
    assert not os.path.isabs(out)  # the README uses a relative output folder: the case that used to break


def test_readme_demo_command_from_the_repo_root_and_relocatable_data(tmp_path):
    """The README command verbatim in a folder laid out like the repo root (configs/ there), relative output dir."""
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    argv = readme_demo_command() + DEMO_TINY + _demo_size_overrides()
    p = _run(argv, cwd=root)
    out = root / argv[argv.index("--output-dir") + 1]
    for stage in ("sft", "ppo"):
        ev = json.loads((out / stage / "eval.json").read_text())
        assert ev["n"] == 2 and 0.0 <= ev["accuracy"] <= 1.0
    assert re.search(r"threads auto: \d+ torch thread", p.stderr)  # the demo's threads: auto logs its choice
    cfg = (out / "config.yaml").read_text()
    assert f"output_dir: {out}" in cfg  # resolved once, absolute: the saved config works from any folder
    # the generated JSONL stores image paths relative to its folder: the folder can move
    jsonl = out / "data" / "mau_synth.jsonl"
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["image"].startswith("images/")
    moved = tmp_path / "elsewhere" / "mau"
    shutil.copytree(out / "data", moved)
    p = _run(["umedfast-data", "stats", "mau/mau_synth.jsonl"], cwd=tmp_path / "elsewhere")
    assert "records 40" in p.stdout
    from umedfast.data import read_mau

    recs = read_mau(moved / "mau_synth.jsonl")
    assert all(Path(r.image).is_file() and str(moved) in r.image for r in recs)


def test_readme_demo_command_from_another_folder(tmp_path):
    """The same command from a folder below: only the config path changes (it is relative to where you stand)."""
    cwd = tmp_path / "work" / "deeper"
    cwd.mkdir(parents=True)
    argv = readme_demo_command()
    argv[argv.index("--config") + 1] = os.path.relpath(REPO / "configs" / "demo.yaml", cwd)
    argv += DEMO_TINY + _demo_size_overrides()
    _run(argv, cwd=cwd)
    out = cwd / argv[argv.index("--output-dir") + 1]
    assert (out / "sft" / "eval.json").is_file() and (out / "ppo" / "eval.json").is_file()
    assert (out / "data" / "images").is_dir() and not (out / "data" / "outputs").exists()


def _kvasir(root: Path, n=4) -> None:
    (root / "images").mkdir(parents=True)
    boxes = {}
    for i in range(n):
        Image.fromarray(np.full((40, 48, 3), 50 + 10 * i, np.uint8)).save(root / "images" / f"k{i}.jpg")
        boxes[f"k{i}"] = {"height": 40, "width": 48, "bbox": [{"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 30}]}
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))


def test_data_synth_and_build_with_relative_paths(tmp_path):
    _run(["umedfast-data", "synth", "--n", "6", "--image-size", "32", "--out", "data/synth"], cwd=tmp_path)
    jsonl = tmp_path / "data" / "synth" / "mau_synth.jsonl"
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(rows) == 6 and all(r["image"].startswith("images/") for r in rows)
    assert all((jsonl.parent / r["image"]).is_file() for r in rows)
    p = _run(["umedfast-data", "stats", "synth/mau_synth.jsonl"], cwd=tmp_path / "data")
    assert "records 6" in p.stdout

    _kvasir(tmp_path / "kv")
    # --out inside the dataset folder: image paths stored relative to the JSONL; outside it: absolute
    _run(["umedfast-data", "build", "--source", "kvasir", "--root", "kv", "--out", "kv/mau.jsonl"], cwd=tmp_path)
    inside = [json.loads(x)["image"] for x in (tmp_path / "kv" / "mau.jsonl").read_text().splitlines()]
    assert inside == [f"images/k{i}.jpg" for i in range(4)]
    _run(["umedfast-data", "build", "--source", "kvasir", "--root", "../kv", "--out", "mau.jsonl"],
         cwd=tmp_path / "data")
    outside = [json.loads(x)["image"] for x in (tmp_path / "data" / "mau.jsonl").read_text().splitlines()]
    assert outside == [str(tmp_path / "kv" / "images" / f"k{i}.jpg") for i in range(4)]
    # a relocated dataset folder still reads
    shutil.move(str(tmp_path / "kv"), str(tmp_path / "moved"))
    p = _run(["umedfast-data", "stats", "moved/mau.jsonl"], cwd=tmp_path)
    assert "records 4" in p.stdout


def test_threads_auto_counts_idle_cores(monkeypatch):
    from umedfast.config import load_config
    from umedfast.train import runtime

    assert load_config(None).threads == "auto"  # the default
    ticks = iter([{0: (100, 1000), 1: (100, 1000)},      # idle, total ticks per CPU at start
                  {0: (130, 1030), 1: (100, 1030)}])     # CPU 0 idle throughout, CPU 1 busy
    monkeypatch.setattr(runtime, "_cpu_times", lambda cpus: next(ticks))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    free, usable, how = runtime.free_cores(window_s=0.0)
    assert (free, usable) == (1, 2) and "1.0 of 2 usable cores idle" in how


def _popen_train(out: Path, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "umedfast.cli", "--output-dir", str(out), "--stage", "sft", *TINY,
           "sft.batch_size=2", *args]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def _ckpt_steps(run: Path) -> list[int]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.iterdir() if p.name.startswith("step-")
                  and (p / "state.json").is_file())


def _wait(proc, cond, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.slow  # end to end: trains through the CLI
def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = _popen_train(out, "sft.epochs=100")
    try:
        assert _wait(proc, lambda: len(_rows(out / "sft" / "metrics.jsonl")) >= 2), proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"umedfast-train: sft interrupted at step (\d+) \(checkpoint (\S+)\); continue with: "
                     r"umedfast-train (.*) --resume", last)
    assert m, last
    step, ckpt = int(m.group(1)), Path(m.group(2))
    assert json.loads((ckpt / "state.json").read_text())["step"] == step
    assert max(r["step"] for r in _rows(out / "sft" / "metrics.jsonl")) == step  # stopped at a step boundary
    assert f"--output-dir {out}" in m.group(3)


@pytest.mark.slow  # end to end: trains through the CLI
def test_kill_9_then_resume_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    args = ["sft.max_steps=24", "sft.epochs=10", "sft.save_every=4"]
    proc = _popen_train(out, *args)
    metrics_file = out / "sft" / "metrics.jsonl"

    def rows_past_a_checkpoint():
        ck = _ckpt_steps(out / "sft")
        steps = [r["step"] for r in _rows(metrics_file) if "loss" in r]
        return bool(ck) and ck[-1] >= 4 and steps and max(steps) > ck[-1]

    sigkill_when(proc, rows_past_a_checkpoint, timeout=300)
    restored = _ckpt_steps(out / "sft")[-1]
    before = [r["step"] for r in _rows(metrics_file) if "loss" in r]
    assert max(before) > restored  # the killed run had logged steps its checkpoint does not hold
    p = subprocess.run([sys.executable, "-m", "umedfast.cli", "--output-dir", str(out), "--stage", "sft", *TINY,
                        "sft.batch_size=2", *args, "--resume"], env=env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    steps = [r["step"] for r in metrics(metrics_file) if "loss" in r]
    assert steps == list(range(1, 25))  # each step exactly once, in order


def test_metrics_logger_drops_rows_past_the_newest_checkpoint(tmp_path):
    """What a resuming loop (SFT passes the step, PPO relies on the default) does to a killed run's metrics."""
    from umedfast.train.metrics import MetricsLogger

    run = tmp_path / "ppo"
    (run / "checkpoints" / "step-00000003").mkdir(parents=True)
    (run / "checkpoints" / "step-00000003" / "state.json").write_text("{}")
    (run / "checkpoints" / ".tmp-step-00000005").mkdir()  # torn save: ignored
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1}) + "\n" for s in range(1, 6))
                                       + '{"step": 6, "rew')  # killed mid-write
    log = MetricsLogger(run, tensorboard=False)
    log.log(4, {"reward": 0.2})
    log.close()
    assert [r["step"] for r in metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]
