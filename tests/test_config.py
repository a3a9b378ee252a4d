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


@pytest.mark.parametrize("text,overrides", [("ppo:\n  giou_weight: 0.5\n", []), ("", ["ppo.giou_weight=0.5"]),
                                            ("", ["ppo.vrr_layers=[0]"])])
def test_moved_reward_keys_name_their_new_place(tmp_path, text, overrides):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f, overrides)
    key = (overrides[0].split("=")[0] if overrides else "ppo.giou_weight").split(".")[1]
    assert str(e.value) == f"config key 'ppo.{key}' moved to 'rewards.{key}'"


def test_rewards_section_and_vrr_layers_list():
    cfg = load_config(None, ["rewards.giou_weight=0.25", "rewards.vrr_layers=[0, -1]", "rewards.vrr_query=token"])
    assert cfg.rewards.giou_weight == 0.25 and cfg.rewards.vrr_layers == [0, -1] and cfg.rewards.vrr_query == "token"
    assert load_config(None).rewards.vrr_layers == []  # [] = all layers
    for bad, msg in (("rewards.vrr_layers=0,1", "must be a list"), ("rewards.vrr_layers=[a]", r"vrr_layers\[0\] must be an integer"),
                     ("rewards.vrr_query=middle", "must be producer or token")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])


def test_literal_settings_are_checked_once_for_files_and_code():
    """One Literal per enum-like setting: the loader refuses a bad value, and validate() refuses it in a config
    built in code (which never went through the loader)."""
    from typing import get_args

    from umedfast.config import Advantage, validate
    assert get_args(Advantage) == ("gae", "grpo", "rloo")
    with pytest.raises(ConfigError, match="ppo.advantage must be gae, grpo or rloo, got 'dpo'"):
        load_config(None, ["ppo.advantage=dpo"])
    cfg = TrainConfig()
    cfg.rewards.alr_norm = "mean"
    with pytest.raises(ConfigError, match="rewards.alr_norm must be max or none, got 'mean'"):
        validate(cfg)


def test_box_format_choices_are_the_formats_of_umedfast_boxes():
    from typing import get_args

    from umedfast.boxes import FORMATS
    from umedfast.config import BoxFormatName
    assert get_args(BoxFormatName) == tuple(FORMATS)
    with pytest.raises(ConfigError, match="data.box_format must be norm1000, shikra, minigptv2 or qwen25_abs"):
        load_config(None, ["data.box_format=xywh"])
