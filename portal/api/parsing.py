"""Reading a request body as a JSON object, or the API error a client must see."""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from portal.api.errors import ApiError


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; its type and length are checked before it is read.

    ``get_data`` raises 413 past the request's size limit without reading
    more. NaN and Infinity are refused: they are not JSON, and PostgreSQL's
    ``json`` type refuses them too.
    """
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    raw = request.get_data(cache=False)
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "The body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "validation_failed",
            "The body must be a JSON object.",
            {"body": "must be a JSON object"},
        )
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")
