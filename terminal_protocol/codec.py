"""Bytes ⇄ messages, with the errors a terminal can act on."""

from __future__ import annotations

import hashlib
import json

import msgspec

from terminal_protocol.messages import PROTOCOL_VERSION, Request, Response

MAX_REQUEST_BODY_BYTES = 2048

_request_decoder = msgspec.json.Decoder(Request)
_response_decoder = msgspec.json.Decoder(Response)
_encoder = msgspec.json.Encoder()
_hash_encoder = msgspec.msgpack.Encoder()


class ProtocolError(ValueError):
    """A request that cannot be understood: answered with response code 30 and this detail."""


def decode_request(body: bytes) -> Request:
    if len(body) > MAX_REQUEST_BODY_BYTES:
        raise ProtocolError(f"body of {len(body)} bytes exceeds {MAX_REQUEST_BODY_BYTES}")
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProtocolError(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    _refuse_duplicate_keys(body)
    return request


def _refuse_duplicate_keys(body: bytes) -> None:
    """msgspec keeps the last of two equal keys, other parsers the first: a terminal and the
    server could read different amounts from one message. Checked on bodies msgspec accepted
    (at most MAX_REQUEST_BODY_BYTES), so json.loads parses them too."""
    json.loads(body, object_pairs_hook=_object_without_duplicates)


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ProtocolError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def encode_request(request: Request) -> bytes:
    return _encoder.encode(request)


def request_fingerprint(request: Request) -> bytes:
    """SHA-256 of the decoded content: a retry must carry the same content, not the same spacing."""
    return hashlib.sha256(_hash_encoder.encode(request)).digest()


def decode_response(body: bytes) -> Response:
    try:
        return _response_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"unreadable response: {exc}") from None


def error_body(rc: str, detail: str) -> bytes:
    return _encoder.encode({"v": PROTOCOL_VERSION, "type": "error", "rc": rc, "detail": detail})
