"""MAU-Synth generation speed (issue goal: >= 200 images/s at 224x224 on 2 cores).

Run: ``pytest bench/bench_synth.py --benchmark-only``. Each round generates a fresh batch of 512 images (PNG
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

    def run(d):
        synth.generate(N, d, seed=0, image_size=image_size, workers=workers, progress=False)

    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)
    root.cleanup()
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(images_per_s=round(N / med, 1), cpu=platform.processor() or platform.machine(),
                                cores=os.cpu_count(), workers=workers, image_size=image_size)
    print(f"\nMAU-Synth {image_size}px workers={workers}: {N / med:.0f} images/s")


def test_render_only(benchmark):
    """Pixels only (no PNG, no text): the cost of the procedural renderer itself."""
    idx = iter(range(10**7))
    benchmark(lambda: synth.render(next(idx), seed=0, image_size=224))
    print(f"\nrender only: {1 / benchmark.stats.stats.median:.0f} images/s")
