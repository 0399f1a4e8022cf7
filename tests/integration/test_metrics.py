#!/usr/bin/python3
"""/metrics of presenced (docs/OPERATIONS.md section 7) before, during and after a scripted
workload, checked counter by counter and gauge by gauge:

  - the whole exposition parses with Prometheus' own parser (Debian's python3-prometheus-client,
    prometheus_client.parser.text_string_to_metric_families), every family has one HELP and
    one TYPE line before its samples, no family appears twice, counters end in _total;
  - phase 1, a workload whose every effect is known in advance: N WebSocket connections
    (python3-websockets), set_online, a subscription, status changes (and ones that change
    nothing), heartbeats, a room join / update / leave, protocol errors of five codes, a binary
    frame (1003), upgrades refused for a bad token and for no credentials (401), a plain GET of
    the WebSocket path (426), an unknown path (404); then everything closed. Each counter must
    move by exactly what the workload did (connections, requests and responses by status,
    upgrades, messages and frame bytes in, messages by type, errors by code, presence changes,
    fan-out deliveries, room joins, leaves and events, auth failures by reason), and each gauge
    must show the workload while it runs and return to its start once it is over (connections,
    WebSockets, sessions, present sessions, subscriptions, users by status, rooms, members);
  - phase 2, a slow consumer: a raw client in a room stops reading while another floods the
    room; it is closed with 1008, counted once in presenced_slow_consumer_closes_total and
    presenced_ws_closes_sent_total{code="1008"}, and the flooder is never refused.

Runs the real daemon (PRESENCED_BIN) on 127.0.0.1:0; every wait is bounded. Prints a summary
line; exits non-zero on any failure, including a non-zero daemon exit (a leak under ASan).
"""
import asyncio
import base64
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import websockets
from prometheus_client.parser import text_string_to_metric_families

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PRESENCED_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("PRESENCED_BIN") or os.path.join(SRC, "build-integ", "presenced")
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer")
GRACE = 0.3  # --offline-grace, s
OUT_MAX = 64 * 1024  # --out-max
N = 5  # users of phase 1


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

    def url(self, user, path="/presence", query=None):
        q = query if query is not None else f"user={user}"
        return f"ws://127.0.0.1:{self.port}{path}?{q}"

    def stop(self, timeout=15.0):
        """SIGTERM; returns the exit code, or None if it had to be killed after timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


DAEMON = None
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


# ---------------------------------------------------------------------------------------------
# Scraping


class Scraper:
    """GET /metrics over one keep-alive connection (so scrapes add no connections of their
    own); counts its requests, which the HTTP counters include."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.count = 0

    def text(self):
        self.conn.request("GET", "/metrics")
        r = self.conn.getresponse()
        body = r.read().decode("utf-8")
        self.count += 1
        assert r.status == 200, r.status
        ctype = r.getheader("Content-Type")
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        return body

    def scrape(self):
        """{(sample name, frozenset of labels): value}, after checking the whole format."""
        return parse_strict(self.text())

    def close(self):
        self.conn.close()


def parse_strict(text):
    """Parses text with prometheus_client and checks the structure; returns the samples."""
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    dups = {n for n in names if names.count(n) > 1}
    check(not dups, f"families appear more than once: {sorted(dups)}")
    for f in families:
        check(f.type in ("counter", "gauge"), f"{f.name}: type {f.type}")
        check(bool(f.documentation), f"{f.name}: no HELP text")
        check(f.name.startswith("presenced_"), f"{f.name}: not under presenced_")
        check(len(f.samples) > 0, f"{f.name}: a family without samples")
    # The parser is lenient about order and missing lines; the text itself must have, for
    # each family, exactly one HELP then one TYPE line, and its samples right after them.
    current = None
    declared = {}
    for line in text.split("\n"):
        if not line:
            continue
        m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$", line)
        if m:
            kind, name, rest = m.groups()
            if kind == "HELP":
                check(name not in declared, f"{name}: HELP twice")
                declared[name] = {"help": rest}
                current = None
            else:
                check(name in declared and "type" not in declared[name], f"{name}: TYPE without a HELP before it")
                declared.setdefault(name, {})["type"] = rest
                check(rest in ("counter", "gauge"), f"{name}: TYPE {rest}")
                if rest == "counter":
                    check(name.endswith("_total"), f"counter {name} does not end in _total")
                current = name
            continue
        check(not line.startswith("#"), f"unexpected comment line {line!r}")
        sm = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        check(sm is not None, f"malformed sample line {line!r}")
        if sm:
            check(sm.group(1) == current, f"sample {line!r} outside its family ({current})")
    samples = {}
    for f in families:
        for s in f.samples:
            key = (s.name, frozenset(s.labels.items()))
            check(key not in samples, f"sample {s.name}{s.labels} twice")
            samples[key] = s.value
    return samples


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(a, b, name, **labels):
    return val(b, name, **labels) - val(a, name, **labels)


def labelled(samples, name):
    """{frozenset(labels): value} of every series of name."""
    return {k[1]: v for k, v in samples.items() if k[0] == name}


# ---------------------------------------------------------------------------------------------
# Clients


def frame_bytes(payload_len):
    """Bytes on the wire of one masked client frame with payload_len bytes."""
    return 2 + 4 + payload_len + (0 if payload_len < 126 else 2 if payload_len <= 0xFFFF else 8)


class Client:
    """A websockets client that keeps its messages, counts the bytes it sends, and answers
    requests by id."""
    seq = 0

    def __init__(self, user, ws, welcome):
        self.user = user
        self.ws = ws
        self.welcome = welcome
        self.msgs = []
        self.sent_bytes = 0  # wire bytes of every frame sent, close frames included
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.event = asyncio.Event()

    @classmethod
    async def open(cls, user, **kw):
        ws = await websockets.connect(DAEMON.url(user), ping_interval=None, open_timeout=5, close_timeout=5,
                                      max_size=2 ** 22, compression=None, **kw)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and welcome["user_id"] == user, welcome
        return cls(user, ws, welcome)

    async def _read(self):
        try:
            async for m in self.ws:
                self.msgs.append(json.loads(m))
                self.event.set()
        except websockets.ConnectionClosed:
            pass
        self.event.set()

    async def send(self, obj):
        s = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        await self.ws.send(s)
        self.sent_bytes += frame_bytes(len(s.encode()))

    async def wait_for(self, pred, timeout=5.0, what="a message"):
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.msgs):
                if pred(m):
                    return self.msgs.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or self.reader.done():
                raise AssertionError(f"{self.user}: no {what} within {timeout} s; have {self.msgs[:5]}")
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def request(self, obj, timeout=5.0):
        Client.seq += 1
        rid = f"m{Client.seq}"
        await self.send({**obj, "id": rid})
        return await self.wait_for(lambda m: m.get("id") == rid, timeout, f"the answer to {obj}")

    async def ok(self, obj):
        a = await self.request(obj)
        assert a["type"] == "ack", f"{obj} answered {a}"
        return a

    async def close(self):
        await asyncio.wait_for(self.ws.close(1000), 5)
        self.sent_bytes += frame_bytes(2)
        await asyncio.wait_for(self.reader, 5)


async def refused_upgrade(query):
    """An upgrade the daemon must refuse with 401."""
    try:
        ws = await websockets.connect(DAEMON.url("x", query=query), ping_interval=None, open_timeout=5)
    except websockets.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


def plain_get(path):
    """GET path on a new connection; returns the status."""
    c = http.client.HTTPConnection("127.0.0.1", DAEMON.port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


async def eventually(f, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Phase 1: a workload with known effects


async def phase1(scr):
    loop = asyncio.get_running_loop()
    base = scr.scrape()
    s0 = scr.count  # scrapes so far (the HTTP counters include them)
    users = [f"m{i}" for i in range(N)]
    ws_bytes = 0

    # N users and one watcher connect; nothing announced yet.
    clients = [await Client.open(u) for u in users]
    watcher = await Client.open("mw")
    conns = N + 1
    mid = scr.scrape()
    for name in ("presenced_connections_open", "presenced_websockets_open", "presenced_sessions"):
        check(delta(base, mid, name) == conns, f"{name}: +{delta(base, mid, name)} with {conns} connections open")
    check(delta(base, mid, "presenced_sessions_present") == 0, "sessions present before any announcement")
    check(delta(base, mid, "presenced_ws_upgrades_total") == conns, "upgrades")
    check(delta(base, mid, "presenced_connections_accepted_total") == conns, "accepted connections (scrapes reuse one)")

    # The watcher subscribes to the users and one never seen; then they announce themselves.
    init = await watcher.request({"type": "subscribe", "user_ids": users + ["ghost", "m0"]})
    check(init["type"] == "initial_presence" and init["presences"] == {}, f"initial presence: {init}")
    for c in clients:
        await c.ok({"type": "set_online", "device": "web"})
    for u in users:
        await watcher.wait_for(lambda m, u=u: m.get("type") == "presence_update" and m["presence"]["user_id"] == u,
                               what=f"{u} online")
    deliveries = N
    changes = N
    mid = scr.scrape()
    check(delta(base, mid, "presenced_subscriptions") == N + 1, f"subscriptions +{delta(base, mid, 'presenced_subscriptions')}")
    check(delta(base, mid, "presenced_sessions_present") == N, "sessions present after set_online")
    check(delta(base, mid, "presenced_users", status="online") == N, "users online")

    # Status changes: two visible, one that changes nothing; heartbeats never count as changes.
    await clients[0].ok({"type": "set_status", "status": "busy"})
    await clients[1].ok({"type": "set_status", "status": "away"})
    await clients[2].ok({"type": "set_status", "status": "online"})
    for _ in range(3):
        await clients[3].send({"type": "heartbeat", "device": "web"})
    await clients[3].request({"type": "ping"})  # the heartbeats are in once this is answered
    changes += 2
    deliveries += 2
    await watcher.wait_for(lambda m: m.get("type") == "presence_update" and m["presence"]["status"] == "busy")
    await watcher.wait_for(lambda m: m.get("type") == "presence_update" and m["presence"]["status"] == "away")
    pong = await watcher.request({"type": "ping"})  # every update queued before it has arrived
    check(pong["type"] == "pong", f"pong {pong}")
    check(not [m for m in watcher.msgs if m.get("type") == "presence_update"],
          f"unexpected updates: {watcher.msgs}")
    mid = scr.scrape()
    for status, n in (("online", N - 2), ("busy", 1), ("away", 1)):
        check(delta(base, mid, "presenced_users", status=status) == n,
              f"users {status}: +{delta(base, mid, 'presenced_users', status=status)}, want {n}")

    # A room: m0 joins, m1 joins (m0 told), m1 updates (m0 told), m1 leaves (m0 told).
    a = await clients[0].request({"type": "join", "channel": "doc:metrics", "metadata": {"mode": "viewing"}})
    check(a["type"] == "channel_state", f"join: {a}")
    a = await clients[1].request({"type": "join", "channel": "doc:metrics"})
    check(a["type"] == "channel_state" and a["count"] == 2, f"join: {a}")
    await clients[1].ok({"type": "update", "channel": "doc:metrics", "metadata": {"mode": "editing"}})
    mid = scr.scrape()
    check(delta(base, mid, "presenced_rooms") == 1, "rooms with members")
    check(delta(base, mid, "presenced_rooms_local") == 1, "rooms on this node")
    check(delta(base, mid, "presenced_room_members") == 2, "room members")
    check(delta(base, mid, "presenced_room_connections") == 2, "room connections")
    await clients[1].ok({"type": "leave", "channel": "doc:metrics"})
    for t in ("member_joined", "member_updated", "member_left"):
        await clients[0].wait_for(lambda m, t=t: m.get("type") == t, what=t)
    room_events = 3

    # Protocol errors, one of each code, all answered.
    errors = {"bad_json": "{not json", "bad_message": "[1]", "unknown_type": '{"type":"nope"}',
              "bad_status": '{"type":"set_status","status":"sleeping"}',
              "not_member": '{"type":"leave","channel":"doc:elsewhere"}'}
    for code, text in errors.items():
        await clients[4].send(text)
        e = await clients[4].wait_for(lambda m: m.get("type") == "error", what=f"the {code} error")
        check(e["code"] == code, f"error {e}, want {code}")

    # A binary frame: the connection is failed with 1003.
    binary = await Client.open("mbin")
    await binary.ws.send(b"\x01\x02\x03")
    binary.sent_bytes += frame_bytes(3)
    await asyncio.wait_for(binary.reader, 5)
    check(binary.ws.close_code == 1003, f"binary frame closed with {binary.ws.close_code}")
    # websockets echoes the close frame: code and reason.
    binary.sent_bytes += frame_bytes(2 + len(binary.ws.close_reason.encode()))
    conns += 1

    # Refused upgrades and plain HTTP.
    check(await refused_upgrade("token=not.a.jwt") == 401, "a bad token is refused with 401")
    check(await refused_upgrade("nouser=1") == 401, "no credentials: 401")
    check(await loop.run_in_executor(None, plain_get, "/presence") == 426, "GET of the WebSocket path: 426")
    check(await loop.run_in_executor(None, plain_get, "/no/such/page") == 404, "unknown path: 404")
    extra_conns = 4  # two refused upgrades, two plain GETs

    # Everything closes: the watcher first (so no offline reaches anyone).
    for c in [watcher] + clients:
        await c.close()
    for c in [watcher, binary] + clients:
        ws_bytes += c.sent_bytes
    after = await wait_settled(scr, base)
    scrapes = scr.count - s0

    # --- Counters: exactly what the workload did ---
    want = {
        ("presenced_connections_accepted_total", ()): conns + extra_conns,
        ("presenced_ws_upgrades_total", ()): conns,
        ("presenced_http_requests_total", ()): conns + extra_conns + scrapes,
        ("presenced_http_responses_total", (("status", "200"),)): scrapes,
        ("presenced_http_responses_total", (("status", "401"),)): 2,
        ("presenced_http_responses_total", (("status", "426"),)): 1,
        ("presenced_http_responses_total", (("status", "404"),)): 1,
        ("presenced_ws_handshake_failures_total", (("status", "426"),)): 1,
        ("presenced_auth_failures_total", (("reason", "malformed"),)): 1,
        ("presenced_auth_failures_total", (("reason", "no_credentials"),)): 1,
        ("presenced_ws_messages_in_total", ()): None,  # computed below
        ("presenced_ws_bytes_in_total", ()): ws_bytes,
        ("presenced_ws_binary_refused_total", ()): 1,
        ("presenced_ws_protocol_errors_total", (("code", "1003"),)): 1,
        ("presenced_ws_closes_sent_total", (("code", "1003"),)): 1,
        ("presenced_messages_in_total", (("type", "subscribe"),)): 1,
        ("presenced_messages_in_total", (("type", "set_online"),)): N,
        ("presenced_messages_in_total", (("type", "set_status"),)): 3,
        ("presenced_messages_in_total", (("type", "heartbeat"),)): 3,
        ("presenced_messages_in_total", (("type", "ping"),)): 2,
        ("presenced_messages_in_total", (("type", "join"),)): 2,
        ("presenced_messages_in_total", (("type", "update"),)): 1,
        ("presenced_messages_in_total", (("type", "leave"),)): 2,  # one of them not_member
        ("presenced_protocol_errors_total", (("code", "bad_json"),)): 1,
        ("presenced_protocol_errors_total", (("code", "bad_message"),)): 1,
        ("presenced_protocol_errors_total", (("code", "unknown_type"),)): 1,
        ("presenced_protocol_errors_total", (("code", "bad_status"),)): 1,
        ("presenced_protocol_errors_total", (("code", "not_member"),)): 1,
        ("presenced_presence_changes_total", ()): changes + N,  # and each user's offline
        ("presenced_fanout_deliveries_total", ()): deliveries,
        ("presenced_fanout_coalesced_total", ()): 0,
        ("presenced_room_joins_total", ()): 2,
        ("presenced_room_leaves_total", ()): 1,
        ("presenced_room_events_delivered_total", ()): room_events,
        ("presenced_grace_expired_total", ()): N,
        ("presenced_grace_revived_total", ()): 0,
        ("presenced_session_timeouts_total", ()): 0,
        ("presenced_slow_consumer_closes_total", ()): 0,
        ("presenced_token_expiries_total", ()): 0,
        ("presenced_connections_refused_total", ()): 0,
        ("presenced_http_request_timeouts_total", ()): 0,
        ("presenced_ws_idle_timeouts_total", ()): 0,
    }
    # Every text message is a WebSocket message; those that do not decode (all the errors but
    # not_member, which is a leave) have no type to be counted under. A binary one is refused
    # before it is a message.
    msgs_in = sum(v for (n, _), v in want.items() if n == "presenced_messages_in_total" and v is not None)
    msgs_in += len(errors) - 1
    want[("presenced_ws_messages_in_total", ())] = msgs_in
    for (name, labels), w in want.items():
        got = delta(base, after, name, **dict(labels))
        check(got == w, f"{name}{dict(labels) or ''}: moved by {got:g}, want {w}")
    # No other label of these families moved.
    for name in ("presenced_protocol_errors_total", "presenced_auth_failures_total", "presenced_messages_in_total",
                 "presenced_http_responses_total", "presenced_ws_closes_sent_total"):
        for labels, v in labelled(after, name).items():
            if (name, tuple(sorted(labels))) not in {(n, tuple(sorted(l))) for (n, l) in want}:
                check(v - val(base, name, **dict(labels)) == 0, f"{name}{dict(labels)} moved unexpectedly")
    # Monotone counters that moved by an amount the kernel decides: at least something.
    for name in ("presenced_bytes_out_total", "presenced_out_buffers_total"):
        check(delta(base, after, name) > 0, f"{name} did not move")

    # --- Gauges: back where they started ---
    for name in ("presenced_connections_open", "presenced_websockets_open", "presenced_sessions",
                 "presenced_sessions_present", "presenced_subscriptions", "presenced_rooms", "presenced_rooms_local",
                 "presenced_room_members", "presenced_room_connections"):
        check(delta(base, after, name) == 0, f"gauge {name}: {val(base, name):g} -> {val(after, name):g}")
    for status, n in (("online", 0), ("busy", 0), ("away", 0), ("offline", N)):
        # Known users stay known, offline: the N users (not the watcher or mbin, who never
        # announced themselves, nor ghost, whom nobody ever saw).
        got = delta(base, after, "presenced_users", status=status)
        check(got == n, f"users {status}: +{got:g}, want {n}")
    lag = val(after, "presenced_loop_lag_seconds")
    check(0 <= lag < 1, f"loop lag {lag}")


async def wait_settled(scr, base):
    """Scrapes until every user of the workload is offline (their grace windows over)."""
    holder = {}

    def settled():
        s = scr.scrape()
        holder["s"] = s
        return all(delta(base, s, "presenced_users", status=st) == 0 for st in ("online", "busy", "away")) and \
            delta(base, s, "presenced_connections_open") == 0
    await eventually(settled, 5 + GRACE, "the workload's users to go offline")
    return holder["s"]


# ---------------------------------------------------------------------------------------------
# Phase 2: a slow consumer


def raw_ws(user):
    """A blocking socket past the handshake and the welcome, as user."""
    s = socket.create_connection(("127.0.0.1", DAEMON.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /presence?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
        rest += s.recv(4096)
    assert b'"welcome"' in rest, rest
    return s


def masked_frame(opcode, data):
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def masked(text):
    return masked_frame(0x1, text.encode())


def read_until_close(s, timeout=10.0):
    """Reads server frames from s until a close frame (or EOF, or timeout): [(opcode, payload)]."""
    s.settimeout(timeout)
    buf = b""
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            frames.append((buf[0] & 0x0F, buf[off:off + n]))
            buf = buf[off + n:]
            if frames[-1][0] == 8:
                return frames
        try:
            chunk = s.recv(1 << 16)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    return frames


async def phase2(scr):
    loop = asyncio.get_running_loop()
    base = scr.scrape()
    slow = await loop.run_in_executor(None, raw_ws, "slow")
    slow.sendall(masked('{"type":"join","channel":"flood:1","id":"j"}'))
    flooder = await Client.open("flooder")
    a = await flooder.request({"type": "join", "channel": "flood:1"})
    check(a["type"] == "channel_state", f"flooder join: {a}")
    # slow never reads again: its socket buffers fill, then its queue at the server.
    meta = {"blob": "x" * 1900}
    sent = 0
    closed = False
    t0 = time.monotonic()
    while not closed and sent < 20000:
        for _ in range(25):
            meta["n"] = sent
            await flooder.send({"type": "update", "channel": "flood:1", "metadata": meta})
            sent += 1
        await flooder.ok({"type": "update", "channel": "flood:1", "metadata": meta})
        sent += 1
        if sent % 200 < 26:
            closed = delta(base, scr.scrape(), "presenced_slow_consumer_closes_total") > 0
    elapsed = time.monotonic() - t0
    check(closed, f"the slow consumer was not closed after {sent} updates of ~2 KB")
    # The flooder itself was never refused or closed.
    check(not [m for m in flooder.msgs if m.get("type") == "error"], "errors for the flooder")
    check(not flooder.reader.done(), "the flooder was closed")
    # slow reads at last: what was queued before the overflow, then the 1008 close frame.
    frames = await loop.run_in_executor(None, read_until_close, slow)
    check(frames and frames[-1][0] == 8, f"slow's last frame is not a close: {frames[-1:] if frames else None}")
    if frames and frames[-1][0] == 8:
        code = struct.unpack(">H", frames[-1][1][:2])[0]
        check(code == 1008 and frames[-1][1][2:] == b"output queue full: client too slow",
              f"slow closed with {code} {frames[-1][1][2:]!r}")
    check(frames and json.loads(frames[0][1])["type"] == "channel_state", "slow's first frame answers its join")
    slow.sendall(masked_frame(0x8, struct.pack(">H", 1008)))
    slow.close()

    def gone():
        s = scr.scrape()
        return s if all(delta(base, s, n) == 1 for n in ("presenced_websockets_open", "presenced_connections_open",
                                                          "presenced_room_connections", "presenced_sessions")) else None
    after = await eventually(gone, 5, "the slow consumer's connection to end")
    check(delta(base, after, "presenced_slow_consumer_closes_total") == 1, "one slow-consumer close")
    check(delta(base, after, "presenced_ws_closes_sent_total", code="1008") == 1, "one 1008 close frame")
    check(delta(base, after, "presenced_room_joins_total") == 2, "two joins")
    check(delta(base, after, "presenced_messages_in_total", type="update") == sent, "every update counted")
    check(delta(base, after, "presenced_room_members") == 1, "only the flooder is a member")
    await flooder.close()
    await wait_settled(scr, base)
    print(f"# slow consumer closed after {sent} updates in {elapsed:.2f} s")


def main():
    global DAEMON
    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="presenced-metrics-")
    secret = os.path.join(tmp.name, "secret")
    with open(secret, "wb") as f:
        f.write(base64.b64encode(os.urandom(48)))
    # A token key, so a bad token is refused as malformed (not because tokens are off).
    # No message rate limit: phase 2 floods room updates to overflow an event stream
    # (hardening.test.mjs covers the limiter and its counters).
    DAEMON = Daemon(["--ephemeral", "--offline-grace", str(GRACE), "--out-max", str(OUT_MAX), "--close-timeout", "2",
                     "--token-secret-file", secret, "--rate-limit", "0"])
    rc = None
    try:
        scr = Scraper(DAEMON.port)
        # The format first: a fresh daemon, and after everything below.
        first = scr.text()
        parse_strict(first)
        for fam in ("presenced_connections_open", "presenced_users", "presenced_messages_in_total",
                    "presenced_protocol_errors_total", "presenced_fanout_deliveries_total",
                    "presenced_fanout_coalesced_total", "presenced_slow_consumer_closes_total",
                    "presenced_rooms", "presenced_room_members", "presenced_loop_lag_seconds",
                    "presenced_sessions", "presenced_websockets_open"):
            check(f"# TYPE {fam} " in first, f"{fam} is not exposed from the start")
        asyncio.run(asyncio.wait_for(phase1(scr), 60))
        asyncio.run(asyncio.wait_for(phase2(scr), 60))
        parse_strict(scr.text())
        scr.close()
    except Exception as e:  # noqa: BLE001 - any failure is reported, then fails the run
        import traceback
        traceback.print_exc()
        FAILURES.append(f"exception: {e!r}")
    finally:
        rc = DAEMON.stop(15.0)
    if rc != 0:
        FAILURES.append(f"presenced exited with {rc}")
    if SANITIZER.search("\n".join(DAEMON.lines)):
        FAILURES.append("sanitizer report in the daemon log")
    tmp.cleanup()
    if FAILURES:
        print("--- presenced log (tail) ---\n" + DAEMON.tail(60))
    print(f"test_metrics: {len(FAILURES)} failure(s), daemon exit {rc}, {time.monotonic() - t0:.1f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
