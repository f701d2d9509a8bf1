"""Reads the catalog from a TOML file; the shipped default when none is configured."""

from __future__ import annotations

import tomllib
from pathlib import Path

from service.domain.catalog import DEFAULT_CATALOG, Catalog, CatalogError, parse_catalog


def load_catalog(path: Path | str) -> Catalog:
    """Read and check a TOML catalog; any problem is a `CatalogError` naming the file."""
    try:
        with Path(path).open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc}") from exc
    try:
        return parse_catalog(document)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def configured_catalog(path: Path | None) -> Catalog:
    return load_catalog(path) if path is not None else DEFAULT_CATALOG
