"""Does VRR pay for writing one lesion as two findings? (docs/training.md, "VRR mentions")

`python bench/vrr_repeat_evidence.py SFT_FINAL_DIR MAU_JSONL N_RECORDS`: for the first N one-lesion records, write
the same answer once with one finding and once with two (the ground-truth box jittered by up to 0.04, the class
named twice), score both on the policy with the rubric judge, ALR and VRR over all class mentions and over the
first mention only, and print the means. Session 5 (SFT of the demo, N = 16): VRR all mentions 0.094 (one finding)
vs 0.126 (two), first mention 0.094 vs 0.066; ALR 0.63 vs 0.34."""
import random
import sys

import torch

from umedfast.boxes import format_box
from umedfast.config import RewardsConfig
from umedfast.data import read_mau, record_targets
from umedfast.model import load_checkpoint
from umedfast.rewards.judge import make_judge
from umedfast.train.rollout import rollout_from_texts
from umedfast.train.rollout_rewards import raw_rewards

ckpt, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
bundle = load_checkpoint(ckpt, device="cpu")[0]
recs = [r for r in read_mau(data) if len(r.findings) == 1][:n]
rng = random.Random(0)


def jitter(box):
    return tuple(min(1.0, max(0.0, v + rng.uniform(-0.04, 0.04))) for v in box)


one, two = [], []
for r in recs:
    lab, box = record_targets(r)[0]
    one.append(f"Detection: one abnormal region. Localization: {format_box(jitter(box))}, middle right. "
               f"Recognition: it is {lab}.")
    two.append(f"Detection: two abnormalities are present. Localization: first, {format_box(jitter(box))}, middle "
               f"right. Localization: second, {format_box(jitter(box))}, middle right. Recognition: first, {lab}. "
               f"Recognition: second, {lab}.")
judge = make_judge("rubric")
for mentions in ("all", "first"):
    cfg = RewardsConfig(format_penalty=0.3, vrr_mentions=mentions)
    for name, texts in (("one finding", one), ("two findings", two)):
        with torch.no_grad():
            raw = raw_rewards(bundle, rollout_from_texts(bundle, recs, texts), judge, cfg, "norm1000")
        print(f"vrr_mentions={mentions:5s} {name:12s}: relevance {raw.r_llm.mean():.3f}  ALR {raw.alr.mean():.3f}  "
              f"VRR {raw.vrr.mean():.3f}")
