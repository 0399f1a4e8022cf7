// Webhooks (src/webhooks/webhooks.h) against the real daemon and a real HTTP receiver
// (node:http on 127.0.0.1:0), with the daemon's default webhook limits (batch 250 ms or 100
// events, retry base 500 ms, 8 attempts, 5 s timeout):
//  - users coming online together arrive in one POST, signed (HMAC-SHA256 of the exact body,
//    recomputed here), with a delivery id; the body and each event have exactly the documented
//    fields; more than 100 events are split into batches of at most 100, in order;
//  - user.offline after the grace window, room.occupied on the first join, room.vacated when
//    the last member leaves; status changes between online states send nothing;
//  - a 500 is retried with the same delivery id, body and signature; failures and deliveries
//    are counted, the failure is logged and the recovery too;
//  - a receiver that is down: failed attempts are counted, logged at most once a second (the
//    rest counted in the next line), the queue gauge shows the waiting event, the URL's
//    credentials and query never reach the log, and the daemon keeps serving;
//  - SIGINT: what is queued (the offlines the shutdown itself publishes included) goes out
//    before the exit; a receiver that never answers delays the exit by at most the webhook
//    timeout; exit 0 either way.
// Dropping after max_attempts is not exercised: with the default backoff it takes 30-60 s and
// no flag shortens it. Every test runs its own daemon and receiver, and every wait is bounded.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';

import { assertHttpHealthy, assertWsHealthy, BIN, metricValue, scrapeMetrics, waitForMetrics } from './lib/daemon.mjs';
import { closeAll, now, openClient, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';
import { joinRoom } from './lib/rooms.mjs';

const T = { timeout: 60000 };
const SECRET = 'webhook-test-secret-0123456789abcdef';
const GRACE = 200; // --offline-grace, ms
const BATCH_MS = 250; // the default batch window
const USER_KEYS = ['type', 'user_id', 'status', 'prev_status', 'at'];
const ROOM_KEYS = ['type', 'channel', 'user_id', 'count', 'at'];

let tmp = null;
let secretFile = null;

before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'presenced-webhooks-'));
    secretFile = path.join(tmp, 'secret');
    fs.writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
});

after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/**
 * A webhook receiver. Every request is recorded as {at, method, url, headers, raw, body};
 * handler(req, index) decides the answer: a status number, or null to never answer.
 */
class Receiver {
    constructor(handler = () => 200) {
        this.handler = handler;
        this.requests = [];
        this.waiters = new Set();
        this.hung = [];
        this.server = http.createServer((req, res) => {
            const chunks = [];
            req.on('data', (c) => chunks.push(c));
            req.on('end', () => {
                const raw = Buffer.concat(chunks);
                let body;
                try {
                    body = JSON.parse(raw.toString('utf8'));
                } catch {
                    body = { unparsable: raw.toString('latin1') };
                }
                const r = { at: now(), method: req.method, url: req.url, headers: req.headers, raw, body };
                const index = this.requests.length;
                this.requests.push(r);
                for (const w of [...this.waiters]) w();
                const status = this.handler(r, index);
                if (status === null) {
                    this.hung.push(res);
                    return;
                }
                res.writeHead(status, { 'Content-Type': 'text/plain' });
                res.end('ok\n');
            });
        });
    }

    async listen() {
        await new Promise((resolve, reject) => {
            this.server.once('error', reject);
            this.server.listen(0, '127.0.0.1', resolve);
        });
        this.port = this.server.address().port;
        return this;
    }

    get url() {
        return `http://127.0.0.1:${this.port}/hook`;
    }

    /** Every event received so far, in arrival order. */
    get events() {
        return this.requests.flatMap((r) => (Array.isArray(r.body.events) ? r.body.events : []));
    }

    /** Waits until pred(this) holds; returns its value. */
    async waitFor(pred, timeoutMs = 5000, what = 'webhook requests') {
        const deadline = now() + timeoutMs;
        for (;;) {
            const v = pred(this);
            if (v) return v;
            const left = deadline - now();
            if (left <= 0)
                throw new Error(`receiver: no ${what} within ${timeoutMs} ms; got ${this.describe()}`);
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

    /** Waits for an event matching pred; returns it. */
    waitEvent(pred, timeoutMs = 5000, what = 'a matching event') {
        return this.waitFor((r) => r.events.find(pred), timeoutMs, what);
    }

    describe() {
        return JSON.stringify(this.requests.map((r) => r.body)).slice(0, 1500);
    }

    async close() {
        for (const res of this.hung.splice(0)) res.destroy();
        this.server.closeAllConnections();
        await new Promise((resolve) => this.server.close(resolve));
    }
}

/** A port on 127.0.0.1 nothing listens on (bound, then released). */
async function deadPort() {
    const s = http.createServer();
    await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
    const { port } = s.address();
    await new Promise((resolve) => s.close(resolve));
    return port;
}

const hmac = (raw) => `sha256=${crypto.createHmac('sha256', SECRET).update(raw).digest('hex')}`;

/** Checks one webhook request: method, path, headers, signature, body shape. */
function assertRequest(r) {
    assert.equal(r.method, 'POST');
    assert.equal(r.url, '/hook');
    assert.match(r.headers['content-type'], /^application\/json$/);
    assert.match(r.headers['x-presenced-delivery'], /^[0-9a-f]{32}$/);
    assert.match(r.headers['x-presenced-signature'], /^sha256=[0-9a-f]{64}$/);
    assert.equal(r.headers['x-presenced-signature'], hmac(r.raw), 'the signature is the HMAC of the exact body');
    assert.equal(r.headers.expect, undefined, 'no Expect: 100-continue');
    assert.deepEqual(Object.keys(r.body), ['events'], `body keys: ${r.raw.toString().slice(0, 200)}`);
    assert.ok(Array.isArray(r.body.events) && r.body.events.length >= 1 && r.body.events.length <= 100,
        `1..100 events in a batch, got ${r.body.events.length}`);
    const wall = Date.now() / 1000;
    for (const e of r.body.events) {
        const keys = e.type.startsWith('user.') ? USER_KEYS : ROOM_KEYS;
        assert.deepEqual(Object.keys(e), keys, `event keys: ${JSON.stringify(e)}`);
        assert.ok(['user.online', 'user.offline', 'room.occupied', 'room.vacated'].includes(e.type), e.type);
        assert.ok(Number.isFinite(e.at) && Math.abs(e.at - wall) < 60, `at ${e.at} vs now ${wall}`);
    }
}

/** Opens n clients as prefix0..prefix<n-1> (welcomed, not announced), a few at a time. */
async function openMany(d, prefix, n) {
    const out = [];
    for (let i = 0; i < n; i += 25) {
        const part = [];
        for (let j = i; j < Math.min(n, i + 25); j++) part.push(openClient(d, `${prefix}${j}`));
        out.push(...(await Promise.all(part)));
    }
    return out;
}

const setOnline = (c) => c.send({ type: 'set_online', device: 'web' });

let d = null;
let rx = null;

afterEach(async () => {
    const daemon = d;
    const receiver = rx;
    d = null;
    rx = null;
    try {
        await stopDaemon(daemon);
    } finally {
        if (receiver) await receiver.close();
    }
});

async function start(handler, extraFlags = []) {
    rx = await new Receiver(handler).listen();
    d = await startPresenced(['--webhook-url', rx.url, '--webhook-secret-file', secretFile,
        '--offline-grace', String(GRACE / 1000), ...extraFlags]);
    return { d, rx };
}

// ---------------------------------------------------------------------------------------------

describe('webhooks: batches, signatures, event types', () => {
    test('users coming online together arrive in one signed POST', T, async () => {
        await start();
        const users = ['alice', 'bob', 'carol', 'dave', 'erin'];
        const cs = await Promise.all(users.map((u) => openClient(d, u)));
        const sent = now();
        await Promise.all(cs.map(setOnline));
        await rx.waitFor((r) => r.events.length >= users.length, 5000, 'five user.online events');
        await sleep(BATCH_MS * 2); // nothing more may follow
        assert.equal(rx.requests.length, 1, `one POST for the five: ${rx.describe()}`);
        const r = rx.requests[0];
        assertRequest(r);
        assert.ok(r.at - sent >= BATCH_MS - 50, `sent at the end of the batch window, ${Math.round(r.at - sent)} ms after`);
        assert.deepEqual(r.body.events.map((e) => e.user_id).sort(), [...users].sort());
        for (const e of r.body.events) {
            assert.equal(e.type, 'user.online');
            assert.equal(e.status, 'online');
            assert.equal(e.prev_status, 'offline');
        }
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_webhook_events_total', { type: 'user.online' }), users.length);
        assert.equal(metricValue(m, 'presenced_webhook_deliveries_total'), 1);
        assert.equal(metricValue(m, 'presenced_webhook_failures_total'), 0);
        assert.equal(metricValue(m, 'presenced_webhook_queue_events'), 0);
        assert.match(d.log, new RegExp(`webhook events go to http://127\\.0\\.0\\.1:${rx.port}/hook`));
    });

    test('offline after the grace window, room occupied and vacated, no event for away', T, async () => {
        await start();
        const a = await openClient(d, 'ann');
        await a.ok({ type: 'set_online', device: 'web' });
        await rx.waitEvent((e) => e.type === 'user.online' && e.user_id === 'ann');
        await a.ok({ type: 'set_status', status: 'away' });
        await a.ok({ type: 'set_status', status: 'busy' });

        await joinRoom(a, 'doc:1');
        const occ = await rx.waitEvent((e) => e.type === 'room.occupied');
        assert.deepEqual({ ...occ, at: 0 }, { type: 'room.occupied', channel: 'doc:1', user_id: 'ann', count: 1, at: 0 });

        const b = await openClient(d, 'ben');
        await b.ok({ type: 'set_online', device: 'web' });
        await joinRoom(b, 'doc:1'); // the second member: no event
        await rx.waitEvent((e) => e.type === 'user.online' && e.user_id === 'ben');

        await a.close();
        await b.close();
        const vac = await rx.waitEvent((e) => e.type === 'room.vacated', 5000, 'room.vacated');
        assert.deepEqual({ ...vac, at: 0 }, { type: 'room.vacated', channel: 'doc:1', user_id: vac.user_id, count: 0, at: 0 });
        assert.ok(['ann', 'ben'].includes(vac.user_id));
        for (const u of ['ann', 'ben']) {
            const off = await rx.waitEvent((e) => e.type === 'user.offline' && e.user_id === u, 5000, `user.offline of ${u}`);
            assert.equal(off.status, 'offline');
            assert.equal(off.prev_status, u === 'ann' ? 'busy' : 'online');
        }
        await sleep(BATCH_MS * 2);
        for (const r of rx.requests) assertRequest(r);
        const types = rx.events.map((e) => `${e.type}:${e.user_id}`);
        assert.deepEqual(types.filter((t) => t.startsWith('room.occupied')), ['room.occupied:ann'], types.join(' '));
        assert.equal(types.filter((t) => t.startsWith('room.vacated')).length, 1, types.join(' '));
        assert.deepEqual(types.filter((t) => t.startsWith('user.')).sort(),
            ['user.offline:ann', 'user.offline:ben', 'user.online:ann', 'user.online:ben'], types.join(' '));
        // In order: each batch's events, and batches one after another.
        const ats = rx.events.map((e) => e.at);
        for (let i = 1; i < ats.length; i++) assert.ok(ats[i] >= ats[i - 1], `events out of order: ${types.join(' ')}`);
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_webhook_events_total', { type: 'room.occupied' }), 1);
        assert.equal(metricValue(m, 'presenced_webhook_events_total', { type: 'room.vacated' }), 1);
        assert.equal(metricValue(m, 'presenced_webhook_events_total', { type: 'user.offline' }), 2);
    });

    test('more than 100 events are split into batches of at most 100, in order', T, async () => {
        await start();
        const N = 150;
        const cs = await openMany(d, 'many', N);
        await Promise.all(cs.map(setOnline));
        await rx.waitFor((r) => r.events.length >= N, 10000, `${N} events`);
        await sleep(BATCH_MS * 2);
        assert.ok(rx.requests.length >= 2, `at least two POSTs, got ${rx.requests.length}`);
        for (const r of rx.requests) assertRequest(r); // <= 100 each
        const ids = rx.events.map((e) => e.user_id);
        assert.equal(ids.length, N, 'every event once');
        assert.equal(new Set(ids).size, N);
        const deliveries = new Set(rx.requests.map((r) => r.headers['x-presenced-delivery']));
        assert.equal(deliveries.size, rx.requests.length, 'a fresh delivery id per batch');
        const ats = rx.events.map((e) => e.at);
        for (let i = 1; i < ats.length; i++) assert.ok(ats[i] >= ats[i - 1], 'batches arrive in order');
        // One batch at a time: each POST starts after the previous one was answered.
        for (let i = 1; i < rx.requests.length; i++) assert.ok(rx.requests[i].at >= rx.requests[i - 1].at);
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_webhook_deliveries_total'), rx.requests.length);
        await closeAll(d);
    });
});

describe('webhooks: failures', () => {
    test('a 500 is retried with the same delivery id, body and signature', T, async () => {
        await start((r, i) => (i === 0 ? 500 : 200));
        const c = await openClient(d, 'retry-me');
        await c.ok({ type: 'set_online', device: 'web' });
        await rx.waitFor((r) => r.requests.length >= 2, 5000, 'the retry');
        const [first, second] = rx.requests;
        assertRequest(first);
        assertRequest(second);
        assert.equal(second.headers['x-presenced-delivery'], first.headers['x-presenced-delivery']);
        assert.equal(second.headers['x-presenced-signature'], first.headers['x-presenced-signature']);
        assert.ok(second.raw.equals(first.raw), 'the same body');
        // Backoff: half to all of retry_base (500 ms), give or take scheduling.
        const gap = second.at - first.at;
        assert.ok(gap >= 200 && gap < 3000, `retried ${Math.round(gap)} ms after the failure`);
        const m = await waitForMetrics(d, (x) => metricValue(x, 'presenced_webhook_deliveries_total') === 1, 5000,
            'the delivery to be counted');
        assert.equal(metricValue(m, 'presenced_webhook_failures_total'), 1);
        assert.equal(metricValue(m, 'presenced_webhook_queue_events'), 0);
        assert.equal(metricValue(m, 'presenced_webhook_dropped_total', { reason: 'attempts' }), 0);
        await sleep(BATCH_MS * 2);
        assert.equal(rx.requests.length, 2, 'nothing more after the delivery');
        await d.waitForLog(/webhook http:\/\/127\.0\.0\.1:\d+\/hook: delivery [0-9a-f]{32} attempt 1 of 8 failed: HTTP status 500/);
        await d.waitForLog(/webhook http:\/\/127\.0\.0\.1:\d+\/hook: delivering again after 1 failed attempts/);
    });

    test('a receiver that is down: failures counted and rate-limited in the log, daemon healthy', T, async () => {
        const port = await deadPort();
        rx = await new Receiver().listen(); // unused: afterEach closes it
        d = await startPresenced(['--webhook-url', `http://user:pw@127.0.0.1:${port}/down?token=x`,
            '--webhook-secret-file', secretFile, '--offline-grace', String(GRACE / 1000)]);
        const c = await openClient(d, 'nobody-hears');
        await c.ok({ type: 'set_online', device: 'web' });
        // Attempts 2..4 follow after 250-500, 500-1000 and 1000-2000 ms: the second falls within a
        // second of the first line, so by the fourth some attempt has gone unlogged and been counted.
        const m = await waitForMetrics(d, (x) => metricValue(x, 'presenced_webhook_failures_total') >= 4, 15000,
            'four failed attempts');
        assert.equal(metricValue(m, 'presenced_webhook_deliveries_total'), 0);
        assert.equal(metricValue(m, 'presenced_webhook_queue_events'), 1, 'the event waits');
        assert.equal(metricValue(m, 'presenced_webhook_dropped_total', { reason: 'queue_full' }), 0);
        await assertHttpHealthy(d);
        await assertWsHealthy(d);
        // Credentials and query never reach the log.
        assert.doesNotMatch(d.log, /user:pw|token=x/);
        const lines = d.log.split('\n').filter((l) => /delivery [0-9a-f]{32} attempt \d+ of 8 failed/.test(l));
        assert.ok(lines.length >= 1, d.tail());
        assert.match(lines[0], new RegExp(`webhook http://127\\.0\\.0\\.1:${port}/down: `));
        assert.ok(lines.length < metricValue(m, 'presenced_webhook_failures_total'),
            `${lines.length} lines for ${metricValue(m, 'presenced_webhook_failures_total')} failures`);
        assert.ok(lines.some((l) => /\(\d+ more failed attempts not logged\)/.test(l)), lines.join('\n'));
        for (let i = 1; i < lines.length; i++) {
            const t = (l) => Date.parse(l.match(/\d{4}-\d\d-\d\dT[\d:.]+Z?/)?.[0] ?? '');
            if (Number.isFinite(t(lines[i])) && Number.isFinite(t(lines[i - 1])))
                assert.ok(t(lines[i]) - t(lines[i - 1]) >= 990, `two lines within a second:\n${lines[i - 1]}\n${lines[i]}`);
        }
    });
});

describe('webhooks: shutdown', () => {
    test('SIGINT sends what is queued, the shutdown offlines included, then exits 0', T, async () => {
        await start();
        const c = await openClient(d, 'last-words');
        await c.ok({ type: 'set_online', device: 'web' });
        // Inside the batch window: user.online is still queued when the signal comes.
        const daemon = d;
        d = null;
        daemon.signal('SIGINT');
        await daemon.waitExit(15000);
        const types = rx.events.map((e) => `${e.type}:${e.user_id}`);
        assert.deepEqual(types, ['user.online:last-words', 'user.offline:last-words'], rx.describe());
        for (const r of rx.requests) assertRequest(r);
        // Usually one batch (the drain does not wait out the window); two if the window ended
        // before the shutdown got there.
        assert.ok(rx.requests.length <= 2, rx.describe());
    });

    test('SIGINT with a receiver that never answers: exit 0 within the webhook timeout', T, async () => {
        await start(() => null);
        const c = await openClient(d, 'stuck');
        await c.ok({ type: 'set_online', device: 'web' });
        await rx.waitFor((r) => r.requests.length >= 1, 5000, 'the first POST');
        const daemon = d;
        d = null;
        const t0 = now();
        daemon.signal('SIGINT');
        await daemon.waitExit(15000);
        const took = now() - t0;
        assert.ok(took < 10000, `exited ${Math.round(took)} ms after SIGINT`);
        assert.match(daemon.log, /shutting down with \d+ webhook events not delivered/);
    });

    test('SIGTERM drain with the receiver down still exits 0', T, async () => {
        const port = await deadPort();
        rx = await new Receiver().listen();
        d = await startPresenced(['--webhook-url', `http://127.0.0.1:${port}/hook`,
            '--webhook-secret-file', secretFile, '--offline-grace', String(GRACE / 1000)]);
        const c = await openClient(d, 'nowhere');
        await c.ok({ type: 'set_online', device: 'web' });
        await waitForMetrics(d, (x) => metricValue(x, 'presenced_webhook_failures_total') >= 1, 5000, 'a failure');
        const daemon = d;
        d = null;
        await daemon.stop(20000);
    });
});

describe('webhooks: configuration', () => {
    test('refused with exit 2: no secret file, a short secret, a URL that is not http(s)', T, async () => {
        const short = path.join(tmp, 'short');
        fs.writeFileSync(short, 'too-short\n');
        const cases = [
            [['--webhook-url', 'http://127.0.0.1:9/hook'], /webhook-secret-file/],
            [['--webhook-url', 'http://127.0.0.1:9/hook', '--webhook-secret-file', short], /must be 16 to 4096 bytes/],
            [['--webhook-url', 'http://127.0.0.1:9/hook', '--webhook-secret-file', path.join(tmp, 'absent')],
                /cannot open webhook secret file/],
            [['--webhook-url', 'ftp://127.0.0.1/hook', '--webhook-secret-file', secretFile], /not an http:\/\/ or https:\/\/ URL/],
            [['--webhook-url', 'file:///etc/passwd', '--webhook-secret-file', secretFile], /not an http:\/\/ or https:\/\/ URL/],
        ];
        for (const [flags, re] of cases) {
            const r = spawnSync(BIN, ['--listen', '127.0.0.1:0', '--dev-auth', '--ephemeral', ...flags],
                { encoding: 'utf8', timeout: 15000, env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
            assert.equal(r.status, 2, `${flags.join(' ')}: exit ${r.status} ${r.signal}\n${r.stderr}`);
            assert.match(r.stderr, re);
            assert.doesNotMatch(r.stderr, /Sanitizer|runtime error:/, r.stderr);
        }
    });
});
