// Privacy against the real daemon (docs/PROTOCOL.md section 5): requester R may see target T
// iff R is T, or T does not block R and (T's visibility is everyone, or contacts and R is a
// contact).
//  - A user R may not see is absent from initial_presence and presence_result exactly like a
//    user the server never saw, and none of their changes reaches R.
//  - Every transition takes effect at once for existing subscriptions: losing permission sends
//    one bare {"user_id","status":"offline"} and then nothing; gaining it sends the current
//    presence. Visibility everyone -> contacts -> everyone -> nobody -> everyone, contact
//    added / removed, block / unblock under each visibility, the grace offline while hidden.
//  - A user sees their own presence while invisible, on another connection.
//  - Bulk get_presence and subscribe snapshots are filtered the same way.
//  - Errors: bad_visibility, list_full (--max-contacts), adding or blocking yourself
//    (bad_user_id); get_privacy lists sorted; repeated settings change nothing.
//  - No message of any type, with another user's id in any field, changes that user: identity
//    comes only from the connection.
// Every daemon is stopped after its tests with exit 0 (under ASan: no leak, no report).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ask, askError } from './lib/auth.mjs';
import { assertPresence, openClient, openUser, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 60000 };
const QUIET = 250; // ms a client must stay silent where nothing may arrive
const GRACE = 1000; // --offline-grace

const bare = (u) => `{"type":"presence_update","presence":{"user_id":"${u}","status":"offline"}}`;

/** The one bare offline of user reaches c, byte for byte, and nothing of user follows. */
async function expectBare(c, user) {
    const e = await c.waitForEntry((m) => m.type === 'presence_update' && m.presence.user_id === user, 3000,
        `the bare offline of ${user}`);
    assert.equal(e.raw, bare(user), `${c.user}: not the bare offline`);
    await c.expectNoUpdate(user, QUIET);
}

/** The current presence of user (expected fields) reaches c once, and nothing else of user. */
async function expectFull(c, user, want) {
    const p = await c.waitUpdate(user, () => true, 3000);
    assertPresence(p, { user_id: user, ...want }, `${c.user} sees ${user}`);
    await c.expectNoUpdate(user, QUIET);
    return p;
}

/** None of cs receives anything of user for QUIET ms. */
function quiet(cs, user) {
    return Promise.all(cs.map((c) => c.expectNoUpdate(user, QUIET)));
}

/** Asserts a and b are the same presences object; last_seen of online users is refined with
 * the connection's liveness at answer time, so it may differ by a clock tick. */
function samePresences(a, b, what) {
    assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort(), what);
    for (const k of Object.keys(a)) {
        const { last_seen: la, ...ra } = a[k];
        const { last_seen: lb, ...rb } = b[k];
        assert.deepEqual(ra, rb, `${what}: ${k}`);
        assert.ok(Math.abs(la - lb) <= 0.005, `${what}: ${k} last_seen ${la} vs ${lb}`);
    }
}

/** The raw answer to a request sent with a fixed id. */
async function rawAnswer(c, obj) {
    await c.send(obj);
    return (await c.waitForEntry((m) => m.id === obj.id, 3000, `the answer to ${obj.type}`)).raw;
}

// ---------------------------------------------------------------------------------------------

describe('privacy', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--offline-grace', String(GRACE / 1000)]);
    });
    after(async () => {
        await stopDaemon(d);
    });

    test('a hidden user answers exactly like a user never seen, under each rule', T, async () => {
        // hc: contacts-only (hv is a contact); hn: invisible; hb: everyone but blocks the
        // watcher; vis: everyone. hv and w watch; ghost-* were never seen.
        const hc = await openUser(d, 'hx-contacts', { device: 'web', custom_status: 'cs' });
        const hn = await openUser(d, 'hx-nobody', { device: 'mobile' });
        const hb = await openUser(d, 'hx-blocks', { device: 'desktop', activity: 'focus' });
        const vis = await openUser(d, 'hx-visible', { device: 'web' });
        await hc.ok({ type: 'set_visibility', visibility: 'contacts' });
        await hc.ok({ type: 'add_contact', user_id: 'hx-friend' });
        await hn.ok({ type: 'set_visibility', visibility: 'nobody' });
        await hb.ok({ type: 'block', user_id: 'hx-w' });
        const w = await openClient(d, 'hx-w');
        const friend = await openClient(d, 'hx-friend');

        for (const [hidden, ghost] of [['hx-contacts', 'ghost-1'], ['hx-nobody', 'ghost-2'], ['hx-blocks', 'ghost-3']]) {
            // Alone: the very same bytes as for a never-seen id.
            for (const type of ['subscribe', 'get_presence']) {
                const a = await rawAnswer(w, { type, user_ids: [hidden], id: 'same' });
                const b = await rawAnswer(w, { type, user_ids: [ghost], id: 'same' });
                const want = type === 'subscribe' ? 'initial_presence' : 'presence_result';
                assert.equal(a, `{"type":"${want}","id":"same","presences":{}}`, `${type} ${hidden}`);
                assert.equal(b, a, `${type}: ${hidden} vs ${ghost}`);
            }
            // Among visible users: the same answer as with the never-seen id in its place.
            const a = await w.request({ type: 'get_presence', user_ids: [ghost, hidden, 'hx-visible'] });
            const b = await w.request({ type: 'get_presence', user_ids: [ghost, `${ghost}-b`, 'hx-visible'] });
            samePresences(a.presences, b.presences, `bulk with ${hidden}`);
            assert.deepEqual(Object.keys(a.presences), ['hx-visible']);
        }
        // The contact sees hx-contacts; nobody else sees hx-nobody; hx-blocks is seen by others.
        const fp = await friend.getPresence(['hx-contacts', 'hx-nobody', 'hx-blocks']);
        assert.deepEqual(Object.keys(fp).sort(), ['hx-blocks', 'hx-contacts']);
        assertPresence(fp['hx-contacts'], { user_id: 'hx-contacts', status: 'online', device: 'web', devices: ['web'], custom_status: 'cs' });
        assertPresence(fp['hx-blocks'], { user_id: 'hx-blocks', status: 'online', device: 'desktop', devices: ['desktop'], activity: 'focus' });
        // Each sees themselves.
        for (const [c, u, dev] of [[hc, 'hx-contacts', 'web'], [hn, 'hx-nobody', 'mobile'], [hb, 'hx-blocks', 'desktop']]) {
            const own = await c.getPresence([u]);
            assert.deepEqual(Object.keys(own), [u]);
            assert.equal(own[u].device, dev);
        }

        // w watches all three (subscribed above): none of their changes reaches w; the
        // friend, watching hx-contacts, sees its changes.
        await friend.subscribe(['hx-contacts']);
        await hc.ok({ type: 'set_status', status: 'busy' });
        await hn.ok({ type: 'set_status', status: 'away', custom_status: 'zzz' });
        await hb.ok({ type: 'set_status', status: 'busy' });
        await expectFull(friend, 'hx-contacts', { status: 'busy', device: 'web', devices: ['web'], custom_status: 'cs' });
        await quiet([w], 'hx-contacts');
        await quiet([w], 'hx-nobody');
        await quiet([w], 'hx-blocks');
        // Going offline (explicitly, at once) is a change too: not for w.
        await hn.ok({ type: 'set_offline' });
        await quiet([w], 'hx-nobody');
        // A second connection of a hidden user: its devices change, still nothing for w.
        const hc2 = await openUser(d, 'hx-contacts', { device: 'mobile' });
        await expectFull(friend, 'hx-contacts', { status: 'busy', device: 'mobile', devices: ['mobile', 'web'], custom_status: 'cs' });
        await quiet([w], 'hx-contacts');
        for (const c of [hc, hc2, hn, hb, vis, w, friend]) await c.close();
    });

    test('every transition: one bare offline on losing sight, the current presence on gaining it', { timeout: 90000 }, async () => {
        const U = 'tr-alice';
        const alice = await openUser(d, U, { device: 'web' });
        const self2 = await openClient(d, U); // alice's other connection, watching herself
        const w = await openClient(d, 'tr-w'); // a stranger
        const c = await openClient(d, 'tr-c'); // to become a contact
        const m = await openClient(d, 'tr-m'); // to be blocked
        const all = [w, c, m, self2];
        const st = { status: 'online', device: 'web', devices: ['web'], custom_status: null, activity: null };
        for (const x of all) {
            const init = (await x.subscribe([U])).presences;
            assertPresence(init[U], { user_id: U, ...st }, `${x.user} initial`);
        }
        const change = async (fields) => {
            await alice.ok({ type: 'set_status', ...fields });
            Object.assign(st, fields);
        };

        // everyone -> contacts: every other watcher loses sight (one bare offline each).
        await alice.ok({ type: 'set_visibility', visibility: 'contacts' });
        await Promise.all([w, c, m].map((x) => expectBare(x, U)));
        await quiet([self2], U);
        // The same setting again changes nothing.
        await alice.ok({ type: 'set_visibility', visibility: 'contacts' });
        await quiet(all, U);
        // A change now reaches only alice herself.
        await change({ status: 'busy' });
        await expectFull(self2, U, st);
        await quiet([w, c, m], U);

        // Contact added: c gets the current presence; the others nothing.
        await alice.ok({ type: 'add_contact', user_id: 'tr-c' });
        await expectFull(c, U, st);
        await quiet([w, m, self2], U);
        await alice.ok({ type: 'add_contact', user_id: 'tr-c' }); // again: nothing
        await quiet(all, U);
        await change({ status: 'online', custom_status: 'hi' });
        await Promise.all([expectFull(c, U, st), expectFull(self2, U, st)]);
        await quiet([w, m], U);

        // Contact removed: bare offline, then nothing.
        await alice.ok({ type: 'remove_contact', user_id: 'tr-c' });
        await expectBare(c, U);
        await quiet([w, m, self2], U);
        await alice.ok({ type: 'remove_contact', user_id: 'tr-c' }); // absent: nothing
        await change({ activity: 'focus' });
        await expectFull(self2, U, st);
        await quiet([w, c, m], U);
        await alice.ok({ type: 'add_contact', user_id: 'tr-c' });
        await expectFull(c, U, st);

        // Block a contact (visibility contacts): bare offline; unblock: the presence again.
        await alice.ok({ type: 'block', user_id: 'tr-c' });
        await expectBare(c, U);
        await change({ status: 'away' });
        await expectFull(self2, U, st);
        await quiet([w, c, m], U);
        await alice.ok({ type: 'unblock', user_id: 'tr-c' });
        await expectFull(c, U, st);
        await quiet([w, m, self2], U);

        // contacts -> everyone: the strangers gain sight; c already had it.
        await alice.ok({ type: 'set_visibility', visibility: 'everyone' });
        await Promise.all([expectFull(w, U, st), expectFull(m, U, st)]);
        await quiet([c, self2], U);

        // Block under everyone: m loses sight, the others keep it.
        await alice.ok({ type: 'block', user_id: 'tr-m' });
        await expectBare(m, U);
        await quiet([w, c, self2], U);
        await change({ status: 'busy', activity: 'meeting' });
        await Promise.all([w, c, self2].map((x) => expectFull(x, U, st)));
        await quiet([m], U);
        assert.deepEqual(await m.getPresence([U]), {});
        await alice.ok({ type: 'block', user_id: 'tr-m' }); // again: nothing
        await quiet(all, U);
        await alice.ok({ type: 'unblock', user_id: 'tr-m' });
        await expectFull(m, U, st);
        await quiet([w, c, self2], U);

        // everyone -> nobody: every other watcher loses sight; alice still sees herself.
        await alice.ok({ type: 'set_visibility', visibility: 'nobody' });
        await Promise.all([w, c, m].map((x) => expectBare(x, U)));
        await quiet([self2], U);
        await change({ custom_status: 'invisible', status: 'online' });
        await expectFull(self2, U, st);
        await quiet([w, c, m], U);
        for (const x of [w, c, m]) assert.deepEqual(await x.getPresence([U]), {}, x.user);
        const own = await self2.getPresence([U]);
        assertPresence(own[U], { user_id: U, ...st }, 'alice sees herself while invisible');
        // Under nobody, contacts and blocks change nothing anyone can see.
        await alice.ok({ type: 'block', user_id: 'tr-m' });
        await alice.ok({ type: 'unblock', user_id: 'tr-m' });
        await alice.ok({ type: 'add_contact', user_id: 'tr-w' });
        await alice.ok({ type: 'remove_contact', user_id: 'tr-c' });
        await quiet(all, U);
        // A watcher who subscribes now gets nothing of her.
        const late = await openClient(d, 'tr-late');
        assert.deepEqual((await late.subscribe([U])).presences, {});

        // nobody -> everyone: all gain sight at once.
        await alice.ok({ type: 'set_visibility', visibility: 'everyone' });
        await Promise.all([w, c, m, late].map((x) => expectFull(x, U, st)));
        await quiet([self2], U);

        // Hidden while the last session ends: the offline after the grace reaches only those
        // who may see (w is a contact now, c is not).
        await alice.ok({ type: 'set_visibility', visibility: 'contacts' });
        await Promise.all([c, m, late].map((x) => expectBare(x, U)));
        await quiet([w, self2], U);
        await alice.close();
        const off = { ...st, status: 'offline', devices: [] };
        await Promise.all([w, self2].map(async (x) => {
            const p = await x.waitUpdate(U, () => true, GRACE + 3000);
            assertPresence(p, { user_id: U, ...off }, `${x.user} sees the offline`);
        }));
        await quiet([c, m, late], U);
        for (const x of [...all, late]) await x.close();
    });

    test('bulk get_presence and subscribe snapshots are filtered per requester', T, async () => {
        const a = await openUser(d, 'bk-a', { device: 'web' }); // contacts: bk-c
        const b = await openUser(d, 'bk-b', { device: 'web' }); // everyone, blocks bk-w
        const n = await openUser(d, 'bk-n', { device: 'web' }); // nobody
        const e = await openUser(d, 'bk-e', { device: 'web' }); // everyone
        await a.ok({ type: 'set_visibility', visibility: 'contacts' });
        await a.ok({ type: 'add_contact', user_id: 'bk-c' });
        await b.ok({ type: 'block', user_id: 'bk-w' });
        await n.ok({ type: 'set_visibility', visibility: 'nobody' });
        const ids = ['bk-a', 'bk-b', 'bk-n', 'bk-e', 'bk-ghost'];
        const expected = {
            'bk-w': ['bk-e'],
            'bk-c': ['bk-a', 'bk-b', 'bk-e'],
            'bk-x': ['bk-b', 'bk-e'],
            'bk-a': ['bk-a', 'bk-b', 'bk-e'],
            'bk-n': ['bk-b', 'bk-e', 'bk-n'],
        };
        for (const [who, want] of Object.entries(expected)) {
            const c = who === 'bk-a' ? a : who === 'bk-n' ? n : await openClient(d, who);
            const got = await c.getPresence(ids);
            // (An object: the order of its keys carries no meaning.)
            assert.deepEqual(Object.keys(got).sort(), want, `get_presence by ${who}`);
            const snap = (await c.subscribe(ids)).presences;
            assert.deepEqual(Object.keys(snap).sort(), want, `initial_presence of ${who}`);
            for (const u of want) assert.equal(got[u].status, 'online');
            if (c !== a && c !== n) await c.close();
        }
        for (const c of [a, b, n, e]) await c.close();
    });

    test('get_privacy: sorted lists; repeated changes succeed and change nothing', T, async () => {
        const a = await openClient(d, 'gp-a');
        assert.equal(await rawAnswer(a, { type: 'get_privacy', id: 'p0' }),
            '{"type":"privacy","id":"p0","visibility":"everyone","contacts":[],"blocked":[]}');
        for (const u of ['zed', 'Bob', 'émile', 'bob', 'alice2', 'carl', 'bob']) await a.ok({ type: 'add_contact', user_id: u });
        for (const u of ['mallory', 'Eve', 'eve', 'mallory']) await a.ok({ type: 'block', user_id: u });
        await a.ok({ type: 'remove_contact', user_id: 'carl' });
        await a.ok({ type: 'remove_contact', user_id: 'never-added' });
        await a.ok({ type: 'unblock', user_id: 'never-blocked' });
        await a.ok({ type: 'set_visibility', visibility: 'contacts' });
        // Bytewise order: upper case before lower case, UTF-8 after ASCII.
        assert.equal(await rawAnswer(a, { type: 'get_privacy', id: 'p1' }),
            '{"type":"privacy","id":"p1","visibility":"contacts","contacts":["Bob","alice2","bob","zed","émile"],' +
            '"blocked":["Eve","eve","mallory"]}');
        // Without an id, changes are silent; get_privacy is always answered.
        await a.send({ type: 'set_visibility', visibility: 'nobody' });
        await a.send({ type: 'get_privacy' });
        const p = await a.waitFor((m) => m.type === 'privacy', 3000, 'privacy');
        assert.deepEqual(p, { type: 'privacy', visibility: 'nobody', contacts: ['Bob', 'alice2', 'bob', 'zed', 'émile'], blocked: ['Eve', 'eve', 'mallory'] });
        await a.expectNone((m) => m.type === 'ack' || m.type === 'error', QUIET, 'an answer to a change without id');
        // Another user's settings are their own.
        const b = await openClient(d, 'gp-b');
        assert.equal(await rawAnswer(b, { type: 'get_privacy', id: 'p2' }),
            '{"type":"privacy","id":"p2","visibility":"everyone","contacts":[],"blocked":[]}');
        await a.close();
        await b.close();
    });

    test('errors: bad_visibility, yourself (bad_user_id), bad ids; nothing changes', T, async () => {
        const a = await openClient(d, 'er-a');
        await a.ok({ type: 'add_contact', user_id: 'er-b' });
        const before = await ask(a, { type: 'get_privacy', id: 'before' });
        for (const v of ['friends', '', 'Everyone', 'NOBODY', 'contacts ', 'invisible'])
            assert.equal((await askError(a, { type: 'set_visibility', visibility: v }, 'bad_visibility')).message,
                '"visibility" must be everyone, contacts or nobody');
        for (const v of [1, null, true, ['nobody'], { v: 'nobody' }])
            await askError(a, { type: 'set_visibility', visibility: v }, 'bad_field');
        await askError(a, { type: 'set_visibility' }, 'bad_field');
        for (const type of ['add_contact', 'remove_contact', 'block', 'unblock']) {
            const e = await askError(a, { type, user_id: 'er-a' }, 'bad_user_id');
            assert.equal(e.message, 'a user cannot be their own contact or block themselves');
            await askError(a, { type, user_id: '' }, 'bad_user_id');
            await askError(a, { type, user_id: 'a\u0001b' }, 'bad_user_id');
            await askError(a, { type, user_id: 'x'.repeat(129) }, 'too_long');
            await askError(a, { type, user_id: 7 }, 'bad_field');
            await askError(a, { type }, 'bad_field');
            await askError(a, { type, user_id: 'er-b', visibility: 'nobody' }, 'unknown_field');
        }
        await askError(a, { type: 'get_privacy', user_id: 'er-b' }, 'unknown_field');
        const afterAll = await ask(a, { type: 'get_privacy', id: 'before' });
        assert.deepEqual(afterAll, before);
        assert.deepEqual(afterAll, { type: 'privacy', id: 'before', visibility: 'everyone', contacts: ['er-b'], blocked: [] });
        await a.close();
    });

    test('no message, with another user\'s id in any field, changes that user', { timeout: 60000 }, async () => {
        const V = 'id-victim';
        const victim = await openUser(d, V, { device: 'web', custom_status: 'mine', activity: 'focus' });
        await victim.ok({ type: 'set_visibility', visibility: 'contacts' });
        await victim.ok({ type: 'add_contact', user_id: 'id-observer' });
        await victim.ok({ type: 'block', user_id: 'id-blocked' });
        const obs = await openClient(d, 'id-observer');
        const p0 = (await obs.subscribe([V])).presences[V];
        const priv0 = await ask(victim, { type: 'get_privacy', id: 'pv' });
        const mal = await openClient(d, 'id-mallory');

        // [message, expected: 'error code' | 'ack' | answer type]
        const msgs = [
            [{ type: 'set_online', device: 'web', user_id: V }, 'unknown_field'],
            [{ type: 'set_online', device: 'web', user: V }, 'unknown_field'],
            [{ type: 'set_online', device: 'web', session_id: victim.welcome.session_id }, 'unknown_field'],
            [{ type: 'set_status', status: 'offline', user_id: V }, 'unknown_field'],
            [{ type: 'set_status', status: 'busy', custom_status: 'hacked', sub: V }, 'unknown_field'],
            [{ type: 'set_offline', user_id: V }, 'unknown_field'],
            [{ type: 'heartbeat', user_id: V }, 'unknown_field'],
            [{ type: 'activity', user_id: V }, 'unknown_field'],
            [{ type: 'ping', user_id: V }, 'unknown_field'],
            [{ type: 'set_visibility', visibility: 'everyone', user_id: V }, 'unknown_field'],
            [{ type: 'get_privacy', user_id: V }, 'unknown_field'],
            [{ type: 'unsubscribe', user_ids: [V], user_id: V }, 'unknown_field'],
            [{ type: 'leave', channel: 'id-room', user_id: V }, 'unknown_field'],
            [{ type: 'refresh', token: 'x.y.z', user_id: V }, 'unknown_field'],
            [{ type: 'refresh', token: 'x.y.z' }, 'bad_token'],
            [{ type: 'set_online', device: V, custom_status: V, activity: V }, 'ack'],
            [{ type: 'set_status', status: 'offline' }, 'ack'],
            [{ type: 'heartbeat', device: V }, 'ack'],
            [{ type: 'set_online', device: 'web', status: 'busy' }, 'ack'],
            [{ type: 'activity' }, 'ack'],
            [{ type: 'subscribe', user_ids: [V] }, 'initial_presence'],
            [{ type: 'get_presence', user_ids: [V] }, 'presence_result'],
            [{ type: 'unsubscribe', user_ids: [V] }, 'ack'],
            // Privacy requests name another user as the object: they change mallory's lists.
            [{ type: 'add_contact', user_id: V }, 'ack'],
            [{ type: 'block', user_id: V }, 'ack'],
            [{ type: 'unblock', user_id: V }, 'ack'],
            [{ type: 'remove_contact', user_id: V }, 'ack'],
            [{ type: 'add_contact', user_id: 'id-observer' }, 'ack'],
            [{ type: 'set_visibility', visibility: 'nobody' }, 'ack'],
            // Rooms: mallory joins as mallory, whatever the metadata says.
            [{ type: 'join', channel: 'id-room', metadata: { user_id: V, status: 'offline' } }, 'channel_state'],
            [{ type: 'update', channel: 'id-room', metadata: { user_id: V } }, 'ack'],
            [{ type: 'cursor', channel: 'id-room', cursor: { user_id: V } }, 'ack'],
            [{ type: 'typing', channel: 'id-room', typing: true }, 'ack'],
            [{ type: 'channel_members', channel: 'id-room' }, 'channel_members'],
            [{ type: 'leave', channel: 'id-room' }, 'ack'],
            [{ type: 'set_offline' }, 'ack'],
        ];
        for (const [msg, want] of msgs) {
            const a = await ask(mal, msg);
            if (['ack', 'initial_presence', 'presence_result', 'channel_state', 'channel_members'].includes(want))
                assert.equal(a.type, want, `${JSON.stringify(msg)} answered ${JSON.stringify(a)}`);
            else
                assert.deepEqual([a.type, a.code], ['error', want], `${JSON.stringify(msg)} answered ${JSON.stringify(a)}`);
            if (a.type === 'channel_state' || a.type === 'channel_members')
                assert.deepEqual(a.members.map((x) => x.user_id), ['id-mallory'], JSON.stringify(a));
        }
        // The victim watched all along: nothing of theirs changed, nothing was published.
        await obs.expectNoUpdate(V, QUIET);
        const p1 = (await obs.getPresence([V]))[V];
        samePresences({ [V]: p1 }, { [V]: p0 }, 'the victim\'s presence');
        assertPresence(p1, { user_id: V, status: 'online', device: 'web', devices: ['web'], custom_status: 'mine', activity: 'focus' });
        assert.deepEqual(await ask(victim, { type: 'get_privacy', id: 'pv' }), priv0);
        // And what mallory did is mallory's: her own settings, her own (now offline) presence.
        assert.deepEqual(await ask(mal, { type: 'get_privacy', id: 'pm' }),
            { type: 'privacy', id: 'pm', visibility: 'nobody', contacts: ['id-observer'], blocked: [] });
        const pm = (await mal.getPresence(['id-mallory']))['id-mallory'];
        assertPresence(pm, { user_id: 'id-mallory', status: 'offline', device: 'web', devices: [], custom_status: V, activity: V });
        for (const c of [victim, obs, mal]) await c.close();
    });
});

describe('privacy: list limits (--max-contacts 3)', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--max-contacts', '3', '--offline-grace', '1']);
    });
    after(async () => {
        await stopDaemon(d);
    });

    test('a full contact or block list refuses another (list_full); known ones still succeed', T, async () => {
        const a = await openClient(d, 'lf-a');
        for (const u of ['c1', 'c2', 'c3']) await a.ok({ type: 'add_contact', user_id: u });
        const e = await askError(a, { type: 'add_contact', user_id: 'c4' }, 'list_full');
        assert.equal(e.message, 'the list holds as many users as allowed');
        await a.ok({ type: 'add_contact', user_id: 'c2' }); // already there: fine
        // The block list has its own limit.
        for (const u of ['b1', 'b2', 'b3']) await a.ok({ type: 'block', user_id: u });
        await askError(a, { type: 'block', user_id: 'b4' }, 'list_full');
        await a.ok({ type: 'block', user_id: 'b1' });
        assert.deepEqual(await ask(a, { type: 'get_privacy', id: 'x' }),
            { type: 'privacy', id: 'x', visibility: 'everyone', contacts: ['c1', 'c2', 'c3'], blocked: ['b1', 'b2', 'b3'] });
        // Room again after a removal.
        await a.ok({ type: 'remove_contact', user_id: 'c1' });
        await a.ok({ type: 'add_contact', user_id: 'c4' });
        await askError(a, { type: 'add_contact', user_id: 'c5' }, 'list_full');
        // Without an id the error still comes (without an id).
        await a.send({ type: 'block', user_id: 'b5' });
        const e2 = await a.waitFor((m) => m.type === 'error', 3000, 'list_full');
        assert.deepEqual(e2, { type: 'error', code: 'list_full', message: 'the list holds as many users as allowed' });
        // A full list of watchers is no trouble for the rule: c4 sees a under contacts.
        await a.ok({ type: 'set_online', device: 'web' });
        await a.ok({ type: 'set_visibility', visibility: 'contacts' });
        const c4 = await openClient(d, 'c4');
        const c5 = await openClient(d, 'c5');
        assert.deepEqual(Object.keys(await c4.getPresence(['lf-a'])), ['lf-a']);
        assert.deepEqual(await c5.getPresence(['lf-a']), {});
        for (const c of [a, c4, c5]) await c.close();
    });
});
