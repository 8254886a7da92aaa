"""The largest body any route accepts, enforced before the routes see a byte of it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import BodyTooLarge, error_body
from app.settings import Settings

FIELDS_BYTES = 2 * 1024 * 1024  # room for labels and other fields beside the images


def body_limit(s: Settings) -> int:
    """Every image at its limit, base64-encoded, plus fields."""
    return s.max_images_per_request * (s.max_upload_bytes * 4 // 3 + 4) + FIELDS_BYTES


class BodyLimitMiddleware:
    """Refuse an over-long body before reading it (Content-Length) or as soon as it passes the limit
    (chunked uploads), so no request can make the server buffer more than the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                await self._refuse(send, int(v))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(f"the request body passed {self.limit} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send, length: int) -> None:
        """413 from the headers alone (the body is never read), and the connection closed."""
        message = f"the request body is {length} bytes; at most {self.limit}"
        body = json.dumps(error_body("body_too_large", message)).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
