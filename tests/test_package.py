"""The package without its compiled extension: imports, warns once, reference works; and
what a wheel of it holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_works_without_the_extension():
    program = textwrap.dedent("""
        import sys, warnings
        import importlib.abc

        class BlockExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "fcos_fast._C":
                    raise ImportError("simulated: extension not built")
                return None

        sys.meta_path.insert(0, BlockExtension())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            from fcos_fast import ops
        messages = [str(w.message) for w in caught if "fcos_fast" in str(w.message)]
        assert len(messages) == 1 and "\\n" not in messages[0], messages
        assert "native" not in ops.available_backends("cpu")
        boxes = torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 3], [9, 9, 12, 12]])
        print(ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())
        try:
            ops.nms(boxes, torch.ones(3), 0.5, backend="native")
        except ValueError as error:
            assert "extension not built" in str(error), error
        else:
            raise AssertionError("explicit native backend should raise")
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 2]"


def test_the_wheel_holds_every_module_the_kernels_and_the_configs(tmp_path):
    """What ``pip wheel .`` packs besides the extension is what ``setup.py build_py``
    copies; run it (no compiler involved) on a copy of the sources and compare with the
    tree: every module of fcos_fast/, kernels/ as fcos_fast.kernels, the shipped configs."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for folder in ("fcos_fast", "kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    env = {**os.environ, "FCOS_FAST_NO_EXTENSION": "1"}
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                             str(tmp_path / "lib")], cwd=source, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    built = {p.relative_to(tmp_path / "lib").as_posix()
             for p in (tmp_path / "lib").rglob("*") if p.is_file()}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fcos_fast").rglob("*.py")}
    expected |= {f"fcos_fast/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    expected |= {f"fcos_fast/configs/{p.name}" for p in (ROOT / "fcos_fast/configs").glob("*.yaml")}
    assert built == expected
    assert {"fcos_fast/kernels/nms.py", "fcos_fast/configs/voc_r18.yaml",
            "fcos_fast/data/download.py"} <= built


def _cuobjdump() -> str | None:
    """The cuobjdump on PATH, or the one Triton ships."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return shutil.which("cuobjdump") or (str(bundled) if bundled.is_file() else None)


def test_a_build_without_a_gpu_runs_on_every_default_gpu():
    """Built where no GPU is visible (CI, a wheel), every CUDA source of fcos_fast._C holds
    machine code for sm_75 (T4), sm_80, sm_86 and sm_90, and sm_90 PTX that the driver
    compiles for newer GPUs (issue 17: 8.0;9.0 only, no PTX: "no kernel image is
    available" on the seed's T4 and on anything past Hopper)."""
    import pytest
    import torch

    from fcos_fast import _extension

    if not _extension.native_has_kernel("nms", "cuda"):
        pytest.skip("fcos_fast._C was built without CUDA kernels")
    if torch.cuda.is_available() or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("built for the visible GPU or for TORCH_CUDA_ARCH_LIST, not the default")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump")
    library = next(Path(_extension.__file__).parent.glob("_C*.so"))
    listing = subprocess.run([tool, "--list-elf", "--list-ptx", str(library)],
                             capture_output=True, text=True, timeout=120).stdout
    found: dict[str, set[str]] = {}
    for kind, name in (line.split(":", 1) for line in listing.splitlines() if ":" in line):
        source, arch, _ = name.strip().rsplit(".", 2)
        found.setdefault(source, set()).add(("ptx " if "PTX" in kind else "") + arch)
    sources = {path.stem for path in (ROOT / "csrc" / "ops" / "cuda").glob("*.cu")}
    assert set(found) == sources
    for source, archs in found.items():
        assert archs == {"sm_75", "sm_80", "sm_86", "sm_90", "ptx sm_90"}, (source, archs)
