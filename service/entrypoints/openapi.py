"""The OpenAPI 3.1 document of the decision API, assembled from the pydantic body models.

Topic and channel names are catalog configuration, so their enums are filled in from the
running catalog: the document always lists exactly the names this deployment accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from service.domain.catalog import Catalog
from service.domain.model import WILDCARD
from service.entrypoints.api_models import (
    CheckBatchIn,
    CheckBatchOut,
    DecisionOut,
    ErrorOut,
    PreferencesOut,
)

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors() -> dict[str, Any]:
    error = _ref("ErrorOut")
    return {
        "401": _json(error, "No valid bearer token."),
        "403": _json(error, "The token lacks the `read` scope."),
        "422": _json(error, "Invalid input; `field` names it."),
        "503": _json(error, "Redis or PostgreSQL did not answer."),
    }


def openapi_document(catalog: Catalog) -> dict[str, Any]:
    _, top = models_json_schema(
        [
            (CheckBatchIn, "validation"),
            (CheckBatchOut, "serialization"),
            (DecisionOut, "serialization"),
            (PreferencesOut, "serialization"),
            (ErrorOut, "serialization"),
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = top["$defs"]
    topic_enum = sorted(catalog.topics)
    channel_enum = [*sorted(catalog.channels), WILDCARD]
    check_in = schemas["CheckIn"]["properties"]
    check_in["topic"]["enum"] = topic_enum
    check_in["channel"]["enum"] = channel_enum

    subject = {
        "name": "subject_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    }
    tenant = {
        "name": "tenant",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64, "default": "default"},
    }
    topic = {
        "name": "topic",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "enum": topic_enum},
    }
    channel = {
        "name": "channel",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "enum": channel_enum},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "optout decision API",
            "version": "1",
            "description": "May this message be sent? Every answer carries its reason.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/subjects/{subject_id}/preferences": {
                "get": {
                    "operationId": "getPreferences",
                    "summary": "Rules and the effective decision for every topic and channel",
                    "parameters": [subject, tenant],
                    "responses": {
                        "200": _json(_ref("PreferencesOut"), "Unknown subjects get defaults."),
                        **_errors(),
                    },
                }
            },
            "/v1/subjects/{subject_id}/check": {
                "get": {
                    "operationId": "check",
                    "summary": "May this topic be sent to the subject on this channel?",
                    "parameters": [subject, topic, channel, tenant],
                    "responses": {"200": _json(_ref("DecisionOut"), "The decision."), **_errors()},
                }
            },
            "/v1/check": {
                "post": {
                    "operationId": "checkBatch",
                    "summary": "Many decisions in one call (up to 1,000)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("CheckBatchIn")}},
                    },
                    "responses": {
                        "200": _json(_ref("CheckBatchOut"), "One result per check, in order."),
                        **_errors(),
                    },
                }
            },
        },
    }
