#!/usr/bin/python3
"""The WebSocket core of presenced through Python's `websockets` (Debian's python3-websockets
10.4), an implementation independent of Node's `ws`: handshake, text round trips, fragmented
sends, control ping/pong, messages at the size limit, close code echo, 1009 on an oversize
message, 1003 on binary, many concurrent clients, and shutdown (1001, then exit 0).

Runs the real daemon (PRESENCED_BIN) on 127.0.0.1:0. Every test is bounded in time. Prints a
summary line; exits non-zero on any failure, including a non-zero daemon exit (a leak under
ASan) at the end.
"""
import asyncio
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

import websockets
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PRESENCED_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("PRESENCED_BIN") or os.path.join(SRC, "build-integ", "presenced")
MAX_MESSAGE = 16 * 1024
PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer")


class Daemon:
    """presenced on an ephemeral port; stderr collected by a reader thread."""

    def __init__(self, flags, start_timeout=15.0):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        self.proc = subprocess.Popen(
            [BIN, "--listen", "127.0.0.1:0", "--dev-auth", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.lines = []
        self.port = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(start_timeout) or self.port is None:
            self.proc.kill()
            raise RuntimeError("presenced did not start:\n" + self.tail())

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()  # EOF: the process is gone

    def tail(self, n=60):
        return "\n".join(self.lines[-n:])

    def url(self, user="py", path="/presence"):
        return f"ws://127.0.0.1:{self.port}{path}?user={user}"

    def stop(self, timeout=15.0, signal_it=True):
        """SIGTERM (unless already sent: a second one during the exit would kill it); returns
        the exit code, or None if it had to be killed after timeout."""
        if signal_it and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


DAEMON = None


def bounded(seconds):
    """Fails the test if it runs longer than seconds."""
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, *args):
            await asyncio.wait_for(fn(self, *args), seconds)
        return wrapper
    return deco


class connect:
    """async with connect(user) as ws: an open client past the server's welcome message
    (docs/PROTOCOL.md: the first message, naming the user)."""

    def __init__(self, user="py", **kw):
        self.user = user
        opts = dict(ping_interval=None, open_timeout=5, close_timeout=5, max_size=2 ** 20)
        opts.update(kw)
        self.cm = websockets.connect(DAEMON.url(user), **opts)

    async def __aenter__(self):
        ws = await self.cm.__aenter__()
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome", welcome
        assert welcome["user_id"] == self.user, welcome
        return ws

    async def __aexit__(self, *exc):
        return await self.cm.__aexit__(*exc)


def ping_of_size(n):
    """A JSON ping of exactly n bytes, padded with JSON whitespace."""
    s = '{"type":"ping"' + " " * (n - len(PING)) + "}"
    assert len(s.encode()) == n
    return s


class WsCore(unittest.IsolatedAsyncioTestCase):

    @bounded(10)
    async def test_handshake(self):
        # Default options offer permessage-deflate: the server must not accept an extension.
        async with websockets.connect(DAEMON.url("hs"), ping_interval=None, open_timeout=5) as ws:
            self.assertTrue(ws.open)
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(welcome["type"], "welcome")
            self.assertEqual(welcome["user_id"], "hs")
            self.assertEqual(ws.response_headers["Upgrade"].lower(), "websocket")
            self.assertEqual(ws.extensions, [])
            self.assertIsNone(ws.subprotocol)
            self.assertNotIn("Sec-WebSocket-Extensions", ws.response_headers)

    @bounded(10)
    async def test_text_round_trip(self):
        async with connect("rt") as ws:
            for _ in range(20):
                await ws.send(PING)
                self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)
            await ws.send('{"type":"nope"}')
            err = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(err["type"], "error")
            self.assertEqual(err["code"], "unknown_type")
            self.assertIsInstance(err["message"], str)
            await ws.send("{broken")
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5))["code"], "bad_json")
            # Non-ASCII text survives the round trip through the validator.
            await ws.send('{"type":"ping","id":"Zoë ✓ 𝄞"}')
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5)),
                             {"type": "pong", "id": "Zoë ✓ 𝄞"})

    @bounded(10)
    async def test_fragmented_send(self):
        async with connect("frag") as ws:
            await ws.send(['{"type"', ':"pi', 'ng"}'])  # an iterable goes out as fragments
            self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)
            await ws.send(['{"type":"ping","id":"é', '€', '𝄞"}'])
            self.assertEqual(json.loads(await asyncio.wait_for(ws.recv(), 5)),
                             {"type": "pong", "id": "é€𝄞"})
            big = ping_of_size(MAX_MESSAGE)
            await ws.send([big[i:i + 1000] for i in range(0, len(big), 1000)])
            self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)

            async def parts():
                for p in ('{"type":', '"ping"', "}"):
                    yield p
            await ws.send(parts())  # an async iterable too
            self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)

    @bounded(10)
    async def test_ping_pong(self):
        async with connect("pp") as ws:
            for payload in (b"hello", b"", b"x" * 125, bytes(range(100))):
                waiter = await ws.ping(payload)
                await asyncio.wait_for(waiter, 5)  # completes only on the matching pong
            waiters = [await ws.ping() for _ in range(10)]  # random payloads, all in flight
            await asyncio.wait_for(asyncio.gather(*waiters), 5)
            await ws.pong(b"unsolicited")  # ignored by the server
            await ws.send(PING)
            self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)

    @bounded(10)
    async def test_large_message(self):
        async with connect("large") as ws:
            for n in (MAX_MESSAGE - 1, MAX_MESSAGE, 126, 65535 % MAX_MESSAGE):
                await ws.send(ping_of_size(n))
                self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG, n)

    @bounded(10)
    async def test_close_code_echo(self):
        for code, reason in ((1000, ""), (1001, "away"), (3000, "app"), (4321, "bye")):
            async with connect("close") as ws:
                await ws.close(code=code, reason=reason)
                self.assertEqual(ws.close_code, code)
                self.assertIn(ws.close_reason, ("", reason))

    @bounded(10)
    async def test_oversize_1009(self):
        async with connect("big") as ws:
            await ws.send(ping_of_size(MAX_MESSAGE + 1))
            with self.assertRaises(ConnectionClosedError) as cm:
                await asyncio.wait_for(ws.recv(), 5)
            self.assertEqual(cm.exception.rcvd.code, 1009)
            self.assertEqual(cm.exception.rcvd.reason, "message too big")
        # Over the limit in fragments.
        async with connect("big2") as ws:
            over = ping_of_size(MAX_MESSAGE + 1)
            try:
                await ws.send([over[:10000], over[10000:]])
            except ConnectionClosed:
                pass  # the server may close before the last fragment is out
            with self.assertRaises(ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 5)
            self.assertEqual(ws.close_code, 1009)

    @bounded(10)
    async def test_binary_1003(self):
        async with connect("bin") as ws:
            await ws.send(b"\x00\x01binary")
            with self.assertRaises(ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 5)
            self.assertEqual(ws.close_code, 1003)

    @bounded(20)
    async def test_many_clients(self):
        async def one(i):
            async with connect(f"many{i}") as ws:
                for _ in range(5):
                    await ws.send(PING)
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 5), PONG)
        await asyncio.gather(*(one(i) for i in range(50)))


async def shutdown_check():
    """A connected client gets 1012 on SIGTERM (a drain); returns (close code, reason, daemon
    exit code)."""
    async with connect("last") as ws:
        await ws.send(PING)
        assert await asyncio.wait_for(ws.recv(), 5) == PONG
        DAEMON.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed:
            pass
        code, reason = ws.close_code, ws.close_reason
    rc = await asyncio.get_running_loop().run_in_executor(None, DAEMON.stop, 15.0, False)
    return code, reason, rc


def main():
    global DAEMON
    t0 = time.monotonic()
    DAEMON = Daemon(["--max-message", str(MAX_MESSAGE), "--close-timeout", "2",
                     "--offline-grace", "1"])
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(WsCore)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failures = len(result.failures) + len(result.errors)
    problems = []
    try:
        code, reason, rc = asyncio.run(asyncio.wait_for(shutdown_check(), 30))
        if code != 1012 or reason != "server restarting: reconnect":
            problems.append(f"shutdown: client closed with {code} {reason!r}, expected 1012")
    except Exception as e:  # noqa: BLE001 - any failure here is reported, then fails the run
        problems.append(f"shutdown check failed: {e!r}")
        rc = DAEMON.stop(15.0)
    if rc != 0:
        problems.append(f"presenced exited with {rc}")
    log = "\n".join(DAEMON.lines)
    if SANITIZER.search(log):
        problems.append("sanitizer report in the daemon log")
    for p in problems:
        print("FAIL:", p)
    if failures or problems:
        print("--- presenced log (tail) ---\n" + DAEMON.tail(80))
    passed = result.testsRun - failures
    print(f"test_ws_python: {passed}/{result.testsRun} tests passed, "
          f"{len(problems)} shutdown problem(s), daemon exit {rc}, "
          f"{time.monotonic() - t0:.1f} s")
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
