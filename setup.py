"""Builds plasticnet._C: the C++ CPU kernels always; the CUDA kernels whenever torch is a
CUDA build and a CUDA toolkit is found (no GPU needed), unless PLASTICNET_CPU_ONLY=1.

Build without isolation so the extension compiles against the torch that will import it:
    pip install --no-build-isolation -e .
"""
import glob
import json
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
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
        if os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")) and os.path.isfile(os.path.join(c, "bin", "nvcc")):
            return c
    return None


cuda_home = None if os.environ.get("PLASTICNET_CPU_ONLY") == "1" else _find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
# Name the architectures: with no GPU present cpp_extension would otherwise build for every
# architecture this toolkit knows. sm_80 (A100) and sm_90 (H100/H200), plus PTX for newer.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension reads it)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = bool(cuda_home) and torch.version.cuda is not None
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
cxx_flags = ["-O3", "-fopenmp", os.environ.get("PLASTICNET_CPU_ARCH", "-march=native")]
include_dirs = [os.path.join(ROOT, "csrc")]
extension_kwargs = dict(extra_link_args=["-fopenmp"], include_dirs=include_dirs)
if with_cuda:
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # The toolkit here lacks the cuBLAS/cuSPARSE headers some ATen CUDA headers pull in;
    # the pip nvidia cu13 wheel that comes with torch ships them.
    nvidia_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
    if os.path.isdir(nvidia_include):
        include_dirs.append(nvidia_include)
    extension = CUDAExtension(
        "plasticnet._C", sources,
        extra_compile_args={"cxx": cxx_flags + ["-DPLASTICNET_WITH_CUDA"],
                            "nvcc": ["-O3", "-lineinfo"]},
        **extension_kwargs)
else:
    extension = CppExtension("plasticnet._C", sources, extra_compile_args={"cxx": cxx_flags}, **extension_kwargs)

# Recorded so that import can refuse an extension built against another torch with a clear
# message, instead of failing on undefined symbols.
with open(os.path.join(ROOT, "plasticnet", "_build_info.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
               "with_cuda": with_cuda, "cuda_arch_list": os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else None}, f)

setup(
    name="plasticnet",
    version="0.1.0",
    description="Plastic residual networks: ResNets whose residual paths are pruned and regrown during training, with fused kernels",
    packages=find_packages(include=["plasticnet", "plasticnet.*"]),
    package_data={"plasticnet": ["_build_info.json"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["plasticnet = plasticnet.cli:main"]},
)
