// One client flooding durable changes does not freeze the node (ARCHITECTURE.md sections 4
// and 6: durable writes never run on the loop thread; the loop never waits for a disk):
//  - a flooder pipelines add_contact/remove_contact on one connection for ~2 s against the
//    embedded store with a real data directory; a bystander on another connection pings every
//    10 ms: every ping is answered, none later than a generous bound (500 ms, under ASan); an
//    idle client that heartbeats every second outlives a 3-s TTL throughout;
//  - every one of the flooder's requests is acknowledged (none refused), and after a SIGKILL
//    right after the last acknowledgement the restarted node has exactly the list the
//    acknowledged changes made: an ack means durable.
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';

import { ask, makeTemp, rmTemp } from './lib/auth.mjs';
import { closeAll, crashInfo, openClient, openUser, sleep, startPresenced, stopDaemon } from './lib/presence.mjs';

const FLOOD_MS = 2000;
const PING_EVERY_MS = 10;
const PING_BOUND_MS = Number(process.env.PD_FLOOD_PING_BOUND_MS || 500);
const WINDOW = 4000; // requests the flooder keeps unanswered at most
const now = () => performance.now();

function openRaw(d, user) {
    const ws = new WebSocket(`ws://127.0.0.1:${d.port}/presence?user=${encodeURIComponent(user)}`, { perMessageDeflate: false });
    return new Promise((resolve, reject) => {
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
    });
}

describe('flood of durable changes', () => {
    let d = null;
    let dir = null;
    after(async () => {
        await stopDaemon(d);
        if (dir) rmTemp(dir);
    });

    test('a bystander keeps answering; every change is acked and survives a SIGKILL', { timeout: 120000 }, async () => {
        dir = makeTemp('pd-flood-');
        // Without the per-connection rate limit: the store must stand on its own against a
        // single connection that pipelines (a limit of 200 a second would hide the problem).
        const flags = ['--data-dir', dir, '--heartbeat-ttl', '3', '--rate-limit', '0'];
        d = await startPresenced(flags);

        const idle = await openUser(d, 'idle', { device: 'web' });
        idle.heartbeatEvery(1000);
        const bystander = await openUser(d, 'bystander', { device: 'web' });
        const flooder = await openRaw(d, 'flooder');
        let closedFlooder = null;
        flooder.on('close', (code) => (closedFlooder = code));

        let sent = 0, acked = 0;
        const refused = [];
        let wake = null;
        flooder.on('message', (data) => {
            const m = JSON.parse(data.toString());
            if (m.type === 'ack') acked++;
            else if (m.type === 'error') refused.push(m);
            else return;
            if (wake) {
                const w = wake;
                wake = null;
                w();
            }
        });
        const waitAnswer = (ms) => new Promise((r) => {
            wake = r;
            setTimeout(() => {
                if (wake === r) wake = null;
                r();
            }, ms);
        });

        // The bystander's pings, on their own timer.
        const rtts = [];
        const outstanding = new Map();
        let seq = 0;
        bystander.ws.on('message', (data) => {
            const m = JSON.parse(data.toString());
            if (m.type === 'pong' && outstanding.has(m.id)) {
                rtts.push(now() - outstanding.get(m.id));
                outstanding.delete(m.id);
            }
        });
        const pinger = setInterval(() => {
            const id = `flood-ping-${++seq}`;
            outstanding.set(id, now());
            bystander.ws.send(JSON.stringify({ type: 'ping', id }));
        }, PING_EVERY_MS);

        // The flood: pairs that cancel out, and every 50th pair a contact that stays.
        const kept = [];
        const end = now() + FLOOD_MS;
        let pair = 0;
        while (now() < end && closedFlooder === null) {
            if (sent - acked - refused.length >= WINDOW || flooder.bufferedAmount > (1 << 20)) {
                await waitAnswer(5);
                continue;
            }
            for (let k = 0; k < 32; k++, pair++) {
                const who = `churn-${pair % 500}`;
                if (pair % 50 === 49) {
                    kept.push(`kept-${pair}`);
                    flooder.send(JSON.stringify({ type: 'add_contact', user_id: `kept-${pair}`, id: `a${pair}` }));
                    sent++;
                    continue;
                }
                flooder.send(JSON.stringify({ type: 'add_contact', user_id: who, id: `a${pair}` }));
                flooder.send(JSON.stringify({ type: 'remove_contact', user_id: who, id: `r${pair}` }));
                sent += 2;
            }
            await new Promise((r) => setImmediate(r));
        }
        const deadline = now() + 60000;
        while (acked + refused.length < sent && now() < deadline && closedFlooder === null) await waitAnswer(50);
        await sleep(100);
        clearInterval(pinger);
        await sleep(Math.max(300, PING_BOUND_MS));

        rtts.sort((a, b) => a - b);
        const p99 = rtts[Math.ceil(rtts.length * 0.99) - 1] ?? NaN;
        const max = rtts[rtts.length - 1] ?? NaN;
        const info = `${rtts.length} pings answered, ${outstanding.size} not, p50 ${rtts[rtts.length >> 1]?.toFixed(1)} ms, ` +
            `p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms; flood: ${sent} requests, ${acked} acked, ` +
            `${refused.length} refused`;
        console.log(`# ${info}`);
        assert.ok(max < PING_BOUND_MS, `a bystander's ping waited ${max.toFixed(1)} ms (${info})`);
        assert.equal(outstanding.size, 0, `${outstanding.size} pings never answered (${info})`);
        assert.ok(rtts.length >= FLOOD_MS / PING_EVERY_MS / 4, `only ${info}`);
        assert.ok(idle.isOpen, 'the idle client that heartbeats every second was closed');
        assert.ok(bystander.isOpen, 'the bystander was closed');
        assert.equal(closedFlooder, null, `the flooder was closed (${closedFlooder})${crashInfo(d)}`);
        assert.deepEqual(refused.slice(0, 3), [], `refused ${refused.length} of ${sent}`);
        assert.equal(acked, sent, `${acked} of ${sent} requests acknowledged`);
        assert.ok(sent > 1000, `the flood sent only ${sent} requests`);

        // Every acknowledged change is on disk: kill without a chance to flush anything.
        d.signal('SIGKILL');
        assert.equal((await d.exited).signal, 'SIGKILL');
        flooder.terminate();
        await closeAll(d);
        d = await startPresenced(flags);
        const c = await openClient(d, 'flooder');
        const p = await ask(c, { type: 'get_privacy' });
        assert.equal(p.type, 'privacy');
        assert.deepEqual([...p.contacts].sort(), [...kept].sort(), 'the contacts after the restart');
        await c.close();
    });
});
