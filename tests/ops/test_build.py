"""Build plumbing: the extension is in place, raw CUDA kernels compile with plain nvcc, setup.py decisions/errors."""
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_setup_module():
    spec = importlib.util.spec_from_file_location("umedfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ != "__main__": defines helpers, does not call setup()
    return module


@pytest.mark.skipif(os.environ.get("UMEDFAST_SKIP_EXT") == "1", reason="installed without compiled ops on purpose")
def test_extension_is_built_inside_the_package():
    import umedfast
    import umedfast._C as C

    assert Path(C.__file__).parent == Path(umedfast.__file__).parent
    assert Path(C.__file__).name.startswith("_C.") and C.__file__.endswith(".so")
    import torch

    assert hasattr(torch.ops.umedfast, "box_iou_pairwise")  # loading _C registered the TORCH_LIBRARY ops


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_kernels_compile_with_plain_nvcc(tmp_path):
    """The raw kernels take pointers + cudaStream_t, so nvcc compiles them with no (CUDA) torch at all."""
    src = ROOT / "csrc" / "cuda" / "box_iou_kernels.cu"
    obj = tmp_path / "box_iou_kernels.o"
    cmd = ["nvcc", "-arch=sm_90", "-O3", "-Werror", "all-warnings", "-c", str(src), "-o", str(obj)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout
    for name in ("launch_box_overlap_paired", "launch_box_iou_pairwise"):
        assert f"umedfast::cuda::{name}" in symbols
    assert "torch" not in src.read_text() and "ATen" not in src.read_text()


def test_cuda_arch_list_normalization():
    setup_mod = load_setup_module()
    assert setup_mod._normalize_archs("80;90") == "80;90"
    assert setup_mod._normalize_archs("8.0;9.0") == "80;90"
    assert setup_mod._normalize_archs(" 8.6, 9.0a ") == "86;90a"
    assert setup_mod._torch_arch_list("80;90a;100") == "8.0;9.0a;10.0"


def _fake_nvcc(folder: Path, release: str) -> Path:
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    nvcc = folder / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    return nvcc


def test_cuda_decision(monkeypatch, tmp_path):
    setup_mod = load_setup_module()
    cpu_torch = types.SimpleNamespace(__version__="2.13.0+cpu", version=types.SimpleNamespace(cuda=None))
    cuda_torch = types.SimpleNamespace(__version__="2.11.0+cu130", version=types.SimpleNamespace(cuda="13.0"))
    monkeypatch.delenv("UMEDFAST_SKIP_CUDA", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("CUDACXX", raising=False)
    assert setup_mod._cuda_decision(cpu_torch) == (False, "torch 2.13.0+cpu is a CPU build")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # no bin/nvcc inside: CUDA torch, no toolkit -> CPU ops only
    ok, why = setup_mod._cuda_decision(cuda_torch)
    assert ok is False and "building the CPU ops only" in why
    nvcc = _fake_nvcc(tmp_path, "13.0")
    assert setup_mod._cuda_decision(cuda_torch)[0] is True
    assert os.environ["CUDACXX"] == str(nvcc)
    monkeypatch.setenv("UMEDFAST_SKIP_CUDA", "1")
    assert setup_mod._cuda_decision(cuda_torch) == (False, "UMEDFAST_SKIP_CUDA=1")


def test_nvcc_major_version_mismatch_is_refused_in_one_line(monkeypatch, tmp_path):
    setup_mod = load_setup_module()
    cu12_torch = types.SimpleNamespace(__version__="2.11.0+cu128", version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.delenv("UMEDFAST_SKIP_CUDA", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    _fake_nvcc(tmp_path, "13.0")
    with pytest.raises(RuntimeError) as err:
        setup_mod._cuda_decision(cu12_torch)
    msg = str(err.value)
    assert "\n" not in msg and "nvcc 13.0" in msg and "torch's CUDA 12.8" in msg and "UMEDFAST_SKIP_CUDA=1" in msg
    _fake_nvcc(tmp_path, "12.4")  # same major, other minor: accepted (CUDA minor-version compatibility)
    assert setup_mod._cuda_decision(cu12_torch)[0] is True


def test_cuda_home_is_found_like_torch_does(monkeypatch, tmp_path):
    """CUDA_HOME / CUDA_PATH first, else the folder above the nvcc on PATH (so nvcc outside PATH with CUDA_HOME unset
    is not silently dropped when /usr/local/cuda holds it)."""
    setup_mod = load_setup_module()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "from_cuda_path"))
    assert setup_mod._find_cuda_home() == str(tmp_path / "from_cuda_path")
    monkeypatch.delenv("CUDA_PATH")
    nvcc = _fake_nvcc(tmp_path / "toolkit", "13.0")
    monkeypatch.setenv("PATH", str(nvcc.parent))
    assert setup_mod._find_cuda_home() == str((tmp_path / "toolkit").resolve())
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc on PATH: the default install folder, when present
    assert setup_mod._find_cuda_home() == ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)


@pytest.mark.slow
def test_build_without_the_venv_on_path_and_without_find_package_torch(tmp_path):
    """Issue 12 item 7 and issue 14: `setup.py build_ext` with a PATH that lacks the interpreter's bin folder (a venv
    that is not activated) still finds the pip-installed cmake and ninja; and UMEDFAST_TORCH_FROM_PYTHON=1 (what a
    CUDA torch without a usable toolkit gets) builds the CPU ops without find_package(Torch). The built module loads
    and its op runs. A full compile into a temporary build folder: ~1-2 min on 2 quiet cores, over 15 min at load
    average 20 (hence `slow`)."""
    tool_dir = Path(sys.executable).parent
    bin_dir = tmp_path / "bin"  # the system's tools minus any cmake / ninja, and no interpreter bin folder
    bin_dir.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if tool.name not in ("cmake", "ninja", "ctest", "cpack", "ccmake") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    path = str(bin_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("UMEDFAST_SKIP_EXT", "CMAKE_GENERATOR")}
    env.update(PATH=path, UMEDFAST_BUILD_DIR=str(tmp_path / "build"), UMEDFAST_TORCH_FROM_PYTHON="1",
               UMEDFAST_SKIP_CUDA="1", MAX_JOBS="2")
    assert shutil.which("cmake", path=path) is None, "this test needs a PATH without cmake"
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
           "--build-temp", str(tmp_path / "tmp")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "torch linked directly" in out.stdout
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "CMAKE_GENERATOR:INTERNAL=Ninja" in cache  # ninja was found too, and used
    built = list((tmp_path / "lib" / "umedfast").glob("_C*.so"))
    assert len(built) == 1, list(tmp_path.rglob("*"))
    check = ("import importlib.util, sys, torch\n"
             f"spec = importlib.util.spec_from_file_location('_C', {str(built[0])!r})\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "a = torch.tensor([[0., 0., 2., 2.]]); b = torch.tensor([[1., 1., 3., 3.]])\n"
             "print(torch.ops.umedfast.box_iou(a, b).item())\n")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert abs(float(run.stdout.split()[-1]) - 1 / 7) < 1e-6


@pytest.mark.skipif(not all(shutil.which(t) for t in ("nvcc", "cmake")), reason="nvcc/cmake missing")
def test_cmake_refuses_an_nvcc_of_another_major_version(tmp_path):
    """Direct CMake users get the same one-line refusal as setup.py when torch's CUDA and nvcc disagree (CMake's
    CUDA compiler check runs nvcc a few times: ~30 s on quiet cores)."""
    import pybind11
    import torch

    configure = [
        "cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        "-DUMEDFAST_ENABLE_CUDA=ON", "-DUMEDFAST_TORCH_CUDA_VERSION=11.8",
        f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}",
    ]
    out = subprocess.run(configure, capture_output=True, text=True, timeout=900)
    assert out.returncode != 0
    message = " ".join(out.stderr.split())  # cmake wraps long messages
    assert "does not match torch's CUDA 11.8" in message and "UMEDFAST_SKIP_CUDA=1" in message, out.stderr[-2000:]


def test_missing_pybind11_gives_a_clear_error(tmp_path):
    """With --no-build-isolation nothing installs build requirements: setup.py must say what to install."""
    shadow = tmp_path / "shadow" / "pybind11"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('pybind11 hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("UMEDFAST_SKIP_EXT", None)
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
           "--build-temp", str(tmp_path / "tmp")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "pip install 'cmake>=3.26' ninja pybind11" in out.stderr + out.stdout
    assert "UMEDFAST_SKIP_EXT=1" in out.stderr + out.stdout


@pytest.mark.skipif(not all(shutil.which(t) for t in ("nvcc", "cmake", "ninja")), reason="nvcc/cmake/ninja missing")
def test_cmake_cuda_configuration_targets_the_requested_archs(tmp_path):
    """CMakeLists.txt with UMEDFAST_ENABLE_CUDA=ON configures against this torch, and the generated nvcc command
    builds for exactly UMEDFAST_CUDA_ARCHS (the compile itself is the nvcc test above; the ATen glue needs CUDA torch)."""
    import pybind11
    import torch

    build = tmp_path / "build"
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-GNinja", f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        "-DUMEDFAST_ENABLE_CUDA=ON", "-DUMEDFAST_CUDA_ARCHS=80;90", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}",
    ]
    out = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "CUDA kernels ON for archs 80;90" in out.stdout
    commands = subprocess.run(["ninja", "-C", str(build), "-t", "commands", "_C"], capture_output=True, text=True,
                              timeout=60).stdout
    nvcc_lines = [line for line in commands.splitlines() if "box_iou_kernels.cu" in line and "nvcc" in line]
    assert len(nvcc_lines) == 1, commands[-3000:]
    line = nvcc_lines[0]
    assert "arch=compute_80,code=" in line and "arch=compute_90,code=" in line and "compute_75" not in line
    assert '-DUMEDFAST_CUDA_ARCHS=\\"80,90\\"' in line  # one shell word: a ';' here would end the command
    assert any("box_iou_cuda.cpp" in cmd for cmd in commands.splitlines())  # the ATen glue is part of the target
