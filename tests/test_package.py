"""The package without its compiled extension: imports, warns once, reference works."""

from __future__ import annotations

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
