// Room privacy and authorization (docs/PROTOCOL.md section 4, "Who sees what in a room", and
// `refresh`), against the real daemon, on the embedded store and on two nodes sharing one real
// Redis, standalone and a 3-master Cluster (the members split across the nodes, so every event
// and signal crosses Redis):
//  - channel_members and channel_count answer only a connection in the room (not_member for
//    anyone else, before and after it leaves);
//  - a member (invisible: visibility nobody) who blocks another is never shown to them: not in
//    channel_state or channel_members, no member_joined / member_updated / member_left, no
//    cursor or typing; the block takes effect at once (the blocked user sees them leave, reason
//    "left"), an unblock shows them again (member_joined), and a third member sees everything
//    throughout; the blocked user's own messages still reach the blocker (the rule is one way);
//  - a refresh whose channels claim no longer allows a joined room leaves it at once: the
//    connection gets channel_left {reason: "revoked"}, the others member_left with reason
//    "revoked", and nothing of the room reaches or leaves the connection after.
// Each test fails on the code before these rules were enforced (dispatch.c checked only the
// token's channels for members and counts; rooms.c relayed everything to every member; refresh
// replaced the claims and left every joined room as it was).
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import { claimsFor, makeTemp, openTokenClient, rmTemp, signToken, writeSecret } from './lib/auth.mjs';
import { httpGet } from './lib/daemon.mjs';
import { eventually, openUser, startPresenced, stopDaemon } from './lib/presence.mjs';
import { redisCmd, startCluster, startRedis, stopNode } from './lib/redis.mjs';
import { ask, expectError, joinRoom, ROOM_EVENTS } from './lib/rooms.mjs';

const T = { timeout: 60000 };
const QUIET_MS = 400; // how long "nothing arrives" is watched for
const GRACE = 1; // --offline-grace, seconds

const isRoomEvent = (m) => ROOM_EVENTS.has(m.type);
const aboutUser = (user) => (m) => (isRoomEvent(m) && (m.user_id === user || m.member?.user_id === user)) ||
    ((m.type === 'cursor' || m.type === 'typing') && m.user_id === user);

/** How the nodes of one run are made: one embedded daemon (both "nodes" are it), or two on Redis. */
/** Two nodes on the shared Redis (standalone or Cluster: flags from backendFlags). */
async function twoNodes(backendFlags, extra) {
    const one = async (id) => {
        const d = await startPresenced([...backendFlags, '--node-id', id, '--offline-grace', String(GRACE),
            '--ephemeral', ...extra]);
        await eventually(async () => (await httpGet(d, '/readyz')).status === 200, 15000, `node ${id} ready`);
        return d;
    };
    const a = await one('A');
    const b = await one('B');
    return { a, b, all: [a, b] };
}

const BACKENDS = [
    {
        name: 'embedded store',
        async start(extra = []) {
            const d = await startPresenced(['--offline-grace', String(GRACE), ...extra]);
            return { a: d, b: d, all: [d] };
        },
    },
    {
        name: 'two nodes on Redis',
        redis: () => startRedis(),
        flush: (r) => redisCmd(r.port, ['FLUSHALL']),
        start: (extra, r) => twoNodes(['--redis', r.url], extra),
    },
    {
        name: 'two nodes on a Redis Cluster (3 masters)',
        redis: () => startCluster(),
        flush: (c) => Promise.all(c.nodes.map((n) => n.cmd('FLUSHALL'))),
        start: (extra, c) => twoNodes(['--redis-cluster', c.seeds], extra),
    },
];

for (const backend of BACKENDS) {
    describe(`room privacy (${backend.name})`, () => {
        let redis = null;
        let nodes = null;
        let dir = null;

        before(async () => {
            if (backend.redis) redis = await backend.redis();
        });
        after(async () => {
            if (redis) await redis.stop();
        });
        afterEach(async () => {
            const ns = nodes;
            nodes = null;
            if (ns) for (const d of ns.all) await (backend.redis ? stopNode(d) : stopDaemon(d));
            if (redis) await backend.flush(redis); // each test starts from nothing
            rmTemp(dir);
            dir = null;
        });

        test('channel_members and channel_count answer only the room', T, async () => {
            nodes = await backend.start([], redis);
            const alice = await openUser(nodes.a, 'pv-alice');
            const bob = await openUser(nodes.b, 'pv-bob');
            await joinRoom(alice, 'pv/doc', { secret: 1 });
            // Not in the room: neither who is there nor how many.
            await expectError(bob, { type: 'channel_members', channel: 'pv/doc' }, 'not_member');
            await expectError(bob, { type: 'channel_count', channel: 'pv/doc' }, 'not_member');
            await expectError(bob, { type: 'channel_count', channel: 'pv/nowhere' }, 'not_member');
            // In the room: both.
            await joinRoom(bob, 'pv/doc');
            const page = await ask(bob, { type: 'channel_members', channel: 'pv/doc' });
            assert.deepEqual(page.members.map((m) => m.user_id), ['pv-alice', 'pv-bob']);
            assert.equal((await ask(bob, { type: 'channel_count', channel: 'pv/doc' })).count, 2);
            // Out again: refused again.
            assert.equal((await ask(bob, { type: 'leave', channel: 'pv/doc' })).type, 'ack');
            await expectError(bob, { type: 'channel_members', channel: 'pv/doc' }, 'not_member');
            await expectError(bob, { type: 'channel_count', channel: 'pv/doc' }, 'not_member');
        });

        test('a member is never shown to a user they block; at once, and back on unblock', T, async () => {
            nodes = await backend.start([], redis);
            // tess (invisible) and a bystander carl on node A; rob (whom tess blocks) on node B.
            const tess = await openUser(nodes.a, 'pv-tess');
            const carl = await openUser(nodes.a, 'pv-carl');
            const rob = await openUser(nodes.b, 'pv-rob');
            assert.equal((await ask(tess, { type: 'set_visibility', visibility: 'nobody' })).type, 'ack');
            for (const c of [tess, carl, rob]) await joinRoom(c, 'pv/room');
            // Rooms override visibility: before the block rob sees tess like anyone.
            await rob.send({ type: 'cursor', channel: 'pv/room', cursor: { x: 1 } }); // rob -> tess works throughout
            await tess.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-rob', 3000, 'rob\'s cursor');
            await tess.send({ type: 'cursor', channel: 'pv/room', cursor: { x: 2 } });
            await rob.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-tess', 3000, 'tess\'s cursor before the block');
            await carl.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-tess', 3000, 'tess\'s cursor (carl)');

            // The block: rob sees tess leave (as if she left), at once.
            assert.equal((await ask(tess, { type: 'block', user_id: 'pv-rob' })).type, 'ack');
            const gone = await rob.waitFor((m) => m.type === 'member_left' && m.user_id === 'pv-tess', 3000,
                'tess leaving for rob');
            assert.equal(gone.reason, 'left');
            assert.equal(gone.channel, 'pv/room');
            await carl.expectNone((m) => m.type === 'member_left', QUIET_MS, 'member_left (carl)');

            // Nothing of tess reaches rob any more; carl gets all of it.
            await tess.send({ type: 'cursor', channel: 'pv/room', cursor: { x: 3 } });
            await tess.send({ type: 'typing', channel: 'pv/room', typing: true });
            assert.equal((await ask(tess, { type: 'update', channel: 'pv/room', metadata: { n: 1 } })).type, 'ack');
            await carl.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-tess' && m.cursor.x === 3, 3000, 'cursor 3');
            await carl.waitFor((m) => m.type === 'typing' && m.user_id === 'pv-tess', 3000, 'typing');
            await carl.waitFor((m) => m.type === 'member_updated' && m.member.user_id === 'pv-tess', 3000, 'updated');
            await rob.expectNone(aboutUser('pv-tess'), QUIET_MS, 'anything of tess');
            const page = await ask(rob, { type: 'channel_members', channel: 'pv/room' });
            assert.deepEqual(page.members.map((m) => m.user_id), ['pv-carl', 'pv-rob']);
            const page1 = await ask(rob, { type: 'channel_members', channel: 'pv/room', limit: 1, cursor: 'pv-carl' });
            assert.deepEqual([page1.members.map((m) => m.user_id), page1.next_cursor], [['pv-rob'], null]);
            // rob joining again (another tab) gets a channel_state without her.
            const rob2 = await openUser(nodes.b, 'pv-rob');
            const st = await joinRoom(rob2, 'pv/room');
            assert.deepEqual(st.members.map((m) => m.user_id), ['pv-carl', 'pv-rob']);
            // The rule is one way: what rob does still reaches tess.
            await rob.send({ type: 'cursor', channel: 'pv/room', cursor: { x: 4 } });
            await tess.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-rob' && m.cursor.x === 4, 3000, 'rob -> tess');

            // She leaves and comes back: rob hears of neither; carl of both.
            assert.equal((await ask(tess, { type: 'leave', channel: 'pv/room' })).type, 'ack');
            await carl.waitFor((m) => m.type === 'member_left' && m.user_id === 'pv-tess', 3000, 'left (carl)');
            await joinRoom(tess, 'pv/room');
            await carl.waitFor((m) => m.type === 'member_joined' && m.member.user_id === 'pv-tess', 3000, 'joined (carl)');
            await rob.expectNone(aboutUser('pv-tess'), QUIET_MS, 'tess leaving or joining');
            await rob2.expectNone(aboutUser('pv-tess'), 10, 'tess (second tab)');

            // Unblock: rob sees her again, at once, and her cursors.
            assert.equal((await ask(tess, { type: 'unblock', user_id: 'pv-rob' })).type, 'ack');
            const back = await rob.waitFor((m) => m.type === 'member_joined' && m.member.user_id === 'pv-tess', 3000,
                'tess back for rob');
            assert.equal(back.channel, 'pv/room');
            await tess.send({ type: 'cursor', channel: 'pv/room', cursor: { x: 5 } });
            await rob.waitFor((m) => m.type === 'cursor' && m.user_id === 'pv-tess' && m.cursor.x === 5, 3000,
                'tess\'s cursor after the unblock');
            const again = await ask(rob, { type: 'channel_members', channel: 'pv/room' });
            assert.deepEqual(again.members.map((m) => m.user_id), ['pv-carl', 'pv-rob', 'pv-tess']);
        });

        test('a block made before anyone joins hides the joiner from the start', T, async () => {
            nodes = await backend.start([], redis);
            const tess = await openUser(nodes.a, 'pv-tess');
            const rob = await openUser(nodes.b, 'pv-rob');
            assert.equal((await ask(tess, { type: 'block', user_id: 'pv-rob' })).type, 'ack');
            await joinRoom(rob, 'pv/early');
            const st = await joinRoom(tess, 'pv/early');
            assert.deepEqual(st.members.map((m) => m.user_id), ['pv-rob', 'pv-tess'], 'tess sees rob');
            await tess.send({ type: 'typing', channel: 'pv/early', typing: true });
            await rob.expectNone(aboutUser('pv-tess'), QUIET_MS, 'tess joining or typing');
            const st2 = await joinRoom(rob, 'pv/early'); // again: still without her
            assert.deepEqual(st2.members.map((m) => m.user_id), ['pv-rob']);
            // Her disconnect (after the grace window) is not told to rob either.
            await tess.close();
            await rob.expectNone(aboutUser('pv-tess'), GRACE * 1000 + 800, 'tess disconnecting');
        });

        test('refresh with a narrower channels claim leaves the rooms it no longer allows', T, async () => {
            dir = makeTemp('pd-rooms-');
            const { secret } = writeSecret(dir);
            nodes = await backend.start(['--token-secret-file', `${dir}/secret`], redis);
            const hs = (claims) => signToken('HS256', secret, claims);
            const ana = await openTokenClient(nodes.a, hs(claimsFor('pv-ana', 600, { channels: ['team/*', 'doc/*'] })),
                { expectUser: 'pv-ana' });
            const ben = await openTokenClient(nodes.b, hs(claimsFor('pv-ben', 600, { channels: ['doc/*'] })),
                { expectUser: 'pv-ben' });
            await joinRoom(ana, 'team/x');
            await joinRoom(ana, 'doc/y');
            await joinRoom(ben, 'doc/y');
            await ana.waitFor((m) => m.type === 'member_joined' && m.member.user_id === 'pv-ben', 3000, 'ben joining');

            const ack = await ask(ana, { type: 'refresh', token: hs(claimsFor('pv-ana', 600, { channels: ['team/*'] })) });
            assert.equal(ack.type, 'ack');
            const left = await ana.waitFor((m) => m.type === 'channel_left', 3000, 'channel_left');
            assert.deepEqual(left, { type: 'channel_left', channel: 'doc/y', user_id: 'pv-ana', reason: 'revoked' });
            const seen = await ben.waitFor((m) => m.type === 'member_left' && m.user_id === 'pv-ana', 3000,
                'ana leaving for ben');
            assert.equal(seen.reason, 'revoked');
            assert.equal(seen.count, 1);

            // Nothing of doc/y reaches ana any more, and she can no longer act there.
            await ben.send({ type: 'cursor', channel: 'doc/y', cursor: { x: 1 } });
            assert.equal((await ask(ben, { type: 'update', channel: 'doc/y', metadata: { k: 1 } })).type, 'ack');
            await ana.expectNone((m) => m.channel === 'doc/y', QUIET_MS, 'anything of doc/y');
            for (const m of [{ type: 'cursor', channel: 'doc/y', cursor: { x: 2 } }, { type: 'typing', channel: 'doc/y', typing: true },
                { type: 'update', channel: 'doc/y', metadata: {} }, { type: 'channel_members', channel: 'doc/y' },
                { type: 'channel_count', channel: 'doc/y' }])
                await expectError(ana, m, m.type.startsWith('channel_') ? 'forbidden' : 'not_member');
            await ben.expectNone((m) => m.user_id === 'pv-ana', QUIET_MS, 'anything of ana');
            await expectError(ana, { type: 'join', channel: 'doc/y' }, 'forbidden');
            // The room still allowed is kept.
            assert.equal((await ask(ana, { type: 'channel_count', channel: 'team/x' })).count, 1);
            // A refresh that allows everything it is in changes nothing.
            assert.equal((await ask(ana, { type: 'refresh', token: hs(claimsFor('pv-ana', 600, { channels: ['team/x'] })) })).type,
                'ack');
            await ana.expectNone((m) => m.type === 'channel_left', QUIET_MS, 'channel_left');
            // Token clients are not the daemon's to close (lib/auth.mjs): a node would wait for them.
            await ana.close();
            await ben.close();
        });
    });
}
