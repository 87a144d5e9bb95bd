"""The README's benchmark block holds every device's table, and nothing else kept in
the results folder."""

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
