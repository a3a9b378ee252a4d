"""The records a run trains on: stage 2's query pool is SFT's training split, or fresh MAU-Synth images."""
import pytest

from umedfast.config import ConfigError, TrainConfig, validate
from umedfast.errors import UserError
from umedfast.train.distributed import Dist
from umedfast.train.run_data import load_records, ppo_query_records


def _cfg(tmp_path, **data):
    cfg = TrainConfig(output_dir=str(tmp_path), progress=False)
    cfg.data.synth_n, cfg.data.synth_image_size = 20, 32
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return validate(cfg)


def test_ppo_queries_default_to_the_sft_training_records(tmp_path):
    cfg = _cfg(tmp_path)
    train, _ = load_records(cfg, Dist())
    assert ppo_query_records(cfg, Dist(), train) is train
    assert not (tmp_path / "data_ppo").exists()


def test_fresh_ppo_queries_are_other_images_generated_once(tmp_path):
    cfg = _cfg(tmp_path, synth_ppo_n=12)
    train, held = load_records(cfg, Dist())
    fresh = ppo_query_records(cfg, Dist(), train)
    assert len(fresh) == 12 and all("data_ppo" in r.image for r in fresh)
    assert {r.image for r in fresh}.isdisjoint({r.image for r in train + held})
    again = ppo_query_records(cfg, Dist(), train)  # read back, not regenerated
    assert [r.id for r in again] == [r.id for r in fresh]
    cfg.data.max_train = 5
    assert len(ppo_query_records(cfg, Dist(), train)) == 5
    cfg.data.max_train = 0
    (tmp_path / "data_ppo" / fresh[0].image.split("data_ppo/")[1]).unlink()  # a lost image: refused, with the fix
    with pytest.raises(UserError, match=r"1 of 12 records .*delete OUTPUT/data_ppo to regenerate it"):
        ppo_query_records(cfg, Dist(), train)


def test_fresh_ppo_queries_refuse_a_user_data_file(tmp_path):
    with pytest.raises(ConfigError, match="synth_ppo_n"):
        _cfg(tmp_path, synth_ppo_n=4, path=str(tmp_path / "mau.jsonl"))
