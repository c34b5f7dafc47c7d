"""GCN's SNEWS2 notice schema as the tests check notices against it: the files in
``tests/data/gcn-schema`` (their source and commit in its SOURCE.md), draft 2020-12."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "gcn-schema"


@cache
def validator() -> Draft202012Validator:
    """The SNEWS2 schema with its core references, each registered under its $id."""
    core = [json.loads(p.read_text()) for p in sorted((SCHEMA_DIR / "core").glob("*.json"))]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in core
    )
    schema = json.loads((SCHEMA_DIR / "snews2" / "coincidence.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def schema_errors(notice: dict[str, Any]) -> list[str]:
    """Every way `notice` breaks the schema, with where; empty when it is valid."""
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(notice)]
