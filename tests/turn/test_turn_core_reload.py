"""The TURN core across a reload and a drain, without sockets (`TurnServer.apply`,
`draining`, `remove_listener`)."""

from __future__ import annotations

from relay.stun import Lifetime, Method
from tests.turn.core_harness import (
    CLIENT,
    CLIENT2,
    LISTENER,
    T0,
    Harness,
    ephemeral_auth,
    make_config,
)

USER = f"{int(T0) + 3600}:alice"  # a REST username valid for an hour


def rest_harness() -> Harness:
    return Harness(make_config(auth=ephemeral_auth("old-secret")))


def test_a_rotated_secret_keeps_live_allocations_and_refuses_new_ones_with_it() -> None:
    h = rest_harness()
    old_key = h.key(USER)
    alloc = h.allocated(user=USER)
    nonce = h.nonce()
    h.server.apply(make_config(auth=ephemeral_auth("new-secret")))
    h.config = h.server.config
    # The allocation's own requests, signed with its key, still pass; the nonce is still good.
    h.request(Method.REFRESH, [Lifetime(600)], user=USER, key=old_key,
              nonce=nonce).expect_success()
    assert alloc.alive
    # Another client with the old secret is challenged; with the new one it allocates.
    h.allocate(user=USER, key=old_key, client=CLIENT2).expect_error(401, signed=False)
    h.allocate(user=USER, client=CLIENT2).expect_success()
    assert h.stats.auth_failures["bad_integrity"] == 1


def test_the_kept_key_does_not_outlive_the_rest_credential() -> None:
    h = rest_harness()
    old_key = h.key(USER)
    h.allocated(user=USER)
    h.server.apply(make_config(auth=ephemeral_auth("new-secret")))
    h.now = T0 + 3601  # past the username's timestamp
    h.request(Method.REFRESH, [Lifetime(600)], user=USER, key=old_key
              ).expect_error(401, signed=False)
    assert h.stats.auth_failures["expired_credential"] == 1


def test_another_user_cannot_use_the_allocations_key() -> None:
    h = Harness()
    alloc = h.allocated()
    h.server.apply(make_config(auth={"type": "static", "realm": "example.org",
                                     "credentials": {"username": "carol", "password": "x"}}))
    # The 5-tuple's allocation belongs to alice: a request naming bob is not let in with it.
    h.request(Method.REFRESH, [Lifetime(600)], user="bob", key=alloc.key
              ).expect_error(401, signed=False)
    h.request(Method.REFRESH, [Lifetime(600)], key=alloc.key).expect_success()


def test_quotas_change_with_apply() -> None:
    h = Harness()
    h.allocated()
    h.server.apply(make_config(turn={"total_quota": 1}))
    h.allocate(client=CLIENT2).expect_error(508)
    assert h.stats.quota_rejections["total"] == 1


def test_draining_refuses_allocate_with_508_and_keeps_the_rest() -> None:
    h = Harness()
    alloc = h.allocated()
    h.server.draining = True
    r = h.allocate(client=CLIENT2).expect_error(508)
    assert r.msg.raw is not None
    assert h.stats.quota_rejections["draining"] == 1
    h.request(Method.REFRESH, [Lifetime(600)]).expect_success()
    h.request(Method.REFRESH, [Lifetime(0)]).expect_success()
    assert not alloc.alive and h.deleted == [alloc]


def test_a_draining_listener_refuses_allocate() -> None:
    h = Harness()
    h.lis.draining = True
    h.allocate().expect_error(508)


def test_remove_listener_ends_its_allocations() -> None:
    h = Harness()
    alloc = h.allocated(client=CLIENT)
    h.perform(h.server.remove_listener(LISTENER, h.now))
    assert h.deleted == [alloc] and not h.ports.in_use()
    assert LISTENER not in h.server.listeners and h.lis.draining
    assert h.stats.allocations_active == 0
