// The JavaScript client (clients/js/src/presenced-client.js) against the real daemon, in Node
// with the `ws` package injected:
//   - requests carry an `id` and resolve with the server's answer, or reject with a
//     PresenceError holding the server's code and message; local failures (not connected,
//     disconnected while waiting) reject too, with their own codes;
//   - after the server restarts on the same port, the client reconnects by itself and restores
//     its status (custom status and activity included), subscriptions and rooms; a request made
//     while the server is down is sent once it is back;
//   - reconnect delays grow exponentially within their jitter range, are capped, start over
//     after a successful connection, and maxRetries gives up (attempts observed through a
//     hooked WebSocket factory);
//   - cursor and typing signals are throttled on the client to cursorHz (the server's own
//     limit set far above), and the latest value always goes out;
//   - the seed document's usage (new PresenceClient(url, user, device), on('onPresenceChange'),
//     subscribeToUsers, setStatus('away'), disconnect) works unchanged;
//   - rooms keep a local member map from member_joined/updated/left and channel_delta;
//     privacy calls; tokens (query and header), automatic refresh before expiry; heartbeats at
//     the welcome's interval; activity detection (away after inactivity, sooner when hidden).
// Every wait is bounded; every daemon is stopped and must exit 0 with no sanitizer report.
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, test } from 'node:test';
import WebSocket from 'ws';

import {
    ConnectionState,
    PresenceClient,
    PresenceError,
    setDefaultWebSocket,
    tokenExpiry,
} from '../../clients/js/src/presenced-client.js';
import { ask, claimsFor, makeTemp, rmTemp, signToken, writeSecret } from './lib/auth.mjs';
import { openClient, openUser, openWatcher, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 60000 };

// ---------------------------------------------------------------------------------------------
// Helpers

const clients = new Set(); // PresenceClients to disconnect after each test
const daemons = new Set(); // daemons to stop after each test
const temps = new Set();

afterEach(async () => {
    for (const c of clients) c.disconnect();
    clients.clear();
    for (const d of daemons) {
        if (!d.exit) await stopDaemon(d);
    }
    daemons.clear();
    for (const t of temps) rmTemp(t);
    temps.clear();
});

async function daemon(flags = []) {
    // A short grace unless a test sets one: stopping a daemon (SIGTERM) drains through it.
    const grace = flags.includes('--offline-grace') ? [] : ['--offline-grace', '0.2'];
    const d = await startPresenced([...grace, ...flags]);
    daemons.add(d);
    return d;
}

/** A client of d as user, with `ws` injected and activity detection off unless asked. */
function client(d, user, opts = {}) {
    const { device = 'web', ...rest } = opts;
    const url = typeof d === 'string' ? d : d.wsUrl(user);
    const c = new PresenceClient(url, user, device, { WebSocket, activity: false, ...rest });
    clients.add(c);
    return c;
}

/** Polls until f() is truthy; returns its value. */
async function until(f, timeoutMs = 3000, what = 'a condition') {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
        const v = await f();
        if (v) return v;
        if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(10);
    }
}

/** The next emission of event on c for which pred holds; its arguments. */
function nextEvent(c, event, pred = () => true, timeoutMs = 3000) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            off();
            reject(new Error(`no '${event}' event within ${timeoutMs} ms`));
        }, timeoutMs);
        const off = c.on(event, (...args) => {
            if (!pred(...args)) return;
            clearTimeout(timer);
            off();
            resolve(args);
        });
    });
}

/** Asserts that p rejects with a PresenceError of code; returns the error. */
async function rejectsWith(p, code, what) {
    try {
        await p;
    } catch (e) {
        assert.ok(e instanceof PresenceError, `${what}: not a PresenceError: ${e}`);
        assert.equal(e.code, code, `${what}: ${e.code} ${e.message}`);
        return e;
    }
    assert.fail(`${what}: resolved instead of rejecting with ${code}`);
}

/** A WebSocket factory that records every frame sent and every socket made. */
function recordingFactory() {
    const rec = { sent: [], sockets: [], attempts: [] };
    rec.factory = (url, { headers } = {}) => {
        rec.attempts.push({ at: performance.now(), url });
        const ws = new WebSocket(url, [], { headers });
        const send = ws.send.bind(ws);
        ws.send = (data, ...rest) => {
            rec.sent.push({ at: performance.now(), msg: JSON.parse(data) });
            return send(data, ...rest);
        };
        rec.sockets.push(ws);
        return ws;
    };
    rec.of = (type) => rec.sent.filter((e) => e.msg.type === type);
    return rec;
}

/** A socket whose connection fails at once (like a refused TCP connection: close 1006). */
class FailingSocket {
    constructor() {
        this.readyState = 0;
        this.onopen = this.onmessage = this.onerror = this.onclose = null;
        setTimeout(() => {
            this.readyState = 3;
            if (this.onerror) this.onerror({});
            if (this.onclose) this.onclose({ code: 1006, reason: '' });
        }, 0);
    }

    send() {
        throw new Error('not open');
    }

    close() {}
}

// ---------------------------------------------------------------------------------------------

describe('requests', () => {
    test('resolve with the answer matched by id, reject with the server error', T, async () => {
        const d = await daemon();
        const rec = recordingFactory();
        const alice = client(d, 'alice', { webSocketFactory: rec.factory });
        const welcome = await alice.connect();
        assert.equal(welcome.type, 'welcome');
        assert.equal(welcome.user_id, 'alice');
        assert.equal(alice.userId, 'alice');
        assert.equal(alice.state, ConnectionState.CONNECTED);
        assert.equal(alice.heartbeatInterval, welcome.heartbeat_interval);

        const ack = await alice.setStatus('busy', 'deep work', 'focus');
        assert.equal(ack.type, 'ack');
        const sent = rec.of('set_status').at(-1).msg;
        assert.deepEqual(sent, { type: 'set_status', status: 'busy', custom_status: 'deep work', activity: 'focus', id: ack.id });
        assert.match(String(ack.id), /^c\d+$/);

        const initial = await alice.subscribe(['alice', 'nobody-seen']);
        assert.equal(initial.type, 'initial_presence');
        assert.deepEqual(Object.keys(initial.presences), ['alice'], 'unknown users are left out');
        assert.equal(initial.presences.alice.status, 'busy');
        assert.equal(alice.getPresence('alice').custom_status, 'deep work', 'the cache holds what arrived');

        const presences = await alice.fetchPresence(['alice']);
        assert.equal(presences.alice.activity, 'focus');
        assert.ok((await alice.ping()) >= 0);

        // Server errors: the code and message the server sent, with the request.
        let e = await rejectsWith(alice.request({ type: 'set_status', status: 'weird' }), 'bad_status', 'bad status');
        assert.equal(e.message, '"status" must be online, away, busy or offline');
        assert.equal(e.answer.type, 'error');
        assert.equal(e.answer.id, e.request.id);
        e = await rejectsWith(alice.request({ type: 'no_such_thing' }), 'unknown_type', 'unknown type');
        assert.ok(e.message.length > 0);
        await rejectsWith(alice.leave('doc:never-joined'), 'not_member', 'leave of a room not joined');
        await rejectsWith(alice.join('bad channel!'), 'bad_channel', 'a bad channel name');
        assert.equal(alice.room('bad channel!'), undefined, 'a refused join is not kept (nor restored)');
        await rejectsWith(alice.setVisibility('sometimes'), 'bad_visibility', 'a bad visibility');
        await rejectsWith(alice.setStatus({ customStatus: 'x'.repeat(300) }), 'too_long', 'a long custom status');

        // Every request carried an id; the answers matched them.
        for (const { msg } of rec.sent) assert.ok(msg.id !== undefined, `sent without an id: ${JSON.stringify(msg)}`);

        // Unsolicited errors (no id) reach the 'error' event.
        const errorEvent = nextEvent(alice, 'error');
        rec.sockets.at(-1).send('{"type":"set_status","status":"nope"}');
        const [unsolicited] = await errorEvent;
        assert.equal(unsolicited.code, 'bad_status');

        // Local failures: pending at disconnect, and after it.
        const pending = alice.fetchPresence(['alice']);
        alice.disconnect();
        await rejectsWith(pending, 'disconnected', 'a request pending at disconnect()');
        await rejectsWith(alice.setStatus('online'), 'not_connected', 'a request after disconnect()');
        assert.equal(alice.state, ConnectionState.DISCONNECTED);
    });

    test('seed positional setStatus clears custom status; the object form changes only what it names', T, async () => {
        const d = await daemon();
        const alice = client(d, 'alice');
        const bob = client(d, 'bob');
        await alice.connect();
        await bob.connect();
        await bob.subscribe(['alice']);
        await alice.setStatus({ status: 'busy', customStatus: 'presenting Q3', activity: 'presenting' });
        await until(() => bob.getPresence('alice')?.custom_status === 'presenting Q3', 3000, 'custom status');
        await alice.setStatus({ status: 'online' });
        await until(() => bob.getPresence('alice')?.status === 'online', 3000, 'online');
        assert.equal(bob.getPresence('alice').custom_status, 'presenting Q3', 'kept');
        assert.equal(bob.getPresence('alice').activity, 'presenting', 'kept');
        await alice.setStatus('away');
        await until(() => bob.getPresence('alice')?.status === 'away', 3000, 'away');
        assert.equal(bob.getPresence('alice').custom_status, null, 'the seed form sends null: cleared');
        assert.equal(bob.getPresence('alice').activity, null);
        await alice.setOffline();
        await until(() => bob.getPresence('alice')?.status === 'offline', 3000, 'offline at once after setOffline');
        await alice.setOnline();
        await until(() => bob.getPresence('alice')?.status === 'online', 3000, 'back online');
    });
});

describe('reconnect', () => {
    test('after the server restarts on the same port: status, subscriptions and rooms are restored', T, async () => {
        const flags = ['--offline-grace', '0.2'];
        const d1 = await daemon(flags);
        const port = d1.port;
        const states = [];
        const alice = client(d1, 'alice', { reconnect: { initialDelayMs: 100, maxDelayMs: 400 } });
        alice.on('state', (s, info) => states.push({ s, code: info.code }));
        await alice.connect();
        await alice.setStatus({ status: 'busy', customStatus: 'Quarterly planning', activity: 'meeting' });
        await alice.subscribe(['bob']);
        await alice.join('doc:7', { mode: 'editing' });
        assert.deepEqual(states.map((x) => x.s), ['connecting', 'connected'], 'states before the restart');

        await d1.stop();
        await until(() => alice.state === ConnectionState.RECONNECTING, 5000, 'reconnecting');
        // SIGTERM drains: the server asks clients to reconnect (1012); 1001 from older servers.
        assert.ok([1001, 1012].includes(states.find((x) => x.s === 'reconnecting').code), JSON.stringify(states));
        // While the server is down: a request waits for the connection.
        const whileDown = alice.setStatus({ customStatus: 'back in 5' });
        await sleep(300); // a few failed attempts against the closed port

        // (Listening first: the client may be back before startDaemon has parsed the log.)
        const restored = nextEvent(alice, 'restored', () => true, 20000);
        const d2 = await daemon(['--listen', `127.0.0.1:${port}`, ...flags]);
        assert.equal(d2.port, port);
        await restored;
        assert.equal((await whileDown).type, 'ack', 'the request made while down was sent after the restore');

        // Status, custom status and activity, as another user sees them on the new server.
        const { c: carol, initial } = await openWatcher(d2, 'carol', ['alice']);
        const p = initial.alice;
        assert.ok(p, `alice is known to the new server: ${JSON.stringify(initial)}`);
        assert.deepEqual([p.status, p.custom_status, p.activity, p.devices], ['busy', 'back in 5', 'meeting', ['web']], JSON.stringify(p));

        // The room, with alice's metadata, as a member reads it (rooms are shown to the room).
        const members = await ask(carol, { type: 'join', channel: 'doc:7' });
        assert.deepEqual(members.members.map((m) => [m.user_id, m.metadata]), [['alice', { mode: 'editing' }], ['carol', {}]],
            'doc:7 on the new server');
        assert.equal((await ask(carol, { type: 'leave', channel: 'doc:7' })).type, 'ack');
        assert.equal(alice.room('doc:7').joined, true);

        // The subscription: bob comes online on the new server and alice hears of it.
        const bob = await openUser(d2, 'bob', { device: 'mobile' });
        await until(() => alice.getPresence('bob')?.status === 'online', 3000, "bob's presence at alice");
        // The room's member map follows the new server.
        await ask(bob, { type: 'join', channel: 'doc:7', metadata: { mode: 'viewing' } });
        await until(() => alice.room('doc:7').members.has('bob'), 3000, 'bob in alice\'s member map');
        assert.equal(alice.room('doc:7').count, 2);

        assert.deepEqual(states.map((x) => x.s).slice(0, 3), ['connecting', 'connected', 'reconnecting'], JSON.stringify(states));
        assert.equal(states.at(-1).s, 'connected');
    });

    test('delays grow exponentially within the jitter, are capped, and start over after a connection', T, async () => {
        const d = await daemon();
        const base = 100;
        const cap = 800;
        const attempts = [];
        const delays = [];
        let failures = 6; // the first six attempts fail; then one real connection
        let real = null;
        const factory = (url) => {
            attempts.push(performance.now());
            if (failures > 0) {
                failures--;
                return new FailingSocket();
            }
            real = new WebSocket(url);
            return real;
        };
        const c = client(d, 'bo', { webSocketFactory: factory, reconnect: { initialDelayMs: base, maxDelayMs: cap, factor: 2, jitter: 0.5 } });
        c.on('state', (s, info) => {
            if (s === 'reconnecting') delays.push(info.delay);
        });
        await c.connect();
        assert.equal(attempts.length, 7);
        const expected = [100, 200, 400, 800, 800, 800];
        assert.equal(delays.length, expected.length);
        for (let k = 0; k < expected.length; k++) {
            const hi = expected[k];
            const lo = hi / 2;
            assert.ok(delays[k] >= lo && delays[k] <= hi, `delay ${k}: ${delays[k]} not in [${lo}, ${hi}]`);
            const gap = attempts[k + 1] - attempts[k];
            assert.ok(gap >= lo - 5 && gap <= hi + 250, `gap ${k}: ${gap.toFixed(1)} ms not in [${lo}, ${hi}] (+ scheduling)`);
        }
        // The lower bounds double: every gap of the growing phase is at least the previous
        // range's upper half.
        for (let k = 1; k < 4; k++) assert.ok(attempts[k + 1] - attempts[k] >= expected[k - 1] - 5, `gap ${k} grew`);

        // A successful connection resets the backoff: the next drop waits a first delay again.
        failures = 2;
        const t0 = attempts.length;
        real.terminate(); // the connection drops (1006)
        await until(() => c.state === ConnectionState.CONNECTED && attempts.length === t0 + 3, 5000, 'reconnected after 2 failures');
        const after = delays.slice(expected.length);
        assert.equal(after.length, 3);
        assert.ok(after[0] >= 50 && after[0] <= 100, `first delay after a connection: ${after[0]}`);
        assert.ok(after[1] >= 100 && after[1] <= 200, `second: ${after[1]}`);
        assert.ok(after[2] >= 200 && after[2] <= 400, `third: ${after[2]}`);
    });

    test('maxRetries gives up: connect() rejects and the state is disconnected', T, async () => {
        let attempts = 0;
        const c = client('ws://127.0.0.1:9/presence', 'x', {
            webSocketFactory: () => {
                attempts++;
                return new FailingSocket();
            },
            reconnect: { initialDelayMs: 10, maxDelayMs: 20, maxRetries: 3 },
        });
        const states = [];
        c.on('state', (s) => states.push(s));
        await rejectsWith(c.connect(), 'disconnected', 'connect() after maxRetries');
        assert.equal(attempts, 4, 'the first attempt and three retries');
        assert.equal(c.state, ConnectionState.DISCONNECTED);
        assert.deepEqual(states, ['connecting', 'reconnecting', 'connecting', 'reconnecting', 'connecting',
            'reconnecting', 'connecting', 'disconnected']);
    });

    test('reconnect: false: a drop ends in disconnected', T, async () => {
        const d = await daemon();
        const rec = recordingFactory();
        const c = client(d, 'once', { webSocketFactory: rec.factory, reconnect: false });
        await c.connect();
        rec.sockets[0].terminate();
        await until(() => c.state === ConnectionState.DISCONNECTED, 3000, 'disconnected');
        assert.equal(rec.attempts.length, 1);
    });
});

describe('cursors and typing', () => {
    test('client-side throttling holds cursorHz; the latest value always goes out', T, async () => {
        const d = await daemon(['--cursor-hz', '1000']); // the server passes everything through
        const HZ = 10;
        const rec = recordingFactory();
        const alice = client(d, 'alice', { webSocketFactory: rec.factory, cursorHz: HZ, typingTimeoutMs: 0 });
        await alice.connect();
        const bob = await openClient(d, 'bob');
        await ask(bob, { type: 'join', channel: 'doc:c' });
        await alice.join('doc:c');

        const t0 = performance.now();
        let i = 0;
        while (performance.now() - t0 < 1500) {
            alice.cursor('doc:c', { line: 1, ch: i++ });
            await sleep(2);
        }
        const lastValue = i - 1;
        await sleep(250);
        const sent = rec.of('cursor');
        const span = sent.at(-1).at - sent[0].at;
        assert.ok(i > 200, `the test made ${i} calls`);
        assert.ok(sent.length <= Math.floor(span / (1000 / HZ)) + 1 && sent.length >= 12,
            `${sent.length} cursor frames over ${span.toFixed(0)} ms at ${HZ} Hz`);
        for (let k = 1; k < sent.length; k++) {
            const gap = sent[k].at - sent[k - 1].at;
            assert.ok(gap >= 1000 / HZ - 2, `frames ${k - 1} and ${k} ${gap.toFixed(1)} ms apart`);
        }
        assert.deepEqual(sent.at(-1).msg, { type: 'cursor', channel: 'doc:c', cursor: { line: 1, ch: lastValue } }, 'the trailing value');
        // What bob receives: the same, ending with the latest.
        const got = await bob.waitFor((m) => m.type === 'cursor' && m.cursor.ch === lastValue, 3000, 'the last cursor');
        assert.equal(got.user_id, 'alice');
        const relayed = bob.all.filter((e) => e.msg.type === 'cursor').length;
        assert.equal(relayed, sent.length);

        // Typing: repeated values are not re-sent, changes are.
        for (let k = 0; k < 50; k++) alice.typing('doc:c', true);
        await sleep(150);
        alice.typing('doc:c', false);
        await sleep(150);
        assert.deepEqual(rec.of('typing').map((e) => e.msg.typing), [true, false], 'typing frames sent');
        await bob.waitFor((m) => m.type === 'typing' && m.typing === true, 3000, 'typing true');
        await bob.waitFor((m) => m.type === 'typing' && m.typing === false, 3000, 'typing false');

        // Signals received are kept per room.
        await bob.send({ type: 'cursor', channel: 'doc:c', cursor: { line: 9, ch: 9 } });
        await until(() => alice.room('doc:c').cursors.get('bob')?.line === 9, 3000, "bob's cursor at alice");
        await bob.send({ type: 'typing', channel: 'doc:c', typing: true });
        await until(() => alice.room('doc:c').typing.has('bob'), 3000, 'bob typing at alice');
        // Signals to a room not joined are not sent.
        const before = rec.sent.length;
        alice.cursor('doc:other', { line: 1 });
        await sleep(50);
        assert.equal(rec.sent.length, before);
    });

    test('typing turns itself off after typingTimeoutMs', T, async () => {
        const d = await daemon();
        const rec = recordingFactory();
        const alice = client(d, 'alice', { webSocketFactory: rec.factory, typingTimeoutMs: 200 });
        await alice.connect();
        await alice.join('doc:t');
        alice.typing('doc:t', true);
        await until(() => rec.of('typing').length === 2, 2000, 'typing false after the timeout');
        assert.deepEqual(rec.of('typing').map((e) => e.msg.typing), [true, false], 'typing frames sent');
        const gap = rec.of('typing')[1].at - rec.of('typing')[0].at;
        assert.ok(gap >= 195 && gap < 1000, `${gap} ms`);
    });
});

describe("the seed document's client API", () => {
    test('new PresenceClient(url, user, device), onPresenceChange, subscribeToUsers, setStatus, disconnect', T, async () => {
        const d = await daemon(['--offline-grace', '0.3']);
        setDefaultWebSocket(WebSocket); // what a Node program does once, instead of a browser's global
        try {
            // The seed's usage example, verbatim but for the URLs.
            const presence = new PresenceClient(d.wsUrl('user123'), 'user123', 'web');
            clients.add(presence);
            const seen = [];
            presence.on('onPresenceChange', (presenceInfo) => {
                seen.push({ user: presenceInfo.user_id, status: presenceInfo.status, device: presenceInfo.device });
            });
            await presence.connect();
            presence.subscribeToUsers(['friend1', 'friend2', 'friend3']);

            const friend1 = new PresenceClient(d.wsUrl('friend1'), 'friend1', 'mobile');
            clients.add(friend1);
            await friend1.connect();
            await until(() => seen.some((x) => x.user === 'friend1' && x.status === 'online'), 3000, 'friend1 online');
            assert.equal(seen.find((x) => x.user === 'friend1').device, 'mobile');

            friend1.setStatus('away');
            await until(() => seen.some((x) => x.user === 'friend1' && x.status === 'away'), 3000, 'friend1 away');
            friend1.setStatus('busy', 'In a meeting', 'meeting');
            await until(() => presence.getPresence('friend1')?.custom_status === 'In a meeting', 3000, 'custom status');

            friend1.disconnect();
            await until(() => seen.some((x) => x.user === 'friend1' && x.status === 'offline'), 3000, 'friend1 offline after the grace');
            assert.deepEqual(seen.filter((x) => x.user === 'friend1').map((x) => x.status), ['online', 'away', 'busy', 'offline'],
                JSON.stringify(seen));

            // The seed's names still exist.
            assert.equal(typeof presence.setOnline, 'function');
            assert.equal(typeof presence.handleMessage, 'function');
            assert.equal(presence.wsUrl, d.wsUrl('user123'));
            assert.equal(presence.userId, 'user123');
            assert.equal(presence.device, 'web');
            presence.disconnect();
            assert.equal(presence.state, 'disconnected');
        } finally {
            setDefaultWebSocket(null);
        }
    });

    test('the constructor also takes one options object; devAuth appends ?user=', T, async () => {
        const d = await daemon();
        const c = new PresenceClient({ url: `ws://127.0.0.1:${d.port}/presence`, userId: 'opt', device: 'desktop', devAuth: true, WebSocket, activity: false });
        clients.add(c);
        const w = await c.connect();
        assert.equal(w.user_id, 'opt');
        const { initial } = await openWatcher(d, 'w', ['opt']);
        assert.deepEqual(initial.opt.devices, ['desktop'], JSON.stringify(initial));
    });
});

describe('rooms', () => {
    test('the member map follows member_joined/updated/left and channel_delta', T, async () => {
        // Three members make the room large: changes arrive as channel_delta batches.
        const d = await daemon(['--room-announce-max', '2', '--room-interval', '0.1', '--offline-grace', '0.2']);
        const alice = client(d, 'alice');
        await alice.connect();
        const events = [];
        for (const e of ['member_joined', 'member_updated', 'member_left', 'channel_delta'])
            alice.on(e, (m) => events.push(m.type));
        const room = await alice.join('doc:m', { mode: 'viewing' });
        assert.equal(room.mode, 'announce');
        assert.deepEqual([...room.members.keys()], ['alice']);
        assert.deepEqual(room.members.get('alice').metadata, { mode: 'viewing' });

        const bob = client(d, 'bob', { device: 'mobile' });
        await bob.connect();
        await bob.join('doc:m', { mode: 'viewing' });
        await until(() => room.members.has('bob'), 3000, 'bob joined');
        assert.deepEqual(room.members.get('bob').devices, ['mobile']);
        await bob.update('doc:m', { mode: 'editing' });
        await until(() => room.members.get('bob').metadata.mode === 'editing', 3000, 'bob updated');

        const carol = client(d, 'carol');
        const dave = client(d, 'dave');
        await carol.connect();
        await dave.connect();
        await carol.join('doc:m');
        await dave.join('doc:m', { mode: 'editing' });
        await until(() => room.members.size === 4 && room.count === 4, 3000, 'four members');
        await dave.leave('doc:m');
        await until(() => !room.members.has('dave') && room.count === 3, 3000, 'dave left');
        carol.disconnect(); // leaves after the grace period, reason disconnected
        await until(() => !room.members.has('carol') && room.count === 2, 3000, 'carol gone');

        assert.ok(events.includes('member_joined') && events.includes('member_updated'), events.join());
        assert.ok(events.includes('channel_delta'), `a large room sends deltas: ${events.join()}`);
        assert.deepEqual(alice.members('doc:m').map((m) => m.user_id), ['alice', 'bob'], 'the local member map');
        // The local map equals the server's view.
        const server = await alice.channelMembers('doc:m');
        assert.deepEqual(server.members.map((m) => m.user_id), [...room.members.keys()].sort(), 'the server agrees');
        assert.equal(await alice.channelCount('doc:m'), 2);

        await alice.leave('doc:m');
        assert.equal(alice.room('doc:m'), undefined);
        await until(async () => (await bob.channelCount('doc:m')) === 1, 3000, 'alice out');
    });

    test('a joined room larger than a page: loadMoreMembers fills the map', T, async () => {
        const d = await daemon();
        const others = [];
        for (let i = 0; i < 105; i++) {
            const c = await openClient(d, `m${String(i).padStart(3, '0')}`);
            await ask(c, { type: 'join', channel: 'big' });
            others.push(c);
        }
        const zed = client(d, 'zzz');
        await zed.connect();
        const room = await zed.join('big');
        assert.equal(room.count, 106);
        assert.equal(room.members.size, 100);
        assert.ok(room.nextCursor);
        await zed.loadMoreMembers('big');
        assert.equal(room.members.size, 106);
        assert.equal(room.nextCursor, null);
    });
});

describe('privacy', () => {
    test('set_visibility, contacts, blocks, get_privacy', T, async () => {
        const d = await daemon();
        const alice = client(d, 'alice');
        await alice.connect();
        const bob = client(d, 'bob');
        const carol = client(d, 'carol');
        await bob.connect();
        await carol.connect();
        await bob.subscribe(['alice']);
        await carol.subscribe(['alice']);
        assert.equal(carol.getPresence('alice').status, 'online');

        assert.equal((await alice.addContact('bob')).type, 'ack');
        await alice.block('mallory');
        await alice.setVisibility('contacts');
        assert.deepEqual(await alice.getPrivacy(), { visibility: 'contacts', contacts: ['bob'], blocked: ['mallory'] });
        assert.deepEqual(alice.privacy, { visibility: 'contacts', contacts: ['bob'], blocked: ['mallory'] });
        await until(() => carol.getPresence('alice')?.status === 'offline', 3000, 'carol loses sight of alice');
        assert.deepEqual(carol.getPresence('alice'), { user_id: 'alice', status: 'offline' });
        assert.equal(bob.getPresence('alice').status, 'online', 'a contact still sees alice');

        await alice.setVisibility('nobody');
        await until(() => bob.getPresence('alice')?.status === 'offline', 3000, 'invisible to bob too');
        await alice.setVisibility('everyone');
        await until(() => carol.getPresence('alice')?.status === 'online', 3000, 'visible again');
        await alice.removeContact('bob');
        await alice.unblock('mallory');
        assert.deepEqual(await alice.getPrivacy(), { visibility: 'everyone', contacts: [], blocked: [] });
        await rejectsWith(alice.addContact('alice'), 'bad_user_id', 'oneself as a contact');
        await rejectsWith(alice.block(''), 'bad_user_id', 'an empty id');
    });
});

describe('tokens and heartbeats', () => {
    test('a token function: connects, refreshes before expiry, survives past the first exp', T, async () => {
        const dir = makeTemp();
        temps.add(dir);
        const { file, secret } = writeSecret(dir);
        const d = await daemon(['--token-secret-file', file]);
        let issued = 0;
        const token = () => {
            issued++;
            return signToken('HS256', secret, claimsFor('tina', 4)); // expires in 3-4 s
        };
        const rec = recordingFactory();
        const url = `ws://127.0.0.1:${d.port}/presence`;
        const tina = client(url, null, { token, webSocketFactory: rec.factory });
        const drops = [];
        tina.on('disconnected', (x) => drops.push(x));
        const w = await tina.connect();
        assert.equal(w.user_id, 'tina', 'the identity comes from the token');
        assert.equal(tina.userId, 'tina');
        assert.match(rec.attempts[0].url, /\?token=[\w-]+\.[\w-]+\.[\w-]+$/);
        assert.ok(tokenExpiry(tina._token) > Date.now() / 1000);
        await sleep(5500);
        assert.deepEqual(drops, [], `never closed for an expired token (4001): ${JSON.stringify(drops)}`);
        assert.equal(tina.state, ConnectionState.CONNECTED);
        assert.ok(rec.of('refresh').length >= 1, 'refreshed');
        assert.ok(issued >= 2);
        assert.equal((await tina.ping()) >= 0, true);

        // Refresh with another user's token: refused.
        await rejectsWith(tina.refreshToken(signToken('HS256', secret, claimsFor('eve', 60))), 'wrong_user', 'another user');
        await rejectsWith(tina.refreshToken('not.a.token'), 'bad_token', 'garbage');
    });

    test('a refresh with a narrower channels claim: the revoked room is forgotten (left_room, revoked), not rejoined', T, async () => {
        const dir = makeTemp();
        temps.add(dir);
        const { file, secret } = writeSecret(dir);
        const d = await daemon(['--token-secret-file', file]);
        const url = `ws://127.0.0.1:${d.port}/presence`;
        const rita = client(url, null, { token: signToken('HS256', secret, claimsFor('rita', 60, { channels: ['doc:*', 'lobby'] })) });
        await rita.connect();
        await rita.join('doc:1');
        await rita.join('lobby');
        const changes = [];
        rita.on('room', (room, change) => changes.push([room.channel, change.type, change.reason]));
        await rita.refreshToken(signToken('HS256', secret, claimsFor('rita', 60, { channels: ['lobby'] })));
        await until(() => changes.some(([ch]) => ch === 'doc:1'), 3000, 'the revoked room');
        assert.deepEqual(changes.filter(([ch]) => ch === 'doc:1'), [['doc:1', 'left_room', 'revoked']]);
        assert.deepEqual([...rita.rooms.keys()], ['lobby'], 'the revoked room is forgotten, the other kept');
        await rejectsWith(rita.join('doc:1'), 'forbidden', 'the new claim');
    });

    test('a static token in the Authorization header (Node); an expired one ends the session without a retry loop', T, async () => {
        const dir = makeTemp();
        temps.add(dir);
        const { file, secret } = writeSecret(dir);
        const d = await daemon(['--token-secret-file', file]);
        const url = `ws://127.0.0.1:${d.port}/presence`;
        const hal = client(url, null, { token: signToken('HS256', secret, claimsFor('hal', 60)), tokenVia: 'header' });
        assert.equal((await hal.connect()).user_id, 'hal');

        const short = client(url, null, { token: signToken('HS256', secret, claimsFor('sid', 2)), reconnect: { initialDelayMs: 50 } });
        await short.connect();
        await until(() => short.state === ConnectionState.DISCONNECTED, 5000, 'closed at expiry');
        // 4001 with a token that cannot be renewed: no reconnection.
        await sleep(200);
        assert.equal(short.state, ConnectionState.DISCONNECTED);
    });

    test("heartbeats at the welcome's interval keep a quiet connection alive", T, async () => {
        const d = await daemon(['--heartbeat-ttl', '0.6']); // interval 200 ms
        const rec = recordingFactory();
        const c = client(d, 'hb', { webSocketFactory: rec.factory });
        const w = await c.connect();
        assert.equal(w.heartbeat_interval, 200);
        await sleep(1500);
        assert.equal(c.state, ConnectionState.CONNECTED);
        assert.equal(rec.attempts.length, 1, 'never dropped');
        const hb = rec.of('heartbeat');
        assert.ok(hb.length >= 5 && hb.length <= 9, `${hb.length} heartbeats in 1.5 s`);
        assert.deepEqual(Object.keys(hb[0].msg).sort(), ['device', 'id', 'type'], JSON.stringify(hb[0].msg));
        assert.equal(hb[0].msg.device, 'web');

        // A watch-only client (announce: false) keeps alive with pings, never announcing itself.
        const rec2 = recordingFactory();
        const quiet = client(d, 'quiet', { webSocketFactory: rec2.factory, announce: false });
        await quiet.connect();
        await sleep(700);
        assert.equal(quiet.state, ConnectionState.CONNECTED);
        assert.equal(rec2.of('heartbeat').length + rec2.of('set_online').length, 0);
        assert.ok(rec2.of('ping').length >= 2);
        const { initial } = await openWatcher(d, 'w', ['quiet']);
        assert.equal(initial.quiet, undefined, 'never announced');
    });
});

describe('activity detection', () => {
    test('away after inactivity, online on input; sooner when hidden; a chosen busy stays busy', T, async () => {
        const d = await daemon();
        const doc = new EventTarget();
        doc.hidden = false;
        const alice = client(d, 'alice', { activity: { awayAfterMs: 400, hiddenAwayAfterMs: 150, target: doc, document: doc } });
        const bob = client(d, 'bob');
        await bob.connect();
        await bob.subscribe(['alice']);
        const t0 = performance.now();
        await alice.connect();
        await until(() => bob.getPresence('alice')?.status === 'online', 3000, 'online');
        await until(() => bob.getPresence('alice')?.status === 'away', 3000, 'away after inactivity');
        assert.ok(performance.now() - t0 >= 390, 'not before awayAfterMs');
        assert.equal(alice.idle, true);

        doc.dispatchEvent(new Event('keydown'));
        await until(() => bob.getPresence('alice')?.status === 'online', 3000, 'online on input');
        assert.equal(alice.idle, false);

        // Input keeps it online.
        for (let i = 0; i < 8; i++) {
            await sleep(100);
            doc.dispatchEvent(new Event('mousemove'));
        }
        assert.equal(alice.idle, false);
        assert.equal(bob.getPresence('alice').status, 'online');

        // Hidden: away after hiddenAwayAfterMs.
        doc.hidden = true;
        const t1 = performance.now();
        doc.dispatchEvent(new Event('visibilitychange'));
        await until(() => bob.getPresence('alice')?.status === 'away', 3000, 'away while hidden');
        const took = performance.now() - t1;
        assert.ok(took >= 140 && took < 390, `away ${took.toFixed(0)} ms after hiding`);
        doc.hidden = false;
        doc.dispatchEvent(new Event('visibilitychange'));
        await until(() => bob.getPresence('alice')?.status === 'online', 3000, 'online when visible');

        // A user who chose busy is not made away by inactivity.
        await alice.setStatus({ status: 'busy' });
        await until(() => bob.getPresence('alice')?.status === 'busy', 3000, 'busy');
        await sleep(600);
        assert.equal(alice.idle, true);
        assert.equal(bob.getPresence('alice').status, 'busy');
    });

    test('activity: false turns it off', T, async () => {
        const d = await daemon();
        const doc = new EventTarget();
        const c = client(d, 'x', { activity: false });
        await c.connect();
        doc.dispatchEvent(new Event('keydown'));
        await sleep(100);
        assert.equal(c.idle, false);
        assert.equal(c._activityBound, null);
    });
});
