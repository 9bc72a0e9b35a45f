"""Builds plasticnet._C: the C++ CPU kernels always; the CUDA kernels whenever torch is a CUDA
build and a CUDA toolkit is found (no GPU needed), unless PLASTICNET_CPU_ONLY=1.

Metadata lives in pyproject.toml; this file only describes the extension. Build without
isolation so the extension compiles against the torch that will import it:
    pip install --no-build-isolation -e .
Importing this file changes nothing: the toolkit folder is handed to cpp_extension, and the
build info written, only when it runs as the build script; no environment variable is set.
"""

import glob
import json
import os
import shutil

import torch
import torch.utils.cpp_extension as cpp_extension
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# sm_80 (A100) and sm_90 (H100/H200), plus PTX for newer GPUs. Named explicitly: with no GPU
# present cpp_extension would otherwise build for every architecture this toolkit knows.
DEFAULT_ARCHES = "8.0;9.0+PTX"


def find_cuda_home() -> str | None:
    """The toolkit folder. `nvcc` on PATH may be a wrapper script outside the toolkit, which
    makes cpp_extension guess CUDA_HOME wrong; look for the folder that holds the headers."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):  # a wrapper: the toolkit is the path it execs
            for token in head.decode(errors="ignore").split():
                if token.endswith("/bin/nvcc"):
                    candidates.append(os.path.dirname(os.path.dirname(token)))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for c in candidates:
        if os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(c, "bin", "nvcc")
        ):
            return c
    return None


def gencode_flags(arch_list: str) -> list[str]:
    """nvcc -gencode flags for "8.0;9.0+PTX"; passing them keeps cpp_extension from reading
    TORCH_CUDA_ARCH_LIST from the environment."""
    flags = []
    for arch in arch_list.replace(" ", ";").split(";"):
        if not arch:
            continue
        number = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


CUDA_HOME = None if os.environ.get("PLASTICNET_CPU_ONLY") == "1" else find_cuda_home()
WITH_CUDA = bool(CUDA_HOME) and torch.version.cuda is not None
ARCH_LIST = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHES)


class BuildExtension(cpp_extension.BuildExtension):
    """cpp_extension's build, with the toolkit found above and the build's versions recorded:
    import refuses an extension built against another torch with a clear message, instead of
    failing on undefined symbols."""

    def run(self):
        super().run()
        info = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda if WITH_CUDA else None,
            "with_cuda": WITH_CUDA,
            "cuda_arch_list": ARCH_LIST if WITH_CUDA else None,
        }
        for directory in {os.path.join(ROOT, "plasticnet"), os.path.join(self.build_lib, "plasticnet")}:
            if os.path.isdir(directory):
                with open(os.path.join(directory, "_build_info.json"), "w") as f:
                    json.dump(info, f)


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp", os.environ.get("PLASTICNET_CPU_ARCH", "-march=native")]
    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = dict(extra_link_args=["-fopenmp"], include_dirs=include_dirs)
    if not WITH_CUDA:
        return cpp_extension.CppExtension("plasticnet._C", sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)
    cpp_extension.CUDA_HOME = CUDA_HOME  # instead of its own guess, which the nvcc wrapper misleads
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    # The toolkit here lacks the cuBLAS/cuSPARSE headers some ATen CUDA headers pull in; the
    # pip nvidia cu13 wheel that comes with torch ships them.
    nvidia_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
    if os.path.isdir(nvidia_include):
        include_dirs.append(nvidia_include)
    nvcc_flags = ["-O3", "-lineinfo", *gencode_flags(ARCH_LIST)]
    cxx = cxx_flags + ["-DPLASTICNET_WITH_CUDA"]
    return cpp_extension.CUDAExtension(
        "plasticnet._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags}, **kwargs
    )


if __name__ == "__main__":
    setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
