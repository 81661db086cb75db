"""The README's benchmark table is exactly what benchmarks/readme_table.py generates from the result files."""

from __future__ import annotations

import pytest

from benchmarks import readme_table

SUPERSEDED = ("`routing.md`", "`gateway_overhead.md`", "`gateway_overhead_routed.md`", "`v2_runtime.md`",
              "`routing_decision_cost.md`", "`sim_calibration.md`")  # fmt: skip


def test_readme_table_is_generated_from_the_result_files() -> None:
    readme = readme_table.README.read_text()
    assert readme_table.readme_block(readme) == readme_table.block(), "stale README table: run `make readme-table`"


def test_the_table_quotes_no_superseded_result() -> None:
    table = readme_table.table()
    for name in SUPERSEDED:
        assert name not in table
    for name in SUPERSEDED:  # and each superseded file says so, pointing at what replaced it
        head = (readme_table.RESULTS / name.strip("`")).read_text().split("\n\n", 2)[1]
        assert "uperseded" in head or "In-sample only" in head, name


def test_a_changed_number_is_caught() -> None:
    readme = readme_table.README.read_text()
    stale = readme.replace(readme_table.block(), readme_table.block().replace("|", "| 1 |", 3))
    assert readme_table.readme_block(stale) != readme_table.block()
    with pytest.raises(ValueError, match="markers"):
        readme_table.readme_block("no table here")
