"""snapshot.Index: patching the previous indexes gives what indexing everything gives."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ecs_imds.protocol.snapshot import Index, index


class Item:
    """Stands for a rendered or deferred instance: an id, a VPC, an identity."""

    def __init__(self, instance_id: str, vpc_id: str) -> None:
        self.instance_id = instance_id
        self.vpc_id = vpc_id


IDS = [f"i-{n}" for n in range(8)]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "::ffff:10.0.0.5",
             "2408::1", "2408:0:0::1", "10.0.0.6", "10.0.0.7"]

steps = st.lists(st.tuples(
    st.sampled_from(["put", "put", "put", "delete", "same"]),
    st.sampled_from(IDS),
    st.sampled_from(["vpc-a", "vpc-a", "vpc-b"]),
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3),
), max_size=40)


@settings(max_examples=500)
@given(steps, st.booleans())
def test_patched_indexes_are_the_indexes(operations: list[tuple[str, str, str, list[str]]],
                                         told: bool) -> None:
    """With `told`, each update is told the one id it touched, as the builder tells it."""
    cache: dict[str, tuple[int, Any, tuple[str, ...]]] = {}
    idx = Index()
    for revision, (op, iid, vpc, addresses) in enumerate(operations):
        if op == "put":
            cache[iid] = (revision, Item(iid, vpc), tuple(addresses))
        elif op == "delete":
            cache.pop(iid, None)
        by_address, by_id = idx.update(cache, [iid] if told else None)
        want_address, want_id = index((item, addrs) for _, item, addrs in cache.values())
        assert by_address == want_address
        assert list(by_id.items()) == list(want_id.items())


def test_a_few_changes_patch_the_indexes_in_place() -> None:
    """The snapshot being served sees a change without a copy of the fleet's dicts; a
    double claim indexes everything again into new dicts, and the served ones stay."""
    a, b = Item("i-a", "vpc-1"), Item("i-b", "vpc-1")
    cache: dict[str, tuple[int, Any, tuple[str, ...]]] = {
        "i-a": (1, a, ("10.0.0.1",)), "i-b": (1, b, ("10.0.0.2",))}
    idx = Index()
    first = idx.update(cache)
    assert idx.update(dict(cache)) == first
    assert idx.update(dict(cache))[0] is first[0]  # nothing changed: the same dicts
    c = Item("i-a", "vpc-1")
    cache["i-a"] = (2, c, ("10.0.0.3",))
    by_address, by_id = idx.update(cache, ["i-a"])
    assert by_address is first[0] and by_id is first[1]
    assert by_address == {("vpc-1", "10.0.0.3"): c, ("vpc-1", "10.0.0.2"): b}
    twice = Item("i-c", "vpc-1")
    cache["i-c"] = (3, twice, ("10.0.0.2",))  # b's address: only `index` knows who has it
    again = idx.update(cache, ["i-c"])
    assert again[0] is not first[0]
    assert first[0] == {("vpc-1", "10.0.0.3"): c, ("vpc-1", "10.0.0.2"): b}  # untouched


class Watched(dict[Any, Any]):
    """A dict that remembers every key taken out of it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.deleted: list[Any] = []

    def __delitem__(self, key: Any) -> None:
        self.deleted.append(key)
        super().__delitem__(key)


def test_an_instance_changed_in_place_is_never_missing() -> None:
    """Entries are replaced, not removed and added again: a request that comes between two
    steps of a patch still finds the instance (old or new), never a 403."""
    a, b = Item("i-a", "vpc-1"), Item("i-b", "vpc-1")
    cache: dict[str, tuple[int, Any, tuple[str, ...]]] = {
        "i-a": (1, a, ("10.0.0.1", "10.0.0.9")), "i-b": (1, b, ("10.0.0.2",))}
    idx = Index()
    by_address, by_id = idx.update(cache)
    watched_address, watched_id = Watched(by_address), Watched(by_id)
    idx._by_address, idx._by_id = watched_address, watched_id
    moved = Item("i-a", "vpc-1")
    cache["i-a"] = (2, moved, ("10.0.0.1", "10.0.0.7"))  # keeps .1, drops .9
    assert idx.update(cache, ["i-a"]) == ({("vpc-1", "10.0.0.1"): moved,
                                           ("vpc-1", "10.0.0.7"): moved,
                                           ("vpc-1", "10.0.0.2"): b}, {"i-a": moved, "i-b": b})
    assert watched_address.deleted == [("vpc-1", "10.0.0.9")]  # only what it no longer has
    assert watched_id.deleted == []
