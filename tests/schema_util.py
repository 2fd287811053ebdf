"""Validate wire documents against the JSON Schemas in the repo's schemas/ directory.

For the end-to-end tests: `validate("result", decode(payload))` raises
`jsonschema.ValidationError` when a document breaks the contract.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
KINDS = ("window", "result", "error", "status", "summary")


def schema_path(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r}; expected one of {', '.join(KINDS)}")
    return SCHEMA_DIR / f"{kind}.schema.json"


@cache
def validator(kind: str) -> Draft202012Validator:
    schema = json.loads(schema_path(kind).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def as_json_model(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema has no bytes: a window's msgpack bin `x` is checked as its base64 string."""
    x = doc.get("x")
    if kind == "window" and isinstance(x, bytes | bytearray):
        return {**doc, "x": base64.b64encode(bytes(x)).decode("ascii")}
    return doc


def validate(kind: str, doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (the most relevant one) when `doc` is not a valid `kind`."""
    validator(kind).validate(as_json_model(kind, doc))
