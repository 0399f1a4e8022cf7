// Helpers for the room tests (tests/integration/rooms.test.mjs), on top of lib/daemon.mjs and
// lib/presence.mjs (which stay as they are):
//   - ask(c, obj): a request with a fresh id and its answer of any type (channel_state,
//     channel_members, channel_count, ack, error), for PClients.
//   - joinRoom(c, channel, metadata): join and check the channel_state's shape; returns it.
//   - expectError(c, obj, code): the request is refused with exactly that error.
//   - LightClient / openLight(): a Node `ws` client for rooms with hundreds of members: it
//     parses only answers (messages with an id) and counts the rest by type, so 500 of them
//     do not keep every channel_delta they receive.
//   - RoomTracker: follows one room's events as one member receives them, and checks that each
//     count is the previous one plus the changes the event lists, and that joined / left ids
//     agree with the member set it knows.
//   - bytewise(a, b): compares user ids as the server orders them (UTF-8 bytes).
// Every wait has a time bound.
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { nextId, now, sleep, withTimeout } from './presence.mjs';

export const ERROR_KEYS_ID = ['type', 'id', 'code', 'message'];
export const MEMBER_KEYS = ['user_id', 'joined_at', 'last_seen', 'metadata', 'devices'];
export const ROOM_EVENTS = new Set(['member_joined', 'member_left', 'member_updated', 'channel_delta']);

/** Orders user ids by their UTF-8 bytes (the server's pagination order). */
export function bytewise(a, b) {
    return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Sends obj with a fresh id and returns the message answering it (any type). */
export async function ask(c, obj, timeoutMs = 5000) {
    const id = obj.id ?? nextId('room');
    const msg = { ...obj, id };
    await c.send(msg);
    return c.waitFor((m) => m.id === id, timeoutMs, `the answer to ${JSON.stringify(msg).slice(0, 200)}`);
}

/** Asserts m is a member object: exactly the documented fields, in order. */
export function assertMember(m, what = 'member') {
    assert.deepEqual(Object.keys(m), MEMBER_KEYS, `${what}: keys of ${JSON.stringify(m)}`);
    assert.equal(typeof m.user_id, 'string', what);
    assert.ok(Number.isFinite(m.joined_at) && m.joined_at > 1.5e9, `${what}: joined_at ${m.joined_at}`);
    assert.ok(Number.isFinite(m.last_seen) && m.last_seen >= m.joined_at, `${what}: last_seen ${m.last_seen}`);
    assert.ok(m.metadata && typeof m.metadata === 'object' && !Array.isArray(m.metadata), `${what}: metadata`);
    assert.ok(Array.isArray(m.devices), `${what}: devices`);
}

/** Checks the shape of a channel_state / channel_members answer. */
export function assertPage(m, type, id, channel) {
    const keys = type === 'channel_state'
        ? ['type', 'id', 'channel', 'mode', 'count', 'members', 'next_cursor']
        : ['type', 'id', 'channel', 'count', 'members', 'next_cursor'];
    assert.deepEqual(Object.keys(m), keys, `${type}: keys of ${JSON.stringify(m).slice(0, 300)}`);
    assert.equal(m.type, type);
    assert.equal(m.id, id);
    assert.equal(m.channel, channel);
    for (const x of m.members) assertMember(x, `${type} member`);
    for (let i = 1; i < m.members.length; i++)
        assert.ok(bytewise(m.members[i - 1].user_id, m.members[i].user_id) < 0,
            `${type}: members out of order at ${i}: ${m.members[i - 1].user_id} then ${m.members[i].user_id}`);
}

/** Joins channel (with metadata when given); returns the checked channel_state. */
export async function joinRoom(c, channel, metadata, timeoutMs = 5000) {
    const id = nextId('join');
    const msg = { type: 'join', channel, id };
    if (metadata !== undefined) msg.metadata = metadata;
    const m = await ask(c, msg, timeoutMs);
    assert.equal(m.type, 'channel_state', `join ${channel} answered ${JSON.stringify(m)}`);
    assertPage(m, 'channel_state', id, channel);
    return m;
}

/** Asserts that obj is refused with code (and the id echoed); returns the error. */
export async function expectError(c, obj, code, timeoutMs = 5000) {
    const id = nextId('bad');
    const m = await ask(c, { ...obj, id }, timeoutMs);
    assert.deepEqual(Object.keys(m), ERROR_KEYS_ID, `${JSON.stringify(obj).slice(0, 200)} answered ${JSON.stringify(m)}`);
    assert.equal(m.type, 'error', `${JSON.stringify(obj).slice(0, 200)} answered ${JSON.stringify(m)}`);
    assert.equal(m.code, code, `${JSON.stringify(obj).slice(0, 200)}: ${m.message}`);
    assert.equal(typeof m.message, 'string');
    return m;
}

/** channel_count of channel, asked on c. */
export async function countOf(c, channel) {
    const m = await ask(c, { type: 'channel_count', channel });
    assert.deepEqual(Object.keys(m), ['type', 'id', 'channel', 'count'], JSON.stringify(m));
    assert.equal(m.type, 'channel_count');
    assert.equal(m.channel, channel);
    return m.count;
}

/**
 * Walks channel_members of channel in pages of limit (undefined: the default), following
 * next_cursor; checks every page and returns {ids, pages}.
 */
export async function walkMembers(c, channel, limit, maxPages = 2000) {
    const ids = [];
    const pages = [];
    let cursor = null;
    for (let i = 0; i < maxPages; i++) {
        const id = nextId('page');
        const msg = { type: 'channel_members', channel, cursor, id };
        if (limit !== undefined) msg.limit = limit;
        const m = await ask(c, msg);
        assertPage(m, 'channel_members', id, channel);
        pages.push(m);
        for (const x of m.members) ids.push(x.user_id);
        if (m.next_cursor === null) return { ids, pages };
        assert.equal(m.next_cursor, m.members[m.members.length - 1].user_id, 'next_cursor is the last id of the page');
        cursor = m.next_cursor;
    }
    throw new Error(`channel_members of ${channel} did not end within ${maxPages} pages`);
}

// ---------------------------------------------------------------------------------------------

const ANSWER = /^\{"type":"([a-z_]+)","id":/;
const TYPE = /^\{"type":"([a-z_]+)"/;

/**
 * A light room member: counts messages by type, parses and keeps only answers (messages
 * carrying an id) and errors, so hundreds of them can sit in a large room.
 */
export class LightClient {
    constructor(ws, user) {
        this.ws = ws;
        this.user = user;
        this.counts = new Map();
        this.answers = [];
        this.waiters = new Set();
        this.welcome = null;
        this.closeInfo = null;
        this.closed = new Promise((resolve) => {
            ws.on('close', (code, reason) => {
                this.closeInfo = { code, reason: reason.toString() };
                this._wake();
                resolve(this.closeInfo);
            });
        });
        ws.on('error', () => {});
        ws.on('message', (data) => {
            const raw = data.toString('utf8');
            const t = TYPE.exec(raw);
            const type = t ? t[1] : '<unknown>';
            this.counts.set(type, (this.counts.get(type) ?? 0) + 1);
            if (type === 'welcome') this.welcome = JSON.parse(raw);
            else if (ANSWER.test(raw) || type === 'error') this.answers.push(JSON.parse(raw));
            this._wake();
        });
    }

    _wake() {
        for (const w of [...this.waiters]) w();
    }

    count(type) {
        return this.counts.get(type) ?? 0;
    }

    send(obj) {
        const s = typeof obj === 'string' ? obj : JSON.stringify(obj);
        return new Promise((resolve, reject) => this.ws.send(s, (e) => (e ? reject(e) : resolve())));
    }

    async waitUntil(pred, timeoutMs, what) {
        const deadline = now() + timeoutMs;
        for (;;) {
            const v = pred();
            if (v) return v;
            if (this.closeInfo) throw new Error(`${this.user}: closed (${this.closeInfo.code}) while waiting for ${what}`);
            const left = deadline - now();
            if (left <= 0) throw new Error(`${this.user}: no ${what} within ${timeoutMs} ms`);
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

    /** Sends obj with a fresh id; returns the answer. */
    async request(obj, timeoutMs = 10000) {
        const id = nextId('light');
        await this.send({ ...obj, id });
        return this.waitUntil(() => {
            const i = this.answers.findIndex((m) => m.id === id);
            return i >= 0 ? this.answers.splice(i, 1)[0] : null;
        }, timeoutMs, `the answer to ${obj.type}`);
    }

    terminate() {
        this.ws.terminate();
        return withTimeout(this.closed, 3000, `${this.user} to close`).catch(() => {});
    }
}

/** Opens a LightClient as user; resolves after the welcome. */
export async function openLight(d, user, timeoutMs = 10000) {
    const url = `ws://127.0.0.1:${d.port}/presence?user=${encodeURIComponent(user)}`;
    const ws = new WebSocket(url, { handshakeTimeout: timeoutMs });
    const c = new LightClient(ws, user);
    await withTimeout(new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
        ws.once('unexpected-response', (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    }), timeoutMs, `WebSocket open as ${user}`);
    await c.waitUntil(() => c.welcome, timeoutMs, 'the welcome');
    assert.equal(c.welcome.user_id, user, 'the welcome names the user');
    return c;
}

/** Runs f over items with at most n at a time; resolves to the results in order. */
export async function inBatches(items, n, f) {
    const out = new Array(items.length);
    let next = 0;
    async function worker() {
        while (next < items.length) {
            const i = next++;
            out[i] = await f(items[i], i);
        }
    }
    await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
    return out;
}

// ---------------------------------------------------------------------------------------------

/**
 * One room as one member sees it. Starts from that member's channel_state (which must hold
 * every member: count <= the page size), then apply() each room event in arrival order.
 */
export class RoomTracker {
    constructor(state) {
        assert.equal(state.members.length, state.count, 'the tracker starts from a complete channel_state');
        this.channel = state.channel;
        this.count = state.count;
        this.members = new Set(state.members.map((m) => m.user_id));
        this.log = []; // one line per event, for failure messages
        this.deltas = 0;
        this.single = 0; // member_joined / member_left events
    }

    apply(m) {
        assert.equal(m.channel, this.channel);
        const before = this.count;
        const what = () => `${JSON.stringify(m).slice(0, 400)} after count ${before}\n${this.log.slice(-10).join('\n')}`;
        if (m.type === 'member_joined') {
            assert.deepEqual(Object.keys(m), ['type', 'channel', 'member', 'count']);
            assertMember(m.member);
            assert.ok(!this.members.has(m.member.user_id), `joined twice: ${what()}`);
            this.members.add(m.member.user_id);
            assert.equal(m.count, before + 1, `member_joined count: ${what()}`);
            this.single++;
        } else if (m.type === 'member_left') {
            assert.deepEqual(Object.keys(m), ['type', 'channel', 'user_id', 'reason', 'count']);
            assert.ok(this.members.delete(m.user_id), `left without being a member: ${what()}`);
            assert.equal(m.count, before - 1, `member_left count: ${what()}`);
            this.single++;
        } else if (m.type === 'member_updated') {
            assert.deepEqual(Object.keys(m), ['type', 'channel', 'member', 'count']);
            assertMember(m.member);
            assert.ok(this.members.has(m.member.user_id), `updated a non-member: ${what()}`);
            assert.equal(m.count, before, `member_updated count: ${what()}`);
        } else if (m.type === 'channel_delta') {
            assert.deepEqual(Object.keys(m), ['type', 'channel', 'joined', 'left', 'updated', 'count']);
            for (const x of m.joined) {
                assertMember(x, 'joined member');
                assert.ok(!this.members.has(x.user_id), `delta joins a member: ${x.user_id}: ${what()}`);
                this.members.add(x.user_id);
            }
            for (const id of m.left) {
                assert.equal(typeof id, 'string');
                assert.ok(this.members.delete(id), `delta: ${id} left without being a member: ${what()}`);
            }
            for (const x of m.updated) {
                assertMember(x, 'updated member');
                assert.ok(this.members.has(x.user_id), `delta updates a non-member ${x.user_id}: ${what()}`);
            }
            assert.ok(m.joined.length + m.left.length + m.updated.length > 0, `empty delta: ${what()}`);
            assert.equal(m.count, before + m.joined.length - m.left.length,
                `channel_delta count is not the count after its changes: ${what()}`);
            this.deltas++;
        } else {
            return;
        }
        this.count = m.count;
        assert.equal(this.members.size, this.count, `member set and count disagree: ${what()}`);
        this.log.push(`${m.type} count ${m.count}`);
    }

    /** Takes c's room events in order until the count is target; returns the events applied. */
    async follow(c, target, timeoutMs = 10000) {
        const deadline = now() + timeoutMs;
        const seen = [];
        while (this.count !== target) {
            const left = deadline - now();
            if (left <= 0) throw new Error(`${this.channel}: count ${this.count}, not ${target}, after ${timeoutMs} ms`);
            const m = await c.waitFor((x) => ROOM_EVENTS.has(x.type) && x.channel === this.channel, left,
                `an event of ${this.channel} (count ${this.count}, waiting for ${target})`);
            this.apply(m);
            seen.push(m);
        }
        return seen;
    }
}

export { sleep };
