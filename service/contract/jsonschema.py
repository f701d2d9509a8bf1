"""JSON Schemas of contract v1, generated from the pydantic models.

The checked-in files under `schemas/` are for producers in other languages; generating them
from the models (and testing that they are in sync) keeps docs and code from drifting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.contract.receipts import SenderReportV1
from service.contract.v1 import CommandV1, OutcomeV1, PreferenceChangedV1

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name -> schema. Commands are validated input; events and outcomes are our output."""
    documents = {
        "command.v1.schema.json": CommandV1.model_json_schema(mode="validation"),
        "preference-changed.v1.schema.json": PreferenceChangedV1.model_json_schema(
            mode="serialization"
        ),
        "outcome.v1.schema.json": OutcomeV1.model_json_schema(mode="serialization"),
        "sender-report.v1.schema.json": SenderReportV1.model_json_schema(mode="serialization"),
    }
    return {name: {"$schema": _DIALECT, **schema} for name, schema in documents.items()}


def render(document: dict[str, Any]) -> str:
    """Stable text (sorted keys, two-space indent, trailing newline) so diffs stay minimal."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema file into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = directory / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written
