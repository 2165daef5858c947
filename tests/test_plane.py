"""dataplane.plane: what a data plane keeps about its callers, and forgets."""

from __future__ import annotations

from ipaddress import ip_network

from ecs_imds.config import Limits
from ecs_imds.dataplane.memory import CHURN
from ecs_imds.dataplane.plane import ListenerState
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.protocol.catalogue import Leaf
from ecs_imds.protocol.decide import Request, decide, throttled
from fleets import NOW, snapshot_of
from test_fastpath import plane_of

WEB = "i-bp1demo0000000000001"
LISTENER = ListenerState(DEMO_VPC, {})


def test_a_deleted_instance_leaves_no_rate_limit_behind() -> None:
    """A new snapshot drops the buckets of instances no longer in it: an instance created
    later under the same id starts with a full bucket, and memory does not grow with churn."""
    plane = plane_of(Limits(rate=1, burst=1))
    caller = plane.snapshot.by_id[WEB]
    req = Request.of("GET", "/latest/meta-data/instance-id")
    assert isinstance(decide(req, caller, plane.snapshot, NOW, plane.limiter), Leaf)
    assert decide(req, caller, plane.snapshot, NOW, plane.limiter) == throttled(1)
    fleet = demo_fleet()
    fleet["instances"] = [i for i in fleet["instances"] if i["instance-id"] != WEB]
    plane.install(snapshot_of(fleet))
    plane.install(snapshot_of(demo_fleet()))
    caller = plane.snapshot.by_id[WEB]
    assert isinstance(decide(req, caller, plane.snapshot, NOW, plane.limiter), Leaf)


def test_connections_are_counted_per_source_and_in_all() -> None:
    plane = plane_of(Limits(connections_per_source=2, max_connections=3))
    assert plane.admit("10.0.0.1", LISTENER) and plane.admit("10.0.0.1", LISTENER)
    assert not plane.admit("10.0.0.1", LISTENER)  # its cap
    assert plane.admit("10.0.0.2", LISTENER)  # another source
    assert not plane.admit("10.0.0.3", LISTENER)  # the total
    plane.release("10.0.0.1")
    assert plane.admit("10.0.0.1", LISTENER)
    for source in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        plane.release(source)
    assert plane.open == 0 and plane.per_source == {}


def test_a_trusted_proxy_is_bound_only_by_the_total() -> None:
    """A per-host proxy carries many instances' connections from one address."""
    plane = plane_of(Limits(connections_per_source=1, max_connections=4))
    proxied = ListenerState(DEMO_VPC, {}, (ip_network("169.254.100.1/32"),))
    assert all(plane.admit("169.254.100.1", proxied) for _ in range(4))
    assert not plane.admit("169.254.100.1", proxied)
    plane2 = plane_of(Limits(connections_per_source=1, max_connections=4))
    assert plane2.admit("169.254.100.2", proxied)
    assert not plane2.admit("169.254.100.2", proxied)  # not trusted: one source's cap


def test_the_total_stays_below_the_descriptor_limit() -> None:
    import resource

    plane = plane_of(Limits(max_connections=10**9))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert plane.max_connections < soft  # raised to the hard limit, minus a reserve


def test_connections_that_end_with_answers_backed_up_are_a_burst_sooner() -> None:
    """A peer that never reads holds its 64 connections, each with up to the write buffer
    unsent, and lets them go at once: that is memory worth giving back, as much as many
    times more ordinary connections leave."""
    plane = plane_of()
    for _ in range(64):
        assert plane.admit("10.0.0.1", LISTENER)
    for n in range(64):
        plane.release("10.0.0.1", backed_up=n % 2 == 0)
    assert plane.trimmer.ended >= CHURN > 64  # the sweeper's next tick trims
    assert plane.open == 0 and plane.per_source == {}
