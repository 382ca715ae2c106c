"""Read a request body that may be JSON (images as base64) or multipart (images as file parts).

Routes that accept both declare the two media types in OpenAPI (`request_body`) and call `parse_body`,
which enforces the byte limits and always answers a client mistake with an `APIError` (4xx), never a 500.
"""

from __future__ import annotations

import base64
import binascii
import types
import typing
from typing import Any, TypeVar

import pydantic_core
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from clipforge.service.errors import CLIENT_CLOSED, APIError, validation_message
from clipforge.service.settings import Settings

M = TypeVar("M", bound=BaseModel)
MAX_FIELD_BYTES = 1 << 20  # one non-file multipart field (labels, JSON filters, ...)
REQUEST_MODELS: list[type[BaseModel]] = []  # added to the OpenAPI components by the app factory


def _field_kind(annotation: Any) -> str:
    """'list_str' | 'json' | 'number' | 'scalar': how a multipart field's string value(s) become the model's
    value."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    origin = typing.get_origin(annotation)
    if origin is list and typing.get_args(annotation) and typing.get_args(annotation)[0] is str:
        return "list_str"
    if origin in (list, dict) or annotation in (list, dict):
        return "json"
    if annotation in (int, float):
        return "number"
    return "scalar"


def form_schema(model: type[BaseModel], file_field: str) -> dict[str, Any]:
    """The multipart/form-data schema for `model`: image files under `file_field`, JSON strings for objects."""
    json_props = model.model_json_schema()["properties"]
    props: dict[str, Any] = {file_field: {"type": "array", "items": {"type": "string", "format": "binary"}}}
    for name, field in model.model_fields.items():
        if name == file_field:
            continue
        kind = _field_kind(field.annotation)
        if kind == "list_str":
            props[name] = {"type": "array", "items": {"type": "string"}, "description": field.description or name}
        elif kind == "json":
            props[name] = {"type": "string", "description": (field.description or name) + " (JSON-encoded)"}
        else:
            props[name] = json_props[name]
    return {"type": "object", "properties": props}


def request_body(model: type[BaseModel], file_field: str = "images") -> dict[str, Any]:
    """`openapi_extra` for a route that takes `model` as JSON or as multipart with file uploads."""
    REQUEST_MODELS.append(model)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                "multipart/form-data": {"schema": form_schema(model, file_field)},
            },
        }
    }


def loads(data: bytes | str) -> Any:
    """JSON as RFC 8259 defines it, with pydantic's parser (Rust): UTF-8 only, and no NaN, Infinity or lone
    surrogate escapes ("\\ud800"), which Python's json accepts but nothing can store or send back. Raises
    ValueError."""
    return pydantic_core.from_json(data, allow_inf_nan=False)


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) before reading more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "payload_too_large", f"request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, "payload_too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exn:
        raise APIError(CLIENT_CLOSED, "client_closed_request", "the client left before sending its body") from exn
    body = b"".join(chunks)
    request._body = body  # so request.form() parses what we already read
    return body


def form_number(text: str) -> Any:
    """A multipart number field's value: the number its text spells ("3", "0.5"), so that a strict field takes
    it as JSON's 3 would be taken; anything else ("true", "ten") stays text, for the model to refuse."""
    try:
        value = loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


def check_text(text: str, settings: Settings, where: str) -> str:
    if len(text) > settings.max_text_chars:
        raise APIError(422, "text_too_long", f"{where}: over {settings.max_text_chars} characters")
    if not text.strip():
        raise APIError(422, "empty_text", f"{where}: empty text")
    return text


def image_url(request: Request, item_id: int) -> str:
    """Where an indexed item's image is served (behind a proxy's root_path too)."""
    return f"{request.scope.get('root_path', '')}/v1/items/{item_id}/image"


def decode_base64_image(data: str, settings: Settings, where: str) -> bytes:
    if data.startswith("data:"):  # accept data URLs as the browser's FileReader makes them
        _, _, data = data.partition(",")
    if len(data) * 3 // 4 > settings.max_upload_bytes + 3:
        raise APIError(
            413, "payload_too_large", f"{where}: image is over the limit of {settings.max_upload_bytes} bytes"
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exn:
        raise APIError(400, "invalid_base64", f"{where}: not valid base64 ({exn})") from exn


def _validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exn:
        raise APIError(422, "validation_error", validation_message(list(exn.errors()))) from exn


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def parse_body(
    request: Request, settings: Settings, model: type[M], file_field: str = "images"
) -> tuple[M, list[bytes]]:
    """Parse the body into `model` and the raw image bytes (from base64 strings or uploaded files).

    In the returned model `file_field` is emptied: the images are only in the returned list.
    """
    media = _media_type(request)
    if media not in ("application/json", "multipart/form-data"):
        raise APIError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    body = await read_limited(request, settings.max_request_bytes)
    if media == "application/json":
        try:
            data = loads(body)
        except ValueError as exn:
            raise APIError(400, "invalid_json", f"request body is not valid JSON: {str(exn)[:200]}") from exn
        if not isinstance(data, dict):
            raise APIError(422, "validation_error", "request body must be a JSON object")
        parsed = _validate(model, data)
        raw = getattr(parsed, file_field)
        strings = [raw] if isinstance(raw, str) else list(raw or [])
        if len(strings) > settings.max_images:
            raise APIError(422, "too_many_images", f"at most {settings.max_images} images per request")
        blobs = [decode_base64_image(s, settings, f"{file_field}[{i}]") for i, s in enumerate(strings)]
    else:
        parsed, blobs = await _parse_multipart(request, settings, model, file_field)
    if len(blobs) > settings.max_images:
        raise APIError(422, "too_many_images", f"at most {settings.max_images} images per request")
    return parsed.model_copy(update={file_field: None}), blobs


async def _parse_multipart(
    request: Request, settings: Settings, model: type[M], file_field: str
) -> tuple[M, list[bytes]]:
    try:
        form = await request.form(
            max_files=settings.max_images + 1, max_fields=settings.max_labels + 64, max_part_size=MAX_FIELD_BYTES
        )
    except StarletteHTTPException as exn:  # python-multipart's complaints (malformed, too many parts)
        raise APIError(400, "invalid_multipart", f"malformed multipart body: {exn.detail}") from exn
    try:
        data: dict[str, Any] = {}
        blobs: list[bytes] = []
        for name in form:
            if name not in model.model_fields:
                raise APIError(422, "validation_error", f"{name}: unknown field")
        for name, field in model.model_fields.items():
            values: list[Any] = form.getlist(name)
            if name == file_field:
                for i, v in enumerate(values):
                    blobs.append(await _upload_bytes(v, settings, f"{name}[{i}]"))
                continue
            if not values:
                continue
            if any(not isinstance(v, str) for v in values):
                raise APIError(422, "validation_error", f"{name}: expected a text field, got a file")
            kind = _field_kind(field.annotation)
            if kind == "list_str":
                data[name] = values
            elif len(values) > 1:
                raise APIError(422, "validation_error", f"{name}: given more than once")
            elif kind == "json":
                try:
                    data[name] = loads(values[0])
                except ValueError as exn:
                    raise APIError(400, "invalid_json", f"{name}: not valid JSON: {str(exn)[:200]}") from exn
            elif kind == "number":
                data[name] = form_number(values[0])
            else:
                data[name] = values[0]
        return _validate(model, data), blobs
    finally:
        await form.close()


async def _upload_bytes(value: Any, settings: Settings, where: str) -> bytes:
    if not isinstance(value, UploadFile):  # a text field where a file was expected
        raise APIError(422, "validation_error", f"{where}: expected an uploaded file")
    ctype = (value.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise APIError(415, "unsupported_media_type", f"{where}: content type {ctype!r} is not an image")
    if value.size is not None and value.size > settings.max_upload_bytes:
        raise APIError(
            413, "payload_too_large", f"{where}: upload is over the limit of {settings.max_upload_bytes} bytes"
        )
    data = await value.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise APIError(
            413, "payload_too_large", f"{where}: upload is over the limit of {settings.max_upload_bytes} bytes"
        )
    return data
