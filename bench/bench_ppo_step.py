"""One full RL step (generate K candidates, score, rewards, update): umedfast vs TRL 1.16 ``GRPOTrainer``.

Run: ``python -m pytest bench/bench_ppo_step.py --benchmark-only -s`` (TRL: ``pip install trl==1.16.0``, the
``bench`` extra; without it the TRL provider is skipped with the reason).

Providers, side by side in one run, all on the same tiny LLaVA (``load_vlm("tiny-llava", seed=0)``), the same
MAU-Synth records (compact style, 112 px), the same K / max_new_tokens / batch (the demo's: 4 queries x K=8,
48 new tokens, sampling at temperature 1), the same reward (ALR = IoU of the written box via
``umedfast.rewards.alr``), the same KL coefficient against a frozen reference copy, AdamW, grad-clip 1.0 and ONE
optimizer update per step:
  umedfast_grpo    umedfast's loop body with ``advantage=grpo`` (critic-free group baseline, like TRL)
  trl_grpo         TRL's own ``GRPOTrainer.training_step`` (generation, reward, loss, backward) + optimizer step
  umedfast_ppo_gae umedfast's PPO with a value head, GAE and whitening (TRL's GRPOTrainer has no critic)
  umedfast_grpo_full_fwd  umedfast_grpo with every forward over the full prompt+response of each of the K rows
                   (no prompt sharing, separate scoring forward): what the step cost before the prompt-sharing and
                   single-pass changes in umedfast.train.rollout / ppo
Reported per provider (``extra_info`` and the printed table): samples/s = B / median step time, samples per
CPU-second (robust to other jobs on a shared box), peak memory (CPU: most bytes torch allocated during one step, from
the profiler's allocation events, bench/conftest.peak_memory_mb; CUDA: max_memory_allocated), and for umedfast the
median seconds of each phase. Knobs: UMEDFAST_BENCH_Q / _K / _NEW (sizes), UMEDFAST_BENCH_ROUNDS (default 5),
UMEDFAST_BENCH_THREADS (torch threads during the bench, default 1: on the shared 2-core box under load 2 threads
made one step 30x slower, see bench/RESULTS.md).

``UmedfastStep`` mirrors one iteration of ``umedfast.train.ppo.run_ppo`` with the same helpers (``run_ppo`` is a whole
run: data, eval, checkpoints); ``TRLStep`` drives ``GRPOTrainer`` as its ``Trainer`` loop does, minus logging/saving.
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SYNTH_N = 64


@dataclass(frozen=True)
class StepSizes:
    queries: int = int(os.environ.get("UMEDFAST_BENCH_Q", 4))         # prompts per step
    k: int = int(os.environ.get("UMEDFAST_BENCH_K", 8))               # candidates per prompt
    max_new_tokens: int = int(os.environ.get("UMEDFAST_BENCH_NEW", 48))
    kl_coef: float = 0.02
    lr: float = 3e-5

    @property
    def batch(self) -> int:
        return self.queries * self.k


@functools.lru_cache(maxsize=None)
def synth_records(image_size: int = 112) -> list:
    """Training-split MAU-Synth records (compact style, the demo's), generated once per process into a temp dir."""
    from umedfast.data import splits, synth

    out = Path(tempfile.mkdtemp(prefix="umedfast_bench_"))
    recs = synth.generate(SYNTH_N, out, seed=0, image_size=image_size, style="compact", progress=False)
    train = splits.select(recs, "train")
    return train or recs


def iou_reward(text: str, record) -> float:
    """The one reward both providers use: ALR (best-matching IoU of the written boxes, normal image = no box)."""
    from umedfast.data import record_targets
    from umedfast.rewards.alr import alr_from_text

    boxes = [b for _, b in record_targets(record)]
    return alr_from_text(text, boxes, "norm1000").reward


def fresh_bundle():
    from umedfast.model import load_vlm

    return load_vlm("tiny-llava", seed=0)


class _Phases:
    """Wall time between consecutive calls, appended to ``store[name]`` (phase breakdown of one step)."""

    def __init__(self, store: dict):
        self.store, self.t = store, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.store.setdefault(name, []).append(now - self.t)
        self.t = now


class UmedfastStep:
    """One umedfast RL iteration; ``advantage`` "grpo" (critic-free, like TRL) or "gae" (critic/value head)."""

    def __init__(self, advantage: str, sizes: StepSizes = StepSizes(), records=None, share_prompt: bool = True):
        from umedfast.config import PPOConfig
        from umedfast.model import PolicyWithValue, ValueHead, hidden_size
        from umedfast.rewards.judge import make_judge

        self.s = sizes
        self.share_prompt = share_prompt  # False: full forwards per row, separate scoring forward (the old path)
        self.records = records if records is not None else synth_records()
        self.bundle = fresh_bundle()
        self.ref = copy.deepcopy(self.bundle.model).eval().requires_grad_(False)
        self.vh = ValueHead(hidden_size(self.bundle.base_model))
        self.pwv = PolicyWithValue(self.bundle, self.vh).eval()
        # reward = ALR only (w_llm = w_vrr = 0 are not computed), plain IoU (giou_weight 0), as in TRL's run
        self.cfg = PPOConfig(steps=1, queries_per_step=sizes.queries, k=sizes.k, max_new_tokens=sizes.max_new_tokens,
                             ppo_epochs=1, minibatch_size=sizes.batch, lr=sizes.lr, advantage=advantage,
                             kl_coef=sizes.kl_coef, w_llm=0.0, w_vrr=0.0, w_alr=1.0, giou_weight=0.0,
                             format_penalty=0.0)
        self.judge = make_judge("rubric")
        params = [p for p in self.bundle.model.parameters() if p.requires_grad]
        self.params = params + list(self.vh.parameters())
        self.opt = torch.optim.AdamW([{"params": params, "lr": sizes.lr},
                                      {"params": list(self.vh.parameters()), "lr": self.cfg.value_lr}],
                                     weight_decay=0.0)
        self.cursor = 0
        self.phases: dict[str, list[float]] = {}  # phase name -> seconds per call (wall)

    def next_queries(self) -> list:
        n = self.s.queries
        out = [self.records[(self.cursor + i) % len(self.records)] for i in range(n)]
        self.cursor += n
        return out

    def __call__(self) -> dict:
        from umedfast.rl import gae_advantages, group_advantages, kl_penalty, masked_mean, policy_loss, \
            token_rewards, value_loss
        from umedfast.train.aar import score_rollout
        from umedfast.train.ppo import global_whiten
        from umedfast.train.distributed import Dist
        from umedfast.train.rollout import policy_outputs, reference_logprobs, sample_candidates

        p, bundle, t = self.cfg, self.bundle, _Phases(self.phases)
        ro = sample_candidates(bundle, self.next_queries(), k=p.k, temperature=p.temperature, top_p=p.top_p,
                               max_new_tokens=p.max_new_tokens)
        t("generate")
        mask, resp, pw = ro.response_mask, ro.response_ids, ro.prompt_width
        k = p.k if self.share_prompt else 1  # k > 1: the prompt runs once per query (umedfast.train.rollout)
        # as run_ppo: with one epoch over one minibatch the training forward is also the scoring forward
        single_pass = self.share_prompt and p.ppo_epochs == 1 and p.minibatch_size >= resp.shape[0]
        with torch.no_grad():
            if not single_pass:
                old_lp, old_v, _ = policy_outputs(self.pwv, ro.batch, resp, pw, k=k, bundle=bundle)
            t("score_fwd")
            ref_lp = reference_logprobs(self.ref, ro.batch, resp, pw, k=k, bundle=bundle)
            t("ref_fwd")
        rw = score_rollout(bundle, ro, self.judge, p)
        t("rewards")
        seq_r = rw.combined.total
        if single_pass:
            lp, v, ent = policy_outputs(self.pwv, ro.batch, resp, pw, need_entropy=True, k=k, bundle=bundle)
            old_lp, old_v = lp.detach(), v.detach()
            t("train_fwd")
        kl = kl_penalty(old_lp, ref_lp, p.kl_estimator)
        critic = p.advantage == "gae"
        if critic:
            adv, ret = gae_advantages(token_rewards(seq_r, kl, mask, p.kl_coef), old_v, mask, p.gamma, p.lam)
            adv = global_whiten(adv, mask, Dist())
        else:
            adv, ret = group_advantages(seq_r, mask, p.k, p.advantage), None
        t("advantages")
        if not single_pass:
            lp, v, ent = policy_outputs(self.pwv, ro.batch, resp, pw, need_entropy=True, k=k, bundle=bundle)
        pg, _ = policy_loss(lp, old_lp, adv, mask, p.clip_eps)
        loss = pg
        if critic:
            loss = loss + p.vf_coef * value_loss(v, old_v, ret, mask, p.value_clip)
        else:
            loss = loss + p.kl_coef * masked_mean(kl_penalty(lp, ref_lp, "k3"), mask)
        t("train_fwd" if not single_pass else "loss")
        loss.backward()
        t("backward")
        torch.nn.utils.clip_grad_norm_(self.params, p.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t("optimizer")
        return {"samples": resp.shape[0], "reward": float(seq_r.mean()), "resp_len": float(mask.sum(1).mean())}


def trl_available() -> str | None:
    """None when TRL 1.16 is importable, else the reason to skip."""
    try:
        import trl
    except ImportError as e:
        return f"trl is not installed ({e}); install the bench extra: pip install trl==1.16.0"
    if trl.__version__ != "1.16.0":
        return f"trl {trl.__version__} installed, the bench compares against trl==1.16.0"
    return None


class TRLStep:
    """One TRL ``GRPOTrainer`` step (generation + reward + loss + backward inside ``training_step``) + optimizer."""

    def __init__(self, sizes: StepSizes = StepSizes(), records=None, output_dir: str | None = None):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from umedfast.model.collate import record_image

        self.s = sizes
        records = records if records is not None else synth_records()
        self.bundle = fresh_bundle()
        by_id = {r.id: r for r in records}

        def alr_iou(completions, record_id, **_):
            # completions are conversational: [{"role": "assistant", "content": text}]
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            return [iou_reward(t, by_id[i]) for t, i in zip(texts, record_id)]

        rows = {"prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.query}]}]
                           for r in records],
                "image": [record_image(r) for r in records],
                "record_id": [r.id for r in records]}
        ds = Dataset.from_dict(rows)
        self.tmp = output_dir or tempfile.mkdtemp(prefix="umedfast_trl_")
        # TRL builds its reference model with from_pretrained(config._name_or_path): give it the same weights
        # on disk (a local directory, offline), as a TRL user would.
        model_dir = Path(self.tmp) / "init"
        self.bundle.model.save_pretrained(model_dir)
        self.bundle.processor.save_pretrained(model_dir)
        self.bundle.model.config._name_or_path = str(model_dir)
        args = GRPOConfig(output_dir=self.tmp, per_device_train_batch_size=sizes.batch, num_generations=sizes.k,
                          steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
                          max_completion_length=sizes.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                          beta=sizes.kl_coef, learning_rate=sizes.lr, weight_decay=0.0, max_grad_norm=1.0,
                          lr_scheduler_type="constant", max_steps=10_000, logging_steps=10_000, save_strategy="no",
                          report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
                          dataloader_num_workers=0, seed=0, disable_tqdm=True, remove_unused_columns=False,
                          log_completions=False)
        self.trainer = GRPOTrainer(model=self.bundle.model, reward_funcs=[alr_iou], args=args, train_dataset=ds,
                                   processing_class=self.bundle.processor)
        tr = self.trainer
        tr.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
        tr.current_gradient_accumulation_steps = 1  # set by Trainer's train loop, read by GRPO's loss normalizer
        self.model = tr.model
        self.model.train()
        self.it = iter(tr.get_train_dataloader())
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self) -> dict:
        tr = self.trainer
        batch = next(self.it, None)
        if batch is None:  # end of the (small) dataset: a new epoch, as Trainer's loop would start
            self.it = iter(tr.get_train_dataloader())
            batch = next(self.it)
        loss = tr.training_step(self.model, batch, None)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        self.model.zero_grad(set_to_none=True)
        lens = tr._metrics["train"].get("completions/mean_length") or [float("nan")]
        return {"samples": self.s.batch, "loss": float(loss), "resp_len": float(lens[-1])}


# ----------------------------------------------------------------------------------------------- pytest-benchmark
import pytest  # noqa: E402



def _bench_conftest():
    """bench/conftest.py (device naming, peak memory), loaded by path: under tests/ the name ``conftest`` is
    tests/conftest.py (tests/test_bench_smoke.py imports this module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("umedfast_bench_conftest", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_bc = _bench_conftest()
device_name, peak_memory_mb = _bc.device_name, _bc.peak_memory_mb

PROVIDERS = ["umedfast_grpo", "trl_grpo", "umedfast_ppo_gae", "umedfast_grpo_full_fwd"]
ROUNDS = int(os.environ.get("UMEDFAST_BENCH_ROUNDS", 5))
THREADS = int(os.environ.get("UMEDFAST_BENCH_THREADS", 1))
_RESULTS: dict[str, dict] = {}


def make_step(provider: str):
    if provider == "trl_grpo":
        reason = trl_available()
        if reason:
            pytest.skip(reason)
        return TRLStep()
    return UmedfastStep("gae" if provider == "umedfast_ppo_gae" else "grpo",
                        share_prompt=not provider.endswith("_full_fwd"))


@pytest.fixture(scope="module")
def bench_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)
    if _RESULTS:
        print(f"\nRL step, {device_name('cpu')}, B={StepSizes().batch} max_new_tokens={StepSizes().max_new_tokens}")
        print("| provider | median s/step | samples/s | samples/CPU-s | peak MB | x vs trl_grpo |")
        print("|---|---|---|---|---|---|")
        base = _RESULTS.get("trl_grpo", {}).get("samples_per_s")
        for name, r in _RESULTS.items():
            x = f"{r['samples_per_s'] / base:.2f}x" if base else "n/a"
            print(f"| {name} | {r['median_s']:.3f} | {r['samples_per_s']:.2f} | {r['samples_per_cpu_s']:.2f} "
                  f"| {r['peak_mem_mb']:.1f} | {x} |")
            print(f"    mean response length {r.get('resp_len', float('nan')):.1f} tokens")
            if r.get("phases"):
                print("    phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items()))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rl_step(benchmark, provider, bench_threads):
    torch.manual_seed(0)
    step = make_step(provider)
    step()  # warm-up: first-call allocations, lazy imports, TRL's first generation batch
    cpu: list[float] = []

    def run():
        t0 = os.times()
        out = step()
        t1 = os.times()
        cpu.append((t1.user + t1.system) - (t0.user + t0.system))
        return out

    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    assert out["samples"] == StepSizes().batch
    med = benchmark.stats.stats.median
    cpu_med = sorted(cpu)[len(cpu) // 2]
    peak = peak_memory_mb(step, "cuda" if torch.cuda.is_available() else "cpu")
    res = {"median_s": med, "samples_per_s": out["samples"] / med, "samples_per_cpu_s": out["samples"] / cpu_med,
           "peak_mem_mb": peak, "resp_len": out.get("resp_len", float("nan"))}
    if isinstance(step, UmedfastStep):
        res["phases"] = {k: sorted(v)[len(v) // 2] for k, v in step.phases.items()}
    _RESULTS[provider] = res
    benchmark.extra_info.update(device=device_name("cpu"), torch=torch.__version__, threads=THREADS,
                                batch=StepSizes().batch, k=StepSizes().k, max_new_tokens=StepSizes().max_new_tokens,
                                **{k: v for k, v in res.items() if k != "median_s"})
