// Real Redis servers for the Redis-store tests (tests/integration/redis_*.test.mjs):
//   - startRedis({aof}): one standalone redis-server on 127.0.0.1 and a free port, in a temp
//     directory; no RDB snapshots, and no AOF unless aof is true (then appendfsync always, so
//     every acknowledged write survives a SIGKILL).
//   - startCluster({masters}): a Redis Cluster of that many masters (no replicas), created with
//     `redis-cli --cluster create` and returned once every node says cluster_state:ok.
//   - Each server: stop() (SIGTERM, wait, SIGKILL fallback, temp directory removed), kill()
//     (SIGKILL, directory kept), restart() (same port, same directory; optionally with more
//     arguments, returning while the server still loads its data), cmd(...args) (one
//     command on a fresh connection: the reply as JS values, error replies thrown as
//     RedisError), subscribe(...channels) (a pub/sub connection that keeps the messages).
//   - startProxy(port): a TCP proxy to a server whose cut() drops and refuses connections
//     until restore(): one client partitioned from Redis while the others still reach it.
//   - A cluster: nodes, seeds ("host:port,..."), cmd(key, ...args) routed to the key's master
//     (following MOVED), slotOf(key), ownerOf(slot), moveSlot(slot, target) (the documented
//     resharding steps: SETSLOT IMPORTING / MIGRATING, MIGRATE of the slot's keys, SETSLOT NODE
//     on every master).
//   - stopNode(d): stops a presenced node once its clients' grace windows are over.
// Every wait has a time bound; servers still running when the test process exits are killed
// and their directories removed (as lib/daemon.mjs does for daemons).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { metricValue, scrapeMetrics, sleep, withTimeout } from './daemon.mjs';
import { closeAll, eventually, stopDaemon } from './presence.mjs';

export const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server';
export const REDIS_CLI = process.env.REDIS_CLI || '/usr/bin/redis-cli';

const LOG_KEEP = 256 * 1024;
const live = new Set(); // running RedisServer instances
const dirs = new Set(); // temp directories not removed yet

process.on('exit', () => {
    for (const s of live) {
        try {
            s.proc.kill('SIGKILL');
        } catch {
            /* already gone */
        }
    }
    for (const d of dirs) {
        try {
            fs.rmSync(d, { recursive: true, force: true });
        } catch {
            /* best effort */
        }
    }
});

/** A port nobody listens on now (the kernel's choice for a socket bound to port 0). */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

/** n distinct free ports (a cluster node needs two: clients and the cluster bus). */
async function freePorts(n) {
    const out = new Set();
    for (let i = 0; out.size < n && i < 100; i++) out.add(await freePort());
    assert.equal(out.size, n, 'could not find free ports');
    return [...out];
}

// ---------------------------------------------------------------------------------------------
// presenced nodes on Redis

/**
 * Stops a presenced node (lib/presence.mjs stopDaemon: SIGTERM, exit 0, no sanitizer report)
 * once its clients are closed and their grace windows are over, so that no call to Redis is
 * still out when it exits: main.c frees the engine and rooms before the store, and such a
 * call can then neither finish nor call back (LeakSanitizer reports its records). That is a
 * known bug outside the store, shown by its own test in redis_failures.test.mjs.
 */
export async function stopNode(d, timeoutMs = 10000) {
    if (!d) return undefined;
    await closeAll(d);
    if (!d.exit) {
        await eventually(async () => {
            const m = await scrapeMetrics(d);
            return metricValue(m, 'presenced_sessions') === 0 && metricValue(m, 'presenced_room_connections') === 0;
        }, timeoutMs, `the sessions of the node on port ${d.port} to end`).catch(() => {});
    }
    return stopDaemon(d);
}

// ---------------------------------------------------------------------------------------------
// RESP2

export class RedisError extends Error {}

/** Encodes a command as a RESP array of bulk strings. */
export function encodeCommand(args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
        const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a), 'utf8');
        parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    return Buffer.concat(parts);
}

/** Parses one reply at b[off]: {value, next}, or undefined when incomplete. Errors are
 * RedisError values (not thrown), bulk strings UTF-8 strings, nil null. */
export function parseReply(b, off = 0) {
    const eol = b.indexOf('\r\n', off);
    if (eol < 0) return undefined;
    const type = String.fromCharCode(b[off]);
    const line = b.toString('utf8', off + 1, eol);
    const next = eol + 2;
    switch (type) {
        case '+':
            return { value: line, next };
        case '-':
            return { value: new RedisError(line), next };
        case ':':
            return { value: Number(line), next };
        case '$': {
            const n = Number(line);
            if (n < 0) return { value: null, next };
            if (b.length < next + n + 2) return undefined;
            return { value: b.toString('utf8', next, next + n), next: next + n + 2 };
        }
        case '*': {
            const n = Number(line);
            if (n < 0) return { value: null, next };
            const arr = [];
            let at = next;
            for (let i = 0; i < n; i++) {
                const r = parseReply(b, at);
                if (!r) return undefined;
                arr.push(r.value);
                at = r.next;
            }
            return { value: arr, next: at };
        }
        default:
            throw new Error(`unreadable RESP reply: ${JSON.stringify(b.toString('latin1', off, off + 80))}`);
    }
}

/**
 * One connection to a Redis server. call(...args) resolves with the reply (error replies as
 * RedisError values); in pub/sub mode (after subscribe) every reply is kept in messages.
 */
export class RespConn {
    constructor(sock, timeoutMs) {
        this.sock = sock;
        this.timeoutMs = timeoutMs;
        this.buf = Buffer.alloc(0);
        this.pending = []; // {resolve, reject}
        this.pushes = []; // replies nobody asked for (pub/sub messages)
        this.waiters = new Set();
        this.pubsub = false;
        this.closed = false;
        sock.on('data', (d) => {
            this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
            for (;;) {
                let r;
                try {
                    r = parseReply(this.buf);
                } catch (e) {
                    this._fail(e);
                    return;
                }
                if (!r) break;
                this.buf = this.buf.subarray(r.next);
                const p = this.pubsub ? null : this.pending.shift();
                if (p) p.resolve(r.value);
                else this.pushes.push(r.value);
            }
            this._wake();
        });
        const gone = (e) => this._fail(e ?? new Error('connection closed'));
        sock.on('error', gone);
        sock.on('close', () => gone());
    }

    static async open(port, { host = '127.0.0.1', timeoutMs = 5000 } = {}) {
        const sock = net.createConnection({ host, port });
        sock.setNoDelay(true);
        await withTimeout(new Promise((resolve, reject) => {
            sock.once('connect', resolve);
            sock.once('error', reject);
        }), timeoutMs, `a connection to Redis on port ${port}`).catch((e) => {
            sock.destroy();
            throw e;
        });
        return new RespConn(sock, timeoutMs);
    }

    _fail(e) {
        this.closed = true;
        const p = this.pending;
        this.pending = [];
        for (const x of p) x.reject(e);
        this._wake();
    }

    _wake() {
        for (const w of [...this.waiters]) w();
    }

    call(...args) {
        if (this.closed) return Promise.reject(new Error('connection closed'));
        const p = new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
        this.sock.write(encodeCommand(args));
        return withTimeout(p, this.timeoutMs, `the reply to ${args.slice(0, 3).join(' ')}`);
    }

    /** Subscribes (SUBSCRIBE, or SSUBSCRIBE with sharded) and waits for the confirmations. */
    async subscribe(channels, { sharded = false } = {}) {
        this.pubsub = true;
        this.sock.write(encodeCommand([sharded ? 'SSUBSCRIBE' : 'SUBSCRIBE', ...channels]));
        const kind = sharded ? 'ssubscribe' : 'subscribe';
        for (const ch of channels)
            await this.waitPush((m) => Array.isArray(m) && m[0] === kind && m[1] === ch, `${kind} ${ch}`);
    }

    /** Takes the first kept push matching pred, waiting up to timeoutMs for one. */
    async waitPush(pred, what = 'a message', timeoutMs = this.timeoutMs) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const i = this.pushes.findIndex(pred);
            if (i >= 0) return this.pushes.splice(i, 1)[0];
            if (this.closed) throw new Error(`Redis connection closed while waiting for ${what}`);
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`no ${what} from Redis within ${timeoutMs} ms`);
            await new Promise((resolve) => {
                const t = setTimeout(done, left);
                const self = this;
                function done() {
                    clearTimeout(t);
                    self.waiters.delete(done);
                    resolve();
                }
                this.waiters.add(done);
            });
        }
    }

    /** The next published message on channel (a `message`/`smessage` push): its payload. */
    async nextMessage(channel, pred = () => true, timeoutMs = this.timeoutMs) {
        const m = await this.waitPush((x) => Array.isArray(x) && (x[0] === 'message' || x[0] === 'smessage') &&
            x[1] === channel && pred(x[2]), `a message on ${channel}`, timeoutMs);
        return m[2];
    }

    close() {
        this.closed = true;
        this.sock.destroy();
    }
}

/** One command on a fresh connection to port: the reply; an error reply is thrown. */
export async function redisCmd(port, args, { timeoutMs = 5000 } = {}) {
    const c = await RespConn.open(port, { timeoutMs });
    try {
        const v = await c.call(...args);
        if (v instanceof RedisError) throw v;
        return v;
    } finally {
        c.close();
    }
}

/** Runs redis-cli with args; resolves {code, stdout, stderr}; killed after timeoutMs. */
export function redisCli(args, { timeoutMs = 30000 } = {}) {
    return new Promise((resolve, reject) => {
        const p = spawn(REDIS_CLI, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        p.stdout.setEncoding('utf8').on('data', (s) => (stdout += s));
        p.stderr.setEncoding('utf8').on('data', (s) => (stderr += s));
        const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
        p.on('error', (e) => {
            clearTimeout(t);
            reject(e);
        });
        p.on('exit', (code, signal) => {
            clearTimeout(t);
            if (signal) reject(new Error(`redis-cli ${args.join(' ')}: killed (${signal}) after ${timeoutMs} ms\n${stdout}${stderr}`));
            else resolve({ code, stdout, stderr });
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Servers

export class RedisServer {
    constructor({ port, busPort = 0, dir, args, name }) {
        this.port = port;
        this.busPort = busPort;
        this.dir = dir;
        this.args = args;
        this.name = name;
        this.proc = null;
        this.log = '';
        this.exit = null;
        this.exited = null;
        this.removed = false;
    }

    get addr() {
        return `127.0.0.1:${this.port}`;
    }

    get url() {
        return `redis://127.0.0.1:${this.port}`;
    }

    get running() {
        return this.proc !== null && this.exit === null;
    }

    tail(lines = 30) {
        return this.log.split('\n').slice(-lines).join('\n');
    }

    _spawn(extra = []) {
        const proc = spawn(REDIS_SERVER, [...this.args, ...extra], { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
        this.proc = proc;
        this.exit = null;
        const onData = (s) => {
            this.log += s;
            if (this.log.length > LOG_KEEP) this.log = this.log.slice(-LOG_KEEP);
        };
        proc.stdout.setEncoding('utf8').on('data', onData);
        proc.stderr.setEncoding('utf8').on('data', onData);
        // A server left running (a test failed before stopping it) must not keep the test
        // process alive: it exits, and its exit handler kills the server.
        proc.unref();
        proc.stdout.unref();
        proc.stderr.unref();
        this.exited = new Promise((resolve) => {
            proc.on('exit', (code, signal) => {
                this.exit = { code, signal };
                live.delete(this);
                resolve(this.exit);
            });
            proc.on('error', (e) => {
                this.exit = { code: -1, signal: null, error: e };
                live.delete(this);
                resolve(this.exit);
            });
        });
        live.add(this);
    }

    /**
     * Spawns the server and waits until it answers PING (or exits: then throws). opts.extra:
     * arguments for this process only; opts.loading: return as soon as it answers at all, even
     * -LOADING (still loading its data set).
     */
    async start(timeoutMs = 10000, { extra = [], loading = false } = {}) {
        assert.ok(!this.running, `${this.name} is already running`);
        this._spawn(extra);
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            if (this.exit)
                throw new Error(`${this.name} (port ${this.port}) exited (${this.exit.code ?? this.exit.signal}) at start:\n${this.tail()}`);
            try {
                if ((await redisCmd(this.port, ['PING'], { timeoutMs: 1000 })) === 'PONG') return this;
            } catch (e) {
                if (loading && e instanceof RedisError && /^LOADING/.test(e.message)) return this;
                /* not listening yet */
            }
            if (Date.now() > deadline) {
                await this.kill();
                throw new Error(`${this.name} (port ${this.port}) did not answer PING within ${timeoutMs} ms:\n${this.tail()}`);
            }
            await sleep(25);
        }
    }

    /** One command to this server (error replies thrown). */
    cmd(...args) {
        return redisCmd(this.port, args);
    }

    /** A pub/sub connection subscribed to channels (sharded: SSUBSCRIBE). Close it after use. */
    async subscribe(channels, opts = {}) {
        const c = await RespConn.open(this.port);
        try {
            await c.subscribe(channels, opts);
        } catch (e) {
            c.close();
            throw e;
        }
        return c;
    }

    /** SIGKILL (a crash); the directory stays for restart(). */
    async kill() {
        if (!this.running) return;
        this.proc.kill('SIGKILL');
        await withTimeout(this.exited, 5000, `${this.name} to die after SIGKILL`);
    }

    /** A new process on the same port and directory (after kill()); opts as for start(). */
    async restart(timeoutMs = 10000, opts = {}) {
        assert.ok(!this.removed, `${this.name}: its directory was removed`);
        return this.start(timeoutMs, opts);
    }

    /** SIGTERM, up to timeoutMs for the exit, else SIGKILL; then removes the directory. */
    async stop(timeoutMs = 5000) {
        if (this.running) {
            this.proc.kill('SIGTERM');
            try {
                await withTimeout(this.exited, timeoutMs, `${this.name} to exit after SIGTERM`);
            } catch {
                await this.kill();
            }
        }
        this.remove();
    }

    remove() {
        if (this.removed) return;
        this.removed = true;
        fs.rmSync(this.dir, { recursive: true, force: true });
        dirs.delete(this.dir);
    }
}

function makeDir(prefix) {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    dirs.add(d);
    return d;
}

function serverArgs(port, dir, { aof = false, cluster = null, extra = [] } = {}) {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--daemonize', 'no',
        '--save', '', '--logfile', '', '--protected-mode', 'yes'];
    if (aof) args.push('--appendonly', 'yes', '--appendfsync', 'always');
    else args.push('--appendonly', 'no');
    if (cluster)
        args.push('--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-port',
            String(cluster.busPort), '--cluster-node-timeout', String(cluster.nodeTimeoutMs ?? 5000));
    return [...args, ...extra];
}

/**
 * Starts a standalone Redis on a free loopback port (retried on a port collision), in a temp
 * directory. opts: aof (append-only file, fsync always), extra (more arguments).
 */
export async function startRedis(opts = {}) {
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
        const [port] = await freePorts(1);
        const dir = makeDir('pd-redis-');
        const s = new RedisServer({ port, dir, args: serverArgs(port, dir, opts), name: 'redis' });
        try {
            return await s.start();
        } catch (e) {
            lastErr = e;
            await s.stop();
            if (!/Address already in use/.test(s.log)) throw e;
        }
    }
    throw lastErr;
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy, to cut one client off a server (a network partition) while others still reach it

export class Proxy {
    constructor(server, targetPort) {
        this.server = server;
        this.targetPort = targetPort;
        this.port = server.address().port;
        this.pairs = new Set();
        this.isCut = false;
    }

    get url() {
        return `redis://127.0.0.1:${this.port}`;
    }

    _accept(client) {
        if (this.isCut) {
            client.destroy();
            return;
        }
        const upstream = net.createConnection({ host: '127.0.0.1', port: this.targetPort });
        const pair = { client, upstream };
        this.pairs.add(pair);
        const end = () => {
            client.destroy();
            upstream.destroy();
            this.pairs.delete(pair);
        };
        for (const sock of [client, upstream]) {
            sock.on('error', end);
            sock.on('close', end);
        }
        client.pipe(upstream);
        upstream.pipe(client);
    }

    /** Drops every connection through the proxy and refuses new ones until restore(). */
    cut() {
        this.isCut = true;
        for (const { client, upstream } of this.pairs) {
            client.destroy();
            upstream.destroy();
        }
        this.pairs.clear();
    }

    restore() {
        this.isCut = false;
    }

    close() {
        this.cut();
        return new Promise((resolve) => this.server.close(() => resolve()));
    }
}

/** A proxy on a free loopback port forwarding to 127.0.0.1:targetPort. */
export async function startProxy(targetPort) {
    const server = net.createServer();
    server.unref(); // as the servers: never what keeps a test process alive
    let proxy = null;
    server.on('connection', (c) => proxy._accept(c));
    await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
    });
    proxy = new Proxy(server, targetPort);
    return proxy;
}

// ---------------------------------------------------------------------------------------------
// Cluster

export class RedisCluster {
    constructor(nodes) {
        this.nodes = nodes;
    }

    /** "127.0.0.1:p1,127.0.0.1:p2,..." for --redis-cluster. */
    get seeds() {
        return this.nodes.map((n) => n.addr).join(',');
    }

    /** The hash slot of key (asked of the cluster: CLUSTER KEYSLOT). */
    slotOf(key) {
        return this.nodes[0].cmd('CLUSTER', 'KEYSLOT', key);
    }

    /** The node (of this.nodes) that owns slot, as the first reachable node sees the map. */
    async ownerOf(slot) {
        for (const n of this.nodes) {
            if (!n.running) continue;
            const slots = await n.cmd('CLUSTER', 'SLOTS');
            for (const [lo, hi, [, port]] of slots)
                if (slot >= lo && slot <= hi) return this.nodes.find((x) => x.port === port);
            return null;
        }
        return null;
    }

    /** key's command on the master that owns its slot (following up to 3 MOVED redirects). */
    async cmd(key, ...args) {
        let node = this.nodes.find((n) => n.running);
        for (let i = 0; i < 4; i++) {
            try {
                return await node.cmd(...args);
            } catch (e) {
                const m = e instanceof RedisError && /^MOVED \d+ [^:]+:(\d+)/.exec(e.message);
                if (!m) throw e;
                node = this.nodes.find((n) => n.port === Number(m[1]));
                assert.ok(node, `MOVED to a node not in this cluster: ${e.message}`);
            }
        }
        throw new Error(`${args[0]} ${key}: too many redirects`);
    }

    async waitOk(timeoutMs = 20000) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            let ok = true;
            for (const n of this.nodes) {
                const info = await n.cmd('CLUSTER', 'INFO').catch(() => '');
                if (!/cluster_state:ok/.test(info)) ok = false;
            }
            if (ok) return;
            if (Date.now() > deadline) throw new Error(`cluster not ok within ${timeoutMs} ms`);
            await sleep(50);
        }
    }

    /**
     * Moves slot (and its keys) to target (a node of this cluster), live: IMPORTING on the
     * target, MIGRATING on the owner, MIGRATE of every key in the slot, then SETSLOT NODE on
     * the target, the old owner and the other masters. Returns the old owner.
     */
    async moveSlot(slot, target) {
        const source = await this.ownerOf(slot);
        assert.ok(source, `no owner for slot ${slot}`);
        assert.notEqual(source, target, 'the slot is already there');
        const targetId = await target.cmd('CLUSTER', 'MYID');
        const sourceId = await source.cmd('CLUSTER', 'MYID');
        await target.cmd('CLUSTER', 'SETSLOT', slot, 'IMPORTING', sourceId);
        await source.cmd('CLUSTER', 'SETSLOT', slot, 'MIGRATING', targetId);
        for (let round = 0; round < 1000; round++) {
            const keys = await source.cmd('CLUSTER', 'GETKEYSINSLOT', slot, 100);
            if (keys.length === 0) break;
            await source.cmd('MIGRATE', '127.0.0.1', target.port, '', 0, 5000, 'KEYS', ...keys);
        }
        await target.cmd('CLUSTER', 'SETSLOT', slot, 'NODE', targetId);
        await source.cmd('CLUSTER', 'SETSLOT', slot, 'NODE', targetId);
        for (const n of this.nodes)
            if (n !== source && n !== target && n.running) await n.cmd('CLUSTER', 'SETSLOT', slot, 'NODE', targetId);
        return source;
    }

    async stop() {
        await Promise.all(this.nodes.map((n) => n.stop()));
    }

    async kill() {
        await Promise.all(this.nodes.map((n) => n.kill()));
    }
}

/**
 * Starts a Redis Cluster of `masters` masters without replicas on free loopback ports (each
 * with its own bus port), joins them with redis-cli --cluster create and waits until every
 * node reports cluster_state:ok.
 */
export async function startCluster({ masters = 3, nodeTimeoutMs = 5000 } = {}) {
    const nodes = [];
    try {
        for (let i = 0; i < masters; i++) {
            let started = null;
            let lastErr;
            for (let attempt = 0; attempt < 5 && !started; attempt++) {
                const [port, busPort] = await freePorts(2);
                const dir = makeDir(`pd-cluster${i}-`);
                const s = new RedisServer({ port, busPort, dir, name: `cluster node ${i}`,
                    args: serverArgs(port, dir, { cluster: { busPort, nodeTimeoutMs } }) });
                try {
                    started = await s.start();
                } catch (e) {
                    lastErr = e;
                    await s.stop();
                    if (!/Address already in use/.test(s.log)) throw e;
                }
            }
            if (!started) throw lastErr;
            nodes.push(started);
        }
        const r = await redisCli(['--cluster', 'create', ...nodes.map((n) => n.addr), '--cluster-replicas', '0',
            '--cluster-yes'], { timeoutMs: 30000 });
        assert.equal(r.code, 0, `redis-cli --cluster create failed:\n${r.stdout}\n${r.stderr}`);
        const cluster = new RedisCluster(nodes);
        await cluster.waitOk();
        return cluster;
    } catch (e) {
        await Promise.all(nodes.map((n) => n.stop()));
        throw e;
    }
}
