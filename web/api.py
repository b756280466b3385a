"""The transcoded HTTP/JSON API: one generic endpoint for every annotated route."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from taxidriver.errors import ServiceError
from web import session
from web.rules import Route
from web.transcoder import build_request, error_status, http_status, message_class, status_json, to_json

log = logging.getLogger(__name__)

# Bodies larger than this are refused before parsing (the gRPC message limit is 16 MiB).
MAX_BODY_BYTES = 4 * 1024 * 1024


def status_response(status: status_pb2.Status, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_json(status), status_code=http_status(status), headers=headers)


def error_response(error: BaseException) -> JSONResponse:
    return status_response(error_status(error))


class Transcoder:
    """Matches a request to a route, calls the gateway, answers JSON (or SSE, or bytes)."""

    def __init__(self, routes: list[Route], channel: grpc.aio.Channel, call_timeout: float, secret: str) -> None:
        self.routes = routes
        self.channel = channel
        self.call_timeout = call_timeout
        self.secret = secret

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]] | bool | None:
        """(route, path values); False when the path exists under another method; None if unknown."""
        other_method = False
        for route in self.routes:
            values = route.template.match(path)
            if values is None:
                continue
            if route.http_method == http_method or (http_method == "HEAD" and route.http_method == "GET"):
                return route, values
            other_method = True
        return False if other_method else None

    async def __call__(self, request: Request) -> Response:
        found = self.match(request.method, request.url.path)
        if found is None:
            return status_response(
                status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"no route for {request.url.path}")
            )
        if found is False:
            status = status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=f"{request.method} is not allowed here")
            return JSONResponse(status_json(status), status_code=405)
        assert not isinstance(found, bool)
        route, values = found
        try:
            metadata = session.call_metadata(request, self.secret)
            body = await request.body() if route.body else b""
            if len(body) > MAX_BODY_BYTES:
                return status_response(
                    status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="request body is too large"),
                )
            message = build_request(route, values, request.query_params.multi_items(), body)
        except ServiceError as error:
            return error_response(error)
        if route.server_streaming:
            return await self._stream(route, message, metadata, request)
        call = self.channel.unary_unary(
            route.full_method,
            request_serializer=_serialize,
            response_deserializer=message_class(route.method.output_type).FromString,
        )
        try:
            reply = await call(message, metadata=metadata, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as error:
            return error_response(error)
        if route.response_body:
            return JSONResponse(to_json(reply)[_json_name(route, route.response_body)])
        return JSONResponse(to_json(reply))

    async def _stream(
        self, route: Route, message: Message, metadata: list[tuple[str, str]], request: Request
    ) -> Response:
        stream = self.channel.unary_stream(
            route.full_method,
            request_serializer=_serialize,
            response_deserializer=message_class(route.method.output_type).FromString,
        )
        call = stream(message, metadata=metadata)
        # The first message decides the HTTP status: an unknown run is a 404, not an empty 200.
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            return error_response(error)
        if first is grpc.aio.EOF:
            first = None
        if route.response_body:
            return self._download(route, call, first)
        return StreamingResponse(
            _sse(call, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _download(self, route: Route, call: Any, first: Message | None) -> Response:
        """`response_body: <bytes field>` on a stream: the field's bytes, concatenated, as the body."""
        field = route.response_body
        content_type, filename = "application/octet-stream", ""
        if first is not None:
            # The first message's metadata (an Artifact or a Model) names the content.
            for descriptor, value in first.ListFields():
                if descriptor.message_type is not None and descriptor.name != field:
                    content_type = getattr(value, "content_type", "") or content_type
                    filename = getattr(value, "name", "") or getattr(value, "model_name", "") or filename

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield getattr(first, field)
                while (item := await call.read()) is not grpc.aio.EOF:
                    yield getattr(item, field)
            except grpc.aio.AioRpcError as error:
                log.warning("download %s ended early: %s", route.full_method, error.code().name)
            finally:
                call.cancel()

        headers = {"Content-Disposition": f'attachment; filename="{_safe_filename(filename)}"'} if filename else {}
        return StreamingResponse(chunks(), media_type=content_type, headers=headers)


def _json_name(route: Route, field: str) -> str:
    return str(route.method.output_type.fields_by_name[field].json_name)


def _safe_filename(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "._-") or "download"


async def _sse(call: Any, first: Message | None) -> AsyncIterator[bytes]:
    """Server-Sent Events: each message as `data: <canonical JSON>`; a failure as `event: error`."""
    try:
        if first is not None:
            yield b"data: " + json.dumps(to_json(first), separators=(",", ":")).encode() + b"\n\n"
        # read() throughout: a call read once with read() cannot be iterated with `async for`.
        while (item := await call.read()) is not grpc.aio.EOF:
            yield b"data: " + json.dumps(to_json(item), separators=(",", ":")).encode() + b"\n\n"
        yield b"event: end\ndata: {}\n\n"
    except grpc.aio.AioRpcError as error:
        payload = json.dumps(status_json(error_status(error)), separators=(",", ":"))
        yield b"event: error\ndata: " + payload.encode() + b"\n\n"
    finally:
        call.cancel()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
