// One client floods durable changes; a bystander pings. (bench/flood.sh runs this against two
// builds, before and after the SQLite writer thread.)
//
// The flooder (one WebSocket connection, user "flooder") pipelines add_contact/remove_contact
// pairs as fast as its socket takes them for --seconds, keeping at most --window requests
// unanswered (0: no limit but the socket's own backpressure). Every 100th pair leaves its
// contact in place, so the final list is known. A bystander on another connection sends a
// ping every --interval ms and records each pong's round trip; a ping that is never answered
// counts as lost. Printed: the bystander's p50/p99/max and lost pings, the flooder's sent,
// acked and refused requests, how long after the flood its last answer came, and the machine.
//
//   node bench/flood.mjs --port 8080 [--seconds 2] [--interval 10] [--window 0] [--label x]
import os from 'node:os';
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

function arg(name, dflt) {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
}
const PORT = Number(arg('port', 8080));
const SECONDS = Number(arg('seconds', 2));
const INTERVAL = Number(arg('interval', 10));
const WINDOW = Number(arg('window', 0));
const LABEL = arg('label', '');
const PREFIX = arg('prefix', 'f');
const HIGH_WATER = 1 << 20; // bytes buffered in the flooder's socket before it waits

const now = () => performance.now();

function open(user) {
    const ws = new WebSocket(`ws://127.0.0.1:${PORT}/presence?user=${encodeURIComponent(user)}`, { perMessageDeflate: false });
    return new Promise((resolve, reject) => {
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
    });
}

function cpuModel() {
    try {
        const m = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
        if (m) return m[1].trim();
    } catch {
        /* not Linux */
    }
    return os.cpus()[0]?.model ?? 'unknown';
}

function pct(sorted, p) {
    if (!sorted.length) return NaN;
    return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function main() {
    const flooder = await open(`${PREFIX}-flooder`);
    const bystander = await open(`${PREFIX}-bystander`);
    const closes = [];
    for (const [name, ws] of [['flooder', flooder], ['bystander', bystander]])
        ws.on('close', (code, reason) => closes.push(`${name} closed ${code} ${reason}`));

    // Answers of the flooder, by id.
    let sent = 0, acked = 0, refused = 0, lastAnswerAt = 0;
    const errors = {};
    flooder.on('message', (data) => {
        const m = JSON.parse(data.toString());
        if (m.type === 'ack') acked++;
        else if (m.type === 'error') {
            refused++;
            errors[m.code] = (errors[m.code] || 0) + 1;
        } else return;
        lastAnswerAt = now();
        wake();
    });
    let waiter = null;
    const wake = () => {
        if (waiter) {
            const w = waiter;
            waiter = null;
            w();
        }
    };
    flooder.send(JSON.stringify({ type: 'set_online', device: 'bench', id: 'on' }));
    sent++;

    // The bystander's pings.
    const rtts = [];
    const outstanding = new Map();
    let pingSeq = 0;
    bystander.on('message', (data) => {
        const m = JSON.parse(data.toString());
        if (m.type !== 'pong') return;
        const t0 = outstanding.get(m.id);
        if (t0 === undefined) return;
        outstanding.delete(m.id);
        rtts.push(now() - t0);
    });
    await new Promise((r) => bystander.send(JSON.stringify({ type: 'set_online', device: 'web' }), r));
    const pinger = setInterval(() => {
        const id = `p${++pingSeq}`;
        outstanding.set(id, now());
        bystander.send(JSON.stringify({ type: 'ping', id }));
    }, INTERVAL);

    // The flood.
    const start = now();
    const end = start + SECONDS * 1000;
    let pair = 0;
    while (now() < end && flooder.readyState === WebSocket.OPEN) {
        if ((WINDOW && sent - acked - refused >= WINDOW) || flooder.bufferedAmount > HIGH_WATER) {
            await new Promise((r) => {
                waiter = r;
                setTimeout(wake, 5); // the socket drains without an answer arriving, too
            });
            continue;
        }
        // A batch per turn of Node's loop, so the bystander's timer and sockets get their turn.
        for (let k = 0; k < 64; k++) {
            const who = `${PREFIX}-c${pair % 1000}`;
            const keep = pair % 100 === 99;
            flooder.send(JSON.stringify({ type: 'add_contact', user_id: keep ? `${PREFIX}-keep${pair}` : who, id: `a${pair}` }));
            sent++;
            if (!keep) {
                flooder.send(JSON.stringify({ type: 'remove_contact', user_id: who, id: `r${pair}` }));
                sent++;
            }
            pair++;
        }
        await new Promise((r) => setImmediate(r));
    }
    const floodEnd = now();
    // Every request answered (or 60 s), pings going on meanwhile.
    const drainDeadline = floodEnd + 60000;
    while (acked + refused < sent && now() < drainDeadline && flooder.readyState === WebSocket.OPEN)
        await new Promise((r) => {
            waiter = r;
            setTimeout(wake, 50);
        });
    const busyFor = (Math.max(lastAnswerAt, floodEnd) - start) / 1000;
    await new Promise((r) => setTimeout(r, 200));
    clearInterval(pinger);
    await new Promise((r) => setTimeout(r, Math.max(500, 3 * INTERVAL)));
    const lost = outstanding.size;
    const sorted = rtts.slice().sort((a, b) => a - b);
    const keeps = Math.floor(pair / 100);
    const result = {
        label: LABEL,
        seconds: SECONDS,
        machine: { nproc: os.cpus().length, cpu: cpuModel() },
        bystander: {
            pings: rtts.length,
            lost,
            p50_ms: +pct(sorted, 50).toFixed(2),
            p99_ms: +pct(sorted, 99).toFixed(2),
            max_ms: +(sorted[sorted.length - 1] ?? NaN).toFixed(2),
        },
        flooder: { sent, acked, refused, errors, kept_contacts: keeps, busy_s: +busyFor.toFixed(2) },
        closes,
    };
    console.log(`${LABEL ? LABEL + ': ' : ''}machine: ${result.machine.nproc} CPUs, ${result.machine.cpu}`);
    console.log(`${LABEL ? LABEL + ': ' : ''}flood ${SECONDS} s: sent ${sent}, acked ${acked}, refused ${refused}` +
        `${refused ? ' ' + JSON.stringify(errors) : ''}; last answer ${busyFor.toFixed(2)} s after the start`);
    console.log(`${LABEL ? LABEL + ': ' : ''}bystander ping every ${INTERVAL} ms: ${rtts.length} answered, ${lost} lost; ` +
        `p50 ${result.bystander.p50_ms} ms, p99 ${result.bystander.p99_ms} ms, max ${result.bystander.max_ms} ms`);
    if (closes.length) console.log(`${LABEL ? LABEL + ': ' : ''}closed: ${closes.join('; ')}`);
    console.log(`RESULT ${JSON.stringify(result)}`);
    flooder.close();
    bystander.close();
    setTimeout(() => process.exit(0), 200).unref();
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
