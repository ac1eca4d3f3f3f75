"""Reading Stripe's request parameters and writing its list objects.

Stripe takes form encoding with brackets for nesting (``a[b][0][c]=v``;
stripe-python always indexes arrays, other clients send ``a[]=v``), refuses
parameters it does not know with ``parameter_unknown``, and pages lists with
``limit``, ``starting_after`` and ``ending_before``, newest first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from stripe._request_options import RequestOptions

from tests.stripe_standin.errors import ApiError

_BRACKETS = re.compile(r"\[?([^\[\]]*)\]")
# Metadata keys are the caller's own: ``metadata[0]`` is a key, not an index.
_FREE_FORM = frozenset({"metadata"})
# stripe-python's params types list the request options next to the API's
# parameters; those travel as headers, never as parameters.
_REQUEST_OPTIONS = frozenset(RequestOptions.__annotations__)

Params = dict[str, Any]


def decode_form(text: str) -> Params:
    """A form-encoded body or query string as nested dicts and lists."""
    root: Params = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        name, _, rest = key.partition("[")
        path = [name, *_BRACKETS.findall(rest)] if rest else [name]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part or str(len(node)), {})
            if not isinstance(node, dict):
                raise ApiError(400, f"Invalid hash: {key}", param=key)
        node[path[-1] or str(len(node))] = value
    return _listed(root)


def _listed(node: Params) -> Params:
    """Dicts keyed ``0``, ``1``… become lists, as Stripe reads indexed keys."""
    for name, value in node.items():
        if isinstance(value, dict) and name not in _FREE_FORM:
            value = _listed(value)
            if value and all(key.isdigit() for key in value):
                value = [value[key] for key in sorted(value, key=int)]
            node[name] = value
        elif isinstance(value, list):
            node[name] = [_listed(item) if isinstance(item, dict) else item for item in value]
    return node


def check_known(params: Mapping[str, Any], spec: type, within: str | None = None) -> None:
    """Refuse a parameter the API does not have, as Stripe does.

    ``spec`` is the stripe library's params type for the endpoint (or for the
    hash ``within`` names, e.g. ``line_items[0]``), which lists every
    parameter of this API version: those the stand-in does not model are
    accepted and ignored, misspelt ones are refused.
    """
    known = set(spec.__annotations__) - _REQUEST_OPTIONS
    for name in params:
        if name not in known:
            param = f"{within}[{name}]" if within else name
            raise ApiError(
                400,
                f"Received unknown parameter: {param}",
                code="parameter_unknown",
                param=param,
            )


def text(params: Mapping[str, Any], name: str, *, param: str | None = None) -> str | None:
    """A string parameter; a hash or list where a string belongs is refused."""
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"Invalid string: {value!r}", param=param or name)


def mapping(params: Mapping[str, Any], name: str, *, param: str | None = None) -> dict[str, Any]:
    """A hash parameter (``metadata``, ``subscription_data``); empty when absent."""
    value = params.get(name)
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    raise ApiError(400, f"Invalid hash: {param or name}", param=param or name)


def metadata(
    params: Mapping[str, Any], name: str = "metadata", *, param: str | None = None
) -> dict[str, str]:
    """Metadata within Stripe's limits: 50 keys, keys of 40 characters, values of 500."""
    param = param or name
    values = mapping(params, name, param=param)
    if len(values) > 50:
        raise ApiError(400, f"Invalid {param}: at most 50 keys", param=param)
    for key, value in values.items():
        if not isinstance(value, str) or len(key) > 40 or len(value) > 500:
            raise ApiError(
                400,
                f"Invalid {param}[{key}]: keys hold at most 40 characters, values 500",
                param=f"{param}[{key}]",
            )
    return values


def strings(params: Mapping[str, Any], name: str) -> list[str]:
    """An array parameter of strings (``lookup_keys[]``, ``expand[]``)."""
    value = params.get(name)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in values):
        raise ApiError(400, f"Invalid array: {name}", param=name)
    return values


def integer(
    params: Mapping[str, Any],
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    param: str | None = None,
) -> int | None:
    """An integer parameter within Stripe's bounds, or ``None`` when absent."""
    param = param or name
    value = params.get(name)
    if value is None:
        return None
    if not (isinstance(value, str) and re.fullmatch(r"-?\d+", value)):
        raise ApiError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise ApiError(400, f"This value must be greater than or equal to {minimum}.", param=param)
    if maximum is not None and number > maximum:
        raise ApiError(400, f"This value must be less than or equal to {maximum}.", param=param)
    return number


def boolean(params: Mapping[str, Any], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    if value in ("true", "false"):
        return bool(value == "true")
    raise ApiError(400, f"Invalid boolean: {value}", param=name)


def page(
    newest_first: Sequence[dict[str, Any]],
    params: Mapping[str, Any],
    *,
    url: str,
    noun: str,
    keep: Callable[[dict[str, Any]], bool] = lambda _: True,
    view: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj,
) -> dict[str, Any]:
    """One page of a list, the objects ``keep`` selects, as Stripe's list object.

    A cursor names any object of the kind, selected or not: the page starts
    right after (or ends right before) it in creation order.
    """
    limit = integer(params, "limit", minimum=1, maximum=100)
    limit = 10 if limit is None else limit
    after, before = text(params, "starting_after"), text(params, "ending_before")
    if after and before:
        raise ApiError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    ids = [obj["id"] for obj in newest_first]
    candidates = list(newest_first)
    for cursor, name in ((after, "starting_after"), (before, "ending_before")):
        if cursor is None:
            continue
        if cursor not in ids:
            raise ApiError(400, f"No such {noun}: '{cursor}'", code="resource_missing", param=name)
        position = ids.index(cursor)
        candidates = candidates[position + 1 :] if cursor == after else candidates[:position]
    selected = [obj for obj in candidates if keep(obj)]
    # Going backwards, the page is the ``limit`` objects nearest the cursor.
    data = selected[-limit:] if before else selected[:limit]
    return {
        "object": "list",
        "data": [view(obj) for obj in data],
        "has_more": len(selected) > limit,
        "url": url,
    }
