"""UserService without a database: the cost of building one, and of an unknown email."""
from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from sfx_backend.errors import Unauthorized
from sfx_backend.services import users
from sfx_backend.services.users import UserService, make_hasher


class _NoUsers:
    """A session in which no email exists."""

    def scalars(self, statement):
        return self

    def first(self):
        return None


@pytest.fixture
def hash_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = PasswordHasher.hash

    def counting(self, password, *args, **kwargs):
        calls.append(password)
        return original(self, password, *args, **kwargs)
    monkeypatch.setattr(PasswordHasher, "hash", counting)
    return calls


def test_building_user_services_hashes_nothing_and_the_timing_dummy_is_made_once(hash_calls):
    # Parameters of this test's own, so no earlier test in the process has made their dummy yet.
    hasher = make_hasher(time_cost=1, memory_kib=1032)
    services = [UserService(_NoUsers(), hasher) for _ in range(5)]
    assert hash_calls == []
    for service in services:
        with pytest.raises(Unauthorized):
            service.authenticate("nobody@example.com", "a guess", now=None)
    assert len(hash_calls) == 1, "one dummy hash per process and hashing cost, not one per service"


def test_the_dummy_hash_has_the_hashers_own_cost_so_unknown_emails_take_as_long(hash_calls):
    cheap, dear = make_hasher(time_cost=1, memory_kib=1040), make_hasher(time_cost=2, memory_kib=2056)
    assert users.dummy_hash(cheap) == users.dummy_hash(cheap)
    assert not cheap.check_needs_rehash(users.dummy_hash(cheap))
    assert not dear.check_needs_rehash(users.dummy_hash(dear))
    assert len(hash_calls) == 2
