"""umedfast-train argument handling (no model is loaded on these paths)."""
import pytest

from umedfast.cli.train import build_parser, main as train_main, resolve


def test_flags_map_to_config():
    args = build_parser().parse_intermixed_args(
        ["ppo.k=3", "--stage", "ppo", "--advantage", "grpo", "--no-vrr", "--no-alr", "--output-dir", "/tmp/x"])
    cfg = resolve(args)
    assert cfg.stage == "ppo" and cfg.ppo.advantage == "grpo" and cfg.ppo.k == 3
    assert (cfg.rewards.w_vrr, cfg.rewards.w_alr, cfg.rewards.w_llm) == (0.0, 0.0, 1.0)
    assert cfg.output_dir == "/tmp/x"
    cfg = resolve(build_parser().parse_intermixed_args(["--no-relevance"]))
    assert cfg.rewards.w_llm == 0.0 and cfg.rewards.w_alr == 1.0


def test_unknown_key_is_an_error(tmp_path, capsys):
    assert train_main(["--output-dir", str(tmp_path), "ppo.kk=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
    assert train_main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_bad_choice_exits():
    with pytest.raises(SystemExit):
        build_parser().parse_intermixed_args(["--advantage", "dpo"])


def test_fresh_run_into_a_used_stage_directory_is_refused(tmp_path, capsys):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    assert train_main(["--output-dir", str(tmp_path), "--stage", "ppo"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (metrics.jsonl)" in err and "--resume" in err
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written
    ckpt = tmp_path / "sft" / "checkpoints" / "step-00000003"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    assert train_main(["--output-dir", str(tmp_path), "--stage", "all"]) == 2
    assert "checkpoint step-00000003" in capsys.readouterr().err


def test_output_dir_check_is_safe_when_every_rank_runs_it_at_once(tmp_path):
    """Under torchrun every rank checks the output directory at the same moment; the check must not trip over
    another rank's probe file (a shared probe name failed CI with 'No such file or directory')."""
    from concurrent.futures import ThreadPoolExecutor

    from umedfast.cli.train import _check_inputs

    cfg = resolve(build_parser().parse_intermixed_args(["--output-dir", str(tmp_path / "run")]))

    def check_many(_):
        for _ in range(200):
            _check_inputs(cfg)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check_many, range(8)))  # re-raises the first UserError any thread met
    assert not list((tmp_path / "run").iterdir())  # every probe cleaned up
