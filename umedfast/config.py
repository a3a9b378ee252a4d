"""Training configuration: one dataclass per stage, loaded from YAML plus dotted ``key=value`` overrides.

``load_config(path, overrides)`` -> ``TrainConfig``. Sections: ``model``, ``data``, ``sft``, ``ppo``, ``rewards``,
``judge`` and top-level run settings. An unknown key (in the file or in an override) is an error, so a typo never
silently trains with a default; a key that moved names its new place. Every enum-like string is a ``Literal`` type
defined once below: ``_coerce`` checks it on load, ``validate`` on configs built in code, and the CLIs take their
``choices`` from it. ``save_config`` writes the final, fully resolved config next to the outputs.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from umedfast.boxes import FORMATS
from umedfast.errors import UserError

# The enum-like settings, one definition each (checked by _coerce and validate; the CLIs' choices come from here)
Stage = Literal["sft", "ppo", "all"]
Device = Literal["auto", "cpu", "cuda"]
Parallel = Literal["ddp", "fsdp2"]                      # umedfast.train.distributed
DType = Literal["auto", "float32", "bfloat16", "float16"]
AnswerStyle = Literal["compact", "full"]                # umedfast.data.templates
Generalization = Literal["", "category", "source", "modality"]  # umedfast.data.splits
Split = Literal["train", "val", "test"]
Advantage = Literal["gae", "grpo", "rloo"]              # umedfast.rl.advantages
KLEstimator = Literal["k1", "k2", "k3"]                 # umedfast.rl.losses.kl_penalty
GroupNorm = Literal["max", "none"]                      # umedfast.rewards.combine.group_normalize
VRRQuery = Literal["producer", "token"]                 # umedfast.train.rollout_rewards.class_token_mask
VRRMentions = Literal["all", "first"]                   # umedfast.train.rollout_rewards.class_token_mask
JudgeKind = Literal["rubric", "openai"]                 # umedfast.rewards.judge.make_judge
RubricClasses = Literal["fraction", "exact"]            # umedfast.rewards.judge.RubricJudge
GAEBaseline = Literal["critic", "group", "greedy"]      # umedfast.train.ppo_step.advantages
QueryWeight = Literal["none", "inverse_mean"]           # umedfast.rl.advantages.inverse_mean_weights
BoxFormatName = Literal[tuple(FORMATS)]                 # the names of umedfast.boxes.FORMATS (defined there)

PARALLEL_MODES = get_args(Parallel)
GROUP_NORMS = get_args(GroupNorm)
GAE_BASELINES = get_args(GAEBaseline)
RUBRIC_CLASSES = get_args(RubricClasses)


@dataclass
class ModelConfig:
    name: str = "tiny-llava"            # "tiny-llava" / "tiny-qwen2-vl" (offline default) or a local model directory
    dtype: DType = "auto"               # "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16"
    attn_implementation: str = "sdpa"   # HF attention for training forwards ("flash_attention_2" if installed)
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    lora: bool = False                  # train LoRA adapters instead of all weights (reference = adapters disabled)
    lora_r: int = 16                    # LoRA rank
    lora_alpha: int = 32                # LoRA scale numerator
    lora_dropout: float = 0.05          # dropout on the adapter input
    tiny_text_layers: int = 0           # tiny default only: language-model depth; 0 = umedfast.model.TinySizes'
    tiny_text_hidden: int = 0           # tiny default only: language-model width; 0 = TinySizes' (docs/models.md)


@dataclass
class DataConfig:
    path: str = ""                      # MAU JSONL; empty = MAU-Synth generated into OUTPUT/data if absent
    synth_n: int = 600                  # MAU-Synth: number of images to generate
    synth_seed: int = 0                 # MAU-Synth: generator seed
    synth_eval_n: int = 0               # MAU-Synth: extra evaluation-only images (seed synth_seed + 1, every one
                                        # held out) replacing the test split for eval.json; 0 = the test split
    synth_ppo_n: int = 0                # MAU-Synth: fresh images (seed synth_seed + 2) that stage 2 samples its
                                        # queries from instead of SFT's training images; 0 = SFT's training split
    synth_image_size: int = 112         # MAU-Synth: image side in pixels
    style: AnswerStyle = "compact"      # template answer style of MAU-Synth ("compact" ~40 tokens, "full")
    box_format: BoxFormatName = "norm1000"  # how boxes are written in text (umedfast.boxes.FORMATS)
    generalization: Generalization = ""  # "" (plain splits), "category", "source" or "modality"
    max_train: int = 0                  # cap on training records (0 = all)
    max_eval: int = 0                   # cap on held-out records evaluated (0 = all)
    eval_split: Split = "test"          # held-out split written to eval.json
    workers: str = "auto"               # image decode + preprocessing processes (umedfast/data/loader.py): 0 = in
                                        # the training process; N; "auto" = usable cores (per rank) minus the main
                                        # process's (CPU: its torch threads, CUDA: 1), at most 4 (README, sizing)


@dataclass
class SFTConfig:
    epochs: int = 2                     # passes over the training records
    batch_size: int = 8                 # records per micro-batch (per rank)
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr: float = 1e-3                    # peak AdamW learning rate
    weight_decay: float = 0.0           # AdamW decoupled weight decay
    warmup_ratio: float = 0.05          # fraction of optimizer steps with linear warmup
    min_lr_ratio: float = 0.1           # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0          # gradient clipping (<= 0 disables)
    max_steps: int = 0                  # stop after this many optimizer steps (0 = run all epochs)
    eval_every_epoch: bool = True       # write OUTPUT/sft/eval.json at the end of every epoch (else only at the end)
    eval_max_new_tokens: int = 64       # generation length at evaluation
    save_every: int = 0                 # checkpoint every N optimizer steps (0 = only at the end)


@dataclass
class PPOConfig:
    steps: int = 20                     # PPO iterations (rollout + update)
    queries_per_step: int = 8           # prompts per iteration (global, split across ranks)
    k: int = 4                          # sampled candidates per query (the group for ALR/VRR normalization)
    temperature: float = 1.0            # sampling temperature
    top_p: float = 1.0                  # nucleus sampling
    max_new_tokens: int = 64            # response length cap
    ppo_epochs: int = 2                 # optimization passes over each rollout batch
    minibatch_size: int = 8             # sequences per PPO minibatch (per rank)
    lr: float = 2e-5                    # policy learning rate (AdamW)
    value_lr: float = 1e-3              # value-head learning rate
    warmup_ratio: float = 0.0           # fraction of iterations with linear warmup
    min_lr_ratio: float = 1.0           # cosine floor as a fraction of lr (1 = constant)
    advantage: Advantage = "gae"        # "gae" (critic), "grpo" or "rloo" (critic-free group baselines)
    gamma: float = 1.0                  # GAE discount over response tokens
    lam: float = 1.0                    # GAE lambda; 1 = return - V_t (no positional bias from a young critic)
    baseline: GAEBaseline = "critic"    # GAE baseline of a candidate: "critic" = V(s_t); "group" = the leave-one-out
                                        # mean return of its query's other K-1 candidates + the critic's change
                                        # V(s_t) - V(s_0); "greedy" = the reward of a greedy answer to the same
                                        # query (ReMax, one extra generation per query) + the same critic change
    whiten_advantages: bool = True      # normalize advantages over the batch's response tokens
    center_advantages: bool = False     # group/greedy baselines: also subtract the batch mean when whitening (the
                                        # critic baseline always does). Sampled answers score below greedy, so every
                                        # sampled token is pushed down on average (docs/training.md)
    kl_coef: float = 0.05               # per-token KL penalty to the reference (SFT) policy
    kl_estimator: KLEstimator = "k1"    # per-token KL in the GAE reward: "k1" (standard) or "k2"; k3 is refused
                                        # with advantage=gae (wrong gradient as a reward; GRPO/RLOO use k3 in the loss)
    clip_eps: float = 0.2               # PPO ratio clip
    value_clip: float = 0.2             # value-loss clip (<= 0: unclipped squared error)
    value_max_grad_norm: float = 1.0    # gradient clip of the value head alone (the policy keeps max_grad_norm)
    critic_warmup_steps: int = 0        # first N iterations train only the critic (policy loss weight 0)
    truncation_penalty: float = 0.0     # subtracted from the reward of a response that hits max_new_tokens w/o EOS
    skip_uniform_groups: bool = False   # leave query groups whose K rewards are all equal out of the update
    span_advantages: bool = False       # GAE: the box tokens [..] get the ALR part of the reward only, the tokens
                                        # after the first box the rest (relevance, VRR, format), each against its
                                        # query's baseline for that part; tokens before the box keep the whole
                                        # advantage (docs/training.md)
    coord_advantages: bool = False      # GAE: the tokens of each box coordinate get that coordinate's own error
                                        # against its query's baseline (greedy answer, else the group), in IoU
                                        # units, instead of the whole answer's advantage (docs/training.md)
    coord_scale: float = 1.0            # coordinate advantages times this (the errors are in w_alr * IoU units);
                                        # > 1 moves the boxes faster than the answer's other tokens
    query_weight: QueryWeight = "none"  # "inverse_mean": each query's advantages divided by its K candidates' mean
                                        # reward above the lowest reachable one, the gradient of sum_q log E[R_q]:
                                        # queries the policy still gets wrong are not out-weighted (docs/training.md)
    vf_coef: float = 0.5                # c2: value loss weight
    ent_coef: float = 0.0               # c3: entropy bonus weight
    max_grad_norm: float = 1.0          # gradient clipping (<= 0 disables)
    init_from: str = ""                 # policy to start from; "" = OUTPUT/sft/final (after --stage sft/all)
    save_every: int = 0                 # checkpoint every N iterations (0 = only at the end)
    eval_max_new_tokens: int = 64       # generation length at evaluation


@dataclass
class RewardsConfig:
    """Abnormal-Aware Rewarding: how each candidate's reward is built from relevance, ALR and VRR."""
    w_llm: float = 1.0                  # weight of the relevance (judge) reward; 0 = --no-relevance
    w_alr: float = 1.0                  # weight of the normalized ALR; 0 = --no-alr
    w_vrr: float = 1.0                  # weight of the normalized VRR; 0 = --no-vrr
    format_penalty: float = 0.0         # subtracted when a box was expected but none parses
    giou_weight: float = 0.0            # ALR shaping: (1-w) IoU + w (GIoU+1)/2, so misses still get a signal
    box_l1_weight: float = 0.0          # ALR shaping: + v * max(0, 1 - mean|corner error| / target size) (and
                                        # (1-w-v) IoU): rewards near misses without rewarding wider, "hedged" boxes
    vrr_layers: list[int] = field(default_factory=list)  # LM layer indices VRR averages over ([] = all;
                                        # negative counts from the end, e.g. [-1])
    alr_norm: GroupNorm = "max"         # ALR over the K candidates: "max" (divide by the group max, paper) or "none"
    vrr_norm: GroupNorm = "max"         # VRR over the K candidates: "max" (paper) or "none"
    vrr_normal_credit: bool = True      # normal image: full VRR for answering "normal" with no box (reward parity)
    vrr_query: VRRQuery = "producer"    # VRR query of a class token: "producer" (the position that predicted it,
                                        # one earlier) or "token" (its own position); rewards/vrr.py, docs/training.md
    vrr_mentions: VRRMentions = "all"   # VRR over every mention of a ground-truth class ("all") or its first one:
                                        # "first" stops a repeated finding from raising VRR (docs/training.md)


@dataclass
class JudgeConfig:
    kind: JudgeKind = "rubric"          # "rubric" (offline deterministic) or "openai" (OpenAI-compatible endpoint)
    rubric_classes: RubricClasses = "fraction"  # rubric's class credit on multi-class images: "fraction" of the
                                        # ground-truth classes named, or "exact" (all of them, none wrong: what the
                                        # evaluation's accuracy counts; naming one of two is then no hedge)
    base_url: str = ""                  # e.g. http://127.0.0.1:8000/v1 (openai judge)
    model: str = ""                     # judge model name (openai judge)
    api_key_env: str = "UMEDFAST_JUDGE_API_KEY"  # environment variable holding the key (never logged)
    concurrency: int = 8                # concurrent requests
    timeout_s: float = 30.0             # per-request timeout
    retries: int = 2                    # retries per request
    json_mode: bool = False             # ask for response_format={"type": "json_object"} (llama.cpp, vLLM: the
                                        # server constrains the reply to JSON, e.g. {"score": 7})
    neutral: float = 0.5                # score used when the judge fails


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo"       # everything goes under here (data, sft/, ppo/, config.yaml, logs)
    stage: Stage = "all"                # "sft", "ppo" or "all"
    device: Device = "auto"             # "auto" (cuda if available), "cpu", "cuda"
    seed: int = 0                       # global seed (model init, sampling, data order)
    threads: str = "auto"               # torch intra-op threads on CPU: "auto" (the cores idle at start, measured
                                        # over 0.3 s and logged), an integer N, or 0 (torch default = all cores)
    log_every: int = 1                  # metrics JSONL/TensorBoard every N optimizer steps
    eval_batch_size: int = 16           # generation batch at evaluation
    progress: bool = True               # tqdm bars
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    parallel: Parallel = "ddp"          # torchrun data parallelism: "ddp" (replicas) or "fsdp2" (sharded weights/optim)


class ConfigError(UserError):
    """A config file or override names an unknown key or a value of the wrong type."""


# keys that moved between sections: the old spelling is refused with a pointer to the new one
MOVED_KEYS = {f"ppo.{f.name}": f"rewards.{f.name}" for f in dataclasses.fields(RewardsConfig)}


def _unknown_key(key: str, valid) -> ConfigError:
    if key in MOVED_KEYS:
        return ConfigError(f"config key {key!r} moved to {MOVED_KEYS[key]!r}")
    return ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(valid))}")


def _one_of(choices) -> str:
    shown = [repr(c) if c == "" else str(c) for c in choices]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if get_origin(typ) is Literal:
        choices = get_args(typ)
        v = "" if value is None else value
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or str(v) not in choices:
            raise ConfigError(f"{where} must be {_one_of(choices)}, got {value!r}")
        return str(v)
    if get_origin(typ) is list:
        (item,) = get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (e.g. [0, -1]; [] = all), got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _build(typ, value, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls, data: dict, where: str = ""):
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    for u in unknown:
        if f"{where}.{u}" in MOVED_KEYS:
            raise _unknown_key(f"{where}.{u}", types_)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join((where + '.' if where else '') + u for u in unknown)}; "
                          f"valid keys here: {', '.join(sorted(types_))}")
    kw = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kw)


def apply_override(cfg: TrainConfig, item: str) -> None:
    """Apply one ``a.b=value`` override in place (value parsed as YAML, then checked against the field type)."""
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise ConfigError(f"override {item!r} is not key=value (e.g. ppo.k=8)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    obj = cfg
    for i, p in enumerate(parts):
        types_ = _field_types(type(obj))
        if p not in types_:
            raise _unknown_key(".".join(parts[:i + 1]), types_)
        if i < len(parts) - 1:
            obj = getattr(obj, p)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a section")
        else:
            if dataclasses.is_dataclass(types_[p]):
                raise ConfigError(f"{key} is a section; override its fields ({key}.<field>=...)")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw  # e.g. "data.path=a: b" or "x=[1,": keep the text; the type check below decides
            setattr(obj, p, _coerce(value, types_[p], key))


def auto_or_count(value, key: str, zero_means: str) -> int | str:
    """``"auto"`` or an integer >= 0 (``threads``, ``data.workers``); raises ConfigError naming ``key`` otherwise."""
    t = str(value).strip().lower()
    if t == "auto":
        return "auto"
    try:
        n = int(t)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{key} must be auto or an integer >= 0 (0 = {zero_means}), got {value!r}")
    return n


def threads_value(threads: str) -> int | str:
    """``threads``: ``"auto"`` or a non-negative integer (0 = torch default)."""
    return auto_or_count(threads, "threads", "all cores")


def workers_value(workers) -> int | str:
    """``data.workers``: ``"auto"`` or an integer >= 0 (0 = decode in the training process)."""
    return auto_or_count(workers, "data.workers", "no worker process")


def _check_literals(obj, where: str = "") -> None:
    """Every ``Literal`` field of ``obj`` (and of its sections) holds one of its choices; raises ConfigError."""
    for name, typ in _field_types(type(obj)).items():
        key, value = f"{where}.{name}" if where else name, getattr(obj, name)
        if dataclasses.is_dataclass(typ):
            _check_literals(value, key)
        elif get_origin(typ) is Literal and value not in get_args(typ):
            raise ConfigError(f"{key} must be {_one_of(get_args(typ))}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check enumerations and ranges before anything is loaded; raises ConfigError naming the offending key."""
    p, s, d, m, r = cfg.ppo, cfg.sft, cfg.data, cfg.model, cfg.rewards
    _check_literals(cfg)  # configs built in code skip _coerce
    checks = [
        (p.baseline == "critic" or p.advantage == "gae",
         f"ppo.baseline={p.baseline} applies to advantage=gae (grpo/rloo already use a group baseline)"),
        (p.baseline != "group" or p.k >= 2, "ppo.baseline=group needs ppo.k >= 2 candidates per query"),
        (p.query_weight == "none" or p.advantage == "gae",
         f"ppo.query_weight={p.query_weight} applies to advantage=gae"),
        (not (p.span_advantages or p.coord_advantages) or p.advantage == "gae",
         "ppo.span_advantages / ppo.coord_advantages apply to advantage=gae (per-token credit needs token advantages)"),
        (not p.coord_advantages or r.w_alr > 0, "ppo.coord_advantages needs rewards.w_alr > 0 (it credits box errors)"),
        (p.coord_scale > 0, f"ppo.coord_scale must be > 0, got {p.coord_scale}"),
        (not p.center_advantages or (p.advantage == "gae" and p.baseline != "critic" and p.whiten_advantages),
         "ppo.center_advantages applies to advantage=gae with baseline=group/greedy and whiten_advantages=true "
         "(the critic baseline is always centred; grpo/rloo centre each group)"),
        (not (cfg.ppo.advantage == "gae" and cfg.ppo.kl_estimator == "k3"),  # issue 13: k3 as a reward has the
         "ppo.kl_estimator=k3 with advantage=gae is refused: use k1 (k3 belongs in the loss, grpo/rloo)"),  # wrong grad
        (cfg.ppo.k >= 1, "ppo.k must be >= 1"),
        (cfg.ppo.advantage == "gae" or cfg.ppo.k >= 2, "grpo/rloo need ppo.k >= 2 candidates per query"),
        (cfg.sft.batch_size >= 1 and cfg.sft.grad_accum >= 1, "sft.batch_size and sft.grad_accum must be >= 1"),
        (0.0 <= r.giou_weight <= 1.0, "rewards.giou_weight must be in [0, 1]"),
        (0.0 <= r.box_l1_weight and r.giou_weight + r.box_l1_weight <= 1.0,
         "rewards.box_l1_weight must be >= 0 and rewards.giou_weight + rewards.box_l1_weight <= 1"),
        # values that would otherwise fail (or silently train nothing) only after the model has loaded
        (s.lr > 0, f"sft.lr must be > 0, got {s.lr}"),
        (p.lr > 0, f"ppo.lr must be > 0, got {p.lr}"),
        (p.value_lr > 0, f"ppo.value_lr must be > 0, got {p.value_lr}"),
        (p.max_new_tokens >= 1, f"ppo.max_new_tokens must be >= 1, got {p.max_new_tokens}"),
        (p.eval_max_new_tokens >= 1, f"ppo.eval_max_new_tokens must be >= 1, got {p.eval_max_new_tokens}"),
        (s.eval_max_new_tokens >= 1, f"sft.eval_max_new_tokens must be >= 1, got {s.eval_max_new_tokens}"),
        (p.minibatch_size >= 1, f"ppo.minibatch_size must be >= 1, got {p.minibatch_size}"),
        (p.queries_per_step >= 1, f"ppo.queries_per_step must be >= 1, got {p.queries_per_step}"),
        (p.temperature > 0, f"ppo.temperature must be > 0 (1.0 samples from the policy), got {p.temperature}"),
        (0 < p.top_p <= 1, f"ppo.top_p must be in (0, 1], got {p.top_p}"),
        (p.steps >= 0, f"ppo.steps must be >= 0, got {p.steps}"),
        (p.ppo_epochs >= 1, f"ppo.ppo_epochs must be >= 1, got {p.ppo_epochs}"),
        (s.epochs >= 0, f"sft.epochs must be >= 0, got {s.epochs}"),
        (s.max_steps >= 0, f"sft.max_steps must be >= 0 (0 = all epochs), got {s.max_steps}"),
        (s.save_every >= 0 and p.save_every >= 0, "sft.save_every and ppo.save_every must be >= 0 (0 = at the end)"),
        (0 <= s.warmup_ratio <= 1 and 0 <= p.warmup_ratio <= 1, "warmup_ratio must be in [0, 1]"),
        (0 <= s.min_lr_ratio <= 1 and 0 <= p.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
        (0 <= p.gamma <= 1 and 0 <= p.lam <= 1, "ppo.gamma and ppo.lam must be in [0, 1]"),
        (p.kl_coef >= 0, f"ppo.kl_coef must be >= 0, got {p.kl_coef}"),
        (p.clip_eps > 0, f"ppo.clip_eps must be > 0, got {p.clip_eps}"),
        (cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}"),
        (cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}"),
        (d.max_train >= 0 and d.max_eval >= 0, "data.max_train and data.max_eval must be >= 0 (0 = all)"),
        (bool(d.path) or d.synth_n >= 1, f"data.synth_n must be >= 1 (no data.path given), got {d.synth_n}"),
        (bool(d.path) or d.synth_image_size >= 32, f"data.synth_image_size must be >= 32, got {d.synth_image_size}"),
        (d.synth_eval_n >= 0 and d.synth_ppo_n >= 0,
         f"data.synth_eval_n and data.synth_ppo_n must be >= 0, got {d.synth_eval_n} and {d.synth_ppo_n}"),
        (not (d.path and d.synth_ppo_n), "data.synth_ppo_n generates MAU-Synth query images; it cannot be combined "
         "with data.path (stage 2 then samples the training split of data.path)"),
        (not m.lora or m.lora_r >= 1, f"model.lora_r must be >= 1, got {m.lora_r}"),
        (bool(m.name.strip()), "model.name is empty (tiny-llava, tiny-qwen2-vl or a local model directory)"),
        (cfg.judge.concurrency >= 1, f"judge.concurrency must be >= 1, got {cfg.judge.concurrency}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    # max-over-K normalization with one candidate divides every ALR/VRR by itself: each becomes 1 (or 0)
    for norm, w, name in ((r.alr_norm, r.w_alr, "alr"), (r.vrr_norm, r.w_vrr, "vrr")):
        if p.k == 1 and norm == "max" and w != 0:
            raise ConfigError(f"ppo.k=1 with rewards.{name}_norm=max turns every {name.upper()} into 1 (each candidate "
                              f"is its own group maximum): use ppo.k >= 2, or rewards.{name}_norm=none")
    threads_value(cfg.threads)
    workers_value(cfg.data.workers)
    return cfg


def resolve_paths(cfg: TrainConfig, base: str | Path | None = None) -> TrainConfig:
    """Make the config's paths absolute, once, at the command-line boundary (relative = to ``base``, default the
    working directory): ``output_dir``, ``data.path``, ``ppo.init_from`` and ``model.name`` when it names an
    existing directory (the tiny sentinels stay as they are). The saved ``config.yaml`` then works from anywhere."""
    base = Path(os.path.abspath(base or os.getcwd()))

    def absolute(p: str) -> str:
        return os.path.normpath(base / os.path.expanduser(p))

    cfg.output_dir = absolute(cfg.output_dir or ".")
    if cfg.data.path:
        cfg.data.path = absolute(cfg.data.path)
    if cfg.ppo.init_from:
        cfg.ppo.init_from = absolute(cfg.ppo.init_from)
    name = cfg.model.name
    if name and not name.startswith("tiny-") and os.path.exists(absolute(name)):
        cfg.model.name = absolute(name)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file (if given) <- ``key=value`` overrides; validated."""
    data = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not UTF-8 text (is it a YAML file?)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{p}{at}: invalid YAML ({what})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping (key: value lines) at the top level, "
                              f"got {type(data).__name__}")
    cfg = _build(TrainConfig, data)
    for o in overrides:
        apply_override(cfg, o)
    return validate(cfg)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); it loads back with ``load_config``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(p)
    return p
