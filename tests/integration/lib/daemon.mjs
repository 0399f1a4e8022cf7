// Test harness for the integration tests: runs the real presenced on 127.0.0.1 with an
// ephemeral port, and gives the tests small, bounded clients to drive it with:
//   - startDaemon(flags): spawn, parse the port from the log, collect stderr; stop() sends
//     SIGTERM and asserts a clean exit 0 (under ASan a leak or any sanitizer report fails it).
//   - openWs(): a Node `ws` client with a message queue (next() with a timeout).
//   - rawConnect() / rawWsConnect(): raw TCP sockets with buffered, timed reads of HTTP
//     responses and WebSocket frames, for input no well-behaved client would send.
//   - buildFrame() / frameHeader() / closePayload(): masked (or not) client frames.
//   - scrapeMetrics() / metricValue(): GET /metrics and parse the Prometheus text.
// Every wait here has a time bound; nothing waits on an event that may never come.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SRC = process.env.PRESENCED_SRC || path.resolve(here, '..', '..', '..');
export const BIN = process.env.PRESENCED_BIN || path.join(SRC, 'build-integ', 'presenced');

const STDERR_KEEP = 4 * 1024 * 1024; // bytes of daemon log kept for failure messages
const SANITIZER_REPORT = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: \w+Sanitizer/;

// Daemons still running when the test process exits are killed, whatever happened.
const live = new Set();
process.on('exit', () => {
    for (const d of live) {
        try {
            d.proc.kill('SIGKILL');
        } catch {
            /* already gone */
        }
    }
});

/** Resolves as promise does, or rejects after ms with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
    let timer;
    const t = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Daemon {
    constructor(proc, flags) {
        this.proc = proc;
        this.flags = flags;
        this.port = 0;
        this.log = '';
        this.exit = null; // {code, signal} once exited
        this.stopping = false; // stop(), kill() or a test's own signal: the exit is expected
        this.exited = new Promise((resolve) => {
            proc.on('exit', (code, signal) => {
                this.exit = { code, signal };
                live.delete(this);
                // A daemon that dies on its own is the most important failure: show why at once,
                // since the tests that follow will only see refused connections.
                if (!this.stopping)
                    console.error(`\npresenced (port ${this.port}) exited unexpectedly: code ${code}, signal ${signal}\n${this.tail(80)}\n`);
                resolve(this.exit);
            });
        });
        proc.stderr.setEncoding('utf8');
        proc.stderr.on('data', (s) => {
            this.log += s;
            if (this.log.length > STDERR_KEEP) this.log = this.log.slice(-STDERR_KEEP);
        });
        proc.stdout.resume(); // nothing expected there; never let the pipe fill
    }

    get url() {
        return `http://127.0.0.1:${this.port}`;
    }

    wsUrl(user = 'u1', path = '/presence') {
        return `ws://127.0.0.1:${this.port}${path}?user=${encodeURIComponent(user)}`;
    }

    /** The last lines of the daemon's log, for assertion messages. */
    tail(lines = 40) {
        return this.log.split('\n').slice(-lines).join('\n');
    }

    /** Waits until the log matches re (polling the collected stderr). */
    async waitForLog(re, timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const m = this.log.match(re);
            if (m) return m;
            if (this.exit) throw new Error(`daemon exited before logging ${re}\n${this.tail()}`);
            if (Date.now() > deadline) throw new Error(`daemon did not log ${re} in ${timeoutMs} ms\n${this.tail()}`);
            await sleep(20);
        }
    }

    /** Waits for the process to exit (without signalling it) and checks a clean exit 0. */
    async waitExit(timeoutMs = 15000) {
        let exit;
        try {
            exit = await withTimeout(this.exited, timeoutMs, 'presenced to exit');
        } catch (e) {
            this.stopping = true;
            this.proc.kill('SIGKILL');
            await withTimeout(this.exited, 5000, 'presenced to die after SIGKILL').catch(() => {});
            throw new Error(`${e.message}; killed it\n${this.tail()}`);
        }
        assert.equal(exit.signal, null, `presenced died of ${exit.signal}\n${this.tail()}`);
        assert.equal(exit.code, 0, `presenced exited with ${exit.code}\n${this.tail(80)}`);
        assert.doesNotMatch(this.log, SANITIZER_REPORT, `sanitizer report in the log\n${this.tail(80)}`);
        return exit;
    }

    /** SIGTERM, then asserts exit code 0 within timeoutMs (a leak under ASan fails here). */
    async stop(timeoutMs = 15000) {
        this.signal('SIGTERM');
        return this.waitExit(timeoutMs);
    }

    /** Sends sig (an expected exit follows: not reported as a crash). */
    signal(sig) {
        this.stopping = true;
        if (!this.exit) this.proc.kill(sig);
    }

    /** For cleanup after a failure: SIGKILL if still running, no assertions. */
    async kill() {
        this.stopping = true;
        if (this.exit) return;
        this.proc.kill('SIGKILL');
        await withTimeout(this.exited, 5000, 'presenced to die').catch(() => {});
    }
}

/**
 * Starts presenced on 127.0.0.1:0 with --dev-auth and the given extra flags; resolves once it
 * logs the port it listens on. Unless the flags name a --data-dir, the daemon keeps its state
 * in memory only (--ephemeral), so tests never share or leave a database behind.
 */
export async function startDaemon(flags = [], { timeoutMs = 15000 } = {}) {
    assert.ok(existsSync(BIN), `presenced binary not found at ${BIN} (set PRESENCED_BIN)`);
    const persistent = flags.some((f) => f === '--data-dir' || f.startsWith('--data-dir='));
    const isolation = persistent || flags.includes('--ephemeral') ? [] : ['--ephemeral'];
    const args = ['--listen', '127.0.0.1:0', '--dev-auth', ...isolation, ...flags];
    const env = { ...process.env };
    if (!env.ASAN_OPTIONS) env.ASAN_OPTIONS = 'detect_leaks=1';
    if (!env.UBSAN_OPTIONS) env.UBSAN_OPTIONS = 'print_stacktrace=1';
    const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const d = new Daemon(proc, args);
    live.add(d);
    const spawnError = new Promise((_, reject) => proc.on('error', reject));
    try {
        const m = await Promise.race([
            d.waitForLog(/listening on http:\/\/127\.0\.0\.1:(\d+)\//, timeoutMs),
            spawnError,
        ]);
        d.port = Number(m[1]);
    } catch (e) {
        await d.kill();
        throw e;
    }
    return d;
}

// ---------------------------------------------------------------------------------------------
// Node `ws` clients

/**
 * A `ws` client whose messages queue up until taken with next(). The server's first message,
 * {"type":"welcome",...} (docs/PROTOCOL.md), is kept apart in .welcome, not queued.
 */
export class WsClient {
    constructor(ws) {
        this.ws = ws;
        this.welcome = null;
        this.firstSeen = false;
        this.queue = [];
        this.waiters = [];
        this.closeInfo = null;
        this.errors = [];
        this.closed = new Promise((resolve) => {
            ws.on('close', (code, reason) => {
                this.closeInfo = { code, reason: reason.toString() };
                this._wake();
                resolve(this.closeInfo);
            });
        });
        ws.on('message', (data, isBinary) => {
            const msg = isBinary ? data : data.toString();
            if (!this.firstSeen) {
                this.firstSeen = true;
                const w = isWelcome(msg);
                if (w) {
                    this.welcome = w;
                    this._wake();
                    return;
                }
            }
            this.queue.push(msg);
            this._wake();
        });
        ws.on('error', (e) => this.errors.push(e));
    }

    _wake() {
        const w = this.waiters;
        this.waiters = [];
        for (const f of w) f();
    }

    /** The next message (a string for text), or throws after timeoutMs or if the socket closes. */
    async next(timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        while (this.queue.length === 0) {
            if (this.closeInfo)
                throw new Error(`socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for a message`);
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`no message within ${timeoutMs} ms`);
            await withTimeout(new Promise((r) => this.waiters.push(r)), left, 'a message').catch(() => {});
        }
        return this.queue.shift();
    }

    /** Waits for the welcome message; returns it. */
    async waitWelcome(timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        while (!this.welcome) {
            if (this.firstSeen) throw new Error(`first message was not a welcome: ${this.queue[0]}`);
            if (this.closeInfo) throw new Error(`socket closed (${this.closeInfo.code}) before the welcome`);
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`no welcome within ${timeoutMs} ms`);
            await withTimeout(new Promise((r) => this.waiters.push(r)), left, 'the welcome').catch(() => {});
        }
        return this.welcome;
    }

    async nextJson(timeoutMs = 5000) {
        return JSON.parse(await this.next(timeoutMs));
    }

    send(data, opts = {}) {
        return new Promise((resolve, reject) => this.ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
    }

    /** Resolves with {code, reason} once closed; throws after timeoutMs. */
    waitClose(timeoutMs = 5000) {
        return withTimeout(this.closed, timeoutMs, 'the WebSocket to close');
    }

    /** Clean close: sends code/reason, resolves with what the server answered. */
    async close(code = 1000, reason = '', timeoutMs = 5000) {
        if (!this.closeInfo) this.ws.close(code, reason);
        return this.waitClose(timeoutMs);
    }

    terminate() {
        this.ws.terminate();
    }
}

/** The parsed message if it is the server's {"type":"welcome"}, else null. */
function isWelcome(msg) {
    if (typeof msg !== 'string' || !msg.startsWith('{"type":"welcome"')) return null;
    try {
        return JSON.parse(msg);
    } catch {
        return null;
    }
}

/**
 * Opens a `ws` client to the daemon (or a port) at path?user=..., resolving once open and
 * welcomed (the welcome names the user; opts.welcome false skips the wait).
 * opts: user, path, headers, origin, wsOptions, timeoutMs, welcome.
 */
export async function openWs(target, opts = {}) {
    const port = typeof target === 'number' ? target : target.port;
    const user = opts.user ?? 'u1';
    const p = opts.path ?? '/presence';
    const url = `ws://127.0.0.1:${port}${p}?user=${encodeURIComponent(user)}`;
    const ws = new WebSocket(url, {
        headers: opts.headers,
        origin: opts.origin,
        handshakeTimeout: opts.timeoutMs ?? 5000,
        ...opts.wsOptions,
    });
    const client = new WsClient(ws);
    await withTimeout(
        new Promise((resolve, reject) => {
            ws.once('open', resolve);
            ws.once('error', reject);
            ws.once('unexpected-response', (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
        }),
        (opts.timeoutMs ?? 5000) + 1000,
        `WebSocket open to ${url}`,
    );
    if (opts.welcome !== false) {
        const w = await client.waitWelcome(opts.timeoutMs ?? 5000);
        assert.equal(w.user_id, user, 'the welcome names the connecting user');
    }
    return client;
}

/** Opens a client, checks ping -> pong, closes it cleanly. Proves the daemon still serves. */
export async function assertWsHealthy(target, user = 'health') {
    const c = await openWs(target, { user });
    await c.send('{"type":"ping"}');
    assert.deepEqual(await c.nextJson(), { type: 'pong' });
    const { code } = await c.close(1000);
    assert.equal(code, 1000);
}

// ---------------------------------------------------------------------------------------------
// Raw TCP

/** A raw TCP connection with a receive buffer and timed reads. */
export class RawConn {
    constructor(sock) {
        this.sock = sock;
        this.buf = Buffer.alloc(0);
        this.ended = false; // the peer sent FIN (or the socket closed)
        this.error = null; // e.g. ECONNRESET
        this.waiters = [];
        sock.on('data', (d) => {
            this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
            this._wake();
        });
        sock.on('end', () => {
            this.ended = true;
            this._wake();
        });
        sock.on('close', () => {
            this.ended = true;
            this._wake();
        });
        sock.on('error', (e) => {
            this.error = e;
            this.ended = true;
            this._wake();
        });
    }

    _wake() {
        const w = this.waiters;
        this.waiters = [];
        for (const f of w) f();
    }

    /** Writes data; resolves once handed to the kernel (bounded: a peer that stops reading
     * for timeoutMs fails the write). */
    write(data, timeoutMs = 10000) {
        return withTimeout(
            new Promise((resolve, reject) => {
                if (this.sock.destroyed) return reject(new Error('socket destroyed'));
                this.sock.write(data, (e) => (e ? reject(e) : resolve()));
            }),
            timeoutMs,
            `a write of ${data.length} bytes`,
        );
    }

    /** Like write, but a reset or closed socket is not an error (the server may close first). */
    async writeQuiet(data) {
        try {
            await this.write(data);
            return true;
        } catch {
            return false;
        }
    }

    /**
     * Calls parse(buf) on each arrival until it returns a value other than undefined; parse
     * returns {value, used} to consume used bytes. Throws on timeout or when the peer ends
     * before parse succeeds.
     */
    async waitFor(parse, timeoutMs, what) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const r = parse(this.buf);
            if (r !== undefined) {
                this.buf = this.buf.subarray(r.used);
                return r.value;
            }
            if (this.ended)
                throw new Error(`connection ended (${this.error ? this.error.code : 'EOF'}) before ${what}; ` +
                    `${this.buf.length} bytes unparsed: ${JSON.stringify(this.buf.subarray(0, 200).toString('latin1'))}`);
            const left = deadline - Date.now();
            if (left <= 0)
                throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${this.buf.length} bytes buffered`);
            await new Promise((resolve) => {
                const t = setTimeout(resolve, left);
                this.waiters.push(() => {
                    clearTimeout(t);
                    resolve();
                });
            });
        }
    }

    /** Reads one HTTP/1.1 response; noBody for answers to HEAD (Content-Length is not sent). */
    readResponse(timeoutMs = 5000, { noBody = false } = {}) {
        return this.waitFor((b) => parseHttpResponse(b, noBody), timeoutMs, 'an HTTP response');
    }

    /** Reads one WebSocket frame sent by the server. */
    readFrame(timeoutMs = 5000) {
        return this.waitFor(parseFrame, timeoutMs, 'a WebSocket frame');
    }

    /**
     * Reads frames until a close frame; returns {code, reason, before: [frames before it]}.
     * At most maxFrames frames are skipped.
     */
    async readClose(timeoutMs = 5000, maxFrames = 100000) {
        const deadline = Date.now() + timeoutMs;
        const before = [];
        for (let i = 0; i <= maxFrames; i++) {
            const f = await this.readFrame(Math.max(1, deadline - Date.now()));
            if (f.opcode === 8) {
                const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null;
                return { code, reason: f.payload.subarray(2).toString('utf8'), frame: f, before };
            }
            before.push(f);
        }
        throw new Error(`no close frame among ${maxFrames} frames`);
    }

    /** Waits until the peer ends the connection (FIN or reset). Returns {error} (a code or null). */
    async waitEnd(timeoutMs = 5000) {
        await this.waitFor((b) => (this.ended ? { value: true, used: 0 } : undefined), timeoutMs,
            'the server to close the connection').catch((e) => {
            if (!this.ended) throw e;
        });
        return { error: this.error ? this.error.code : null };
    }

    /** Resolves true if the peer ends within ms, false if it is still open after ms. */
    async endsWithin(ms) {
        try {
            await this.waitEnd(ms);
            return true;
        } catch {
            return false;
        }
    }

    pause() {
        this.sock.pause();
    }

    resume() {
        this.sock.resume();
    }

    destroy() {
        this.sock.destroy();
    }
}

/** Opens a raw TCP connection to 127.0.0.1:port. */
export async function rawConnect(target, timeoutMs = 5000) {
    const port = typeof target === 'number' ? target : target.port;
    const sock = net.createConnection({ host: '127.0.0.1', port });
    sock.setNoDelay(true);
    await withTimeout(
        new Promise((resolve, reject) => {
            sock.once('connect', resolve);
            sock.once('error', reject);
        }),
        timeoutMs,
        `TCP connect to port ${port}`,
    );
    return new RawConn(sock);
}

/** Parses one HTTP response at the start of b: {value: {status, reason, headers, body, head}, used}. */
export function parseHttpResponse(b, noBody = false) {
    const end = b.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const head = b.subarray(0, end).toString('latin1');
    const lines = head.split('\r\n');
    const m = lines[0].match(/^HTTP\/1\.([01]) (\d{3}) ?(.*)$/);
    if (!m) throw new Error(`bad status line: ${JSON.stringify(lines[0])}`);
    const headers = {};
    for (const line of lines.slice(1)) {
        const i = line.indexOf(':');
        if (i < 0) throw new Error(`bad header line: ${JSON.stringify(line)}`);
        const name = line.slice(0, i).trim().toLowerCase();
        const value = line.slice(i + 1).trim();
        headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    const status = Number(m[2]);
    let len = 0;
    if (!noBody && status !== 101 && status !== 204 && status !== 304) {
        if (!('content-length' in headers)) throw new Error(`response without Content-Length: ${head}`);
        len = Number(headers['content-length']);
    }
    if (b.length < end + 4 + len) return undefined;
    const body = b.subarray(end + 4, end + 4 + len);
    return { value: { status, reason: m[3], headers, body: body.toString('utf8'), head }, used: end + 4 + len };
}

/** Parses one server frame at the start of b: {value: {fin, rsv, opcode, masked, payload}, used}. */
export function parseFrame(b) {
    if (b.length < 2) return undefined;
    const fin = (b[0] & 0x80) !== 0;
    const rsv = (b[0] >> 4) & 7;
    const opcode = b[0] & 0x0f;
    const masked = (b[1] & 0x80) !== 0;
    let len = b[1] & 0x7f;
    let off = 2;
    if (len === 126) {
        if (b.length < 4) return undefined;
        len = b.readUInt16BE(2);
        off = 4;
    } else if (len === 127) {
        if (b.length < 10) return undefined;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
    }
    let key = null;
    if (masked) {
        if (b.length < off + 4) return undefined;
        key = b.subarray(off, off + 4);
        off += 4;
    }
    if (b.length < off + len) return undefined;
    const payload = Buffer.from(b.subarray(off, off + len));
    if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
    return { value: { fin, rsv, opcode, masked, payload }, used: off + len };
}

/** A fresh random Sec-WebSocket-Key. */
export const wsKey = () => crypto.randomBytes(16).toString('base64');

/** The Sec-WebSocket-Accept value for key (RFC 6455 section 4.2.2). */
export function wsAccept(key) {
    return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

/**
 * Builds an upgrade request. opts.headers: extra or replacing headers (a value of null drops a
 * default header); opts.method, opts.path, opts.version.
 */
export function upgradeRequest(opts = {}) {
    const key = opts.key ?? wsKey();
    const hdrs = {
        Host: '127.0.0.1',
        Upgrade: 'websocket',
        Connection: 'Upgrade',
        'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Version': '13',
        ...opts.headers,
    };
    const user = opts.user ?? 'raw';
    const target = opts.path ?? `/presence?user=${encodeURIComponent(user)}`;
    let s = `${opts.method ?? 'GET'} ${target} ${opts.version ?? 'HTTP/1.1'}\r\n`;
    for (const [k, v] of Object.entries(hdrs)) if (v !== null && v !== undefined) s += `${k}: ${v}\r\n`;
    return { text: s + '\r\n', key };
}

/**
 * Opens a raw socket and completes the WebSocket handshake (optionally sending `after` in the
 * same write as the request). Returns the RawConn positioned after the 101 response and the
 * server's welcome message (checked: a text frame naming the user), so the next frame read is
 * the answer to what the test sends.
 */
export async function rawWsConnect(target, { user = 'raw', after = null, timeoutMs = 5000 } = {}) {
    const c = await rawConnect(target, timeoutMs);
    const { text, key } = upgradeRequest({ user });
    await c.write(after ? Buffer.concat([Buffer.from(text), after]) : text);
    const r = await c.readResponse(timeoutMs);
    assert.equal(r.status, 101, `handshake answered ${r.status}: ${r.head}`);
    assert.equal(r.headers['sec-websocket-accept'], wsAccept(key));
    assert.match(r.headers.upgrade, /^websocket$/i);
    const f = await c.readFrame(timeoutMs);
    const w = f.opcode === 1 && f.fin ? isWelcome(f.payload.toString('utf8')) : null;
    assert.ok(w, `first frame is not a welcome: opcode ${f.opcode} ${f.payload.toString('latin1').slice(0, 200)}`);
    assert.equal(w.user_id, user);
    c.welcome = w;
    return c;
}

/**
 * A client frame. payload: Buffer or string (UTF-8); opcode 1 text by default; mask true
 * (clients must mask); rsv: the three RSV bits as a number 0..7.
 */
export function buildFrame({ opcode = 1, payload = Buffer.alloc(0), fin = true, rsv = 0, mask = true } = {}) {
    const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
    const head = frameHeader({ opcode, fin, rsv, mask, len: data.length });
    if (!mask) return Buffer.concat([head.header, data]);
    const body = Buffer.from(data);
    for (let i = 0; i < body.length; i++) body[i] ^= head.key[i & 3];
    return Buffer.concat([head.header, body]);
}

/**
 * Only the header of a frame announcing len payload bytes (for "refused from the header"
 * tests): {header, key}. minimal false forces the 64-bit length form.
 */
export function frameHeader({ opcode = 1, fin = true, rsv = 0, mask = true, len = 0, lenForm = null } = {}) {
    const parts = [Buffer.from([(fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0f)])];
    const m = mask ? 0x80 : 0;
    const form = lenForm ?? (len < 126 ? 7 : len <= 0xffff ? 16 : 64);
    if (form === 7) {
        parts.push(Buffer.from([m | len]));
    } else if (form === 16) {
        const b = Buffer.alloc(3);
        b[0] = m | 126;
        b.writeUInt16BE(len, 1);
        parts.push(b);
    } else {
        const b = Buffer.alloc(9);
        b[0] = m | 127;
        b.writeBigUInt64BE(BigInt(len), 1);
        parts.push(b);
    }
    const key = mask ? crypto.randomBytes(4) : null;
    if (key) parts.push(key);
    return { header: Buffer.concat(parts), key };
}

/** The payload of a close frame: code (omitted when null) then reason (string or Buffer). */
export function closePayload(code, reason = '') {
    if (code === null) return Buffer.alloc(0);
    const r = Buffer.isBuffer(reason) ? reason : Buffer.from(reason, 'utf8');
    const b = Buffer.alloc(2);
    b.writeUInt16BE(code);
    return Buffer.concat([b, r]);
}

// ---------------------------------------------------------------------------------------------
// HTTP and metrics

/** One request on a fresh connection; returns the response. */
export async function httpRequest(target, text, { timeoutMs = 5000, noBody = false } = {}) {
    const c = await rawConnect(target, timeoutMs);
    try {
        await c.write(text);
        return await c.readResponse(timeoutMs, { noBody });
    } finally {
        c.destroy();
    }
}

/** GET path with Connection: close. */
export function httpGet(target, path, opts) {
    return httpRequest(target, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`, opts);
}

/** Proves the daemon still answers a normal request on a new connection. */
export async function assertHttpHealthy(target) {
    const r = await httpGet(target, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'ok\n');
}

/**
 * Scrapes /metrics into a Map from `name` or `name{labels as rendered}` to a number, checking
 * that each sample line is well formed.
 */
export async function scrapeMetrics(target) {
    const r = await httpGet(target, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    return parseMetrics(r.body);
}

export function parseMetrics(text) {
    const out = new Map();
    for (const line of text.split('\n')) {
        if (line === '' || line.startsWith('#')) continue;
        const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/);
        assert.ok(m, `malformed metrics line: ${JSON.stringify(line)}`);
        out.set(m[1] + (m[2] ?? ''), Number(m[3]));
    }
    return out;
}

/** The value of name with exactly the given labels ({} for none); 0 when absent. */
export function metricValue(metrics, name, labels = {}) {
    const entries = Object.entries(labels);
    const key = entries.length ? `${name}{${entries.map(([k, v]) => `${k}="${v}"`).join(',')}}` : name;
    return metrics.get(key) ?? 0;
}

/** Polls /metrics until pred(metrics) holds; returns the metrics. */
export async function waitForMetrics(target, pred, timeoutMs = 5000, what = 'a metrics condition') {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const m = await scrapeMetrics(target);
        if (pred(m)) return m;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(25);
    }
}
