"""Index types chosen for a memory budget (indexer/build/budget.py)."""

from __future__ import annotations

import pytest

from indexer.build import budget


def test_budget_selection_rules():
    assert budget.parse_size("512M") == 512 << 20 and budget.parse_size("4G") == 4 << 30
    assert budget.parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError):
        budget.parse_size("lots")
    assert budget.select(1000, 2048, 1 << 30).spec.type == "flat"
    big = budget.select(10**6, 2048, 512 << 20)       # flat would need ~8 GB
    assert big.spec.type == "ivfpq_refine" and big.memory_bytes <= 512 << 20
    assert not big.spec.params["opq"] and big.disk_bytes == 10**6 * 2048 * 2
    assert budget.select(10**6, 2048, 512 << 20, {"opq": True}).spec.params["opq"]
    smaller = budget.select(10**6, 2048, 128 << 20)
    assert smaller.spec.params["m"] * smaller.spec.params["nbits"] < (
        big.spec.params["m"] * big.spec.params["nbits"])
    with pytest.raises(budget.BudgetError, match="smallest needs"):
        budget.select(10**6, 2048, 1 << 20)
