#!/usr/bin/env bash
# The slow-body attack of the hostile-clients review, as a repeatable figure: one buyer token on
# N connections (default 280, each from its own forwarded address) sends a reserve whose body
# arrives one byte a second, sent again on a new connection once answered; meanwhile 85 other
# buyers reserve once each, spread over 30 s. The script prints what the honest buyers were
# answered.
#
#   ./scripts/slow-bodies.sh [N]
#
# The gate runs with its defaults unless the environment sets them (it trusts this machine as a
# proxy, so every connection is its own client); FLASHGATE_GATE_BIN runs another build's gate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run slowbody
ulimit -n "$(ulimit -Hn)"
export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32 FLASHGATE_BUYER_RATE=0
bin=$FLASHGATE_BIN_DIR/flashgate
"$bin" sku upsert slow --name Slow --price 9.99 --stock 100000 --per-buyer-limit 1000 >/dev/null
"$bin" prewarm --sku slow >/dev/null
port=$(flashgate_free_port)
flashgate_start_gate "$port"
slow_token=$("$bin" token --buyer slowpoke)
honest_tokens=$(for n in $(seq 1 85); do "$bin" token --buyer "honest-$n"; done | paste -sd,)
python3 - "$port" "${1:-280}" "$slow_token" "$honest_tokens" <<'PY'
import asyncio, collections, sys, time

port, slow_count, slow_token, honest = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
BODY = b'{"quantity": 1}'

def head(token, key, source, length):
    return (f"POST /v1/skus/slow/reservations HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
            f"X-Forwarded-For: {source}\r\n\r\n").encode()

async def status_of(reader, timeout):
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return "closed"
    rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    code = line.split()[1].decode()
    body = b""
    for header in rest.split(b"\r\n"):
        if header.lower().startswith(b"content-length"):
            body = await asyncio.wait_for(reader.readexactly(int(header.split(b":")[1])), timeout)
    error = b'"error":"' in body and body.split(b'"error":"')[1].split(b'"')[0].decode()
    return f"{code} {error}" if error else code

async def slow(n, stop):
    """One byte a second; once answered (a timeout, a refusal), the same again on a new connection."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head(slow_token, f"slow-{n}", f"10.{n // 250}.{n % 250}.1", 1000))
            while not stop.is_set():
                writer.write(b" ")
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1), 1)
                    break  # answered or closed
                except asyncio.TimeoutError:
                    pass
            writer.close()
        except Exception:
            await asyncio.sleep(0.1)

async def honest_buyer(n, token, answers):
    await asyncio.sleep(n * 30 / len(honest))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(token, f"honest-{n}", f"172.16.{n}.1", len(BODY)) + BODY)
        answers[await status_of(reader, 15)] += 1
        writer.close()
    except Exception as err:
        answers[f"no answer ({type(err).__name__})"] += 1

async def main():
    stop = asyncio.Event()
    slowpokes = [asyncio.create_task(slow(n, stop)) for n in range(slow_count)]
    await asyncio.sleep(1)
    answers = collections.Counter()
    started = time.monotonic()
    await asyncio.gather(*(honest_buyer(n, t, answers) for n, t in enumerate(honest)))
    stop.set()
    await asyncio.gather(*slowpokes)
    print(f"{slow_count} slow bodies under one token; {len(honest)} honest buyers over "
          f"{time.monotonic() - started:.0f} s answered: {dict(answers)}")

asyncio.run(main())
PY
