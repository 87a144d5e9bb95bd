"""``make bench``: run every benchmark suite on this machine's device, then the report.

    python -m benchmarks.run [-k EXPR] [--quick | --rehearse] [--no-readme] [--results-dir DIR]

Rows are appended to ``<results-dir>/<device>.json``; ``<device>.md`` and
``<device>.png`` are rewritten from the latest run, and README.md's table refreshed.
``--quick`` times every case for about 0.2 s instead of 1.5 s (still at least 3 rounds,
the same cases and sizes), for the time budget of ``scripts/gpu_check.sh``.
``--rehearse`` runs every benchmark function once, at its first size, one timed round:
what ``gpu_check.sh --rehearse`` runs on the CPU so that no line of the suites runs for
the first time on a GPU (its rows are not measurements: keep them out of results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default=None, help="pytest -k expression to pick benchmarks")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="about 0.2 s of timing per case instead of 1.5 s")
    parser.add_argument("--rehearse", action="store_true",
                        help="every benchmark once at its first size, one round")
    args = parser.parse_args()
    if args.quick:
        os.environ["FCOS_FAST_BENCH_BUDGET_S"] = "0.2"
    if args.rehearse:
        os.environ["FCOS_FAST_BENCH_REHEARSE"] = "1"
    if args.results_dir is not None:
        os.environ["FCOS_FAST_BENCH_DIR"] = str(args.results_dir.resolve())
    os.environ.setdefault("FCOS_FAST_BENCH_RUN", time.strftime("%Y-%m-%dT%H:%M:%S"))
    bench_dir = Path(__file__).resolve().parent
    pytest_args = [str(bench_dir), "-o", "python_files=bench_*.py", "-p", "no:cacheprovider",
                   "-q", "--benchmark-disable-gc", "--benchmark-columns=median,iqr,rounds"]
    if args.k:
        pytest_args += ["-k", args.k]
    status = pytest.main(pytest_args)
    if status not in (0, 5):
        return int(status)

    from benchmarks import report  # noqa: PLC0415  (after the env var above is set)

    for path in report.write_reports(report.RESULTS_DIR):
        print(f"wrote {path}")
    if not args.no_readme and report.RESULTS_DIR == report.README.parent / "benchmarks" / "results":
        report.update_readme(report.RESULTS_DIR)
        print(f"updated {report.README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
