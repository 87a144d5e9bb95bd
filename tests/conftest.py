"""Test-suite setup shared by every test.

With no GPU the Triton kernels run on CPU tensors under the interpreter, which must be
switched on before triton is first imported (torchvision imports it), hence first here.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

# Tests run on 2 shared cores: bound hypothesis by example count, never by wall time.
settings.register_profile(
    "fcos_fast", deadline=None, max_examples=25, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fcos_fast")


def pytest_collection_modifyitems(config, items):
    """Without a GPU, a ``cuda`` test runs its body on the CPU when it takes the ``gpu``
    fixture (tests/gpu.py: the rehearsal of the GPU check), and is skipped otherwise."""
    if HAS_CUDA:
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and "gpu" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip_cuda)


@pytest.fixture
def gpu(request):
    """The device of a ``cuda`` test: CUDA on a GPU machine, the CPU elsewhere."""
    from tests.gpu import Gpu

    return Gpu(request.node)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The checks that need CUDA itself and were skipped in the rehearsal, by name."""
    from tests.gpu import NOT_REHEARSED

    skipped: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, what in getattr(report, "user_properties", ()):
                if key == NOT_REHEARSED and getattr(report, "when", "") == "call":
                    skipped[what] = skipped.get(what, 0) + 1
    if skipped:
        terminalreporter.write_sep("-", "cuda tests rehearsed on the CPU without")
        for what, count in sorted(skipped.items()):
            terminalreporter.write_line(f"{what}: {count} tests (runs on a GPU)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
