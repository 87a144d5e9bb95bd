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
    if HAS_CUDA:
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


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
