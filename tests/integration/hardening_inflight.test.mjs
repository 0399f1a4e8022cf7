// Regression test of the attack campaign's first crash (issue #11), on the store where it
// happened: ~70,000 pipelined set_status followed by a TCP reset freed the session while Redis
// answers were still due (a 16-bit count of calls in flight wrapped): a use after free under
// ASan, SIGSEGV in the release build. Now a connection with DISPATCH_INFLIGHT_MAX requests
// waiting is not read further until answers come back; every request read is answered, none
// is lost. The stalled-Redis case reproduces the crash on the code before the fix (ASan:
// heap-use-after-free in req_presence_done). CTest runs this file against the ASan build and,
// as hardening_release, against the release build (tests/CMakeLists.txt, PD_RELEASE_BIN).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { buildFrame, httpGet, metricValue, rawWsConnect, scrapeMetrics, sleep } from './lib/daemon.mjs';
import { eventually, openUser, startPresenced, stopDaemon } from './lib/presence.mjs';
import { startRedis } from './lib/redis.mjs';

const T = { timeout: 60000 };

async function startNode(flags, nodeId) {
    const d = await startPresenced([...flags, '--node-id', nodeId, '--offline-grace', '1', '--ephemeral']);
    await eventually(async () => (await httpGet(d, '/readyz')).status === 200, 15000, `node ${nodeId} ready`);
    return d;
}

describe('calls in flight per connection (Redis)', { timeout: 120000 }, () => {
    let redis;
    let d;
    before(async () => {
        redis = await startRedis();
        d = await startNode(['--redis', redis.url, '--rate-limit', '0'], 'inflight');
    });
    after(async () => {
        await stopDaemon(d);
        await redis?.stop();
    });

    test('70,000 pipelined set_status then a TCP reset: the node survives, reading was held', T, async () => {
        const c = await rawWsConnect(d, { user: 'flooder' });
        const frames = [];
        for (let i = 0; i < 70000; i++)
            frames.push(buildFrame({ payload: `{"type":"set_status","status":"${i & 1 ? 'busy' : 'online'}"}` }));
        const all = Buffer.concat(frames);
        c.sock.write(all);
        await sleep(300); // some of it read and waiting for Redis
        c.sock.resetAndDestroy();
        // The node goes on (under ASan a use after free aborts it) and answers others.
        await sleep(1500);
        assert.equal(d.exit, null, `the node died: ${d.log.slice(-2000)}`);
        const w = await openUser(d, 'after-flood');
        await w.ok({ type: 'set_status', status: 'busy' });
        const m = await scrapeMetrics(d);
        assert.ok(metricValue(m, 'presenced_inflight_holds_total') >= 1, 'the flooder was never held');
    });

    for (const kind of ['set_status', 'room update']) {
        test(`70,000 ${kind} pipelined while Redis stalls, then a reset: answers due to a freed session`, T, async () => {
            // Nothing is answered while Redis is stopped, so every message read is a call in
            // flight: past 65,535 the 16-bit count (session_t.pending, rlink.pending) wrapped and
            // the reset freed the session or room link with the rest still due (use after free
            // when Redis came back). Now reading stops at 64.
            const s = await startNode(['--redis', redis.url, '--rate-limit', '0', '--redis-timeout', '20'],
                kind === 'set_status' ? 'stall-s' : 'stall-r');
            try {
                const c = await rawWsConnect(s, { user: `staller-${kind.length}` });
                const payload = kind === 'set_status'
                    ? (i) => `{"type":"set_status","status":"${i & 1 ? 'busy' : 'away'}"}`
                    : (i) => `{"type":"update","channel":"stall","metadata":{"n":${i}}}`;
                if (kind !== 'set_status') {
                    await c.write(buildFrame({ payload: '{"type":"join","channel":"stall","id":1}' }));
                    await c.readFrame(5000); // channel_state
                }
                await sleep(200);
                redis.proc.kill('SIGSTOP');
                try {
                    const frames = [];
                    for (let i = 0; i < 70000; i++) frames.push(buildFrame({ payload: payload(i) }));
                    c.sock.write(Buffer.concat(frames));
                    await sleep(3000); // the node reads what it may
                    c.sock.resetAndDestroy();
                    await sleep(500);
                } finally {
                    redis.proc.kill('SIGCONT');
                }
                await sleep(3000); // the answers come back, for a session that is gone
                assert.equal(s.exit, null, `the node died: ${s.log.slice(-3000)}`);
                const w = await openUser(s, 'after-stall');
                await w.ok({ type: 'set_status', status: 'busy' });
            } finally {
                await stopDaemon(s);
            }
        });
    }

    test('a pipelined burst with ids is answered in full and in order while held', T, async () => {
        const c = await openUser(d, 'pipeliner');
        const N = 3000;
        const frames = [];
        for (let i = 0; i < N; i++) frames.push(JSON.stringify({ type: 'set_status', status: i & 1 ? 'away' : 'online', id: i }));
        const before = metricValue(await scrapeMetrics(d), 'presenced_inflight_holds_total');
        const from = c.all.length;
        for (const f of frames) c.ws.send(f);
        const answers = () => c.all.slice(from).filter((e) => e.msg.type === 'ack' || e.msg.type === 'error');
        await eventually(() => answers().length >= N, 30000, `${N} answers`, 50);
        assert.deepEqual(answers().map((e) => e.msg.type === 'ack' ? e.msg.id : e.raw), [...Array(N).keys()],
            'every request answered once, with an ack, in order');
        const held = metricValue(await scrapeMetrics(d), 'presenced_inflight_holds_total') - before;
        assert.ok(held >= 1, 'a burst of 3,000 never reached the bound');
    });
});

