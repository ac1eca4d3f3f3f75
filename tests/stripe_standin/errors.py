"""Answers in Stripe's error shape, which the ``stripe`` library turns into its exceptions."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message}
        if code:
            self.body["code"] = code
        if param:
            self.body["param"] = param
        self.headers = headers or {}


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": error.body}
