// WebSocket core of presenced (RFC 6455) against the real daemon.
//  - With Node `ws`: handshake, ping -> pong round trips, error replies, messages at the
//    --max-message limit, fragmented messages, control ping/pong, close code echo, shutdown
//    (SIGINT: 1001; SIGTERM drains: 1012) and --heartbeat-ttl (4000).
//  - With raw sockets, reading the server's close frame: handshake refusals with their exact
//    HTTP status, and every protocol violation with its exact close code (1002, 1003, 1007,
//    1009); after each, a fresh client still works, and /metrics counted it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
    assertWsHealthy,
    buildFrame,
    closePayload,
    frameHeader,
    metricValue,
    openWs,
    rawConnect,
    rawWsConnect,
    scrapeMetrics,
    sleep,
    startDaemon,
    upgradeRequest,
    waitForMetrics,
    withTimeout,
} from './lib/daemon.mjs';

const T = { timeout: 20000 }; // per-test bound
const MAX_MESSAGE = 8192;
const ALLOWED_ORIGIN = 'http://allowed.example';

const OP = { CONT: 0, TEXT: 1, BIN: 2, CLOSE: 8, PING: 9, PONG: 10 };
const PING = '{"type":"ping"}';
const PONG = '{"type":"pong"}';

/** A JSON ping message of exactly n bytes (padded with JSON whitespace). */
function pingOfSize(n) {
    assert.ok(n >= PING.length);
    const s = `{"type":"ping"${' '.repeat(n - PING.length)}}`;
    assert.equal(Buffer.byteLength(s), n);
    return s;
}

const text = (payload, o = {}) => buildFrame({ opcode: OP.TEXT, payload, ...o });
const cont = (payload, o = {}) => buildFrame({ opcode: OP.CONT, payload, ...o });
const closeFrame = (code, reason) => buildFrame({ opcode: OP.CLOSE, payload: closePayload(code, reason) });

describe('ws core', () => {
    let d;

    before(async () => {
        d = await startDaemon([
            '--max-message', String(MAX_MESSAGE),
            '--allow-origin', ALLOWED_ORIGIN,
            '--close-timeout', '2',
        ]);
    });
    after(async () => {
        if (d) await d.kill(); // only after a failure: the last test stops it and checks
    });

    // -------------------------------------------------------------------------------------
    // Node ws

    test('handshake: 101, no extension or subprotocol, counted as open', T, async () => {
        const before = await scrapeMetrics(d);
        const c = await openWs(d, { user: 'alice' });
        assert.equal(c.ws.protocol, '');
        assert.equal(c.ws.extensions, '', 'permessage-deflate offered by ws must not be accepted');
        await waitForMetrics(d, (m) => metricValue(m, 'presenced_websockets_open') === metricValue(before, 'presenced_websockets_open') + 1,
            5000, 'websockets_open + 1');
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_ws_upgrades_total'), metricValue(before, 'presenced_ws_upgrades_total') + 1);
        assert.equal((await c.close(1000)).code, 1000);
        await waitForMetrics(d, (x) => metricValue(x, 'presenced_websockets_open') === metricValue(before, 'presenced_websockets_open'),
            5000, 'websockets_open back');
    });

    test('text round trip: ping -> pong, in order, many times', T, async () => {
        const c = await openWs(d);
        for (let i = 0; i < 5; i++) {
            await c.send(PING);
            assert.equal(await c.next(), PONG);
        }
        // 200 in a burst: 200 answers, in order, nothing else.
        for (let i = 0; i < 200; i++) c.ws.send(PING);
        for (let i = 0; i < 200; i++) assert.equal(await c.next(), PONG, `answer ${i}`);
        await sleep(50);
        assert.equal(c.queue.length, 0);
        await c.close();
    });

    test('unknown or malformed message -> error, connection stays open', T, async () => {
        const c = await openWs(d);
        // Exact codes for the two cases the network core cares about (docs/PROTOCOL.md); any
        // other bad message just gets an error and the connection goes on.
        const cases = [
            ['{"type":"no_such_type"}', 'unknown_type'],
            ['{"type":"PING"}', 'unknown_type'],
            ['{"type":"ping"', 'bad_json'],
            ['not json at all', 'bad_json'],
            ['', 'bad_json'],
            ['{"kind":"ping"}', null],
            ['{"type":42}', null],
            ['[1,2,3]', null],
            ['"ping"', null],
            ['{"type":"ping","unknown_field":1}', null],
        ];
        for (const [msg, code] of cases) {
            await c.send(msg);
            const r = await c.nextJson();
            assert.equal(r.type, 'error', msg);
            if (code) assert.equal(r.code, code, msg);
            assert.match(r.code, /^[a-z_]+$/, msg);
            assert.equal(typeof r.message, 'string');
        }
        await c.send(PING);
        assert.equal(await c.next(), PONG);
        assert.equal((await c.close()).code, 1000);
    });

    test('messages up to --max-message pass; one byte more -> 1009', T, async () => {
        const c = await openWs(d);
        for (const n of [MAX_MESSAGE - 1, MAX_MESSAGE, 125, 126, 127, 65535 % MAX_MESSAGE]) {
            await c.send(pingOfSize(n));
            assert.equal(await c.next(), PONG, `size ${n}`);
        }
        // Exactly the limit in fragments.
        const exact = pingOfSize(MAX_MESSAGE);
        await c.send(exact.slice(0, 3000), { fin: false });
        await c.send(exact.slice(3000, 6000), { fin: false });
        await c.send(exact.slice(6000), { fin: true });
        assert.equal(await c.next(), PONG);
        await c.send(pingOfSize(MAX_MESSAGE + 1));
        const { code, reason } = await c.waitClose();
        assert.equal(code, 1009);
        assert.equal(reason, 'message too big');

        // One byte over, in fragments: refused at the fragment that crosses the limit.
        const c2 = await openWs(d);
        const over = pingOfSize(MAX_MESSAGE + 1);
        await c2.send(over.slice(0, 5000), { fin: false });
        await c2.send(over.slice(5000), { fin: true }).catch(() => {});
        assert.equal((await c2.waitClose()).code, 1009);
        await assertWsHealthy(d);
    });

    test('fragmented messages are reassembled', T, async () => {
        const c = await openWs(d);
        await c.send('{"type"', { fin: false });
        await c.send(':"pi', { fin: false });
        await c.send('ng"}', { fin: true });
        assert.equal(await c.next(), PONG);
        // A multi-byte character split across fragments is valid text.
        const msg = Buffer.from('{"type":"ping","id":"é€𝄞"}');
        const at = msg.indexOf(0xe2) + 1; // inside the euro sign
        await c.send(msg.subarray(0, at), { fin: false, binary: false });
        await c.send(msg.subarray(at), { fin: true, binary: false });
        assert.deepEqual(await c.nextJson(), { type: 'pong', id: 'é€𝄞' }, 'the id survives reassembly');
        // One byte per fragment.
        const one = Buffer.from(PING);
        for (let i = 0; i < one.length; i++) await c.send(one.subarray(i, i + 1), { fin: i === one.length - 1, binary: false });
        assert.equal(await c.next(), PONG);
        // Empty fragments around the content.
        await c.send('', { fin: false });
        await c.send(PING, { fin: false });
        await c.send('', { fin: true });
        assert.equal(await c.next(), PONG);
        // Unknown type, fragmented: the error comes after the last fragment only.
        await c.send('{"type":', { fin: false });
        await sleep(50);
        assert.equal(c.queue.length, 0, 'nothing before the final fragment');
        await c.send('"nope"}', { fin: true });
        assert.equal((await c.nextJson()).code, 'unknown_type');
        assert.equal((await c.close()).code, 1000);
    });

    test('control ping -> pong with the same payload', T, async () => {
        const c = await openWs(d);
        const pongs = [];
        c.ws.on('pong', (p) => pongs.push(p.toString('latin1')));
        const payloads = ['', 'hello', 'x'.repeat(125), '\u00ff\u0000\u0001'];
        for (const p of payloads) c.ws.ping(Buffer.from(p, 'latin1'));
        await withTimeout((async () => {
            while (pongs.length < payloads.length) await sleep(10);
        })(), 5000, 'pongs');
        assert.deepEqual(pongs, payloads);
        // An unsolicited pong is ignored; the connection goes on.
        c.ws.pong(Buffer.from('unsolicited'));
        await c.send(PING);
        assert.equal(await c.next(), PONG);
        assert.equal((await c.close()).code, 1000);
    });

    test('clean close: the code is echoed, then the server closes TCP', T, async () => {
        for (const [code, reason] of [[1000, ''], [1001, 'going'], [4321, 'bye'], [3000, 'x'.repeat(123)]]) {
            const c = await openWs(d);
            const r = await c.close(code, reason);
            assert.equal(r.code, code, `echo of ${code}`);
            // RFC 6455 5.5.1: the reason need not be echoed; if it is, it is the same.
            assert.ok(r.reason === '' || r.reason === reason, `reason ${JSON.stringify(r.reason)}`);
        }
        // A close without a code is answered with a close without a code (ws reports 1005).
        const c = await openWs(d);
        c.ws.close();
        assert.equal((await c.waitClose()).code, 1005);
        await assertWsHealthy(d);
    });

    // -------------------------------------------------------------------------------------
    // Raw sockets: handshake refusals

    async function expectHandshakeRefused(opts, status, check = () => {}) {
        const c = await rawConnect(d);
        try {
            await c.write(upgradeRequest(opts).text);
            const r = await c.readResponse(5000);
            assert.equal(r.status, status, `${JSON.stringify(opts)}: ${r.head}`);
            assert.equal(r.headers.connection, 'close');
            check(r);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
    }

    test('bad handshakes get exact HTTP statuses', T, async () => {
        const before = await scrapeMetrics(d);
        const counts = {};
        const refuse = async (opts, status, check) => {
            await expectHandshakeRefused(opts, status, check);
            counts[status] = (counts[status] ?? 0) + 1;
            await assertWsHealthy(d);
        };
        // No Upgrade header (a plain GET of the WebSocket path): 426 with what to upgrade to.
        await refuse({ headers: { Upgrade: null } }, 426, (r) => {
            assert.equal(r.headers['sec-websocket-version'], '13');
            assert.match(r.headers.upgrade, /^websocket$/i);
        });
        await refuse({ headers: { Upgrade: 'h2c' } }, 426);
        await refuse({ headers: { Upgrade: null, Connection: null, 'Sec-WebSocket-Key': null, 'Sec-WebSocket-Version': null } }, 426);
        // Wrong or missing version: 426 naming the version spoken.
        for (const v of ['8', '12', '14', '13, 8', null]) {
            await refuse({ headers: { 'Sec-WebSocket-Version': v } }, 426, (r) => {
                assert.equal(r.headers['sec-websocket-version'], '13');
            });
        }
        // Bad keys: not base64 of 16 bytes.
        for (const k of ['abc', 'AAAAAAAAAAAAAAAAAAAAAA=', 'AAAAAAAAAAAAAAAAAAAAAAAA', 'AAAAAAAAAAAAAAAAAAAA!A==',
            'AAAAAAAAAAAAAAAAAAAAAB==', Buffer.alloc(20).toString('base64'), null]) {
            await refuse({ headers: { 'Sec-WebSocket-Key': k } }, 400);
        }
        // Not GET: 405 with Allow: GET.
        for (const m of ['POST', 'PUT', 'DELETE']) {
            await refuse({ method: m, headers: { 'Content-Length': '0' } }, 405, (r) => assert.equal(r.headers.allow, 'GET'));
        }
        // Connection must carry the exact token "upgrade".
        for (const conn of ['Upgraded', 'keep-alive', 'upgrade-please', null]) {
            await refuse({ headers: { Connection: conn } }, 400);
        }
        // HTTP/1.0 cannot upgrade.
        await refuse({ version: 'HTTP/1.0' }, 400);
        // Origin not in --allow-origin.
        for (const o of ['http://evil.example', 'http://allowed.example.evil', 'https://allowed.example', 'null']) {
            await refuse({ headers: { Origin: o } }, 403);
        }
        const m = await scrapeMetrics(d);
        for (const [status, n] of Object.entries(counts)) {
            assert.equal(
                metricValue(m, 'presenced_ws_handshake_failures_total', { status }) -
                    metricValue(before, 'presenced_ws_handshake_failures_total', { status }),
                n, `handshake failures counted for ${status}`);
        }
    });

    test('good handshakes: allowed Origin, token lists, case-insensitive names', T, async () => {
        const variants = [
            { headers: { Origin: ALLOWED_ORIGIN } },
            { headers: { Connection: 'keep-alive, Upgrade' } },
            { headers: { Upgrade: 'WebSocket', Connection: 'UPGRADE' } },
            { headers: { 'Sec-WebSocket-Extensions': 'permessage-deflate; client_max_window_bits' } },
        ];
        for (const v of variants) {
            const c = await rawConnect(d);
            try {
                const req = upgradeRequest(v);
                await c.write(req.text.replace('Sec-WebSocket-Version', 'sec-websocket-version'));
                const r = await c.readResponse(5000);
                assert.equal(r.status, 101, JSON.stringify(v));
                assert.equal(r.headers['sec-websocket-extensions'], undefined, 'no extension negotiated');
                assert.equal(JSON.parse((await c.readFrame()).payload.toString()).type, 'welcome');
                await c.write(text(PING));
                const f = await c.readFrame();
                assert.equal(f.opcode, OP.TEXT);
                assert.equal(f.masked, false, 'server frames are not masked');
                assert.equal(f.payload.toString(), PONG);
            } finally {
                c.destroy();
            }
        }
        // With Node ws and the allowed origin.
        const c = await openWs(d, { origin: ALLOWED_ORIGIN });
        await c.close();
    });

    test('Upgrade on another path is a plain request (no protocol switch)', T, async () => {
        const c = await rawConnect(d);
        try {
            await c.write(upgradeRequest({ path: '/healthz' }).text);
            const r = await c.readResponse(5000);
            assert.equal(r.status, 200);
            assert.equal(r.body, 'ok\n');
        } finally {
            c.destroy();
        }
    });

    // -------------------------------------------------------------------------------------
    // Raw sockets: framing that works

    test('frames sent with the handshake, split byte by byte, or many per write', T, async () => {
        // The first frame in the same write as the upgrade request.
        const a = await rawWsConnect(d, { after: text(PING) });
        try {
            assert.equal((await a.readFrame()).payload.toString(), PONG);
        } finally {
            a.destroy();
        }
        const c = await rawWsConnect(d);
        try {
            // One byte per write, a 16-bit-length frame.
            const big = text(pingOfSize(300));
            for (let i = 0; i < big.length; i++) await c.write(big.subarray(i, i + 1));
            assert.equal((await c.readFrame()).payload.toString(), PONG);
            // 100 frames in one write, answered in order.
            await c.write(Buffer.concat(Array.from({ length: 100 }, () => text(PING))));
            for (let i = 0; i < 100; i++) assert.equal((await c.readFrame()).payload.toString(), PONG, `frame ${i}`);
            // A ping between the fragments of a message is answered at once.
            await c.write(Buffer.concat([
                text('{"type":', { fin: false }),
                buildFrame({ opcode: OP.PING, payload: 'mid' }),
                cont('"ping"}'),
            ]));
            const p = await c.readFrame();
            assert.equal(p.opcode, OP.PONG);
            assert.equal(p.payload.toString(), 'mid');
            assert.equal((await c.readFrame()).payload.toString(), PONG);
            // Empty fragments: first, middle or all of a message.
            await c.write(Buffer.concat([text('', { fin: false }), cont(PING, { fin: false }), cont('', { fin: false }), cont('')]));
            assert.equal((await c.readFrame()).payload.toString(), PONG);
            await c.write(Buffer.concat([text('', { fin: false }), cont('')]));
            assert.equal(JSON.parse((await c.readFrame()).payload.toString()).code, 'bad_json');
            await c.write(text(''));
            assert.equal(JSON.parse((await c.readFrame()).payload.toString()).code, 'bad_json');
            // An unsolicited pong frame is ignored.
            await c.write(Buffer.concat([buildFrame({ opcode: OP.PONG, payload: 'x' }), text(PING)]));
            assert.equal((await c.readFrame()).payload.toString(), PONG);
            // The 64-bit length form is used only past 65535; within --max-message, 16-bit.
            await c.write(text(pingOfSize(MAX_MESSAGE)));
            assert.equal((await c.readFrame()).payload.toString(), PONG);
            // Close: echoed, then the server ends TCP.
            await c.write(closeFrame(1000, 'done'));
            const cl = await c.readClose();
            assert.equal(cl.code, 1000);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
    });

    test('valid close codes are echoed; an empty close is answered empty', T, async () => {
        for (const code of [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]) {
            const c = await rawWsConnect(d);
            try {
                await c.write(closeFrame(code, 'r'));
                const cl = await c.readClose();
                assert.equal(cl.code, code);
                await c.waitEnd(5000);
            } finally {
                c.destroy();
            }
        }
        const c = await rawWsConnect(d);
        try {
            await c.write(closeFrame(null));
            const cl = await c.readClose();
            assert.equal(cl.code, null);
            assert.equal(cl.frame.payload.length, 0);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
    });

    // -------------------------------------------------------------------------------------
    // Raw sockets: protocol violations and their exact close codes

    const u8 = (...b) => Buffer.from(b);
    const violations = [
        ['unmasked text frame', [buildFrame({ payload: PING, mask: false })], 1002],
        ['unmasked ping', [buildFrame({ opcode: OP.PING, payload: 'x', mask: false })], 1002],
        ...[3, 4, 5, 6, 7].map((op) => [`reserved data opcode ${op}`, [buildFrame({ opcode: op, payload: 'x' })], 1002]),
        ...[0xb, 0xc, 0xd, 0xe, 0xf].map((op) => [`reserved control opcode ${op}`, [buildFrame({ opcode: op })], 1002]),
        ...[1, 2, 4].map((rsv) => [`RSV bits ${rsv} on text`, [buildFrame({ payload: PING, rsv })], 1002]),
        ['RSV1 on ping', [buildFrame({ opcode: OP.PING, rsv: 4 })], 1002],
        ['invalid UTF-8: 0xFF', [text(u8(0x7b, 0xff, 0x7d))], 1007],
        ['invalid UTF-8: overlong /', [text(u8(0xc0, 0xaf))], 1007],
        ['invalid UTF-8: surrogate', [text(u8(0xed, 0xa0, 0x80))], 1007],
        ['invalid UTF-8: above U+10FFFF', [text(u8(0xf4, 0x90, 0x80, 0x80))], 1007],
        ['invalid UTF-8: truncated at the end', [text(u8(0x61, 0xe2, 0x82))], 1007],
        ['invalid UTF-8 across fragments', [text(u8(0x7b, 0xc3), { fin: false }), cont(u8(0x28, 0x7d))], 1007],
        ['truncated UTF-8 at the last fragment', [text(u8(0x7b, 0x22), { fin: false }), cont(u8(0xe2, 0x82))], 1007],
        ['invalid UTF-8 in a close reason', [closeFrame(1000, u8(0xff))], 1007],
        ['oversize message (header only, 16-bit length)', [frameHeader({ len: MAX_MESSAGE + 1 }).header], 1009],
        ['oversize message (header only, 64-bit length)', [frameHeader({ len: 2 ** 40 }).header], 1009],
        ['oversize across fragments', [text('x'.repeat(5000), { fin: false }), frameHeader({ opcode: OP.CONT, len: 4000 }).header], 1009],
        ['oversize binary (size is checked first)', [frameHeader({ opcode: OP.BIN, len: MAX_MESSAGE + 1 }).header], 1009],
        ...[1005, 1006, 999, 5000, 0, 1004, 1015, 1016, 2999, 65535].map((code) => [`invalid close code ${code}`, [closeFrame(code)], 1002]),
        ['close with a 1-byte payload', [buildFrame({ opcode: OP.CLOSE, payload: u8(0x03) })], 1002],
        ['binary message', [buildFrame({ opcode: OP.BIN, payload: u8(1, 2, 3) })], 1003],
        ['fragmented binary message', [buildFrame({ opcode: OP.BIN, payload: u8(1), fin: false })], 1003],
        ['fragmented ping', [buildFrame({ opcode: OP.PING, payload: 'a', fin: false })], 1002],
        ['fragmented close', [buildFrame({ opcode: OP.CLOSE, payload: closePayload(1000), fin: false })], 1002],
        ['ping over 125 bytes', [buildFrame({ opcode: OP.PING, payload: 'p'.repeat(126) })], 1002],
        ['continuation without a start', [cont(PING)], 1002],
        ['new text frame inside a fragmented message', [text('{"a":', { fin: false }), text(PING)], 1002],
        ['non-minimal 16-bit length', [Buffer.concat([frameHeader({ len: 5, lenForm: 16 }).header, Buffer.from('12345')])], 1002],
        ['non-minimal 64-bit length', [Buffer.concat([frameHeader({ len: 200, lenForm: 64 }).header, Buffer.alloc(200, 0x20)])], 1002],
        ['64-bit length with the top bit set', [frameHeader({ len: 2n ** 63n + 1n, lenForm: 64 }).header], 1002],
    ];
    const REASONS = { 1002: 'protocol error', 1003: 'binary messages are not supported', 1007: 'invalid UTF-8', 1009: 'message too big' };

    test('protocol violations close with the exact code; a fresh client still works; metrics count them', { timeout: 120000 }, async () => {
        const before = await scrapeMetrics(d);
        const expected = {};
        for (const [name, frames, code] of violations) {
            const c = await rawWsConnect(d, { user: 'bad' });
            try {
                // Frames in separate writes: a violation in a later frame must be seen there.
                for (const f of frames) if (!(await c.writeQuiet(f))) break;
                const cl = await c.readClose(5000);
                assert.equal(cl.code, code, `${name}: closed with ${cl.code} (${cl.reason})`);
                assert.equal(cl.reason, REASONS[code], name);
                assert.deepEqual(cl.before.map((f) => f.opcode), [], `${name}: nothing before the close`);
                // Complete the handshake; the server then ends TCP.
                await c.writeQuiet(closeFrame(code === 1002 ? 1000 : code));
                await c.waitEnd(5000);
                assert.equal(c.buf.length, 0, `${name}: nothing after the close frame`);
            } catch (e) {
                e.message = `${name}: ${e.message}`;
                throw e;
            } finally {
                c.destroy();
            }
            expected[code] = (expected[code] ?? 0) + 1;
            await assertWsHealthy(d);
        }
        const m = await scrapeMetrics(d);
        for (const [code, n] of Object.entries(expected)) {
            const delta = (name) => metricValue(m, name, { code }) - metricValue(before, name, { code });
            assert.equal(delta('presenced_ws_protocol_errors_total'), n, `protocol errors counted for ${code}`);
            assert.equal(delta('presenced_ws_closes_sent_total'), n, `close frames sent counted for ${code}`);
        }
        assert.equal(metricValue(m, 'presenced_ws_binary_refused_total') - metricValue(before, 'presenced_ws_binary_refused_total'), 2);
    });

    test('a peer that never answers our close frame is dropped after --close-timeout', T, async () => {
        const c = await rawWsConnect(d);
        try {
            const t0 = Date.now();
            await c.write(buildFrame({ opcode: OP.BIN, payload: 'x' }));
            assert.equal((await c.readClose()).code, 1003);
            // Frames after the server's close are discarded, not answered.
            await c.write(text(PING));
            await c.waitEnd(6000);
            const elapsed = (Date.now() - t0) / 1000;
            assert.ok(elapsed >= 1.8, `dropped before --close-timeout: ${elapsed} s`);
            assert.equal(c.buf.length, 0, 'nothing after the close frame');
        } finally {
            c.destroy();
        }
        await assertWsHealthy(d);
    });

    test('a client that drops TCP mid-frame does not disturb others', T, async () => {
        const other = await openWs(d, { user: 'bystander' });
        for (let i = 0; i < 10; i++) {
            const c = await rawWsConnect(d);
            await c.write(text(pingOfSize(4000)).subarray(0, 1000 + i * 100)); // an incomplete frame
            c.destroy();
        }
        const c = await rawWsConnect(d);
        await c.write(text('{"type":', { fin: false })); // an incomplete message
        c.destroy();
        await other.send(PING);
        assert.equal(await other.next(), PONG);
        await other.close();
        await waitForMetrics(d, (m) => metricValue(m, 'presenced_websockets_open') === 0, 5000, 'no open websocket left');
    });

    test('SIGINT: open clients get 1001, the daemon exits 0', T, async () => {
        const clients = [];
        for (let i = 0; i < 3; i++) clients.push(await openWs(d, { user: `s${i}` }));
        // One mid-way through a fragmented message.
        await clients[2].send('{"type":', { fin: false });
        const raw = await rawWsConnect(d);
        d.signal('SIGINT');
        for (const c of clients) {
            const r = await c.waitClose(5000);
            assert.equal(r.code, 1001);
            assert.equal(r.reason, 'server shutting down');
        }
        const cl = await raw.readClose(5000);
        assert.equal(cl.code, 1001);
        await raw.writeQuiet(closeFrame(1001));
        await raw.waitEnd(5000);
        raw.destroy();
        await d.waitExit(10000);
    });
});

describe('ws heartbeat ttl', () => {
    let d;
    const TTL_S = 1;
    before(async () => {
        d = await startDaemon(['--heartbeat-ttl', String(TTL_S), '--close-timeout', '1']);
    });
    after(async () => {
        if (d) await d.kill();
    });

    test('a silent client is closed with 4000; clients that ping or send stay open', T, async () => {
        const silent = await openWs(d, { user: 'silent' });
        const pinger = await openWs(d, { user: 'pinger' });
        const talker = await openWs(d, { user: 'talker' });
        const t0 = Date.now();
        let pongs = 0;
        pinger.ws.on('pong', () => pongs++);
        const stop = { v: false };
        const keepAlive = (async () => {
            for (let i = 0; i < 50 && !stop.v; i++) {
                pinger.ws.ping('hb');
                await talker.send(PING);
                await sleep(300);
            }
        })();
        const r = await silent.waitClose(TTL_S * 1000 + 3000);
        const elapsed = (Date.now() - t0) / 1000;
        assert.equal(r.code, 4000);
        assert.equal(r.reason, 'no heartbeat');
        assert.ok(elapsed >= TTL_S * 0.9, `closed too early: ${elapsed} s`);
        // The active ones outlive twice the TTL.
        await sleep(Math.max(0, TTL_S * 2000 + 500 - (Date.now() - t0)));
        stop.v = true;
        await keepAlive;
        assert.equal(pinger.closeInfo, null, 'pinging client still open');
        assert.equal(talker.closeInfo, null, 'talking client still open');
        assert.ok(pongs >= 5, `pongs received: ${pongs}`);
        while (talker.queue.length) assert.equal(await talker.next(), PONG);
        await talker.send(PING);
        assert.equal(await talker.next(), PONG);
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_ws_idle_timeouts_total'), 1);
        assert.equal(metricValue(m, 'presenced_ws_closes_sent_total', { code: '4000' }), 1);
        // Now silent too: both go the same way.
        const [a, b] = await Promise.all([pinger.waitClose(TTL_S * 1000 + 3000), talker.waitClose(TTL_S * 1000 + 3000)]);
        assert.equal(a.code, 4000);
        assert.equal(b.code, 4000);
    });

    test('a raw client that never completes a frame is closed with 4000 too', T, async () => {
        const c = await rawWsConnect(d);
        try {
            await c.write(text(PING).subarray(0, 4)); // a header, never finished
            const cl = await c.readClose(TTL_S * 1000 + 3000);
            assert.equal(cl.code, 4000);
            await c.waitEnd(3000);
        } finally {
            c.destroy();
        }
        await assertWsHealthy(d);
    });

    test('SIGTERM: exits 0', T, async () => {
        await d.stop(10000);
    });
});

describe('ws shutdown edge cases', () => {
    const live = [];
    after(async () => {
        for (const d of live) await d.kill();
    });

    test('SIGTERM drains: 1012 "reconnect", presence kept through --offline-grace, exit 0', T, async () => {
        const d = await startDaemon(['--offline-grace', '1']);
        live.push(d);
        const c = await openWs(d);
        await c.send('{"type":"set_online","device":"web","id":1}');
        assert.match(await c.next(), /"id":1/); // present: its presence is what the drain keeps
        const t0 = Date.now();
        d.signal('SIGTERM');
        const r = await c.waitClose(5000);
        assert.equal(r.code, 1012);
        assert.equal(r.reason, 'server restarting: reconnect');
        await d.waitExit(10000);
        const elapsed = (Date.now() - t0) / 1000;
        assert.ok(elapsed >= 0.9, `exited ${elapsed} s after SIGTERM, inside the grace window`);
        assert.match(d.log, /keeping presence for the 1\.0 s grace window/);
    });

    test('SIGTERM with nobody in a grace window exits at once, whatever --offline-grace', T, async () => {
        const d = await startDaemon(['--offline-grace', '30']);
        live.push(d);
        const c = await openWs(d); // connected, never announced: nothing to keep
        const t0 = Date.now();
        d.signal('SIGTERM');
        assert.equal((await c.waitClose(5000)).code, 1012);
        await d.waitExit(10000);
        assert.ok(Date.now() - t0 < 3000, `exited ${Date.now() - t0} ms after SIGTERM`);
    });

    test('a client that never answers the 1001 is dropped after --close-timeout; exit 0', T, async () => {
        const d = await startDaemon(['--close-timeout', '1']);
        live.push(d);
        const raw = await rawWsConnect(d);
        const t0 = Date.now();
        d.signal('SIGINT');
        assert.equal((await raw.readClose(5000)).code, 1001);
        await d.waitExit(10000); // no close frame from us: the server gives up after 1 s
        const elapsed = (Date.now() - t0) / 1000;
        assert.ok(elapsed >= 0.9 && elapsed < 5, `exit after ${elapsed} s`);
        await raw.waitEnd(2000);
        raw.destroy();
    });

    test('a second signal during a pending shutdown exits 0 at once', T, async () => {
        const d = await startDaemon(['--close-timeout', '30']);
        live.push(d);
        const raw = await rawWsConnect(d); // never answers the 1001: the shutdown waits
        const c = await openWs(d);
        d.signal('SIGINT');
        assert.equal((await raw.readClose(5000)).code, 1001);
        assert.equal((await c.waitClose(5000)).code, 1001);
        await d.waitForLog(/shutting down: closing/, 5000);
        const t0 = Date.now();
        d.signal('SIGTERM');
        await d.waitExit(10000);
        assert.ok(Date.now() - t0 < 5000, 'the second signal does not wait for --close-timeout');
        assert.match(d.log, /second signal/);
        raw.destroy();
    });

    test('connections during shutdown are refused; plain HTTP in flight is answered', T, async () => {
        const d = await startDaemon(['--close-timeout', '2']);
        live.push(d);
        const http = await rawConnect(d);
        await http.write('GET /healthz HTTP/1.1\r\nHost: x\r\n'); // a request still arriving
        const raw = await rawWsConnect(d);
        d.signal('SIGINT');
        assert.equal((await raw.readClose(5000)).code, 1001);
        await http.write('\r\n');
        const r = await http.readResponse(5000);
        assert.equal(r.status, 200);
        assert.equal(r.headers.connection, 'close', 'answered with Connection: close at shutdown');
        await http.waitEnd(5000);
        await raw.writeQuiet(buildFrame({ opcode: OP.CLOSE, payload: closePayload(1001) }));
        await d.waitExit(10000);
        await assert.rejects(rawConnect(d, 2000), /ECONNREFUSED/);
        http.destroy();
        raw.destroy();
    });
});
