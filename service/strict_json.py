"""Request bodies parsed as strict JSON: ``NaN`` and ``Infinity`` (which Python's parser accepts) are refused
with a 422 naming them, so a non-finite number never reaches a model, a store or a reply."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _NonFinite(ValueError):
    pass


def _refuse(constant: str) -> Any:
    raise _NonFinite(constant)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode()
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from None
            try:
                self._json = json.loads(text, parse_constant=_refuse)
            except _NonFinite as exc:
                constant = exc.args[0]
                raise json.JSONDecodeError(f"{constant} is not valid JSON", text, text.find(constant)) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """An ``APIRoute`` whose handler sees a ``StrictJSONRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
