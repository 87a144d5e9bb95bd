"""Build fcos_fast and its compiled extension ``fcos_fast._C``.

The C++ CPU kernels are always built. The CUDA kernels are added whenever an nvcc is
found and torch is a CUDA build, even on a machine with no GPU, so that CI catches CUDA
compile errors. Set ``FCOS_FAST_NO_CUDA=1`` to skip them, ``FCOS_FAST_NO_EXTENSION=1``
to skip the extension altogether (the ``reference`` backend still works).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

#: The GPUs a build without a visible GPU is for: machine code for the T4 (sm_75, the
#: seed's GPU), A100 (sm_80), A10/RTX 30xx (sm_86; sm_80 code would run there too, and
#: the L4/RTX 40xx, sm_89, run the sm_86 code) and H100/H200 (sm_90), and PTX of sm_90
#: that the driver compiles for anything newer (Blackwell). CUDA 13 builds nothing older
#: than sm_75. tests/test_package.py checks the built extension with cuobjdump.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;9.0+PTX"


def _real_cuda_home() -> str | None:
    """The toolkit root that nvcc really lives in.

    torch guesses CUDA_HOME as the parent of the folder of the ``nvcc`` on PATH; when that
    nvcc is a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) the guess is
    wrong and linking fails, so follow the wrapper to the real binary.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        match = re.search(rb"(/\S+/bin/nvcc)\b", head)
        if match:
            nvcc = os.path.realpath(match.group(1).decode())
    home = os.path.dirname(os.path.dirname(nvcc))
    return home if os.path.isdir(os.path.join(home, "include")) else None


def _nvidia_include_dirs() -> list[str]:
    """Headers torch's CUDA headers need (cusparse.h and friends) ship in pip wheels."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            candidate = os.path.join(entry, sub)
            if os.path.isdir(candidate):
                dirs.append(candidate)
    return sorted(set(dirs))


def _extensions():
    if os.environ.get("FCOS_FAST_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(str(CSRC / "*.cpp")))
    sources += sorted(glob.glob(str(CSRC / "ops" / "*.cpp")))
    sources += sorted(glob.glob(str(CSRC / "ops" / "cpu" / "*.cpp")))
    cuda_sources = sorted(glob.glob(str(CSRC / "ops" / "cuda" / "*.cu")))

    cuda_home = _real_cuda_home()
    with_cuda = (
        os.environ.get("FCOS_FAST_NO_CUDA") != "1"
        and torch.version.cuda is not None
        and cuda_home is not None
        and bool(cuda_sources)
    )
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    # No FMA contraction: the kernels reproduce PyTorch's arithmetic bit for bit
    # (csrc/ops/box_math.h), and a fused a*b+c rounds once where PyTorch rounds twice.
    # -fno-trapping-math changes no result (FP exceptions are never observed); it lets
    # GCC if-convert and vectorise the branch-free box math, ~4x on giou_loss backward.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    extra_link = ["-fopenmp"]
    include_dirs = [str(CSRC)]

    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        # torch.utils.cpp_extension read CUDA_HOME at import; point it at the real root.
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to ask (CI, a wheel): DEFAULT_CUDA_ARCHS (with a GPU, torch builds for it).
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        include_dirs += _nvidia_include_dirs()
        define_macros.append(("WITH_CUDA", None))
        extension = CUDAExtension(
            "fcos_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                         "--fmad=false"],
            },
            extra_link_args=extra_link,
        )
    else:
        extension = CppExtension(
            "fcos_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link,
        )
    print(f"fcos_fast: building _C with{'' if with_cuda else 'out'} CUDA", file=sys.stderr)
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fcos_fast",
    version="0.1.0",
    description="FCOS object detection with fused Triton and C++/CUDA kernels for its hot paths",
    python_requires=">=3.10",
    packages=find_packages(include=["fcos_fast", "fcos_fast.*"]) + ["fcos_fast.kernels"],
    package_dir={"fcos_fast.kernels": "kernels"},
    package_data={"fcos_fast": ["configs/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # Tested from torch 2.11 / torchvision 0.26 / triton 3.6 (the oldest end: `make test`
    # runs the op, model and export tests there too) to the pinned 2.14.1 / 0.29.1 / 3.8.
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pyyaml",
        "tqdm",
        "pillow",
        "pycocotools",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "expecttest"],
        "bench": ["pytest-benchmark", "matplotlib"],
    },
)
