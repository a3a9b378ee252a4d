"""HTML report: tables, training curves and per-sample box/attention figures, opened in real headless Chromium."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def synth_records(tmp_path_factory):
    from umedfast.data import synth
    d = tmp_path_factory.mktemp("synth")
    return synth.generate(8, d, seed=5, image_size=112, progress=False)


def _metrics_jsonl(path):
    with open(path, "w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "time_s": step * 1.5, "reward/alr": 0.1 * step, "reward/vrr": 0.05 * step,
                                "reward/llm": 0.5, "kl": 0.01 * step, "iou": 0.2 + 0.05 * step,
                                "value_loss": 1.0 / step, "policy_loss": -0.1}) + "\n")


def test_training_curves_groups(tmp_path):
    from umedfast.eval.plots import group_curves, plot_training_curves, read_metrics_jsonl

    _metrics_jsonl(tmp_path / "m.jsonl")
    rows = read_metrics_jsonl(tmp_path / "m.jsonl")
    g = group_curves(rows)
    assert g["Rewards"] == ["reward/alr", "reward/llm", "reward/vrr"]
    assert g["KL"] == ["kl"] and g["IoU"] == ["iou"] and g["Value loss"] == ["value_loss"]
    assert group_curves([{"step": 1, "eval_accuracy": 0.5, "eval_mean_iou": 0.1, "eval_n": 21, "tokens": 300}]) == \
        {"Held-out eval": ["eval_accuracy", "eval_mean_iou"]}
    assert list(g) == ["Rewards", "KL", "IoU", "Value loss", "Policy / SFT loss"]
    # the keys umedfast.train.ppo logs
    ppo = {"step": 3, "reward": 0.6, "r_llm": 0.4, "alr": 0.1, "iou": 0.1, "vrr": 0.01, "format_ok": 0.4,
           "class_written": 0.1, "kl": 0.004, "resp_len": 27.0, "lr": 2e-5, "epoch": 0.0, "pg_loss": -0.003,
           "vf_loss": 0.07, "clip_frac": 0.0, "entropy": 1.4}
    assert group_curves([ppo]) == {"Rewards": ["alr", "r_llm", "reward", "vrr"], "KL": ["kl"], "IoU": ["iou"],
                                   "Value loss": ["vf_loss"], "Policy / SFT loss": ["pg_loss"],
                                   "Rollout quality": ["class_written", "format_ok"],
                                   "Policy stats": ["clip_frac", "entropy"], "Response length": ["resp_len"]}
    assert "time_s" not in sum(g.values(), [])
    png = plot_training_curves(rows, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_curves([{"step": 1}], tmp_path / "none.png") is None
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        read_metrics_jsonl(tmp_path / "bad.jsonl")


def test_heatmap_region_mass_equals_vrr_forward(synth_records):
    """Summing the report's per-patch heatmap over the abnormal patches gives exactly the training VRR."""
    from umedfast.data import load_image, record_targets
    from umedfast.eval.attention_map import patch_attention
    from umedfast.model import collate_chat, image_region_mask, load_vlm
    from umedfast.rewards.vrr import vrr_forward

    bundle = load_vlm("tiny-qwen2-vl")
    rec = next(r for r in synth_records if r.findings)
    img = load_image(rec)
    layers = [0, -1]  # two layers: exercises the layer average and negative indices, keeps the interpreter short
    pa = patch_attention(bundle, img, rec.query, rec.response, [f["label"] for f in rec.findings], layers=layers)
    assert pa.class_tokens and pa.positions and np.isfinite(pa.heat).all() and (pa.heat >= 0).all()
    batch = collate_chat(bundle, [{"image": img, "query": rec.query, "response": rec.response}])
    region = image_region_mask(bundle, batch, [[b for _, b in record_targets(rec)]])
    cls = torch.zeros_like(region)
    cls[0, pa.positions] = True
    _, vrr = vrr_forward(bundle.model, batch, region, cls, layers=layers)
    img_pos = torch.nonzero(batch["input_ids"][0] == bundle.image_token_id).flatten()
    inside = region[0, img_pos].numpy().reshape(pa.heat.shape)
    assert inside.any() and not inside.all()
    assert float(pa.heat[inside].sum()) == pytest.approx(float(vrr[0]), rel=1e-4, abs=1e-6)
    # attention rows sum to at most 1 per query, so the whole map is bounded by the number of class tokens
    assert 0 < pa.heat.sum() <= len(pa.positions) + 1e-6


def _chromium_image_widths(html_path, tmp_path):
    """Open the page in headless Chromium; an injected script writes each <img>'s naturalWidth into the DOM."""
    probe = ("<script>window.addEventListener('load',function(){var w=[].map.call(document.images,"
             "function(i){return i.complete?i.naturalWidth:-1});var p=document.createElement('pre');"
             "p.id='imgcheck';p.textContent='IMGCHECK'+JSON.stringify(w)+'END';document.body.appendChild(p);});"
             "</script>")
    page = tmp_path / "probe.html"
    page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000", "--dump-dom",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMGCHECK(\[.*?\])END", res.stdout)
    assert m, f"chromium produced no probe output (rc={res.returncode}): {res.stderr[-2000:]}"
    return json.loads(m.group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_renders_in_headless_chromium(synth_records, tmp_path):
    from umedfast.eval.mau import evaluate_and_write
    from umedfast.eval.report import build_report
    from umedfast.model import load_vlm

    recs = synth_records
    # "model" answers: gold for even records; odd ones call an abnormal image normal / draw a box on a normal one
    wrong_normal = "Detection: no abnormality. Localization: none. Recognition: normal."
    wrong_abnormal = "Detection: one abnormal region. Localization: [100,100,500,500]. Recognition: polyp."
    responses = [r.response if i % 2 == 0 else (wrong_normal if r.findings else wrong_abnormal)
                 for i, r in enumerate(recs)]
    assert any(r.findings for r in recs[1::2]) and any(r.findings for r in recs[0::2])
    evaluate_and_write(None, recs, tmp_path / "ev" / "eval.json", responses=responses)
    _metrics_jsonl(tmp_path / "metrics.jsonl")
    out = tmp_path / "report"
    html_path = build_report(out, eval_dirs=[tmp_path / "ev"], names=["sft"], metrics_jsonl=tmp_path / "metrics.jsonl",
                             bundle=load_vlm("tiny-llava"), n_samples=3)
    text = html_path.read_text(encoding="utf-8")
    n_img = text.count("<img ")
    assert n_img == 4  # training curves + 3 samples
    assert text.count('src="data:image/png;base64,') == n_img  # self-contained
    assert "Avg" in text and "Synth" in text
    assert "attention of the class-name tokens" in text  # heatmaps were drawn from the model
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "training_curves.png" in pngs and len(pngs) == 4
    assert "correct" in text and "wrong" in text
    if CHROMIUM:
        widths = _chromium_image_widths(html_path, tmp_path)
        assert len(widths) == n_img and all(w > 100 for w in widths), widths
