// The presence rules of issue #3 (docs/PROTOCOL.md sections 2-4) against the real daemon,
// with short timers set by flags:
//  - aggregation over devices (busy wins; closing one device updates `devices` at once);
//  - liveness: a heartbeat-only client is online and never turns away; a silent client is
//    closed with 4000 and goes offline within TTL + 1 s (no grace);
//  - grace: a reconnect inside it publishes nothing; without one, offline arrives after it
//    (never before); set_offline is immediate and heartbeats do not undo it;
//  - heartbeats never cause a presence_update; one change reaches 1,000 watchers once each;
//  - every invalid message gets its error code and changes nothing; request ids are echoed;
//  - custom_status expiry, null clears / absent keeps; opt-in auto_away; unknown users and
//    duplicate ids; the welcome message; ping -> pong.
// Every test runs its own daemon (state in memory only) and stops it after, asserting exit 0
// (under ASan: no leak, no sanitizer report): a crash fails the test that caused it, only.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { metricValue, scrapeMetrics } from './lib/daemon.mjs';
import {
    assertPresence,
    crashInfo,
    now,
    openClient,
    openUser,
    openWatcher,
    sleep,
    startPresenced,
    stopDaemon,
} from './lib/presence.mjs';

const T = { timeout: 30000 };

// The main daemon's timers and limits.
const GRACE = 1000; // --offline-grace
const AWAY = 1000; // --away-after (its minimum)
const MAX_SUBS = 5; // --max-subscriptions
const MAX_IDS = 10; // --max-ids-per-request
const MAIN_FLAGS = [
    '--offline-grace', String(GRACE / 1000),
    '--away-after', String(AWAY / 1000),
    '--max-subscriptions', String(MAX_SUBS),
    '--max-ids-per-request', String(MAX_IDS),
];

// The liveness daemon: a short TTL, a grace longer than it (a timeout must not wait for it).
const TTL = 1200; // --heartbeat-ttl
const TTL_GRACE = 3000;
const TTL_AWAY = 1000;
const TTL_FLAGS = [
    '--heartbeat-ttl', String(TTL / 1000),
    '--offline-grace', String(TTL_GRACE / 1000),
    '--away-after', String(TTL_AWAY / 1000),
];

// Timer tolerance: the server's timers are never early (its clock starts at or after the
// event we time from, give or take one loopback round trip), at most one 10 ms wheel tick
// late, plus scheduling noise under sanitizers.
const EARLY_MS = 30;
const LATE_MS = 1000;

const ERROR_KEYS = ['type', 'code', 'message'];
const ERROR_KEYS_ID = ['type', 'id', 'code', 'message'];

/** The presence of user as a get_presence answer shows it (asked on client c). */
async function presenceOf(c, user) {
    const ps = await c.getPresence([user]);
    assert.deepEqual(Object.keys(ps), [user], `get_presence ${user}: ${JSON.stringify(ps)}`);
    return ps[user];
}

function withoutLastSeen(p) {
    const { last_seen: _ignored, ...rest } = p;
    return rest;
}

// ---------------------------------------------------------------------------------------------

describe('presence', () => {
    let d;
    beforeEach(async () => {
        d = await startPresenced(MAIN_FLAGS);
    });
    afterEach(async () => {
        await stopDaemon(d);
    });

    test('welcome message fields; ping -> pong with the request id', T, async () => {
        const a = await openClient(d, 'wel-a');
        const sid = a.welcome.session_id;
        assert.ok(Number.isSafeInteger(sid) && sid > 0, `session_id ${sid}`);
        assert.equal(a.all[0].raw, `{"type":"welcome","protocol":1,"user_id":"wel-a","session_id":${sid},` +
            '"heartbeat_interval":10000,"heartbeat_ttl":30000}');
        assert.deepEqual(Object.keys(a.welcome), ['type', 'protocol', 'user_id', 'session_id', 'heartbeat_interval', 'heartbeat_ttl']);

        // Every connection is a new session, even of the same user.
        const b = await openClient(d, 'wel-a');
        assert.ok(Number.isSafeInteger(b.welcome.session_id) && b.welcome.session_id !== sid,
            `session ids ${sid}, ${b.welcome.session_id}`);
        assert.equal(b.welcome.user_id, 'wel-a');

        // The user id is echoed as decoded from the URL (UTF-8, spaces, slashes), up to 128 bytes.
        const odd = 'wél ü/☃?&=';
        const c = await openClient(d, odd);
        assert.equal(c.welcome.user_id, odd);
        const long = 'L'.repeat(128);
        const e = await openClient(d, long);
        assert.equal(e.welcome.user_id, long);
        await assert.rejects(openClient(d, 'L'.repeat(129)), /unexpected response 401/);
        await assert.rejects(openClient(d, ''), /unexpected response 401/);

        // A connection that has only opened has not announced itself: its user is not known.
        assert.deepEqual(await a.getPresence(['wel-a']), {});

        // ping -> pong, with and without ids (strings, integers), byte for byte.
        const pings = [
            ['{"type":"ping"}', '{"type":"pong"}'],
            ['{"type":"ping","id":"p-1"}', '{"type":"pong","id":"p-1"}'],
            ['{"id":42,"type":"ping"}', '{"type":"pong","id":42}'],
            ['{"type":"ping","id":-3}', '{"type":"pong","id":-3}'],
            ['{"type":"ping","id":0}', '{"type":"pong","id":0}'],
            ['{"type":"ping","id":9007199254740991}', '{"type":"pong","id":9007199254740991}'],
            ['{"type":"ping","id":""}', '{"type":"pong","id":""}'],
            ['{"type":"ping","id":"ид ✓"}', '{"type":"pong","id":"ид ✓"}'],
            [`{"type":"ping","id":"${'i'.repeat(64)}"}`, `{"type":"pong","id":"${'i'.repeat(64)}"}`],
        ];
        for (const [q, want] of pings) {
            await a.send(q);
            const got = await a.waitForEntry(() => true, 2000, `the answer to ${q}`);
            assert.equal(got.raw, want, q);
        }
        for (const x of [a, b, c, e]) await x.close();
    });

    test('two devices: busy on one wins; closing one keeps the user online with devices updated', T, async () => {
        const { c: w, initial } = await openWatcher(d, 'dev-w', ['dev-u']);
        assert.deepEqual(initial, {});
        const mob = await openUser(d, 'dev-u', { device: 'mobile' });
        assertPresence(await w.waitUpdate('dev-u'), { user_id: 'dev-u', status: 'online', device: 'mobile', devices: ['mobile'] });
        const web = await openUser(d, 'dev-u', { device: 'web' });
        assertPresence(await w.waitUpdate('dev-u'),
            { user_id: 'dev-u', status: 'online', device: 'web', devices: ['mobile', 'web'] });

        // busy on one device wins over online on the other.
        await mob.ok({ type: 'set_status', status: 'busy' });
        assertPresence(await w.waitUpdate('dev-u'),
            { user_id: 'dev-u', status: 'busy', device: 'mobile', devices: ['mobile', 'web'] });
        // away or online on the other changes nothing visible: still busy.
        await web.ok({ type: 'set_status', status: 'away' });
        await web.ok({ type: 'set_status', status: 'online' });
        await w.expectNoUpdate('dev-u', 0);
        assertPresence(await presenceOf(w, 'dev-u'),
            { user_id: 'dev-u', status: 'busy', device: 'web', devices: ['mobile', 'web'] });
        // busy -> online: any online wins over away.
        await web.ok({ type: 'set_status', status: 'away' });
        await mob.ok({ type: 'set_status', status: 'online' });
        assertPresence(await w.waitUpdate('dev-u'),
            { user_id: 'dev-u', status: 'online', device: 'mobile', devices: ['mobile', 'web'] });
        // all away -> away
        await mob.ok({ type: 'set_status', status: 'away' });
        assertPresence(await w.waitUpdate('dev-u'),
            { user_id: 'dev-u', status: 'away', device: 'mobile', devices: ['mobile', 'web'] });
        await w.expectNoUpdate('dev-u', 0);

        // custom_status and activity belong to the user, whichever device sets them (replacing
        // one value by another: the 'replacing' block below).
        await mob.ok({ type: 'set_status', status: 'busy', custom_status: 'from mobile' });
        assertPresence(await w.waitUpdate('dev-u'), {
            user_id: 'dev-u', status: 'busy', device: 'mobile', devices: ['mobile', 'web'], custom_status: 'from mobile',
        });
        await web.ok({ type: 'set_status', status: 'online', activity: 'in_call' });
        assertPresence(await w.waitUpdate('dev-u'), {
            user_id: 'dev-u', status: 'busy', device: 'web', devices: ['mobile', 'web'], custom_status: 'from mobile', activity: 'in_call',
        });

        // A second session with an existing label shows once in devices: nothing visible changes.
        const web2 = await openUser(d, 'dev-u', { device: 'web' });
        await w.expectNoUpdate('dev-u', 0);
        await web2.close();
        await w.expectNoUpdate('dev-u', 200);

        // Closing the busy mobile session (not the last one) is published at once, not after
        // grace: online, devices ["web"].
        const t0 = now();
        await mob.close();
        const e = await w.waitUpdateEntry('dev-u', () => true, GRACE);
        assert.ok(e.at - t0 < GRACE / 2, `device removal took ${Math.round(e.at - t0)} ms`);
        assertPresence(e.msg.presence, {
            user_id: 'dev-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'from mobile', activity: 'in_call',
        });
        await w.expectNoUpdate('dev-u', 0); // exactly one

        // The last session: offline after grace; device is the last one used, devices empty.
        await web.close();
        const off = await w.waitUpdate('dev-u', () => true, GRACE + LATE_MS);
        assertPresence(off, {
            user_id: 'dev-u', status: 'offline', device: 'web', devices: [], custom_status: 'from mobile', activity: 'in_call',
        });
        await w.close();
    });

    test('heartbeats cause no presence_update and get no answer', T, async () => {
        const { c: w } = await openWatcher(d, 'hb-w', ['hb-u']);
        const u = await openUser(d, 'hb-u', { device: 'web' });
        assertPresence(await w.waitUpdate('hb-u'), { user_id: 'hb-u', status: 'online', device: 'web', devices: ['web'] });
        const forms = [
            '{"type":"heartbeat","device":"web"}', // canonical (the fast path)
            '{"type":"heartbeat"}',
            '{ "type" : "heartbeat", "device" : "web" }',
            '{"device":"web","type":"heartbeat"}',
            '{"type":"heart\\u0062eat","device":"w\\u0065b"}',
        ];
        for (let i = 0; i < 500; i++) await u.send(forms[i % forms.length]);
        await u.barrier();
        assert.equal(u.pending.length, 0, `heartbeats were answered: ${u.describePending()}`);
        await w.expectNoUpdate(undefined, 300);

        // The same for a session that announced itself with a heartbeat only.
        const h = await openClient(d, 'hb-u');
        for (let i = 0; i < 200; i++) await h.send(forms[i % forms.length]);
        await h.barrier();
        assert.equal(h.pending.length, 0, h.describePending());
        await w.expectNoUpdate(undefined, 100);

        // A heartbeat naming another device records it: devices is visible, so that one (and only
        // that one) is published; repeating it is liveness only.
        await u.send('{"type":"heartbeat","device":"desktop"}');
        assertPresence(await w.waitUpdate('hb-u'),
            { user_id: 'hb-u', status: 'online', device: 'desktop', devices: ['desktop', 'web'] });
        for (let i = 0; i < 100; i++) await u.send('{"type":"heartbeat","device":"desktop"}');
        await u.barrier();
        await w.expectNoUpdate(undefined, 200);
        assert.equal(u.pending.length, 0, u.describePending());
        for (const x of [u, h, w]) await x.close();
    });

    test('reconnect inside grace publishes nothing (clean close and network drop)', T, async () => {
        const { c: w } = await openWatcher(d, 'gr-w', ['gr-u']);
        const u = await openUser(d, 'gr-u', { device: 'web' });
        assertPresence(await w.waitUpdate('gr-u'), { user_id: 'gr-u', status: 'online', device: 'web', devices: ['web'] });

        // A page reload: close, reconnect 300 ms later, set_online again.
        await u.close();
        await sleep(300);
        const u2 = await openUser(d, 'gr-u', { device: 'web' });
        await w.expectNoUpdate('gr-u', GRACE + 500); // past the first window's end
        assertPresence(await presenceOf(w, 'gr-u'), { user_id: 'gr-u', status: 'online', device: 'web', devices: ['web'] });

        // A network blip: the TCP connection drops without a close frame; the new connection
        // announces itself with a heartbeat only.
        await u2.terminate();
        await sleep(300);
        const u3 = await openClient(d, 'gr-u');
        await u3.send('{"type":"heartbeat","device":"web"}');
        await w.expectNoUpdate('gr-u', GRACE + 500);
        assertPresence(await presenceOf(w, 'gr-u'), { user_id: 'gr-u', status: 'online', device: 'web', devices: ['web'] });
        assert.deepEqual(w.all.filter((e) => e.msg.type === 'presence_update').length, 1); // the first online only
        await u3.close();
        assertPresence(await w.waitUpdate('gr-u', () => true, GRACE + LATE_MS),
            { user_id: 'gr-u', status: 'offline', device: 'web', devices: [] });
        await w.close();
    });

    test('after grace without a reconnect, offline arrives (not before grace)', T, async () => {
        const { c: w } = await openWatcher(d, 'gr2-w', ['gr2-u']);
        for (const drop of ['close', 'terminate']) {
            const u = await openUser(d, 'gr2-u', { device: 'mobile' });
            assertPresence(await w.waitUpdate('gr2-u'), { user_id: 'gr2-u', status: 'online', device: 'mobile', devices: ['mobile'] });
            const t0 = now();
            if (drop === 'close') await u.close();
            else await u.terminate();
            const e = await w.waitUpdateEntry('gr2-u', () => true, GRACE + 2 * LATE_MS);
            const elapsed = e.at - t0;
            assertPresence(e.msg.presence, { user_id: 'gr2-u', status: 'offline', device: 'mobile', devices: [] }, drop);
            assert.ok(elapsed >= GRACE - EARLY_MS, `${drop}: offline after ${Math.round(elapsed)} ms, before the ${GRACE} ms grace`);
            assert.ok(elapsed <= GRACE + LATE_MS, `${drop}: offline after ${Math.round(elapsed)} ms`);
            await w.expectNoUpdate('gr2-u', 0);
        }
        // Coming back after the window: one online update.
        const u = await openUser(d, 'gr2-u', { device: 'web' });
        assertPresence(await w.waitUpdate('gr2-u'), { user_id: 'gr2-u', status: 'online', device: 'web', devices: ['web'] });
        await w.expectNoUpdate('gr2-u', 0);
        await u.close();
        await w.close();
    });

    test('last_seen of a user offline after grace is when the last session ended', T, async () => {
        const { c: w } = await openWatcher(d, 'ls-w', ['ls-u']);
        const u = await openUser(d, 'ls-u', { device: 'web' });
        await w.waitUpdate('ls-u');
        await sleep(300);
        const closedAt = Date.now() / 1000; // wall clock of the close (loopback: same host)
        await u.close();
        // During the grace window the user still shows online, last seen about at the close.
        const during = await presenceOf(w, 'ls-u');
        assert.equal(during.status, 'online');
        assert.ok(Math.abs(during.last_seen - closedAt) < 0.2, `during grace: last_seen ${during.last_seen}, closed at ${closedAt}`);
        const off = await w.waitUpdate('ls-u', () => true, GRACE + 2 * LATE_MS);
        assert.equal(off.status, 'offline');
        // The last sign of life was the close, not the end of the grace window (GRACE later).
        assert.ok(Math.abs(off.last_seen - closedAt) < 0.2,
            `offline update: last_seen ${off.last_seen} is ${(off.last_seen - closedAt).toFixed(3)} s after the close at ${closedAt}`);
        const after = await presenceOf(w, 'ls-u');
        assert.ok(Math.abs(after.last_seen - closedAt) < 0.2,
            `get_presence: last_seen ${after.last_seen} is ${(after.last_seen - closedAt).toFixed(3)} s after the close`);
        await w.close();
    });

    test('set_offline is immediate and heartbeats do not bring the session back', T, async () => {
        const { c: w } = await openWatcher(d, 'off-w', ['off-u']);
        const u = await openUser(d, 'off-u', { device: 'web', custom_status: 'here' });
        assertPresence(await w.waitUpdate('off-u'),
            { user_id: 'off-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'here' });

        const t0 = now();
        await u.send('{"type":"set_offline","id":"off-1"}');
        const ack = await u.waitForEntry((m) => m.id === 'off-1', 2000);
        assert.equal(ack.raw, '{"type":"ack","id":"off-1"}');
        const e = await w.waitUpdateEntry('off-u', () => true, GRACE);
        assert.ok(e.at - t0 < GRACE / 3, `set_offline published after ${Math.round(e.at - t0)} ms`);
        // custom_status persists while the user is offline.
        assertPresence(e.msg.presence, { user_id: 'off-u', status: 'offline', device: 'web', devices: [], custom_status: 'here' });

        // Heartbeats (every spelling, also naming a device) and activity do not bring it back.
        const forms = ['{"type":"heartbeat","device":"web"}', '{"type":"heartbeat"}', '{"type":"heartbeat","device":"mobile"}',
            '{"device":"web","type":"heartbeat"}', '{"type":"activity"}'];
        for (let i = 0; i < 50; i++) await u.send(forms[i % forms.length]);
        await u.barrier();
        assert.equal(u.pending.length, 0, u.describePending());
        await w.expectNoUpdate('off-u', GRACE + 200);
        assertPresence(await presenceOf(w, 'off-u'),
            { user_id: 'off-u', status: 'offline', device: 'web', devices: [], custom_status: 'here' });

        // The connection stays usable: it can still watch.
        const init = await u.subscribe(['off-w']);
        assert.deepEqual(init.presences, {});

        // set_online brings it back; set_status {status: offline} and set_online {status:
        // offline} act as set_offline (immediately); set_status brings it back too.
        await u.ok({ type: 'set_online' });
        assertPresence(await w.waitUpdate('off-u'),
            { user_id: 'off-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'here' });
        await u.ok({ type: 'set_status', status: 'offline' });
        assertPresence(await w.waitUpdate('off-u', () => true, 300),
            { user_id: 'off-u', status: 'offline', device: 'web', devices: [], custom_status: 'here' });
        await u.send('{"type":"heartbeat","device":"web"}');
        await w.expectNoUpdate('off-u', 100);
        await u.ok({ type: 'set_status', status: 'busy' });
        assertPresence(await w.waitUpdate('off-u'),
            { user_id: 'off-u', status: 'busy', device: 'web', devices: ['web'], custom_status: 'here' });
        await u.ok({ type: 'set_online', status: 'offline' });
        assertPresence(await w.waitUpdate('off-u', () => true, 300),
            { user_id: 'off-u', status: 'offline', device: 'web', devices: [], custom_status: 'here' });
        // A set_offline of a session already offline publishes nothing.
        await u.ok({ type: 'set_offline' });
        await w.expectNoUpdate('off-u', 100);

        // With two sessions, set_offline on one removes only that device, at once.
        const a = await openUser(d, 'off-u', { device: 'mobile' });
        const b = await openUser(d, 'off-u', { device: 'desktop' });
        assertPresence(await w.waitUpdate('off-u'),
            { user_id: 'off-u', status: 'online', device: 'mobile', devices: ['mobile'], custom_status: 'here' });
        assertPresence(await w.waitUpdate('off-u'),
            { user_id: 'off-u', status: 'online', device: 'desktop', devices: ['desktop', 'mobile'], custom_status: 'here' });
        await a.ok({ type: 'set_offline' });
        assertPresence(await w.waitUpdate('off-u', () => true, 300),
            { user_id: 'off-u', status: 'online', device: 'desktop', devices: ['desktop'], custom_status: 'here' });
        // Closing a withdrawn session publishes nothing, now or after grace.
        await u.close();
        await a.close();
        await w.expectNoUpdate('off-u', GRACE + 300);
        await b.close();
        assertPresence(await w.waitUpdate('off-u', () => true, GRACE + LATE_MS),
            { user_id: 'off-u', status: 'offline', device: 'desktop', devices: [], custom_status: 'here' });
        await w.close();
    });

    test('1,000 watchers (one connection each) all receive one change, exactly once', { timeout: 120000 }, async () => {
        const N = 1000;
        const BATCH = 100;
        const target = 'fan-t';
        const u = await openUser(d, target, { device: 'web' });
        const watchers = [];
        for (let i = 0; i < N; i += BATCH) {
            const batch = await Promise.all(Array.from({ length: Math.min(BATCH, N - i) },
                (_, k) => openWatcher(d, `fan-w${i + k}`, [target])));
            for (const { c, initial } of batch) {
                assert.deepEqual(Object.keys(initial), [target]);
                assertPresence(initial[target], { user_id: target, status: 'online', device: 'web', devices: ['web'] });
                watchers.push(c);
            }
        }
        assert.equal(watchers.length, N);
        const m0 = await scrapeMetrics(d);
        await u.ok({ type: 'set_status', status: 'busy', activity: 'presenting' });
        const got = await Promise.all(watchers.map((c) => c.waitUpdate(target, () => true, 20000)));
        for (const p of got)
            assertPresence(p, { user_id: target, status: 'busy', device: 'web', devices: ['web'], activity: 'presenting' });
        // Exactly one each: nothing more after a barrier on every connection.
        for (let i = 0; i < N; i += BATCH) await Promise.all(watchers.slice(i, i + BATCH).map((c) => c.barrier(10000)));
        for (const c of watchers) {
            assert.equal(c.all.filter((e) => e.msg.type === 'presence_update').length, 1, c.user);
            assert.equal(c.pending.length, 0, `${c.user}: ${c.describePending()}`);
        }
        const m1 = await scrapeMetrics(d);
        assert.equal(metricValue(m1, 'presenced_fanout_deliveries_total') - metricValue(m0, 'presenced_fanout_deliveries_total'), N);
        for (let i = 0; i < N; i += BATCH) await Promise.all(watchers.slice(i, i + BATCH).map((c) => c.close(10000)));
        await u.close();
    });

    test('every invalid message gets its error code and changes nothing', { timeout: 60000 }, async () => {
        const base = { device: 'web', custom_status: 'cs0', activity: 'act0' };
        const u = await openUser(d, 'inv-u', base);
        const { c: w, initial } = await openWatcher(d, 'inv-w', ['inv-u']);
        const baseline = withoutLastSeen(initial['inv-u']);
        assert.deepEqual(baseline, {
            user_id: 'inv-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'cs0', activity: 'act0',
        });
        const m0 = await scrapeMetrics(d);

        const long = (n, ch = 'x') => ch.repeat(n);
        const ids11 = Array.from({ length: MAX_IDS + 1 }, (_, i) => `id${i}`);
        // [raw message, expected code, expected echoed id (undefined: no id in the error)]
        const cases = [
            // bad_json: syntax, data after the value, duplicate keys (any depth), \u0000
            ['{"type":"set_status","status":"busy"', 'bad_json'],
            ['not json', 'bad_json'],
            ['', 'bad_json'],
            ['{"type":"set_status","status":"busy",}', 'bad_json'],
            ["{'type':'set_status'}", 'bad_json'],
            ['{"type":"set_status","status":"busy"} x', 'bad_json'],
            ['{"type":"set_status","status":"busy"}{"type":"ping"}', 'bad_json'],
            ['{"type":"set_status","status":"busy"}\u0000', 'bad_json'],
            ['{"type":"set_status","status":"busy","status":"away"}', 'bad_json'],
            ['{"type":"set_status","type":"set_status","status":"busy"}', 'bad_json'],
            ['{"type":"set_offline","id":1,"id":2}', 'bad_json'],
            ['{"type":"subscribe","user_ids":[{"a":1,"a":2}]}', 'bad_json'],
            ['{"type":"set_status","custom_status":"a\\u0000b"}', 'bad_json'],
            ['{"type":"set_status","status":"busy","activity":"\\u0000"}', 'bad_json'],
            // bad_message: not an object
            ['[{"type":"set_status","status":"busy"}]', 'bad_message'],
            ['"set_offline"', 'bad_message'],
            ['42', 'bad_message'],
            ['null', 'bad_message'],
            ['true', 'bad_message'],
            // missing_type: no string type
            ['{}', 'missing_type'],
            ['{"status":"busy"}', 'missing_type'],
            ['{"type":5}', 'missing_type'],
            ['{"type":null}', 'missing_type'],
            ['{"type":["set_offline"]}', 'missing_type'],
            ['{"Type":"set_offline"}', 'missing_type'],
            ['{"id":8}', 'missing_type', 8],
            // unknown_type
            ['{"type":"set_statuss","status":"busy"}', 'unknown_type'],
            ['{"type":"SET_OFFLINE"}', 'unknown_type'],
            ['{"type":""}', 'unknown_type'],
            ['{"type":"presence_update"}', 'unknown_type'],
            ['{"id":7,"type":"nosuch"}', 'unknown_type', 7],
            // unknown_field (keys are case-sensitive; fields of another type are unknown)
            ['{"type":"set_status","status":"busy","extra":1}', 'unknown_field'],
            ['{"type":"set_status","Status":"busy"}', 'unknown_field'],
            ['{"type":"set_status","status":"busy","device":"mobile"}', 'unknown_field'],
            ['{"type":"set_offline","status":"busy"}', 'unknown_field'],
            ['{"type":"set_offline","user_id":"inv-u"}', 'unknown_field'],
            ['{"type":"heartbeat","device":"mobile","status":"busy"}', 'unknown_field'],
            ['{"type":"activity","auto_away":true}', 'unknown_field'],
            ['{"type":"ping","user_ids":[]}', 'unknown_field'],
            ['{"type":"set_online","user_id":"someone-else","status":"busy"}', 'unknown_field'],
            ['{"type":"set_status","status":"busy","extra":1,"id":-4}', 'unknown_field', -4],
            // bad_field: wrong JSON types, out of range
            ['{"type":"set_status","status":1}', 'bad_field'],
            ['{"type":"set_status","status":null}', 'bad_field'],
            ['{"type":"set_status","status":["busy"]}', 'bad_field'],
            ['{"type":"set_status","custom_status":5}', 'bad_field'],
            ['{"type":"set_status","custom_status":{"text":"x"}}', 'bad_field'],
            ['{"type":"set_status","activity":true}', 'bad_field'],
            ['{"type":"set_online","device":5}', 'bad_field'],
            ['{"type":"heartbeat","device":["web"]}', 'bad_field'],
            ['{"type":"set_online","auto_away":"yes"}', 'bad_field'],
            ['{"type":"set_online","auto_away":1}', 'bad_field'],
            ['{"type":"set_status","custom_status":"x","custom_status_expires_in":"10"}', 'bad_field'],
            ['{"type":"set_status","custom_status":"x","custom_status_expires_in":0}', 'bad_field'],
            ['{"type":"set_status","custom_status":"x","custom_status_expires_in":-1}', 'bad_field'],
            ['{"type":"set_status","custom_status":"x","custom_status_expires_in":2678401}', 'bad_field'],
            ['{"type":"set_status","custom_status_expires_in":10}', 'bad_field'],
            ['{"type":"set_status","custom_status":null,"custom_status_expires_in":10}', 'bad_field'],
            ['{"type":"subscribe","user_ids":"inv-w"}', 'bad_field'],
            ['{"type":"subscribe"}', 'bad_field'],
            ['{"type":"subscribe","user_ids":null}', 'bad_field'],
            ['{"type":"subscribe","user_ids":["inv-w",1]}', 'bad_field'],
            ['{"type":"get_presence","user_ids":{"inv-w":true}}', 'bad_field'],
            ['{"type":"unsubscribe","user_ids":[null]}', 'bad_field'],
            // bad_status
            ['{"type":"set_status","status":"invisible"}', 'bad_status'],
            ['{"type":"set_status","status":"Online"}', 'bad_status'],
            ['{"type":"set_status","status":""}', 'bad_status'],
            ['{"type":"set_online","status":"busy "}', 'bad_status'],
            ['{"type":"set_status","status":"nope","id":"e1"}', 'bad_status', 'e1'],
            // too_long (bytes, not characters)
            [JSON.stringify({ type: 'set_online', device: long(33) }), 'too_long'],
            [JSON.stringify({ type: 'heartbeat', device: long(33) }), 'too_long'],
            [JSON.stringify({ type: 'set_online', device: long(17, 'é') }), 'too_long'],
            [JSON.stringify({ type: 'set_status', custom_status: long(257) }), 'too_long'],
            [JSON.stringify({ type: 'set_status', custom_status: long(129, 'é') }), 'too_long'],
            [JSON.stringify({ type: 'set_status', activity: long(65) }), 'too_long'],
            [JSON.stringify({ type: 'set_online', activity: long(33, 'é') }), 'too_long'],
            [JSON.stringify({ type: 'subscribe', user_ids: [long(129)] }), 'too_long'],
            [JSON.stringify({ type: 'get_presence', user_ids: ['inv-w', long(129)] }), 'too_long'],
            [JSON.stringify({ type: 'unsubscribe', user_ids: [long(129)] }), 'too_long'],
            // bad_value: control characters (C0, DEL, C1), empty device
            [JSON.stringify({ type: 'set_online', device: 'we\u0001b' }), 'bad_value'],
            [JSON.stringify({ type: 'set_online', device: '' }), 'bad_value'],
            [JSON.stringify({ type: 'set_online', device: '', id: 'e2' }), 'bad_value', 'e2'],
            [JSON.stringify({ type: 'heartbeat', device: '' }), 'bad_value'],
            [JSON.stringify({ type: 'set_status', custom_status: 'a\nb' }), 'bad_value'],
            [JSON.stringify({ type: 'set_status', custom_status: 'tab\there' }), 'bad_value'],
            [JSON.stringify({ type: 'set_status', activity: '\u007f' }), 'bad_value'],
            [JSON.stringify({ type: 'set_status', activity: 'x\u0085' }), 'bad_value'],
            [JSON.stringify({ type: 'set_status', status: 'busy', custom_status: '\u001b[31mred' }), 'bad_value'],
            // bad_user_id: empty, control characters
            [JSON.stringify({ type: 'subscribe', user_ids: [''] }), 'bad_user_id'],
            [JSON.stringify({ type: 'subscribe', user_ids: ['inv-w', 'a\tb'] }), 'bad_user_id'],
            [JSON.stringify({ type: 'get_presence', user_ids: ['\u0001'] }), 'bad_user_id'],
            [JSON.stringify({ type: 'unsubscribe', user_ids: ['x\u009f'] }), 'bad_user_id'],
            // too_many_ids
            [JSON.stringify({ type: 'subscribe', user_ids: ids11 }), 'too_many_ids'],
            [JSON.stringify({ type: 'get_presence', user_ids: ids11 }), 'too_many_ids'],
            [JSON.stringify({ type: 'unsubscribe', user_ids: ids11 }), 'too_many_ids'],
            [JSON.stringify({ type: 'subscribe', user_ids: ids11, id: 'e3' }), 'too_many_ids', 'e3'],
            // bad_id: not a string or an integer, too long, control characters (never echoed)
            ['{"type":"set_offline","id":1.5}', 'bad_id'],
            ['{"type":"set_offline","id":true}', 'bad_id'],
            ['{"type":"set_offline","id":null}', 'bad_id'],
            ['{"type":"set_offline","id":[1]}', 'bad_id'],
            ['{"type":"set_offline","id":{"n":1}}', 'bad_id'],
            ['{"type":"set_offline","id":1e300}', 'bad_id'],
            ['{"type":"set_offline","id":9007199254740992}', 'bad_id'],
            [`{"type":"set_offline","id":"${long(65)}"}`, 'bad_id'],
            ['{"type":"set_status","status":"busy","id":"a\\u0001"}', 'bad_id'],
            ['{"type":"set_status","status":"busy","id":"a\\n"}', 'bad_id'],
        ];
        const counts = new Map();
        for (const [raw, code, id] of cases) {
            await u.send(raw);
            const e = await u.waitForEntry(() => true, 2000, `the error for ${raw.slice(0, 100)}`);
            const m = e.msg;
            assert.equal(m.type, 'error', `${raw.slice(0, 100)} -> ${e.raw}`);
            assert.equal(m.code, code, `${raw.slice(0, 100)} -> ${e.raw}`);
            assert.deepEqual(Object.keys(m), id === undefined ? ERROR_KEYS : ERROR_KEYS_ID, `${raw.slice(0, 100)} -> ${e.raw}`);
            if (id !== undefined) assert.equal(m.id, id, e.raw);
            assert.equal(typeof m.message, 'string');
            assert.ok(m.message.length > 0, e.raw);
            counts.set(code, (counts.get(code) ?? 0) + 1);
            // Exactly one answer, and nothing changed.
            await u.barrier();
            assert.equal(u.pending.length, 0, `${raw.slice(0, 100)}: more answers: ${u.describePending()}`);
            assert.deepEqual(withoutLastSeen(await presenceOf(u, 'inv-u')), baseline, `after ${raw.slice(0, 100)}`);
        }
        // Nothing changed for the watcher either, and the refused subscribes added nothing.
        await w.expectNoUpdate(undefined, 200);
        const id0 = await openUser(d, 'id0', { device: 'web' }); // named in the refused subscribe
        await u.expectNoUpdate(undefined, 200);
        await id0.close();
        // Each error is counted in /metrics under its code.
        const m1 = await scrapeMetrics(d);
        for (const [code, n] of counts) {
            const delta = metricValue(m1, 'presenced_protocol_errors_total', { code }) -
                metricValue(m0, 'presenced_protocol_errors_total', { code });
            assert.equal(delta, n, `presenced_protocol_errors_total{code="${code}"}`);
        }
        // Still the same session: a valid change is accepted and published.
        await u.ok({ type: 'set_status', status: 'busy' });
        assertPresence(await w.waitUpdate('inv-u'),
            { user_id: 'inv-u', status: 'busy', device: 'web', devices: ['web'], custom_status: 'cs0', activity: 'act0' });
        await u.close();
        await w.close();
    });

    test('subscription limit: refused as a whole; duplicates and watched users count once', T, async () => {
        const c = await openClient(d, 'lim-c');
        assert.deepEqual((await c.subscribe(['lim-1', 'lim-2', 'lim-3'])).presences, {});
        const refused = await c.request({ type: 'subscribe', user_ids: ['lim-4', 'lim-5', 'lim-6'], id: 'L1' });
        assert.equal(refused.type, 'error');
        assert.equal(refused.code, 'subscription_limit');
        assert.equal(refused.id, 'L1');
        // Nothing of the refused request is watched.
        const u6 = await openUser(d, 'lim-6', { device: 'web' });
        const u4 = await openUser(d, 'lim-4', { device: 'web' });
        await c.expectNoUpdate(undefined, 200);
        // 3 watched + 2 new = 5: duplicates and already watched ids do not count.
        const ok = await c.subscribe(['lim-4', 'lim-5', 'lim-1', 'lim-4', 'lim-5', 'lim-2']);
        assert.deepEqual(Object.keys(ok.presences), ['lim-4']);
        assertPresence(ok.presences['lim-4'], { user_id: 'lim-4', status: 'online', device: 'web', devices: ['web'] });
        const full = await c.request({ type: 'subscribe', user_ids: ['lim-6'] });
        assert.equal(full.code, 'subscription_limit');
        // Re-subscribing watched users at the limit is fine.
        await c.subscribe(['lim-1', 'lim-2', 'lim-3', 'lim-4', 'lim-5']);
        // unsubscribe (ids not watched are ignored) frees room; acknowledged with an id only.
        await c.send({ type: 'unsubscribe', user_ids: ['lim-1'] });
        await c.barrier();
        assert.equal(c.pending.length, 0, c.describePending());
        assert.deepEqual(await c.request({ type: 'unsubscribe', user_ids: ['lim-2', 'never-watched'], id: 'U' }), { type: 'ack', id: 'U' });
        const two = await c.subscribe(['lim-6']);
        assertPresence(two.presences['lim-6'], { user_id: 'lim-6', status: 'online', device: 'web', devices: ['web'] });
        await u6.ok({ type: 'set_status', status: 'busy' });
        assertPresence(await c.waitUpdate('lim-6'), { user_id: 'lim-6', status: 'busy', device: 'web', devices: ['web'] });
        // Unsubscribed users are no longer delivered.
        const u1 = await openUser(d, 'lim-1', { device: 'web' });
        await c.expectNoUpdate('lim-1', 200);

        // Six copies of one id (above the limit of 5) are one subscription.
        const c2 = await openClient(d, 'lim-c2');
        const dup = await c2.request({ type: 'subscribe', user_ids: Array(6).fill('lim-6') });
        assert.equal(dup.type, 'initial_presence');
        assert.deepEqual(Object.keys(dup.presences), ['lim-6']);
        await c2.subscribe(['lim-1', 'lim-2', 'lim-3', 'lim-4']); // 5 in all
        assert.equal((await c2.request({ type: 'subscribe', user_ids: ['lim-5'] })).code, 'subscription_limit');
        for (const x of [c, c2, u6, u4, u1]) await x.close();
    });

    test('request ids are echoed in ack, error, initial_presence, presence_result and pong', T, async () => {
        const c = await openClient(d, 'idx-u');
        const exact = async (q, want) => {
            await c.send(q);
            const e = await c.waitForEntry((m) => m.type !== 'presence_update', 2000, `the answer to ${q}`);
            if (want instanceof RegExp) assert.match(e.raw, want, q);
            else assert.equal(e.raw, want, q);
            return e.msg;
        };
        await exact('{"type":"set_online","device":"web","id":"a1"}', '{"type":"ack","id":"a1"}');
        await exact('{"id":2,"type":"set_status","status":"busy"}', '{"type":"ack","id":2}');
        await exact('{"type":"heartbeat","device":"web","id":"hb"}', '{"type":"ack","id":"hb"}');
        await exact('{"type":"activity","id":0}', '{"type":"ack","id":0}');
        await exact('{"type":"unsubscribe","user_ids":["zz"],"id":"u1"}', '{"type":"ack","id":"u1"}');
        const init = await exact('{"type":"subscribe","user_ids":["idx-u"],"id":"s1"}', /^\{"type":"initial_presence","id":"s1","presences":\{"idx-u":\{/);
        assertPresence(init.presences['idx-u'], { user_id: 'idx-u', status: 'busy', device: 'web', devices: ['web'] });
        const res = await exact('{"type":"get_presence","user_ids":["idx-u"],"id":99}', /^\{"type":"presence_result","id":99,"presences":\{"idx-u":\{/);
        assertPresence(res.presences['idx-u'], { user_id: 'idx-u', status: 'busy', device: 'web', devices: ['web'] });
        await exact(`{"type":"get_presence","user_ids":[],"id":"${'z'.repeat(64)}"}`, `{"type":"presence_result","id":"${'z'.repeat(64)}","presences":{}}`);
        await exact('{"type":"set_status","status":"bogus","id":"é✓"}', /^\{"type":"error","id":"é✓","code":"bad_status","message":".+"\}$/);
        await exact('{"type":"set_offline","id":-1}', '{"type":"ack","id":-1}');
        // The set_offline was applied (the ack follows the change).
        assert.equal((await presenceOf(c, 'idx-u')).status, 'offline');
        await exact('{"type":"ping","id":"p"}', '{"type":"pong","id":"p"}');

        // Without an id: no answer, except for subscribe, get_presence and ping (no id key).
        for (const q of ['{"type":"set_online","device":"web"}', '{"type":"set_status","status":"away"}',
            '{"type":"heartbeat","device":"web"}', '{"type":"activity"}', '{"type":"unsubscribe","user_ids":["zz"]}',
            '{"type":"set_offline"}']) {
            await c.send(q);
            await c.barrier();
            c.take((m) => m.type === 'presence_update'); // it watches itself
            assert.equal(c.pending.length, 0, `${q} was answered: ${c.describePending()}`);
        }
        const s = await exact('{"type":"subscribe","user_ids":["idx-u"]}', /^\{"type":"initial_presence","presences":\{"idx-u":\{/);
        assert.deepEqual(Object.keys(s), ['type', 'presences']);
        const g = await exact('{"type":"get_presence","user_ids":["idx-u"]}', /^\{"type":"presence_result","presences":\{"idx-u":\{/);
        assert.deepEqual(Object.keys(g), ['type', 'presences']);
        assertPresence(g['presences']['idx-u'], { user_id: 'idx-u', status: 'offline', device: 'web', devices: [] });
        await c.close();
    });

    test('custom_status expires (watcher sees it cleared); clearing it cancels the expiry', T, async () => {
        const { c: w } = await openWatcher(d, 'cse-w', ['cse-u']);
        const u = await openUser(d, 'cse-u', { device: 'web' });
        assertPresence(await w.waitUpdate('cse-u'), { user_id: 'cse-u', status: 'online', device: 'web', devices: ['web'] });

        const EXP = 700;
        let t0 = now();
        await u.ok({ type: 'set_status', custom_status: 'lunch', custom_status_expires_in: EXP / 1000, activity: 'focus' });
        assertPresence(await w.waitUpdate('cse-u'),
            { user_id: 'cse-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'lunch', activity: 'focus' });
        let e = await w.waitUpdateEntry('cse-u', () => true, EXP + 2 * LATE_MS);
        assert.ok(e.at - t0 >= EXP - EARLY_MS && e.at - t0 <= EXP + LATE_MS, `expired after ${Math.round(e.at - t0)} ms`);
        assertPresence(e.msg.presence, { user_id: 'cse-u', status: 'online', device: 'web', devices: ['web'], activity: 'focus' });
        assert.equal((await presenceOf(w, 'cse-u')).custom_status, null);

        // A set_status without custom_status keeps it and its expiry; set_online with an expiry.
        t0 = now();
        await u.ok({ type: 'set_online', custom_status: 'brb', custom_status_expires_in: EXP / 1000 });
        assertPresence(await w.waitUpdate('cse-u'),
            { user_id: 'cse-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'brb', activity: 'focus' });
        await u.ok({ type: 'set_status', status: 'busy' });
        assertPresence(await w.waitUpdate('cse-u'),
            { user_id: 'cse-u', status: 'busy', device: 'web', devices: ['web'], custom_status: 'brb', activity: 'focus' });
        e = await w.waitUpdateEntry('cse-u', () => true, EXP + 2 * LATE_MS);
        assert.ok(e.at - t0 >= EXP - EARLY_MS && e.at - t0 <= EXP + LATE_MS, `expired after ${Math.round(e.at - t0)} ms`);
        assertPresence(e.msg.presence, { user_id: 'cse-u', status: 'busy', device: 'web', devices: ['web'], activity: 'focus' });

        // null clears it and cancels its expiry: one update, nothing later. (A new value
        // replacing it: the 'replacing' block below.)
        await u.ok({ type: 'set_status', custom_status: 'z', custom_status_expires_in: 0.4 });
        assertPresence(await w.waitUpdate('cse-u'),
            { user_id: 'cse-u', status: 'busy', device: 'web', devices: ['web'], custom_status: 'z', activity: 'focus' });
        await u.ok({ type: 'set_status', custom_status: null });
        assertPresence(await w.waitUpdate('cse-u'), { user_id: 'cse-u', status: 'busy', device: 'web', devices: ['web'], activity: 'focus' });
        await w.expectNoUpdate('cse-u', 1000);

        // The expiry also runs while the user is offline (after grace).
        await u.ok({ type: 'set_status', custom_status: 'away for a bit', custom_status_expires_in: 2 });
        assertPresence(await w.waitUpdate('cse-u'), {
            user_id: 'cse-u', status: 'busy', device: 'web', devices: ['web'], custom_status: 'away for a bit', activity: 'focus',
        });
        await u.ok({ type: 'set_offline' });
        assertPresence(await w.waitUpdate('cse-u'), {
            user_id: 'cse-u', status: 'offline', device: 'web', devices: [], custom_status: 'away for a bit', activity: 'focus',
        });
        assertPresence(await w.waitUpdate('cse-u', () => true, 2000 + LATE_MS + 500),
            { user_id: 'cse-u', status: 'offline', device: 'web', devices: [], activity: 'focus' });
        await u.close();
        await w.close();
    });

    test('null clears and absent keeps custom_status and activity', T, async () => {
        const { c: w } = await openWatcher(d, 'nk-w', ['nk-u']);
        const u = await openUser(d, 'nk-u', { device: 'web', custom_status: 'cs', activity: 'meeting' });
        const P = (status, cs, act) => ({ user_id: 'nk-u', status, device: 'web', devices: ['web'], custom_status: cs, activity: act });
        assertPresence(await w.waitUpdate('nk-u'), P('online', 'cs', 'meeting'));
        await u.ok({ type: 'set_status', status: 'busy' }); // absent: kept
        assertPresence(await w.waitUpdate('nk-u'), P('busy', 'cs', 'meeting'));
        await u.ok({ type: 'set_online', device: 'web' }); // absent in set_online: kept too
        assertPresence(await w.waitUpdate('nk-u'), P('online', 'cs', 'meeting'));
        await u.ok({ type: 'set_status', custom_status: null }); // null: cleared
        assertPresence(await w.waitUpdate('nk-u'), P('online', null, 'meeting'));
        await u.ok({ type: 'set_status', activity: null });
        assertPresence(await w.waitUpdate('nk-u'), P('online', null, null));
        await u.ok({ type: 'set_status', custom_status: '', activity: '' }); // empty strings are values
        assertPresence(await w.waitUpdate('nk-u'), P('online', '', ''));
        await u.ok({ type: 'set_online', custom_status: null, activity: null }); // set_online: null clears
        assertPresence(await w.waitUpdate('nk-u'), P('online', null, null));
        // Nothing visible changed: no event.
        await u.ok({ type: 'set_status', status: 'online', custom_status: null });
        await u.ok({ type: 'set_status' });
        await w.expectNoUpdate('nk-u', 100);
        // The limits are inclusive (bytes): 256, 64, 32; text may contain JSON escapes.
        const cs = 'é'.repeat(128);
        const act = 'a'.repeat(64);
        await u.ok({ type: 'set_status', custom_status: cs, activity: act });
        assertPresence(await w.waitUpdate('nk-u'), P('online', cs, act));
        await u.ok({ type: 'set_status', custom_status: null, activity: null });
        assertPresence(await w.waitUpdate('nk-u'), P('online', null, null));
        await u.send('{"type":"set_status","custom_status":"a \\"quoted\\" \\\\u0000 \\ud83d\\ude00","activity":"x"}');
        assertPresence(await w.waitUpdate('nk-u'), P('online', 'a "quoted" \\u0000 😀', 'x'));
        const dev = 'D'.repeat(32);
        await u.ok({ type: 'set_online', device: dev });
        assertPresence(await w.waitUpdate('nk-u'),
            { user_id: 'nk-u', status: 'online', device: dev, devices: [dev], custom_status: 'a "quoted" \\u0000 😀', activity: 'x' });
        await u.close();
        await w.close();
    });

    test('opt-in auto_away: idle turns away, activity brings it back; without it never away', T, async () => {
        const { c: w } = await openWatcher(d, 'aa-w', ['aa-u', 'aa-n', 'aa-f', 'aa-b']);
        let t0 = now();
        const a = await openUser(d, 'aa-u', { device: 'web', auto_away: true });
        assertPresence(await w.waitUpdate('aa-u'), { user_id: 'aa-u', status: 'online', device: 'web', devices: ['web'] });
        a.heartbeatEvery(100); // heartbeats are not activity
        let e = await w.waitUpdateEntry('aa-u', () => true, AWAY + 2 * LATE_MS);
        assert.ok(e.at - t0 >= AWAY - EARLY_MS && e.at - t0 <= AWAY + LATE_MS, `away after ${Math.round(e.at - t0)} ms`);
        assertPresence(e.msg.presence, { user_id: 'aa-u', status: 'away', device: 'web', devices: ['web'] });
        await w.expectNoUpdate('aa-u', 200); // stays away while only heartbeating

        // activity -> online at once, then away again after another idle period.
        t0 = now();
        await a.send('{"type":"activity"}');
        e = await w.waitUpdateEntry('aa-u', () => true, 1000);
        assert.ok(e.at - t0 < AWAY / 2, `back online after ${Math.round(e.at - t0)} ms`);
        assertPresence(e.msg.presence, { user_id: 'aa-u', status: 'online', device: 'web', devices: ['web'] });
        e = await w.waitUpdateEntry('aa-u', () => true, AWAY + 2 * LATE_MS);
        assert.ok(e.at - t0 >= AWAY - EARLY_MS && e.at - t0 <= AWAY + LATE_MS, `away again after ${Math.round(e.at - t0)} ms`);
        assert.equal(e.msg.presence.status, 'away');

        // Steady activity keeps it online.
        assert.deepEqual(await a.request({ type: 'activity', id: 'act' }), { type: 'ack', id: 'act' });
        assert.equal((await w.waitUpdate('aa-u')).status, 'online');
        a.heartbeatEvery(AWAY / 4, '{"type":"activity"}');
        await w.expectNoUpdate('aa-u', AWAY * 3);
        a.stopKeepAlive();
        // An explicit claim also ends an automatic away.
        assert.equal((await w.waitUpdate('aa-u', () => true, AWAY + 2 * LATE_MS)).status, 'away');
        await a.ok({ type: 'set_status', status: 'online' });
        assert.equal((await w.waitUpdate('aa-u')).status, 'online');
        // auto_away false turns it off.
        await a.ok({ type: 'set_status', auto_away: false });
        a.heartbeatEvery(100);

        // Without auto_away (absent or false), and with a busy claim: never away.
        const n = await openUser(d, 'aa-n', { device: 'web' });
        const f = await openUser(d, 'aa-f', { device: 'web', auto_away: false });
        const b = await openUser(d, 'aa-b', { device: 'web', status: 'busy', auto_away: true });
        for (const [x, st] of [['aa-n', 'online'], ['aa-f', 'online'], ['aa-b', 'busy']])
            assertPresence(await w.waitUpdate(x), { user_id: x, status: st, device: 'web', devices: ['web'] });
        for (const x of [n, f, b]) x.heartbeatEvery(100);
        await w.expectNoUpdate(undefined, AWAY * 3);
        for (const [x, st] of [['aa-u', 'online'], ['aa-n', 'online'], ['aa-f', 'online'], ['aa-b', 'busy']])
            assert.equal((await presenceOf(w, x)).status, st, x);
        for (const x of [a, n, f, b]) x.stopKeepAlive();
        for (const x of [a, n, f, b, w]) await x.close();
    });

    test('auto_away: a heartbeat naming another device while away is not a claim (activity still brings it back)', T, async () => {
        const { c: w } = await openWatcher(d, 'aad-w', ['aad-u']);
        const a = await openUser(d, 'aad-u', { device: 'web', auto_away: true });
        assertPresence(await w.waitUpdate('aad-u'), { user_id: 'aad-u', status: 'online', device: 'web', devices: ['web'] });
        assertPresence(await w.waitUpdate('aad-u', () => true, AWAY + 2 * LATE_MS),
            { user_id: 'aad-u', status: 'away', device: 'web', devices: ['web'] });
        // The app moved to another window type: its heartbeat names the new device (visible:
        // devices), and says nothing about the user's activity.
        await a.send('{"type":"heartbeat","device":"desktop"}');
        assertPresence(await w.waitUpdate('aad-u'), { user_id: 'aad-u', status: 'away', device: 'desktop', devices: ['desktop'] });
        // The user comes back: still an automatic away, so activity ends it.
        await a.ok({ type: 'activity' });
        assertPresence(await w.waitUpdate('aad-u', () => true, 1000),
            { user_id: 'aad-u', status: 'online', device: 'desktop', devices: ['desktop'] });
        await a.close();
        await w.close();
    });

    test('unknown users are left out of initial_presence and presence_result; duplicate ids count once', T, async () => {
        const k = await openUser(d, 'unk-k', { device: 'web' });
        const q = await openClient(d, 'unk-q');
        const ids = ['unk-nobody1', 'unk-k', 'unk-nobody2', 'unk-k', 'unk-k'];
        await q.send({ type: 'get_presence', user_ids: ids, id: 'g' });
        let e = await q.waitForEntry((m) => m.id === 'g');
        assert.equal(e.msg.type, 'presence_result');
        assert.deepEqual(Object.keys(e.msg.presences), ['unk-k']);
        assert.equal(e.raw.split('"user_id":"unk-k"').length - 1, 1, e.raw); // once, not three times
        assertPresence(e.msg.presences['unk-k'], { user_id: 'unk-k', status: 'online', device: 'web', devices: ['web'] });
        assert.ok(Math.abs(e.msg.presences['unk-k'].last_seen - Date.now() / 1000) < 5, 'last_seen is recent');

        await q.send({ type: 'subscribe', user_ids: ids, id: 's' });
        e = await q.waitForEntry((m) => m.id === 's');
        assert.equal(e.msg.type, 'initial_presence');
        assert.deepEqual(Object.keys(e.msg.presences), ['unk-k']);
        assert.equal(e.raw.split('"user_id":"unk-k"').length - 1, 1, e.raw);
        assert.deepEqual(await q.getPresence(['unk-nobody1', 'unk-nobody2']), {});
        assert.deepEqual(await q.getPresence([]), {});

        // An unknown user watched is delivered once they show up; a user who went offline is
        // still known (status offline).
        const n1 = await openUser(d, 'unk-nobody1', { device: 'mobile' });
        assertPresence(await q.waitUpdate('unk-nobody1'),
            { user_id: 'unk-nobody1', status: 'online', device: 'mobile', devices: ['mobile'] });
        await k.ok({ type: 'set_offline' });
        assertPresence(await q.waitUpdate('unk-k'), { user_id: 'unk-k', status: 'offline', device: 'web', devices: [] });
        const ps = await q.getPresence(['unk-k', 'unk-nobody2', 'unk-nobody1']);
        assert.deepEqual(Object.keys(ps).sort(), ['unk-k', 'unk-nobody1']);
        assertPresence(ps['unk-k'], { user_id: 'unk-k', status: 'offline', device: 'web', devices: [] });
        await q.expectNoUpdate(undefined, 100); // each change once, despite the duplicate ids
        for (const x of [k, q, n1]) await x.close();
    });
});

// ---------------------------------------------------------------------------------------------
// Replacing a custom_status or activity that is set by another value (kept apart from the
// tests above, which set these fields only over null, so that they test their own rule).

describe('presence: replacing custom_status and activity', () => {
    let d;
    beforeEach(async () => {
        d = await startPresenced(MAIN_FLAGS);
    });
    afterEach(async () => {
        await stopDaemon(d);
    });

    test('the last writer wins across devices', T, async () => {
        const { c: w } = await openWatcher(d, 'lw-w', ['lw-u']);
        const mob = await openUser(d, 'lw-u', { device: 'mobile', custom_status: 'from mobile', activity: 'meeting' });
        assertPresence(await w.waitUpdate('lw-u'),
            { user_id: 'lw-u', status: 'online', device: 'mobile', devices: ['mobile'], custom_status: 'from mobile', activity: 'meeting' });
        const web = await openUser(d, 'lw-u', { device: 'web' });
        assertPresence(await w.waitUpdate('lw-u'),
            { user_id: 'lw-u', status: 'online', device: 'web', devices: ['mobile', 'web'], custom_status: 'from mobile', activity: 'meeting' });
        await web.ok({ type: 'set_status', custom_status: 'from web', activity: 'in_call' });
        assertPresence(await w.waitUpdate('lw-u'),
            { user_id: 'lw-u', status: 'online', device: 'web', devices: ['mobile', 'web'], custom_status: 'from web', activity: 'in_call' });
        await mob.ok({ type: 'set_status', status: 'busy', activity: 'presenting' });
        assertPresence(await w.waitUpdate('lw-u'),
            { user_id: 'lw-u', status: 'busy', device: 'mobile', devices: ['mobile', 'web'], custom_status: 'from web', activity: 'presenting' });
        assertPresence(await presenceOf(w, 'lw-u'),
            { user_id: 'lw-u', status: 'busy', device: 'mobile', devices: ['mobile', 'web'], custom_status: 'from web', activity: 'presenting' });
        for (const x of [mob, web, w]) await x.close();
    });

    test('setting the same value again publishes nothing', T, async () => {
        const { c: w } = await openWatcher(d, 'sv-w', ['sv-u']);
        const u = await openUser(d, 'sv-u', { device: 'web', custom_status: 'same', activity: 'focus' });
        assertPresence(await w.waitUpdate('sv-u'),
            { user_id: 'sv-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'same', activity: 'focus' });
        await u.ok({ type: 'set_status', custom_status: 'same', activity: 'focus' });
        await u.ok({ type: 'set_online', device: 'web', custom_status: 'same' });
        await w.expectNoUpdate('sv-u', 100);
        await u.ok({ type: 'set_status', custom_status: '' });
        assertPresence(await w.waitUpdate('sv-u'),
            { user_id: 'sv-u', status: 'online', device: 'web', devices: ['web'], custom_status: '', activity: 'focus' });
        await u.ok({ type: 'set_status', custom_status: 'back' });
        assertPresence(await w.waitUpdate('sv-u'),
            { user_id: 'sv-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'back', activity: 'focus' });
        await u.close();
        await w.close();
    });

    test('a new custom_status without expiry replaces the old one and its expiry', T, async () => {
        const { c: w } = await openWatcher(d, 'rx-w', ['rx-u']);
        const u = await openUser(d, 'rx-u', { device: 'web', custom_status: 'x', custom_status_expires_in: 0.4 });
        assertPresence(await w.waitUpdate('rx-u'),
            { user_id: 'rx-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'x' });
        await u.ok({ type: 'set_status', custom_status: 'y' });
        assertPresence(await w.waitUpdate('rx-u'),
            { user_id: 'rx-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'y' });
        await w.expectNoUpdate('rx-u', 1000);
        assert.equal((await presenceOf(w, 'rx-u')).custom_status, 'y');
        // And a new one with its own expiry runs on that one.
        const t0 = now();
        await u.ok({ type: 'set_status', custom_status: 'z', custom_status_expires_in: 0.5 });
        assert.equal((await w.waitUpdate('rx-u')).custom_status, 'z');
        const e = await w.waitUpdateEntry('rx-u', () => true, 500 + 2 * LATE_MS);
        assert.ok(e.at - t0 >= 500 - EARLY_MS && e.at - t0 <= 500 + LATE_MS, `expired after ${Math.round(e.at - t0)} ms`);
        assert.equal(e.msg.presence.custom_status, null);
        await u.close();
        await w.close();
    });
});

// ---------------------------------------------------------------------------------------------

describe('presence liveness (short heartbeat TTL)', () => {
    let d;
    beforeEach(async () => {
        d = await startPresenced(TTL_FLAGS);
    });
    afterEach(async () => {
        await stopDaemon(d);
    });

    test('welcome announces the configured TTL', T, async () => {
        const c = await openClient(d, 'ttl-wel');
        assert.deepEqual(c.welcome, {
            type: 'welcome', protocol: 1, user_id: 'ttl-wel', session_id: c.welcome.session_id,
            heartbeat_interval: TTL / 3, heartbeat_ttl: TTL,
        });
        await c.close();
    });

    test('a heartbeat-only client shows online and never turns away', T, async () => {
        const { c: w, initial } = await openWatcher(d, 'hbo-w', ['hbo-u']);
        assert.deepEqual(initial, {});
        w.keepAlive(200); // WebSocket pings: liveness without any message
        const h = await openClient(d, 'hbo-u');
        await h.send('{"type":"heartbeat","device":"web"}');
        h.heartbeatEvery(TTL / 4);
        assertPresence(await w.waitUpdate('hbo-u'), { user_id: 'hbo-u', status: 'online', device: 'web', devices: ['web'] });
        // Well past away_after and past the TTL: nothing changes while it heartbeats.
        const watchMs = Math.max(TTL_AWAY, TTL) * 2;
        await w.expectNoUpdate('hbo-u', watchMs);
        assert.ok(h.isOpen, `closed: ${JSON.stringify(h.closeInfo)}`);
        assert.equal(h.pending.length, 0, `heartbeats were answered: ${h.describePending()}`);
        const p = await presenceOf(w, 'hbo-u');
        assertPresence(p, { user_id: 'hbo-u', status: 'online', device: 'web', devices: ['web'] });
        // last_seen follows the heartbeats (refined from the session's liveness).
        assert.ok(Date.now() / 1000 - p.last_seen < TTL / 1000, `last_seen ${p.last_seen} is stale`);
        h.stopKeepAlive();
        await h.close();
        await w.close();
    });

    test('TTL expiry: a silent client is closed with 4000 and its watcher gets offline within TTL + 1 s', T, async () => {
        const { c: w } = await openWatcher(d, 'ttl-w', ['ttl-u']);
        w.keepAlive(200);
        const u = await openUser(d, 'ttl-u', { device: 'web', custom_status: 'cs' });
        assertPresence(await w.waitUpdate('ttl-u'),
            { user_id: 'ttl-u', status: 'online', device: 'web', devices: ['web'], custom_status: 'cs' });
        // Heartbeats keep it alive past one TTL...
        const hbUntil = now() + TTL * 1.5;
        let last = now();
        while (now() < hbUntil) {
            await u.send('{"type":"heartbeat","device":"web"}');
            last = now();
            await sleep(TTL / 4);
        }
        assert.ok(u.isOpen, 'closed while heartbeating');
        // ...then silence: closed with 4000, offline published at once (no grace).
        const cl = await u.waitClose(TTL + 2 * LATE_MS);
        assert.equal(cl.code, 4000);
        const e = await w.waitUpdateEntry('ttl-u', () => true, TTL + 2 * LATE_MS);
        const closedAfter = cl.at - last;
        const offlineAfter = e.at - last;
        assert.ok(closedAfter >= TTL - EARLY_MS, `closed ${Math.round(closedAfter)} ms after the last heartbeat`);
        assert.ok(offlineAfter >= TTL - EARLY_MS, `offline ${Math.round(offlineAfter)} ms after the last heartbeat`);
        assert.ok(offlineAfter <= TTL + 1000, `offline ${Math.round(offlineAfter)} ms after the last heartbeat (TTL ${TTL})`);
        assertPresence(e.msg.presence, { user_id: 'ttl-u', status: 'offline', device: 'web', devices: [], custom_status: 'cs' });
        await w.expectNoUpdate('ttl-u', 200);

        // A client that never sends anything after opening is closed too (never announced:
        // nothing is published).
        const { c: w2 } = await openWatcher(d, 'ttl-w2', ['ttl-silent']);
        w2.keepAlive(200);
        const t0 = now();
        const s = await openClient(d, 'ttl-silent');
        const cl2 = await s.waitClose(TTL + 2 * LATE_MS);
        assert.equal(cl2.code, 4000);
        assert.ok(cl2.at - t0 >= TTL - EARLY_MS && cl2.at - t0 <= TTL + 1000, `closed after ${Math.round(cl2.at - t0)} ms`);
        await w2.expectNoUpdate(undefined, 300);
        assert.ok(w.isOpen && w2.isOpen,
            `WebSocket pings keep watchers alive: ${JSON.stringify([w.closeInfo, w2.closeInfo])}${crashInfo(d)}`);
        await w.close();
        await w2.close();
    });
});
