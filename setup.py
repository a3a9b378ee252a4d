"""Thin build driver (vLLM pattern): maps kernels/ to umedfast.kernels and builds csrc/ into umedfast._C with CMake.

Environment knobs:
  UMEDFAST_SKIP_EXT=1     install without the compiled ops (umedfast.ops then falls back to pure torch, warning once)
  UMEDFAST_SKIP_CUDA=1    build the CPU ops only even when torch has CUDA and nvcc is found
  UMEDFAST_CUDA_ARCHS     CUDA architectures, CMake syntax, default "80;90" ("8.0;9.0" is accepted too)
  UMEDFAST_BUILD_DIR      CMake build folder (default build/cmake-<python>-<release|debug>, kept for incremental builds)
  UMEDFAST_TORCH_FROM_PYTHON=1  link torch's headers/libraries directly instead of find_package(Torch) (automatic for
                          a CUDA build of torch when the CUDA kernels are off: torch's CMake config stops with a fatal
                          error when it finds no CUDA toolkit)
  MAX_JOBS                parallel compile jobs (default: number of CPUs)
Build with `pip install -e . --no-build-isolation` after `pip install torch==2.13.0 cmake ninja pybind11`.

The CUDA toolkit is found as torch.utils.cpp_extension finds it (CUDA_HOME / CUDA_PATH, else nvcc on PATH, else
/usr/local/cuda); an nvcc whose major version differs from torch's CUDA is refused (it would link a second cudart).
cmake and ninja are found on PATH, next to sys.executable (a venv that is not activated) or in the pip packages'
own binary folders (cmake.CMAKE_BIN_DIR, ninja.BIN_DIR).
"""
import os
import re
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


def _tool_dirs() -> list[str]:
    """Where pip puts cmake / ninja besides PATH: the interpreter's own bin folder (a venv that is not activated, a
    pyenv version) and the pip packages' binary folders."""
    dirs = [os.path.dirname(sys.executable)]
    for module, attr in (("cmake", "CMAKE_BIN_DIR"), ("ninja", "BIN_DIR")):
        try:
            dirs.append(getattr(__import__(module), attr))
        except (ImportError, AttributeError):
            pass
    return [d for d in dirs if d and os.path.isdir(d)]


def _find_tool(name: str) -> str | None:
    """The copy pip installed for this interpreter first (an older system cmake on PATH must not win), then PATH."""
    return shutil.which(name, path=os.pathsep.join(_tool_dirs())) or shutil.which(name)


def _cmake_executable() -> str:
    cmake = _find_tool("cmake")
    if cmake is None:
        raise RuntimeError(_MISSING_HINT.format(what="cmake (not found on PATH, next to the Python interpreter or in "
                                                     "the cmake package)"))
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    version = tuple(int(p) for p in out.split()[2].split(".")[:2])
    if version < (3, 26):
        raise RuntimeError(_MISSING_HINT.format(what=f"cmake >= 3.26 (found {out.split()[2]})"))
    return cmake


def _find_cuda_home() -> str | None:
    """torch.utils.cpp_extension's rule: CUDA_HOME or CUDA_PATH, else the folder above the nvcc on PATH, else
    /usr/local/cuda when it exists."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc")
        if nvcc:
            home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        elif os.path.isdir("/usr/local/cuda"):
            home = "/usr/local/cuda"
    return home


def _nvcc_version(nvcc: str) -> str | None:
    """'13.0' from `nvcc --version` ('Cuda compilation tools, release 13.0, V13.0.88'), None if it cannot run."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


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
    """(build the CUDA kernels?, why). Raises (one line) when nvcc's major version differs from torch's CUDA."""
    if os.environ.get("UMEDFAST_SKIP_CUDA", "0") == "1":
        return False, "UMEDFAST_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    home = _find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if not nvcc or not os.path.exists(nvcc):
        return False, (f"torch {torch.__version__} has CUDA {torch.version.cuda} but no CUDA toolkit was found "
                       "(set CUDA_HOME); building the CPU ops only")
    version = _nvcc_version(nvcc)
    if version is None:
        return False, f"{nvcc} does not run; building the CPU ops only"
    if version.split(".")[0] != str(torch.version.cuda).split(".")[0]:
        raise RuntimeError(
            f"umedfast: nvcc {version} ({nvcc}) does not match torch's CUDA {torch.version.cuda} (major versions "
            f"differ: the extension would load a second cudart); set CUDA_HOME to a CUDA "
            f"{str(torch.version.cuda).split('.')[0]}.x toolkit, or UMEDFAST_SKIP_CUDA=1 to build the CPU ops only")
    os.environ["CUDACXX"] = nvcc
    return True, f"torch CUDA {torch.version.cuda}, nvcc {version} at {nvcc}"


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
        default_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-{'debug' if self.debug else 'release'}"
        build_dir = Path(os.environ.get("UMEDFAST_BUILD_DIR") or default_dir).resolve()
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
            f"-DUMEDFAST_TORCH_CUDA_VERSION={torch.version.cuda or ''}",
        ]
        # A CUDA build of torch without the CUDA kernels (no toolkit, or UMEDFAST_SKIP_CUDA): torch's CMake config
        # would look for the toolkit and stop with a fatal error, so link torch's headers and libraries directly.
        from_python = os.environ.get("UMEDFAST_TORCH_FROM_PYTHON", "0") == "1" or (
            torch.version.cuda is not None and not with_cuda)
        if from_python:
            args += [
                "-DUMEDFAST_TORCH_FROM_PYTHON=ON",
                f"-DUMEDFAST_TORCH_DIR={os.path.dirname(torch.__file__)}",
                f"-DUMEDFAST_TORCH_CXX11_ABI={int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))}",
            ]
        else:
            args.append("-DUMEDFAST_TORCH_FROM_PYTHON=OFF")
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={os.environ['CUDACXX']}")
        ninja = _find_tool("ninja")
        cache = build_dir / "CMakeCache.txt"
        generator = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", cache.read_text(), re.M) if cache.exists() else None
        if ninja and (generator is None or generator.group(1) == "Ninja"):
            args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")  # found even when its folder is not on PATH
            if generator is None:
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
