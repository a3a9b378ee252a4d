"""Which VRR query position tracks localization? (docs/training.md, "VRR query")

`python bench/vrr_query_evidence.py SFT_FINAL_DIR MAU_JSONL N_QUERIES`: sample K = 8 candidates per abnormal training
query from a policy, compute VRR with the class token's own query ("token") and with the query that produced it
("producer"), and print their correlation with the IoU of the written box (over all candidates and within a query)."""
import sys, torch

from umedfast.data import read_mau, splits, record_targets
from umedfast.model import load_checkpoint
from umedfast.train.rollout import sample_candidates
from umedfast.train.rollout_rewards import compute_vrr
from umedfast.rewards.alr import alr_from_text

ckpt, data, nq = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
bundle = load_checkpoint(ckpt, device="cpu")[0]
recs = [r for r in splits.select(read_mau(data), "train") if r.findings][:nq]
rows = {"token": [], "producer": []}; ious = []; groups = []
for g0 in range(0, len(recs), 4):
    rs = recs[g0:g0 + 4]
    ro = sample_candidates(bundle, rs, k=8, temperature=1.0, top_p=1.0, max_new_tokens=88, seed=123, step=g0)
    tg = [record_targets(r) for r in ro.records]
    labels = [[l for l, _ in t] for t in tg]; boxes = [[b for _, b in t] for t in tg]
    for q in rows:
        v, w = compute_vrr(bundle, ro, boxes, labels, None, q)
        rows[q] += (v * w.float()).tolist()
    ious += [alr_from_text(t, b, "norm1000").iou for t, b in zip(ro.texts, boxes)]
    groups += [g0 + i // 8 for i in range(len(ro.texts))]
iou = torch.tensor(ious)
def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))
gid = torch.tensor(groups)
for q, v in rows.items():
    v = torch.tensor(v)
    # within-group: subtract each query's mean (PPO normalizes per group of K)
    vc = v.clone(); ic = iou.clone()
    for g in gid.unique():
        m = gid == g
        vc[m] -= v[m].mean(); ic[m] -= iou[m].mean()
    print(f"{q:9s} n={len(v)} corr(VRR, IoU) overall {corr(v, iou):+.3f} within-query {corr(vc, ic):+.3f} "
          f"mean VRR {float(v.mean()):.4f}")
