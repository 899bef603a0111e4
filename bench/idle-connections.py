#!/usr/bin/env python3
"""Hold N idle SMTP connections open against a relay and report its memory.

Usage: bench/idle-connections.py --pid PID [--host 127.0.0.1] [--port 2525] [-n 10000]

Opens N connections (each reads the 220 greeting and sends EHLO, then stays idle),
samples the relay's VmRSS / VmHWM and Pss from /proc/PID, prints them, and closes
everything. Bounded: it gives up after --timeout seconds. Raise `ulimit -n` for both
this script and the relay first (the relay also needs server.max_connections and
server.max_connections_per_client >= N).
"""
import argparse
import asyncio
import resource
import time


def memory(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return status.get("VmRSS"), status.get("VmHWM"), pss


async def one(host, port, ready, hold):
    reader, writer = await asyncio.open_connection(host, port)
    greeting = await reader.readline()
    if not greeting.startswith(b"220"):
        raise RuntimeError(f"unexpected greeting {greeting!r}")
    writer.write(b"EHLO idle.bench\r\n")
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line or line[3:4] == b" ":
            break
    ready.append(1)
    await hold.wait()
    writer.write(b"QUIT\r\n")
    try:
        await writer.drain()
        writer.close()
    except Exception:
        pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.n + 1024), hard))
    before = memory(a.pid)
    ready, hold = [], asyncio.Event()
    start = time.monotonic()
    tasks = []
    for i in range(a.n):
        tasks.append(asyncio.create_task(one(a.host, a.port, ready, hold)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    while len(ready) < a.n and time.monotonic() - start < a.timeout:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise failed[0].exception()
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    during = memory(a.pid)
    print(f"connections open: {len(ready)} of {a.n} in {time.monotonic() - start:.1f}s")
    print(f"relay before: VmRSS {before[0]}, Pss {before[2]} kB")
    print(f"relay with {len(ready)} idle connections: VmRSS {during[0]}, VmHWM {during[1]}, Pss {during[2]} kB")
    hold.set()
    await asyncio.wait(tasks, timeout=30)


asyncio.run(main())
