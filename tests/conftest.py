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
# Derandomised, without the example database: every run draws the same examples, so a
# failure in CI is a failure on every rerun and on every machine (issue 19).
settings.register_profile(
    "fcos_fast", deadline=None, max_examples=25, derandomize=True, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fcos_fast")

#: What the run needs built: ``make test`` sets it to what it just built, so that a
#: backend that cannot load fails the run instead of shrinking the test matrix.
REQUIRE_ENV_VAR = "FCOS_FAST_TEST_REQUIRE"


def missing_requirements(required: list[str]) -> list[str]:
    """Why each of ``required`` (``native``, ``native-cuda``, ``triton``) cannot run."""
    from fcos_fast import _extension
    from fcos_fast.ops._dispatch import BACKENDS, OP_NAMES

    problems = []
    for name in required:
        if name == "native-cuda":
            missing = [op for op in OP_NAMES if not _extension.native_has_kernel(op, "cuda")]
            if missing:
                problems.append(f"native-cuda: fcos_fast._C has no CUDA kernel for {missing} "
                                f"({_extension.NATIVE_ERROR or 'built without CUDA'})")
        elif name in BACKENDS:
            device = torch.device("cuda" if HAS_CUDA else "cpu")
            reasons = sorted({reason for op in OP_NAMES
                              for reason in BACKENDS[name].not_supported_reasons(op, device)})
            if reasons:
                problems.append(f"{name}: {'; '.join(reasons)}")
        else:
            problems.append(f"{name}: not a backend (native, native-cuda, triton)")
    return problems


def pytest_sessionstart(session):
    required = [name for name in os.environ.get(REQUIRE_ENV_VAR, "").split(",") if name]
    problems = missing_requirements(required)
    if problems:
        pytest.exit(f"{REQUIRE_ENV_VAR}={','.join(required)}, but " + " | ".join(problems),
                    returncode=3)


#: The limit of a test that uses a trained default run: the first to ask trains it (about
#: 5 minutes idle on 2 cores, far longer beside other work), inside that test's limit.
TRAINED_RUN_TIMEOUT_S = 3600
TRAINED_RUN_FIXTURES = ("default_run", "default_run_seed7")


def pytest_collection_modifyitems(config, items):
    """A test of a trained run gets ``TRAINED_RUN_TIMEOUT_S`` (unless it sets its own).
    Without a GPU, a ``cuda`` test runs its body on the CPU when it takes the ``gpu``
    fixture (tests/gpu.py: the rehearsal of the GPU check), and is skipped otherwise."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if (any(name in fixtures for name in TRAINED_RUN_FIXTURES)
                and item.get_closest_marker("timeout") is None):
            item.add_marker(pytest.mark.timeout(TRAINED_RUN_TIMEOUT_S))
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


# Trained default runs, for the slow learning-outcome tests (tests/_trained.py): built
# only when a test asks for one, once per session.

@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The default run (``python -m fcos_fast.train``, full schedule)."""
    from tests._trained import train_default_run

    return train_default_run(tmp_path_factory.mktemp("default_run"))


@pytest.fixture(scope="session")
def default_run_seed7(tmp_path_factory):
    """The default run on another draw of the synthetic data (``data.synthetic.seed=7``)."""
    from tests._trained import train_default_run

    return train_default_run(tmp_path_factory.mktemp("default_run_seed7"),
                             "data.synthetic.seed=7")
