"""The checked-in JSON Schemas are what other-language producers read; they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.contract.jsonschema import render, schema_documents, write_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", sorted(schema_documents()))
def test_checked_in_schema_matches_models(name: str) -> None:
    path = SCHEMAS / name
    expected = render(schema_documents()[name])
    actual = path.read_text(encoding="utf-8") if path.exists() else None
    assert actual == expected, f"schemas/{name} is out of date: run `optout schemas`"


def test_write_schemas_round_trips(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(schema_documents())
    for path in written:
        assert path.read_text(encoding="utf-8").endswith("}\n")
