"""Dial-out: Nextcloud asks a SIP bridge (an internal client) to call a phone (sans-IO).

Owns (reference `talk-features.md` §5.4; upstream `talk/api.go`
`BackendRoomDialoutRequest.ValidateNumber`, `server/backend_server.go` `startDialout`,
`startDialoutInSession`, `returnDialoutError`, `api/signaling.go`
`DialoutInternalClientMessage`, `server/hub.go` `processInternalMsg` "dialout"):

- `validate_request(room_id, payload)`: the backend `dialout` request (`number_missing`,
  `invalid_number` for anything but `^\\+\\d{2,}$`, then `invalid_roomid` for a non-numeric
  room id; all HTTP 400 with the JSON error body);
- `backend_url(header, urls)` and `internal_request(...)`: the `internal` `dialout` message
  to a candidate, with a fresh 32-character `id`;
- `parse_dialout(obj)` / `answer_callid(msg)`: reading a bridge's `dialout` message and
  turning the reply to a pending request into the call id or the error;
- `success_response` / `error_response` / `all_failed_response`: the HTTP answers (200
  with the call id, 502 with the first candidate error, 404 `no_client_available`);
- `status_update(msg)`: a status report as the transient-data write upstream makes
  (`callstatus_<callid>`, value = the status object, TTL 5 s for `rejected`/`cleared`),
  and `room_dialout_message(msg)` for the other report types.

The caller owns the candidate list (internal sessions with client feature
`start-dialout`, not in a room, attached, of the requesting backend), sending, the 45 s
wait (`START_TIMEOUT`) and matching the reply by `id`.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

import attrs

from relay.signaling.protocol import SignalingError

START_TIMEOUT = 45.0  # seconds to wait for a candidate's answer
CALL_STATUS_TTL_NS = 5 * 1_000_000_000  # a finished call's status stays 5 s
CALL_STATUS_PREFIX = "callstatus_"
REQUEST_ID_LENGTH = 32

STATUS_ACCEPTED = "accepted"
STATUS_RINGING = "ringing"
STATUS_CONNECTED = "connected"
STATUS_REJECTED = "rejected"
STATUS_CLEARED = "cleared"
FINAL_STATUSES = frozenset({STATUS_REJECTED, STATUS_CLEARED})

_E164 = re.compile(r"\+[0-9]{2,}")
_NUMERIC = re.compile(r"[0-9]+")
_ID_ALPHABET = string.ascii_letters + string.digits


# --- the backend request ---------------------------------------------------------------------


@attrs.frozen
class DialoutResponse:
    """The HTTP answer to Nextcloud's `dialout` request (JSON body)."""

    status: int
    body: dict[str, Any]


def success_response(call_id: str) -> DialoutResponse:
    dialout: dict[str, Any] = {}
    if call_id:
        dialout["callid"] = call_id
    return DialoutResponse(200, {"type": "dialout", "dialout": dialout})


def error_body(error: SignalingError) -> dict[str, Any]:
    err: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        err["details"] = error.details
    return err


def error_response(status: int, error: SignalingError) -> DialoutResponse:
    return DialoutResponse(status, {"type": "dialout", "dialout": {"error": error_body(error)}})


class DialoutError(Exception):
    """A `dialout` request that fails before any candidate is asked."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.error = SignalingError(code, message)

    def response(self) -> DialoutResponse:
        return error_response(self.status, self.error)


class UnreadableRequest(Exception):
    """The request does not decode at all: plain-text 400 "Could not read body"."""


@attrs.frozen
class DialoutRequest:
    room_id: str
    number: str
    options: Any = None  # None = no options


def validate_request(room_id: str, payload: Any) -> DialoutRequest:
    """The `dialout` object of `POST /api/v1/room/<room_id>`, checked in upstream's order."""
    if not isinstance(payload, dict):
        raise UnreadableRequest("dialout must be an object")
    number = payload.get("number")
    if number is None:
        number = ""
    if not isinstance(number, str):
        raise UnreadableRequest("dialout.number must be a string")
    if not number:
        raise DialoutError(400, "number_missing", "No number provided")
    if not _E164.fullmatch(number):
        raise DialoutError(400, "invalid_number", "Expected E.164 number.")
    if not _NUMERIC.fullmatch(room_id):
        raise DialoutError(400, "invalid_roomid", "The room id must be numeric.")
    return DialoutRequest(room_id, number, payload.get("options"))


def no_client_available() -> SignalingError:
    return SignalingError("no_client_available", "No available client found to trigger dialout.")


def all_failed_response(errors: Sequence[SignalingError]) -> DialoutResponse:
    """Every candidate failed (502 with the first error) or there was none (404)."""
    if errors:
        return error_response(502, errors[0])
    return error_response(404, no_client_available())


def timeout_error() -> SignalingError:
    return SignalingError("timeout", "Timeout while waiting for dialout to start.")


def notify_failed_error() -> SignalingError:
    """The request could not be sent to the candidate."""
    return SignalingError("error_notify", "Could not notify about new dialout.")


def no_response_error() -> SignalingError:
    """The wait ended without a reply."""
    return SignalingError("error_notify", "No dialout response received.")


# --- the request to a candidate --------------------------------------------------------------


def new_request_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(REQUEST_ID_LENGTH))


def backend_url(header: str, urls: Sequence[str]) -> str:
    """The `backend` named in the request to the bridge: the `Spreed-Signaling-Backend`
    header value (with a trailing "/") if one of the backend's URLs is a prefix of it,
    else the backend's first URL (the header as is when the backend has no URLs)."""
    url = header
    if url and not url.endswith("/"):
        url += "/"
    if urls and not any(url.startswith(u) for u in urls):
        url = urls[0]
    return url


def internal_request(
    request: DialoutRequest, backend: str, msg_id: str | None = None
) -> dict[str, Any]:
    """The `internal` message asking a bridge to dial; its `id` keys the reply."""
    contents: dict[str, Any] = {"number": request.number}
    if request.options is not None:
        contents["options"] = request.options
    return {
        "id": msg_id if msg_id is not None else new_request_id(),
        "type": "internal",
        "internal": {
            "type": "dialout",
            "dialout": {"roomid": request.room_id, "backend": backend, "request": contents},
        },
    }


# --- messages from the bridge ----------------------------------------------------------------


@attrs.frozen
class CallStatus:
    call_id: str
    status: str
    cause: str = ""
    code: int = 0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"callid": self.call_id, "status": self.status}
        if self.cause:
            out["cause"] = self.cause
        if self.code:
            out["code"] = self.code
        if self.message:
            out["message"] = self.message
        return out


@attrs.frozen
class DialoutMessage:
    """The `dialout` object of a bridge's `internal` message."""

    type: str
    room_id: str = ""
    error: SignalingError | None = None
    status: CallStatus | None = None

    def to_json(self, with_room: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if with_room and self.room_id:
            out["roomid"] = self.room_id
        if self.error is not None:
            out["error"] = error_body(self.error)
        if self.status is not None:
            out["status"] = self.status.to_json()
        return out


def _invalid() -> SignalingError:
    return SignalingError("invalid_format", "Invalid data format.")


def _opt(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    v = obj.get(key)
    if v is None:
        return default
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise _invalid()
    return v


def parse_dialout(obj: Any) -> DialoutMessage:
    """Read and check a bridge's `dialout` object (`invalid_format` when it fails)."""
    if not isinstance(obj, dict):
        raise _invalid()
    kind = _opt(obj, "type", str, "")
    room_id = _opt(obj, "roomid", str, "")
    raw_err = obj.get("error")
    raw_status = obj.get("status")
    error = status = None
    if raw_err is not None:
        if not isinstance(raw_err, dict):
            raise _invalid()
        error = SignalingError(
            _opt(raw_err, "code", str, ""), _opt(raw_err, "message", str, ""),
            raw_err.get("details"),
        )
    if raw_status is not None:
        if not isinstance(raw_status, dict):
            raise _invalid()
        code = _opt(raw_status, "code", int, 0)
        if not -(2**63) <= code < 2**63:
            raise _invalid()
        status = CallStatus(
            _opt(raw_status, "callid", str, ""), _opt(raw_status, "status", str, ""),
            _opt(raw_status, "cause", str, ""), code, _opt(raw_status, "message", str, ""),
        )
    if not kind or (kind == "error" and error is None) or (kind == "status" and status is None):
        raise _invalid()
    return DialoutMessage(kind, room_id, error, status)


def consumes_reply(msg: DialoutMessage) -> bool:
    """Whether a reply to a pending request stops there: errors are not broadcast, a
    status reply is also processed as a status report (`status_update`)."""
    return msg.error is not None


def answer_callid(msg: DialoutMessage) -> str:
    """The call id of a bridge's reply to our request, or the error it amounts to."""
    if msg.type == "error" and msg.error is not None:
        raise SignalingError(msg.error.code, msg.error.message, msg.error.details)
    if msg.type == "status" and msg.status is not None:
        if msg.status.status != STATUS_ACCEPTED:
            raise SignalingError(
                "unsupported_status",
                f"Unsupported dialout status received: {msg.to_json()}",
            )
        return msg.status.call_id
    raise SignalingError("unsupported_type", f"Unsupported dialout type received: {msg.to_json()}")


@attrs.frozen
class TransientWrite:
    """A transient-data `set` the server makes itself (`TransientStore.set`, no writer)."""

    room_id: str
    key: str
    value: dict[str, Any]
    ttl_ns: int


def status_update(msg: DialoutMessage) -> TransientWrite | None:
    """A `status` report as the write into room `msg.room_id`; None for other types."""
    if msg.type != "status" or msg.status is None:
        return None
    ttl = CALL_STATUS_TTL_NS if msg.status.status in FINAL_STATUSES else 0
    return TransientWrite(
        msg.room_id, CALL_STATUS_PREFIX + msg.status.call_id, msg.status.to_json(), ttl
    )


def room_dialout_message(msg: DialoutMessage) -> dict[str, Any]:
    """What the room `msg.room_id` gets for a report that is not a status."""
    return {"type": "dialout", "dialout": msg.to_json(with_room=False)}
