// Failures of the shared Redis store (ARCHITECTURE.md section 5, issue #8), against real
// redis-server processes and several presenced nodes:
//  (a) a node is SIGKILLed: its users go offline for watchers on the surviving nodes once its
//      lease (--node-lease-ttl 2) expires and a survivor sweeps it, within lease TTL + the sweep
//      interval (measured, bounded above and below: a live node is never swept), exactly once
//      (one survivor holds the sweep lock); its room members leave with reason "timeout";
//      standalone Redis and Redis Cluster. A node drained with SIGTERM has its users offline
//      after the grace window (not a lease TTL later). A node killed and restarted at once under
//      the same --node-id (its sids start over) still has its dead process's users swept, while
//      those who reconnected to it stay online.
//  (b) Redis is killed and restarted on the same port: nodes answer /readyz 503 "store
//      unavailable" while it is down, keep serving their own connections, nobody flaps
//      offline; after the restart they are ready again and re-register their sessions and room
//      connections (an empty Redis: watchers on A see users of B again, rooms list everyone),
//      and, with an append-only file, no setting is lost, not even one written during the
//      outage. A Redis still loading its data set (-LOADING) is waited for, not used. A node
//      cut off from Redis (a proxy that accepts and drops) longer than its lease is swept by
//      the others and registers everything again once back. A node stopped while Redis is down
//      exits cleanly: the calls still waiting fail while their callers exist (store_shutdown).
//  (c) the hash slot of a watched user's keys (and of a room's) moves to another master of a
//      Redis Cluster (SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE) while subscriptions
//      are live and the user keeps changing: every change is acknowledged and watchers keep
//      receiving updates, the first one after the move included.
//  (d) --redis-seed-compat keeps the seed service's keys and channel: HGETALL presence:ID has the
//      seed's six fields, presence:heartbeat:ID has the heartbeat TTL (and heartbeats renew it),
//      changes are PUBLISHed on presence:updates as PresenceInfo.to_dict() JSON; without the
//      flag none of these exist.
// Every node that is not deliberately killed must exit 0 without a sanitizer report.
// Store bugs these tests found (fixed in src/store/): a sweep never got past the dead node's
// sessions (its rooms were never swept, the sweep leaked); a node restarted under the same
// --node-id left its former users online for ever; the first change after a slot move, or
// after a reconnect, never reached other nodes' watchers; after an outage the re-registration
// overtook the changes that had waited for Redis (a state nobody set was shown); a Redis
// still loading its data, or a proxy accepting for a dead Redis, was taken for a working one.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { httpGet, metricValue, scrapeMetrics, sleep } from './lib/daemon.mjs';
import {
    assertPresence,
    eventually,
    now,
    openClient,
    openUser,
    openWatcher,
    startPresenced,
} from './lib/presence.mjs';
import { startCluster, startProxy, startRedis, stopNode } from './lib/redis.mjs';
import { ask, countOf, joinRoom, walkMembers } from './lib/rooms.mjs';

const T = { timeout: 40000 };
const GRACE = 1000; // --offline-grace
const LEASE = 2000; // --node-lease-ttl in (a)
const SWEEP_MAX = (LEASE * 3) / 4; // the sweep timer's longest period (store_redis.c: sweep_fire)
const SLACK_MS = 1000; // Redis round trips, wheel ticks and sanitizer noise
const QUIET_MS = 400;

/** Starts a node with the given backend flags and waits for /readyz 200. */
async function startNode(backendFlags, nodeId, extra = []) {
    const d = await startPresenced([...backendFlags, '--node-id', nodeId, '--offline-grace', String(GRACE / 1000),
        '--ephemeral', ...extra]);
    try {
        await waitReady(d, 200, 15000);
    } catch (e) {
        await d.kill();
        throw e;
    }
    return d;
}

/** Waits until d's /readyz answers status; returns the response. */
function waitReady(d, status, timeoutMs) {
    return eventually(async () => {
        const r = await httpGet(d, '/readyz');
        return r.status === status ? r : null;
    }, timeoutMs, `/readyz ${status} on port ${d.port}`);
}

/** Stops every node given that is still running (asserting a clean exit), then the others. */
async function stopAll(nodes, redis) {
    const errors = [];
    await Promise.all(nodes.map((d) => stopNode(d).catch((e) => errors.push(e))));
    if (redis) await redis.stop();
    if (errors.length) throw errors[0];
}

/**
 * Runs body(), then cleanup() whatever happened; a failure of the body is the one reported
 * (a node that then fails its exit check too is reported after it).
 */
async function withCleanup(body, cleanup) {
    let failure = null;
    try {
        await body();
    } catch (e) {
        failure = e;
    }
    try {
        await cleanup();
    } catch (e) {
        if (!failure) throw e;
        failure.message += `\n(and at cleanup: ${e.message.split('\n')[0]})`;
    }
    if (failure) throw failure;
}

// ---------------------------------------------------------------------------------------------
// (a)

for (const B of [
    { name: 'standalone Redis', tag: 'ks', start: () => startRedis(), flags: (r) => ['--redis', r.url] },
    { name: 'Redis Cluster', tag: 'kc', start: () => startCluster(), flags: (c) => ['--redis-cluster', c.seeds] },
]) {
    describe(`a node killed (${B.name})`, { timeout: 60000 }, () => {
        let redis;
        let A;
        let K;
        let C;
        after(async () => {
            if (K) await K.kill();
            await stopAll([A, C], redis);
        });

        test('its users go offline elsewhere within lease TTL + sweep interval, once; its room members time out', T,
            async () => {
                redis = await B.start();
                const flags = [...B.flags(redis), '--node-lease-ttl', String(LEASE / 1000)];
                [A, K, C] = await Promise.all([startNode(flags, `${B.tag}-A`), startNode(flags, `${B.tag}-K`),
                    startNode(flags, `${B.tag}-C`)]);
                const tStart = now();
                const [bob, carol, alice] = [`${B.tag}-bob`, `${B.tag}-carol`, `${B.tag}-alice`];
                const room = `doc:${B.tag}`;
                const { c: wa } = await openWatcher(A, `${B.tag}-wa`, [bob, carol]);
                const { c: wc } = await openWatcher(C, `${B.tag}-wc`, [bob, carol]);
                const b = await openUser(K, bob, { device: 'web' });
                const cr = await openUser(K, carol, { device: 'mobile', status: 'busy', custom_status: 'driving' });
                for (const w of [wa, wc]) {
                    assert.equal((await w.waitUpdate(bob)).status, 'online');
                    assert.equal((await w.waitUpdate(carol)).status, 'busy');
                }
                const al = await openUser(A, alice);
                await joinRoom(al, room);
                await joinRoom(b, room);
                const joined = await al.waitFor((m) => m.type === 'member_joined' && m.channel === room, 3000, 'bob joining');
                assert.equal(joined.member.user_id, bob);

                // A live node is never swept: its lease is renewed (it only ever has <= TTL left).
                const cmd = (key, ...a) => (redis.nodes ? redis.cmd(key, ...a) : redis.cmd(...a));
                const incarnation = (await cmd('pd:nodes', 'SMEMBERS', 'pd:nodes')).find((n) => n.startsWith(`${B.tag}-K~`));
                assert.ok(incarnation, 'the node is listed in pd:nodes');
                const leaseKey = `pd:{n:${incarnation}}:lease`;
                const left = await cmd(leaseKey, 'PTTL', leaseKey);
                assert.ok(left > 0 && left <= LEASE, `the lease of a live node has ${left} ms left`);
                const quietFor = Math.max(0, LEASE + SWEEP_MAX + 500 - (now() - tStart));
                await wa.expectNoUpdate(undefined, quietFor);
                await wc.expectNoUpdate(undefined, 0);
                await al.expectNone((m) => m.type === 'member_left', 0, 'member_left');

                const t0 = now();
                await K.kill();
                const offs = [];
                for (const w of [wa, wc]) {
                    for (const id of [bob, carol]) {
                        const e = await w.waitUpdateEntry(id, () => true, LEASE + SWEEP_MAX + SLACK_MS + 2000);
                        assert.equal(e.msg.presence.status, 'offline', `${w.user}: ${id} goes offline`);
                        offs.push(e.at - t0);
                    }
                }
                const first = Math.min(...offs);
                const last = Math.max(...offs);
                console.log(`# ${B.name}: offline ${first.toFixed(0)}..${last.toFixed(0)} ms after SIGKILL ` +
                    `(lease ${LEASE} ms, sweep every <= ${SWEEP_MAX} ms)`);
                assert.ok(first >= LEASE / 2, `offline after ${first.toFixed(0)} ms: before the lease can have expired`);
                assert.ok(last <= LEASE + SWEEP_MAX + SLACK_MS,
                    `offline after ${last.toFixed(0)} ms: more than lease TTL + sweep interval (+ ${SLACK_MS} ms)`);

                const e = await al.waitFor((m) => m.type === 'member_left' && m.channel === room, 3000, 'bob timing out');
                assert.deepEqual(e, { type: 'member_left', channel: room, user_id: bob, reason: 'timeout', count: 1 });

                // Swept once: one survivor took the lock, each watcher heard one offline per user.
                await wa.expectNoUpdate(undefined, QUIET_MS);
                await wc.expectNoUpdate(undefined, 0);
                const sweeps = metricValue(await scrapeMetrics(A), 'presenced_redis_sweeps_total') +
                    metricValue(await scrapeMetrics(C), 'presenced_redis_sweeps_total');
                assert.equal(sweeps, 1, 'exactly one survivor swept the dead node');

                const q = await openClient(C, `${B.tag}-q`);
                const got = await q.getPresence([bob, carol]);
                assertPresence(got[bob], { user_id: bob, status: 'offline', device: 'web', devices: [] });
                assertPresence(got[carol], { user_id: carol, status: 'offline', device: 'mobile', devices: [],
                    custom_status: 'driving' });
                assert.equal(await countOf(al, room), 1);
                const index = `pd:{n:${incarnation}}:s`;
                assert.equal(await cmd(index, 'EXISTS', index), 0, 'the dead node\'s index is gone');
                assert.ok(!(await cmd('pd:nodes', 'SMEMBERS', 'pd:nodes')).includes(incarnation), 'and it is unlisted');
                await cr.terminate().catch(() => {});
            });
    });
}

describe('a node drained with SIGTERM', { timeout: 60000 }, () => {
    test('its users go offline elsewhere after the grace window, not a lease TTL later', T, async () => {
        const redis = await startRedis();
        const flags = ['--redis', redis.url]; // the default lease: 10 s
        let A;
        let D;
        await withCleanup(async () => {
            [A, D] = await Promise.all([startNode(flags, 'dA'), startNode(flags, 'dD')]);
            const [bob, alice] = ['d-bob', 'd-alice'];
            const room = 'doc:drain';
            const { c: w } = await openWatcher(A, 'd-w', [bob]);
            const al = await openUser(A, alice);
            await joinRoom(al, room);
            const b = await openUser(D, bob, { device: 'web' });
            await joinRoom(b, room);
            await al.waitFor((m) => m.type === 'member_joined', 3000, 'bob joining');
            assert.equal((await w.waitUpdate(bob)).status, 'online');

            const t0 = now();
            const stopped = D.stop(); // clients left open: the node closes them; exit 0 asserted
            assert.equal((await b.waitClose(3000)).code, 1012, 'clients are asked to reconnect elsewhere');
            const e = await w.waitUpdateEntry(bob, () => true, GRACE + SLACK_MS + 1000);
            assert.equal(e.msg.presence.status, 'offline');
            const took = e.at - t0;
            assert.ok(took >= GRACE - 30 && took <= GRACE + SLACK_MS, `offline ${took.toFixed(0)} ms after SIGTERM`);
            const m = await al.waitFor((x) => x.type === 'member_left', 3000, 'bob leaving');
            assert.deepEqual(m, { type: 'member_left', channel: room, user_id: bob, reason: 'disconnected', count: 1 });
            await stopped;
            D = null;
        }, async () => {
            await stopAll([A, D], redis);
        });
    });
});

describe('a node killed and restarted at once under the same --node-id', { timeout: 60000 }, () => {
    test('the users of the dead process still go offline; those who come back stay online', T, async () => {
        const redis = await startRedis();
        const flags = ['--redis', redis.url, '--node-lease-ttl', String(LEASE / 1000)];
        let A;
        let K;
        await withCleanup(async () => {
            [A, K] = await Promise.all([startNode(flags, 'rA'), startNode(flags, 'rK')]);
            const [bob, carol, alice] = ['r-bob', 'r-carol', 'r-alice'];
            const room = 'doc:restart';
            const { c: w } = await openWatcher(A, 'r-w', [bob, carol]);
            const al = await openUser(A, alice);
            await joinRoom(al, room);
            const b = await openUser(K, bob, { device: 'web' });
            await openUser(K, carol, { device: 'web' });
            await joinRoom(b, room);
            await al.waitFor((m) => m.type === 'member_joined', 3000, 'bob joining');
            for (const id of [bob, carol]) assert.equal((await w.waitUpdate(id)).status, 'online');

            // A crash, and the supervisor starts it again right away (sids start over at 1).
            await K.kill();
            const t0 = now();
            K = await startNode(flags, 'rK');
            const b2 = await openUser(K, bob, { device: 'web' }); // bob's client reconnects
            await joinRoom(b2, room);
            // carol does not come back: she goes offline once the dead process is swept.
            const e = await w.waitUpdateEntry(carol, () => true, LEASE + SWEEP_MAX + SLACK_MS + 2000);
            assert.equal(e.msg.presence.status, 'offline');
            assert.ok(e.at - t0 <= LEASE + SWEEP_MAX + SLACK_MS, `carol offline after ${(e.at - t0).toFixed(0)} ms`);
            // bob's new session is not the old one (same node id, same sid): he stays online.
            await w.expectNoUpdate(bob, QUIET_MS);
            const q = await openClient(A, 'r-q');
            assertPresence((await q.getPresence([bob]))[bob], { user_id: bob, status: 'online', device: 'web', devices: ['web'] });
            await joinRoom(q, room); // member lists answer members only
            const { ids } = await walkMembers(q, room);
            assert.deepEqual(ids.filter((id) => id !== 'r-q').sort(), [alice, bob].sort(), 'bob is still in the room, once');
            await al.expectNone((m) => m.type === 'member_left', 0, 'member_left');
        }, async () => {
            await stopAll([A, K], redis);
        });
    });
});

// ---------------------------------------------------------------------------------------------
// (b)

describe('Redis killed and restarted', { timeout: 60000 }, () => {
    test('empty after the restart: nodes stay up, report 503, then re-register sessions and rooms', T, async () => {
        const redis = await startRedis();
        const flags = ['--redis', redis.url];
        let A;
        let Bn;
        await withCleanup(async () => {
            [A, Bn] = await Promise.all([startNode(flags, 'oA'), startNode(flags, 'oB')]);
            const [alice, bob] = ['o-alice', 'o-bob'];
            const room = 'doc:outage';
            const a = await openUser(A, alice, { device: 'web' });
            const b = await openUser(Bn, bob, { device: 'mobile', custom_status: 'here' });
            const { c: wa } = await openWatcher(A, 'o-wa', [alice, bob]);
            const { c: wb } = await openWatcher(Bn, 'o-wb', [alice, bob]);
            await joinRoom(a, room, { mode: 'viewing' });
            await joinRoom(b, room, { mode: 'editing' });
            await a.waitFor((m) => m.type === 'member_joined', 3000, 'bob joining');

            await redis.kill();
            for (const d of [A, Bn]) {
                const r = await waitReady(d, 503, 5000);
                assert.equal(r.body, 'store unavailable\n');
                assert.equal((await httpGet(d, '/healthz')).status, 200, 'alive while Redis is down');
                assert.equal(metricValue(await scrapeMetrics(d), 'presenced_redis_ready'), 0);
            }
            // Each node keeps serving its own connections: old ones answer, new ones are welcomed.
            await wa.barrier();
            const late = await openClient(A, 'o-late');
            const err = await late.request({ type: 'get_presence', user_ids: [alice] }, 5000);
            assert.equal(err.type, 'error', 'a read without Redis is refused at once, not left hanging');
            // Nobody flaps: no presence change and no room event reaches anyone while it is down.
            const isNews = (m) => m.type === 'presence_update' || m.type.startsWith('member_');
            await wa.expectNone(isNews, 1500, 'event during the outage');
            for (const c of [wb, a, b]) await c.expectNone(isNews, 0, 'event during the outage');

            await redis.restart();
            for (const d of [A, Bn]) {
                await waitReady(d, 200, 15000);
                await eventually(async () => metricValue(await scrapeMetrics(d), 'presenced_redis_resyncs_total') >= 1,
                    3000, 'the resync counted');
            }
            // Re-registered: every node reads both users and the room from the new, empty Redis.
            const want = {
                [alice]: { user_id: alice, status: 'online', device: 'web', devices: ['web'] },
                [bob]: { user_id: bob, status: 'online', device: 'mobile', devices: ['mobile'] },
            };
            for (const d of [A, Bn]) {
                const q = await openClient(d, 'o-q');
                await eventually(async () => Object.keys(await q.getPresence([alice, bob])).length === 2, 5000,
                    `both users registered again, read on port ${d.port}`);
                const got = await q.getPresence([alice, bob]);
                for (const id of [alice, bob]) assertPresence(got[id], want[id], `${id} read on port ${d.port}`);
                await joinRoom(q, room); // member lists and counts answer members only
                await eventually(async () => (await countOf(q, room)) === 3, 5000, 'both room members registered again');
                const { ids } = await walkMembers(q, room);
                assert.deepEqual(ids.filter((id) => id !== 'o-q').sort(), [alice, bob].sort());
                await q.close();
            }
            // No one went offline on the way, for watchers on either node.
            for (const w of [wa, wb])
                for (const m of w.take((x) => x.type === 'presence_update'))
                    assert.notEqual(m.presence.status, 'offline', `${w.user} saw a flap: ${JSON.stringify(m)}`);
            // Subscriptions are back: a watcher on A sees bob (on B) change, members see cursors.
            await b.ok({ type: 'set_status', status: 'busy' });
            assertPresence(await wa.waitUpdate(bob, (p) => p.status === 'busy'), { ...want[bob], status: 'busy' });
            await a.ok({ type: 'set_status', status: 'away' });
            assert.equal((await wb.waitUpdate(alice, (p) => p.status === 'away')).status, 'away');
            await b.send({ type: 'cursor', channel: room, cursor: { x: 1 } });
            assert.deepEqual(await a.waitFor((m) => m.type === 'cursor', 3000, 'the cursor'),
                { type: 'cursor', channel: room, user_id: bob, cursor: { x: 1 } });
        }, async () => {
            await stopAll([A, Bn], redis);
        });
    });

    test('with an append-only file no setting is lost, not even one written during the outage', T, async () => {
        const redis = await startRedis({ aof: true });
        const flags = ['--redis', redis.url];
        let A;
        let Bn;
        await withCleanup(async () => {
            [A, Bn] = await Promise.all([startNode(flags, 'fA'), startNode(flags, 'fB')]);
            const [alice, bob, mallory] = ['f-alice', 'f-bob', 'f-mallory'];
            const a = await openUser(A, alice, { device: 'web', custom_status: 'on a call', activity: 'in_call' });
            for (const m of [{ type: 'set_visibility', visibility: 'contacts' }, { type: 'add_contact', user_id: bob },
                { type: 'block', user_id: mallory }]) await a.ok(m);
            const { c: wb, initial } = await openWatcher(Bn, bob, [alice]);
            assert.equal(initial[alice].custom_status, 'on a call');

            await redis.kill();
            await waitReady(A, 503, 5000);
            // Written while Redis is down: acknowledged once it is stored, after the restart.
            const pending = a.request({ type: 'set_status', status: 'busy', custom_status: 'written in the dark' }, 30000);
            await wb.expectNoUpdate(alice, 1000);
            await redis.restart();
            const ack = await pending;
            assert.equal(ack.type, 'ack', JSON.stringify(ack));
            for (const d of [A, Bn]) await waitReady(d, 200, 15000);
            const want = { user_id: alice, status: 'busy', device: 'web', devices: ['web'],
                custom_status: 'written in the dark', activity: 'in_call' };
            // The first thing it hears is that change, whole: no state nobody set (the status
            // re-registered without the custom_status sent with it) shows on the way.
            assertPresence(await wb.waitUpdate(alice, () => true, 5000), want,
                'the watcher on B hears of the change made during the outage');

            for (const d of [A, Bn]) {
                const mine = await openClient(d, alice);
                const { id: _id, ...priv } = await ask(mine, { type: 'get_privacy' });
                assert.deepEqual(priv, { type: 'privacy', visibility: 'contacts', contacts: [bob], blocked: [mallory] },
                    `settings read on port ${d.port} after the restart`);
                await mine.close();
                const bq = await openClient(d, bob);
                assertPresence((await bq.getPresence([alice]))[alice], want, `bob reads alice on port ${d.port}`);
                await bq.close();
                for (const other of [mallory, 'f-stranger']) {
                    const q = await openClient(d, other);
                    assert.deepEqual(await q.getPresence([alice]), {}, `${other}: still hidden on port ${d.port}`);
                    await q.close();
                }
            }
        }, async () => {
            await stopAll([A, Bn], redis);
        });
    });
});

describe('Redis restarted and still loading its data set', { timeout: 60000 }, () => {
    test('nodes wait for it: not ready meanwhile, nothing refused, nothing lost', T, async () => {
        const redis = await startRedis(); // snapshots by SAVE only
        let A;
        let Bn;
        await withCleanup(async () => {
            [A, Bn] = await Promise.all([startNode(['--redis', redis.url], 'lA'), startNode(['--redis', redis.url], 'lB')]);
            const [alice, bob] = ['l-alice', 'l-bob'];
            const a = await openUser(A, alice, { device: 'web', custom_status: 'saved' });
            await a.ok({ type: 'set_visibility', visibility: 'contacts' });
            await a.ok({ type: 'add_contact', user_id: bob });
            const { c: wb } = await openWatcher(Bn, bob, [alice]);
            // Enough keys that loading them, slowed down (key-load-delay), takes a few seconds.
            await redis.cmd('EVAL', "for i = 1, 15000 do redis.call('SET', 'filler:' .. i, i) end", 0);
            assert.equal(await redis.cmd('SAVE'), 'OK');
            await redis.kill();
            await waitReady(A, 503, 5000);
            await redis.restart(10000, { loading: true,
                extra: ['--key-load-delay', '100', '--loading-process-events-interval-bytes', '1024'] });
            const t0 = now();
            const pending = a.request({ type: 'set_status', status: 'busy' }, 30000);
            // It accepts connections and answers -LOADING: not a Redis to work with yet.
            await sleep(300);
            assert.match(await redis.cmd('PING').catch((e) => e.message), /^LOADING/, 'still loading');
            for (const d of [A, Bn]) assert.equal((await httpGet(d, '/readyz')).status, 503, `port ${d.port} while loading`);
            const ack = await pending;
            assert.equal(ack.type, 'ack', `a change made while Redis loads: ${JSON.stringify(ack)}`);
            console.log(`# acknowledged ${(now() - t0).toFixed(0)} ms after the restart, once loaded`);
            assert.equal(await redis.cmd('PING'), 'PONG', 'loaded by the time of the ack');
            for (const d of [A, Bn]) await waitReady(d, 200, 15000);
            assertPresence(await wb.waitUpdate(alice, () => true, 5000),
                { user_id: alice, status: 'busy', device: 'web', devices: ['web'], custom_status: 'saved' });
            const mine = await openClient(Bn, alice);
            const { id: _id, ...priv } = await ask(mine, { type: 'get_privacy' });
            assert.deepEqual(priv, { type: 'privacy', visibility: 'contacts', contacts: [bob], blocked: [] });
            for (const d of [A, Bn])
                assert.equal(metricValue(await scrapeMetrics(d), 'presenced_redis_errors_total'), 0,
                    `port ${d.port}: no Redis call failed`);
        }, async () => {
            await stopAll([A, Bn], redis);
        });
    });
});

describe('a node cut off from Redis for longer than its lease', { timeout: 60000 }, () => {
    test('is swept by the others meanwhile, and registers everything again once back', T, async () => {
        const redis = await startRedis();
        const proxy = await startProxy(redis.port);
        const flags = ['--node-lease-ttl', String(LEASE / 1000)];
        let A;
        let P;
        await withCleanup(async () => {
            // P reaches Redis through the proxy; A directly.
            [A, P] = await Promise.all([startNode(['--redis', redis.url, ...flags], 'pA'),
                startNode(['--redis', proxy.url, ...flags], 'pP')]);
            const [bob, alice] = ['p-bob', 'p-alice'];
            const room = 'doc:partition';
            const { c: w } = await openWatcher(A, 'p-w', [bob]);
            const al = await openUser(A, alice);
            await joinRoom(al, room);
            const b = await openUser(P, bob, { device: 'web', custom_status: 'cut off soon' });
            await joinRoom(b, room, { mode: 'editing' });
            await al.waitFor((m) => m.type === 'member_joined', 3000, 'bob joining');
            assert.equal((await w.waitUpdate(bob)).status, 'online');
            assert.equal(await redis.cmd('SCARD', 'pd:nodes'), 2, 'both nodes hold leases');

            // The proxy goes on accepting connections and drops them at once, as a proxy in front
            // of an unreachable Redis does: a connection is not a Redis that answers.
            proxy.cut();
            await waitReady(P, 503, 5000);
            const resyncs = metricValue(await scrapeMetrics(P), 'presenced_redis_resyncs_total');
            // To A, P looks dead: its lease runs out and A sweeps it.
            const off = await w.waitUpdate(bob, () => true, LEASE + SWEEP_MAX + SLACK_MS + 3000);
            assert.equal(off.status, 'offline');
            assert.equal((await httpGet(P, '/readyz')).status, 503, 'P stayed not ready all along');
            assert.equal(metricValue(await scrapeMetrics(P), 'presenced_redis_resyncs_total'), resyncs,
                'P never took the proxy for Redis');
            const left = await al.waitFor((m) => m.type === 'member_left', 3000, 'bob swept from the room');
            assert.equal(left.reason, 'timeout');
            // P meanwhile keeps its client, who never hears of any of this.
            await b.barrier();
            await b.expectNone((m) => m.type === 'member_left' || m.type === 'presence_update', 0, 'news');

            proxy.restore();
            await waitReady(P, 200, 15000);
            assert.equal(metricValue(await scrapeMetrics(P), 'presenced_redis_resyncs_total'), resyncs + 1, 'one resync');
            // P registers bob's session and room connection again: he is back for everyone.
            assertPresence(await w.waitUpdate(bob, () => true, 5000),
                { user_id: bob, status: 'online', device: 'web', devices: ['web'], custom_status: 'cut off soon' },
                'bob online again for the watcher on A');
            const back = await al.waitFor((m) => m.type === 'member_joined', 5000, 'bob back in the room');
            assert.equal(back.member.user_id, bob);
            assert.deepEqual(back.member.metadata, { mode: 'editing' }, 'with the metadata he had set');
            assert.equal(await countOf(al, room), 2);
            // And he stays: P's new lease keeps it from being swept again.
            await w.expectNoUpdate(bob, LEASE + SWEEP_MAX);
        }, async () => {
            try {
                await stopAll([A, P], null);
            } finally {
                await proxy.close();
                await redis.stop();
            }
        });
    });
});

describe('a node stopped while Redis is down', { timeout: 60000 }, () => {
    // Calls still waiting for Redis at exit used to be dropped after the engine and rooms were
    // freed: LeakSanitizer reported their request records (and, before that, a use after
    // free). main now has the store fail them first (store_shutdown).
    test('exits 0 without a sanitizer report, changes still waiting', T, async () => {
        const redis = await startRedis();
        let D;
        await withCleanup(async () => {
            D = await startNode(['--redis', redis.url], 'zD');
            const a = await openUser(D, 'z-alice');
            await joinRoom(a, 'doc:z');
            await redis.kill();
            await waitReady(D, 503, 5000);
            await a.send({ type: 'set_status', status: 'busy', id: 'waits' });
            await a.send({ type: 'join', channel: 'doc:z2', id: 'waits too' });
            await D.stop(); // the connection stays open: the node closes it while draining
            D = null;
        }, async () => {
            await stopAll([D], redis);
        });
    });
});

// ---------------------------------------------------------------------------------------------
// (c)

describe('a hash slot moves between cluster masters', { timeout: 60000 }, () => {
    test('updates keep reaching watchers across the move, the first one after it included', T, async () => {
        const cluster = await startCluster();
        const flags = ['--redis-cluster', cluster.seeds];
        let A;
        let Bn;
        await withCleanup(async () => {
            [A, Bn] = await Promise.all([startNode(flags, 'mA'), startNode(flags, 'mB')]);
            const [bob, alice] = ['m-bob', 'm-alice'];
            const room = 'doc:moving';
            // Every key of a user carries the hash tag {u:ID}: one slot, one script.
            const slot = await cluster.slotOf(`pd:{u:${bob}}`);
            for (const k of [`pd:{u:${bob}}:s`, `pd:{u:${bob}}:c`, `pd:{u:${bob}}:b`, `u:${bob}`])
                assert.equal(await cluster.slotOf(k), slot, k);
            const roomSlot = await cluster.slotOf(`pd:{r:${room}}`);

            const { c: w } = await openWatcher(A, 'm-w', [bob]);
            const b = await openUser(Bn, bob, { device: 'web' });
            assert.equal((await w.waitUpdate(bob)).status, 'online');
            const a = await openUser(A, alice);
            await joinRoom(a, room);
            await joinRoom(b, room);
            await a.waitFor((m) => m.type === 'member_joined', 3000, 'bob joining');

            // Move bob's slot while bob keeps changing (scripts meet ASK, TRYAGAIN and MOVED).
            const owner = await cluster.ownerOf(slot);
            const target = cluster.nodes.find((n) => n !== owner);
            const states = ['busy', 'away', 'online'];
            let changes = 0;
            let moving = true;
            const churn = (async () => {
                while (moving || changes < 3) {
                    const ack = await b.request({ type: 'set_status', status: states[changes % 3] }, 5000);
                    assert.equal(ack.type, 'ack', `a change during the move: ${JSON.stringify(ack)}`);
                    changes++;
                }
            })();
            await cluster.moveSlot(slot, target);
            moving = false;
            await churn;
            assert.equal(await cluster.ownerOf(slot), target);
            assert.equal(await target.cmd('EXISTS', `pd:{u:${bob}}`), 1, 'the keys moved with the slot');
            const last = states[(changes - 1) % 3];
            assert.equal((await w.waitUpdate(bob, (p) => p.status === last, 5000)).status, last);
            w.drain();

            // The first change after the move reaches the watcher on the other node.
            const t0 = now();
            await b.ok({ type: 'set_status', status: 'busy', custom_status: 'moved' });
            const p = await w.waitUpdate(bob, () => true, 5000);
            assertPresence(p, { user_id: bob, status: 'busy', device: 'web', devices: ['web'], custom_status: 'moved' },
                `the first change after the move (${(now() - t0).toFixed(0)} ms)`);
            await b.ok({ type: 'set_status', status: 'away' });
            assert.equal((await w.waitUpdate(bob)).status, 'away');
            for (const d of [A, Bn]) {
                const q = await openClient(d, 'm-q');
                assert.equal((await q.getPresence([bob]))[bob].status, 'away', `read on port ${d.port}`);
                await q.close();
            }

            // The room's slot moves too; once both nodes listen at the new owner (a room's events
            // published during the move itself are not replayed), its events flow again.
            const rOwner = await cluster.ownerOf(roomSlot);
            const rTarget = cluster.nodes.find((n) => n !== rOwner);
            await cluster.moveSlot(roomSlot, rTarget);
            await eventually(async () => (await rTarget.cmd('PUBSUB', 'SHARDNUMSUB', `pd:{r:${room}}`))[1] === 2, 5000,
                'both nodes subscribed to the room at its new owner');
            await b.ok({ type: 'update', channel: room, metadata: { moved: true } });
            const u = await a.waitFor((m) => m.type === 'member_updated', 3000, 'member_updated after the move');
            assert.deepEqual(u.member.metadata, { moved: true });
            assert.equal(await countOf(a, room), 2);
        }, async () => {
            await stopAll([A, Bn], cluster);
        });
    });
});

// ---------------------------------------------------------------------------------------------
// (d)

describe('--redis-seed-compat', { timeout: 60000 }, () => {
    test("the seed's keys and channel are kept", T, async () => {
        const redis = await startRedis();
        let S;
        let P;
        let sub;
        await withCleanup(async () => {
            [S, P] = await Promise.all([startNode(['--redis', redis.url], 'seed', ['--redis-seed-compat']),
                startNode(['--redis', redis.url], 'plain')]);
            sub = await redis.subscribe(['presence:updates']);
            const SEED_KEYS = ['user_id', 'status', 'last_seen', 'device', 'custom_status', 'activity'];
            const published = async (pred) => {
                const raw = await sub.nextMessage('presence:updates', (x) => pred(JSON.parse(x)), 5000);
                const m = JSON.parse(raw);
                assert.deepEqual(Object.keys(m), SEED_KEYS, `PresenceInfo.to_dict() order: ${raw}`);
                assert.equal(typeof m.last_seen, 'number');
                return m;
            };

            const t0 = Date.now() / 1000;
            const a = await openUser(S, 'alice', { device: 'web', custom_status: 'hello', activity: 'meeting' });
            const m1 = await published((x) => x.user_id === 'alice');
            assert.deepEqual({ ...m1, last_seen: 0 }, { user_id: 'alice', status: 'online', last_seen: 0, device: 'web',
                custom_status: 'hello', activity: 'meeting' });
            assert.ok(Math.abs(m1.last_seen - t0) < 5, `last_seen ${m1.last_seen} is now (${t0})`);

            const h = await redis.cmd('HGETALL', 'presence:alice');
            const hash = Object.fromEntries(Array.from({ length: h.length / 2 }, (_, i) => [h[2 * i], h[2 * i + 1]]));
            assert.deepEqual(Object.keys(hash).sort(), [...SEED_KEYS].sort(), `the seed's six fields: ${JSON.stringify(hash)}`);
            assert.deepEqual({ ...hash, last_seen: '' }, { user_id: 'alice', status: 'online', last_seen: '', device: 'web',
                custom_status: 'hello', activity: 'meeting' });
            assert.ok(Math.abs(Number(hash.last_seen) - m1.last_seen) < 1, `float(last_seen) ${hash.last_seen}`);
            const ttl = await redis.cmd('PTTL', 'presence:heartbeat:alice');
            assert.ok(ttl > 0 && ttl <= 30000, `presence:heartbeat:alice has the heartbeat TTL: ${ttl} ms`);
            assert.equal(await redis.cmd('GET', 'presence:heartbeat:alice'), '1');

            // Heartbeats renew it (the seed's get_presence reads an expired one as offline).
            await eventually(async () => (await redis.cmd('PTTL', 'presence:heartbeat:alice')) < 28900, 3000,
                'the heartbeat key to age');
            await a.send({ type: 'heartbeat', device: 'web' });
            await eventually(async () => (await redis.cmd('PTTL', 'presence:heartbeat:alice')) > 29000, 3000,
                'a heartbeat to renew it');

            // A change: published, hash updated; a cleared field is absent (the seed's .get -> None).
            await a.ok({ type: 'set_status', status: 'busy', custom_status: null });
            const m2 = await published((x) => x.user_id === 'alice' && x.status === 'busy');
            assert.equal(m2.custom_status, null);
            assert.equal(m2.activity, 'meeting');
            assert.equal(await redis.cmd('HGET', 'presence:alice', 'status'), 'busy');
            assert.equal(await redis.cmd('HEXISTS', 'presence:alice', 'custom_status'), 0);

            // Offline: published, the heartbeat key deleted (as the seed's set_offline does).
            await a.ok({ type: 'set_offline' });
            const m3 = await published((x) => x.user_id === 'alice' && x.status === 'offline');
            assert.equal(m3.device, 'web');
            assert.equal(await redis.cmd('EXISTS', 'presence:heartbeat:alice'), 0);
            assert.equal(await redis.cmd('HGET', 'presence:alice', 'status'), 'offline');

            // Without the flag a node writes none of the seed's keys.
            const p = await openUser(P, 'plainbob');
            await p.ok({ type: 'set_status', status: 'busy' });
            assert.equal(await redis.cmd('EXISTS', 'presence:plainbob'), 0);
            assert.equal(await redis.cmd('EXISTS', 'presence:heartbeat:plainbob'), 0);
            const stray = sub.pushes.filter((x) => Array.isArray(x) && x[2] && x[2].includes('plainbob'));
            assert.deepEqual(stray, [], 'nothing published for a user of the plain node');
        }, async () => {
            if (sub) sub.close();
            await stopAll([S, P], redis);
        });
    });
});
