"""Stateless session tokens (SPEC §4): mint, verify, expiry, binding, tampering, rotation."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.protocol.model import MAX_TOKEN_TTL
from ecs_imds.protocol.tokens import KeyRing, TokenKey, keys_to_keep
from ecs_imds.store.keys import ensure_token_keys, rotate_token_key
from ecs_imds.store.sqlite import SQLiteStore
from fleets import NOW

KEY = TokenKey(kid=7, secret=b"s" * 32, created_at=NOW - 1000)
RING = KeyRing([KEY])
ME = "i-me0001"
OTHER = "i-other0001"
TOKEN = RING.mint(ME, NOW, 60, nonce=12345)
ALPHABET = string.ascii_letters + string.digits + "-_"


def test_token_shape() -> None:
    token = RING.mint(ME, NOW, MAX_TOKEN_TTL)
    assert len(token) == 64 and len(token.encode()) <= 128
    assert token.isascii() and set(token) <= set(ALPHABET)


def test_valid_token_verifies_for_its_instance_only() -> None:
    assert RING.verify(TOKEN, ME, NOW)
    assert not RING.verify(TOKEN, OTHER, NOW)
    assert not RING.verify(TOKEN, ME + "1", NOW)
    assert not RING.verify(TOKEN, "", NOW)


def test_expiry_boundary() -> None:
    token = RING.mint(ME, NOW, 60)
    assert RING.verify(token, ME, NOW + 59)
    assert not RING.verify(token, ME, NOW + 60)
    assert not RING.verify(token, ME, NOW + 10**6)
    one = RING.mint(ME, NOW, 1)
    assert RING.verify(one, ME, NOW)
    assert not RING.verify(one, ME, NOW + 1)


@pytest.mark.parametrize("ttl", [0, -1, MAX_TOKEN_TTL + 1])
def test_mint_refuses_ttl_out_of_range(ttl: int) -> None:
    with pytest.raises(ValueError):
        RING.mint(ME, NOW, ttl)


def test_tokens_are_unique() -> None:
    assert len({RING.mint(ME, NOW, 60) for _ in range(100)}) == 100


def test_same_nonce_same_token_and_instance_bound_by_mac() -> None:
    assert RING.mint(ME, NOW, 60, nonce=12345) == TOKEN
    # the instance id is not inside the token, only in its MAC
    assert RING.mint(OTHER, NOW, 60, nonce=12345)[:21] == TOKEN[:21]
    assert RING.mint(OTHER, NOW, 60, nonce=12345) != TOKEN


def test_any_server_with_the_key_ring_verifies() -> None:
    """Stateless: a second ring built from the same keys (another server, or after a
    restart) verifies; a ring with another secret under the same kid does not."""
    assert KeyRing([TokenKey(7, b"s" * 32, 0)]).verify(TOKEN, ME, NOW)
    assert not KeyRing([TokenKey(7, b"t" * 32, 0)]).verify(TOKEN, ME, NOW)
    assert not KeyRing([TokenKey(8, b"s" * 32, 0)]).verify(TOKEN, ME, NOW)


@given(st.integers(0, 63), st.sampled_from(ALPHABET + "=+/. \0é"))
def test_any_single_character_change_fails(position: int, char: str) -> None:
    if TOKEN[position] == char:
        return
    tampered = TOKEN[:position] + char + TOKEN[position + 1:]
    assert not RING.verify(tampered, ME, NOW)


@given(st.text(max_size=200))
def test_garbage_never_raises(garbage: str) -> None:
    assert RING.verify(garbage, ME, NOW) is (garbage == TOKEN)


@given(st.text(ALPHABET, min_size=64, max_size=64))
def test_well_shaped_garbage_never_raises(garbage: str) -> None:
    assert RING.verify(garbage, ME, NOW) is (garbage == TOKEN)


@pytest.mark.parametrize("bad", ["", TOKEN[:-1], TOKEN + "A", TOKEN + "\n", " " + TOKEN[1:],
                                 TOKEN.upper(), TOKEN[::-1]])
def test_near_misses_fail(bad: str) -> None:
    assert not RING.verify(bad, ME, NOW)


def test_empty_key_ring_refused() -> None:
    with pytest.raises(ValueError):
        KeyRing([])


def test_newest_key_mints_all_keys_verify() -> None:
    old = TokenKey(1, b"a" * 32, NOW - 100)
    new = TokenKey(2, b"b" * 32, NOW - 10)
    ring = KeyRing([new, old])
    assert ring.current == new
    assert ring.kids == [1, 2]
    old_token = KeyRing([old]).mint(ME, NOW - 50, 3600)
    new_token = ring.mint(ME, NOW, 3600)
    assert ring.verify(old_token, ME, NOW)
    assert ring.verify(new_token, ME, NOW)
    assert not KeyRing([old]).verify(new_token, ME, NOW)  # minted with the new key
    assert KeyRing([new]).verify(new_token, ME, NOW)


# --- rotation ------------------------------------------------------------------------------
def test_keys_to_keep() -> None:
    k1 = TokenKey(1, b"1" * 32, 0)
    k2 = TokenKey(2, b"2" * 32, 1000)
    k3 = TokenKey(3, b"3" * 32, 1000 + MAX_TOKEN_TTL)
    assert keys_to_keep([k1], 10**9) == [k1]
    # k1 minted until k2 came: its tokens live until 1000 + MAX_TOKEN_TTL
    assert keys_to_keep([k2, k1], 1000) == [k1, k2]
    assert keys_to_keep([k1, k2], 1000 + MAX_TOKEN_TTL - 1) == [k1, k2]
    assert keys_to_keep([k1, k2], 1000 + MAX_TOKEN_TTL) == [k2]
    assert keys_to_keep([k1, k2, k3], 1000 + MAX_TOKEN_TTL) == [k2, k3]
    assert keys_to_keep([k1, k2, k3], 1000 + 2 * MAX_TOKEN_TTL) == [k3]


def test_no_live_token_outlives_its_key() -> None:
    """A token minted by the old key just before rotation, with the longest TTL, stays valid
    exactly as long as keys_to_keep keeps the old key."""
    old = TokenKey(1, b"1" * 32, NOW)
    rotated_at = NOW + 500
    token = KeyRing([old]).mint(ME, rotated_at - 1, MAX_TOKEN_TTL)
    new = TokenKey(2, b"2" * 32, rotated_at)
    for now in (rotated_at, rotated_at + MAX_TOKEN_TTL - 2):
        ring = KeyRing(keys_to_keep([old, new], now))
        assert ring.verify(token, ME, now)
    expiry = rotated_at - 1 + MAX_TOKEN_TTL
    assert not KeyRing([old, new]).verify(token, ME, expiry)  # expired anyway


def test_rotation_through_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "imds.db")
    first = ensure_token_keys(store, now=NOW)
    assert [k.kid for k in first] == [1]
    assert ensure_token_keys(store, now=NOW + 5) == first  # made once
    old_token = KeyRing(store.token_keys()).mint(ME, NOW, MAX_TOKEN_TTL)

    second = rotate_token_key(store, now=NOW + 100)
    ring = KeyRing(store.token_keys())
    assert second.kid == 2 and ring.kids == [1, 2]
    assert ring.current.kid == 2
    new_token = ring.mint(ME, NOW + 100, 60)
    assert ring.verify(old_token, ME, NOW + 100)
    assert ring.verify(new_token, ME, NOW + 100)
    assert KeyRing([second]).verify(new_token, ME, NOW + 100)

    # while key 2's successor is younger than the longest TTL, key 2 stays
    rotate_token_key(store, now=NOW + 200)
    assert KeyRing(store.token_keys()).kids == [1, 2, 3]
    # once key 2 is older than that, key 1's tokens have all expired: key 1 is dropped
    rotate_token_key(store, now=NOW + 100 + MAX_TOKEN_TTL)
    ring = KeyRing(store.token_keys())
    assert ring.kids == [2, 3, 4]
    assert not ring.verify(old_token, ME, NOW + 50)  # its key is gone
    assert ring.verify(new_token, ME, NOW + 150)

    # the ring survives reopening the store (another server, a restart)
    store.close()
    again = KeyRing(SQLiteStore(tmp_path / "imds.db").token_keys())
    assert again.kids == [2, 3, 4]
    assert again.verify(new_token, ME, NOW + 150)


@given(instance_id=st.from_regex(r"i-[a-z0-9]{1,40}", fullmatch=True),
       ttl=st.integers(1, MAX_TOKEN_TTL), minted=st.integers(0, 2**31),
       later=st.integers(0, 2 * MAX_TOKEN_TTL))
def test_a_token_lives_exactly_its_ttl(instance_id: str, ttl: int, minted: int,
                                       later: int) -> None:
    token = RING.mint(instance_id, minted, ttl)
    assert RING.verify(token, instance_id, minted + later) is (later < ttl)
    assert not RING.verify(token, instance_id + "0", minted)
