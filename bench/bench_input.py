"""Input pipeline throughput (issue 17): images/s of ``umedfast.data.loader.Feed`` at 0 (in-process), 1, 2 and N
worker processes, and the SFT step on CPU with and without workers, side by side in one run.

Run: ``pytest bench/bench_input.py --benchmark-only -s``. The bench writes its own images into a temporary folder:

- ``nih8``: NIH ChestX-ray14-sized 1024x1024 8-bit grayscale PNGs (smooth anatomy-like shading + noise, so the PNG
  compresses about as much as a radiograph, ~0.9 MB each);
- ``ct16``: DeepLesion-sized 512x512 16-bit PNGs (HU + 32768), windowed to 8 bits with ``meta["window"]`` as the
  DeepLesion source does (``umedfast.data.load_image``).

The preprocessing is the real one (``collate_chat(move=False)`` in the workers): decode, HU windowing, RGB, the
LLaVA-1.5 CLIP image processor at 336 px (resize + rescale + normalize) and the chat template + tokenizer, in
batches of 16. **Consumption target:** a 2B VLM step on one H100 at 16 images per step is assumed to take
``GPU_STEP_S`` = 0.3 s, i.e. the GPU eats 16 / 0.3 = 53 images/s; each line prints the pipeline's rate against it.
Wall-clock rates depend on the load of the shared box (``load_avg`` is recorded); compare within one run.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import device_name

BATCH = 16
N_IMAGES = 48            # distinct files per kind (3 batches per pass); passes cycle over them
GPU_STEP_S = 0.3         # assumed H100 step of a 2B VLM at BATCH images
NEED = BATCH / GPU_STEP_S
USABLE = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
WORKERS = sorted({0, 1, 2, max(USABLE, 4)})


def _nih(rng, side=1024) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    lungs = np.exp(-(((x - 0.32) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.68) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img = 200 - 120 * lungs + 25 * np.sin(18 * y + rng.uniform(0, 6)) * (x > 0.1) + rng.normal(0, 6, (side, side))
    return np.clip(img, 0, 255).astype(np.uint8)


def _ct16(rng, side=512) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.33) ** 2 < 1
    hu = np.where(body, 40 + rng.normal(0, 20, (side, side)), -1000).astype(np.float32)
    hu += 900 * (((x - 0.5) / 0.05) ** 2 + ((y - 0.62) / 0.05) ** 2 < 1)  # a vertebra
    return (hu + 32768).clip(0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def images():
    """{kind: [MAURecord]} on freshly written PNGs (kept until the module ends)."""
    from umedfast.data import MAURecord

    tmp = tempfile.TemporaryDirectory(prefix="bench_input_")
    rng = np.random.default_rng(0)
    out = {}
    for kind, make, meta in (("nih8", _nih, {}), ("ct16", _ct16, {"window": [-160, 240], "hu_offset": 32768})):
        recs = []
        for i in range(N_IMAGES):
            p = Path(tmp.name) / f"{kind}_{i:03d}.png"
            Image.fromarray(make(rng)).save(p)
            recs.append(MAURecord(id=f"{kind}-{i}", image=str(p), source="nih", modality="X-ray", findings=[],
                                  query="Is there any abnormality in this image? Detect, locate and name it.",
                                  response="Detection: no abnormality. Localization: none. Recognition: normal.",
                                  meta=dict(meta)))
        out[kind] = recs
    yield out
    tmp.cleanup()


def _clip336_spec():
    """A LLaVA-1.5-sized image pipeline (CLIP processor, 336 px) with the shipped tokenizer."""
    from types import SimpleNamespace

    from umedfast.model.processors import tiny_llava_processor

    proc = tiny_llava_processor(336, 14)
    return SimpleNamespace(processor=proc, tokenizer=proc.tokenizer,
                           image_token_id=proc.tokenizer.convert_tokens_to_ids("<image>"))


def _cpu_s(feed) -> float:
    """CPU seconds (user + system) used so far by this process and the feed's live worker processes: images per
    CPU-second is what a dedicated core would deliver, whatever else shares the box."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    for w in getattr(getattr(feed, "_it", None), "_workers", None) or []:
        try:
            f = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _cycle_batches(n: int, count: int) -> list[list[int]]:
    it = itertools.cycle(range(n))
    return [[next(it) for _ in range(BATCH)] for _ in range(count)]


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("kind", ["nih8", "ct16"])
def test_pipeline_images_per_s(benchmark, images, kind, workers):
    """Steady-state images/s (persistent workers started before timing; one timed round = 3 batches of 16)."""
    from umedfast.data.loader import Feed

    recs = images[kind]
    per_round, rounds = 3, 4
    total = per_round * rounds + 1  # every batch is consumed: CPU seconds / images is exact
    c0 = _cpu_s(None)
    feed = Feed(recs, _cycle_batches(len(recs), total), _clip336_spec(), workers=workers)
    t0 = time.perf_counter()
    feed.next()  # start-up: fork + first batch
    startup = time.perf_counter() - t0

    def consume():
        for _ in range(per_round):
            feed.next()

    benchmark.pedantic(consume, rounds=rounds, warmup_rounds=0, iterations=1)
    cpu = _cpu_s(feed) - c0  # main process + workers, fork and first batch included
    feed.close()
    rate = per_round * BATCH / benchmark.stats.stats.median
    per_cpu = total * BATCH / max(cpu, 1e-9)
    load = os.getloadavg()[0]
    benchmark.extra_info.update(device=device_name("cpu"), kind=kind, workers=workers, images_per_s=round(rate, 1),
                                images_per_cpu_s=round(per_cpu, 1), need_images_per_s=round(NEED, 1),
                                first_batch_s=round(startup, 3), usable_cores=USABLE, load_avg=round(load, 2))
    print(f"\n{kind} workers={workers}: {rate:.1f} images/s wall ({rate / NEED:.2f}x the {NEED:.0f}/s a "
          f"{GPU_STEP_S} s GPU step of {BATCH} consumes), {per_cpu:.1f} images per CPU-second, first batch "
          f"{startup:.2f} s, load {load:.1f}")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["synth112", "nih8"])
def test_sft_step_cpu(benchmark, images, tmp_path_factory, kind, workers):
    """One SFT optimizer step of the demo's tiny LLaVA on CPU (batch 16, forward + backward + AdamW), its input from
    the pipeline with 0 (in-process) or 2 workers: step time and the share of it the loop waits for data.
    ``synth112``: the demo's own 112 px MAU-Synth PNGs; ``nih8``: the 1024 px PNGs above (same tiny model, so the
    input cost is large next to the step)."""
    from umedfast.data import synth
    from umedfast.data.loader import Feed, collate_spec
    from umedfast.model import load_vlm, model_inputs
    from umedfast.train.sft import response_ce_sum

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what `threads: auto` picks on the shared 2-core box; the workers get the other core
    torch.manual_seed(0)
    bundle = load_vlm("tiny-llava", dtype=torch.float32, device="cpu", seed=0)
    if kind == "synth112":
        recs = synth.generate(N_IMAGES, tmp_path_factory.mktemp("synth"), seed=0, image_size=112, progress=False)
    else:
        recs = images[kind]
    opt = torch.optim.AdamW([p for p in bundle.model.parameters() if p.requires_grad], lr=1e-4)
    rounds = 6
    feed = Feed(recs, _cycle_batches(len(recs), rounds + 2), collate_spec(bundle), workers=workers,
                model=bundle.model)
    waits: list[float] = []

    def step():
        t = time.perf_counter()
        b = feed.next().batch
        waits.append(time.perf_counter() - t)
        logits = bundle.model(**model_inputs(b)).logits
        ce, n = response_ce_sum(logits, b["labels"])
        (ce / max(n, 1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # worker start-up and first batch, not timed
    waits.clear()
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0, iterations=1)
    feed.close()
    torch.set_num_threads(before)
    med = benchmark.stats.stats.median
    wait = sorted(waits)[len(waits) // 2]
    load = os.getloadavg()[0]
    benchmark.extra_info.update(device=device_name("cpu"), kind=kind, workers=workers, step_s=round(med, 3),
                                data_wait_s=round(wait, 4), data_wait_pct=round(100 * wait / med, 1),
                                torch_threads=1, load_avg=round(load, 2))
    print(f"\nSFT step {kind} workers={workers}: {med:.3f} s/step, data wait {wait * 1000:.1f} ms "
          f"({100 * wait / med:.1f} % of the step), load {load:.1f}")
