"""umedfast-eval end to end on the tiny offline model and MAU-Synth, plus the paper-style tables."""
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from umedfast.eval import tables as T
from umedfast.cli.eval import main


def _res(per_source, **top):
    return {"per_source": {s: {"accuracy": a, "mean_iou": a / 2} for s, a in per_source.items()}, **top}


def test_results_table_paper_order_and_macro_avg():
    t = T.results_table([("m1", _res({"nih": 0.4, "deeplesion": 0.6, "kvasir": 1.0})),
                         ("m2", _res({"nih": 0.2}))])
    assert t.header == ["Model", "DeepLesion", "KVASIR", "NIH", "Avg"]
    assert t.rows[0] == ["m1", 0.6, 1.0, 0.4, pytest.approx(2 / 3)]
    assert t.rows[1] == ["m2", None, None, 0.2, 0.2]
    text = T.render_text(t)
    assert "DeepLesion" in text and " - " in text and "0.67" in text
    h = T.render_html(T.Table("a<b", ["Model", "x"], [["<script>", 0.5]]))
    assert "&lt;script&gt;" in h and "<script>" not in h
    assert T.display_name("synth-tbx11k") == "Synth TBX11K"


def test_ablation_cli_reads_the_four_runs(tmp_path, capsys):
    accs = {"full": 0.75, "wo_vrr": 0.71, "wo_alr": 0.72, "wo_aar": 0.67}
    for run, a in accs.items():
        stage = "sft" if run == "wo_aar" else "ppo"
        d = tmp_path / run / stage
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(_res({"nih": a, "kvasir": a + 0.1})))
    assert main(["ablation", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("UMed", "w/o"))][:4]
    assert [ln.split()[0] for ln in lines] == ["UMed-LVLM", "w/o", "w/o", "w/o"]
    assert lines[0].split()[-1] == "0.80" and lines[1].split()[-1] == "0.76"  # Avg = (a + a + 0.1) / 2
    assert "w/o AAR" in lines[3] and lines[3].split()[-1] == "0.72"
    with pytest.raises(ValueError, match="unknown ablation"):
        T.ablation_table({"bogus": {}})


def test_generalization_table_columns_are_the_held_out_groups(tmp_path, capsys):
    p = tmp_path / "eval.json"
    p.write_text(json.dumps({"per_label": {"mass": {"accuracy": 0.5}, "nodule": {"accuracy": 1.0}},
                             "per_source": {}}))
    assert main(["table", str(p), "--names", "model", "--group", "label", "--columns", "mass,effusion"]) == 0
    out = capsys.readouterr().out
    assert "mass" in out and "effusion" in out and "nodule" not in out


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from umedfast.data import synth
    d = tmp_path_factory.mktemp("synth")
    recs = synth.generate(8, d, seed=3, image_size=112, progress=False)
    return d / "mau_synth.jsonl", recs


def test_run_two_checkpoints_writes_eval_json_and_table(synth_data, tmp_path, capsys):
    from umedfast.eval.mau import generate_responses
    from umedfast.model import load_vlm, save_checkpoint

    jsonl, recs = synth_data
    bundle = load_vlm("tiny-llava")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, bundle)
    out = tmp_path / "out"
    rc = main(["--checkpoint", "tiny-llava", "--checkpoint", str(ckpt), "--names", "base,saved", "--data", str(jsonl),
               "--split", "all", "--limit", "3", "--max-new-tokens", "6", "--batch-size", "2", "--out", str(out),
               "--report", str(tmp_path / "report"), "--report-samples", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "report" / "report.html").read_text()
    assert report.count("<img ") == 1 and "Avg" in report and "saved" in report
    assert "Model" in printed and "Avg" in printed and "base" in printed and "saved" in printed
    ev = json.loads((out / "base" / "eval.json").read_text())
    assert {"accuracy", "mean_iou", "acc_iou50", "format_ok", "per_source", "n"} <= set(ev) and ev["n"] == 3
    assert ev == json.loads((out / "saved" / "eval.json").read_text())  # the saved checkpoint is the same model
    preds = [json.loads(x) for x in (out / "base" / "eval.predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r.id for r in recs[:3]]
    # greedy decoding is deterministic: regenerating gives the same answers
    again = generate_responses(bundle, recs[:3], batch_size=2, max_new_tokens=6, progress=False)
    assert [p["response"] for p in preds] == again


def test_gold_answers_score_perfectly_and_rubric_judge(synth_data, tmp_path):
    from umedfast.eval.judged import make_eval_judge
    from umedfast.eval.mau import evaluate_and_write

    _, recs = synth_data
    m = evaluate_and_write(None, recs, tmp_path / "eval.json", responses=[r.response for r in recs],
                           judge=make_eval_judge("rubric"))
    assert m["accuracy"] == 1.0 and m["format_ok"] == 1.0 and m["acc_iou50"] == 1.0
    assert m["mean_iou"] > 0.95  # norm1000 rounding only
    assert m["judge"] == "rubric" and m["judge_failures"] == 0 and m["judged_accuracy"] is not None
    abnormal = [r for r in recs if r.findings]
    ma = evaluate_and_write(None, abnormal, tmp_path / "abn.json", responses=[r.response for r in abnormal],
                            judge=make_eval_judge("rubric"))
    assert ma["judged_accuracy"] == 1.0  # the rubric gives gold answers on abnormal images full marks
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == 1.0


class _JudgeHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        content = "I cannot grade this" if "BADCASE" in prompt else json.dumps({"score": 0.8})
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_judged_accuracy_through_openai_compatible_server(synth_data, monkeypatch):
    from umedfast.eval.judged import judged_accuracy, make_eval_judge

    _, recs = synth_data
    srv = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("UMEDFAST_JUDGE_API_KEY", "test-key")
        judge = make_eval_judge("openai", base_url=f"http://127.0.0.1:{srv.server_port}/v1", model="judge")
        resp = [r.response for r in recs[:4]]
        resp[1] = "BADCASE"
        m, scores = judged_accuracy(recs[:4], resp, judge)
    finally:
        srv.shutdown()
    assert scores[1] is None and scores[0] == pytest.approx(0.8)
    assert m["judge_failures"] == 1 and m["judged_accuracy"] == 1.0 and m["judged_mean_score"] == pytest.approx(0.8)


def test_bench_cli_pneumoniamnist_auc(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", test_images=imgs, test_labels=np.array([[0], [1], [0], [1]]))
    out = tmp_path / "out"
    assert main(["bench", "--checkpoint", "tiny-llava", "--benchmark", "pneumoniamnist", "--root", str(tmp_path),
                 "--max-new-tokens", "3", "--out", str(out)]) == 0
    m = json.loads((out / "pneumoniamnist.json").read_text())["pneumoniamnist"]
    assert m["n"] == 4 and 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["binary_acc"] <= 1.0
    rows = [json.loads(x) for x in (out / "pneumoniamnist.predictions.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows) and [r["label"] for r in rows] == [0, 1, 0, 1]


def test_ablation_run_commands_resolve_in_the_training_cli(tmp_path, capsys):
    from umedfast.cli.train import build_parser, resolve
    from umedfast.cli.eval import ablation_commands

    cfgs = {k: resolve(build_parser().parse_args(argv)) for k, argv in
            ablation_commands(tmp_path, None, ["sft.epochs=1"])}
    rows = ["rel_only", "wo_vrr", "wo_alr", "full"]  # the paper's Table 6 rows, 3 PPO seeds each
    assert list(cfgs) == ["wo_aar"] + [f"{r}/seed{s}" for r in rows for s in (0, 1, 2)]  # SFT first
    assert cfgs["wo_aar"].stage == "sft" and cfgs["wo_aar"].output_dir == str(tmp_path / "wo_aar")
    sft_final = str(tmp_path / "wo_aar" / "sft" / "final")
    for k, c in cfgs.items():
        if k != "wo_aar":
            assert c.stage == "ppo" and c.ppo.init_from == sft_final and c.seed == int(k[-1])
            assert c.output_dir == str(tmp_path / k)
    weights = {r: (cfgs[f"{r}/seed0"].rewards.w_alr, cfgs[f"{r}/seed0"].rewards.w_vrr) for r in rows}
    assert weights == {"rel_only": (0.0, 0.0), "wo_vrr": (1.0, 0.0), "wo_alr": (0.0, 1.0), "full": (1.0, 1.0)}
    # with every eval.json present, --run trains nothing and prints Table 6
    for k in cfgs:
        d = tmp_path / k / ("sft" if k == "wo_aar" else "ppo")
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(_res({"nih": 0.5})))
    assert main(["ablation", "--root", str(tmp_path), "--run"]) == 0
    captured = capsys.readouterr()
    assert "not retraining" in captured.err and "w/o VRR" in captured.out


def test_pooled_paired_deltas_by_hand():
    from umedfast.eval.ablation import pooled_deltas

    def preds(correct, iou):
        return {str(i): {"correct": c, "iou": u, "iou50": (u or 0) >= 0.5} for i, (c, u) in enumerate(zip(correct, iou))}

    sft = preds([1, 0, 0, 1], [0.5, 0.2, None, 0.4])
    s0 = preds([1, 1, 0, 1], [0.6, 0.4, None, 0.4])  # acc +0.25, IoU +(0.1 + 0.2 + 0) / 3
    s1 = preds([1, 0, 0, 0], [0.5, 0.2, None, 0.1])  # acc -0.25, IoU -(0.3) / 3
    d = {x.metric: x for x in pooled_deltas(sft, [s0, s1], n_boot=200)}
    assert d["accuracy"].delta == pytest.approx(0.0) and d["accuracy"].n == 4
    assert d["mean_iou"].delta == pytest.approx((0.3 - 0.3) / 3 / 2 + 0.0, abs=1e-9) and d["mean_iou"].n == 3
    assert d["accuracy"].p_value == 1.0  # one discordant pair each way
    d = {x.metric: x for x in pooled_deltas(sft, [s0], n_boot=200)}
    assert d["mean_iou"].delta == pytest.approx(0.1) and d["accuracy"].delta == pytest.approx(0.25)


def test_default_row_names_never_collide():
    from umedfast.cli.eval import _names

    assert _names(["runs/a/sft/final", "runs/b/sft/final", "tiny-llava", "tiny-llava"], None) == \
        ["a-sft-final", "b-sft-final", "tiny-llava", "tiny-llava-2"]
    with pytest.raises(SystemExit, match="names"):
        _names(["a", "b"], "only-one")


def test_bad_paths_give_one_line_errors(tmp_path, capsys):
    assert main(["table", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["table", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "bad.json" in err and "Traceback" not in err


def test_run_generalization_split_prints_held_out_columns(synth_data, tmp_path, monkeypatch, capsys):
    """--generalization evaluates only the held-out part and adds its table (model replaced by gold answers)."""
    import umedfast.cli.eval as cli
    import umedfast.eval.mau as mau

    jsonl, recs = synth_data
    seen = []
    real = mau.evaluate_and_write

    def gold(bundle, records, out_path, **kw):
        seen.extend(records)
        kw.pop("judge", None)
        return real(bundle, records, out_path, responses=[r.response for r in records], **kw)

    monkeypatch.setattr(cli, "load_model", lambda spec, device: None)
    monkeypatch.setattr(cli, "check_checkpoint", lambda spec: None)  # "gold" is no checkpoint directory
    monkeypatch.setattr(mau, "evaluate_and_write", gold)
    sources = sorted({r.source.removeprefix("synth-") for r in recs})
    held = sources[0]
    assert main(["--checkpoint", "gold", "--data", str(jsonl), "--generalization", "source", "--held-out", held,
                 "--out", str(tmp_path)]) == 0
    assert seen and all(r.source.removeprefix("synth-") == held for r in seen)
    assert {r.id for r in seen} == {r.id for r in recs if r.source.removeprefix("synth-") == held}  # every split
    out = capsys.readouterr().out
    table = out[out.index("Generalization to held-out sources"):]
    assert table.splitlines()[1].split("  ")[0] == "Model"
    assert T.display_name(f"synth-{held}") in table.splitlines()[1]  # the column is the held-out (synth) source
    assert table.splitlines()[3].split()[-1] == "1.00"  # gold answers: accuracy 1 on the held-out source


@pytest.mark.slow  # end to end: trains through the CLI
def test_ablation_run_trains_all_four_end_to_end_and_resumes_a_crashed_one(tmp_path):
    """``ablation --run`` really trains: SFT once, PPO rows from it with their reward switched off, Table 6 with
    pooled paired intervals. A run whose eval.json is missing (as after a crash) is resumed, not refused."""
    from _train_helpers import TINY, env, metrics

    ppo = ["ppo.steps=1", "ppo.queries_per_step=2", "ppo.k=2", "ppo.max_new_tokens=8", "ppo.minibatch_size=2",
           "ppo.ppo_epochs=1", "sft.max_steps=2"]
    cmd = [sys.executable, "-m", "umedfast.cli.eval", "ablation", "--root", str(tmp_path), "--run", "--seeds", "0",
           "--rows", "full,wo_vrr,wo_alr", *TINY, *ppo]
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    for key in ("full", "wo_vrr", "wo_alr"):
        assert (tmp_path / key / "seed0" / "ppo" / "eval.json").is_file()
        rows = [r for r in metrics(tmp_path / key / "seed0" / "ppo" / "metrics.jsonl") if "reward" in r]
        assert [r["step"] for r in rows] == [1]
    assert metrics(tmp_path / "wo_vrr" / "seed0" / "ppo" / "metrics.jsonl")[0]["vrr"] == 0.0  # not even computed
    from umedfast.config import load_config

    weights = {k: (c.rewards.w_alr, c.rewards.w_vrr) for k in ("full", "wo_vrr", "wo_alr")
               for c in [load_config(tmp_path / k / "seed0" / "config.yaml")]}  # the config each run trained with
    assert weights == {"full": (1.0, 1.0), "wo_vrr": (1.0, 0.0), "wo_alr": (0.0, 1.0)}
    assert "w/o VRR" in p.stdout and "w/o ALR" in p.stdout
    assert "pooled over PPO seeds" in p.stdout and "PPO, full AAR" in p.stdout
    (tmp_path / "wo_alr" / "seed0" / "ppo" / "eval.json").unlink()
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "training wo_alr/seed0" in p.stderr and p.stderr.count("not retraining") == 3
    assert (tmp_path / "wo_alr" / "seed0" / "ppo" / "eval.json").is_file()
    rows = [r for r in metrics(tmp_path / "wo_alr" / "seed0" / "ppo" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1]  # resumed at its last step: nothing trained twice
