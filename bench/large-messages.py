#!/usr/bin/env python3
"""Large messages without large memory: bursts of big messages through the relay.

Usage: bench/large-messages.py --bin target/release/smarthost [-c 40] [--size-mib 20]
                               [--bursts 2] [--settle 30] [--timeout 600]

Starts the relay (queue mode, configured by environment variables, a scratch spool)
and an in-process SMTP sink on 127.0.0.1, then sends `--bursts` bursts of `-c`
concurrent clients, each handing over one `--size-mib` MiB message (7-bit, base64
lines, a unique body per message). Between and after bursts it waits until the sink
has every message, then `--settle` seconds. The relay's VmRSS is sampled every 50 ms
from /proc.

Reported: peak RSS during each burst, RSS at the end of each settle period, how long
after the last delivery RSS fell below 64 MiB, and whether every message arrived with
its body byte-identical (SHA-256 of the body as sent vs as received; the relay adds
header fields only). Exit status 0 only if every message arrived intact.
Everything binds to 127.0.0.1; every wait is bounded by --timeout.
"""
import argparse
import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_split(pid):
    """Anonymous and file-backed resident memory in MiB, from /proc/PID/smaps_rollup."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":"):
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        return "n/a"
    return f"anonymous {fields.get('Anonymous', 0) / 1024:.0f} MiB, file {fields.get('Rss', 0) / 1024 - fields.get('Anonymous', 0) / 1024:.0f} MiB"


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def make_body(index, size):
    """A 7-bit body of about `size` octets: base64 of pseudo-random bytes, 76-char lines."""
    seed = hashlib.sha256(f"large-{index}".encode()).digest()
    raw_len = size * 3 // 4
    chunk = hashlib.sha512(seed).digest() * 1024  # 64 KiB pattern, varied per message
    raw = (chunk * (raw_len // len(chunk) + 1))[:raw_len]
    raw = seed + raw[len(seed):]
    text = base64.b64encode(raw)
    lines = [text[i:i + 76] for i in range(0, len(text), 76)]
    return b"\r\n".join(lines) + b"\r\n"


def split_body(message):
    at = message.find(b"\r\n\r\n")
    return message[at + 4:] if at >= 0 else b""


class Sink:
    """A minimal ESMTP sink: records the SHA-256 of each received body by Message-ID."""

    def __init__(self):
        self.bodies = {}
        self.arrived = asyncio.Event()

    async def handle(self, reader, writer):
        writer.write(b"220 sink.bench ESMTP\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink.bench\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = bytearray()
                    while True:
                        chunk = await reader.readuntil(b"\r\n")
                        if chunk == b".\r\n":
                            break
                        if chunk.startswith(b"."):
                            chunk = chunk[1:]
                        data += chunk
                    message = bytes(data)
                    mid = None
                    for header in message[: message.find(b"\r\n\r\n")].split(b"\r\n"):
                        if header.lower().startswith(b"message-id:"):
                            mid = header.split(b":", 1)[1].strip().decode()
                    self.bodies[mid] = hashlib.sha256(split_body(message)).hexdigest()
                    self.arrived.set()
                    writer.write(b"250 2.0.0 stored\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def expect(reader, code):
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError(f"connection closed, expected {code}")
        if line[3:4] != b"-":
            if not line.startswith(code):
                raise RuntimeError(f"expected {code}, got {line!r}")
            return


async def send_one(port, index, size, expected):
    body = make_body(index, size)
    mid = f"<large-{index}@bench.test>"
    head = (
        f"From: App <app@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: large {index}\r\n"
        f"Message-ID: {mid}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    ).encode()
    expected[mid] = hashlib.sha256(body).hexdigest()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, b"220")
    writer.write(b"EHLO client.bench\r\n")
    await expect(reader, b"250")
    writer.write(b"MAIL FROM:<app@example.com>\r\n")
    await expect(reader, b"250")
    writer.write(b"RCPT TO:<rcpt@example.net>\r\n")
    await expect(reader, b"250")
    writer.write(b"DATA\r\n")
    await expect(reader, b"354")
    writer.write(head)
    step = 256 * 1024
    for at in range(0, len(body), step):
        writer.write(body[at:at + step])  # no line starts with "." in base64
        await writer.drain()
    writer.write(b".\r\n")
    await expect(reader, b"250")
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def sample(pid, samples, stop):
    while not stop.is_set():
        value = rss_kib(pid)
        if value is not None:
            samples.append((time.monotonic(), value))
        await asyncio.sleep(0.05)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("-c", type=int, default=40)
    p.add_argument("--size-mib", type=float, default=20)
    p.add_argument("--bursts", type=int, default=2)
    p.add_argument("--settle", type=float, default=30)
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args()
    # The relay runs in its own work directory: a relative path is taken from here.
    a.bin = os.path.abspath(a.bin)
    size = int(a.size_mib * 1024 * 1024)

    sink = Sink()
    sink_port = free_port()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", sink_port, limit=1 << 20)
    relay_port = free_port()
    work = tempfile.mkdtemp(prefix="smarthost-large-")
    env = dict(os.environ)
    env.update({
        "SMARTHOST_LOG": "warn",
        "SMARTHOST__SERVER__LISTEN": f"127.0.0.1:{relay_port}",
        "SMARTHOST__SERVER__TRUSTED_NETWORKS": "127.0.0.0/8",
        "SMARTHOST__SPOOL__DIR": f"{work}/spool",
        "SMARTHOST__UPSTREAM__0__URL": f"smtp://127.0.0.1:{sink_port}?tls=none",
    })
    relay = subprocess.Popen([a.bin, "serve"], env=env, cwd=work)
    samples, stop = [], asyncio.Event()
    sampler = asyncio.create_task(sample(relay.pid, samples, stop))
    deadline = time.monotonic() + a.timeout
    ok = True
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", relay_port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        print(f"relay pid {relay.pid}, RSS at start {rss_kib(relay.pid) / 1024:.1f} MiB")
        expected = {}
        for burst in range(a.bursts):
            first = len(samples)
            started = time.monotonic()
            base = burst * a.c
            await asyncio.wait_for(
                asyncio.gather(*(send_one(relay_port, base + i, size, expected) for i in range(a.c))),
                timeout=max(1, deadline - time.monotonic()),
            )
            accepted = time.monotonic() - started
            while len(sink.bodies) < len(expected):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(sink.bodies)} of {len(expected)} delivered")
                sink.arrived.clear()
                try:
                    await asyncio.wait_for(sink.arrived.wait(), 1)
                except asyncio.TimeoutError:
                    pass
            delivered_at = time.monotonic()
            peak = max(v for _, v in samples[first:]) if samples[first:] else 0
            below_64 = None
            while time.monotonic() - delivered_at < a.settle:
                await asyncio.sleep(0.1)
                if below_64 is None and rss_kib(relay.pid) < 64 * 1024:
                    below_64 = time.monotonic() - delivered_at
            after = rss_kib(relay.pid)
            mb = a.c * size / 1024 / 1024
            print(
                f"burst {burst + 1}: {a.c} x {a.size_mib:g} MiB accepted in {accepted:.1f}s, "
                f"all delivered after {delivered_at - started:.1f}s ({mb / (delivered_at - started):.0f} MiB/s); "
                f"peak RSS {peak / 1024:.0f} MiB; RSS {a.settle:g}s after the last delivery "
                f"{after / 1024:.0f} MiB; below 64 MiB "
                + (f"{below_64:.1f}s after" if below_64 is not None else "never")
                + f" the last delivery ({memory_split(relay.pid)}, {threads(relay.pid)} threads)"
            )
        intact = sum(1 for mid, digest in expected.items() if sink.bodies.get(mid) == digest)
        print(f"bodies intact: {intact} of {len(expected)}")
        ok = intact == len(expected)
    finally:
        stop.set()
        await sampler
        relay.terminate()
        for _ in range(400):  # let the sink see the relay's connections close
            if relay.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if relay.poll() is None:
            relay.kill()
        await asyncio.sleep(0.2)
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
