// Slow consumers: a raw client that never reads while it keeps asking for output (pongs to its
// pings, or replies to its messages) is first no longer read from (backpressure: its unsent
// answers passed --out-max / 2), and once it has stayed stuck for --heartbeat-ttl it is closed
// with 1008; /metrics counts it; the server keeps serving everyone else meanwhile, and exits 0
// (no leaked queue) at the end. (Output the server pushes on its own, fan-out, closes a
// non-reader at --out-max: see presence tests.)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
    assertWsHealthy,
    buildFrame,
    closePayload,
    metricValue,
    openWs,
    rawWsConnect,
    scrapeMetrics,
    startDaemon,
} from './lib/daemon.mjs';

const T = { timeout: 60000 };
const OUT_MAX = 64 * 1024;
const FLOOD_MAX = 64 * 1024 * 1024; // bytes we send at most before giving up (bounded loop)
const TTL_S = 2; // --heartbeat-ttl: how long a stuck client may stay stuck
const FLOOD_MS = (TTL_S + 4) * 1000; // how long we keep flooding before giving up
const PING = '{"type":"ping"}';
const PONG = '{"type":"pong"}';

/**
 * Floods c with frames (chunk after chunk) without reading, until the daemon counts one more
 * slow-consumer close or FLOOD_MAX bytes were sent. Returns the bytes sent.
 */
async function floodUntilClosed(d, c, chunk, countBefore) {
    let sent = 0;
    const deadline = Date.now() + FLOOD_MS;
    while (Date.now() < deadline) {
        if (sent < FLOOD_MAX) {
            if (!(await c.writeQuiet(chunk))) break; // the server may have dropped us already
            sent += chunk.length;
        } else {
            await new Promise((r) => setTimeout(r, 100)); // enough sent: wait for the verdict
        }
        const m = await scrapeMetrics(d);
        if (metricValue(m, 'presenced_slow_consumer_closes_total') > countBefore) return sent;
    }
    const m = await scrapeMetrics(d);
    assert.ok(metricValue(m, 'presenced_slow_consumer_closes_total') > countBefore,
        `no slow-consumer close after ${sent} bytes sent\n${d.tail()}`);
    return sent;
}

/** Reads everything queued for c (it resumed reading) up to the close frame; checks it. */
async function expectPolicyClose(c, expectedFrame) {
    const cl = await c.readClose(15000, 1000000);
    assert.equal(cl.code, 1008, `closed with ${cl.code} ${cl.reason}`);
    assert.equal(cl.reason, 'output queue full: client too slow');
    for (const f of cl.before) {
        assert.equal(f.opcode, expectedFrame.opcode);
        assert.equal(f.payload.toString('latin1'), expectedFrame.payload);
    }
    // What reached the client is whole frames and less than everything it asked for.
    await c.writeQuiet(buildFrame({ opcode: 8, payload: closePayload(1008) }));
    await c.waitEnd(5000);
    return cl.before.length;
}

describe('slow consumer', () => {
    let d;
    before(async () => {
        // The message rate limit would stop these floods first (hardening.test.mjs tests it):
        // off here, so the output bound is what is tested.
        d = await startDaemon(['--out-max', '64K', '--close-timeout', '5',
            '--heartbeat-ttl', String(TTL_S), '--rate-limit', '0']);
    });
    after(async () => {
        if (d) await d.kill();
    });

    test('a client flooding pings without reading pongs is closed with 1008 past --out-max', T, async () => {
        const m0 = await scrapeMetrics(d);
        const before = metricValue(m0, 'presenced_slow_consumer_closes_total');
        const slow = await rawWsConnect(d, { user: 'slow' });
        slow.pause(); // never read: pongs pile up in the kernel, then in the server
        const payload = 'P'.repeat(125);
        const ping = buildFrame({ opcode: 9, payload });
        const chunk = Buffer.concat(Array.from({ length: 256 }, () => ping));
        const sent = await floodUntilClosed(d, slow, chunk, before);
        assert.ok(sent > OUT_MAX, `closed after only ${sent} bytes of pings`);
        // Others are served meanwhile (a bystander opened now: the TTL is short here).
        const bystander = await openWs(d, { user: 'bystander' });

        const t0 = Date.now();
        await bystander.send(PING);
        assert.equal(await bystander.next(2000), PONG);
        assert.ok(Date.now() - t0 < 1000, 'bystander answered promptly');

        slow.resume();
        const pongs = await expectPolicyClose(slow, { opcode: 10, payload });
        assert.ok(pongs < sent / ping.length, 'unsent pongs were dropped, not all delivered');
        slow.destroy();

        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_slow_consumer_closes_total'), before + 1);
        assert.equal(metricValue(m, 'presenced_ws_closes_sent_total', { code: '1008' }) -
            metricValue(m0, 'presenced_ws_closes_sent_total', { code: '1008' }), 1);
        await bystander.send(PING);
        assert.equal(await bystander.next(), PONG);
        assert.equal((await bystander.close()).code, 1000);
        await assertWsHealthy(d);
    });

    test('a client flooding messages without reading replies is closed with 1008', T, async () => {
        const m0 = await scrapeMetrics(d);
        const before = metricValue(m0, 'presenced_slow_consumer_closes_total');
        const slow = await rawWsConnect(d, { user: 'slow2' });
        slow.pause();
        const msg = buildFrame({ opcode: 1, payload: PING });
        // 1024 messages a write: their answers (17 KB) fit under --out-max, so what closes the
        // client is its not reading, not one burst (see the burst test below).
        const chunk = Buffer.concat(Array.from({ length: 1024 }, () => msg));
        await floodUntilClosed(d, slow, chunk, before);
        const bystander = await openWs(d, { user: 'bystander2' });
        await bystander.send(PING);
        assert.equal(await bystander.next(2000), PONG);
        // Closed now: left idle while the slow client drains, it would outlive --heartbeat-ttl
        // (2 s) and be closed with 4000 on a loaded machine.
        assert.equal((await bystander.close()).code, 1000);
        slow.resume();
        await expectPolicyClose(slow, { opcode: 1, payload: PONG });
        slow.destroy();
        const m = await scrapeMetrics(d);
        assert.equal(metricValue(m, 'presenced_slow_consumer_closes_total'), before + 1);
    });

    test('several slow clients at once, each closed, others unaffected', T, async () => {
        const before = metricValue(await scrapeMetrics(d), 'presenced_slow_consumer_closes_total');
        const slows = [];
        for (let i = 0; i < 3; i++) {
            const s = await rawWsConnect(d, { user: `slow-${i}` });
            s.pause();
            slows.push(s);
        }
        const ping = buildFrame({ opcode: 9, payload: 'Q'.repeat(125) });
        const chunk = Buffer.concat(Array.from({ length: 256 }, () => ping));
        let sent = 0;
        const deadline = Date.now() + FLOOD_MS;
        for (;;) {
            const m = await scrapeMetrics(d);
            if (metricValue(m, 'presenced_slow_consumer_closes_total') >= before + slows.length) break;
            assert.ok(Date.now() < deadline, `not every slow client closed after ${sent} bytes each`);
            if (sent < FLOOD_MAX) {
                await Promise.all(slows.map((s) => s.writeQuiet(chunk)));
                sent += chunk.length;
            } else {
                await new Promise((r) => setTimeout(r, 100));
            }
        }
        const bystander = await openWs(d, { user: 'bystander3' });
        await bystander.send(PING);
        assert.equal(await bystander.next(2000), PONG);
        for (const s of slows) {
            s.resume();
            await expectPolicyClose(s, { opcode: 10, payload: 'Q'.repeat(125) });
            s.destroy();
        }
        assert.equal((await bystander.close()).code, 1000);
    });

    // A client that reads everything but sends a burst of requests in one write must not be
    // closed as slow: the server stops reading it while its unsent answers pass out_max / 2
    // and reads on once they drain, so out_max only stops clients that never read.
    test('a fast client pipelining a burst is answered in full, not closed as slow',
        T, async () => {
            const c = await rawWsConnect(d, { user: 'burst' });
            const n = 5000; // 105 KB of pings; 85 KB of answers
            await c.write(Buffer.concat(Array.from({ length: n }, () => buildFrame({ opcode: 1, payload: PING }))));
            for (let i = 0; i < n; i++) {
                const f = await c.readFrame(5000);
                assert.equal(f.opcode, 1, `answer ${i} is a close (${f.payload.readUInt16BE?.(0)}) instead of a pong`);
            }
            c.destroy();
        });

    test('SIGTERM: exits 0 (no leaked output queue)', T, async () => {
        // One more slow client still stuck at shutdown: its queue is freed at exit.
        const slow = await rawWsConnect(d, { user: 'stuck' });
        slow.pause();
        const ping = buildFrame({ opcode: 9, payload: 'R'.repeat(125) });
        await slow.writeQuiet(Buffer.concat(Array.from({ length: 2048 }, () => ping)));
        await d.stop(15000);
        slow.destroy();
    });
});
