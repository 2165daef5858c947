"""Set up a fresh user + network namespace as an instance's, then exec the server there.

    python -m ecs_imds.testing.netns_init METADATA_IP INSTANCE_IP -- SERVER ARGV…

Run by `unshare --user --map-root-user --net` (ecs_imds.testing.sandbox). Both addresses go
on the loopback device, and the route to the metadata address prefers the instance's as
its source, so a program connecting to 100.100.100.200 arrives from its own address: the
server tells who it is from the network, as everywhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> None:
    metadata_ip, instance_ip, sep, *server = argv
    if sep != "--" or not server:
        sys.exit(__doc__)
    for command in (["link", "set", "lo", "up"],
                    ["addr", "add", f"{instance_ip}/32", "dev", "lo"],
                    ["addr", "add", f"{metadata_ip}/32", "dev", "lo"],
                    ["route", "replace", "local", metadata_ip, "dev", "lo", "table", "local",
                     "src", instance_ip]):
        subprocess.run(["ip", *command], check=True)
    os.execvp(server[0], server)


if __name__ == "__main__":
    main(sys.argv[1:])
