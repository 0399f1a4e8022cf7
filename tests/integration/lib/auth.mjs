// Helpers for the token, privacy and restart tests (auth.test.mjs, privacy.test.mjs,
// restart.test.mjs), built on lib/daemon.mjs and lib/presence.mjs:
//   - JWTs made with node:crypto: HS256 (HMAC-SHA256), RS256 (RSA PKCS#1 v1.5) and ES256
//     (ECDSA P-256, the JWS raw r||s form: dsaEncoding 'ieee-p1363'), with any header and
//     claims, and key files for the daemon's flags in a temporary directory.
//   - openTokenClient(): a PClient connected with ?token= or Authorization: Bearer.
//   - rawUpgrade(): an upgrade request on a raw socket, returning the whole HTTP answer, so a
//     refusal can be checked byte for byte.
//   - ask(): a request with an id answered by any message type (channel_state, privacy, ...).
//   - runToExit(): runs presenced expecting it to exit by itself (a refused start-up), as a
//     given uid when asked, with its stderr.
// Every wait has a time bound.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';

import { BIN, rawConnect, upgradeRequest, withTimeout } from './daemon.mjs';
import { nextId, PClient } from './presence.mjs';

/** A fresh temporary directory (removed by rmTemp). */
export function makeTemp(prefix = 'pd-auth-') {
    return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function rmTemp(dir) {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

/** Epoch seconds now (fractional). */
export const epoch = () => Date.now() / 1000;

const b64 = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

/**
 * A signed token. kind: 'HS256' (key: the secret), 'RS256' or 'ES256' (key: a private
 * KeyObject). header and claims: objects (JSON-encoded) or strings (used as they are).
 * The header defaults to {alg: kind, typ: 'JWT'}.
 */
export function signToken(kind, key, claims, header = { alg: kind, typ: 'JWT' }) {
    const input = `${b64(header)}.${b64(claims)}`;
    let sig;
    if (kind === 'HS256') sig = crypto.createHmac('sha256', key).update(input).digest();
    else if (kind === 'RS256') sig = crypto.sign('sha256', Buffer.from(input), key);
    else if (kind === 'ES256') sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    else if (kind === 'none') sig = Buffer.alloc(0);
    else throw new Error(`unknown kind ${kind}`);
    return `${input}.${sig.toString('base64url')}`;
}

/** The standard claims of user, valid for secs seconds from now, with extra claims merged. */
export function claimsFor(user, secs = 3600, extra = {}) {
    return { sub: user, exp: Math.floor(epoch()) + secs, ...extra };
}

/** An HS256 secret written to dir/secret (with the trailing newline `echo` adds). */
export function writeSecret(dir, secret = crypto.randomBytes(32).toString('hex')) {
    const file = path.join(dir, 'secret');
    fs.writeFileSync(file, `${secret}\n`);
    return { file, secret };
}

/** A key pair ('rsa' 2048 or 'ec' P-256) with the public key written as PEM to dir/name. */
export function writeKeyPair(dir, type, name = `${type}.pem`) {
    const { publicKey, privateKey } = type === 'rsa'
        ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
        : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = publicKey.export({ type: 'spki', format: 'pem' });
    const file = path.join(dir, name);
    fs.writeFileSync(file, pem);
    return { file, pem, publicKey, privateKey };
}

/**
 * Opens a client with a token, passed as ?token= (via 'query') or in Authorization: Bearer
 * (via 'header'); query adds other query parameters (e.g. {user: 'x'}). Resolves after the
 * welcome, which must name expectUser.
 */
export async function openTokenClient(d, token, { via = 'query', query = {}, expectUser, timeoutMs = 5000 } = {}) {
    const params = new URLSearchParams(query);
    if (via === 'query') params.set('token', token);
    const qs = params.toString();
    const url = `ws://127.0.0.1:${d.port}/presence${qs ? `?${qs}` : ''}`;
    const headers = via === 'header' ? { Authorization: `Bearer ${token}` } : {};
    const ws = new WebSocket(url, { headers, handshakeTimeout: timeoutMs });
    const c = new PClient(ws, expectUser ?? '?', d);
    await withTimeout(new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
        ws.once('unexpected-response', (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    }), timeoutMs + 1000, `WebSocket open with a token (${via})`);
    c.welcome = await c.waitFor((m) => m.type === 'welcome', timeoutMs, 'welcome');
    if (expectUser !== undefined) assert.equal(c.welcome.user_id, expectUser, 'the welcome names the token\'s user');
    return c;
}

/**
 * Sends an upgrade request on a raw socket (path with its query; extra headers) and returns
 * the server's whole answer: {status, head, headers, body}. The socket is closed after.
 */
export async function rawUpgrade(d, { path: p = '/presence', headers = {}, timeoutMs = 5000 } = {}) {
    const c = await rawConnect(d, timeoutMs);
    try {
        const { text } = upgradeRequest({ path: p, headers });
        await c.write(text);
        return await c.readResponse(timeoutMs);
    } finally {
        c.destroy();
    }
}

/** The exact answer to a refused upgrade: 401 and nothing that says why. */
export const BARE_401_HEAD = 'HTTP/1.1 401 Unauthorized\r\nServer: presenced\r\nContent-Length: 17\r\n' +
    'X-Content-Type-Options: nosniff\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close';
export const BARE_401_BODY = '401 Unauthorized\n';

/** Sends obj with a fresh id (unless it has one); resolves with the message carrying that id. */
export async function ask(c, obj, timeoutMs = 3000) {
    const id = obj.id ?? nextId('q');
    const msg = { ...obj, id };
    await c.send(msg);
    return c.waitFor((m) => m.id === id, timeoutMs, `the answer to ${JSON.stringify(msg).slice(0, 200)}`);
}

/** ask() that must be answered with an error of code; returns the error. */
export async function askError(c, obj, code, timeoutMs = 3000) {
    const a = await ask(c, obj, timeoutMs);
    assert.equal(a.type, 'error', `${JSON.stringify(obj)} answered ${JSON.stringify(a)}`);
    assert.equal(a.code, code, `${JSON.stringify(obj)} answered ${JSON.stringify(a)}`);
    assert.deepEqual(Object.keys(a), ['type', 'id', 'code', 'message']);
    return a;
}

/**
 * Runs presenced with flags (no --dev-auth, no --ephemeral added) expecting it to exit by
 * itself within timeoutMs; resolves with {code, signal, stderr}. opts.uid/gid: run as that
 * user (the tests run as root, who may write anywhere).
 */
export async function runToExit(flags, { timeoutMs = 15000, uid, gid } = {}) {
    const env = { ...process.env };
    if (!env.ASAN_OPTIONS) env.ASAN_OPTIONS = 'detect_leaks=1';
    const opts = { stdio: ['ignore', 'pipe', 'pipe'], env, cwd: os.tmpdir() };
    if (uid !== undefined) opts.uid = uid;
    if (gid !== undefined) opts.gid = gid;
    const proc = spawn(path.resolve(BIN), ['--listen', '127.0.0.1:0', ...flags], opts);
    let stderr = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (s) => {
        stderr += s;
    });
    proc.stdout.resume();
    const exited = new Promise((resolve, reject) => {
        proc.on('error', reject);
        proc.on('exit', (code, signal) => resolve({ code, signal }));
    });
    try {
        const r = await withTimeout(exited, timeoutMs, 'presenced to exit by itself');
        // stderr may still be draining.
        await new Promise((resolve) => (proc.stderr.readableEnded ? resolve() : proc.stderr.once('end', resolve)));
        return { ...r, stderr };
    } catch (e) {
        proc.kill('SIGKILL');
        throw new Error(`${e.message}; its log:\n${stderr}`);
    }
}

/** Whether this process may write anywhere (root): then "unwritable" needs another user. */
export const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;
export const NOBODY = 65534;
