// Regression tests of the attack campaign's engine and dispatch findings (issue #11), on the
// store where each happened:
//  - (the calls in flight per connection: hardening_inflight.test.mjs)
//  - Redis: set_visibility nobody (or block) followed at once by a status change sent the watcher
//    that had just lost sight the full new presence before the bare offline (the permission
//    re-check is a store round trip). Deliveries of the user are now held until it answers.
//  - A never-seen user whose first act is to hide sent watchers a bare offline, which told them
//    that the account exists. A watcher is now told of a loss of sight only if it was shown the
//    user, so an unknown user and a hidden one look alike (embedded store and Redis).
//  - welcome.session_id was a process-wide counter (anyone could measure the connection rate).
//  - Limits: a token bucket of messages per connection (rate_limited, then 1008), and a cap of
//    connections per user (429), and of connections per client address (429 and close); the
//    configuration refuses a change cost above the burst.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { httpGet, metricValue, scrapeMetrics, sleep } from './lib/daemon.mjs';
import { runToExit } from './lib/auth.mjs';
import { eventually, openClient, openUser, openWatcher, startPresenced, stopDaemon } from './lib/presence.mjs';
import { startCluster, startRedis, stopNode } from './lib/redis.mjs';

const T = { timeout: 60000 };
const QUIET_MS = 500;
const bare = (u) => `{"type":"presence_update","presence":{"user_id":"${u}","status":"offline"}}`;

async function startNode(flags, nodeId) {
    const d = await startPresenced([...flags, '--node-id', nodeId, '--offline-grace', '1', '--ephemeral']);
    await eventually(async () => (await httpGet(d, '/readyz')).status === 200, 15000, `node ${nodeId} ready`);
    return d;
}

/** What c received about user since index from (entries). */
const about = (c, user, from = 0) =>
    c.all.slice(from).filter((e) => e.msg.type === 'presence_update' && e.msg.presence.user_id === user);

/** The privacy races, run on one node and across two. */
function privacyRaces(name, start) {
    describe(`privacy at the moment of the change: ${name}`, { timeout: 180000 }, () => {
        let env;
        before(async () => {
            env = await start();
        });
        after(async () => {
            await env.stop();
        });

        for (const [what, hide] of [
            ['set_visibility nobody', () => ({ type: 'set_visibility', visibility: 'nobody' })],
            ['block', (watcher) => ({ type: 'block', user_id: watcher })],
            ['remove_contact (visibility contacts)', (watcher) => ({ type: 'remove_contact', user_id: watcher })],
        ]) {
            test(`${what} then a status change at once: the watcher gets the bare offline, nothing else`, T, async () => {
                const trials = 15;
                for (let i = 0; i < trials; i++) {
                    const tag = `${env.tag}-${what.split(' ')[0]}-${i}`;
                    const x = `x-${tag}`;
                    const w = `w-${tag}`;
                    const xc = await openUser(env.a, x);
                    if (what.startsWith('remove_contact')) {
                        await xc.ok({ type: 'add_contact', user_id: w });
                        await xc.ok({ type: 'set_visibility', visibility: 'contacts' });
                    }
                    const { c: wc, initial } = await openWatcher(env.b, w, [x]);
                    assert.equal(initial[x]?.status, 'online', 'visible before');
                    const from = wc.all.length;
                    // Both pipelined: the change that hides, and a change only visible without it.
                    xc.ws.send(JSON.stringify(hide(w)));
                    xc.ws.send(JSON.stringify({ type: 'set_status', status: 'busy', custom_status: `secret ${i}` }));
                    await wc.waitForEntry((m) => m.type === 'presence_update' && m.presence.user_id === x, 3000, 'the offline');
                    await sleep(what.startsWith('set_vis') ? 100 : 150);
                    const got = about(wc, x, from);
                    assert.deepEqual(got.map((e) => e.raw), [bare(x)], `trial ${i}: the watcher received ${got.map((e) => e.raw).join(' | ')}`);
                    await xc.terminate();
                    await wc.terminate();
                }
            });
        }

        test('a never-seen user whose first act is to hide sends watchers nothing; shown when allowed', T, async () => {
            const g = `ghost-${env.tag}`;
            const { c: wc, initial } = await openWatcher(env.b, `wg-${env.tag}`, [g]);
            assert.deepEqual(initial, {}, 'unknown: not in the snapshot');
            const gc = await openClient(env.a, g);
            await gc.ok({ type: 'set_visibility', visibility: 'nobody' });
            await gc.ok({ type: 'set_online', device: 'web' });
            await gc.ok({ type: 'set_status', status: 'busy' });
            await sleep(QUIET_MS);
            assert.deepEqual(about(wc, g).map((e) => e.raw), [], 'a hidden user must look like an unknown one');
            // Later subscribers see the same: nothing.
            const { initial: again } = await openWatcher(env.b, `wg2-${env.tag}`, [g]);
            assert.deepEqual(again, {});
            // Visible again: the current presence, once.
            await gc.ok({ type: 'set_visibility', visibility: 'everyone' });
            const e = await wc.waitForEntry((m) => m.type === 'presence_update' && m.presence.user_id === g, 3000, 'the presence');
            assert.equal(e.msg.presence.status, 'busy');
        });
    });
}

privacyRaces('embedded store', async () => {
    const a = await startPresenced(['--ephemeral']);
    return { tag: 'e', a, b: a, stop: () => stopDaemon(a) };
});
privacyRaces('one node on Redis', async () => {
    const redis = await startRedis();
    const a = await startNode(['--redis', redis.url], 'p1');
    return {
        tag: 'r1', a, b: a,
        stop: async () => {
            await stopDaemon(a);
            await redis.stop();
        },
    };
});
privacyRaces('two nodes on Redis', async () => {
    const redis = await startRedis();
    const [a, b] = await Promise.all([startNode(['--redis', redis.url], 'p2a'), startNode(['--redis', redis.url], 'p2b')]);
    return {
        tag: 'r2', a, b,
        stop: async () => {
            await Promise.all([stopNode(a), stopNode(b)]);
            await redis.stop();
        },
    };
});

privacyRaces('two nodes on a 3-master Redis Cluster', async () => {
    const cluster = await startCluster();
    const flags = ['--redis-cluster', cluster.seeds];
    const [a, b] = await Promise.all([startNode(flags, 'p3a'), startNode(flags, 'p3b')]);
    return {
        tag: 'c2', a, b,
        stop: async () => {
            await Promise.all([stopNode(a), stopNode(b)]);
            await cluster.stop();
        },
    };
});

describe('session ids', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--ephemeral']);
    });
    after(() => stopDaemon(d));

    test('welcome.session_id is random, not a count of connections', T, async () => {
        const ids = [];
        for (let i = 0; i < 12; i++) ids.push((await openClient(d, `sid-${i}`)).welcome.session_id);
        for (const id of ids) assert.ok(Number.isSafeInteger(id) && id > 0, `session_id ${id}`);
        assert.equal(new Set(ids).size, ids.length, 'distinct');
        const steps = ids.slice(1).map((id, i) => id - ids[i]);
        assert.ok(steps.filter((s) => s > 0 && s < 1000).length < 3, `sequential: ${ids.join(', ')}`);
    });
});

describe('message rate per connection', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--ephemeral', '--rate-limit', '50', '--rate-limit-burst', '20',
            '--rate-limit-change-cost', '5']);
    });
    after(() => stopDaemon(d));

    const answers = (c, from) => c.all.slice(from).filter((e) => ['pong', 'ack', 'error'].includes(e.msg.type));

    test('a burst past the bucket: rate_limited for each one over, then served again', T, async () => {
        const c = await openClient(d, 'rl-burst');
        const bystander = await openClient(d, 'rl-bystander');
        const from = c.all.length;
        for (let i = 0; i < 50; i++) c.ws.send(JSON.stringify({ type: 'ping', id: i }));
        await eventually(() => answers(c, from).length >= 50, 5000, '50 answers');
        const got = answers(c, from);
        const pongs = got.filter((e) => e.msg.type === 'pong').map((e) => e.msg.id);
        const limited = got.filter((e) => e.msg.type === 'error');
        assert.ok(pongs.length >= 20 && pongs.length <= 24, `pongs: ${pongs.length}`);
        assert.deepEqual(pongs, [...Array(pongs.length).keys()], 'the first ones pass, in order');
        for (const e of limited) {
            assert.equal(e.msg.code, 'rate_limited');
            assert.match(e.msg.message, /50 messages a second \(burst 20\)/);
        }
        assert.equal(pongs.length + limited.length, 50);
        assert.ok(c.isOpen, 'refusals below the close threshold keep the connection');
        // Others are not affected, and the bucket refills at the rate.
        assert.equal((await bystander.request({ type: "ping" })).type, 'pong');
        await sleep(500);
        assert.equal((await c.request({ type: "ping" })).type, 'pong');
        const m = await scrapeMetrics(d);
        assert.ok(metricValue(m, 'presenced_rate_limited_total') >= limited.length);
    });

    test('changes cost the store more: 4 of a burst of 20 pass at cost 5', T, async () => {
        const c = await openClient(d, 'rl-cost');
        await sleep(500); // the bucket is full
        const from = c.all.length;
        for (let i = 0; i < 8; i++) c.ws.send(JSON.stringify({ type: 'set_status', status: 'busy', id: i }));
        await eventually(() => answers(c, from).length >= 8, 5000, '8 answers');
        const got = answers(c, from);
        assert.deepEqual(got.map((e) => e.msg.type), ['ack', 'ack', 'ack', 'ack', 'error', 'error', 'error', 'error']);
    });

    test('a client that goes on past rate_limited is closed with 1008', T, async () => {
        const c = await openClient(d, 'rl-flood');
        const frames = [];
        for (let i = 0; i < 300; i++) frames.push(JSON.stringify({ type: 'heartbeat' }));
        for (const f of frames) c.ws.send(f);
        const info = await withTimeoutClose(c);
        assert.equal(info.code, 1008);
        assert.match(info.reason, /rate limit/);
        const m = await scrapeMetrics(d);
        assert.ok(metricValue(m, 'presenced_rate_limit_closes_total') >= 1);
    });

    test('rate-limit-change-cost above rate-limit-burst is refused at start', T, async () => {
        const r = await runToExit(['--ephemeral', '--rate-limit-burst', '4', '--rate-limit-change-cost', '5']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /rate-limit-change-cost \(5\) is more than rate-limit-burst \(4\)/);
    });
});

async function withTimeoutClose(c, ms = 5000) {
    const t = sleep(ms).then(() => {
        throw new Error('not closed');
    });
    return Promise.race([c.closed, t]);
}

describe('connections per user', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--ephemeral', '--max-connections-per-user', '3']);
    });
    after(() => stopDaemon(d));

    test('past max-connections-per-user the upgrade is refused 429; a closed one frees a place', T, async () => {
        const cs = [];
        for (let i = 0; i < 3; i++) cs.push(await openClient(d, 'capped'));
        await assert.rejects(openClient(d, 'capped'), /unexpected response 429/);
        await openClient(d, 'another-user'); // per user, not per node
        await cs[0].terminate();
        await eventually(async () => {
            try {
                cs.push(await openClient(d, 'capped'));
                return true;
            } catch {
                return false;
            }
        }, 3000, 'a place again');
        const m = await scrapeMetrics(d);
        assert.ok(metricValue(m, 'presenced_user_connection_refusals_total') >= 1);
    });
});

/** A TCP connection from source address src; resolves with everything it received until closed. */
function tcpFrom(d, src, send = '') {
    return new Promise((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port: d.port, localAddress: src });
        let got = '';
        const timer = setTimeout(() => {
            sock.destroy();
            resolve({ open: true, got, sock });
        }, 700);
        sock.on('connect', () => send && sock.write(send));
        sock.on('data', (b) => {
            got += b.toString('latin1');
        });
        sock.on('error', (e) => {
            if (e.code !== 'ECONNRESET') {
                clearTimeout(timer);
                reject(e);
            }
        });
        sock.on('close', () => {
            clearTimeout(timer);
            resolve({ open: false, got });
        });
    });
}

describe('connections per client address', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--ephemeral', '--max-connections-per-ip', '3']);
    });
    after(() => stopDaemon(d));

    test('past max-connections-per-ip: 429 and closed; other addresses unaffected; a close frees a place', T, async () => {
        const held = [];
        for (let i = 0; i < 3; i++) held.push(await openClient(d, `ip-${i}`));
        const over = await tcpFrom(d, '127.0.0.1', 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        assert.equal(over.open, false, 'the 4th connection of the address stays open');
        assert.match(over.got, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
        assert.match(over.got, /too many connections from this address/);
        // Another loopback address is another client.
        const other = await tcpFrom(d, '127.0.0.2', 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        assert.match(other.got, /^HTTP\/1\.1 200 /);
        await held[0].terminate();
        await eventually(async () => {
            const r = await tcpFrom(d, '127.0.0.1', 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
            return /^HTTP\/1\.1 200 /.test(r.got);
        }, 3000, 'a place again');
        // The scrape is a connection of the address too: room for it once the others are gone.
        await Promise.all(held.slice(1).map((c) => c.terminate()));
        let m;
        await eventually(async () => {
            m = await scrapeMetrics(d).catch(() => null);
            return m !== null;
        }, 3000, 'the metrics');
        assert.ok(metricValue(m, 'presenced_connections_refused_per_ip_total') >= 1);
    });
});
