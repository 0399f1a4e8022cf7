// Connection tokens against the real daemon (docs/PROTOCOL.md section 1 and `refresh`):
//  - HS256 (--token-secret-file), RS256 and ES256 (--token-public-key): a valid token opens a
//    connection as its `sub`, given as ?token= or as Authorization: Bearer, and wins over ?user=
//    (lib/daemon.mjs always runs --dev-auth);
//  - every refusal is a bare 401, the same bytes whatever the reason (the reason only in the
//    log and in presenced_auth_failures_total{reason}, which grows by one with the right label);
//  - --token-issuer / --token-audience;
//  - the channels claim: a room no pattern matches cannot be joined (forbidden) nor queried
//    with channel_members / channel_count;
//  - expiry closes the connection with 4001 at exp; refresh with a later token of the same user
//    prevents it (and its channels take effect at once); refresh with another user's token is
//    wrong_user, with a bad one bad_token, and the connection stays.
// Every daemon is stopped after its tests with exit 0 (under ASan: no leak, no report).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { metricValue, rawConnect, scrapeMetrics, upgradeRequest } from './lib/daemon.mjs';
import {
    ask,
    askError,
    BARE_401_BODY,
    BARE_401_HEAD,
    claimsFor,
    epoch,
    makeTemp,
    openTokenClient,
    rawUpgrade,
    rmTemp,
    signToken,
    writeKeyPair,
    writeSecret,
} from './lib/auth.mjs';
import { closeAll, eventually, now, openClient, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 30000 };
const FAIL = 'presenced_auth_failures_total';

/** Asserts that an upgrade (path and headers) is refused with the bare 401 and that exactly one
 * failure, with reason, is counted. */
async function expectRefused(d, { path: p, headers = {} }, reason, what) {
    const before = await scrapeMetrics(d);
    const r = await rawUpgrade(d, { path: p, headers });
    assert.equal(r.status, 401, `${what}: status ${r.status}\n${r.head}`);
    assert.equal(r.head, BARE_401_HEAD, `${what}: the head says more than 401`);
    assert.equal(r.body, BARE_401_BODY, `${what}: the body says more than 401`);
    const after = await scrapeMetrics(d);
    const total = (m) => [...m].filter(([k]) => k.startsWith(`${FAIL}{`)).reduce((s, [, v]) => s + v, 0);
    assert.equal(metricValue(after, FAIL, { reason }) - metricValue(before, FAIL, { reason }), 1,
        `${what}: ${FAIL}{reason="${reason}"} did not grow by one`);
    assert.equal(total(after) - total(before), 1, `${what}: another reason was counted too`);
}

const q = (token, extra = '') => `/presence?token=${encodeURIComponent(token)}${extra}`;

// ---------------------------------------------------------------------------------------------

describe('tokens: HS256', () => {
    let d, dir, secret;
    const hs = (claims, header) => signToken('HS256', secret, claims, header);

    before(async () => {
        dir = makeTemp();
        ({ secret } = writeSecret(dir));
        d = await startPresenced(['--token-secret-file', `${dir}/secret`, '--offline-grace', '1']);
        await d.waitForLog(/tokens: HS256/);
    });
    after(async () => {
        await stopDaemon(d);
        rmTemp(dir);
    });

    test('a valid token opens the connection as its sub, by ?token= and by Authorization: Bearer', T, async () => {
        const tok = hs(claimsFor('tok-alice'));
        const a = await openTokenClient(d, tok, { expectUser: 'tok-alice' });
        assert.deepEqual(Object.keys(a.welcome), ['type', 'protocol', 'user_id', 'session_id', 'heartbeat_interval', 'heartbeat_ttl']);
        const b = await openTokenClient(d, tok, { via: 'header', expectUser: 'tok-alice' });
        // The token wins over ?user= (dev auth is on in these tests).
        const c = await openTokenClient(d, hs(claimsFor('tok-bob')), { query: { user: 'tok-mallory' }, expectUser: 'tok-bob' });
        const e = await openTokenClient(d, hs(claimsFor('tok-carol')), { via: 'header', query: { user: 'tok-mallory' }, expectUser: 'tok-carol' });
        // A lower-case scheme is accepted; the header wins over ?token=.
        const raw = await rawConnect(d);
        await raw.write(upgradeRequest({
            path: q(hs(claimsFor('tok-q'))),
            headers: { Authorization: `bearer ${hs(claimsFor('tok-h'))}` },
        }).text);
        const r = await raw.readResponse();
        assert.equal(r.status, 101, r.head);
        const welcome = JSON.parse((await raw.readFrame()).payload.toString('utf8'));
        assert.equal(welcome.user_id, 'tok-h');
        raw.destroy();
        // The connection works as that user: set_online, and another sees tok-alice online.
        await a.ok({ type: 'set_online', device: 'web' });
        const ps = await c.getPresence(['tok-alice', 'tok-mallory']);
        assert.deepEqual(Object.keys(ps), ['tok-alice']);
        assert.equal(ps['tok-alice'].status, 'online');
        // Unicode and the longest ids.
        const odd = 'wél ü/☃?&=';
        const o = await openTokenClient(d, hs(claimsFor(odd)), { expectUser: odd });
        const long = 'L'.repeat(128);
        const l = await openTokenClient(d, hs(claimsFor(long)), { via: 'header', expectUser: long });
        for (const x of [a, b, c, e, o, l]) await x.close();
    });

    test('every refusal is a bare 401, counted by reason, logged with it', { timeout: 60000 }, async () => {
        const t = Math.floor(epoch());
        const other = signToken('HS256', 'x'.repeat(64), claimsFor('tok-r'));
        const good = hs(claimsFor('tok-r'));
        const [gh, gp] = good.split('.');
        const cases = [
            ['expired', hs({ sub: 'tok-r', exp: t - 5 })],
            ['bad_signature', other],
            ['bad_signature', `${gh}.${gp}.${'A'.repeat(43)}`],
            ['wrong_alg', signToken('none', null, claimsFor('tok-r'), { alg: 'none' })],
            ['wrong_alg', hs(claimsFor('tok-r'), { alg: 'RS256', typ: 'JWT' })],
            ['wrong_alg', hs(claimsFor('tok-r'), { alg: 'HS512' })],
            ['malformed', 'not-a-token'],
            ['malformed', `${gh}.${gp}`],
            ['malformed', hs(claimsFor('tok-r'), '["HS256"]')],
            ['unsupported_crit', hs(claimsFor('tok-r'), { alg: 'HS256', crit: ['exp'] })],
            ['no_sub', hs({ exp: t + 3600 })],
            ['bad_sub', hs({ sub: '', exp: t + 3600 })],
            ['bad_sub', hs({ sub: 'al\u0001ice', exp: t + 3600 })],
            ['bad_sub', hs({ sub: 'x'.repeat(129), exp: t + 3600 })],
            ['no_exp', hs({ sub: 'tok-r' })],
            ['no_exp', hs({ sub: 'tok-r', exp: String(t + 3600) })],
            ['not_yet_valid', hs(claimsFor('tok-r', 3600, { nbf: t + 120 }))],
            ['issued_in_future', hs(claimsFor('tok-r', 3600, { iat: t + 120 }))],
            ['bad_channels', hs(claimsFor('tok-r', 3600, { channels: 'doc:*' }))],
            ['bad_channels', hs(claimsFor('tok-r', 3600, { channels: Array.from({ length: 65 }, (_, i) => `r${i}`) }))],
            ['bad_channels', hs(claimsFor('tok-r', 3600, { channels: ['doc:*', 7] }))],
            ['bad_channels', hs(claimsFor('tok-r', 3600, { channels: ['x'.repeat(201)] }))],
        ];
        for (const [reason, tok] of cases) {
            await expectRefused(d, { path: q(tok) }, reason, `?token= ${reason}`);
            await expectRefused(d, { path: '/presence', headers: { Authorization: `Bearer ${tok}` } }, reason, `Bearer ${reason}`);
            // A refused token is not rescued by ?user= (the token takes precedence).
            await expectRefused(d, { path: q(tok, '&user=tok-r') }, reason, `?token= ${reason} with ?user=`);
        }
        // Too large: over 4096 bytes, in the query and in the header.
        const huge = hs(claimsFor('tok-r', 3600, { pad: 'p'.repeat(4000) }));
        assert.ok(huge.length > 4096);
        await expectRefused(d, { path: q(huge) }, 'too_large', '?token= too large');
        await expectRefused(d, { path: '/presence', headers: { Authorization: `Bearer ${huge}` } }, 'too_large', 'Bearer too large');
        // No credentials at all (no token, no ?user=).
        await expectRefused(d, { path: '/presence' }, 'no_credentials', 'no credentials');
        // The reason is in the log (at most 10 lines a second are written: start a new second).
        await sleep(1100);
        const mark = d.log.length;
        await expectRefused(d, { path: q(hs({ sub: 'tok-log', exp: t - 5 })) }, 'expired', 'logged');
        await eventually(() => /upgrade refused: expired\n/.test(d.log.slice(mark)), 3000, 'the refusal in the log');
        // Nothing of any of it opened a session: the metrics count no upgrade for tok-r.
        const c = await openClient(d, 'tok-check');
        assert.deepEqual(await c.getPresence(['tok-r']), {});
        await c.close();
    });
});

describe('tokens: issuer and audience', () => {
    let d, dir, secret;
    const hs = (claims) => signToken('HS256', secret, claims);
    before(async () => {
        dir = makeTemp();
        ({ secret } = writeSecret(dir));
        d = await startPresenced(['--token-secret-file', `${dir}/secret`,
            '--token-issuer', 'https://issuer.example', '--token-audience', 'presenced', '--offline-grace', '1']);
        await d.waitForLog(/tokens: HS256, issuer https:\/\/issuer\.example, audience presenced/);
    });
    after(async () => {
        await stopDaemon(d);
        rmTemp(dir);
    });

    test('iss must match; aud must be or contain the audience', T, async () => {
        const iss = 'https://issuer.example';
        for (const aud of ['presenced', ['other', 'presenced']]) {
            const c = await openTokenClient(d, hs(claimsFor('iss-ok', 3600, { iss, aud })), { expectUser: 'iss-ok' });
            await c.close();
        }
        const refused = [
            ['bad_issuer', { aud: 'presenced' }],
            ['bad_issuer', { iss: 'https://evil.example', aud: 'presenced' }],
            ['bad_issuer', { iss: [iss], aud: 'presenced' }],
            ['bad_audience', { iss }],
            ['bad_audience', { iss, aud: 'other' }],
            ['bad_audience', { iss, aud: ['other'] }],
            ['bad_audience', { iss, aud: [] }],
        ];
        for (const [reason, extra] of refused)
            await expectRefused(d, { path: q(hs(claimsFor('iss-r', 3600, extra))) }, reason, `${reason} ${JSON.stringify(extra)}`);
    });
});

for (const kind of ['RS256', 'ES256']) {
    describe(`tokens: ${kind} (--token-public-key)`, () => {
        let d, dir, keys, otherKeys;
        const type = kind === 'RS256' ? 'rsa' : 'ec';
        before(async () => {
            dir = makeTemp();
            keys = writeKeyPair(dir, type);
            otherKeys = writeKeyPair(dir, type, 'other.pem');
            d = await startPresenced(['--token-public-key', keys.file, '--offline-grace', '1']);
            await d.waitForLog(new RegExp(`tokens: ${kind}`));
        });
        after(async () => {
            await stopDaemon(d);
            rmTemp(dir);
        });

        test('valid by ?token= and Bearer; every refusal a bare 401 with its reason', T, async () => {
            const sign = (claims, header) => signToken(kind, keys.privateKey, claims, header);
            const a = await openTokenClient(d, sign(claimsFor('pk-alice')), { expectUser: 'pk-alice' });
            const b = await openTokenClient(d, sign(claimsFor('pk-bob')), { via: 'header', expectUser: 'pk-bob' });
            await a.close();
            await b.close();
            const t = Math.floor(epoch());
            const cases = [
                ['expired', sign({ sub: 'pk-r', exp: t - 1 })],
                ['bad_signature', signToken(kind, otherKeys.privateKey, claimsFor('pk-r'))],
                // The classic attack: HS256 "signed" with the public key file as the secret.
                ['wrong_alg', signToken('HS256', keys.pem, claimsFor('pk-r'))],
                ['wrong_alg', signToken('HS256', Buffer.from(keys.pem), claimsFor('pk-r'), { alg: 'HS256' })],
                ['wrong_alg', signToken('none', null, claimsFor('pk-r'), { alg: 'none' })],
                ['wrong_alg', sign(claimsFor('pk-r'), { alg: kind === 'RS256' ? 'ES256' : 'RS256' })],
                // The right alg on an HMAC made with the public key: the signature fails.
                ['bad_signature', signToken('HS256', keys.pem, claimsFor('pk-r'), { alg: kind })],
                ['no_sub', sign({ exp: t + 3600 })],
            ];
            for (const [reason, tok] of cases) {
                await expectRefused(d, { path: q(tok) }, reason, `${kind} ?token= ${reason}`);
                await expectRefused(d, { path: '/presence', headers: { Authorization: `Bearer ${tok}` } }, reason, `${kind} Bearer ${reason}`);
            }
        });
    });
}

describe('tokens: channels, expiry and refresh', () => {
    let d, dir, secret;
    const hs = (claims) => signToken('HS256', secret, claims);
    before(async () => {
        dir = makeTemp();
        ({ secret } = writeSecret(dir));
        d = await startPresenced(['--token-secret-file', `${dir}/secret`, '--offline-grace', '1']);
    });
    after(async () => {
        await stopDaemon(d);
        rmTemp(dir);
    });

    test('a room no channels pattern matches cannot be joined nor queried (forbidden)', T, async () => {
        const c = await openTokenClient(d, hs(claimsFor('ch-a', 3600, { channels: ['doc:*', 'team/?'] })), { expectUser: 'ch-a' });
        // An unrestricted member fills team/xy and other:1, so a leak would show in counts.
        const free = await openTokenClient(d, hs(claimsFor('ch-free')), { expectUser: 'ch-free' });
        for (const ch of ['team/xy', 'other:1', 'doc:7'])
            assert.equal((await ask(free, { type: 'join', channel: ch })).type, 'channel_state');

        const st = await ask(c, { type: 'join', channel: 'doc:7', metadata: { mode: 'viewing' } });
        assert.equal(st.type, 'channel_state', JSON.stringify(st));
        assert.equal(st.count, 2);
        assert.equal((await ask(c, { type: 'join', channel: 'team/a' })).type, 'channel_state');
        assert.equal((await ask(c, { type: 'channel_count', channel: 'doc:7' })).count, 2);
        assert.equal((await ask(c, { type: 'channel_members', channel: 'doc:7' })).count, 2);

        for (const ch of ['team/xy', 'other:1', 'docs:1', 'team/', 'xdoc:1']) {
            for (const type of ['join', 'channel_members', 'channel_count']) {
                const e = await askError(c, { type, channel: ch }, 'forbidden');
                assert.equal(e.message, 'the connection\'s token does not allow this channel');
            }
        }
        // Nothing of it joined: the unrestricted member still sees one member there.
        assert.equal((await ask(free, { type: 'channel_count', channel: 'team/xy' })).count, 1);
        assert.equal((await ask(free, { type: 'channel_count', channel: 'other:1' })).count, 1);
        // An empty channels list allows no room at all.
        const none = await openTokenClient(d, hs(claimsFor('ch-none', 3600, { channels: [] })), { expectUser: 'ch-none' });
        await askError(none, { type: 'join', channel: 'doc:7' }, 'forbidden');
        await askError(none, { type: 'channel_count', channel: 'doc:7' }, 'forbidden');
        for (const x of [c, free, none]) await x.close();
    });

    test('expiry closes with 4001 at exp; the metric counts it', T, async () => {
        const before = metricValue(await scrapeMetrics(d), 'presenced_token_expiries_total');
        const exp = epoch() + 2;
        const c = await openTokenClient(d, hs({ sub: 'exp-a', exp }), { expectUser: 'exp-a' });
        c.keepAlive(300); // WebSocket pings: liveness is not what ends it
        const w = await openTokenClient(d, hs(claimsFor('exp-w')), { expectUser: 'exp-w' });
        await c.ok({ type: 'set_online', device: 'web' });
        await w.subscribe(['exp-a']);
        const { code, reason } = await c.waitClose(6000);
        const at = epoch();
        assert.equal(code, 4001);
        assert.equal(reason, 'token expired');
        assert.ok(at >= exp - 0.05, `closed ${(exp - at).toFixed(3)} s before exp`);
        assert.ok(at <= exp + 1, `closed ${(at - exp).toFixed(3)} s after exp`);
        assert.equal(metricValue(await scrapeMetrics(d), 'presenced_token_expiries_total') - before, 1);
        // The session ended like a disconnect: offline after the grace.
        const p = await w.waitUpdate('exp-a', (x) => x.status === 'offline', 4000);
        assert.equal(p.status, 'offline');
        await w.close();
    });

    test('refresh before exp keeps the connection; channels and exp of the new token apply at once', T, async () => {
        const exp = epoch() + 2;
        const c = await openTokenClient(d, hs({ sub: 'ref-a', exp, channels: ['doc:*'] }), { expectUser: 'ref-a' });
        c.keepAlive(300);
        assert.equal((await ask(c, { type: 'join', channel: 'doc:1' })).type, 'channel_state');
        await askError(c, { type: 'join', channel: 'team/x' }, 'forbidden');

        // Refused refreshes change nothing and keep the connection.
        const e1 = await askError(c, { type: 'refresh', token: hs(claimsFor('ref-b', 60)) }, 'wrong_user');
        assert.equal(e1.message, 'the token is for another user than the connection\'s');
        const e2 = await askError(c, { type: 'refresh', token: signToken('HS256', 'y'.repeat(40), claimsFor('ref-a', 60)) }, 'bad_token');
        assert.equal(e2.message, 'the token was refused (bad_signature)');
        const e3 = await askError(c, { type: 'refresh', token: hs({ sub: 'ref-a', exp: epoch() - 1 }) }, 'bad_token');
        assert.equal(e3.message, 'the token was refused (expired)');
        const e4 = await askError(c, { type: 'refresh', token: 'garbage' }, 'bad_token');
        assert.equal(e4.message, 'the token was refused (malformed)');
        await askError(c, { type: 'join', channel: 'team/x' }, 'forbidden'); // channels unchanged

        // A later token of the same user: acknowledged, its channels now apply.
        const ack = await ask(c, { type: 'refresh', token: hs({ sub: 'ref-a', exp: epoch() + 60, channels: ['team/*'] }) });
        assert.deepEqual(Object.keys(ack), ['type', 'id']);
        assert.equal(ack.type, 'ack');
        assert.equal((await ask(c, { type: 'join', channel: 'team/x' })).type, 'channel_state');
        await askError(c, { type: 'join', channel: 'doc:2' }, 'forbidden');
        await askError(c, { type: 'channel_count', channel: 'doc:1' }, 'forbidden');

        // Past the first exp (and a margin): still open.
        const wait = (exp + 1.2 - epoch()) * 1000;
        if (wait > 0) await sleep(wait);
        assert.equal(c.closeInfo, null, `closed: ${JSON.stringify(c.closeInfo)}`);
        assert.equal((await ask(c, { type: 'ping' })).type, 'pong');

        // A refresh to an earlier exp applies too: closed with 4001 at that exp.
        const exp2 = epoch() + 1.5;
        assert.equal((await ask(c, { type: 'refresh', token: hs({ sub: 'ref-a', exp: exp2 }) })).type, 'ack');
        const { code } = await c.waitClose(5000);
        const at = epoch();
        assert.equal(code, 4001);
        assert.ok(at >= exp2 - 0.05 && at <= exp2 + 1, `closed at exp2 ${(at - exp2).toFixed(3)}`);
    });

    test('refresh without an id answers only errors', T, async () => {
        const c = await openTokenClient(d, hs(claimsFor('ref-n', 60)), { expectUser: 'ref-n' });
        await c.send({ type: 'refresh', token: hs(claimsFor('ref-n', 120)) });
        await c.send({ type: 'refresh', token: hs(claimsFor('ref-other', 120)) });
        const e = await c.waitFor((m) => m.type === 'error', 3000, 'the wrong_user error');
        assert.deepEqual(e, { type: 'error', code: 'wrong_user', message: 'the token is for another user than the connection\'s' });
        await c.expectNone((m) => m.type === 'ack' || m.type === 'error', 300, 'another answer');
        await c.close();
    });

    test('a dev-auth connection (no token) has no exp; refresh gives it the token\'s', T, async () => {
        const c = await openClient(d, 'dev-x');
        c.keepAlive(300);
        await sleep(300);
        assert.equal(c.closeInfo, null);
        await askError(c, { type: 'refresh', token: hs(claimsFor('dev-y', 60)) }, 'wrong_user');
        const exp = epoch() + 1.5;
        assert.equal((await ask(c, { type: 'refresh', token: hs({ sub: 'dev-x', exp }) })).type, 'ack');
        const t0 = now();
        const { code } = await c.waitClose(5000);
        assert.equal(code, 4001, `closed after ${(now() - t0).toFixed(0)} ms`);
        await closeAll(d);
    });
});

describe('tokens: none configured', () => {
    let d;
    before(async () => {
        d = await startPresenced(['--offline-grace', '1']);
    });
    after(async () => {
        await stopDaemon(d);
    });

    test('a token is refused (tokens_disabled) even with ?user=; refresh is bad_token', T, async () => {
        const tok = signToken('HS256', 's'.repeat(32), claimsFor('td-a'));
        await expectRefused(d, { path: q(tok, '&user=td-a') }, 'tokens_disabled', 'token without a key');
        const c = await openClient(d, 'td-a');
        const e = await askError(c, { type: 'refresh', token: tok }, 'bad_token');
        assert.equal(e.message, 'the token was refused (tokens_disabled)');
        assert.equal((await ask(c, { type: 'ping' })).type, 'pong');
        await c.close();
    });
});
