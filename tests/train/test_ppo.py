"""Stage-2 PPO end to end through the CLI (real tiny LLaVA, real MAU-Synth files), plus its small helpers."""
import json

import pytest
import torch

from umedfast.train.distributed import Dist
from umedfast.train.ppo_step import global_whiten
from umedfast.train.rollout import response_mask_from_ids

from _train_helpers import metrics, run, train_cmd

PPO = ["--stage", "ppo", "ppo.queries_per_step=2", "ppo.k=2", "ppo.max_new_tokens=8", "ppo.minibatch_size=2",
       "ppo.ppo_epochs=1", "ppo.save_every=1"]


def test_response_mask_stops_after_eos():
    ids = torch.tensor([[5, 6, 3, 0, 0], [5, 5, 5, 5, 5], [3, 0, 0, 0, 0]])
    m = response_mask_from_ids(ids, eos_id=3)
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_global_whiten_one_rank_matches_masked_whiten():
    from umedfast.rl import masked_whiten

    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(global_whiten(x, m, Dist()), masked_whiten(x, m), atol=1e-6)


@pytest.mark.slow  # end to end: trains through the CLI
@pytest.mark.parametrize("extra", [["--advantage", "gae", "rewards.giou_weight=0.5", "rewards.format_penalty=0.1",
                                    "ppo.span_advantages=true", "ppo.coord_advantages=true"],
                                   ["--advantage", "rloo", "--no-vrr", "model.lora=true", "model.lora_r=4"]])
def test_ppo_runs_checkpoints_and_resumes(tmp_path, extra):
    out = tmp_path / "run"
    run(train_cmd(out, *PPO, "ppo.steps=2", *extra))
    rows = [r for r in metrics(out / "ppo" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("reward", "r_llm", "alr", "iou", "vrr", "kl", "pg_loss", "entropy"):
            assert isinstance(r[key], float) and r[key] == r[key], key
        assert len(r["ids"]) == 2
    if "--no-vrr" in extra:
        assert all(r["vrr"] == 0.0 for r in rows)
    else:
        assert any(r["vf_loss"] > 0 for r in rows)  # the critic is trained under GAE
    ev = json.loads((out / "ppo" / "eval.json").read_text())
    assert {"accuracy", "mean_iou", "acc_iou50", "format_ok", "per_source"} <= set(ev)
    assert (out / "ppo" / "final" / "config.json").is_file()
    assert (out / "ppo" / "final" / "value_head.safetensors").is_file()
    assert (out / "ppo" / "checkpoints" / "step-00000002" / "state.json").is_file()
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    # resume with a longer schedule: exactly one more iteration, on queries not used before in this epoch
    run(train_cmd(out, *PPO, "ppo.steps=3", "--resume", *extra))
    rows = [r for r in metrics(out / "ppo" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    seen = [i for r in rows if r["epoch"] == 0 for i in r["ids"]]
    assert len(seen) == len(set(seen))
    if "model.lora=true" in extra:
        assert (out / "ppo" / "final" / "adapter" / "adapter_config.json").is_file()


def test_ctrl_c_checkpoints_at_the_step_boundary_and_raises(tmp_path, monkeypatch):
    """A pending stop request (first Ctrl-C) after step 1: a checkpoint of step 1 exactly like the periodic save,
    then Interrupted("ppo", 1, that checkpoint); nothing after step 1 ran."""
    import umedfast.train.ppo as ppo
    from _train_helpers import TINY
    from umedfast.config import load_config
    from umedfast.train.interrupt import Interrupted

    cfg = load_config(None, [f"output_dir={tmp_path}", "stage=ppo", *PPO[2:], "ppo.steps=3", "ppo.save_every=0",
                             "rewards.w_vrr=0", *TINY])
    monkeypatch.setattr(ppo, "stop_agreed", lambda d: True)
    with pytest.raises(Interrupted) as e:
        ppo.run_ppo(cfg)
    assert (e.value.stage, e.value.step) == ("ppo", 1)
    assert e.value.checkpoint is not None and (e.value.checkpoint / "state.json").is_file()
    assert e.value.checkpoint.name == "step-00000001"
    assert [r["step"] for r in metrics(tmp_path / "ppo" / "metrics.jsonl") if "reward" in r] == [1]
