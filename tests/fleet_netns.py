"""A hypervisor host of a fleet, as network namespaces: `netns.Topology` (the server's
namespace with 100.100.100.200, a VPC bridge and its instances) plus, optionally, a second
VPC whose addresses overlap the first one's, reached through a per-host proxy.

    instance ns a (192.168.0.10) --+ br0 192.168.0.1/24   server ns (listeners: VPC 1 on
                                                          100.100.100.200:80, VPC 2 on
                                                          169.254.100.2:80)
                                                             | vprx 169.254.100.2/30
    proxy ns: lo 100.100.100.200, br0 192.168.0.1/24         |
              eth-srv 169.254.100.1/30 ----------------------+
    instance ns z (192.168.0.10) --+ (the proxy's br0)

The proxy namespace is VPC 2's side of the host: its instances talk to 100.100.100.200:80
there, where `proxy_v2.py` forwards them to the server with a PROXY v2 header. Two hosts
are two `FleetHost`s; they share nothing but the database (a unix socket).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from netns import GATEWAY_IP, SERVER_IP, VPC_SUBNET, Namespace, Topology, _ip, _validate

PROXY_IP = "169.254.100.1"
SERVER_TRANSIT_IP = "169.254.100.2"
PROXY_TOOL = str(Path(__file__).with_name("proxy_v2.py"))


class FleetHost(Topology):
    def __init__(self, instances: Mapping[str, str],
                 proxied: Mapping[str, str] | None = None) -> None:
        super().__init__(instances)
        proxied = dict(proxied or {})
        _validate(proxied, VPC_SUBNET, reserved={GATEWAY_IP})
        if clash := set(proxied) & {*instances, "prx"}:
            raise ValueError(f"names used twice: {sorted(clash)}")
        self._proxied = proxied
        self.proxy: Namespace | None = (
            Namespace(self, f"{self.prefix}-prx", PROXY_IP) if proxied else None)
        for name, ip in proxied.items():
            self.instances[name] = Namespace(self, f"{self.prefix}-{name}", ip)

    def _build(self) -> None:
        super()._build()
        if self.proxy is None:
            return
        prx, srv = self.proxy.ns, self.server.ns
        self._add_ns(prx)
        _ip("-n", prx, "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
        self._add_bridge(prx, "br0", f"{GATEWAY_IP}/24")
        _ip("-n", srv, "link", "add", "vprx", "type", "veth",
            "peer", "name", "eth-srv", "netns", prx)  # fmt: skip
        _ip("-n", srv, "addr", "add", f"{SERVER_TRANSIT_IP}/30", "dev", "vprx")
        _ip("-n", srv, "link", "set", "vprx", "up")
        _ip("-n", prx, "addr", "add", f"{PROXY_IP}/30", "dev", "eth-srv")
        _ip("-n", prx, "link", "set", "eth-srv", "up")
        for index, name in enumerate(self._proxied):
            self._add_host(self.instances[name], prx, f"p{index}", "br0", GATEWAY_IP)

    def start_proxy(self, upstream_port: int = 80) -> None:
        """Run the per-host proxy: 100.100.100.200:80 in VPC 2 → the server's transit
        address, with a PROXY v2 header."""
        assert self.proxy is not None
        self.proxy.popen([sys.executable, PROXY_TOOL, SERVER_IP, "80", SERVER_TRANSIT_IP,
                          str(upstream_port)])
        self.proxy.wait_for_tcp(SERVER_IP, 80)

