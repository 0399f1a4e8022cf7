// Inputs an attack campaign found accepted though the protocol refuses them, against the real
// daemon over raw sockets:
//  - a WebSocket upgrade with Sec-WebSocket-Key, Sec-WebSocket-Version or Origin given twice
//    is 400 (a proxy may check one and the server use the other);
//  - a message with a UTF-8 byte order mark, a control byte between JSON tokens, or a \u
//    escape whose digits are not hex (which cJSON reads as U+0000, cutting the string short)
//    is bad_json, and the connection stays usable;
//  - a token whose exp is past year 9999 (1e300 made the expiry timer's conversion to
//    milliseconds overflow: undefined behaviour, a UBSan abort), or whose nbf / iat is out of
//    range, is refused with its reason; the last second of year 9999 is still fine.
// Each daemon is stopped at the end with exit 0 (no sanitizer report).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
    buildFrame,
    metricValue,
    rawConnect,
    rawWsConnect,
    scrapeMetrics,
    startDaemon,
    upgradeRequest,
} from './lib/daemon.mjs';
import { claimsFor, makeTemp, rmTemp, signToken, writeSecret } from './lib/auth.mjs';

const T = { timeout: 20000 };
const ORIGIN = 'http://allowed.example';

/** The upgrade request of opts with raw header lines added before the blank line. */
function upgradeWith(lines, opts = {}) {
    const { text } = upgradeRequest(opts);
    return text.slice(0, -2) + lines.map((l) => `${l}\r\n`).join('') + '\r\n';
}

async function statusOf(d, text) {
    const c = await rawConnect(d);
    try {
        await c.write(text);
        const r = await c.readResponse(5000);
        if (r.status !== 101) await c.waitEnd(5000);
        return r;
    } finally {
        c.destroy();
    }
}

/** Sends payload (a Buffer or string) as one text frame; returns the JSON answer. */
async function ask(c, payload) {
    await c.write(buildFrame({ opcode: 1, payload: Buffer.from(payload, 'latin1') }));
    const f = await c.readFrame(5000);
    assert.equal(f.opcode, 1, `answer opcode ${f.opcode}`);
    return JSON.parse(f.payload.toString('utf8'));
}

describe('strict handshake and JSON', () => {
    let d;
    before(async () => {
        d = await startDaemon(['--allow-origin', ORIGIN]);
    });
    after(async () => {
        if (d) await d.kill();
    });

    test('repeated Sec-WebSocket-Key, Sec-WebSocket-Version or Origin -> 400', T, async () => {
        const cases = [
            ['Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='],
            ['sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA=='],
            ['Sec-WebSocket-Version: 13'],
            ['SEC-WEBSOCKET-VERSION: 8'],
            [`Origin: ${ORIGIN}`, `Origin: ${ORIGIN}`],
            [`Origin: ${ORIGIN}`, 'origin: http://evil.example'],
            ['Origin: http://evil.example', `Origin: ${ORIGIN}`],
        ];
        const accepted = [];
        for (const lines of cases) {
            const r = await statusOf(d, upgradeWith(lines));
            if (r.status !== 400) accepted.push(`${JSON.stringify(lines)} -> ${r.status}`);
        }
        assert.deepEqual(accepted, [], 'repeated handshake headers not refused 400');
        // One of each is still fine.
        const ok = await statusOf(d, upgradeWith([`Origin: ${ORIGIN}`]));
        assert.equal(ok.status, 101, ok.head);
    });

    test('BOM, control bytes between tokens, bad \\u escapes -> bad_json; the connection goes on', T, async () => {
        const c = await rawWsConnect(d, { user: 'strict-json' });
        try {
            const before = await scrapeMetrics(d);
            const bad = [
                '{"type":\x01"ping","id":1}',
                '\x0b{"type":"ping","id":2}',
                '{"type":"ping","id":3}\x1f',
                '{"type":"ping",\x7f"id":4}',
                '\xef\xbb\xbf{"type":"ping","id":5}',
                '{"type":"subscribe","user_ids":["bob\\uzzzzx"],"id":6}',
                '{"type":"set_online","device":"we\\u00g1b","id":7}',
            ];
            for (const m of bad) {
                const a = await ask(c, m);
                assert.equal(a.type, 'error', `${JSON.stringify(m)}: ${JSON.stringify(a)}`);
                assert.equal(a.code, 'bad_json', `${JSON.stringify(m)}: ${JSON.stringify(a)}`);
            }
            const after = await scrapeMetrics(d);
            assert.equal(metricValue(after, 'presenced_protocol_errors_total', { code: 'bad_json' }) -
                metricValue(before, 'presenced_protocol_errors_total', { code: 'bad_json' }), bad.length);
            // RFC 8259 whitespace is fine, and so is U+FEFF inside a string.
            assert.deepEqual(await ask(c, ' \t\r\n{ "type" :\t"ping" , "id" : 8 }\r\n'), { type: 'pong', id: 8 });
            const s = await ask(c, '{"type":"set_online","device":"web","custom_status":"\xef\xbb\xbfhi","id":9}');
            assert.equal(s.type, 'ack', JSON.stringify(s));
        } finally {
            c.destroy();
        }
    });

    test('SIGTERM: exits 0', T, async () => {
        await d.stop();
        d = null;
    });
});

describe('token times out of range', () => {
    let d, dir, secret;
    const hs = (claims) => signToken('HS256', secret, claims);
    const q = (tok) => `/presence?token=${encodeURIComponent(tok)}`;
    before(async () => {
        dir = makeTemp();
        ({ secret } = writeSecret(dir));
        d = await startDaemon(['--token-secret-file', `${dir}/secret`]);
        await d.waitForLog(/tokens: HS256/);
    });
    after(async () => {
        if (d) await d.kill();
        rmTemp(dir);
    });

    test('exp past year 9999, nbf or iat out of range: 401 with the reason', T, async () => {
        const t = Math.floor(Date.now() / 1000);
        const cases = [
            ['bad_exp', { sub: 'tok-x', exp: 1e300 }],
            ['bad_exp', { sub: 'tok-x', exp: 253402300800 }],
            ['bad_exp', { sub: 'tok-x', exp: Number.MAX_VALUE }],
            ['bad_nbf', { sub: 'tok-x', exp: t + 3600, nbf: -1 }],
            ['bad_nbf', { sub: 'tok-x', exp: t + 3600, nbf: -1e300 }],
            ['bad_iat', { sub: 'tok-x', exp: t + 3600, iat: 1e300 }],
            ['bad_iat', { sub: 'tok-x', exp: t + 3600, iat: -5 }],
            ['expired', { sub: 'tok-x', exp: -1e300 }],
        ];
        for (const [reason, claims] of cases) {
            const before = metricValue(await scrapeMetrics(d), 'presenced_auth_failures_total', { reason });
            const r = await statusOf(d, upgradeRequest({ path: q(hs(claims)) }).text);
            assert.equal(r.status, 401, `${JSON.stringify(claims)}: ${r.head}`);
            const now = metricValue(await scrapeMetrics(d), 'presenced_auth_failures_total', { reason });
            assert.equal(now - before, 1, `${JSON.stringify(claims)}: not counted as ${reason}`);
        }
    });

    test('exp at the last second of year 9999 opens a connection that works', T, async () => {
        const c = await rawConnect(d);
        try {
            const { text } = upgradeRequest({ path: q(hs({ sub: 'tok-far', exp: 253402300799 })) });
            await c.write(text);
            assert.equal((await c.readResponse(5000)).status, 101);
            const w = JSON.parse((await c.readFrame(5000)).payload.toString('utf8'));
            assert.equal(w.user_id, 'tok-far');
            assert.deepEqual(await ask(c, '{"type":"ping","id":1}'), { type: 'pong', id: 1 });
            // refresh with an exp out of range: bad_token, the connection stays.
            const a = await ask(c, JSON.stringify({ type: 'refresh', token: hs({ sub: 'tok-far', exp: 1e300 }), id: 2 }));
            assert.equal(a.code, 'bad_token', JSON.stringify(a));
            assert.match(a.message, /bad_exp/);
            const ok = await ask(c, JSON.stringify({ type: 'refresh', token: hs(claimsFor('tok-far')), id: 3 }));
            assert.equal(ok.type, 'ack', JSON.stringify(ok));
            assert.deepEqual(await ask(c, '{"type":"ping","id":4}'), { type: 'pong', id: 4 });
        } finally {
            c.destroy();
        }
    });

    test('SIGTERM: exits 0 (no UBSan report)', T, async () => {
        await d.stop();
        d = null;
    });
});
