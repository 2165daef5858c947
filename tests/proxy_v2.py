"""A minimal per-host proxy for the tests: accepts instances' connections on LISTEN, opens
one to UPSTREAM per connection, sends a PROXY protocol v2 header naming the instance, then
copies bytes both ways until either side closes.

    python proxy_v2.py LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from ecs_imds.dataplane.proxy import header


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def main(listen: str, port: int, upstream: str, upstream_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client, client_port = writer.get_extra_info("peername")[:2]
        local, local_port = writer.get_extra_info("sockname")[:2]
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream, upstream_port)
        except OSError:
            writer.close()
            return
        up_writer.write(header(client, local, client_port, local_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, up, up_port = sys.argv[1:5]
    asyncio.run(main(host, int(port), up, int(up_port)))
