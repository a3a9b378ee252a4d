"""One full RL step (generate K candidates, score, rewards, update): umedfast vs TRL 1.16 ``GRPOTrainer``.

Run: ``python -m pytest bench/bench_ppo_step.py --benchmark-only -s`` (TRL: ``pip install trl==1.16.0``, the
``bench`` extra; without it the TRL provider is skipped with the reason).

Providers, side by side in one run, all on the same model (``load_vlm(MODEL, seed=0)``: the tiny LLaVA, or
``UMEDFAST_BENCH_MODEL=smollm2-llava`` for the real 49k-vocabulary LM), the same
MAU-Synth records (compact style, 112 px), the same K / max_new_tokens / batch (the demo's: 4 queries x K=8,
48 new tokens, sampling at temperature 1), the same reward (ALR = IoU of the written box via
``umedfast.rewards.alr``), the same KL coefficient against a frozen reference copy, AdamW, grad-clip 1.0 and ONE
optimizer update per step:
  umedfast_grpo    umedfast's loop body with ``advantage=grpo`` (critic-free group baseline, like TRL)
  trl_grpo         TRL's own ``GRPOTrainer.training_step`` (generation, reward, loss, backward) + optimizer step
  umedfast_ppo_gae umedfast's PPO with a value head, GAE and whitening (TRL's GRPOTrainer has no critic)
  umedfast_ppo_gae_2ep  the same PPO step with 2 epochs x 2 minibatches (a separate scoring forward; the
                   clip acts)
Reported per provider (``extra_info`` and the printed table): samples/s = B / median step time, samples per
CPU-second (robust to other jobs on a shared box), peak memory (CPU: most bytes torch allocated during one step, from
the profiler's allocation events, bench/conftest.peak_memory_mb; CUDA: max_memory_allocated), and for umedfast the
median seconds of each phase. Knobs: UMEDFAST_BENCH_Q / _K / _NEW (sizes), UMEDFAST_BENCH_ROUNDS (default 5),
UMEDFAST_BENCH_THREADS (torch threads during the bench, default 1: on the shared 2-core box under load 2 threads
made one step 30x slower, see bench/RESULTS.md).

``UmedfastStep`` calls ``umedfast.train.ppo_step.ppo_step``, the function ``run_ppo``'s loop calls once per
iteration (no copy of the step exists; ``tests/bench/test_bench_smoke.py`` checks it); ``TRLStep`` drives
``GRPOTrainer`` as its ``Trainer`` loop does, minus logging/saving.
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SYNTH_N = 64
# Second size: UMEDFAST_BENCH_MODEL=smollm2-llava runs every provider on the real SmolLM2-135M LM (49,153-token
# vocabulary, GQA 9/3 heads; docs/models.md) instead of the tiny LLaVA (816 tokens), to see whether the advantage
# holds at a real vocabulary.
MODEL = os.environ.get("UMEDFAST_BENCH_MODEL", "tiny-llava")


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

    return load_vlm(MODEL, seed=0)


class UmedfastStep:
    """One umedfast RL iteration: THE step of training, ``umedfast.train.ppo_step.ppo_step`` (rollout -> score ->
    advantages -> update -> stats), on a state built by ``build_state`` as ``run_ppo`` builds it. ``advantage``
    "grpo" (critic-free, like TRL) or "gae" (critic). Only the sizes and the reward weights are set here."""

    def __init__(self, advantage: str, sizes: StepSizes = StepSizes(), records=None, **ppo_overrides):
        from umedfast.config import load_config
        from umedfast.train.distributed import Dist
        from umedfast.train.ppo_step import build_state

        self.s = sizes
        self.records = records if records is not None else synth_records()
        self.tmp = tempfile.mkdtemp(prefix="umedfast_bench_step_")
        # reward = ALR only (w_llm = w_vrr = 0 are not computed), plain IoU (giou_weight 0), as in TRL's run;
        # one epoch over one minibatch and one optimizer update per step, as TRL's GRPOTrainer here
        over = dict(steps=1, queries_per_step=sizes.queries, k=sizes.k, max_new_tokens=sizes.max_new_tokens,
                    ppo_epochs=1, minibatch_size=sizes.batch, lr=sizes.lr, advantage=advantage,
                    kl_coef=sizes.kl_coef)
        over.update(ppo_overrides)
        rewards = dict(w_llm=0.0, w_vrr=0.0, w_alr=1.0, giou_weight=0.0, format_penalty=0.0)
        cfg = load_config(None, [f"output_dir={self.tmp}", f"model.name={MODEL}", "seed=0", "progress=false"]
                          + [f"ppo.{k}={v}" for k, v in over.items()] + [f"rewards.{k}={v}" for k, v in rewards.items()])
        self.state = build_state(cfg, Dist(), "cpu")  # MODEL, seed 0 (no SFT checkpoint under tmp)
        self.bundle, self.pwv = self.state.bundle, self.state.policy_with_value
        self.opt = self.state.optimizer
        self.cursor = 0
        self.phases: dict[str, list[float]] = {}  # piece of ppo_step -> seconds per call (wall)

    def next_queries(self) -> list:
        n = self.s.queries
        out = [self.records[(self.cursor + i) % len(self.records)] for i in range(n)]
        self.cursor += n
        return out

    def __call__(self) -> dict:
        from umedfast.train.ppo_step import ppo_step

        row = ppo_step(self.state, self.next_queries(), step=self.cursor, phases=self.phases)
        return {"samples": self.s.batch, "reward": row["reward"], "resp_len": row["resp_len"]}


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
    tests/conftest.py (tests/bench/test_bench_smoke.py imports this module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("umedfast_bench_conftest", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_bc = _bench_conftest()
device_name, peak_memory_mb = _bc.device_name, _bc.peak_memory_mb

PROVIDERS = ["umedfast_grpo", "trl_grpo", "umedfast_ppo_gae", "umedfast_ppo_gae_2ep"]
ROUNDS = int(os.environ.get("UMEDFAST_BENCH_ROUNDS", 5))
THREADS = int(os.environ.get("UMEDFAST_BENCH_THREADS", 1))
_RESULTS: dict[str, dict] = {}


def make_step(provider: str):
    if provider == "trl_grpo":
        reason = trl_available()
        if reason:
            pytest.skip(reason)
        return TRLStep()
    if provider == "umedfast_ppo_gae_2ep":
        return UmedfastStep("gae", ppo_epochs=2, minibatch_size=StepSizes().batch // 2)
    return UmedfastStep("gae" if provider == "umedfast_ppo_gae" else "grpo")


@pytest.fixture(scope="module")
def bench_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)
    if _RESULTS:
        print(f"\nRL step, {MODEL}, {device_name('cpu')}, B={StepSizes().batch} "
              f"max_new_tokens={StepSizes().max_new_tokens}")
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
    benchmark.extra_info.update(model=MODEL, device=device_name("cpu"), torch=torch.__version__, threads=THREADS,
                                batch=StepSizes().batch, k=StepSizes().k, max_new_tokens=StepSizes().max_new_tokens,
                                **{k: v for k, v in res.items() if k != "median_s"})
