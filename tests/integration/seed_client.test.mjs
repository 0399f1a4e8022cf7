// The seed document's browser client (`PresenceClient`, seed/000_8b3203aa54be46a1.txt) must
// work against presenced unchanged. This file re-implements, independently, what that client
// puts on the wire and how it reads answers, and runs two of them in the order of the seed's
// usage example:
//   - on open: {"type":"set_online","device":D} (exactly these keys, in this order), then a
//     heartbeat {"type":"heartbeat","device":D} every HEARTBEAT_INTERVAL (15 s in the seed;
//     injectable here, 200 ms in the tests) while the socket is open;
//   - subscribeToUsers(ids): {"type":"subscribe","user_ids":ids};
//   - setStatus(status, customStatus = null, activity = null):
//     {"type":"set_status","status":S,"custom_status":C,"activity":A} (nulls included);
//   - activity detection: the first idle period of ACTIVITY_TIMEOUT after an activity event
//     sends setStatus('away'); the next activity event sends setStatus('online'). Node has no
//     DOM: the event handler is exposed as userActivity();
//   - incoming messages: only initial_presence (one callback per presence) and
//     presence_update (one callback) are handled; anything else (welcome, ...) is ignored.
// One deviation, on purpose: connect() resolves once the socket is open. The seed's connect()
// resolves at once, so its usage example (`await presence.connect();
// presence.subscribeToUsers(...)`) would call send() on a CONNECTING socket, which throws
// (InvalidStateError in browsers, an Error in `ws`). The frames and their order are the same.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import { assertPresence, eventually, now, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 30000 };
const TTL = 1000; // --heartbeat-ttl: shorter than the scenario, so the heartbeats must work
const GRACE = 800; // --offline-grace
const HEARTBEAT_MS = 200;
const IDLE_MS = 300;

/** The seed's PresenceClient, as seen on the wire (see the file comment). */
class SeedPresenceClient {
    constructor(wsUrl, userId, device, { heartbeatIntervalMs = 15000, activityTimeoutMs = 300000 } = {}) {
        this.wsUrl = wsUrl;
        this.userId = userId; // kept like the seed's, never sent: identity comes from the URL
        this.device = device;
        this.ws = null;
        this.heartbeatInterval = null;
        this.activityTimeout = null;
        this.isActive = true;
        this.HEARTBEAT_INTERVAL = heartbeatIntervalMs;
        this.ACTIVITY_TIMEOUT = activityTimeoutMs;
        this.callbacks = { onPresenceChange: null, onStatusChange: null };
        // Test instrumentation, not part of the seed's behaviour.
        this.sent = []; // every frame sent, as sent
        this.received = []; // every message received (parsed), handled or not
    }

    connect() {
        this.ws = new WebSocket(this.wsUrl);
        const opened = new Promise((resolve, reject) => {
            this.ws.once('open', resolve);
            this.ws.once('error', reject);
        });
        this.ws.onopen = () => {
            this.setOnline();
            this.startHeartbeat();
            this.setupActivityDetection();
        };
        this.ws.onmessage = (event) => {
            const message = JSON.parse(event.data);
            this.received.push(message);
            this.handleMessage(message);
        };
        this.ws.onclose = () => {
            this.stopHeartbeat();
        };
        this.closed = new Promise((resolve) => this.ws.once('close', (code) => resolve(code)));
        return opened;
    }

    _send(frame) {
        this.sent.push(frame);
        this.ws.send(frame);
    }

    setOnline() {
        this._send(JSON.stringify({ type: 'set_online', device: this.device }));
    }

    setStatus(status, customStatus = null, activity = null) {
        this._send(JSON.stringify({ type: 'set_status', status, custom_status: customStatus, activity }));
    }

    startHeartbeat() {
        this.heartbeatInterval = setInterval(() => {
            if (this.ws.readyState === WebSocket.OPEN)
                this._send(JSON.stringify({ type: 'heartbeat', device: this.device }));
        }, this.HEARTBEAT_INTERVAL);
    }

    stopHeartbeat() {
        if (this.heartbeatInterval) clearInterval(this.heartbeatInterval);
    }

    /** The seed registers DOM listeners here; userActivity() is their handler. */
    setupActivityDetection() {}

    /** What the seed's handler does on mousedown/keydown/scroll/touchstart. */
    userActivity() {
        if (!this.isActive) {
            this.isActive = true;
            this.setStatus('online');
        }
        clearTimeout(this.activityTimeout);
        this.activityTimeout = setTimeout(() => {
            this.isActive = false;
            this.setStatus('away');
        }, this.ACTIVITY_TIMEOUT);
    }

    subscribeToUsers(userIds) {
        this._send(JSON.stringify({ type: 'subscribe', user_ids: userIds }));
    }

    handleMessage(message) {
        switch (message.type) {
            case 'presence_update':
                if (this.callbacks.onPresenceChange) this.callbacks.onPresenceChange(message.presence);
                break;
            case 'initial_presence':
                if (this.callbacks.onPresenceChange)
                    Object.values(message.presences).forEach((presence) => this.callbacks.onPresenceChange(presence));
                break;
        }
    }

    on(event, callback) {
        this.callbacks[event] = callback;
    }

    disconnect() {
        this.stopHeartbeat();
        if (this.ws) this.ws.close();
    }

    /** Test cleanup: the seed leaves its idle timer running. */
    stopTimers() {
        this.stopHeartbeat();
        clearTimeout(this.activityTimeout);
    }
}

const HB_WEB = '{"type":"heartbeat","device":"web"}';
const HB_MOBILE = '{"type":"heartbeat","device":"mobile"}';

/** Records callbacks with their arrival time. */
function recorder(client) {
    const seen = [];
    client.on('onPresenceChange', (p) => seen.push({ at: now(), p }));
    return seen;
}

/** Waits until seen has n entries, returns the nth (1-based). */
async function nth(seen, n, timeoutMs = 3000, what = `callback #${n}`) {
    await eventually(() => seen.length >= n, timeoutMs, `${what}; have ${JSON.stringify(seen.map((e) => e.p))}`, 5);
    return seen[n - 1];
}

const nonHeartbeats = (c) => c.sent.filter((f) => !f.startsWith('{"type":"heartbeat"'));

describe('the seed PresenceClient against presenced', () => {
    let d;
    const clients = [];
    before(async () => {
        d = await startPresenced(['--heartbeat-ttl', String(TTL / 1000), '--offline-grace', String(GRACE / 1000)]);
    });
    after(async () => {
        for (const c of clients) {
            c.stopTimers();
            if (c.ws) c.ws.terminate();
        }
        await stopDaemon(d);
    });

    test('its frames are exactly what JSON.stringify makes of the seed\'s objects', T, () => {
        const c = new SeedPresenceClient('ws://unused', 'u', 'web');
        assert.equal(c.HEARTBEAT_INTERVAL, 15000);
        assert.equal(c.ACTIVITY_TIMEOUT, 300000);
        c.ws = { send() {}, readyState: WebSocket.OPEN };
        c.setOnline();
        c.subscribeToUsers(['friend1', 'friend2', 'friend3']);
        c.setStatus('away');
        c.setStatus('online');
        c.setStatus('busy', 'In a meeting', 'meeting');
        assert.deepEqual(c.sent, [
            '{"type":"set_online","device":"web"}',
            '{"type":"subscribe","user_ids":["friend1","friend2","friend3"]}',
            '{"type":"set_status","status":"away","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"online","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"busy","custom_status":"In a meeting","activity":"meeting"}',
        ]);
    });

    test('two clients in the usage example\'s order see each other online, away, busy and offline', T, async () => {
        const url = (u) => `ws://127.0.0.1:${d.port}/presence?user=${encodeURIComponent(u)}`;
        const opts = { heartbeatIntervalMs: HEARTBEAT_MS, activityTimeoutMs: IDLE_MS };

        // const presence = new PresenceClient(url, 'user123', 'web'); presence.on(...);
        // await presence.connect(); presence.subscribeToUsers(['friend1', 'friend2', 'friend3']);
        const a = new SeedPresenceClient(url('user123'), 'user123', 'web', opts);
        clients.push(a);
        const seenA = recorder(a);
        await a.connect();
        a.subscribeToUsers(['friend1', 'friend2', 'friend3']);
        // None of the friends has been seen yet: an empty initial_presence, no callback.
        await eventually(() => a.received.some((m) => m.type === 'initial_presence'), 3000, 'initial_presence for user123');
        assert.deepEqual(a.received.find((m) => m.type === 'initial_presence'), { type: 'initial_presence', presences: {} });
        assert.equal(seenA.length, 0);

        // friend1 on a phone does the same, watching user123.
        const b = new SeedPresenceClient(url('friend1'), 'friend1', 'mobile', opts);
        clients.push(b);
        const seenB = recorder(b);
        await b.connect();
        b.subscribeToUsers(['user123']);

        // Each sees the other online: b from its initial_presence, a from a presence_update.
        let e = await nth(seenB, 1);
        assertPresence(e.p, { user_id: 'user123', status: 'online', device: 'web', devices: ['web'] }, 'b sees user123');
        e = await nth(seenA, 1);
        assertPresence(e.p, { user_id: 'friend1', status: 'online', device: 'mobile', devices: ['mobile'] }, 'a sees friend1');

        // Heartbeats alone for longer than the TTL: both stay connected, nothing is published.
        await sleep(TTL * 1.5);
        assert.equal(seenA.length, 1, JSON.stringify(seenA));
        assert.equal(seenB.length, 1, JSON.stringify(seenB));
        assert.equal(a.ws.readyState, WebSocket.OPEN);
        assert.equal(b.ws.readyState, WebSocket.OPEN);
        const hbA = a.sent.filter((f) => f === HB_WEB).length;
        const hbB = b.sent.filter((f) => f === HB_MOBILE).length;
        assert.ok(hbA >= 5 && hbB >= 5, `heartbeats sent: ${hbA}, ${hbB}`);

        // friend1 goes idle: after ACTIVITY_TIMEOUT it sends set_status away (with nulls).
        b.userActivity(); // active: nothing sent, the idle timer starts
        e = await nth(seenA, 2);
        assertPresence(e.p, { user_id: 'friend1', status: 'away', device: 'mobile', devices: ['mobile'] }, 'a sees friend1 away');
        // user123 too.
        a.userActivity();
        e = await nth(seenB, 2);
        assertPresence(e.p, { user_id: 'user123', status: 'away', device: 'web', devices: ['web'] }, 'b sees user123 away');

        // Both get busy (user123 with a custom status and an activity).
        b.setStatus('busy');
        e = await nth(seenA, 3);
        assertPresence(e.p, { user_id: 'friend1', status: 'busy', device: 'mobile', devices: ['mobile'] }, 'a sees friend1 busy');
        a.setStatus('busy', 'In a meeting', 'meeting');
        e = await nth(seenB, 3);
        assertPresence(e.p, {
            user_id: 'user123', status: 'busy', device: 'web', devices: ['web'], custom_status: 'In a meeting', activity: 'meeting',
        }, 'b sees user123 busy');

        // friend1 is active again: online at once, and away again after another idle period.
        b.userActivity();
        e = await nth(seenA, 4);
        assertPresence(e.p, { user_id: 'friend1', status: 'online', device: 'mobile', devices: ['mobile'] }, 'a sees friend1 online');
        e = await nth(seenA, 5);
        assertPresence(e.p, { user_id: 'friend1', status: 'away', device: 'mobile', devices: ['mobile'] }, 'a sees friend1 away again');

        // user123 closes the page: friend1 sees it offline once the grace window has passed.
        const t0 = now();
        a.disconnect();
        e = await nth(seenB, 4, GRACE + 3000);
        const elapsed = e.at - t0;
        assertPresence(e.p, {
            user_id: 'user123', status: 'offline', device: 'web', devices: [], custom_status: 'In a meeting', activity: 'meeting',
        }, 'b sees user123 offline');
        assert.ok(elapsed >= GRACE - 30, `offline ${Math.round(elapsed)} ms after the close: before the ${GRACE} ms grace`);
        assert.ok(elapsed <= GRACE + 1000, `offline ${Math.round(elapsed)} ms after the close`);
        assert.equal(await a.closed, 1005); // the seed's close() sends no code

        // Exactly these callbacks, in this order, and nothing else.
        await sleep(300);
        assert.deepEqual(seenA.map((x) => [x.p.user_id, x.p.status]),
            [['friend1', 'online'], ['friend1', 'away'], ['friend1', 'busy'], ['friend1', 'online'], ['friend1', 'away']]);
        assert.deepEqual(seenB.map((x) => [x.p.user_id, x.p.status]),
            [['user123', 'online'], ['user123', 'away'], ['user123', 'busy'], ['user123', 'offline']]);

        // What went on the wire, heartbeats aside, byte for byte.
        assert.deepEqual(nonHeartbeats(a), [
            '{"type":"set_online","device":"web"}',
            '{"type":"subscribe","user_ids":["friend1","friend2","friend3"]}',
            '{"type":"set_status","status":"away","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"busy","custom_status":"In a meeting","activity":"meeting"}',
        ]);
        assert.deepEqual(nonHeartbeats(b), [
            '{"type":"set_online","device":"mobile"}',
            '{"type":"subscribe","user_ids":["user123"]}',
            '{"type":"set_status","status":"away","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"busy","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"online","custom_status":null,"activity":null}',
            '{"type":"set_status","status":"away","custom_status":null,"activity":null}',
        ]);
        assert.ok(a.sent.every((f) => f === HB_WEB || nonHeartbeats(a).includes(f)));
        assert.ok(b.sent.every((f) => f === HB_MOBILE || nonHeartbeats(b).includes(f)));

        // The server sent them nothing but what the seed handles, and the welcome it ignores:
        // no error for any of its frames, no answer to its heartbeats.
        for (const [c, n] of [[a, 5], [b, 4]]) {
            assert.equal(c.received[0].type, 'welcome');
            const types = c.received.map((m) => m.type);
            assert.deepEqual(types.filter((t) => t !== 'welcome' && t !== 'initial_presence' && t !== 'presence_update'), [],
                `${c.userId} received ${JSON.stringify(c.received)}`);
            assert.equal(types.filter((t) => t === 'welcome').length, 1);
            assert.equal(types.filter((t) => t === 'initial_presence').length, 1);
            assert.equal(types.filter((t) => t === 'presence_update').length, c === a ? n : n - 1);
        }

        b.stopTimers();
        b.disconnect();
        await b.closed;
        a.stopTimers();
    });
});
