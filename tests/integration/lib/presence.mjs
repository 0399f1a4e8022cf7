// Helpers for the presence tests (tests/integration/presence.test.mjs, seed_client.test.mjs).
// Built on lib/daemon.mjs (startDaemon, withTimeout, sleep), which they re-export.
//
//   - PClient: a Node `ws` client that keeps every JSON message it receives. waitFor(pred)
//     takes the first matching message (leaving the others queued), expectNone(pred, ms)
//     asserts that none matching arrives for a period, barrier() proves that everything the
//     server queued for this connection before now has been received (a ping round trip on the
//     same connection: frames of one connection arrive in order).
//   - openClient / openUser / openWatcher: a client as a user; the same after set_online
//     (acknowledged); a client that subscribed to users (returns its initial_presence).
//   - Clients are registered per daemon, so closeAll(d) can end every one left open (after a
//     failure) before the daemon is stopped and its exit checked.
// Every wait has a time bound.
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

import { sleep, startDaemon, withTimeout } from './daemon.mjs';

export { sleep, withTimeout } from './daemon.mjs';

/**
 * Starts presenced (lib/daemon.mjs: ephemeral port, --dev-auth, state in memory only unless a
 * --data-dir is given) with flags.
 */
export function startPresenced(flags = [], opts) {
    return startDaemon(flags, opts);
}

/** Monotonic milliseconds (fractional). */
export const now = () => performance.now();

const registry = new WeakMap(); // daemon -> Set of PClient

let idSeq = 0;
/** A fresh request id string, unique in this process. */
export const nextId = (prefix = 'r') => `${prefix}${++idSeq}`;

/**
 * When daemon d has exited: its exit status and the start of the sanitizer report (or the
 * log's tail), for failure messages. '' while it runs.
 */
export function crashInfo(d) {
    if (!d || !d.exit) return '';
    const i = d.log.search(/ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/);
    const text = i >= 0 ? d.log.slice(i, i + 2500) : d.tail(30);
    return `\n-- presenced exited (code ${d.exit.code}, signal ${d.exit.signal}):\n${text}`;
}

export class PClient {
    constructor(ws, user, daemon = null) {
        this.ws = ws;
        this.user = user;
        this.daemon = daemon;
        this.all = []; // every message received, in order: {at, raw, msg}
        this.pending = []; // those not taken yet
        this.waiters = new Set();
        this.closeInfo = null;
        this.welcome = null;
        this.keepAliveTimer = null;
        this.closed = new Promise((resolve) => {
            ws.on('close', (code, reason) => {
                this.closeInfo = { code, reason: reason.toString(), at: now() };
                this.stopKeepAlive();
                this._wake();
                resolve(this.closeInfo);
            });
        });
        ws.on('message', (data, isBinary) => {
            const raw = isBinary ? data : data.toString('utf8');
            let msg;
            try {
                msg = JSON.parse(raw);
            } catch {
                msg = { type: '<unparsable>', raw };
            }
            const e = { at: now(), raw, msg };
            this.all.push(e);
            this.pending.push(e);
            this._wake();
        });
        ws.on('error', () => {}); // surfaced through close
    }

    _wake() {
        for (const w of [...this.waiters]) w();
    }

    get isOpen() {
        return this.ws.readyState === WebSocket.OPEN;
    }

    /** Sends obj (JSON-encoded) or a string as it is. */
    send(data) {
        const s = typeof data === 'string' ? data : JSON.stringify(data);
        return new Promise((resolve, reject) => this.ws.send(s, (e) => (e ? reject(e) : resolve())));
    }

    /**
     * The first queued or arriving message for which pred(msg, entry) holds; it is taken off the
     * queue (others stay). Returns the entry {at, raw, msg}. Throws after timeoutMs or on close.
     */
    async waitForEntry(pred, timeoutMs = 3000, what = 'a matching message') {
        const deadline = now() + timeoutMs;
        for (;;) {
            const i = this.pending.findIndex((e) => pred(e.msg, e));
            if (i >= 0) return this.pending.splice(i, 1)[0];
            if (this.closeInfo) {
                // A connection lost with the daemon: let it finish dying, to show why.
                if (this.daemon && !this.daemon.exit && this.closeInfo.code === 1006)
                    await Promise.race([this.daemon.exited, sleep(2000)]);
                throw new Error(`${this.user}: socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) ` +
                    `while waiting for ${what}; pending: ${this.describePending()}${crashInfo(this.daemon)}`);
            }
            const left = deadline - now();
            if (left <= 0)
                throw new Error(`${this.user}: no ${what} within ${timeoutMs} ms; pending: ${this.describePending()}` +
                    crashInfo(this.daemon));
            await new Promise((resolve) => {
                const t = setTimeout(done, left);
                const self = this;
                function done() {
                    clearTimeout(t);
                    self.waiters.delete(done);
                    resolve();
                }
                this.waiters.add(done);
            });
        }
    }

    async waitFor(pred, timeoutMs = 3000, what = 'a matching message') {
        return (await this.waitForEntry(pred, timeoutMs, what)).msg;
    }

    /** The next presence_update of user (optionally also matching pred), as the presence object. */
    async waitUpdate(user, pred = () => true, timeoutMs = 3000) {
        const m = await this.waitFor((x) => x.type === 'presence_update' && x.presence.user_id === user &&
            pred(x.presence), timeoutMs, `presence_update of ${user}`);
        return m.presence;
    }

    /** Like waitUpdate, also returning the arrival time. */
    async waitUpdateEntry(user, pred = () => true, timeoutMs = 3000) {
        return this.waitForEntry((x) => x.type === 'presence_update' && x.presence.user_id === user &&
            pred(x.presence), timeoutMs, `presence_update of ${user}`);
    }

    /** Queued messages matching pred, taken off the queue. */
    take(pred = () => true) {
        const out = [];
        this.pending = this.pending.filter((e) => {
            if (pred(e.msg, e)) {
                out.push(e.msg);
                return false;
            }
            return true;
        });
        return out;
    }

    /** Empties the queue; returns what was in it. */
    drain() {
        return this.take();
    }

    describePending(max = 5) {
        const p = this.pending.slice(0, max).map((e) => e.raw.slice(0, 300));
        return `[${p.join(', ')}${this.pending.length > max ? `, ... (${this.pending.length})` : ''}]`;
    }

    /**
     * Sends obj with a request id (a fresh string unless obj has one) and returns the answer
     * carrying that id (ack, error, pong, initial_presence, presence_result).
     */
    async request(obj, timeoutMs = 3000) {
        const id = obj.id ?? nextId();
        const msg = { ...obj, id };
        await this.send(msg);
        return this.waitFor((m) => m.id === id && ['ack', 'error', 'pong', 'initial_presence', 'presence_result']
            .includes(m.type), timeoutMs, `the answer to ${JSON.stringify(msg).slice(0, 200)}`);
    }

    /** request() that must be answered with ack. */
    async ok(obj, timeoutMs = 3000) {
        const a = await this.request(obj, timeoutMs);
        assert.equal(a.type, 'ack', `${JSON.stringify(obj)} answered ${JSON.stringify(a)}`);
        return a;
    }

    /**
     * Every frame the server queued for this connection before this call has arrived when it
     * returns: a ping with a fresh id and its pong, in order on the same connection.
     */
    async barrier(timeoutMs = 3000) {
        const id = nextId('barrier');
        await this.send({ type: 'ping', id });
        await this.waitFor((m) => m.type === 'pong' && m.id === id, timeoutMs, 'the barrier pong');
    }

    /** Asserts that no queued or arriving message matches pred during ms (then a barrier). */
    async expectNone(pred, ms, what = 'message') {
        const deadline = now() + ms;
        for (;;) {
            const hit = this.pending.find((e) => pred(e.msg, e));
            assert.equal(hit, undefined, `${this.user}: unexpected ${what}: ${hit && hit.raw}`);
            const left = deadline - now();
            if (left <= 0) break;
            await new Promise((resolve) => {
                const t = setTimeout(done, left);
                const self = this;
                function done() {
                    clearTimeout(t);
                    self.waiters.delete(done);
                    resolve();
                }
                this.waiters.add(done);
            });
            if (this.closeInfo) break;
        }
        if (this.isOpen) await this.barrier();
        const hit = this.pending.find((e) => pred(e.msg, e));
        assert.equal(hit, undefined, `${this.user}: unexpected ${what}: ${hit && hit.raw}`);
    }

    /** Asserts no presence_update (of user, or of anyone) arrives during ms. */
    expectNoUpdate(user, ms) {
        return this.expectNone((m) => m.type === 'presence_update' && (user === undefined || m.presence.user_id === user),
            ms, `presence_update${user === undefined ? '' : ` of ${user}`}`);
    }

    /** Subscribes (with an id) and returns the initial_presence message. */
    async subscribe(ids, timeoutMs = 3000) {
        const m = await this.request({ type: 'subscribe', user_ids: ids }, timeoutMs);
        assert.equal(m.type, 'initial_presence', JSON.stringify(m));
        return m;
    }

    /** get_presence (with an id); returns the presences object. */
    async getPresence(ids, timeoutMs = 3000) {
        const m = await this.request({ type: 'get_presence', user_ids: ids }, timeoutMs);
        assert.equal(m.type, 'presence_result', JSON.stringify(m));
        return m.presences;
    }

    /** Keeps the connection alive with WebSocket pings (no application message) every ms. */
    keepAlive(ms) {
        this.stopKeepAlive();
        this.keepAliveTimer = setInterval(() => {
            if (this.isOpen) this.ws.ping();
        }, ms);
    }

    /** Sends msg (a heartbeat unless given) every ms until stopKeepAlive or close. */
    heartbeatEvery(ms, msg = { type: 'heartbeat', device: 'web' }) {
        this.stopKeepAlive();
        const s = typeof msg === 'string' ? msg : JSON.stringify(msg);
        this.keepAliveTimer = setInterval(() => {
            if (this.isOpen) this.ws.send(s);
        }, ms);
    }

    stopKeepAlive() {
        if (this.keepAliveTimer) clearInterval(this.keepAliveTimer);
        this.keepAliveTimer = null;
    }

    /** Resolves with {code, reason, at} once closed; throws after timeoutMs. */
    waitClose(timeoutMs = 3000) {
        return withTimeout(this.closed, timeoutMs, `${this.user}'s WebSocket to close`);
    }

    /** Clean close (code 1000) and wait for it. */
    async close(timeoutMs = 3000) {
        this.stopKeepAlive();
        if (!this.closeInfo && this.ws.readyState !== WebSocket.CLOSING) this.ws.close(1000);
        return this.waitClose(timeoutMs);
    }

    /** Drops the TCP connection without a close frame (a network failure, seen from the server). */
    async terminate(timeoutMs = 3000) {
        this.stopKeepAlive();
        this.ws.terminate();
        return this.waitClose(timeoutMs);
    }
}

/** Opens a client as user; resolves after the welcome message (kept in client.welcome). */
export async function openClient(d, user, { timeoutMs = 5000 } = {}) {
    const url = `ws://127.0.0.1:${d.port}/presence?user=${encodeURIComponent(user)}`;
    const ws = new WebSocket(url, { handshakeTimeout: timeoutMs });
    const c = new PClient(ws, user, d);
    await withTimeout(new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
        ws.once('unexpected-response', (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    }), timeoutMs + 1000, `WebSocket open to ${url}`);
    let set = registry.get(d);
    if (!set) registry.set(d, (set = new Set()));
    set.add(c);
    c.closed.then(() => set.delete(c));
    c.welcome = await c.waitFor((m) => m.type === 'welcome', timeoutMs, 'welcome');
    return c;
}

/** Opens a client as user and announces it with set_online (fields merged in); waits for the ack. */
export async function openUser(d, user, fields = { device: 'web' }) {
    const c = await openClient(d, user);
    await c.ok({ type: 'set_online', ...fields });
    return c;
}

/** Opens a client as user that subscribes to ids; returns {c, initial} (initial: presences). */
export async function openWatcher(d, user, ids) {
    const c = await openClient(d, user);
    const m = await c.subscribe(ids);
    return { c, initial: m.presences };
}

/** Terminates every client of d still open (cleanup before stopping d). */
export async function closeAll(d) {
    const set = registry.get(d);
    if (!set) return;
    await Promise.all([...set].map((c) => c.terminate().catch(() => {})));
}

/** Stops d after closing its clients; asserts exit 0 and no sanitizer report (daemon.mjs). */
export async function stopDaemon(d) {
    if (!d) return;
    await closeAll(d);
    if (d.exit) return d.waitExit(); // exited on its own: checks (and fails) on its status
    return d.stop();
}

/** Asserts p is a well-formed presence object with exactly the expected fields (last_seen: a number). */
export function assertPresence(p, expected, what = 'presence') {
    assert.deepEqual(Object.keys(p), ['user_id', 'status', 'last_seen', 'device', 'devices', 'custom_status', 'activity'],
        `${what}: keys of ${JSON.stringify(p)}`);
    assert.equal(typeof p.last_seen, 'number', `${what}: last_seen`);
    assert.ok(Number.isFinite(p.last_seen) && p.last_seen > 1.5e9, `${what}: last_seen ${p.last_seen}`);
    const { last_seen: _ignored, ...rest } = p;
    const want = {
        user_id: expected.user_id,
        status: expected.status,
        device: expected.device,
        devices: expected.devices,
        custom_status: expected.custom_status ?? null,
        activity: expected.activity ?? null,
    };
    assert.deepEqual(rest, want, `${what}: ${JSON.stringify(p)}`);
}

/** Polls until f() resolves to a truthy value; bounded by timeoutMs. */
export async function eventually(f, timeoutMs = 3000, what = 'a condition', stepMs = 25) {
    const deadline = now() + timeoutMs;
    for (;;) {
        const v = await f();
        if (v) return v;
        if (now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(stepMs);
    }
}
