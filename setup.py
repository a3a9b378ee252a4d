"""Thin build driver (vLLM pattern): maps kernels/ to umedfast.kernels and builds csrc/ into umedfast._C with CMake.

Environment knobs:
  UMEDFAST_SKIP_EXT=1     install without the compiled ops (umedfast.ops then falls back to pure torch, warning once)
  UMEDFAST_SKIP_CUDA=1    build the CPU ops only even when torch has CUDA and nvcc is found
  UMEDFAST_CUDA_ARCHS     CUDA architectures, CMake syntax, default "80;90" ("8.0;9.0" is accepted too)
  MAX_JOBS                parallel compile jobs (default: number of CPUs)
Build with `pip install -e . --no-build-isolation` after `pip install torch==2.13.0 cmake ninja pybind11`.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_MISSING_HINT = (
    "umedfast: building the compiled ops (umedfast._C) needs {what}. With --no-build-isolation pip does not install "
    "build requirements, so run:  pip install 'cmake>=3.26' ninja pybind11  (torch must already be installed), "
    "or set UMEDFAST_SKIP_EXT=1 to install without compiled ops (pure-torch fallback)."
)


class CMakeExtension(Extension):
    """An extension whose sources are built by CMake (target `_C` of the top-level CMakeLists.txt)."""

    def __init__(self, name: str, target: str = "_C"):
        super().__init__(name, sources=[])
        self.target = target


def _cmake_executable() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError(_MISSING_HINT.format(what="cmake (not found on PATH)"))
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    version = tuple(int(p) for p in out.split()[2].split(".")[:2])
    if version < (3, 26):
        raise RuntimeError(_MISSING_HINT.format(what=f"cmake >= 3.26 (found {out.split()[2]})"))
    return cmake


def _normalize_archs(archs: str) -> str:
    """'8.0;9.0' or '80 90' -> '80;90' (CMake CUDA_ARCHITECTURES syntax; suffixes like 90a are kept)."""
    parts = [p.strip().replace(".", "") for p in archs.replace(",", ";").replace(" ", ";").split(";")]
    return ";".join(p for p in parts if p)


def _torch_arch_list(archs: str) -> str:
    """'80;90a' -> '8.0;9.0a' (TORCH_CUDA_ARCH_LIST syntax)."""
    out = []
    for arch in archs.split(";"):
        digits = arch.rstrip("abcdefghijklmnopqrstuvwxyz")
        if len(digits) >= 2 and digits.isdigit():
            out.append(f"{digits[:-1]}.{digits[-1]}{arch[len(digits):]}")
    return ";".join(out)


def _cuda_decision(torch) -> tuple[bool, str]:
    if os.environ.get("UMEDFAST_SKIP_CUDA", "0") == "1":
        return False, "UMEDFAST_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found (set CUDA_HOME)"
    os.environ.setdefault("CUDACXX", nvcc)
    return True, f"torch CUDA {torch.version.cuda}, nvcc {nvcc}"


class CMakeBuild(build_ext):
    """Configures CMake against the installed torch and builds each CMakeExtension's target into the package."""

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        try:
            import torch
        except ImportError as err:
            raise RuntimeError(_MISSING_HINT.format(what="torch installed first (pip install torch==2.13.0)")) from err
        try:
            import pybind11
        except ImportError as err:
            raise RuntimeError(_MISSING_HINT.format(what="pybind11")) from err
        cmake = _cmake_executable()

        out_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        # A fixed folder under build/ (git-ignored) keeps rebuilds incremental; editable installs use a fresh temp dir.
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-{'debug' if self.debug else 'release'}"
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda, why = _cuda_decision(torch)
        archs = _normalize_archs(os.environ.get("UMEDFAST_CUDA_ARCHS", "80;90"))
        print(f"umedfast: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})", flush=True)
        if with_cuda:
            # torch's cmake reads TORCH_CUDA_ARCH_LIST; keep it consistent (CMakeLists strips its -gencode flags).
            os.environ["TORCH_CUDA_ARCH_LIST"] = _torch_arch_list(archs)

        args = [
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_path.parent}",
            f"-DUMEDFAST_ENABLE_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DUMEDFAST_CUDA_ARCHS={archs}",
            f"-DUMEDFAST_TORCH_VERSION={torch.__version__}",
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", ext.target, "-j", jobs], check=True)
        if not out_path.exists():
            raise RuntimeError(f"umedfast: CMake finished but {out_path} was not produced")

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Editable installs copy _C*.so into umedfast/: write a temp file and rename it over the old one, so
        processes that have the old library mapped keep a valid file (an in-place rewrite can crash them)."""
        outfile = str(outfile)
        if os.path.isdir(outfile):
            outfile = os.path.join(outfile, os.path.basename(str(infile)))
        tmp = f"{outfile}.tmp-{os.getpid()}"
        shutil.copy2(infile, tmp)
        os.replace(tmp, outfile)
        return outfile, 1


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import the helpers above
    packages = find_packages(include=["umedfast", "umedfast.*"]) + ["umedfast.kernels"]
    ext_modules = [] if os.environ.get("UMEDFAST_SKIP_EXT", "0") == "1" else [CMakeExtension("umedfast._C")]
    setup(
        packages=packages,
        package_dir={"umedfast.kernels": "kernels"},
        include_package_data=True,
        ext_modules=ext_modules,
        cmdclass={"build_ext": CMakeBuild},
    )
