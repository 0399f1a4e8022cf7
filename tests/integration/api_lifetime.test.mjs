// Answers of the /v1/ API that the store gives later (Redis), owed to connections that go away
// first (src/server/conn.c, http/exchange.h: the exchange stays valid until it is answered).
// Redis, started by the test on a loopback port, is stalled with SIGSTOP while requests of
// every asynchronous kind (GET and PUT privacy, PUT presence, a channel count) are in flight:
//  - some of their clients reset the connection (RST), some half-close it (FIN), some give up
//    (a client timeout: close); clients connected meanwhile send their own requests or
//    nothing; then SIGCONT. The daemon (ASan build) survives with no sanitizer report; every
//    client still connected gets exactly its own answers, in order (distinct user ids and
//    channels compared, pipelined requests included); a connection made meanwhile never
//    receives an answer it did not ask for; every request abandoned is counted
//    (presenced_http_answers_abandoned_total). Before the fix the first late answer was written
//    into the freed connection (heap-use-after-free in http_exchange_respond) and, in a release
//    build, reached whichever new connection had been given the same memory.
//  - the daemon is stopped (SIGTERM) while Redis is still stalled and answers are owed to
//    connections that are gone: the calls are failed at exit (store_shutdown), after the
//    server is freed; the answers are dropped without touching it, exit 0 without a report.
// Every wait is bounded; the whole file takes about 3 s (ASan build).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { metricValue, rawConnect, scrapeMetrics, sleep, waitForMetrics } from './lib/daemon.mjs';
import { crashInfo, eventually, startPresenced, stopDaemon } from './lib/presence.mjs';
import { REDIS_SERVER, startRedis } from './lib/redis.mjs';

const T = { timeout: 40000 };
const KEY = 'lifetime-test-key-0123456789abcdef';
const STALL_MS = 1500; // Redis stopped for this long
const QUIET_MS = 300; // during which an idle connection must receive nothing
const N = 12; // connections per group

let tmp;
let keysFile;

before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'presenced-api-lifetime-'));
    keysFile = path.join(tmp, 'keys');
    fs.writeFileSync(keysFile, `${KEY}\n`);
});

after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** A keep-alive request's bytes. */
function request(method, p, json) {
    const body = json === undefined ? '' : JSON.stringify(json);
    let text = `${method} ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n`;
    if (body) text += `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`;
    return `${text}\r\n${body}`;
}

/**
 * The i-th request kind for the name id, and how to tell its answer: each kind waits for the
 * store (PUT privacy and PUT presence twice: a write, then the read they answer with).
 */
function ask(id, i) {
    switch (i % 4) {
        case 0:
            return { text: request('GET', `/v1/users/${id}/privacy`), whose: (j) => j.user_id };
        case 1:
            return { text: request('PUT', `/v1/users/${id}/privacy`, { visibility: 'contacts', contacts: [`${id}-c`] }),
                whose: (j) => (j.contacts[0] === `${id}-c` ? j.user_id : `contacts ${j.contacts}`) };
        case 2:
            return { text: request('PUT', `/v1/presence/${id}`, { custom_status: id }),
                whose: (j) => (j.custom_status === id ? j.user_id : `custom_status ${j.custom_status}`) };
        default:
            return { text: request('GET', `/v1/channels/${id}/count`), whose: (j) => j.channel };
    }
}

/** Reads one answer on c and asserts it is the answer to q for id. */
async function expectOwn(d, c, q, id, what) {
    let r;
    try {
        r = await c.readResponse(10000);
    } catch (e) {
        throw new Error(`${what} (${id}): ${e.message}${crashInfo(d)}`);
    }
    assert.equal(r.status, 200, `${what} (${id}): ${r.status} ${r.body}`);
    assert.equal(q.whose(JSON.parse(r.body)), id, `${what} (${id}) received another request's answer: ${r.body}`);
}

/**
 * Reads every answer owed to each client at once (each its ids.length responses), and every
 * byte the idle ones receive within QUIET_MS; then fails first on any answer that reached the
 * wrong client (the worst outcome), then on answers missing (a crash: its report shown).
 */
async function checkAnswers(d, asking, idle) {
    const got = await Promise.allSettled(asking.map(async ({ c, ids }) => {
        const out = [];
        for (let k = 0; k < ids.length; k++) out.push(await c.readResponse(10000));
        return out;
    }));
    await sleep(QUIET_MS);
    const wrong = [];
    const missing = [];
    asking.forEach(({ ids, qs }, n) => {
        const r = got[n];
        const answers = r.status === 'fulfilled' ? r.value : [];
        answers.forEach((a, k) => {
            let whose;
            try {
                whose = a.status === 200 ? qs[k].whose(JSON.parse(a.body)) : `status ${a.status}`;
            } catch (e) {
                whose = `unreadable: ${e.message}`;
            }
            if (whose !== ids[k]) wrong.push(`${ids[k]} received ${a.status} ${a.body.slice(0, 160)}`);
        });
        if (r.status === 'rejected') missing.push(`${ids[answers.length] ?? ids[0]}: ${r.reason.message.split(';')[0]}`);
    });
    for (const { c, ids } of idle) {
        if (c.buf.length) wrong.push(`idle ${ids[0]} received ${JSON.stringify(c.buf.toString('latin1', 0, 160))}`);
        else if (c.ended) missing.push(`idle ${ids[0]}: closed`);
    }
    assert.deepEqual(wrong, [], `answers that reached the wrong client${crashInfo(d)}`);
    assert.deepEqual(missing, [], `clients left without their answers${crashInfo(d)}`);
}

async function requestsParsed(d) {
    return metricValue(await scrapeMetrics(d), 'presenced_http_requests_total');
}

/** Waits until the daemon has parsed n more requests than base (and scrapes: 1 each). */
async function waitParsed(d, base, n, what) {
    await eventually(async () => (await requestsParsed(d)) >= base + n, 5000, what);
}

describe('answers owed to connections that go away (Redis store)',
    { skip: !fs.existsSync(REDIS_SERVER) && `no ${REDIS_SERVER}` }, () => {
        let redis;
        let d;
        const redisUp = () => redis && redis.running; // running, or stopped by SIGSTOP
        before(async () => {
            redis = await startRedis();
        });
        after(async () => {
            try {
                if (redisUp()) redis.proc.kill('SIGCONT');
                if (d) await stopDaemon(d);
            } finally {
                // Always: a redis-server left running would keep this process from exiting.
                if (redis) await redis.stop();
            }
        });

        /** A daemon on the Redis store, once ready. A command timeout well past the stall:
         * the late answers are Redis's replies. */
        async function start() {
            if (d) await stopDaemon(d).catch(() => {});
            d = await startPresenced(['--api-keys-file', keysFile, '--redis', redis.url, '--redis-timeout', '10']);
            await eventually(async () => {
                const c = await rawConnect(d);
                try {
                    await c.write('GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
                    return (await c.readResponse(2000)).status === 200;
                } finally {
                    c.destroy();
                }
            }, 10000, 'Redis ready');
            return d;
        }

        test('clients that reset, close or time out lose their answers; the others get their own', T, async () => {
            await start();
            const m0 = await scrapeMetrics(d);
            const abandoned0 = metricValue(m0, 'presenced_http_answers_abandoned_total') ?? 0;
            redis.proc.kill('SIGSTOP');
            const stalledAt = Date.now();
            let cont = false;
            try {
                // Every group's requests in flight, each client asking for its own names.
                const groups = { keep: [], pipelined: [], reset: [], fin: [], timeout: [] };
                let base = await requestsParsed(d);
                let sent = 0;
                for (const [g, list] of Object.entries(groups)) {
                    for (let i = 0; i < N; i++) {
                        const c = await rawConnect(d);
                        const ids = g === 'pipelined' ? [`lt-${g}-${i}-a`, `lt-${g}-${i}-b`] : [`lt-${g}-${i}`];
                        const qs = ids.map((id, k) => ask(id, i + k));
                        await c.write(qs.map((q) => q.text).join(''));
                        list.push({ c, ids, qs });
                        sent++;
                    }
                }
                // The second request of a pipelined pair waits behind the first, unparsed.
                await waitParsed(d, base, sent + 1, 'every first request to reach its handler');
                for (const { c } of groups.reset) c.sock.resetAndDestroy();
                for (const { c } of groups.fin) c.sock.end();
                for (const { c } of groups.timeout) c.destroy();
                const closed = groups.reset.length + groups.fin.length + groups.timeout.length;
                // Open: those left, and the scrape's own.
                const left = sent - closed + 1;
                await waitForMetrics(d, (m) => metricValue(m, 'presenced_connections_open') === left, 5000,
                    `the ${closed} closed connections to be gone`);
                // New connections take the memory the closed ones had (in a release build):
                // some ask for their own names, some ask nothing.
                base = await requestsParsed(d);
                const late = [];
                const idle = [];
                for (let i = 0; i < 2 * N; i++) {
                    const c = await rawConnect(d);
                    if (i % 2) {
                        idle.push({ c, ids: [`lt-idle-${i}`] });
                        continue;
                    }
                    const id = `lt-late-${i}`;
                    const q = ask(id, i / 2);
                    await c.write(q.text);
                    late.push({ c, ids: [id], qs: [q] });
                }
                await waitParsed(d, base, late.length + 1, 'the late requests to reach their handlers');
                await sleep(Math.max(0, STALL_MS - (Date.now() - stalledAt)));
                assert.equal(d.exit, null, `the daemon died while Redis was stalled${crashInfo(d)}`);
                redis.proc.kill('SIGCONT');
                cont = true;

                // Each client still connected gets its own answers and nothing else; nothing was
                // owed to the idle connections: nothing arrives there. Then they work.
                await checkAnswers(d, [...groups.keep, ...groups.pipelined, ...late], idle);
                for (const [i, { c, ids }] of idle.entries()) {
                    const q = ask(ids[0], i);
                    await c.write(q.text);
                    await expectOwn(d, c, q, ids[0], 'an idle client asking after the stall');
                }
                // Nor did anything more arrive on the others.
                for (const { c } of [...groups.keep, ...groups.pipelined, ...late])
                    assert.equal(c.buf.length, 0, `more than its answers: ${c.buf.toString('latin1', 0, 200)}`);
                const m1 = await scrapeMetrics(d);
                assert.equal(metricValue(m1, 'presenced_http_answers_abandoned_total') - abandoned0, closed,
                    'abandoned requests: those of the closed connections only');
                for (const { c } of [...groups.keep, ...groups.pipelined, ...late, ...idle]) c.destroy();
            } finally {
                if (!cont && redisUp()) redis.proc.kill('SIGCONT');
            }
            assert.equal(d.exit, null, `the daemon died${crashInfo(d)}`);
            // A Redis answer after all that still reaches the right client.
            const c = await rawConnect(d);
            const q = ask('lt-after', 0);
            await c.write(q.text);
            await expectOwn(d, c, q, 'lt-after', 'a request after the test');
            c.destroy();
        });

        test('a daemon stopped while Redis is stalled and answers are owed to closed connections exits cleanly',
            T, async () => {
                await start();
                redis.proc.kill('SIGSTOP');
                try {
                    const base = await requestsParsed(d);
                    const conns = [];
                    for (let i = 0; i < N; i++) {
                        const c = await rawConnect(d);
                        await c.write(ask(`lt-exit-${i}`, i).text);
                        conns.push(c);
                    }
                    await waitParsed(d, base, N + 1, 'the requests to reach their handlers');
                    for (const [i, c] of conns.entries()) {
                        if (i % 2) c.sock.resetAndDestroy();
                        else c.destroy();
                    }
                    await waitForMetrics(d, (m) => metricValue(m, 'presenced_connections_open') === 1, 5000,
                        'the closed connections to be gone');
                    // The calls still out are failed at exit (store_shutdown), after the server
                    // is freed: their answers must go nowhere.
                    const dd = d;
                    d = null;
                    await dd.stop(15000);
                } finally {
                    if (redisUp()) redis.proc.kill('SIGCONT');
                }
            });
    });
