"""Errors as the API answers them: a status and ``{"error": "<what is wrong and what to do>"}``, never a traceback.

Handlers raise :class:`ApiError`; :func:`json_errors` turns it, aiohttp's own HTTP errors on the API's paths (an
unknown route, a wrong method) and anything unexpected (logged with its traceback, answered as one sentence) into
JSON. Messages never hold a server path.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

log = logging.getLogger("totalseg_server")


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def json_errors(owns: Callable[[str], bool]):
    """Middleware: the API's errors as JSON on the paths ``owns`` accepts (others, the browser app's, untouched)."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        if not owns(request.path):
            return await handler(request)
        try:
            return await handler(request)
        except ApiError as err:
            return json_error(err.status, err.message)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return json_error(err.status, _http_message(err))
        except (ConnectionResetError, ConnectionError):
            raise
        except Exception:
            log.exception("Unexpected error answering %s %s", request.method, request.path)
            return json_error(500, "The server failed on this request; its log says why. Tell its administrator.")

    return middleware


def _http_message(err: web.HTTPException) -> str:
    if err.status == 404:
        return "No such address on this server's API (see GET /api/v1/info)."
    if err.status == 405:
        return "This address does not take that method."
    return err.reason or "The request was refused."
