"""Shared benchmark plumbing: collects bench_*.py, names the device, measures peak memory, syncs CUDA.

Run: ``python -m pytest bench/ --benchmark-only`` (or one file). Each benchmark should call
``record(benchmark, fn, device, **extra)`` once, which stores the device name, thread count and the peak memory one call
of ``fn`` allocates (CUDA: allocator peak; CPU: torch profiler allocation timeline) in ``benchmark.extra_info``.
"""
from __future__ import annotations

import functools
import platform
import subprocess

import pytest
import torch


def pytest_collect_file(file_path, parent):
    # pytest collects test_*.py only; bench files are named bench_<thing>.py (explicit paths are collected anyway).
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def cuda_devices() -> list[str]:
    return ["cuda"] if torch.cuda.is_available() else []


def synchronized(fn, device: str | torch.device):
    """Wrap fn so a GPU timing includes the kernel, not just the launch."""
    if torch.device(device).type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def peak_memory_mb(fn, device: str | torch.device) -> float:
    """Peak bytes allocated during one call of fn (beyond what was live before), in MB."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations (+) and frees (-) in time order
        peak = max(peak, live)
    return peak / 1e6


def record(benchmark, fn, device, **extra) -> None:
    benchmark.extra_info.update(device=device_name(device), torch=torch.__version__, **extra)
    benchmark.extra_info["peak_mem_mb"] = round(peak_memory_mb(fn, device), 3)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = cpu_model()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
