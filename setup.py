"""Build fcos_fast and its compiled extension ``fcos_fast._C``.

The C++ CPU kernels are always built. The CUDA kernels are added whenever an nvcc is
found and torch is a CUDA build, even on a machine with no GPU, so that CI catches CUDA
compile errors. Set ``FCOS_FAST_NO_CUDA=1`` to skip them, ``FCOS_FAST_NO_EXTENSION=1``
to skip the extension altogether (the ``reference`` backend still works).
"""

from __future__ import annotations

import glob
import os
import platform
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


# The kernels under csrc/ops/cpu/vectorized are compiled once per CPU capability with
# ATen's flags for it (cmake/Codegen.cmake), each into its own namespace
# (-DCPU_CAPABILITY=<name>), and the op picks one at run time by at::get_cpu_capability(),
# as ATen does for its own kernels: one wheel, AVX512 where the CPU has it, AVX2 or plain
# C++ elsewhere.
CPU_CAPABILITY_FLAGS = {"DEFAULT": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    # -mf16c: ATen's Vectorized<Half> converts with F16C, which every AVX2 + FMA CPU
    # (what at::get_cpu_capability() requires for AVX2) has.
    CPU_CAPABILITY_FLAGS["AVX2"] = ["-mavx2", "-mfma", "-mf16c",
                                    "-mno-avx256-split-unaligned-load",
                                    "-mno-avx256-split-unaligned-store"]
    CPU_CAPABILITY_FLAGS["AVX512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                                      "-mfma"]


def _capability_sources(build_temp: str) -> dict[str, list[str]]:
    """One generated source per (kernel, capability): a line that includes the kernel,
    so that each capability's object file has its own name."""
    sources: dict[str, list[str]] = {}
    folder = Path(build_temp) / "cpu_capability"
    folder.mkdir(parents=True, exist_ok=True)
    for kernel in sorted(glob.glob(str(CSRC / "ops" / "cpu" / "vectorized" / "*.cpp"))):
        for capability in CPU_CAPABILITY_FLAGS:
            wrapper = folder / f"{Path(kernel).stem}.{capability}.cpp"
            text = f'#include "{Path(kernel).relative_to(CSRC).as_posix()}"\n'
            if not wrapper.exists() or wrapper.read_text() != text:  # keep ninja's timestamps
                wrapper.write_text(text)
            sources.setdefault(capability, []).append(str(wrapper))
    return sources


def _build_ext_class(base):
    class BuildExtensionWithCapabilities(base):
        """``BuildExtension`` that also compiles the per-capability CPU kernels."""

        def build_extension(self, ext):
            objects = []
            cxx = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) \
                else list(ext.extra_compile_args)
            for capability, sources in _capability_sources(self.build_temp).items():
                macros = ext.define_macros + [("CPU_CAPABILITY", capability),
                                              (f"CPU_CAPABILITY_{capability}", None)]
                flags = cxx + CPU_CAPABILITY_FLAGS[capability]
                objects += self.compiler.compile(
                    sources, output_dir=os.path.join(self.build_temp, capability),
                    macros=macros, include_dirs=ext.include_dirs, debug=self.debug,
                    extra_postargs={"cxx": flags, "nvcc": []}, depends=ext.depends)
            # After the generic objects on the link line: where a capability's object and a
            # generic one both hold an inline function (of a c10 header, say), the linker
            # keeps the first, the generic one, so no AVX512 code runs outside the AVX512
            # path (ATen's NOTE [Linking AVX and non-AVX files]).
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

    return BuildExtensionWithCapabilities


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
    define_macros += [(f"FCOS_FAST_CPU_CAPABILITY_{name}", None) for name in CPU_CAPABILITY_FLAGS]
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
    return [extension], {"build_ext": _build_ext_class(BuildExtension).with_options(use_ninja=True)}


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
