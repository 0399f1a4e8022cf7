// The HTTP API for backends (src/http/api.c, issue #7) against the real daemon, over raw
// HTTP/1.1 on loopback, with WebSocket clients (lib/presence.mjs, lib/rooms.mjs) making the
// changes the API reads and streams:
//  - API keys: no header, a wrong / truncated / extended key, other schemes, a comment line of
//    the keys file: 401 with WWW-Authenticate: Bearer and {error:{code,message}}, counted in
//    presenced_api_auth_failures_total; every key of a file with several works; the API is off
//    (404) without a keys file; a keys file that is missing, empty or holds a short key stops
//    the start (exit 2, the file named).
//  - Bodies: no or another Content-Type (415), bad JSON, duplicate keys, non-objects, wrong
//    field types, unknown fields, too many ids (400, the code named) and nothing changes.
//  - Routing: unknown paths (404) and wrong methods (405 with Allow) under /v1/, HEAD.
//  - Presence: GET and bulk, unknown users (404, left out of bulk), percent-encoded ids
//    ('/', ' ', UTF-8), privacy through `as` (invisible, contacts-only, blocking): hidden
//    exactly like unknown.
//  - PUT /v1/presence: a backend status merges with live sessions by busy > online > away,
//    counts only beside a live session, and expires; an activity with an expiry reaches
//    WebSocket watchers and expires with it.
//  - Channels: members walked by cursor (every member once, in byte order, pages bounded by
//    limit) and count; limit validation; percent-encoded channel names.
//  - Privacy GET/PUT round trip (lists sorted, replaced as a whole, list_full; the user as
//    their own contact or blocked user refused with bad_user_id and the WebSocket's words) and
//    its effect on WebSocket watchers (bare offline on losing permission, full presence on
//    gaining it).
//  - Disconnect: every connection of the user closes with 4002, its sessions end without a
//    grace window (offline at once); explain: its fields.
//  - /v1/events: presence changes and room joins/updates/leaves made over WebSocket arrive as
//    server-sent events with consecutive ids; filters by users, channel prefix, both, and `as`
//    (no gap in the ids where hidden events were left out);
//    keep-alive comments; a reader that stops reading is dropped (presenced_sse_dropped_total)
//    while WebSocket clients keep getting answers quickly; on the Redis store (when
//    redis-server is installed), where the privacy check of a stream opened `as` a user answers
//    later, a stream that ends with checks in flight is never written to (it was, after free).
// Every daemon runs with --ephemeral on 127.0.0.1:0 and is stopped with exit 0 (under ASan: no
// leak); every wait is bounded.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { BIN, httpRequest, metricValue, rawConnect, scrapeMetrics, waitForMetrics } from './lib/daemon.mjs';
import {
    assertPresence, closeAll, eventually, now, openClient, openUser, openWatcher, startPresenced, stopDaemon,
} from './lib/presence.mjs';
import { REDIS_SERVER, startRedis, stopNode } from './lib/redis.mjs';
import { assertMember, ask, bytewise, joinRoom } from './lib/rooms.mjs';

const T = { timeout: 60000 };
const KEY1 = 'api-test-key-one-0123456789abcdef';
const KEY2 = 'api-test-key-two-fedcba9876543210';
const GRACE = 0.5; // --offline-grace, s
const KEEPALIVE = 1; // --sse-keepalive, s
const MAX_IDS = 50; // --max-ids-per-request
const MAX_CONTACTS = 5; // --max-contacts
const QUIET = 250; // ms during which nothing may arrive

let tmp;
let keysFile;

before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'presenced-api-'));
    keysFile = path.join(tmp, 'keys');
    // Several keys, a comment, blank lines, surrounding blanks and a CRLF line end.
    fs.writeFileSync(keysFile, `# backends\n${KEY1}\n\n   ${KEY2}  \r\n# old: retired-key-0000000000000\n`);
});

after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// HTTP helpers

/**
 * One request on a fresh connection. opts: key (null: no Authorization), auth (the whole
 * header value), json (encoded as the body), body (a string sent as it is), contentType
 * (null: none), headers. Returns {status, headers, body, json}.
 */
async function api(d, method, p, opts = {}) {
    const { key = KEY1, auth, json, body, contentType, headers = {} } = opts;
    let text = `${method} ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n`;
    const authz = auth !== undefined ? auth : key === null ? null : `Bearer ${key}`;
    if (authz !== null) text += `Authorization: ${authz}\r\n`;
    const payload = body !== undefined ? body : json !== undefined ? JSON.stringify(json) : null;
    const ct = contentType !== undefined ? contentType : payload !== null ? 'application/json' : null;
    if (ct !== null) text += `Content-Type: ${ct}\r\n`;
    for (const [k, v] of Object.entries(headers)) text += `${k}: ${v}\r\n`;
    if (payload !== null) text += `Content-Length: ${Buffer.byteLength(payload)}\r\n`;
    text += `\r\n${payload ?? ''}`;
    const r = await httpRequest(d, Buffer.from(text, 'utf8'), { noBody: method === 'HEAD' });
    let parsed = null;
    if (r.body && /^application\/json/.test(r.headers['content-type'] ?? '')) parsed = JSON.parse(r.body);
    return { ...r, json: parsed };
}

/** Asserts r is an error answer: status, JSON {error:{code,message}} exactly, the code. */
function assertError(r, status, code, what = '') {
    assert.equal(r.status, status, `${what}: answered ${r.status} ${r.body}`);
    assert.match(r.headers['content-type'] ?? '', /^application\/json/, `${what}: content type`);
    const j = JSON.parse(r.body);
    assert.deepEqual(Object.keys(j), ['error'], `${what}: ${r.body}`);
    assert.deepEqual(Object.keys(j.error), ['code', 'message'], `${what}: ${r.body}`);
    assert.equal(j.error.code, code, `${what}: ${r.body}`);
    assert.equal(typeof j.error.message, 'string');
    assert.ok(j.error.message.length > 0, `${what}: empty message`);
    return j.error;
}

/** Asserts r is 200 with JSON; returns the parsed body. */
function ok200(r, what = '') {
    assert.equal(r.status, 200, `${what}: answered ${r.status} ${r.body}`);
    assert.match(r.headers['content-type'] ?? '', /^application\/json/);
    assert.equal(r.headers['cache-control'], 'no-store', `${what}: answers about people are not cached`);
    return r.json;
}

const enc = encodeURIComponent;

function daemonFlags(extra = []) {
    return ['--api-keys-file', keysFile, '--sse-keepalive', String(KEEPALIVE), '--offline-grace', String(GRACE),
        '--max-ids-per-request', String(MAX_IDS), '--max-contacts', String(MAX_CONTACTS), ...extra];
}

/** Runs presenced expecting it to refuse to start; returns {status, stderr}. */
function refusedStart(flags) {
    const r = spawnSync(BIN, ['--listen', '127.0.0.1:0', '--ephemeral', '--dev-auth', ...flags],
        { encoding: 'utf8', timeout: 15000, env: { ...process.env, ASAN_OPTIONS: process.env.ASAN_OPTIONS ?? 'detect_leaks=1' } });
    assert.equal(r.error, undefined, `spawn: ${r.error}`);
    return { status: r.status, stderr: r.stderr };
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

/** Parses an SSE block (the text between blank lines) into {comment} or {id, event, data}. */
function parseBlock(text) {
    const lines = text.split('\n');
    if (lines.every((l) => l.startsWith(':'))) return { comment: lines.map((l) => l.slice(1).trim()).join('\n') };
    const ev = { id: null, event: 'message', dataLines: [] };
    for (const l of lines) {
        if (l.startsWith(':')) continue;
        const i = l.indexOf(':');
        const field = i < 0 ? l : l.slice(0, i);
        let value = i < 0 ? '' : l.slice(i + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'id') ev.id = value;
        else if (field === 'event') ev.event = value;
        else if (field === 'data') ev.dataLines.push(value);
        else throw new Error(`unexpected SSE field ${JSON.stringify(l)}`);
    }
    assert.equal(ev.dataLines.length, 1, `one data line per event: ${JSON.stringify(text)}`);
    return { id: ev.id, event: ev.event, data: JSON.parse(ev.dataLines[0]), raw: text };
}

/** A /v1/events reader on a raw socket: keeps comments and events apart, in order. */
class Sse {
    constructor(conn, head) {
        this.conn = conn;
        this.head = head;
        this.comments = []; // {at, text}
        this.pending = []; // events not taken yet
        this.all = []; // every event, in order
    }

    static async open(d, query = '', { key = KEY1 } = {}) {
        const conn = await rawConnect(d);
        await conn.write(`GET /v1/events${query ? `?${query}` : ''} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
            `Authorization: Bearer ${key}\r\nAccept: text/event-stream\r\n\r\n`);
        const head = await conn.waitFor((b) => {
            const i = b.indexOf('\r\n\r\n');
            if (i < 0) return undefined;
            const lines = b.subarray(0, i).toString('latin1').split('\r\n');
            const status = Number(lines[0].split(' ')[1]);
            const headers = {};
            for (const l of lines.slice(1)) {
                const j = l.indexOf(':');
                headers[l.slice(0, j).trim().toLowerCase()] = l.slice(j + 1).trim();
            }
            return { value: { status, headers, statusLine: lines[0] }, used: i + 4 };
        }, 5000, 'the head of the event stream');
        return new Sse(conn, head);
    }

    /** The next block (a comment or an event), parsed; throws on timeout or end. */
    async nextBlock(timeoutMs) {
        const text = await this.conn.waitFor((b) => {
            const i = b.indexOf('\n\n');
            return i < 0 ? undefined : { value: b.subarray(0, i).toString('utf8'), used: i + 2 };
        }, timeoutMs, 'a server-sent event');
        const blk = parseBlock(text);
        if (blk.comment !== undefined) this.comments.push({ at: now(), text: blk.comment });
        else this.all.push(blk);
        return blk;
    }

    /** The first event (queued or arriving) matching pred; taken off the queue. */
    async waitEvent(pred, timeoutMs = 3000, what = 'a matching event') {
        const deadline = now() + timeoutMs;
        for (;;) {
            const i = this.pending.findIndex(pred);
            if (i >= 0) return this.pending.splice(i, 1)[0];
            const left = deadline - now();
            if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms; pending: ${this.describe()}`);
            let blk;
            try {
                blk = await this.nextBlock(left);
            } catch (e) {
                throw new Error(`${e.message} (waiting for ${what}; pending: ${this.describe()})`);
            }
            if (blk.comment === undefined) this.pending.push(blk);
        }
    }

    /** Events up to and including the first matching pred (taken off the queue). */
    async until(pred, timeoutMs = 3000, what = 'the marker event') {
        const marker = await this.waitEvent(pred, timeoutMs, what);
        const i = this.all.indexOf(marker);
        const before = this.pending.filter((e) => this.all.indexOf(e) < i);
        this.pending = this.pending.filter((e) => this.all.indexOf(e) > i);
        return [...before, marker];
    }

    /** The next comment block; throws after timeoutMs. */
    async waitComment(timeoutMs) {
        const deadline = now() + timeoutMs;
        const seen = this.comments.length;
        while (this.comments.length === seen) {
            const left = deadline - now();
            if (left <= 0) throw new Error(`no comment within ${timeoutMs} ms`);
            const blk = await this.nextBlock(left);
            if (blk.comment === undefined) this.pending.push(blk);
        }
        return this.comments[this.comments.length - 1];
    }

    describe() {
        return `[${this.pending.slice(0, 5).map((e) => e.raw.slice(0, 200)).join(' | ')}]`;
    }

    close() {
        this.conn.destroy();
    }
}

const isPresence = (user, pred = () => true) => (e) => e.event === 'presence' && e.data.presence.user_id === user &&
    pred(e.data.presence, e.data);

/** Asserts the events' ids are consecutive integers (as strings). */
function assertConsecutive(events, what) {
    for (let i = 1; i < events.length; i++)
        assert.equal(Number(events[i].id), Number(events[i - 1].id) + 1,
            `${what}: id ${events[i].id} after ${events[i - 1].id}`);
}

// =============================================================================================

describe('API keys', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('a request without a valid key is refused with 401 and counted', T, async () => {
        const m0 = await scrapeMetrics(d);
        const bad = [
            { key: null, what: 'no Authorization header' },
            { key: 'api-test-key-one-0123456789abcdeX', what: 'a wrong key of the same length' },
            { key: KEY1.slice(0, -1), what: 'a truncated key' },
            { key: `${KEY1}x`, what: 'a key with a byte more' },
            { key: `${KEY1}${KEY2}`, what: 'two keys joined' },
            { key: '# backends', what: 'a comment line of the file' },
            { key: 'retired-key-0000000000000', what: 'a key commented out' },
            { auth: 'Bearer', what: 'the scheme alone' },
            { auth: 'Bearer ', what: 'the scheme and an empty key' },
            { auth: `Basic ${Buffer.from(`x:${KEY1}`).toString('base64')}`, what: 'the Basic scheme' },
            { auth: `Token ${KEY1}`, what: 'another scheme' },
            { auth: KEY1, what: 'the key without a scheme' },
            { auth: `Bearer  ${KEY1}`, what: 'two spaces (the key would start with one)' },
        ];
        for (const b of bad) {
            const r = await api(d, 'GET', '/v1/presence/anyone', b);
            const e = assertError(r, 401, 'unauthorized', b.what);
            assert.equal(r.headers['www-authenticate'], 'Bearer', `${b.what}: WWW-Authenticate`);
            assert.doesNotMatch(e.message, new RegExp(KEY1), 'the key never echoes');
        }
        // Authentication comes before routing: nothing about endpoints is told without a key.
        for (const [m, p] of [['GET', '/v1/nothing'], ['DELETE', '/v1/presence/x'], ['GET', '/v1/events'],
            ['POST', '/v1/presence/bulk']]) {
            const r = await api(d, m, p, { key: 'nope-nope-nope-nope-nope' });
            assertError(r, 401, 'unauthorized', `${m} ${p}`);
            assert.equal(r.headers['www-authenticate'], 'Bearer');
        }
        const m1 = await scrapeMetrics(d);
        assert.equal(metricValue(m1, 'presenced_api_auth_failures_total') - metricValue(m0, 'presenced_api_auth_failures_total'),
            bad.length + 4, 'each refused request counted once');
        // The WebSocket auth failures are another family: untouched by API keys.
        assert.equal(metricValue(m1, 'presenced_auth_failures_total', { reason: 'missing' }),
            metricValue(m0, 'presenced_auth_failures_total', { reason: 'missing' }));
    });

    test('every key of a file with several keys is accepted; the scheme is case-insensitive', T, async () => {
        const m0 = await scrapeMetrics(d);
        for (const auth of [`Bearer ${KEY1}`, `Bearer ${KEY2}`, `bearer ${KEY1}`, `BEARER ${KEY2}`]) {
            const r = await api(d, 'GET', '/v1/channels/doc%3A0/count', { auth });
            assert.deepEqual(ok200(r, auth), { channel: 'doc:0', count: 0 });
        }
        const m1 = await scrapeMetrics(d);
        assert.equal(metricValue(m1, 'presenced_api_auth_failures_total'), metricValue(m0, 'presenced_api_auth_failures_total'));
    });

    test('without --api-keys-file the API is off: /v1/ is 404, even with a key', T, async () => {
        const d2 = await startPresenced(['--offline-grace', '0.5']);
        try {
            for (const p of ['/v1/presence/x', '/v1/events', '/v1/channels/c/count']) {
                const r = await api(d2, 'GET', p);
                assert.equal(r.status, 404, `${p}: ${r.status} ${r.body}`);
                assert.equal(r.headers['www-authenticate'], undefined);
            }
        } finally {
            await stopDaemon(d2);
        }
    });

    test('a keys file that is missing, empty or holds a short key stops the start (exit 2)', T, async () => {
        const missing = path.join(tmp, 'no-such-keys');
        const empty = path.join(tmp, 'keys-empty');
        fs.writeFileSync(empty, '# nothing here\n\n');
        const short = path.join(tmp, 'keys-short');
        fs.writeFileSync(short, `${KEY1}\nshort-key\n`);
        const spaced = path.join(tmp, 'keys-spaced');
        fs.writeFileSync(spaced, `${KEY1} ${KEY2}\n`);
        for (const [file, re] of [[missing, /cannot open API keys file '.*no-such-keys'/],
            [empty, /API keys file '.*keys-empty' holds no key/],
            [short, /API keys file '.*keys-short' line 2: a key is one word of at least 16 characters/],
            [spaced, /API keys file '.*keys-spaced' line 1: a key is one word/]]) {
            const r = refusedStart(['--api-keys-file', file]);
            assert.equal(r.status, 2, `${file}: exit ${r.status}\n${r.stderr}`);
            assert.match(r.stderr, re);
            assert.doesNotMatch(r.stderr, /listening on/);
            assert.doesNotMatch(r.stderr, new RegExp(KEY1), 'keys never reach the log');
        }
    });
});

// =============================================================================================

describe('requests, bodies and routing', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('bodies: Content-Type, bad JSON and non-objects are refused (415 / 400)', T, async () => {
        const bulk = (opts) => api(d, 'POST', '/v1/presence/bulk', opts);
        assertError(await bulk({ body: '{"user_ids":[]}', contentType: null }), 415, 'unsupported_media_type', 'no Content-Type');
        assertError(await bulk({ body: '{"user_ids":[]}', contentType: 'text/plain' }), 415, 'unsupported_media_type', 'text/plain');
        assertError(await bulk({ body: '{"user_ids":[]}', contentType: 'application/jsonx' }), 415, 'unsupported_media_type',
            'application/jsonx');
        // A parameter is fine.
        assert.deepEqual(ok200(await bulk({ body: '{"user_ids":[]}', contentType: 'application/json; charset=utf-8' })),
            { presences: {} });
        const cases = [
            ['', 'bad_json', 'an empty body'],
            ['{"user_ids":[', 'bad_json', 'truncated JSON'],
            ['{"user_ids":[]} x', 'bad_json', 'data after the value'],
            ['{"user_ids":[],"user_ids":[]}', 'bad_json', 'a duplicate key'],
            ["{'user_ids':[]}", 'bad_json', 'single quotes'],
            ['{"user_ids":["a\\u0000"]}', 'bad_json', 'the escape \\u0000'],
            ['[1,2]', 'bad_message', 'an array'],
            ['"user_ids"', 'bad_message', 'a string'],
            ['null', 'bad_message', 'null'],
        ];
        for (const [body, code, what] of cases) assertError(await bulk({ body }), 400, code, what);
        for (const [body, code, what] of cases)
            assertError(await api(d, 'PUT', '/v1/presence/body-user', { body }), 400, code, `PUT: ${what}`);
        // None of it created the user.
        assertError(await api(d, 'GET', '/v1/presence/body-user'), 404, 'not_found');
    });

    test('wrong field types and values are refused with the field named, and change nothing', T, async () => {
        const bulk = (json) => api(d, 'POST', '/v1/presence/bulk', { json });
        const cases = [
            [{ user_ids: 'bob' }, 'bad_field', /user_ids/],
            [{ user_ids: { bob: 1 } }, 'bad_field', /user_ids/],
            [{}, 'bad_field', /user_ids/],
            [{ user_ids: [1] }, 'bad_user_id', /user_ids/],
            [{ user_ids: ['ok', ''] }, 'bad_user_id', /\[1\]/],
            [{ user_ids: ['a\u0001b'] }, 'bad_user_id', /user_ids/],
            [{ user_ids: ['x'.repeat(129)] }, 'bad_user_id', /user_ids/],
            [{ user_ids: [], as: 5 }, 'bad_user_id', /as/],
            [{ user_ids: [], as: '' }, 'bad_user_id', /as/],
            [{ user_ids: [], as: ['a'] }, 'bad_user_id', /as/],
            [{ user_ids: [], extra: 1 }, 'unknown_field', /extra/],
            [{ user_ids: [], User_ids: [] }, 'unknown_field', /User_ids/],
            [{ user_ids: Array.from({ length: MAX_IDS + 1 }, (_, i) => `u${i}`) }, 'too_many_ids', /50/],
        ];
        for (const [json, code, re] of cases) {
            const e = assertError(await bulk(json), 400, code, JSON.stringify(json).slice(0, 80));
            assert.match(e.message, re);
        }
        // Exactly the limit is fine.
        assert.deepEqual(ok200(await bulk({ user_ids: Array.from({ length: MAX_IDS }, (_, i) => `u${i}`) })), { presences: {} });

        const put = (json) => api(d, 'PUT', '/v1/presence/types-user', { json });
        const puts = [
            [{ status: 'offline' }, 'bad_status'],
            [{ status: 'Busy' }, 'bad_status'],
            [{ status: 2 }, 'bad_status'],
            [{ status: true }, 'bad_status'],
            [{ custom_status: 5 }, 'bad_field'],
            [{ custom_status: 'x'.repeat(257) }, 'bad_field'],
            [{ custom_status: 'line\nbreak' }, 'bad_field'],
            [{ activity: ['meeting'] }, 'bad_field'],
            [{ activity: 'm'.repeat(65) }, 'bad_field'],
            [{ activity: 'meeting', expires_in: '60' }, 'bad_field'],
            [{ activity: 'meeting', expires_in: 0 }, 'bad_field'],
            [{ activity: 'meeting', expires_in: -5 }, 'bad_field'],
            [{ activity: 'meeting', expires_in: 31 * 86400 + 1 }, 'bad_field'],
            [{ device: 'web' }, 'unknown_field'],
            [{ status: 'busy', user_id: 'someone-else' }, 'unknown_field'],
        ];
        for (const [json, code] of puts) assertError(await put(json), 400, code, `PUT ${JSON.stringify(json).slice(0, 60)}`);
        // Limits themselves are fine (256 bytes, 64 bytes, 31 days).
        const okr = ok200(await put({ custom_status: 'é'.repeat(128), activity: 'm'.repeat(64), expires_in: 31 * 86400 }));
        assert.equal(okr.custom_status, 'é'.repeat(128));
        assert.equal(okr.activity, 'm'.repeat(64));

        const priv = (json) => api(d, 'PUT', '/v1/users/types-user/privacy', { json });
        for (const [json, code] of [
            [{ visibility: 'hidden' }, 'bad_visibility'],
            [{ visibility: 1 }, 'bad_visibility'],
            [{ visibility: null }, 'bad_visibility'],
            [{ contacts: 'bob' }, 'bad_field'],
            [{ contacts: [1] }, 'bad_user_id'],
            [{ blocked: [null] }, 'bad_user_id'],
            [{ blocked: {} }, 'bad_field'],
            [{ visibility: 'nobody', friends: [] }, 'unknown_field'],
        ]) assertError(await priv(json), 400, code, `privacy ${JSON.stringify(json)}`);
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/users/types-user/privacy')),
            { user_id: 'types-user', visibility: 'everyone', contacts: [], blocked: [] }, 'nothing changed');

        // Query parameters.
        assertError(await api(d, 'GET', '/v1/presence/types-user?as='), 400, 'bad_user_id', 'empty as');
        assertError(await api(d, 'GET', '/v1/presence/types-user?as=%01'), 400, 'bad_user_id', 'as with a control');
        assertError(await api(d, 'GET', `/v1/presence/types-user?as=${'a'.repeat(129)}`), 400, 'bad_user_id', 'long as');
        for (const l of ['0', '1001', 'abc', '5x', '-1', '', '1.5'])
            assertError(await api(d, 'GET', `/v1/channels/doc%3A1/members?limit=${l}`), 400, 'bad_field', `limit=${l}`);
        assertError(await api(d, 'GET', `/v1/channels/doc%3A1/members?cursor=${'c'.repeat(200)}`), 400, 'bad_field', 'long cursor');
        for (const [ch, what] of [['bad%20channel', 'a space'], ['a'.repeat(201), '201 bytes'], ['caf%C3%A9', 'non-ASCII']]) {
            assertError(await api(d, 'GET', `/v1/channels/${ch}/members`), 400, 'bad_channel', what);
            assertError(await api(d, 'GET', `/v1/channels/${ch}/count`), 400, 'bad_channel', what);
        }
        // User ids in the path.
        assertError(await api(d, 'GET', `/v1/presence/${'u'.repeat(129)}`), 400, 'bad_user_id', '129 bytes');
        assertError(await api(d, 'GET', '/v1/presence/a%0Ab'), 400, 'bad_user_id', 'a control character');
        assertError(await api(d, 'GET', '/v1/presence/%FF%FE'), 400, 'bad_user_id', 'invalid UTF-8');
        assertError(await api(d, 'GET', '/v1/users/%C2%85/explain'), 400, 'bad_user_id', 'a C1 control');
        assertError(await api(d, 'GET', '/v1/presence/a%00b'), 404, 'not_found', 'a NUL');
        assertError(await api(d, 'GET', '/v1/presence/a%G0'), 404, 'not_found', 'a bad escape');
        assertError(await api(d, 'GET', '/v1/presence/a%2'), 404, 'not_found', 'a cut escape');
        assert.equal(ok200(await api(d, 'GET', `/v1/presence/types-user?as=${'a'.repeat(128)}`)).user_id, 'types-user');
    });

    test('unknown paths under /v1/ are 404, wrong methods 405 with Allow', T, async () => {
        for (const p of ['/v1/', '/v1/nothing', '/v1/presence', '/v1/presence/', '/v1/presence/a/b', '/v1/users/a',
            '/v1/users/a/', '/v1/users/a/other', '/v1/users//privacy', '/v1/channels/c', '/v1/channels/c/other',
            '/v1/channels/c/members/x', '/v1/events/x', '/v1/Presence/a', '/v1/channels/team/eng/count',
            '/v1/a/b/c/d/e/f']) {
            assertError(await api(d, 'GET', p), 404, 'not_found', p);
        }
        const cases = [
            ['DELETE', '/v1/presence/a', 'GET, HEAD, PUT'],
            ['POST', '/v1/presence/a', 'GET, HEAD, PUT'],
            ['PATCH', '/v1/presence/bulk', 'GET, HEAD, PUT, POST'],
            ['DELETE', '/v1/presence/bulk', 'GET, HEAD, PUT, POST'],
            ['PUT', '/v1/channels/c/members', 'GET, HEAD'],
            ['POST', '/v1/channels/c/count', 'GET, HEAD'],
            ['DELETE', '/v1/users/a/privacy', 'GET, HEAD, PUT'],
            ['POST', '/v1/users/a/privacy', 'GET, HEAD, PUT'],
            ['GET', '/v1/users/a/disconnect', 'POST'],
            ['PUT', '/v1/users/a/disconnect', 'POST'],
            ['POST', '/v1/users/a/explain', 'GET, HEAD'],
            ['POST', '/v1/events', 'GET'],
            ['OPTIONS', '/v1/events', 'GET'],
        ];
        for (const [m, p, allow] of cases) {
            const r = await api(d, m, p);
            assertError(r, 405, 'method_not_allowed', `${m} ${p}`);
            assert.equal(r.headers.allow, allow, `${m} ${p}: Allow`);
        }
    });

    test('HEAD answers like GET without a body', T, async () => {
        await api(d, 'PUT', '/v1/presence/head-user', { json: { activity: 'focus' } });
        const g = await api(d, 'GET', '/v1/presence/head-user');
        const h = await api(d, 'HEAD', '/v1/presence/head-user');
        assert.equal(h.status, 200);
        assert.equal(h.body, '');
        assert.equal(h.headers['content-length'], g.headers['content-length']);
        assert.equal(h.headers['content-type'], g.headers['content-type']);
        assert.equal((await api(d, 'HEAD', '/v1/presence/nobody-at-all')).status, 404);
        assert.equal((await api(d, 'HEAD', '/v1/channels/doc%3A1/count')).status, 200);
    });
});

// =============================================================================================

describe('presence reads and privacy through as', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('GET and bulk: live users, unknown users, duplicates', T, async () => {
        const c = await openUser(d, 'pr-alice', { device: 'web', custom_status: 'hi', activity: 'focus' });
        const c2 = await openUser(d, 'pr-alice', { device: 'mobile' });
        const p = ok200(await api(d, 'GET', '/v1/presence/pr-alice'));
        assertPresence(p, { user_id: 'pr-alice', status: 'online', device: 'mobile', devices: ['mobile', 'web'],
            custom_status: 'hi', activity: 'focus' });
        assert.ok(Math.abs(p.last_seen - Date.now() / 1000) < 5, `last_seen ${p.last_seen}`);
        const e = assertError(await api(d, 'GET', '/v1/presence/pr-ghost'), 404, 'not_found');
        const b = ok200(await api(d, 'POST', '/v1/presence/bulk',
            { json: { user_ids: ['pr-ghost', 'pr-alice', 'pr-alice', 'pr-ghost2'] } }));
        assert.deepEqual(Object.keys(b), ['presences']);
        assert.deepEqual(Object.keys(b.presences), ['pr-alice'], 'unknown users left out, duplicates once');
        assertPresence(b.presences['pr-alice'], { user_id: 'pr-alice', status: 'online', device: 'mobile',
            devices: ['mobile', 'web'], custom_status: 'hi', activity: 'focus' });
        assert.deepEqual(ok200(await api(d, 'POST', '/v1/presence/bulk', { json: { user_ids: [] } })), { presences: {} });
        assert.deepEqual(ok200(await api(d, 'POST', '/v1/presence/bulk', { json: { user_ids: ['a'], as: null } })),
            { presences: {} }, 'as null is the backend view');
        await c.close();
        await c2.close();
        // After the grace window: offline, still known.
        const off = await eventually(async () => {
            const r = ok200(await api(d, 'GET', '/v1/presence/pr-alice'));
            return r.status === 'offline' ? r : null;
        }, 5000, 'pr-alice offline');
        assert.deepEqual(off.devices, []);
        assert.equal(e.message, 'unknown user, or hidden from the requester');
    });

    test('percent-encoded user ids: slash, space, reserved characters, UTF-8', T, async () => {
        const ids = ['a/b c', 'x?y#z&w=1', 'café ☕', '100%', 'plus+sign'];
        const cs = [];
        for (const id of ids) cs.push(await openUser(d, id, { device: 'web' }));
        for (const id of ids) {
            const p = ok200(await api(d, 'GET', `/v1/presence/${enc(id)}`), id);
            assert.equal(p.user_id, id);
            assert.equal(p.status, 'online');
            const x = ok200(await api(d, 'GET', `/v1/users/${enc(id)}/explain`), id);
            assert.equal(x.user_id, id);
            assert.equal(ok200(await api(d, 'GET', `/v1/users/${enc(id)}/privacy`)).user_id, id);
        }
        // An unescaped '/' splits the path: another endpoint (404), never the user.
        assertError(await api(d, 'GET', '/v1/presence/a/b%20c'), 404, 'not_found');
        // '+' in a path is itself; in a query it is a space.
        assert.equal(ok200(await api(d, 'GET', '/v1/presence/plus+sign')).user_id, 'plus+sign');
        assert.equal(ok200(await api(d, 'GET', `/v1/presence/${enc('a/b c')}?as=a/b+c`)).user_id, 'a/b c');
        const b = ok200(await api(d, 'POST', '/v1/presence/bulk', { json: { user_ids: ids } }));
        assert.deepEqual(Object.keys(b.presences).sort(), [...ids].sort());
        for (const c of cs) await c.close();
    });

    test('privacy through as: invisible, contacts-only and blocking users are hidden like unknown ones', T, async () => {
        const nobody = await openUser(d, 'pv-nobody', { device: 'web' });
        await nobody.ok({ type: 'set_visibility', visibility: 'nobody' });
        const blocker = await openUser(d, 'pv-blocker', { device: 'web' });
        await blocker.ok({ type: 'block', user_id: 'pv-req' });
        const contacts = await openUser(d, 'pv-contacts', { device: 'web' });
        // Set over the API this time.
        ok200(await api(d, 'PUT', '/v1/users/pv-contacts/privacy', { json: { visibility: 'contacts', contacts: ['pv-friend'] } }));
        const open = await openUser(d, 'pv-open', { device: 'web' });
        const targets = ['pv-nobody', 'pv-blocker', 'pv-contacts', 'pv-open'];
        const unknownAnswer = await api(d, 'GET', `/v1/presence/pv-never-seen?as=pv-req`);
        assertError(unknownAnswer, 404, 'not_found');
        const visible = {
            'pv-req': ['pv-open'],
            'pv-friend': ['pv-blocker', 'pv-contacts', 'pv-open'],
            'pv-nobody': ['pv-nobody', 'pv-blocker', 'pv-open'], // itself, even while invisible
            'pv-contacts': ['pv-blocker', 'pv-contacts', 'pv-open'],
        };
        for (const [as, seen] of Object.entries(visible)) {
            for (const t of targets) {
                const r = await api(d, 'GET', `/v1/presence/${t}?as=${as}`);
                if (seen.includes(t)) {
                    assert.equal(ok200(r, `${as} sees ${t}`).status, 'online');
                } else {
                    // Byte for byte the answer for a user the server never saw.
                    assert.equal(r.status, 404, `${as} must not see ${t}`);
                    assert.equal(r.body, unknownAnswer.body, `${as} / ${t}: hidden exactly like unknown`);
                }
            }
            const b = ok200(await api(d, 'POST', '/v1/presence/bulk', { json: { user_ids: [...targets, 'pv-never'], as } }));
            assert.deepEqual(Object.keys(b.presences).sort(), [...seen].sort(), `bulk as ${as}`);
        }
        // The backend's own view (no as) shows everyone as they are, the invisible one online.
        const all = ok200(await api(d, 'POST', '/v1/presence/bulk', { json: { user_ids: targets } }));
        assert.deepEqual(Object.keys(all.presences).sort(), [...targets].sort());
        for (const t of targets) assert.equal(all.presences[t].status, 'online', t);
        for (const c of [nobody, blocker, contacts, open]) await c.close();
    });
});

// =============================================================================================

describe('PUT /v1/presence: a backend status merges with live sessions', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('busy with an expiry outranks an online session, reaches watchers, and expires', T, async () => {
        const { c: w } = await openWatcher(d, 'cal-w', ['cal']);
        const u = await openUser(d, 'cal', { device: 'web' });
        await w.waitUpdate('cal', (p) => p.status === 'online');
        const t0 = now();
        const r = ok200(await api(d, 'PUT', '/v1/presence/cal', { json: { status: 'busy', activity: 'meeting', expires_in: 1.5 } }));
        assertPresence(r, { user_id: 'cal', status: 'busy', device: 'web', devices: ['web'], activity: 'meeting' }, 'PUT answer');
        const p = await w.waitUpdate('cal', () => true);
        assertPresence(p, { user_id: 'cal', status: 'busy', device: 'web', devices: ['web'], activity: 'meeting' }, 'watcher');
        const x = ok200(await api(d, 'GET', '/v1/users/cal/explain'));
        assert.equal(x.server_status.status, 'busy');
        assert.equal(x.server_status.counted, true);
        const wall = Date.now() / 1000;
        assert.ok(Math.abs(x.server_status.expires_at - (wall + 1.5)) < 1, `expires_at ${x.server_status.expires_at}`);
        assert.equal(x.activity_expires_at, x.server_status.expires_at, 'one deadline for the request');
        assert.equal(x.custom_status_expires_at, null);
        assert.match(x.rule, /^busy: /);
        assert.match(x.rule, /the backend's status/);
        assert.match(x.rule, /it comes from the backend's status/);
        assert.equal(x.sessions.length, 1);
        assert.equal(x.sessions[0].claim, 'online');
        // Both expire together: one update back to the session's own claim, activity gone.
        const back = await w.waitUpdateEntry('cal', () => true, 5000);
        const dt = back.at - t0;
        assertPresence(back.msg.presence, { user_id: 'cal', status: 'online', device: 'web', devices: ['web'] }, 'after expiry');
        assert.ok(dt >= 1300 && dt < 4000, `expired after ${dt.toFixed(0)} ms, not about 1500`);
        await w.expectNoUpdate('cal', QUIET);
        const x2 = ok200(await api(d, 'GET', '/v1/users/cal/explain'));
        assert.equal(x2.server_status, null);
        assert.equal(x2.activity_expires_at, null);
        await u.close();
        await w.close();
    });

    test('the aggregation rule: busy > online > away, the backend claim counting like a session', T, async () => {
        const { c: w } = await openWatcher(d, 'agg-w', ['agg']);
        const u = await openUser(d, 'agg', { device: 'web' });
        await w.waitUpdate('agg', (p) => p.status === 'online');
        // away beside an online session: still online, nothing to tell watchers.
        assert.equal(ok200(await api(d, 'PUT', '/v1/presence/agg', { json: { status: 'away' } })).status, 'online');
        await w.expectNoUpdate('agg', QUIET);
        let x = ok200(await api(d, 'GET', '/v1/users/agg/explain'));
        assert.deepEqual(x.server_status, { status: 'away', expires_at: null, counted: true });
        assert.match(x.rule, /^online: .*it comes from a session's claim$/);
        // The session turns away: both claims away.
        await u.ok({ type: 'set_status', status: 'away' });
        assert.equal((await w.waitUpdate('agg')).status, 'away');
        // online from the backend outranks the away session.
        assert.equal(ok200(await api(d, 'PUT', '/v1/presence/agg', { json: { status: 'online' } })).status, 'online');
        assert.equal((await w.waitUpdate('agg')).status, 'online');
        x = ok200(await api(d, 'GET', '/v1/users/agg/explain'));
        assert.match(x.rule, /it comes from the backend's status$/);
        // The session claims busy: it outranks the backend's online.
        await u.ok({ type: 'set_status', status: 'busy' });
        assert.equal((await w.waitUpdate('agg')).status, 'busy');
        // Clearing the backend's claim (null) leaves the session's.
        assert.equal(ok200(await api(d, 'PUT', '/v1/presence/agg', { json: { status: null } })).status, 'busy');
        await w.expectNoUpdate('agg', QUIET);
        await u.ok({ type: 'set_status', status: 'away' });
        assert.equal((await w.waitUpdate('agg')).status, 'away');
        assert.equal(ok200(await api(d, 'GET', '/v1/users/agg/explain')).server_status, null);
        await u.close();
        await w.close();
    });

    test('a backend status counts only beside a live session', T, async () => {
        const { c: w } = await openWatcher(d, 'nl-w', ['nolive']);
        const r = ok200(await api(d, 'PUT', '/v1/presence/nolive', { json: { status: 'busy', custom_status: 'on a call' } }));
        // Never connected: last_seen 0 (no sign of life yet) and no device.
        assert.deepEqual(r, { user_id: 'nolive', status: 'offline', last_seen: 0, device: '', devices: [],
            custom_status: 'on a call', activity: null }, 'PUT');
        // The custom status is visible to watchers while offline; the status is not.
        const p = await w.waitUpdate('nolive');
        assert.equal(p.status, 'offline');
        assert.equal(p.custom_status, 'on a call');
        const x = ok200(await api(d, 'GET', '/v1/users/nolive/explain'));
        assert.deepEqual(x.server_status, { status: 'busy', expires_at: null, counted: false });
        assert.match(x.rule, /^offline: no live session \(the backend's status counts only beside one\)$/);
        assert.deepEqual(x.sessions, []);
        // A session announcing itself online shows busy at once: the backend's claim merges.
        const u = await openUser(d, 'nolive', { device: 'desk' });
        const p2 = await w.waitUpdate('nolive');
        assertPresence(p2, { user_id: 'nolive', status: 'busy', device: 'desk', devices: ['desk'], custom_status: 'on a call' });
        await w.expectNoUpdate('nolive', QUIET);
        await u.close();
        await w.close();
    });

    test('an activity with an expiry reaches watchers and expires; null clears', T, async () => {
        const { c: w } = await openWatcher(d, 'act-w', ['act']);
        const u = await openUser(d, 'act', { device: 'web' });
        await w.waitUpdate('act', (p) => p.status === 'online');
        const t0 = now();
        ok200(await api(d, 'PUT', '/v1/presence/act', { json: { activity: 'meeting', expires_in: 1 } }));
        const p = await w.waitUpdate('act');
        assertPresence(p, { user_id: 'act', status: 'online', device: 'web', devices: ['web'], activity: 'meeting' });
        const gone = await w.waitUpdateEntry('act', () => true, 4000);
        assert.equal(gone.msg.presence.activity, null);
        assert.equal(gone.msg.presence.status, 'online');
        const dt = gone.at - t0;
        assert.ok(dt >= 800 && dt < 3500, `the activity expired after ${dt.toFixed(0)} ms, not about 1000`);
        // Without expiry it stays; null clears it; the session's own status never moved.
        ok200(await api(d, 'PUT', '/v1/presence/act', { json: { activity: 'presenting', custom_status: 'demo' } }));
        let q = await w.waitUpdate('act');
        assert.equal(q.activity, 'presenting');
        assert.equal(q.custom_status, 'demo');
        ok200(await api(d, 'PUT', '/v1/presence/act', { json: { activity: null } }));
        q = await w.waitUpdate('act');
        assert.equal(q.activity, null);
        assert.equal(q.custom_status, 'demo', 'an absent field is kept');
        // The same values again change nothing visible.
        ok200(await api(d, 'PUT', '/v1/presence/act', { json: { custom_status: 'demo' } }));
        await w.expectNoUpdate('act', QUIET);
        await u.close();
        await w.close();
    });
});

// =============================================================================================

describe('channel members and count', () => {
    let d;
    const N = 23;
    const CH = 'doc:pages';
    let clients = [];
    let ids = [];
    before(async () => {
        d = await startPresenced(daemonFlags());
        // Ids whose byte order differs from code-point-insensitive orders: upper case, digits,
        // UTF-8.
        ids = Array.from({ length: N }, (_, i) => (i % 4 === 0 ? `M${i}` : i % 4 === 1 ? `m${i}` : i % 4 === 2 ? `é${i}` : `${i}`));
        for (const id of ids) {
            const c = await openClient(d, id);
            await joinRoom(c, CH, { n: id });
            clients.push(c);
        }
    });
    after(async () => {
        await closeAll(d);
        await stopDaemon(d);
    });

    async function walk(limit) {
        const seen = [];
        const pages = [];
        let cursor = null;
        for (let i = 0; i < 100; i++) {
            const q = [limit !== undefined ? `limit=${limit}` : '', cursor !== null ? `cursor=${enc(cursor)}` : '']
                .filter(Boolean).join('&');
            const r = ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/members${q ? `?${q}` : ''}`));
            assert.deepEqual(Object.keys(r), ['channel', 'count', 'members', 'next_cursor']);
            assert.equal(r.channel, CH);
            assert.equal(r.count, N, 'count on every page');
            assert.ok(r.members.length <= (limit ?? 100), `page of ${r.members.length} over limit ${limit}`);
            for (const m of r.members) assertMember(m);
            pages.push(r);
            seen.push(...r.members.map((m) => m.user_id));
            if (r.next_cursor === null) return { seen, pages };
            assert.ok(r.members.length > 0, 'a page with a cursor is not empty');
            assert.equal(r.next_cursor, r.members[r.members.length - 1].user_id);
            cursor = r.next_cursor;
        }
        throw new Error('the walk did not end');
    }

    test('a cursor walk covers every member exactly once, in byte order, pages bounded by limit', T, async () => {
        const want = [...ids].sort(bytewise);
        for (const limit of [1, 5, 7, 22, 23, 24, 1000, undefined]) {
            const { seen, pages } = await walk(limit);
            assert.deepEqual(seen, want, `limit ${limit}: every member once, in order`);
            const l = limit ?? 100;
            assert.ok(pages.length <= Math.ceil(N / l) + 1, `limit ${limit}: ${pages.length} pages`);
            for (const p of pages.slice(0, -1)) assert.equal(p.members.length, l, `limit ${limit}: full pages`);
        }
        const r = ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/members`));
        const m = r.members.find((x) => x.user_id === ids[3]);
        assert.deepEqual(m.metadata, { n: ids[3] });
        assert.deepEqual(m.devices, ['unknown']);
        // A cursor past the last member: an empty last page.
        const end = ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/members?cursor=${enc('\u{10FFFF}')}`));
        assert.deepEqual(end.members, []);
        assert.equal(end.next_cursor, null);
        assert.equal(end.count, N);
    });

    test('count, leaves, unknown and percent-encoded channels', T, async () => {
        assert.deepEqual(ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/count`)), { channel: CH, count: N });
        // The colon may also come unescaped.
        assert.deepEqual(ok200(await api(d, 'GET', `/v1/channels/${CH}/count`)), { channel: CH, count: N });
        const c = clients.shift();
        const gone = c.user;
        await ask(c, { type: 'leave', channel: CH });
        assert.deepEqual(ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/count`)), { channel: CH, count: N - 1 });
        const all = ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/members?limit=1000`));
        assert.equal(all.members.length, N - 1);
        assert.ok(!all.members.some((m) => m.user_id === gone));
        clients.push(c);
        await joinRoom(c, CH);
        assert.equal(ok200(await api(d, 'GET', `/v1/channels/${enc(CH)}/count`)).count, N);
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/channels/doc%3Aempty/members')),
            { channel: 'doc:empty', count: 0, members: [], next_cursor: null });
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/channels/doc%3Aempty/count')), { channel: 'doc:empty', count: 0 });
        const team = await openClient(d, 'team-member');
        await joinRoom(team, 'team/eng@eu.1-x_y');
        const tr = ok200(await api(d, 'GET', `/v1/channels/${enc('team/eng@eu.1-x_y')}/members`));
        assert.equal(tr.channel, 'team/eng@eu.1-x_y');
        assert.deepEqual(tr.members.map((m) => m.user_id), ['team-member']);
        assert.equal(ok200(await api(d, 'GET', '/v1/channels/team%2feng%40eu.1-x_y/count')).count, 1, 'lower-case escapes');
        await team.close();
    });
});

// =============================================================================================

describe('privacy settings, disconnect and explain', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('privacy GET/PUT round trip: sorted lists, replaced as a whole, list_full', T, async () => {
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/users/rt/privacy')),
            { user_id: 'rt', visibility: 'everyone', contacts: [], blocked: [] }, 'defaults for a fresh user');
        const want = { user_id: 'rt', visibility: 'contacts', contacts: ['amy', 'zed', 'Émile'], blocked: ['mal'] };
        assert.deepEqual(ok200(await api(d, 'PUT', '/v1/users/rt/privacy',
            { json: { visibility: 'contacts', contacts: ['zed', 'Émile', 'amy', 'zed'], blocked: ['mal'] } })), want);
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/users/rt/privacy')), want);
        // The user's own connection reads the same settings.
        const c = await openClient(d, 'rt');
        const gp = await ask(c, { type: 'get_privacy' });
        assert.equal(gp.type, 'privacy', JSON.stringify(gp));
        assert.deepEqual({ v: gp.visibility, c: gp.contacts, b: gp.blocked },
            { v: 'contacts', c: ['amy', 'zed', 'Émile'], b: ['mal'] });
        // A change over the connection shows through the API.
        await c.ok({ type: 'add_contact', user_id: 'bob' });
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/users/rt/privacy')).contacts, ['amy', 'bob', 'zed', 'Émile']);
        // Replaced as a whole: what is absent is reset.
        assert.deepEqual(ok200(await api(d, 'PUT', '/v1/users/rt/privacy', { json: { blocked: ['x1'] } })),
            { user_id: 'rt', visibility: 'everyone', contacts: [], blocked: ['x1'] });
        // Over --max-contacts: refused, and nothing changes.
        const six = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'];
        assertError(await api(d, 'PUT', '/v1/users/rt/privacy', { json: { contacts: six } }), 400, 'list_full');
        assertError(await api(d, 'PUT', '/v1/users/rt/privacy', { json: { blocked: six } }), 400, 'list_full');
        assert.deepEqual(ok200(await api(d, 'GET', '/v1/users/rt/privacy')),
            { user_id: 'rt', visibility: 'everyone', contacts: [], blocked: ['x1'] });
        assert.equal(ok200(await api(d, 'PUT', '/v1/users/rt/privacy', { json: { contacts: six.slice(0, 5) } })).contacts.length, 5);
        assert.deepEqual(ok200(await api(d, 'PUT', '/v1/users/rt/privacy', { json: {} })),
            { user_id: 'rt', visibility: 'everyone', contacts: [], blocked: [] });
        await c.close();
    });

    test('a user cannot be their own contact or block themselves: 400 bad_user_id, as over the WebSocket', T, async () => {
        const me = 'Émile-self';
        const p = `/v1/users/${enc(me)}/privacy`;
        const want = { user_id: me, visibility: 'contacts', contacts: ['amy'], blocked: ['mal'] };
        assert.deepEqual(ok200(await api(d, 'PUT', p, { json: { visibility: 'contacts', contacts: ['amy'], blocked: ['mal'] } })), want);
        // The WebSocket's refusal, for the meaning the API must match.
        const c = await openClient(d, me);
        const ws = await ask(c, { type: 'add_contact', user_id: me });
        assert.deepEqual({ type: ws.type, code: ws.code }, { type: 'error', code: 'bad_user_id' }, JSON.stringify(ws));
        for (const json of [
            { contacts: [me] },
            { blocked: [me] },
            { visibility: 'contacts', contacts: ['amy', me], blocked: ['mal'] },
            { contacts: ['amy'], blocked: ['mal', me] },
        ]) {
            const e = assertError(await api(d, 'PUT', p, { json }), 400, 'bad_user_id', `PUT ${JSON.stringify(json)}`);
            assert.equal(e.message, ws.message, 'the same words as the WebSocket');
        }
        // Nothing changed; an id that only resembles the user's is someone else.
        assert.deepEqual(ok200(await api(d, 'GET', p)), want);
        assert.deepEqual(ok200(await api(d, 'PUT', p, { json: { contacts: [`${me}x`, 'émile-self'] } })).contacts,
            ['Émile-selfx', 'émile-self']);
        await c.close();
    });

    test('a privacy PUT takes effect at once for WebSocket watchers', T, async () => {
        const t = await openUser(d, 'pt', { device: 'web', activity: 'focus' });
        const { c: amy } = await openWatcher(d, 'pt-amy', ['pt']);
        const { c: bob } = await openWatcher(d, 'pt-bob', ['pt']);
        const bare = '{"type":"presence_update","presence":{"user_id":"pt","status":"offline"}}';
        // contacts-only, amy a contact: bob loses pt (one bare offline), amy sees nothing change.
        ok200(await api(d, 'PUT', '/v1/users/pt/privacy', { json: { visibility: 'contacts', contacts: ['pt-amy'] } }));
        assert.equal((await bob.waitForEntry((m) => m.type === 'presence_update', 3000)).raw, bare);
        await Promise.all([bob.expectNoUpdate('pt', QUIET), amy.expectNoUpdate('pt', QUIET)]);
        // Changes of pt reach amy only.
        await t.ok({ type: 'set_status', status: 'busy' });
        assert.equal((await amy.waitUpdate('pt')).status, 'busy');
        await bob.expectNoUpdate('pt', QUIET);
        // everyone, but amy blocked: bob gains the full presence, amy loses it.
        ok200(await api(d, 'PUT', '/v1/users/pt/privacy', { json: { blocked: ['pt-amy'] } }));
        assertPresence(await bob.waitUpdate('pt'), { user_id: 'pt', status: 'busy', device: 'web', devices: ['web'], activity: 'focus' });
        assert.equal((await amy.waitForEntry((m) => m.type === 'presence_update', 3000)).raw, bare);
        await Promise.all([bob.expectNoUpdate('pt', QUIET), amy.expectNoUpdate('pt', QUIET)]);
        // nobody: bob loses it too; a get_presence of either finds nothing, like an unknown user.
        ok200(await api(d, 'PUT', '/v1/users/pt/privacy', { json: { visibility: 'nobody' } }));
        assert.equal((await bob.waitForEntry((m) => m.type === 'presence_update', 3000)).raw, bare);
        await Promise.all([bob.expectNoUpdate('pt', QUIET), amy.expectNoUpdate('pt', QUIET)]);
        assert.deepEqual(await amy.getPresence(['pt']), {}, 'amy was unblocked but pt is invisible');
        assert.deepEqual(await bob.getPresence(['pt']), {});
        // Back to the defaults: both see pt again.
        ok200(await api(d, 'PUT', '/v1/users/pt/privacy', { json: {} }));
        assert.equal((await bob.waitUpdate('pt')).status, 'busy');
        assert.equal((await amy.waitUpdate('pt')).status, 'busy');
        for (const c of [t, amy, bob]) await c.close();
    });

    test('disconnect closes every connection of the user with 4002, and only theirs, without a grace window', T, async () => {
        // A long grace window: the kicked sessions must not wait it out (docs/API.md).
        const d2 = await startPresenced(daemonFlags(['--offline-grace', '10']));
        try {
            const { c: w } = await openWatcher(d2, 'kick-w', ['kick']);
            const a = await openUser(d2, 'kick', { device: 'web' });
            const b = await openUser(d2, 'kick', { device: 'mobile' });
            const idle = await openClient(d2, 'kick'); // a connection that never announced itself
            const other = await openUser(d2, 'kick-other', { device: 'web' });
            await w.waitUpdate('kick', (p) => p.devices.length === 2);
            await joinRoom(other, 'doc:kick');
            await joinRoom(a, 'doc:kick');
            await other.waitFor((m) => m.type === 'member_joined' && m.member.user_id === 'kick');
            const t0 = now();
            const r = ok200(await api(d2, 'POST', '/v1/users/kick/disconnect'));
            assert.deepEqual(r, { disconnected: 3 });
            for (const c of [a, b, idle]) {
                const ci = await c.waitClose(3000);
                assert.equal(ci.code, 4002, `${c.user}: close ${ci.code} ${ci.reason}`);
                assert.equal(ci.reason, 'disconnected by the server');
            }
            // Offline at once, and out of its rooms at once too; the other user is untouched.
            const off = await w.waitUpdate('kick', (p) => p.status === 'offline', 3000);
            const left = await other.waitFor((m) => m.type === 'member_left' && m.user_id === 'kick', 3000);
            assert.equal(left.reason, 'disconnected');
            assert.equal(left.count, 1);
            assert.deepEqual(off.devices, []);
            const dt = now() - t0;
            assert.ok(dt < 2000, `offline after ${dt.toFixed(0)} ms: the 10 s grace window was waited out`);
            const x = ok200(await api(d2, 'GET', '/v1/users/kick/explain'));
            assert.deepEqual(x.sessions, [], 'no lingering session');
            await other.barrier();
            assert.ok(other.isOpen);
            assert.deepEqual(ok200(await api(d2, 'POST', '/v1/users/kick/disconnect')), { disconnected: 0 });
            assert.deepEqual(ok200(await api(d2, 'POST', '/v1/users/never-here/disconnect')), { disconnected: 0 });
            // A body is not needed, and one is ignored.
            assert.deepEqual(ok200(await api(d2, 'POST', '/v1/users/never-here/disconnect', { json: { why: 'x' } })), { disconnected: 0 });
            // The user may come back.
            const again = await openUser(d2, 'kick', { device: 'web' });
            assert.equal((await w.waitUpdate('kick')).status, 'online');
            for (const c of [again, other, w]) await c.close();
            // SIGINT ends the grace windows at once (SIGTERM would wait out the 10 s).
            d2.signal('SIGINT');
            await d2.waitExit(15000);
        } finally {
            await stopDaemon(d2);
        }
    });

    test('explain: sessions, devices, claims, liveness and the rule', T, async () => {
        const t0 = Date.now() / 1000;
        const a = await openUser(d, 'ex', { device: 'web' });
        const b = await openUser(d, 'ex', { device: 'mobile', status: 'busy' });
        const x = ok200(await api(d, 'GET', '/v1/users/ex/explain'));
        assert.deepEqual(Object.keys(x), ['user_id', 'presence', 'rule', 'visibility', 'server_status',
            'custom_status_expires_at', 'activity_expires_at', 'sessions']);
        assert.equal(x.user_id, 'ex');
        assertPresence(x.presence, { user_id: 'ex', status: 'busy', device: 'mobile', devices: ['mobile', 'web'] });
        assert.equal(x.rule, "busy: the highest claim (busy > online > away) of 2 session(s); it comes from a session's claim");
        assert.equal(x.visibility, 'everyone');
        assert.equal(x.server_status, null);
        assert.equal(x.custom_status_expires_at, null);
        assert.equal(x.activity_expires_at, null);
        assert.equal(x.sessions.length, 2);
        const byId = new Map(x.sessions.map((s) => [s.session_id, s]));
        const wall = Date.now() / 1000;
        for (const [c, device, claim] of [[a, 'web', 'online'], [b, 'mobile', 'busy']]) {
            const s = byId.get(c.welcome.session_id);
            assert.ok(s, `session ${c.welcome.session_id} of the welcome is listed: ${JSON.stringify(x.sessions)}`);
            assert.deepEqual(Object.keys(s), ['session_id', 'node', 'device', 'claim', 'lingering', 'last_liveness']);
            assert.deepEqual({ node: s.node, device: s.device, claim: s.claim, lingering: s.lingering },
                { node: 'local', device, claim, lingering: false });
            assert.ok(s.last_liveness >= t0 - 1 && s.last_liveness <= wall + 0.5, `last_liveness ${s.last_liveness} in [${t0}, ${wall}]`);
        }
        // Invisible, with a custom status that expires: both explained.
        await a.ok({ type: 'set_visibility', visibility: 'nobody' });
        await a.ok({ type: 'set_status', custom_status: 'brb', custom_status_expires_in: 600 });
        await b.close();
        const x2 = ok200(await api(d, 'GET', '/v1/users/ex/explain'));
        assert.equal(x2.visibility, 'nobody');
        assert.equal(x2.presence.status, 'online', 'explain shows the real presence to the backend');
        assert.ok(Math.abs(x2.custom_status_expires_at - (Date.now() / 1000 + 600)) < 5, `${x2.custom_status_expires_at}`);
        assert.equal(x2.sessions.length, 1);
        assert.equal(x2.rule, "online: the highest claim (busy > online > away) of 1 session(s); it comes from a session's claim");
        // The last connection gone: its session lingers through the grace window.
        await a.close();
        const x3 = ok200(await api(d, 'GET', '/v1/users/ex/explain'));
        assert.equal(x3.sessions.length, 1);
        assert.equal(x3.sessions[0].lingering, true);
        assert.equal(x3.sessions[0].last_liveness, null);
        assert.match(x3.rule, /1 of them in their grace window/);
        await eventually(async () => ok200(await api(d, 'GET', '/v1/users/ex/explain')).sessions.length === 0, 4000,
            'the grace window to end');
        const x4 = ok200(await api(d, 'GET', '/v1/users/ex/explain'));
        assert.equal(x4.presence.status, 'offline');
        assert.equal(x4.rule, 'offline: no live session');
        assertError(await api(d, 'GET', '/v1/users/ex-never/explain'), 404, 'not_found');
    });
});

// =============================================================================================

describe('/v1/events', () => {
    let d;
    before(async () => {
        d = await startPresenced(daemonFlags());
    });
    after(() => stopDaemon(d));

    test('the stream: head, opening comment, presence and room events made over WebSocket', T, async () => {
        const m0 = await scrapeMetrics(d);
        const s = await Sse.open(d);
        assert.equal(s.head.status, 200, s.head.statusLine);
        assert.match(s.head.headers['content-type'], /^text\/event-stream/);
        assert.equal(s.head.headers['cache-control'], 'no-store');
        assert.equal(s.head.headers['x-accel-buffering'], 'no');
        assert.equal(s.head.headers['content-length'], undefined);
        assert.equal(s.head.headers['transfer-encoding'], undefined);
        assert.equal(s.head.headers.connection, 'close');
        const hello = await s.nextBlock(2000);
        assert.deepEqual(hello, { comment: 'presenced event stream' });
        await waitForMetrics(d, (m) => metricValue(m, 'presenced_sse_streams') === metricValue(m0, 'presenced_sse_streams') + 1,
            3000, 'the stream to be counted');

        const u = await openUser(d, 'ev-a', { device: 'web' });
        let e = await s.waitEvent(isPresence('ev-a'));
        assert.deepEqual(Object.keys(e.data), ['prev_status', 'presence']);
        assert.equal(e.data.prev_status, 'offline');
        assertPresence(e.data.presence, { user_id: 'ev-a', status: 'online', device: 'web', devices: ['web'] });
        const text = 'say "hi" \\ back\u2028next ☕';
        await u.ok({ type: 'set_status', status: 'busy', custom_status: text });
        e = await s.waitEvent(isPresence('ev-a'));
        assert.equal(e.data.prev_status, 'online');
        assert.equal(e.data.presence.status, 'busy');
        assert.equal(e.data.presence.custom_status, text, 'quotes, backslashes and U+2028 travel in one data line');
        // A heartbeat changes nothing visible: no event before the marker.
        await u.send({ type: 'heartbeat', device: 'web' });
        await u.barrier();
        const marker = await openUser(d, 'ev-marker', { device: 'web' });
        let got = await s.until(isPresence('ev-marker'));
        assert.deepEqual(got.map((x) => x.data.presence.user_id), ['ev-marker'], 'nothing for a heartbeat');

        // Rooms: join, update, a second connection of the same member, leave.
        const st = await joinRoom(u, 'doc:ev', { mode: 'viewing' });
        assert.equal(st.count, 1);
        e = await s.waitEvent((x) => x.event === 'member_joined');
        assert.deepEqual(Object.keys(e.data), ['channel', 'member', 'count']);
        assert.equal(e.data.channel, 'doc:ev');
        assert.equal(e.data.count, 1);
        assertMember(e.data.member);
        assert.equal(e.data.member.user_id, 'ev-a');
        assert.deepEqual(e.data.member.metadata, { mode: 'viewing' });
        await u.ok({ type: 'update', channel: 'doc:ev', metadata: { mode: 'editing' } });
        e = await s.waitEvent((x) => x.event === 'member_updated');
        assert.deepEqual(Object.keys(e.data), ['channel', 'member', 'count']);
        assert.deepEqual(e.data.member.metadata, { mode: 'editing' });
        assert.equal(e.data.count, 1);
        const m2 = await openClient(d, 'ev-b');
        await joinRoom(m2, 'doc:ev');
        e = await s.waitEvent((x) => x.event === 'member_joined');
        assert.equal(e.data.member.user_id, 'ev-b');
        assert.equal(e.data.count, 2);
        await u.ok({ type: 'leave', channel: 'doc:ev' });
        e = await s.waitEvent((x) => x.event === 'member_left');
        assert.deepEqual(e.data, { channel: 'doc:ev', user_id: 'ev-a', reason: 'left', count: 1 });
        // A dropped connection leaves after the grace window, as "disconnected".
        await m2.terminate();
        e = await s.waitEvent((x) => x.event === 'member_left', 4000);
        assert.deepEqual(e.data, { channel: 'doc:ev', user_id: 'ev-b', reason: 'disconnected', count: 0 });

        // Every event carries the next id, starting at 1.
        got = s.all;
        assert.equal(got[0].id, '1');
        assertConsecutive(got, 'the stream');
        await u.close();
        await marker.close();
        const m1 = await waitForMetrics(d, (m) => metricValue(m, 'presenced_sse_events_total') - metricValue(m0, 'presenced_sse_events_total') >= s.all.length,
            3000, 'events counted');
        // Other streams may be open (none in this test): the count is at least ours.
        assert.ok(metricValue(m1, 'presenced_sse_events_total') - metricValue(m0, 'presenced_sse_events_total') >= s.all.length);
        s.close();
        // The server notices the reader is gone (at the latest at the next keep-alive).
        await waitForMetrics(d, (m) => metricValue(m, 'presenced_sse_streams') === metricValue(m0, 'presenced_sse_streams'),
            5000, 'the closed stream to be forgotten');
    });

    test('filters: by users, by channel prefix; bad filters are 400', T, async () => {
        const byUser = await Sse.open(d, 'users=f-b,f-c%2Fd');
        const byRoom = await Sse.open(d, 'channel_prefix=doc%3A');
        const all = await Sse.open(d);
        for (const s of [byUser, byRoom, all]) assert.equal(s.head.status, 200);
        const a = await openUser(d, 'f-a', { device: 'web' });
        const b = await openUser(d, 'f-b', { device: 'web' });
        const cd = await openUser(d, 'f-c/d', { device: 'web' });
        await joinRoom(a, 'team:x');
        await joinRoom(a, 'doc:1');
        await joinRoom(b, 'doc:2');
        await joinRoom(b, 'docs');
        const end = await openUser(d, 'f-end', { device: 'web' });
        await joinRoom(end, 'doc:end');
        // The unfiltered stream has seen everything once the last room event arrives.
        const everything = await all.until((e) => e.event === 'member_joined' && e.data.channel === 'doc:end');
        // Users of earlier tests may still go offline (grace windows): only this test's count.
        const mine = (e) => (e.event === 'presence' ? e.data.presence.user_id.startsWith('f-') : true);
        const summary = (evs) => evs.filter(mine)
            .map((e) => (e.event === 'presence' ? `p:${e.data.presence.user_id}` : `${e.event}:${e.data.channel}`));
        assert.deepEqual(summary(everything), ['p:f-a', 'p:f-b', 'p:f-c/d', 'member_joined:team:x', 'member_joined:doc:1',
            'member_joined:doc:2', 'member_joined:docs', 'p:f-end', 'member_joined:doc:end']);
        const rooms = await byRoom.until((e) => e.event === 'member_joined' && e.data.channel === 'doc:end');
        assert.deepEqual(summary(rooms), ['member_joined:doc:1', 'member_joined:doc:2', 'member_joined:doc:end']);
        // The users filter: presence of those users only. Its marker: f-b's next change.
        await b.ok({ type: 'set_status', status: 'away' });
        const users = await byUser.until(isPresence('f-b', (p) => p.status === 'away'));
        assert.deepEqual(summary(users), ['p:f-b', 'p:f-c/d', 'p:f-b']);
        // Both filters (docs/API.md): both kinds of events, each filtered.
        const both = await Sse.open(d, 'users=f-a&channel_prefix=doc%3A');
        assert.equal(both.head.status, 200);
        await a.ok({ type: 'set_status', status: 'busy' });
        await b.ok({ type: 'set_status', status: 'busy' });
        await joinRoom(b, 'team:y');
        await joinRoom(b, 'doc:3');
        const bothGot = await both.until((e) => e.event === 'member_joined' && e.data.channel === 'doc:3');
        assert.deepEqual(summary(bothGot), ['p:f-a', 'member_joined:doc:3']);
        for (const s of [byUser, byRoom, all, both]) assertConsecutive(s.all, 'a filtered stream');
        for (const s of [byUser, byRoom, all, both]) s.close();
        for (const c of [a, b, cd, end]) await c.close();

        const tooMany = Array.from({ length: 65 }, (_, i) => `u${i}`).join(',');
        for (const [q, code] of [['as=', 'bad_user_id'], ['as=%01', 'bad_user_id'], [`users=${tooMany}`, 'bad_user_id'],
            ['users=a,%01', 'bad_user_id'], [`channel_prefix=${'d'.repeat(201)}`, 'bad_channel'], ['users=%ZZ', 'bad_field'],
            ['channel_prefix=%', 'bad_channel']]) {
            assertError(await api(d, 'GET', `/v1/events?${q}`), 400, code, q);
        }
        // 64 users is the limit, and fine.
        const ok = await Sse.open(d, `users=${Array.from({ length: 64 }, (_, i) => `u${i}`).join(',')}`);
        assert.equal(ok.head.status, 200);
        ok.close();
    });

    test('a stream opened as a user shows only what that user may see, with consecutive ids', T, async () => {
        const s = await Sse.open(d, 'as=sa-req');
        assert.equal(s.head.status, 200);
        // Hidden from the start: none of their changes may show.
        ok200(await api(d, 'PUT', '/v1/users/sa-hidden/privacy', { json: { visibility: 'nobody' } }));
        ok200(await api(d, 'PUT', '/v1/users/sa-blocker/privacy', { json: { blocked: ['sa-req'] } }));
        const hidden = await openUser(d, 'sa-hidden', { device: 'web' });
        const blocker = await openUser(d, 'sa-blocker', { device: 'web' });
        const self = await openUser(d, 'sa-req', { device: 'web' });
        const open = await openUser(d, 'sa-open', { device: 'web' });
        // Changes of the hidden ones, then one of a visible user as the marker.
        for (const c of [hidden, blocker]) {
            await c.ok({ type: 'set_status', status: 'busy' });
            await c.ok({ type: 'set_status', status: 'away', activity: 'secret' });
        }
        await open.ok({ type: 'set_status', status: 'busy' });
        const got = await s.until(isPresence('sa-open', (p) => p.status === 'busy'));
        const users = got.map((e) => e.data.presence.user_id);
        assert.ok(!users.includes('sa-hidden') && !users.includes('sa-blocker'), `hidden users streamed: ${users}`);
        assert.ok(users.includes('sa-req'), 'the requester sees itself');
        assert.ok(users.includes('sa-open'));
        // The ids must not give away that hidden events happened in between.
        assert.equal(s.all[0].id, '1');
        assertConsecutive(s.all, 'a stream as a user');
        s.close();
        for (const c of [hidden, blocker, self, open]) await c.close();
    });

    test('keep-alive comments arrive every --sse-keepalive seconds', T, async () => {
        const s = await Sse.open(d, 'users=nobody-changes');
        await s.nextBlock(2000); // the opening comment
        const t0 = now();
        const c1 = await s.waitComment(KEEPALIVE * 1000 + 1500);
        assert.equal(c1.text, 'keepalive');
        const c2 = await s.waitComment(KEEPALIVE * 1000 + 1500);
        assert.equal(c2.text, 'keepalive');
        const gap = c2.at - c1.at;
        assert.ok(gap > KEEPALIVE * 1000 * 0.6 && gap < KEEPALIVE * 1000 * 1.8, `keep-alive gap ${gap.toFixed(0)} ms`);
        assert.ok(c1.at - t0 < KEEPALIVE * 1000 * 1.8);
        assert.equal(s.all.length, 0);
        s.close();
    });

    test('streams end with the daemon: SIGTERM closes them and the exit is clean', T, async () => {
        const d2 = await startPresenced(daemonFlags());
        const s = await Sse.open(d2);
        await s.nextBlock(2000);
        d2.signal('SIGTERM');
        await s.conn.waitEnd(5000);
        await d2.waitExit(15000);
    });
});

// =============================================================================================

describe('a slow /v1/events reader', () => {
    let d;
    before(async () => {
        // The flood is the point: no per-connection message rate limit.
        d = await startPresenced(daemonFlags(['--out-max', '64K', '--rate-limit', '0']));
    });
    after(() => stopDaemon(d));

    test('is dropped when its backlog passes out-max, without slowing WebSocket clients', T, async () => {
        const m0 = await scrapeMetrics(d);
        const slow = await Sse.open(d, 'channel_prefix=flood%3A');
        assert.equal(slow.head.status, 200);
        slow.conn.pause(); // never reads again
        const fast = await Sse.open(d, 'users=probe'); // a healthy stream that must survive
        const flooder = await openClient(d, 'flooder');
        await joinRoom(flooder, 'flood:1');
        const probe = await openUser(d, 'probe', { device: 'web' });
        const { c: watcher } = await openWatcher(d, 'probe-watcher', ['probe']);
        const meta = { blob: 'x'.repeat(1900) }; // member_updated events of about 2.1 KB
        const rtts = [];
        let dropped = false;
        let sent = 0;
        const t0 = now();
        for (let batch = 0; batch < 200 && !dropped; batch++) {
            // 25 updates in flight, then their acks; then a probe round trip.
            const acks = [];
            for (let i = 0; i < 25; i++) {
                meta.n = sent++;
                acks.push(flooder.ok({ type: 'update', channel: 'flood:1', metadata: meta }, 10000));
            }
            await Promise.all(acks);
            const p0 = now();
            await probe.barrier(2000);
            rtts.push(now() - p0);
            if (batch % 4 === 3) {
                const m = await scrapeMetrics(d);
                dropped = metricValue(m, 'presenced_sse_dropped_total') > metricValue(m0, 'presenced_sse_dropped_total');
            }
        }
        assert.ok(dropped, `the paused reader was not dropped after ${sent} events of ~2 KB`);
        const floodMs = now() - t0;
        const m1 = await scrapeMetrics(d);
        assert.equal(metricValue(m1, 'presenced_sse_dropped_total') - metricValue(m0, 'presenced_sse_dropped_total'), 1,
            'exactly one stream dropped');
        assert.equal(metricValue(m1, 'presenced_slow_consumer_closes_total') - metricValue(m0, 'presenced_slow_consumer_closes_total'), 1);
        assert.equal(metricValue(m1, 'presenced_sse_streams'), metricValue(m0, 'presenced_sse_streams') + 1, 'only the healthy stream is left');
        assert.ok(metricValue(m1, 'presenced_sse_queue_bytes') < 64 * 1024, `queue ${metricValue(m1, 'presenced_sse_queue_bytes')}`);
        // WebSocket clients were answered quickly throughout.
        rtts.sort((x, y) => x - y);
        const p95 = rtts[Math.floor(rtts.length * 0.95)];
        assert.ok(p95 < 250, `probe round trips during the flood: p95 ${p95.toFixed(1)} ms, max ${rtts[rtts.length - 1].toFixed(1)} ms`);
        // And now: a presence change reaches a watcher and the healthy stream at once.
        const c0 = now();
        await probe.ok({ type: 'set_status', status: 'busy' });
        await watcher.waitUpdate('probe', (p) => p.status === 'busy', 1000);
        await fast.waitEvent(isPresence('probe', (p) => p.status === 'busy'), 1000);
        const lat = now() - c0;
        assert.ok(lat < 250, `a change took ${lat.toFixed(0)} ms to reach its watcher after the drop`);
        // The dropped reader finds its connection closed once it reads again.
        slow.conn.resume();
        await slow.conn.waitEnd(5000);
        console.log(`# slow reader dropped after ${sent} updates in ${floodMs.toFixed(0)} ms; probe p95 ${p95.toFixed(1)} ms`);
        fast.close();
        for (const c of [flooder, probe, watcher]) await c.close();
    });
});

// =============================================================================================

describe('streams opened as a user on the Redis store (privacy checked asynchronously)',
    { skip: !fs.existsSync(REDIS_SERVER) && `no ${REDIS_SERVER}` }, () => {
        let redis;
        let d;
        before(async () => {
            redis = await startRedis();
            // Bursts of changes are the point: no per-connection message rate limit.
            d = await startPresenced(daemonFlags(['--redis', redis.url, '--rate-limit', '0']));
            await eventually(async () => (await api(d, 'GET', '/readyz', { key: null })).status === 200, 10000, 'Redis ready');
        });
        after(async () => {
            try {
                await stopNode(d);
            } finally {
                // Always: a redis-server left running would keep this process from exiting.
                if (redis) await redis.stop();
            }
        });

        test('hidden users are left out, and the ids have no gaps', T, async () => {
            ok200(await api(d, 'PUT', '/v1/users/rs-hidden/privacy', { json: { visibility: 'nobody' } }));
            const s = await Sse.open(d, 'as=rs-req');
            const hidden = await openUser(d, 'rs-hidden', { device: 'web' });
            const open = await openUser(d, 'rs-open', { device: 'web' });
            await hidden.ok({ type: 'set_status', status: 'busy' });
            await open.ok({ type: 'set_status', status: 'busy' });
            const got = await s.until(isPresence('rs-open', (p) => p.status === 'busy'), 5000);
            const users = got.map((e) => e.data.presence.user_id);
            assert.ok(!users.includes('rs-hidden'), `hidden user streamed: ${users}`);
            assert.deepEqual(users, ['rs-open', 'rs-open']);
            assertConsecutive(s.all, 'a stream as a user');
            s.close();
            await hidden.close();
            await open.close();
        });

        test('a stream that ends while its checks are in flight: nothing is sent to it, the daemon is fine', T, async () => {
            const u = await openUser(d, 'rs-churn', { device: 'web' });
            const m0 = await scrapeMetrics(d);
            for (let round = 0; round < 5; round++) {
                const s = await Sse.open(d, 'as=rs-watcher');
                // A burst of changes, and the reader gone before their checks come back.
                const sends = [];
                for (let i = 0; i < 40; i++) sends.push(u.send({ type: 'set_status', status: i % 2 ? 'busy' : 'away' }));
                await Promise.all(sends);
                s.close();
                await u.barrier();
            }
            await u.ok({ type: 'set_status', status: 'online' });
            // Every stream is forgotten; a new one works; the exit (ASan) is checked at stop.
            await waitForMetrics(d, (m) => metricValue(m, 'presenced_sse_streams') === metricValue(m0, 'presenced_sse_streams'),
                5000, 'the streams to be forgotten');
            const s = await Sse.open(d, 'as=rs-watcher');
            await u.ok({ type: 'set_status', status: 'busy' });
            const e = await s.waitEvent(isPresence('rs-churn', (p) => p.status === 'busy'), 5000);
            assert.equal(e.id, '1');
            s.close();
            await u.close();
        });
    });
