"""MAU-Synth generation speed (issue goal: >= 200 images/s at 224x224 on 2 cores).

Run: ``pytest bench/bench_synth.py --benchmark-only -s``. Besides wall time it reports images per CPU-second
(process + workers), which stays meaningful when other jobs share the cores; 2 idle cores give about twice that. Each round generates a fresh batch of 512 images (PNG
written, JSONL written) so the number includes I/O; images/s = 512 / median. Providers: 1 worker process (render +
PNG encode inline) and 2 worker processes.
"""
import os
import platform
import tempfile

import pytest

from umedfast.data import synth

N = 512


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("image_size", [224])
def test_synth_generate(benchmark, workers, image_size):
    counter = iter(range(10**6))
    root = tempfile.TemporaryDirectory()  # outputs kept until the end so deleting files is not timed

    def setup():
        return (os.path.join(root.name, str(next(counter))),), {}

    cpu = []

    def run(d):
        t0 = os.times()
        synth.generate(N, d, seed=0, image_size=image_size, workers=workers, progress=False)
        t1 = os.times()
        # CPU seconds of this process and its workers: images per CPU-second does not depend on other load
        cpu.append((t1.user + t1.system + t1.children_user + t1.children_system)
                   - (t0.user + t0.system + t0.children_user + t0.children_system))

    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)
    root.cleanup()
    med = benchmark.stats.stats.median
    per_cpu_s = N / sorted(cpu)[len(cpu) // 2]
    load = os.getloadavg()[0]
    benchmark.extra_info.update(images_per_s=round(N / med, 1), images_per_cpu_s=round(per_cpu_s, 1),
                                load_avg=load, cpu=platform.processor() or platform.machine(),
                                cores=os.cpu_count(), workers=workers, image_size=image_size)
    print(f"\nMAU-Synth {image_size}px workers={workers}: {N / med:.0f} images/s wall, "
          f"{per_cpu_s:.0f} images per CPU-second (load avg {load:.1f})")


def test_render_only(benchmark):
    """Pixels only (no PNG, no text): the cost of the procedural renderer itself."""
    idx = iter(range(10**7))
    benchmark(lambda: synth.render(next(idx), seed=0, image_size=224))
    print(f"\nrender only: {1 / benchmark.stats.stats.median:.0f} images/s")
