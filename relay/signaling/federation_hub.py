"""Federation in the hub: the links of this node's federated sessions, and what a remote
server's `federation` session needs here.

Client side (our client joins a room hosted by another signaling server): a `room` join
with `room.federation` makes `FederationLinks.join` create a `FederationLink` (or reuse
the session's link when it goes to the same remote), run it in the hub's nursery, and
mark the session federated: its room-session id becomes `federated|<Talk sid>`, it is in
no local room, our Nextcloud gets no room join/leave for it but a ping every room-ping
interval (`pings`). While federated, every client message except hello/room/bye goes to
the link (`forward`); `room` with roomid "" leaves the remote room (`leave`); a local
join leaves it first; the session's end closes the link (`close`). Whatever the link
delivers (mapped to local ids) goes through the hub's normal send path.

Server side (a remote server's link to us, hello `auth.type:"federation"`): the hub
verifies the hello like hello v2 and creates a session of client type `federation`;
`room_request_actor` adds the actor fields to its backend room requests.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import trio

from relay.config.signaling import SignalingConfig
from relay.signaling import federation as fed
from relay.signaling import protocol as p
from relay.signaling.federation_link import FederationLink
from relay.signaling.state import Session, SignalingState

log = logging.getLogger("relay.signaling.federation")

ROOM_SESSION_PREFIX = "federated|"
# Client message types a federated session keeps for this node; the rest go to the link.
LOCAL_TYPES = frozenset({"hello", "room", "bye"})

Deliver = Callable[[Session, dict[str, Any]], None]


def room_request_actor(session: Session) -> dict[str, str]:
    """`actorid`/`actortype` for a federation session's backend `room` request: only when
    its token's `userdata` carries both `actorId` and `actorType` (strings)."""
    data = session.user
    if not isinstance(data, dict):
        return {}
    actor_id, actor_type = data.get("actorId"), data.get("actorType")
    if isinstance(actor_id, str) and isinstance(actor_type, str) and actor_id and actor_type:
        return {"actorid": actor_id, "actortype": actor_type}
    return {}


def client_ssl_context(skip_verify: bool) -> ssl.SSLContext | None:
    """None = the link's default (verified); `skipverify` turns verification off."""
    if not skip_verify:
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@attrs.define(eq=False)
class Federated:
    """A session's link and the local room it stands for."""

    link: FederationLink
    request: fed.FederationRequest


class FederationLinks:
    """The federation links of this node's sessions, by session public id."""

    def __init__(self, config: SignalingConfig, state: SignalingState, deliver: Deliver) -> None:
        self.timeout = config.federation_timeout
        self.ssl_context = client_ssl_context(config.federation_skip_verify)
        self.state = state
        self._deliver = deliver
        self._by_session: dict[str, Federated] = {}

    def __len__(self) -> int:
        return len(self._by_session)

    def link(self, session: Session) -> FederationLink | None:
        f = self._by_session.get(session.public_id)
        return f.link if f is not None else None

    def is_federated(self, session: Session) -> bool:
        return session.public_id in self._by_session

    @staticmethod
    def parse(req: p.Room) -> fed.FederationRequest:
        """The validated federated join (SignalingError `invalid_format` otherwise)."""
        return fed.parse_federation_room(
            {"roomid": req.room_id, "sessionid": req.session_id, "federation": req.federation}
        )

    async def join(
        self, session: Session, msg_id: str | None, request: fed.FederationRequest,
        nursery: trio.Nursery | None,
    ) -> None:
        """A `room` join with `federation`: reuse or create the session's link."""
        session.join_deadline = None  # the remote room counts as joined
        current = self._by_session.get(session.public_id)
        if current is not None and current.link.can_reuse(request):
            current.link.change_room(request, msg_id)
            current.request = request
            self._mark(session, request)
            return
        if nursery is None:
            raise p.SignalingError("federation_error", fed.CREATE_FAILED)
        if current is not None:
            current.link.close()
        link = FederationLink(
            request,
            local_session_id=session.public_id,
            local_backend_url=session.backend_url,
            deliver=functools.partial(self._deliver, session),
            features=session.features,
            join_id=msg_id,
            timeout=self.timeout,
            ssl_context=self.ssl_context,
        )
        self._by_session[session.public_id] = Federated(link, request)
        self._mark(session, request)
        await nursery.start(self._run, session, link)

    def _mark(self, session: Session, request: fed.FederationRequest) -> None:
        rsid = ROOM_SESSION_PREFIX + request.room_session_id if request.room_session_id else ""
        self.state.set_room_session(session, rsid)

    async def _run(
        self, session: Session, link: FederationLink,
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await link.run(task_status=task_status)
        finally:
            current = self._by_session.get(session.public_id)
            if current is not None and current.link is link:
                del self._by_session[session.public_id]
                if session.room is None and session.room_session_id.startswith(
                    ROOM_SESSION_PREFIX
                ):
                    self.state.set_room_session(session, "")

    def forward(self, session: Session, env: dict[str, Any]) -> None:
        """A client message for the remote room (SignalingError: answer it)."""
        f = self._by_session.get(session.public_id)
        if f is None:
            raise p.SignalingError("federation_error", "The federation link is closed.")
        f.link.forward(env)

    def leave(self, session: Session, msg_id: str | None = None, *, reply: bool = True) -> None:
        """Leave the remote room: the client's own leave (`reply`: the remote's answer
        reaches it) or ours before a local join."""
        f = self._by_session.get(session.public_id)
        if f is None:
            return
        env: dict[str, Any] | None = None
        if reply:
            env = {"type": "room", "room": {"roomid": ""}}
            if msg_id:
                env["id"] = msg_id
        f.link.leave(env)
        if session.room_session_id.startswith(ROOM_SESSION_PREFIX):
            self.state.set_room_session(session, "")

    def close(self, session: Session) -> None:
        """The session is gone: end its link (with `bye`)."""
        f = self._by_session.pop(session.public_id, None)
        if f is not None:
            f.link.close()

    def close_all(self) -> None:
        for f in list(self._by_session.values()):
            f.link.close()
        self._by_session.clear()

    def pings(self) -> list[tuple[Session, dict[str, Any]]]:
        """Our Nextcloud keeps federated Talk sessions alive through these pings."""
        out = []
        for public_id, f in self._by_session.items():
            session = self.state.get(public_id)
            sid = f.request.room_session_id
            if session is None or not sid or f.link.finished:
                continue
            entry = {"sessionid": sid}
            if session.user_id:
                entry["userid"] = session.user_id
            out.append((session, {"type": "ping", "ping": {
                "version": "1.0", "roomid": f.request.local_room_id, "entries": [entry]}}))
        return out
