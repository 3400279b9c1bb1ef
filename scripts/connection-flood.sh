#!/usr/bin/env bash
# The idle-connection flood of the hostile-clients review, as a repeatable figure: one address
# (127.0.0.2) opens N kept-alive connections, each asks for /healthz once and then idles; then
# another client (127.0.0.3) asks for /healthz on a fresh connection, ten times, and the script
# prints how long each answer took (or "none within 10 s").
#
#   ./scripts/connection-flood.sh [N]     N idle connections, default 10000
#
# The gate runs with its defaults (FLASHGATE_MAX_CONNECTIONS, FLASHGATE_MAX_CONNECTIONS_PER_CLIENT
# and the rest) unless the environment sets them; FLASHGATE_GATE_BIN runs another build's gate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run flood
ulimit -n "$(ulimit -Hn)"
port=$(flashgate_free_port)
flashgate_start_gate "$port"
python3 - "$port" "${1:-10000}" <<'PY'
import asyncio, sys, time

port, flood = int(sys.argv[1]), int(sys.argv[2])
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gate\r\n\r\n"

async def ask(source, timeout):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    await asyncio.wait_for(reader.readexactly(length), timeout)
    return reader, writer

async def main():
    held, failed = [], 0
    started = time.monotonic()
    for batch in range(0, flood, 500):
        results = await asyncio.gather(
            *(ask("127.0.0.2", 10) for _ in range(min(500, flood - batch))),
            return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                failed += 1
            else:
                held.append(result)
    print(f"flood: {len(held)} idle connections from 127.0.0.2 in {time.monotonic() - started:.1f} s "
          f"({failed} not served within 10 s)")
    for attempt in range(10):
        t = time.monotonic()
        try:
            _, writer = await ask("127.0.0.3", 10)
            print(f"another client: answered in {(time.monotonic() - t) * 1000:.1f} ms")
            writer.close()
        except Exception as err:
            print(f"another client: none within 10 s ({type(err).__name__})")
    alive = 0
    for reader, _ in held:
        try:
            data = await asyncio.wait_for(reader.read(1), 0.001)
            alive += 0 if data == b"" else 1
        except asyncio.TimeoutError:
            alive += 1
    print(f"flood connections still open afterwards: {alive} of {len(held)}")

asyncio.run(main())
PY
