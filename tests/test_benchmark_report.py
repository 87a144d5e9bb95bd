"""The README's benchmark block holds every device's table, and nothing else kept in
the results folder; the export-latency and evaluation tables' ratios."""

from __future__ import annotations

from benchmarks import report


def test_readme_block_takes_device_tables_only(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for device in ("cpu-a-2t", "cuda-b"):
        (results / f"{device}.json").write_text("[]")
        (results / f"{device}.md").write_text(f"table of {device}")
    (results / "cuda-c.json").write_text("[]")  # no table written yet: left out
    (results / "triton_launch_configs.md").write_text("registers per launch")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nend\n")

    report.update_readme(results, readme)

    text = readme.read_text()
    assert "table of cpu-a-2t" in text and "table of cuda-b" in text
    assert "(benchmarks/results/cuda-b.png)" in text
    assert "registers per launch" not in text and "cuda-c" not in text and "old" not in text
    assert text.startswith("intro\n") and text.endswith("\nend\n")


def _bench_rows(run, op, backends):
    """A run's time rows of one case: ``backends`` {name: median ms}."""
    return [{"op": op, "mode": "forward", "size": "N=1", "backend": backend, "metric": "time",
             "median": median, "q20": median, "q80": median, "run": run, "version": f"v{run}",
             "device": "cpu-x-2t"} for backend, median in backends.items()]


def test_a_partial_run_replaces_its_cases_and_keeps_the_others():
    """``benchmarks.run -k focal`` after a full run: the table keeps every case, each from
    the latest run that measured it, its ratios within that run, the run named per row."""
    rows = (_bench_rows("1", "nms", {"torchvision": 4.0, "native": 1.0})
            + _bench_rows("1", "focal", {"torchvision": 9.0, "composition": 6.0,
                                         "native": 3.0})
            + _bench_rows("2", "focal", {"torchvision": 8.0, "composition": 4.0,
                                         "native": 1.0}))
    latest = report.latest_run(rows)
    assert sorted((r["op"], r["run"]) for r in latest) == [
        ("focal", "2"), ("focal", "2"), ("focal", "2"), ("nms", "1"), ("nms", "1")]
    table = report.markdown(latest)
    assert "runs 1 (v1), 2 (v2)" in table
    lines = [line for line in table.splitlines() if line.startswith("| nms") or
             line.startswith("| focal")]
    assert lines == [
        "| nms | forward | N=1 | torchvision | 4 (4–4) | baseline | – | 1 |",
        "| nms | forward | N=1 | native | 1 (1–1) | **4.0×** | – | 1 |",
        "| focal | forward | N=1 | torchvision | 8 (8–8) | baseline | – | 2 |",
        "| focal | forward | N=1 | composition | 4 (4–4) | **2.0×** | – | 2 |",
        "| focal | forward | N=1 | native | 1 (1–1) | **8.0×** | – | 2 |"]
    one_run = report.markdown(report.latest_run(rows[:2]))
    assert "run 1 (v1)." in one_run and "| run |" not in one_run


def _row(size, backend, precision, median, channels_last=False, **extra):
    return {"op": "fcos_inference", "backend": backend, "precision": precision,
            "channels_last": channels_last, "size": size, "median": median, "q20": median,
            "q80": median, "device": "cpu-x-2t", "version": "v", "run": "r", **extra}


def test_export_latency_table_has_a_precision_column_and_ratios_to_float32_eager():
    from benchmarks import bench_export

    rows = [_row("B=8 512px", "eager", "fp32", 100.0),
            _row("B=8 512px", "compiled", "fp32", 50.0),
            _row("B=8 512px", "eager", "bf16", 25.0, channels_last=True),
            _row("B=1 192px", "exported", "bf16", 10.0, channels_last=True),
            _row("B=1 192px", "eager", "fp32", 30.0)]
    table = bench_export.markdown(rows)
    assert "| size | precision | variant | median ms (q20–q80) | speed-up |" in table
    assert "| B=8 512px | fp32 | eager | 100 (100–100) | baseline |" in table
    assert "| B=8 512px | fp32 | compiled | 50 (50–50) | **2.00×** |" in table
    assert "| B=8 512px | bf16, channels-last | eager | 25 (25–25) | **4.00×** |" in table
    assert "| B=1 192px | bf16, channels-last | exported | 10 (10–10) | **3.00×** |" in table


def test_evaluation_table_compares_each_shape_with_its_float32_run():
    from benchmarks import bench_eval

    rows = [_row(shape, backend, precision, images / seconds, seconds=seconds, images=images,
                 mAP=0.5, mAP50=0.75)
            for shape, backend, precision, images, seconds in [
                ("default", "fp32", "fp32", 300, 6.0),
                ("default", "auto", "bf16, channels-last", 300, 3.0),
                ("voc_r18", "fp32", "fp32", 128, 64.0),
                ("voc_r18", "auto", "bf16, channels-last", 128, 16.0)]]
    table = bench_eval.markdown(rows, {"default": "the default run", "voc_r18": "voc"})
    assert "- `default`: the default run" in table
    assert "| default | fp32 | 300 | 6.0 | 50.0 | baseline | 0.5000 | 0.7500 |" in table
    assert "| default | bf16, channels-last | 300 | 3.0 | 100.0 | **2.00×** |" in table
    assert "| voc_r18 | bf16, channels-last | 128 | 16.0 | 8.0 | **4.00×** |" in table
