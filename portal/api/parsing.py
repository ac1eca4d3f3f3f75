"""Reading a request body as a JSON object, or the API error a client must see."""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from portal.api.errors import ApiError


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or the API error a client must see.

    A declared length past the route's limit is refused (413) before any of
    it is read; a body of unknown length is read up to the limit, no
    further. NaN and Infinity are refused: they are not JSON, and
    PostgreSQL's ``json`` type refuses them too.
    """
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # A body of unknown length (chunked) is read up to the limit and no
        # further; reaching it means the client sent at least that much.
        raise RequestEntityTooLarge()
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
