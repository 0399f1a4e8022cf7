// Several presenced nodes sharing state through Redis (ARCHITECTURE.md section 5, issue #8):
// the same test bodies run once against a standalone Redis (--redis) and once against a real
// 3-master Redis Cluster (--redis-cluster), each with three nodes A, B and C. They prove that
// what one node's clients do is seen by clients of the other nodes exactly as docs/PROTOCOL.md
// says it is seen on one node:
//  - a watcher on A follows a user on B: online, status / custom_status / activity changes, the
//    offline only after the grace window; a reconnect to another node inside the window sends
//    nothing; watching is counted in presenced_redis_subscriptions and released;
//  - a user's two devices on two nodes aggregate (online wins over away, busy over both; the
//    devices list), closing one device updates at once and keeps the user present;
//  - a room spanning three nodes: channel_state, member_joined / member_updated / member_left
//    (left, disconnected after the grace) with counts that add up, member lists and counts the
//    same from every node, cursors and typing relayed between nodes (never to the sender);
//  - a member with connections on two nodes is one member (devices merged; member_updated when
//    one goes, member_left only when the last goes, after the grace window);
//  - a custom status with an expiry is cleared for watchers on the other nodes when it expires;
//  - privacy changed on one node (set_visibility nobody / contacts / everyone, block) applies to
//    watchers on the other nodes: one bare offline, then nothing; the current presence again
//    when permission comes back; get_presence from any node follows the rule;
//  - get_presence answers the same from every node;
//  - settings (custom_status, activity, visibility, contacts, blocks) set through one node are
//    read through the others, and survive a restart of that node: they live in Redis, whatever
//    --ephemeral (which lib/daemon.mjs adds) says about the embedded store.
// Every node must exit 0 without a sanitizer report when stopped (lib/daemon.mjs checks).
// Store bugs these tests found (fixed in src/store/): changes made right after a subscribe
// were lost (the snapshot was read before the SSUBSCRIBE was in place); a subscribe of users
// in several slots subscribed none of them in a cluster (CROSSSLOT); a node aborted in libuv
// at exit (its sockets closed twice).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { httpGet, metricValue, scrapeMetrics } from './lib/daemon.mjs';
import {
    assertPresence,
    eventually,
    now,
    openClient,
    openUser,
    openWatcher,
    startPresenced,
} from './lib/presence.mjs';
import { startCluster, startRedis, stopNode } from './lib/redis.mjs';
import { ask, countOf, joinRoom, RoomTracker, ROOM_EVENTS, walkMembers } from './lib/rooms.mjs';

const T = { timeout: 30000 };
const GRACE = 1000; // --offline-grace
const EARLY_MS = 30; // timers are never early by more than a loopback round trip
const LATE_MS = 1500; // nor late by more than a wheel tick, a Redis round trip and sanitizer noise
const QUIET_MS = 400; // how long "nothing arrives" is watched for where nothing is expected

const BACKENDS = [
    { name: 'standalone Redis', tag: 's', start: () => startRedis(), flags: (r) => ['--redis', r.url] },
    { name: 'Redis Cluster (3 masters)', tag: 'c', start: () => startCluster(), flags: (c) => ['--redis-cluster', c.seeds] },
];

const bare = (u) => `{"type":"presence_update","presence":{"user_id":"${u}","status":"offline"}}`;
const isRoomEvent = (m) => ROOM_EVENTS.has(m.type);

/** Starts a node on the shared Redis and waits until it reports ready (/readyz 200). */
async function startNode(backendFlags, nodeId, extra = []) {
    const d = await startPresenced([...backendFlags, '--node-id', nodeId, '--offline-grace', String(GRACE / 1000),
        '--ephemeral', ...extra]);
    try {
        await eventually(async () => (await httpGet(d, '/readyz')).status === 200, 15000, `node ${nodeId} ready`);
    } catch (e) {
        await d.kill();
        throw e;
    }
    return d;
}

/** The bare offline of user reaches c (byte for byte). */
async function expectBare(c, user) {
    const e = await c.waitForEntry((m) => m.type === 'presence_update' && m.presence.user_id === user, 3000,
        `the bare offline of ${user}`);
    assert.equal(e.raw, bare(user), `${c.user}: not the bare offline`);
}

/** presence without last_seen, for comparing what different nodes answer. */
function sansTime(p) {
    const { last_seen: _t, ...rest } = p;
    return rest;
}

for (const B of BACKENDS) {
    describe(`presenced nodes on a ${B.name}`, { timeout: 140000 }, () => {
        let redis;
        let A;
        let Bn;
        let C;
        let flags;
        const u = (name) => `${B.tag}-${name}`;

        before(async () => {
            redis = await B.start();
            flags = B.flags(redis);
            [A, Bn, C] = await Promise.all([startNode(flags, `${B.tag}A`), startNode(flags, `${B.tag}B`),
                startNode(flags, `${B.tag}C`)]);
        });

        after(async () => {
            const errors = [];
            await Promise.all([A, Bn, C].map((d) => stopNode(d).catch((e) => errors.push(e))));
            if (redis) await redis.stop();
            if (errors.length) throw errors[0];
        });

        test('a watcher on one node follows a user on another; offline only after the grace window', T, async () => {
            const bob = u('bob');
            const subsBefore = metricValue(await scrapeMetrics(A), 'presenced_redis_subscriptions');
            const { c: w, initial } = await openWatcher(A, u('w1'), [bob]);
            assert.deepEqual(initial, {}, 'bob was never seen');
            const { c: w2 } = await openWatcher(C, u('w2'), [bob]);
            assert.ok(metricValue(await scrapeMetrics(A), 'presenced_redis_subscriptions') >= subsBefore + 1,
                'A subscribes to the channel of the user its client watches');

            const b = await openUser(Bn, bob, { device: 'web' });
            for (const x of [w, w2])
                assertPresence(await x.waitUpdate(bob), { user_id: bob, status: 'online', device: 'web', devices: ['web'] },
                    `${x.user} sees bob come online on B`);

            await b.ok({ type: 'set_status', status: 'busy', custom_status: 'in a meeting', activity: 'meeting' });
            const want = { user_id: bob, status: 'busy', device: 'web', devices: ['web'], custom_status: 'in a meeting',
                activity: 'meeting' };
            for (const x of [w, w2]) assertPresence(await x.waitUpdate(bob), want, `${x.user} sees the change`);
            // A heartbeat changes nothing anyone can see: nothing is published.
            await b.send({ type: 'heartbeat', device: 'web' });
            await w.expectNoUpdate(bob, QUIET_MS);

            // The last connection closes: offline only once the grace window has passed.
            const t0 = now();
            await b.close();
            const e = await w.waitUpdateEntry(bob, () => true, GRACE + LATE_MS + 1000);
            const took = e.at - t0;
            assert.ok(took >= GRACE - EARLY_MS, `offline after ${took.toFixed(0)} ms, before the ${GRACE} ms grace window`);
            assert.ok(took <= GRACE + LATE_MS, `offline after ${took.toFixed(0)} ms (grace ${GRACE} ms)`);
            assertPresence(e.msg.presence, { ...want, status: 'offline', devices: [] }, 'offline keeps the user fields');
            assertPresence(await w2.waitUpdate(bob), { ...want, status: 'offline', devices: [] }, 'C sees the offline too');

            // Back on B, then a reload that lands on C inside the grace window: no flap at all.
            const b2 = await openUser(Bn, bob, { device: 'web', status: 'busy' });
            for (const x of [w, w2]) assert.equal((await x.waitUpdate(bob)).status, 'busy');
            await b2.close();
            const b3 = await openUser(C, bob, { device: 'web', status: 'busy' });
            await w.expectNoUpdate(bob, GRACE + 500);
            await w2.expectNoUpdate(bob, 0);
            for (const d of [A, Bn, C]) {
                const c = await openClient(d, u('asker'));
                assertPresence((await c.getPresence([bob]))[bob], want, `get_presence on port ${d.port} after the reload`);
                await c.close();
            }
            await b3.close();
            assert.equal((await w.waitUpdate(bob, () => true, GRACE + LATE_MS + 1000)).status, 'offline');

            await w.close();
            await w2.close();
            await eventually(async () => metricValue(await scrapeMetrics(A), 'presenced_redis_subscriptions') === subsBefore,
                3000, 'A to release its subscription once nobody watches');
        });

        test('one subscribe request for many users (many slots) follows them all', T, async () => {
            // One request, one loop turn: the node subscribes to all their channels at once (in
            // a cluster they hash to many slots, which one SSUBSCRIBE may not mix).
            const ids = Array.from({ length: 24 }, (_, i) => u(`many${i}`));
            const { c: w, initial } = await openWatcher(A, u('wmany'), ids);
            assert.deepEqual(initial, {});
            const conns = [];
            for (const [i, id] of ids.entries()) conns.push(await openUser(i % 2 ? Bn : C, id, { device: 'web' }));
            for (const id of ids) assert.equal((await w.waitUpdate(id)).status, 'online', `${id} seen online`);
            await conns[5].ok({ type: 'set_status', status: 'busy' });
            assert.equal((await w.waitUpdate(ids[5])).status, 'busy');
            for (const c of conns) await c.close();
            for (const id of ids)
                assert.equal((await w.waitUpdate(id, () => true, GRACE + LATE_MS + 1000)).status, 'offline');
            await w.close();
        });

        test("a user's devices on two nodes aggregate; closing one keeps the user online", T, async () => {
            const bob = u('bob2');
            const { c: w } = await openWatcher(C, u('w3'), [bob]);
            const web = await openUser(A, bob, { device: 'web', status: 'away' });
            assertPresence(await w.waitUpdate(bob), { user_id: bob, status: 'away', device: 'web', devices: ['web'] });
            const mobile = await openUser(Bn, bob, { device: 'mobile' });
            const both = { user_id: bob, status: 'online', device: 'mobile', devices: ['mobile', 'web'] };
            assertPresence(await w.waitUpdate(bob), both, 'online (B) wins over away (A)');
            for (const d of [A, Bn, C]) {
                const c = await openClient(d, u('asker2'));
                assertPresence((await c.getPresence([bob]))[bob], both, `get_presence on port ${d.port}`);
                await c.close();
            }
            // Any busy session makes the user busy; the most recent session names the device.
            await web.ok({ type: 'set_status', status: 'busy' });
            assertPresence(await w.waitUpdate(bob), { ...both, status: 'busy', device: 'web' }, 'busy wins');
            await web.ok({ type: 'set_status', status: 'away' });
            assertPresence(await w.waitUpdate(bob), { ...both, device: 'web' }, 'back to online (mobile)');
            // bob's own connections see themselves through their watch too.
            const self = await openClient(Bn, bob);
            assertPresence((await self.getPresence([bob]))[bob], { ...both, device: 'web' });
            await self.close();

            // Closing one device is not the last session: removed at once, still online.
            const t0 = now();
            await web.close();
            const e = await w.waitUpdateEntry(bob, () => true, 3000);
            assert.ok(e.at - t0 < GRACE, `the device left after ${(e.at - t0).toFixed(0)} ms: not at once`);
            assertPresence(e.msg.presence, { user_id: bob, status: 'online', device: 'mobile', devices: ['mobile'] },
                'one device gone, the user still online (device: the latest live session)');
            await mobile.close();
            assert.equal((await w.waitUpdate(bob, () => true, GRACE + LATE_MS + 1000)).status, 'offline');
            await w.close();
        });

        test('a room spanning three nodes: events, member lists and counts, cursors', T, async () => {
            const room = `doc:${B.tag}-1`;
            const [alice, bob, carol] = [u('ra'), u('rb'), u('rc')];
            const a = await openUser(A, alice);
            const b = await openUser(Bn, bob, { device: 'mobile' });
            const c = await openUser(C, carol);

            const sa = await joinRoom(a, room, { mode: 'viewing' });
            assert.equal(sa.count, 1);
            assert.deepEqual(sa.members.map((m) => m.user_id), [alice]);
            const track = new RoomTracker(sa);

            const sb = await joinRoom(b, room, { mode: 'viewing' });
            assert.equal(sb.count, 2);
            assert.deepEqual(sb.members.map((m) => m.user_id).sort(), [alice, bob].sort());
            const joinedB = (await track.follow(a, 2))[0];
            assert.equal(joinedB.member.user_id, bob);
            assert.deepEqual(joinedB.member.devices, ['mobile']);
            assert.deepEqual(joinedB.member.metadata, { mode: 'viewing' });

            const sc = await joinRoom(c, room, { mode: 'editing' });
            assert.equal(sc.count, 3);
            await track.follow(a, 3);
            const ev = await b.waitFor((m) => m.type === 'member_joined' && m.channel === room, 3000, 'carol joining');
            assert.equal(ev.member.user_id, carol);
            assert.equal(ev.count, 3);

            // Every node answers the same members and count.
            const ids = [alice, bob, carol].sort();
            for (const x of [a, b, c]) {
                const { ids: got } = await walkMembers(x, room);
                assert.deepEqual([...got].sort(), ids, `${x.user}'s node lists every member`);
                assert.equal(await countOf(x, room), 3, `${x.user}'s node counts every member`);
            }

            // Metadata changes and ephemeral signals cross nodes, never back to the sender.
            await b.ok({ type: 'update', channel: room, metadata: { mode: 'editing' } });
            for (const x of [a, c]) {
                const m = await x.waitFor((y) => y.type === 'member_updated' && y.channel === room, 3000, 'member_updated');
                assert.equal(m.member.user_id, bob);
                assert.deepEqual(m.member.metadata, { mode: 'editing' });
                assert.equal(m.count, 3);
                if (x === a) track.apply(m);
            }
            await b.send({ type: 'cursor', channel: room, cursor: { line: 12, ch: 4 } });
            await c.send({ type: 'typing', channel: room, typing: true });
            for (const x of [a, c]) {
                const m = await x.waitFor((y) => y.type === 'cursor' && y.channel === room, 3000, 'the cursor');
                assert.deepEqual(m, { type: 'cursor', channel: room, user_id: bob, cursor: { line: 12, ch: 4 } });
            }
            for (const x of [a, b]) {
                const m = await x.waitFor((y) => y.type === 'typing' && y.channel === room, 3000, 'typing');
                assert.deepEqual(m, { type: 'typing', channel: room, user_id: carol, typing: true });
            }
            await b.expectNone((m) => m.type === 'cursor', QUIET_MS, 'own cursor echoed');
            await c.expectNone((m) => m.type === 'typing', 0, 'own typing echoed');

            // An explicit leave on B reaches A and C at once.
            await b.ok({ type: 'leave', channel: room });
            for (const x of [a, c]) {
                const m = await x.waitFor((y) => y.type === 'member_left' && y.channel === room, 3000, 'member_left');
                assert.deepEqual(m, { type: 'member_left', channel: room, user_id: bob, reason: 'left', count: 2 });
                if (x === a) track.apply(m);
            }
            // carol's connection drops: she leaves (disconnected) only after the grace window.
            const t0 = now();
            await c.terminate();
            const e = await a.waitForEntry((y) => y.type === 'member_left' && y.channel === room,
                GRACE + LATE_MS + 1000, 'carol leaving');
            assert.ok(e.at - t0 >= GRACE - EARLY_MS, `member_left after ${(e.at - t0).toFixed(0)} ms, inside the grace window`);
            assert.deepEqual(e.msg, { type: 'member_left', channel: room, user_id: carol, reason: 'disconnected', count: 1 });
            track.apply(e.msg);
            assert.equal(await countOf(a, room), 1, 'one member left');
            assert.equal((await ask(b, { type: 'channel_count', channel: room })).code, 'not_member', 'b left the room');
            await a.expectNone(isRoomEvent, QUIET_MS, 'room event');
            await a.close();
            await b.close();
        });

        test('a member with connections on two nodes is one member of the room', T, async () => {
            const room = `doc:${B.tag}-2`;
            const [alice, bob] = [u('ma'), u('mb')];
            const a = await openUser(A, alice);
            const sa = await joinRoom(a, room);
            const track = new RoomTracker(sa);
            const web = await openUser(Bn, bob, { device: 'web' });
            const phone = await openUser(C, bob, { device: 'mobile' });
            assert.equal((await joinRoom(web, room)).count, 2);
            const second = await joinRoom(phone, room);
            assert.equal(second.count, 2, 'a second connection of a member is not a second member');
            assert.deepEqual(second.members.find((m) => m.user_id === bob).devices, ['mobile', 'web']);
            await track.follow(a, 2);
            const upd = await a.waitFor((m) => m.type === 'member_updated' && m.channel === room, 3000, 'devices change');
            assert.deepEqual(upd.member.devices, ['mobile', 'web']);
            track.apply(upd);
            // One of the two goes: the member stays, with one device less (at once).
            await web.close();
            const upd2 = await a.waitFor((m) => m.type === 'member_updated' && m.channel === room, 3000, 'a device gone');
            assert.deepEqual(upd2.member.devices, ['mobile']);
            track.apply(upd2);
            await a.expectNone((m) => m.type === 'member_left', QUIET_MS, 'member_left');
            // The last one goes: member_left after the grace window.
            const t0 = now();
            await phone.close();
            const e = await a.waitForEntry((m) => m.type === 'member_left' && m.channel === room,
                GRACE + LATE_MS + 1000, 'bob leaving');
            assert.ok(e.at - t0 >= GRACE - EARLY_MS, `member_left ${(e.at - t0).toFixed(0)} ms after the last close`);
            assert.deepEqual(e.msg, { type: 'member_left', channel: room, user_id: bob, reason: 'disconnected', count: 1 });
            track.apply(e.msg);
            await a.close();
        });

        test('a custom status that expires is cleared for watchers on other nodes', T, async () => {
            const carol = u('xc');
            const { c: w } = await openWatcher(A, u('wx'), [carol]);
            const c = await openUser(Bn, carol, { device: 'web', custom_status: 'back in a second',
                custom_status_expires_in: 1 });
            const t0 = now();
            assert.equal((await w.waitUpdate(carol)).custom_status, 'back in a second');
            const e = await w.waitUpdateEntry(carol, () => true, 1000 + LATE_MS + 1000);
            assertPresence(e.msg.presence, { user_id: carol, status: 'online', device: 'web', devices: ['web'] },
                'custom_status cleared at its expiry');
            assert.ok(e.at - t0 >= 1000 - EARLY_MS - 100, `cleared after ${(e.at - t0).toFixed(0)} ms, before 1 s`);
            const q = await openClient(C, u('xq'));
            assert.equal((await q.getPresence([carol]))[carol].custom_status, null, 'read on a third node');
            for (const x of [q, c, w]) await x.close();
        });

        test('privacy changed on one node applies to watchers on the others', T, async () => {
            const [alice, bob, carol, dave] = [u('pa'), u('pb'), u('pc'), u('pd')];
            const a = await openUser(A, alice, { device: 'web', custom_status: 'hi' });
            const seen = { user_id: alice, status: 'online', device: 'web', devices: ['web'], custom_status: 'hi' };
            const ws = {};
            for (const [name, d] of [[bob, Bn], [carol, C], [dave, Bn]]) {
                const { c, initial } = await openWatcher(d, name, [alice]);
                assertPresence(initial[alice], seen, `${name} sees alice at first`);
                ws[name] = c;
            }

            // Invisible: every watcher elsewhere gets one bare offline, then nothing.
            await a.ok({ type: 'set_visibility', visibility: 'nobody' });
            for (const n of [bob, carol, dave]) await expectBare(ws[n], alice);
            await a.ok({ type: 'set_status', status: 'busy' });
            for (const n of [bob, carol, dave]) await ws[n].expectNoUpdate(alice, n === bob ? QUIET_MS : 0);
            for (const n of [bob, carol]) assert.deepEqual(await ws[n].getPresence([alice]), {}, `${n}: alice hidden`);
            // alice herself, on another node, still sees herself.
            const a2 = await openClient(C, alice);
            assert.equal((await a2.getPresence([alice]))[alice].status, 'busy');

            // Visible again: the current presence.
            await a.ok({ type: 'set_visibility', visibility: 'everyone' });
            for (const n of [bob, carol, dave])
                assertPresence(await ws[n].waitUpdate(alice), { ...seen, status: 'busy' }, `${n} sees alice again`);

            // A block applies to the blocked watcher only.
            await a.ok({ type: 'block', user_id: bob });
            await expectBare(ws[bob], alice);
            await a.ok({ type: 'set_status', status: 'away' });
            for (const n of [carol, dave]) assert.equal((await ws[n].waitUpdate(alice)).status, 'away');
            await ws[bob].expectNoUpdate(alice, QUIET_MS);
            assert.deepEqual(await ws[bob].getPresence([alice]), {}, 'blocked: hidden');

            // Contacts only: carol (a contact) keeps seeing, dave loses it, bob stays blocked.
            await a.ok({ type: 'add_contact', user_id: carol });
            await a.ok({ type: 'add_contact', user_id: bob });
            await a.ok({ type: 'set_visibility', visibility: 'contacts' });
            await expectBare(ws[dave], alice);
            await a.ok({ type: 'set_status', status: 'online' });
            assert.equal((await ws[carol].waitUpdate(alice)).status, 'online');
            for (const n of [bob, dave]) await ws[n].expectNoUpdate(alice, n === bob ? QUIET_MS : 0);
            assert.deepEqual(Object.keys(await ws[carol].getPresence([alice])), [alice]);
            assert.deepEqual(await ws[dave].getPresence([alice]), {});
            // Unblocked, bob is a contact: he sees alice's current presence.
            await a.ok({ type: 'unblock', user_id: bob });
            assertPresence(await ws[bob].waitUpdate(alice), seen, 'bob gains permission');
            for (const c of [a, a2, ...Object.values(ws)]) await c.close();
        });

        test('get_presence answers the same from every node', T, async () => {
            const [p1, p2, p3] = [u('g1'), u('g2'), u('g3')];
            const c1 = await openUser(A, p1, { device: 'desktop' });
            const c2 = await openUser(Bn, p2, { device: 'mobile', status: 'busy', custom_status: 'driving' });
            const c3 = await openUser(C, p3, { device: 'web', status: 'away', activity: 'focus' });
            const want = {
                [p1]: { user_id: p1, status: 'online', device: 'desktop', devices: ['desktop'] },
                [p2]: { user_id: p2, status: 'busy', device: 'mobile', devices: ['mobile'], custom_status: 'driving' },
                [p3]: { user_id: p3, status: 'away', device: 'web', devices: ['web'], activity: 'focus' },
            };
            const answers = [];
            for (const d of [A, Bn, C]) {
                const q = await openClient(d, u('gq'));
                const got = await q.getPresence([p1, p2, p3, u('never-seen')]);
                assert.deepEqual(Object.keys(got).sort(), [p1, p2, p3].sort(), `port ${d.port}: unknown users left out`);
                for (const id of [p1, p2, p3]) assertPresence(got[id], want[id], `${id} asked on port ${d.port}`);
                answers.push(got);
                await q.close();
            }
            for (const id of [p1, p2, p3]) {
                assert.deepEqual(sansTime(answers[1][id]), sansTime(answers[0][id]));
                assert.deepEqual(sansTime(answers[2][id]), sansTime(answers[0][id]));
                const ts = answers.map((x) => x[id].last_seen);
                assert.ok(Math.max(...ts) - Math.min(...ts) < 5, `last_seen of ${id} agrees across nodes: ${ts}`);
            }
            for (const d of [A, Bn, C]) {
                const m = await scrapeMetrics(d);
                assert.equal(metricValue(m, 'presenced_redis_ready'), 1, `port ${d.port}: presenced_redis_ready`);
                assert.ok(metricValue(m, 'presenced_redis_scripts_total') > 0, `port ${d.port}: scripts run`);
            }
            for (const c of [c1, c2, c3]) await c.close();
        });

        test('settings set on one node are read on the others and survive a restart of that node', T, async () => {
            const [alice, bob, mallory] = [u('sa'), u('sb'), u('sm')];
            const a = await openUser(A, alice, { device: 'web' });
            await a.ok({ type: 'set_status', custom_status: 'on holiday', activity: 'focus' });
            await a.ok({ type: 'set_visibility', visibility: 'contacts' });
            await a.ok({ type: 'add_contact', user_id: bob });
            await a.ok({ type: 'block', user_id: mallory });
            const settings = { type: 'privacy', visibility: 'contacts', contacts: [bob], blocked: [mallory] };

            const check = async (where) => {
                for (const d of where) {
                    const mine = await openClient(d, alice);
                    const { id: _id, ...got } = await ask(mine, { type: 'get_privacy' });
                    assert.deepEqual(got, settings, `alice's settings read on port ${d.port}`);
                    await mine.close();
                    const bq = await openClient(d, bob);
                    const p = (await bq.getPresence([alice]))[alice];
                    assert.ok(p, `bob (a contact) sees alice on port ${d.port}`);
                    assert.equal(p.custom_status, 'on holiday');
                    assert.equal(p.activity, 'focus');
                    await bq.close();
                    for (const other of [mallory, u('stranger')]) {
                        const q = await openClient(d, other);
                        assert.deepEqual(await q.getPresence([alice]), {}, `${other} on port ${d.port}`);
                        await q.close();
                    }
                }
            };
            await check([Bn, C]);

            // A goes away and a new process takes its place (same node id, same flags).
            await a.close();
            await stopNode(A);
            A = await startNode(flags, `${B.tag}A`);
            await check([A, Bn]);
        });
    });
}
