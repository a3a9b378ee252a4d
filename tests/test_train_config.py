"""Config: YAML + dotted overrides, type checks, unknown keys are errors, round trip."""
import pytest

from umedfast.config import ConfigError, TrainConfig, load_config, save_config


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("stage: sft\nppo:\n  k: 6\n  lr: 1e-5\nmodel:\n  lora: true\n")
    cfg = load_config(f, ["ppo.kl_coef=0.1", "sft.epochs=3", "ppo.advantage=rloo", "data.path=/x/y.jsonl"])
    assert cfg.stage == "sft" and cfg.ppo.k == 6 and cfg.ppo.lr == 1e-5 and cfg.model.lora is True
    assert cfg.ppo.kl_coef == 0.1 and cfg.sft.epochs == 3 and cfg.ppo.advantage == "rloo"
    assert cfg.data.path == "/x/y.jsonl"
    out = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(out) == cfg


@pytest.mark.parametrize("text,overrides,msg", [
    ("ppo:\n  kk: 1\n", [], "ppo.kk"),
    ("", ["ppo.nope=1"], "ppo.nope"),
    ("", ["nosection.x=1"], "nosection"),
    ("", ["ppo.k=abc"], "integer"),
    ("", ["ppo.advantage=dpo"], "advantage"),
    ("", ["ppo.advantage=grpo", "ppo.k=1"], "k >= 2"),
    ("", ["rewards.alr_norm=mean"], "alr_norm"),
    ("", ["parallel=deepspeed"], "parallel"),
    ("", ["ppo=3"], "section"),
    ("", ["stage"], "key=value"),
    ("ppo: 3\n", [], "mapping"),
])
def test_errors(tmp_path, text, overrides, msg):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(f, overrides)


def test_defaults_are_the_paper():
    c = TrainConfig()
    assert (c.rewards.w_llm, c.rewards.w_alr, c.rewards.w_vrr, c.ppo.k) == (1.0, 1.0, 1.0, 4)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent.yaml")
