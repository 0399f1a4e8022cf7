// Regression test of the attack campaign's first crash (issue #11), on the store where it
// happened: ~70,000 pipelined set_status followed by a TCP reset freed the session while Redis
// answers were still due (a 16-bit count of calls in flight wrapped): a use after free under
// ASan, SIGSEGV in the release build. Now a connection with DISPATCH_INFLIGHT_MAX requests
// waiting is not read further until answers come back; every request read is answered, none
// is lost. CTest runs this file against the ASan build and, as hardening_release, against the
// release build (tests/CMakeLists.txt, PD_RELEASE_BIN).
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

