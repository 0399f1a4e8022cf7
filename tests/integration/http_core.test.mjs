// HTTP/1.1 core of presenced against the real daemon, over raw sockets: routing answers
// (200, 404, 405 + Allow, HEAD), keep-alive and pipelining, every request limit with its exact
// status, timeouts (slow drip -> 408, silent and idle keep-alive connections closed), and the
// daemon still serving after each bad case. The daemon must exit 0 on SIGTERM at the end.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
    assertHttpHealthy,
    httpRequest,
    metricValue,
    rawConnect,
    scrapeMetrics,
    sleep,
    startDaemon,
} from './lib/daemon.mjs';

const T = { timeout: 15000 }; // per-test bound
const REQUEST_TIMEOUT_S = 1;
const KEEPALIVE_TIMEOUT_S = 1;

const get = (path, extra = '') => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;

let d;

/**
 * Sends text on a new connection, expects exactly one response with status, then the close;
 * then checks that a normal request on a new connection is still served.
 */
async function expectRefused(text, status) {
    const c = await rawConnect(d);
    try {
        await c.writeQuiet(text);
        const r = await c.readResponse(5000);
        assert.equal(r.status, status, `expected ${status}, got: ${r.head}`);
        assert.equal(r.headers.connection, 'close', 'an error response closes the connection');
        assert.equal(r.body, `${status} ${r.reason}\n`);
        await c.waitEnd(5000);
        assert.equal(c.buf.length, 0, 'nothing after the error response');
    } finally {
        c.destroy();
    }
    await assertHttpHealthy(d);
}

describe('http core', () => {
    before(async () => {
        d = await startDaemon([
            '--request-timeout', String(REQUEST_TIMEOUT_S),
            '--keepalive-timeout', String(KEEPALIVE_TIMEOUT_S),
            '--close-timeout', '1',
        ]);
    });
    after(async () => {
        if (d) await d.kill(); // only after a failure: the last test stops it and checks
    });

    test('GET /healthz -> 200 "ok"', T, async () => {
        const r = await httpRequest(d, get('/healthz'));
        assert.equal(r.status, 200);
        assert.equal(r.reason, 'OK');
        assert.equal(r.body, 'ok\n');
        assert.equal(r.headers['content-length'], '3');
        assert.equal(r.headers['content-type'], 'text/plain; charset=utf-8');
        assert.equal(r.headers['cache-control'], 'no-store');
        assert.equal(r.headers.connection, undefined, 'HTTP/1.1 keeps the connection by default');
    });

    test('unknown path -> 404', T, async () => {
        // ('/' is the demo page: static.test.mjs)
        for (const p of ['/nope', '/healthz/', '/healthzz', '/HEALTHZ', '/metrics/x']) {
            const r = await httpRequest(d, get(p));
            assert.equal(r.status, 404, p);
            assert.equal(r.body, '404 Not Found\n');
        }
        // The query string is not part of the path.
        assert.equal((await httpRequest(d, get('/healthz?x=1&y'))).status, 200);
    });

    test('wrong method -> 405 with Allow', T, async () => {
        for (const m of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
            for (const p of ['/healthz', '/metrics']) {
                const r = await httpRequest(d, `${m} ${p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`);
                assert.equal(r.status, 405, `${m} ${p}`);
                assert.equal(r.headers.allow, 'GET, HEAD', `${m} ${p}`);
            }
        }
    });

    test('HEAD -> headers of GET, no body', T, async () => {
        const c = await rawConnect(d);
        try {
            // HEAD then GET in one write: if HEAD carried a body, the second response would not
            // parse where it must start.
            await c.write(`HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n${get('/healthz')}`);
            const h = await c.readResponse(5000, { noBody: true });
            assert.equal(h.status, 200);
            assert.equal(h.headers['content-length'], '3', 'HEAD announces the GET body length');
            const g = await c.readResponse(5000);
            assert.equal(g.status, 200);
            assert.equal(g.body, 'ok\n');
            await sleep(50);
            assert.equal(c.buf.length, 0, 'no stray bytes');
            // HEAD of a missing path: 404 without body.
            await c.write('HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n');
            const n = await c.readResponse(5000, { noBody: true });
            assert.equal(n.status, 404);
            await c.write(get('/healthz'));
            assert.equal((await c.readResponse(5000)).body, 'ok\n');
        } finally {
            c.destroy();
        }
    });

    test('keep-alive: several requests on one socket, then Connection: close', T, async () => {
        const c = await rawConnect(d);
        try {
            for (let i = 0; i < 10; i++) {
                await c.write(get(i % 2 ? '/healthz' : '/missing'));
                const r = await c.readResponse(5000);
                assert.equal(r.status, i % 2 ? 200 : 404, `request ${i}`);
                assert.equal(r.headers.connection, undefined);
                assert.equal(c.ended, false, 'still open');
            }
            await c.write(get('/healthz', 'Connection: close\r\n'));
            const r = await c.readResponse(5000);
            assert.equal(r.status, 200);
            assert.equal(r.headers.connection, 'close');
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
    });

    test('HTTP/1.0: no Host needed, closed after the answer unless keep-alive', T, async () => {
        let c = await rawConnect(d);
        try {
            await c.write('GET /healthz HTTP/1.0\r\n\r\n');
            const r = await c.readResponse(5000);
            assert.equal(r.status, 200);
            assert.equal(r.headers.connection, 'close');
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
        c = await rawConnect(d);
        try {
            await c.write('GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
            assert.equal((await c.readResponse(5000)).status, 200);
            await c.write('GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
            assert.equal((await c.readResponse(5000)).status, 200);
        } finally {
            c.destroy();
        }
    });

    test('pipelining: requests in one write are answered in order', T, async () => {
        const c = await rawConnect(d);
        try {
            const reqs = [
                [get('/healthz'), 200, false],
                [get('/nope'), 404, false],
                ['HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n', 200, true],
                [get('/metrics'), 200, false],
                ['POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello', 405, false],
                [get('/healthz?a=b'), 200, false],
                ['GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', 200, false],
                [get('/healthz', 'Connection: close\r\n'), 200, false],
            ];
            await c.write(reqs.map((r) => r[0]).join(''));
            for (const [i, [, status, noBody]] of reqs.entries()) {
                const r = await c.readResponse(5000, { noBody });
                assert.equal(r.status, status, `response ${i}`);
                if (i === 3) assert.match(r.body, /^# HELP presenced_/);
            }
            assert.equal(c.buf.length, 0);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
        // Many small pipelined requests, split at odd places across writes.
        const c2 = await rawConnect(d);
        try {
            const all = Buffer.from(Array.from({ length: 50 }, () => get('/healthz')).join(''));
            for (let off = 0; off < all.length; off += 97) await c2.write(all.subarray(off, off + 97));
            for (let i = 0; i < 50; i++) assert.equal((await c2.readResponse(5000)).body, 'ok\n', `response ${i}`);
        } finally {
            c2.destroy();
        }
    });

    test('request head over 16 KiB -> 431 (just under is fine)', T, async () => {
        const under = await httpRequest(d, get('/healthz', `X-Pad: ${'a'.repeat(15 * 1024)}\r\n`));
        assert.equal(under.status, 200);
        await expectRefused(get('/healthz', `X-Big: ${'a'.repeat(17 * 1024)}\r\n`), 431);
        // Over the limit in many medium headers.
        let many = '';
        for (let i = 0; i < 20; i++) many += `X-H${i}: ${'b'.repeat(1000)}\r\n`;
        await expectRefused(get('/healthz', many), 431);
        // An endless header line, never terminated: refused once the limit is crossed.
        await expectRefused(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ${'c'.repeat(40 * 1024)}`, 431);
        await assertHttpHealthy(d);
    });

    test('URI over 8 KiB -> 414 (exactly 8 KiB is fine)', T, async () => {
        const base = '/healthz?p=';
        const exact = base + 'x'.repeat(8192 - base.length);
        assert.equal(exact.length, 8192);
        assert.equal((await httpRequest(d, get(exact))).status, 200);
        await expectRefused(get(exact + 'x'), 414);
        await expectRefused(get('/' + 'y'.repeat(12000)), 414);
        await assertHttpHealthy(d);
    });

    test('too many headers -> 431 (64 is fine)', T, async () => {
        const hdrs = (n) => Array.from({ length: n }, (_, i) => `X-N${i}: v\r\n`).join('');
        // Host plus 63 = 64 header lines: the limit.
        assert.equal((await httpRequest(d, get('/healthz', hdrs(63)))).status, 200);
        await expectRefused(get('/healthz', hdrs(64)), 431);
        await expectRefused(get('/healthz', hdrs(200)), 431);
        await assertHttpHealthy(d);
    });

    test('body over 1 MiB -> 413 (from Content-Length, or as chunks arrive)', T, async () => {
        // Refused from the header alone: no body byte is sent.
        await expectRefused('POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n', 413);
        await expectRefused('POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n', 413);
        // Exactly 1 MiB is read whole (and then refused by the router).
        const body = Buffer.alloc(1024 * 1024, 0x61);
        const c = await rawConnect(d);
        try {
            await c.write(Buffer.concat([Buffer.from('POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n'), body]));
            const r = await c.readResponse(5000);
            assert.equal(r.status, 405);
            await c.write(get('/healthz'));
            assert.equal((await c.readResponse(5000)).status, 200, 'same connection goes on');
        } finally {
            c.destroy();
        }
        // Chunked: no length announced, refused once the chunks pass the limit.
        const chunk = `10000\r\n${'z'.repeat(0x10000)}\r\n`;
        await expectRefused(
            'POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' + chunk.repeat(17) + '0\r\n\r\n',
            413,
        );
        await assertHttpHealthy(d);
    });

    test('malformed requests -> 400', T, async () => {
        const bad = [
            'BLAH\r\n\r\n',
            'GET\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n',
            'GET /hea lthz HTTP/1.1\r\nHost: x\r\n\r\n',
            'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
            'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
            'POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
            'GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n',
            'GET healthz HTTP/1.1\r\nHost: x\r\n\r\n',
            'GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n',
            '\x00\x01\x02\x03\r\n\r\n',
        ];
        for (const text of bad) {
            await expectRefused(text, 400);
            await assertHttpHealthy(d);
        }
    });

    test('HTTP version other than 1.x -> 505', T, async () => {
        await expectRefused('GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n', 505);
        await expectRefused('GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n', 505);
        await assertHttpHealthy(d);
    });

    // Laxities of the HTTP parser found by this suite (src/http, reported, not yet fixed). They
    // run as TODO: reported in the output, not failing the suite, until the parser is strict.
    test('strict parsing: what RFC 9112 says to refuse gets 400', T, async () => {
        const lax = [
            // section 5.1: whitespace between a field name and the colon MUST be rejected (400)
            'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : v\r\n\r\n',
            // a field name is a token: no space inside it
            'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n',
            // section 3.2: more than one Host field MUST be answered 400
            'GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n',
            // the protocol name is "HTTP"
            'GET /healthz HTTQ/1.1\r\nHost: x\r\n\r\n',
            // section 5.2: obsolete line folding: reject (or replace by SP)
            'GET /healthz HTTP/1.1\r\nHost: x\r\nX-F: a\r\n folded\r\n\r\n',
            // ... also when the folded header's first line is empty: "Content-Length:" then
            // " 5" was read as Content-Length: 5, where a proxy forwarding folds sees none
            'GET /healthz HTTP/1.1\r\nHost: x\r\nX-F:\r\n folded\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nHost: x\r\nX-F: \t\r\n\tfolded\r\n\r\n',
            'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nhello',
            'POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nHost:\r\n x\r\n\r\n',
            // section 2.2: a line starting with a blank right after the request line
            'GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n',
        ];
        const accepted = [];
        for (const text of lax) {
            const r = await httpRequest(d, text);
            if (r.status !== 400) accepted.push(`${JSON.stringify(text)} -> ${r.status}`);
        }
        assert.deepEqual(accepted, [], 'requests accepted that must be refused');
    });

    test('a folded Content-Length cannot smuggle a second request', T, async () => {
        // Read as "Content-Length: 5" the body would be "GET /"; a proxy forwarding the fold
        // reads no length, and the bytes after the head as a second request. Refused: one
        // 400, the connection closed, nothing answered for the bytes after.
        await expectRefused('POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 25\r\n\r\n' +
            'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n', 400);
    });

    test('Expect: 100-continue -> 100 Continue before the body; anything else -> 417', T, async () => {
        const c = await rawConnect(d);
        try {
            // The head alone: the interim answer comes at once, before any body byte.
            await c.write('POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n');
            const interim = await c.waitFor((b) => {
                const end = b.indexOf('\r\n\r\n');
                return end < 0 ? undefined : { value: b.subarray(0, end + 4).toString('latin1'), used: end + 4 };
            }, 5000, 'the 100 Continue');
            assert.equal(interim, 'HTTP/1.1 100 Continue\r\n\r\n');
            await sleep(100);
            assert.equal(c.buf.length, 0, 'no final answer before the body');
            await c.write('hello');
            const r = await c.readResponse(5000);
            assert.equal(r.status, 405, 'the final answer follows the body (POST /healthz: 405)');
            // Keep-alive goes on; a request that expects nothing gets no interim answer, and
            // one without a body (nothing to hold back) none either.
            await c.write('POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab');
            assert.equal((await c.readResponse(5000)).status, 405);
            await c.write(get('/healthz', 'Expect: 100-continue\r\n'));
            const g = await c.readResponse(5000);
            assert.equal(g.status, 200);
            assert.equal(g.body, 'ok\n');
            // Head and body in one write: the body is there, the interim answer is left out.
            await c.write('POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nab');
            assert.equal((await c.readResponse(5000)).status, 405);
            await sleep(50);
            assert.equal(c.buf.length, 0);
        } finally {
            c.destroy();
        }
        // A chunked body is announced too.
        const c2 = await rawConnect(d);
        try {
            await c2.write('PUT /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n');
            await c2.waitFor((b) => (b.toString('latin1').startsWith('HTTP/1.1 100 Continue\r\n\r\n') ? { value: true, used: 25 } : undefined),
                5000, 'the 100 Continue');
            await c2.write('3\r\nabc\r\n0\r\n\r\n');
            assert.equal((await c2.readResponse(5000)).status, 405);
        } finally {
            c2.destroy();
        }
        // A head refused for itself is answered at once, never continued.
        await expectRefused('POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1048577\r\n\r\n', 413);
        await expectRefused('POST /healthz HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', 400);
        // Any other expectation cannot be met.
        for (const e of ['100-continue, x', 'x', '', '200-ok', '100-continue;a=b']) {
            await expectRefused(`POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: ${e}\r\nContent-Length: 1\r\n\r\nx`, 417);
        }
        await expectRefused(get('/healthz', 'Expect: bogus\r\n'), 417);
    });

    test('HTTP/1.1 without Host -> 400', T, async () => {
        await expectRefused('GET /healthz HTTP/1.1\r\n\r\n', 400);
        await expectRefused('GET /healthz HTTP/1.1\r\nX-Other: y\r\n\r\n', 400);
        // Behind a good request on the same connection: the good one is answered first.
        const c = await rawConnect(d);
        try {
            await c.write(get('/healthz') + 'GET /healthz HTTP/1.1\r\n\r\n');
            assert.equal((await c.readResponse(5000)).status, 200);
            assert.equal((await c.readResponse(5000)).status, 400);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
        await assertHttpHealthy(d);
    });

    test('slow drip (1 byte / 300 ms) -> 408 after --request-timeout', T, async () => {
        const before = metricValue(await scrapeMetrics(d), 'presenced_http_request_timeouts_total');
        const c = await rawConnect(d);
        try {
            const req = Buffer.from(get('/healthz', `X-Slow: ${'s'.repeat(40)}\r\n`));
            const t0 = Date.now();
            // Bounded: at most the request's length of bytes; stops as soon as the server speaks.
            for (let i = 0; i < req.length && c.buf.length === 0 && !c.ended; i++) {
                if (!(await c.writeQuiet(req.subarray(i, i + 1)))) break;
                await sleep(300);
            }
            const r = await c.readResponse(5000);
            const elapsed = (Date.now() - t0) / 1000;
            assert.equal(r.status, 408);
            assert.equal(r.headers.connection, 'close');
            assert.ok(elapsed >= REQUEST_TIMEOUT_S * 0.9, `408 too early: ${elapsed} s`);
            assert.ok(elapsed < REQUEST_TIMEOUT_S + 2.5, `408 too late: ${elapsed} s`);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_http_request_timeouts_total'), before + 1);
        await assertHttpHealthy(d);
    });

    test('slow drip of a second request on a keep-alive connection -> 408', T, async () => {
        const c = await rawConnect(d);
        try {
            await c.write(get('/healthz'));
            assert.equal((await c.readResponse(5000)).status, 200);
            const t0 = Date.now();
            const req = Buffer.from(get('/healthz'));
            for (let i = 0; i < req.length && c.buf.length === 0 && !c.ended; i++) {
                if (!(await c.writeQuiet(req.subarray(i, i + 1)))) break;
                await sleep(300);
            }
            const r = await c.readResponse(5000);
            assert.equal(r.status, 408);
            assert.ok((Date.now() - t0) / 1000 < REQUEST_TIMEOUT_S + 2.5);
            await c.waitEnd(5000);
        } finally {
            c.destroy();
        }
        await assertHttpHealthy(d);
    });

    test('a connection that sends nothing is closed after --request-timeout, without a response', T, async () => {
        const c = await rawConnect(d);
        try {
            const t0 = Date.now();
            await c.waitEnd(REQUEST_TIMEOUT_S * 1000 + 3000);
            const elapsed = (Date.now() - t0) / 1000;
            assert.ok(elapsed >= REQUEST_TIMEOUT_S * 0.9, `closed too early: ${elapsed} s`);
            assert.equal(c.buf.length, 0, 'no response to no request');
        } finally {
            c.destroy();
        }
        await assertHttpHealthy(d);
    });

    test('an idle keep-alive connection is closed after --keepalive-timeout', T, async () => {
        const c = await rawConnect(d);
        try {
            await c.write(get('/healthz'));
            assert.equal((await c.readResponse(5000)).status, 200);
            const t0 = Date.now();
            // Still open well before the timeout...
            assert.equal(await c.endsWithin(KEEPALIVE_TIMEOUT_S * 1000 * 0.5), false, 'closed too early');
            // ...closed soon after it.
            await c.waitEnd(KEEPALIVE_TIMEOUT_S * 1000 + 3000);
            const elapsed = (Date.now() - t0) / 1000;
            assert.ok(elapsed >= KEEPALIVE_TIMEOUT_S * 0.9, `closed too early: ${elapsed} s`);
            assert.equal(c.buf.length, 0, 'closed silently');
        } finally {
            c.destroy();
        }
        await assertHttpHealthy(d);
    });

    test('metrics count every response by status', T, async () => {
        const m = await scrapeMetrics(d);
        for (const s of ['200', '400', '404', '405', '408', '413', '414', '431'])
            assert.ok(metricValue(m, 'presenced_http_responses_total', { status: s }) >= 1, `status ${s} counted`);
        assert.ok(metricValue(m, 'presenced_http_requests_total') > 50);
        assert.ok(metricValue(m, 'presenced_connections_open') >= 1);
    });

    test('SIGTERM: exits 0 (no leak, no sanitizer report)', T, async () => {
        // An idle keep-alive connection must not hold up the exit.
        const c = await rawConnect(d);
        await c.write(get('/healthz'));
        assert.equal((await c.readResponse(5000)).status, 200);
        await d.stop(10000);
        await c.waitEnd(2000);
        c.destroy();
    });
});
