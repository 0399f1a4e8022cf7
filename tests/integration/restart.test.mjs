// Durability against the real daemon with --data-dir (ARCHITECTURE.md section 6: a restart
// loses no setting, contact list or last_seen; docs/PROTOCOL.md section 5):
//  - SIGTERM, then a new process on the same data directory: visibility, contacts, blocks,
//    custom_status and activity are all there (get_privacy, get_presence from a permitted
//    watcher), last_seen exactly as before, and the privacy rule is still enforced;
//  - SIGKILL: the same for everything acknowledged (settings are committed before the ack);
//    last_seen, written behind every second, lags by at most that period; a live user who only
//    heartbeats has their last sign of life checkpointed (--last-seen-checkpoint), so theirs
//    lags by at most checkpoint + flush;
//  - a database file that is garbage or damaged makes start-up fail with a message naming the
//    file and a non-zero exit, leaving the file as it was (never run empty in its place);
//  - a data directory that cannot be written fails start-up clearly too (as root the daemon
//    is run as nobody, since root may write anywhere).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';

import { ask, epoch, isRoot, makeTemp, NOBODY, rmTemp, runToExit } from './lib/auth.mjs';
import { assertPresence, closeAll, openClient, openUser, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 60000 };
const GRACE = 1000; // --offline-grace
const FLUSH = 1000; // last_seen write-behind period
const SETTLE = GRACE + FLUSH + 400; // offline published and its last_seen written
const CHECKPOINT = 1000; // --last-seen-checkpoint in the heartbeat-only case

/** Puts the standard settings in place on daemon d (prefix p names the users); returns the
 * connections still open. */
async function populate(d, p) {
    const alice = await openUser(d, `${p}-alice`, { device: 'web', custom_status: 'in a meeting', activity: 'meeting' });
    await alice.ok({ type: 'set_visibility', visibility: 'contacts' });
    for (const u of ['bob', 'carol', 'émile']) await alice.ok({ type: 'add_contact', user_id: `${p}-${u}` });
    for (const u of ['mallory', 'carol']) await alice.ok({ type: 'block', user_id: `${p}-${u}` });
    const nina = await openUser(d, `${p}-nina`, { device: 'mobile', activity: 'focus' });
    await nina.ok({ type: 'set_visibility', visibility: 'nobody' });
    await nina.ok({ type: 'add_contact', user_id: `${p}-bob` });
    const dave = await openUser(d, `${p}-dave`, { device: 'desktop', custom_status: 'gone fishing' });
    // An expiring custom status (an hour) survives with its expiry.
    const erin = await openUser(d, `${p}-erin`, { device: 'web', custom_status: 'back at 5', custom_status_expires_in: 3600 });
    return { alice, nina, dave, erin };
}

const PRIVACY = (p) => ({
    [`${p}-alice`]: { visibility: 'contacts', contacts: [`${p}-bob`, `${p}-carol`, `${p}-émile`], blocked: [`${p}-carol`, `${p}-mallory`] },
    [`${p}-nina`]: { visibility: 'nobody', contacts: [`${p}-bob`], blocked: [] },
    [`${p}-dave`]: { visibility: 'everyone', contacts: [], blocked: [] },
});

/** Every user's privacy settings, each asked over a connection of that user. */
async function privacyOf(d, p) {
    const out = {};
    for (const u of Object.keys(PRIVACY(p))) {
        const c = await openClient(d, u);
        const { type, id: _id, ...rest } = await ask(c, { type: 'get_privacy' });
        assert.equal(type, 'privacy');
        out[u] = rest;
        await c.close();
    }
    return out;
}

/** What a contact (bob) sees of everyone, and that the rule holds for the others. */
async function checkViews(d, p, want) {
    const ids = ['alice', 'nina', 'dave', 'erin', 'ghost'].map((u) => `${p}-${u}`);
    const bob = await openClient(d, `${p}-bob`);
    const seen = await bob.getPresence(ids);
    assert.deepEqual(Object.keys(seen).sort(), [`${p}-alice`, `${p}-dave`, `${p}-erin`]);
    for (const [u, w] of Object.entries(want)) assertPresence(seen[u], w, `bob sees ${u}`);
    // Strangers, blocked users (also a blocked contact) see neither alice nor nina.
    for (const who of ['stranger', 'mallory', 'carol']) {
        const c = await openClient(d, `${p}-${who}`);
        const got = await c.getPresence(ids);
        assert.deepEqual(Object.keys(got).sort(), [`${p}-dave`, `${p}-erin`], `${who} sees`);
        await c.close();
    }
    // nina sees herself.
    const nina = await openClient(d, `${p}-nina`);
    assert.deepEqual(Object.keys(await nina.getPresence([`${p}-nina`])), [`${p}-nina`]);
    await nina.close();
    await bob.close();
    return seen;
}

function offline(user, device, custom_status = null, activity = null) {
    return { user_id: user, status: 'offline', device, devices: [], custom_status, activity };
}

describe('restart', () => {
    let d, dir;
    afterEach(async () => {
        if (d && !d.exit) await stopDaemon(d);
        d = null;
        rmTemp(dir);
    });

    test('SIGTERM and a new process: every setting and last_seen intact, the rule enforced', T, async () => {
        dir = makeTemp('pd-restart-');
        const flags = ['--data-dir', dir, '--offline-grace', String(GRACE / 1000)];
        const P = 'st';
        d = await startPresenced(flags);
        await d.waitForLog(new RegExp(`settings are kept in ${dir}/presenced\\.db`));
        const { alice, nina, dave, erin } = await populate(d, P);
        for (const c of [alice, nina, dave, erin]) await c.close();
        await sleep(SETTLE);
        const want = {
            [`${P}-alice`]: offline(`${P}-alice`, 'web', 'in a meeting', 'meeting'),
            [`${P}-dave`]: offline(`${P}-dave`, 'desktop', 'gone fishing'),
            [`${P}-erin`]: offline(`${P}-erin`, 'web', 'back at 5'),
        };
        const before = await checkViews(d, P, want);
        const privBefore = await privacyOf(d, P);
        assert.deepEqual(privBefore, PRIVACY(P));
        await stopDaemon(d); // SIGTERM: exit 0

        d = await startPresenced(flags);
        await d.waitForLog(/loaded \d+ users from the database/);
        assert.deepEqual(await privacyOf(d, P), privBefore);
        const after = await checkViews(d, P, want);
        // last_seen (and all else) exactly as before the restart.
        assert.deepEqual(after, before);

        // The rule holds for live changes too: alice comes back; bob (a contact) is told, a
        // stranger and mallory are not.
        const bob = await openClient(d, `${P}-bob`);
        const str = await openClient(d, `${P}-stranger`);
        assert.deepEqual(Object.keys((await bob.subscribe([`${P}-alice`])).presences), [`${P}-alice`]);
        assert.deepEqual((await str.subscribe([`${P}-alice`])).presences, {});
        const a2 = await openUser(d, `${P}-alice`, { device: 'mobile' });
        const p = await bob.waitUpdate(`${P}-alice`, (x) => x.status === 'online');
        assertPresence(p, { user_id: `${P}-alice`, status: 'online', device: 'mobile', devices: ['mobile'], custom_status: 'in a meeting', activity: 'meeting' });
        await str.expectNoUpdate(`${P}-alice`, 300);
        for (const c of [bob, str, a2]) await c.close();
    });

    test('SIGKILL: what was acknowledged is there; last_seen lags at most the flush period', T, async () => {
        dir = makeTemp('pd-restart-');
        const flags = ['--data-dir', dir, '--offline-grace', String(GRACE / 1000)];
        const P = 'sk';
        d = await startPresenced(flags);
        const { alice, nina, dave, erin } = await populate(d, P);
        for (const c of [alice, nina, dave, erin]) await c.close();
        await sleep(SETTLE);
        const want = {
            [`${P}-alice`]: offline(`${P}-alice`, 'web', 'in a meeting', 'meeting'),
            [`${P}-dave`]: offline(`${P}-dave`, 'desktop', 'gone fishing'),
            [`${P}-erin`]: offline(`${P}-erin`, 'web', 'back at 5'),
        };
        const before = await checkViews(d, P, want);

        // frank keeps changing his status up to the kill: each change is acknowledged once
        // written, its last_seen written behind.
        const frank = await openUser(d, `${P}-frank`, { device: 'web' });
        let n = 0;
        let lastAcked = null;
        const until = epoch() + 2.5;
        while (epoch() < until) {
            await frank.ok({ type: 'set_status', custom_status: `step ${++n}` });
            lastAcked = { n, at: epoch() };
            await sleep(100);
        }
        const killedAt = epoch();
        d.signal('SIGKILL');
        const ex = await d.exited;
        assert.equal(ex.signal, 'SIGKILL');
        await closeAll(d);

        d = await startPresenced(flags);
        assert.deepEqual(await privacyOf(d, P), PRIVACY(P));
        const after = await checkViews(d, P, want);
        assert.deepEqual(after, before, 'offline users (settled before the kill) exactly as before');
        const c = await openClient(d, `${P}-bob`);
        const fp = (await c.getPresence([`${P}-frank`]))[`${P}-frank`];
        assertPresence(fp, offline(`${P}-frank`, 'web', `step ${lastAcked.n}`), 'frank after the kill');
        const lag = killedAt - fp.last_seen;
        assert.ok(fp.last_seen <= killedAt + 0.005, `last_seen ${fp.last_seen} after the kill at ${killedAt}`);
        assert.ok(lag <= FLUSH / 1000 + 0.25, `frank's last_seen lags the kill by ${lag.toFixed(3)} s`);
        await c.close();
    });

    test('SIGKILL: a live user who only heartbeats keeps a last_seen within checkpoint + flush', T, async () => {
        dir = makeTemp('pd-restart-');
        const flags = ['--data-dir', dir, '--offline-grace', String(GRACE / 1000),
            '--last-seen-checkpoint', String(CHECKPOINT / 1000)];
        d = await startPresenced(flags);
        const g = await openUser(d, 'hb-gina', { device: 'web' });
        const onlineAt = epoch();
        g.heartbeatEvery(200, { type: 'heartbeat', device: 'web' });
        await sleep(3000);
        const live = (await (await openClient(d, 'hb-watch')).getPresence(['hb-gina']))['hb-gina'];
        assert.ok(live.last_seen >= epoch() - 0.5, `live last_seen ${live.last_seen} (heartbeats count)`);
        const killedAt = epoch();
        d.signal('SIGKILL');
        await d.exited;
        await closeAll(d);

        d = await startPresenced(flags);
        const c = await openClient(d, 'hb-watch');
        const p = (await c.getPresence(['hb-gina']))['hb-gina'];
        assertPresence(p, offline('hb-gina', 'web'), 'gina after the kill');
        const lag = killedAt - p.last_seen;
        // The checkpoint takes her last heartbeat (sent every 200 ms), the flush writes it up
        // to a second later, and the kill may come just before the next flush.
        assert.ok(lag <= (CHECKPOINT + FLUSH + 200) / 1000 + 0.15,
            `gina heartbeated until the kill, but her last_seen after the restart is ${lag.toFixed(3)} s ` +
            `before it (${(p.last_seen - onlineAt).toFixed(3)} s after her set_online): liveness never reached the database`);
        await c.close();
    });
});

describe('restart: refused start-ups', () => {
    let dir;
    afterEach(() => {
        if (dir) {
            fs.chmodSync(dir, 0o755);
            rmTemp(dir);
        }
        dir = null;
    });

    /** Start-up must fail: exit 1, no listening, the message; the file (if any) unchanged. */
    async function expectRefusedStart(flags, message, opts = {}, file = null) {
        const bytes = file ? fs.readFileSync(file) : null;
        const r = await runToExit(flags, opts);
        assert.equal(r.signal, null, r.stderr);
        assert.equal(r.code, 1, `exit ${r.code}\n${r.stderr}`);
        assert.doesNotMatch(r.stderr, /listening on/);
        assert.doesNotMatch(r.stderr, /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, r.stderr);
        assert.ok(r.stderr.includes(message), `the log does not say:\n  ${message}\nit says:\n${r.stderr}`);
        assert.match(r.stderr, /ERROR main: refusing to start: /);
        if (file) assert.ok(fs.readFileSync(file).equals(bytes), `${file} was modified`);
        return r;
    }

    test('a garbage or damaged database file: refused, naming the file; the file left alone', T, async () => {
        dir = makeTemp('pd-restart-');
        const db = path.join(dir, 'presenced.db');
        // Garbage from the first byte.
        let seed = 7;
        const garbage = Buffer.alloc(64 * 1024, 0).map(() => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff);
        fs.writeFileSync(db, garbage);
        await expectRefusedStart(['--data-dir', dir],
            `refusing to start: '${db}' is not a healthy SQLite database (file is not a database); ` +
            'restore it from a backup or move it away', {}, db);

        // A real database (made by the daemon) whose pages after the first are overwritten.
        fs.rmSync(db);
        const d = await startPresenced(['--data-dir', dir, '--offline-grace', '1']);
        const cs = [];
        for (let i = 0; i < 100; i++) {
            const c = await openUser(d, `dm-${i}-${'x'.repeat(60)}`, { device: 'web', custom_status: 'y'.repeat(200) });
            await c.ok({ type: 'set_visibility', visibility: i % 2 ? 'nobody' : 'contacts' });
            cs.push(c);
        }
        await stopDaemon(d);
        const good = fs.readFileSync(db);
        assert.ok(good.length >= 4 * 4096, `database of ${good.length} bytes`);
        const bad = Buffer.from(good);
        for (let i = 4096; i < bad.length; i++) bad[i] = (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
        fs.writeFileSync(db, bad);
        await expectRefusedStart(['--data-dir', dir], `refusing to start: '${db}' is not a healthy SQLite database (`, {}, db);
        // Also with the other flags a production start has: the same refusal.
        const secret = path.join(dir, 'secret');
        fs.writeFileSync(secret, `${'k'.repeat(40)}\n`);
        await expectRefusedStart(['--data-dir', dir, '--token-secret-file', secret],
            `refusing to start: '${db}' is not a healthy SQLite database (`, {}, db);
    });

    test('a database of a newer schema version: refused', T, async () => {
        dir = makeTemp('pd-restart-');
        const d = await startPresenced(['--data-dir', dir, '--offline-grace', '1']);
        await stopDaemon(d);
        const db = path.join(dir, 'presenced.db');
        // user_version lives at byte offset 60 of the header (big-endian); the file is not in
        // use, so patching it is what `PRAGMA user_version=7` would have written.
        const b = fs.readFileSync(db);
        b.writeUInt32BE(7, 60);
        fs.writeFileSync(db, b);
        await expectRefusedStart(['--data-dir', dir],
            `refusing to start: '${db}' has schema version 7, newer than this presenced (2)`, {}, db);
    });

    test('a data directory that cannot be written: refused with the reason', T, async () => {
        dir = makeTemp('pd-restart-');
        fs.chmodSync(dir, 0o755);
        const ro = path.join(dir, 'ro');
        fs.mkdirSync(ro, { mode: 0o555 });
        fs.chmodSync(ro, 0o555);
        const as = isRoot() ? { uid: NOBODY, gid: NOBODY } : {};
        // The directory exists but cannot be written.
        await expectRefusedStart(['--data-dir', ro],
            `refusing to start: cannot open '${ro}/presenced.db': unable to open database file`, as);
        // The directory cannot be created.
        await expectRefusedStart(['--data-dir', path.join(ro, 'data')],
            `refusing to start: cannot create data directory '${ro}/data': Permission denied`, as);
        assert.ok(!fs.existsSync(path.join(ro, 'data')));
        assert.deepEqual(fs.readdirSync(ro), []);
    });
});
