// Configuration of the real daemon (src/config.c, src/main.c; docs/OPERATIONS.md section 2):
//  - the keys are read from `presenced --help`, so every key of the table is covered and a new
//    one is picked up without editing this file;
//  - every key, from each of its three sources (--flag, PRESENCED_* variable, --config file),
//    refuses values it cannot take (every bad value of its type for the first key of each type,
//    a sample for the keys sharing that parser): --check-config exits 2 and the message names
//    the key (the flag, the variable, or the file, line and key); some also stop a real start;
//  - values that only the files, directories and addresses they name can refute (token keys,
//    API keys, webhook URL and secret, Redis addresses and node id, static directories, the
//    data directory, token claims without a key) are refused by --check-config exactly as at
//    start, naming the key;
//  - precedence, lowest first: defaults, the file, the environment, the command line, shown by
//    behaviour (the heartbeat TTL in the welcome, the origins a repeatable key allows) and by
//    --check-config (which value it refutes);
//  - the file: comments, blank lines, [presenced], inline ';' comments; unknown keys, keys
//    that only make sense as flags, unknown sections, bad lines, lines over the parser's
//    limit, indented lines (not continuations), a missing file, a directory; PRESENCED_CONFIG
//    names the file like --config.
// Every run is bounded in time (spawnSync timeouts, startDaemon's own); daemons started for
// real are stopped with exit 0 (under ASan: no leak).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { BIN, httpRequest, upgradeRequest, withTimeout } from './lib/daemon.mjs';
import { openClient, startPresenced, stopDaemon } from './lib/presence.mjs';

const T = { timeout: 60000 };
const ONLY_FLAGS = new Set(['config', 'check-config', 'help', 'version']); // not file keys
let tmp;
let keys; // [{name, type}] from --help
let secretFile;
let keysFile;

/** The daemon's environment without any PRESENCED_* of ours (the harness sets two). */
function baseEnv(extra = {}) {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PRESENCED_')) env[k] = v;
    env.ASAN_OPTIONS = process.env.ASAN_OPTIONS ?? 'detect_leaks=1';
    return { ...env, ...extra };
}

/** Runs presenced synchronously (it must exit by itself): {status, stdout, stderr}. */
function run(args, env = {}) {
    const r = spawnSync(BIN, args, { cwd: tmp, env: baseEnv(env), encoding: 'utf8', timeout: 20000 });
    assert.equal(r.error, undefined, `presenced ${args.join(' ')}: ${r.error}`);
    return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Like run, several at a time (each spawn is slow under ASan). */
async function runMany(jobs, parallel = 8) {
    const out = new Array(jobs.length);
    let next = 0;
    async function worker() {
        while (next < jobs.length) {
            const i = next++;
            const { args, env = {} } = jobs[i];
            out[i] = await withTimeout(new Promise((resolve, reject) => {
                const p = spawn(BIN, args, { cwd: tmp, env: baseEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
                let stdout = '';
                let stderr = '';
                p.stdout.on('data', (d) => (stdout += d));
                p.stderr.on('data', (d) => (stderr += d));
                p.on('error', reject);
                p.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
            }), 20000, `presenced ${args.join(' ').slice(0, 200)}`);
        }
    }
    await Promise.all(Array.from({ length: parallel }, worker));
    return out;
}

let fileSeq = 0;
/** Writes a config file with text; returns its path. */
function confFile(text) {
    const p = path.join(tmp, `c${++fileSeq}.conf`);
    fs.writeFileSync(p, text);
    return p;
}

const envName = (key) => `PRESENCED_${key.toUpperCase().replaceAll('-', '_')}`;
const show = (v) => JSON.stringify(v).slice(0, 60);
const reEscape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'presenced-config-'));
    secretFile = path.join(tmp, 'token-secret');
    fs.writeFileSync(secretFile, 's'.repeat(48));
    keysFile = path.join(tmp, 'api-keys');
    fs.writeFileSync(keysFile, 'config-test-api-key-0123456789\n');
    const h = run(['--help']);
    assert.equal(h.status, 0);
    keys = [];
    for (const line of h.stdout.split('\n')) {
        const m = line.match(/^ {2}--([a-z0-9-]+)(?: (SECONDS|BYTES|N|ADDR:PORT|PATH|VALUE))?\s+\S/);
        if (m) keys.push({ name: m[1], type: m[2] ?? 'BOOL' });
    }
});

after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

/** Values key cannot take, by its type (and, for a few, its meaning). */
function invalidValues(k) {
    const common = ['a\u0001b', 'tab\there', 'del\u007f'];
    switch (k.type) {
    case 'N':
        return ['abc', '-1', '1.5', '0', '4294967296', '', ' 5', '5 ', '0x10', '1e3', '5K', '+5', ...common];
    case 'BYTES':
        return ['abc', '-1K', '12Q', '1', '1.5', '64KB', 'K', '99G', '', '1e9', ...common];
    case 'SECONDS':
        return ['abc', '-1', '1s', '99999999', '1e3', '', '.5', '5.', '0x1', '1,5', ...common];
    case 'ADDR:PORT':
        return ['localhost', '127.0.0.1', '127.0.0.1:65536', '::1:80', 'example.com:80', '127.0.0.1:-1',
            '127.0.0.1:80x', ':80', '[::1]80', '[::1]:', '127.0.0.1: 80', '', ...common];
    case 'PATH':
        return ['presence', '', 'ws path', ...common];
    case 'BOOL':
        return ['maybe', '2', 'TRUE', 'yes please', '', ...common];
    default: {
        const lists = new Set(['allow-origin', 'webhook-url']);
        if (lists.has(k.name)) return ['', ...common];
        const v = ['x'.repeat(5000), ...common];
        if (k.name === 'log-level') v.push('verbose', 'INFO', 'warning', '');
        if (k.name === 'log-format') v.push('xml', 'JSON', '');
        return v;
    }
    }
}

/**
 * The values to try for k: all of its type's for the first key of each type (and for the keys
 * with their own rules), a sample for the others, which take the same parser.
 */
const seenTypes = new Set();
function valuesFor(k) {
    const all = invalidValues(k);
    const own = ['log-level', 'log-format', 'allow-origin', 'webhook-url'].includes(k.name);
    if (own || !seenTypes.has(k.type)) {
        seenTypes.add(k.type);
        return all;
    }
    return [...new Set([all[0], all[Math.floor(all.length / 2)], all[all.length - 3]])];
}
let samples; // key name -> values, fixed once so the three sources try the same ones

describe('every key refuses bad values from every source', () => {
    before(() => {
        samples = new Map(keys.map((k) => [k.name, valuesFor(k)]));
    });

    test('the key table comes from --help and holds the documented keys', T, () => {
        const names = keys.map((k) => k.name);
        assert.ok(names.length >= 45, `only ${names.length} keys parsed from --help`);
        for (const k of ['listen', 'ws-path', 'allow-origin', 'max-message', 'out-max', 'heartbeat-ttl', 'offline-grace',
            'api-keys-file', 'sse-keepalive', 'webhook-url', 'webhook-secret-file', 'redis', 'redis-cluster', 'node-id',
            'log-level', 'log-format', 'dev-auth', 'config', 'check-config', 'ephemeral', 'data-dir'])
            assert.ok(names.includes(k), `--help lists ${k}`);
        assert.equal(new Set(names).size, names.length, 'each key once');
        for (const k of keys) assert.match(k.name, /^[a-z][a-z0-9-]*$/);
    });

    test('as --flag: --check-config exits 2 naming the flag', T, async () => {
        const jobs = [];
        for (const k of keys) {
            if (k.name === 'config') continue; // the file is read before flags: below
            for (const v of samples.get(k.name)) {
                const flag = k.type === 'BOOL' ? [`--${k.name}=${v}`] : [`--${k.name}`, v];
                jobs.push({ k, v, args: ['--ephemeral', '--check-config', ...flag] });
            }
            // The --flag=value form is the same flag.
            if (k.type !== 'BOOL' && samples.get(k.name).includes('')) jobs.push({ k, v: '', args: ['--ephemeral', '--check-config', `--${k.name}=`] });
        }
        const res = await runMany(jobs);
        let checked = 0;
        for (let i = 0; i < jobs.length; i++) {
            const { k, v } = jobs[i];
            const r = res[i];
            const what = `--${k.name} ${show(v)}`;
            assert.equal(r.status, 2, `${what}: exit ${r.status}\n${r.stderr}${r.stdout}`);
            assert.match(r.stderr, new RegExp(`invalid value for '--${reEscape(k.name)}'`), `${what}: the message names the flag: ${r.stderr}`);
            assert.doesNotMatch(r.stdout, /configuration OK/);
            assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
            checked++;
        }
        assert.ok(checked > 150, `${checked} refusals checked`);
    });

    test('as PRESENCED_* variable: --check-config exits 2 naming the variable', T, async () => {
        const jobs = [];
        for (const k of keys) {
            if (k.name === 'help' || k.name === 'version') continue; // not settings: a warning (below)
            for (const v of samples.get(k.name)) {
                // Repeatable keys take comma-separated lists here: an empty item is skipped, so
                // an empty list item is not a value.
                if (['allow-origin', 'webhook-url'].includes(k.name) && v === '') continue;
                jobs.push({ k, v, args: ['--ephemeral', '--check-config'], env: { [envName(k.name)]: v } });
            }
        }
        const res = await runMany(jobs);
        for (let i = 0; i < jobs.length; i++) {
            const { k, v } = jobs[i];
            const r = res[i];
            const what = `${envName(k.name)}=${show(v)}`;
            assert.equal(r.status, 2, `${what}: exit ${r.status}\n${r.stderr}${r.stdout}`);
            assert.match(r.stderr, new RegExp(`${envName(k.name)}\\b`), `${what}: the message names the variable: ${r.stderr}`);
            assert.doesNotMatch(r.stdout, /configuration OK/);
        }
    });

    test('in the --config file: --check-config exits 2 naming the file, the line and the key', T, async () => {
        const jobs = [];
        for (const k of keys) {
            if (ONLY_FLAGS.has(k.name)) continue;
            for (const v of samples.get(k.name)) {
                // inih trims the value and ends it at an inline ';' comment: a trailing blank
                // and a leading one are not part of it.
                if (v === '5 ' || v === ' 5') continue;
                // The line would pass the INI parser's line limit (its own test below).
                if (v.length > 150) continue;
                const file = confFile(`# a comment\n\n[presenced]\n${k.name} = ${v}\n`);
                jobs.push({ k, v, file, args: ['--ephemeral', '--check-config', '--config', file] });
            }
        }
        const res = await runMany(jobs);
        for (let i = 0; i < jobs.length; i++) {
            const { k, v, file } = jobs[i];
            const r = res[i];
            const what = `${k.name} = ${show(v)} in a file`;
            assert.equal(r.status, 2, `${what}: exit ${r.status}\n${r.stderr}${r.stdout}`);
            assert.match(r.stderr, new RegExp(`config file '${reEscape(file)}' line 4: invalid value for '${reEscape(k.name)}'`),
                `${what}: ${r.stderr}`);
        }
    });

    test('a bad value also stops a real start (exit 2), from each source', T, async () => {
        const cases = [
            { args: ['--heartbeat-ttl', '0'], re: /invalid value for '--heartbeat-ttl'/ },
            { args: ['--listen', 'localhost'], re: /invalid value for '--listen'/ },
            { args: ['--max-message', '12Q'], re: /invalid value for '--max-message'/ },
            { args: [], env: { PRESENCED_OUT_MAX: '1' }, re: /PRESENCED_OUT_MAX/ },
            { args: [], env: { PRESENCED_LOG_LEVEL: 'verbose' }, re: /PRESENCED_LOG_LEVEL/ },
            { args: ['--config', confFile('ws-path = nope\n')], re: /line 1: invalid value for 'ws-path'/ },
            { args: ['--config', confFile('dev-auth = maybe\n')], re: /line 1: invalid value for 'dev-auth'/ },
        ];
        const res = await runMany(cases.map((c) => ({
            args: [...(c.args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0']), '--ephemeral', ...c.args], env: c.env })));
        for (let i = 0; i < cases.length; i++) {
            const r = res[i];
            assert.equal(r.status, 2, `${JSON.stringify(cases[i])}: exit ${r.status}\n${r.stderr}`);
            assert.match(r.stderr, cases[i].re);
            assert.doesNotMatch(r.stderr, /listening on/);
        }
    });
});

// ---------------------------------------------------------------------------------------------

describe('values only their files, directories and addresses can refute', () => {
    // Each: the flags, and what the message must say. --check-config and a real start must agree.
    function cases() {
        const short = path.join(tmp, 'short-secret');
        fs.writeFileSync(short, 'too short');
        const shortKeys = path.join(tmp, 'short-keys');
        fs.writeFileSync(shortKeys, 'tiny\n');
        const emptyKeys = path.join(tmp, 'empty-keys');
        fs.writeFileSync(emptyKeys, '# none\n');
        const notPem = path.join(tmp, 'not-pem');
        fs.writeFileSync(notPem, 'hello\n');
        const whShort = path.join(tmp, 'wh-short');
        fs.writeFileSync(whShort, 'abc\n');
        const aFile = path.join(tmp, 'a-file');
        fs.writeFileSync(aFile, 'x');
        const missing = path.join(tmp, 'missing');
        return [
            { flags: ['--token-secret-file', missing], key: 'token-secret-file', re: /missing/ },
            { flags: ['--token-secret-file', short], key: 'token-secret-file', re: /short-secret/ },
            { flags: ['--token-public-key', missing], key: 'token-public-key', re: /missing/ },
            { flags: ['--token-public-key', notPem], key: 'token-public-key', re: /not-pem/ },
            { flags: ['--token-secret-file', secretFile, '--token-public-key', notPem], key: 'token-public-key', re: /not both/ },
            { flags: ['--token-issuer', 'me'], key: 'token-issuer', re: /token key/ },
            { flags: ['--token-audience', 'you'], key: 'token-audience', re: /token key/ },
            { flags: ['--api-keys-file', missing], key: 'api-keys-file', re: /missing/ },
            { flags: ['--api-keys-file', shortKeys], key: 'api-keys-file', re: /short-keys' line 1/ },
            { flags: ['--api-keys-file', emptyKeys], key: 'api-keys-file', re: /holds no key/ },
            { flags: ['--webhook-url', 'http://127.0.0.1:1/hook'], key: 'webhook-secret-file', re: /webhook-secret-file/ },
            { flags: ['--webhook-url', 'ftp://127.0.0.1/hook', '--webhook-secret-file', secretFile], key: 'webhook-url', re: /ftp:/ },
            { flags: ['--webhook-url', 'http://127.0.0.1:1/hook', '--webhook-secret-file', missing], key: 'webhook-secret-file', re: /missing/ },
            { flags: ['--webhook-url', 'http://127.0.0.1:1/hook', '--webhook-secret-file', whShort], key: 'webhook-secret-file', re: /wh-short/ },
            { flags: ['--redis', 'http://127.0.0.1:6379'], key: 'redis', re: /http:/ },
            { flags: ['--redis', 'redis://'], key: 'redis', re: /redis:\/\// },
            { flags: ['--redis-cluster', 'nohost'], key: 'redis-cluster', re: /nohost/ },
            { flags: ['--redis-cluster', '127.0.0.1:7000,bad'], key: 'redis-cluster', re: /bad/ },
            { flags: ['--redis', 'redis://127.0.0.1:1', '--redis-cluster', '127.0.0.1:2'], key: 'redis-cluster', re: /not both/ },
            { flags: ['--redis', 'redis://127.0.0.1:1', '--node-id', 'bad id!'], key: 'node-id', re: /letters, digits/ },
            { flags: ['--static-dir', missing], key: 'static-dir', re: /missing/ },
            { flags: ['--client-dir', aFile], key: 'client-dir', re: /a-file/ },
            { flags: ['--data-dir', path.join(aFile, 'db')], key: 'data-dir', re: /not writable/, persistent: true },
        ];
    }

    test('--check-config refuses each (exit 2, the key named)', T, async () => {
        const cs = cases();
        const res = await runMany(cs.map((c) => ({ args: [...(c.persistent ? [] : ['--ephemeral']), '--check-config', ...c.flags] })));
        for (let i = 0; i < cs.length; i++) {
            const r = res[i];
            const what = cs[i].flags.join(' ');
            assert.equal(r.status, 2, `--check-config ${what}: exit ${r.status}\n${r.stderr}${r.stdout}`);
            assert.doesNotMatch(r.stdout, /configuration OK/, what);
            assert.match(r.stderr, new RegExp(`--${cs[i].key}\\b`), `${what}: the key is named: ${r.stderr}`);
            assert.match(r.stderr, cs[i].re, `${what}: ${r.stderr}`);
        }
    });

    test('a real start refuses each the same way (exit 2, never listening)', T, async () => {
        // The data directory is the database's to refuse at start: exit 1, "refusing to start"
        // (restart.test.mjs); the rest are bad values like any other.
        const cs = cases().filter((c) => !c.persistent);
        const res = await runMany(cs.map((c) => ({ args: ['--listen', '127.0.0.1:0', ...(c.persistent ? [] : ['--ephemeral']), ...c.flags] })));
        for (let i = 0; i < cs.length; i++) {
            const r = res[i];
            const what = cs[i].flags.join(' ');
            assert.equal(r.status, 2, `start ${what}: exit ${r.status}\n${r.stderr}`);
            assert.doesNotMatch(r.stderr, /listening on/, what);
            assert.match(r.stderr, new RegExp(`--${cs[i].key}\\b`), `${what}: the key is named: ${r.stderr}`);
            assert.match(r.stderr, cs[i].re, `${what}: ${r.stderr}`);
        }
    });

    test('a data directory that cannot be created stops a real start too', T, () => {
        const aFile = path.join(tmp, 'a-file');
        fs.writeFileSync(aFile, 'x');
        const r = run(['--listen', '127.0.0.1:0', '--data-dir', path.join(aFile, 'db')]);
        assert.equal(r.status, 1, r.stderr);
        assert.match(r.stderr, /refusing to start: .*a-file\/db/);
        assert.doesNotMatch(r.stderr, /listening on/);
    });

    test('good values pass --check-config', T, () => {
        const r = run(['--check-config', '--data-dir', path.join(tmp, 'data'), '--token-secret-file', secretFile,
            '--token-issuer', 'me', '--api-keys-file', keysFile, '--webhook-url', 'http://127.0.0.1:1/hook',
            '--webhook-secret-file', secretFile, '--static-dir', tmp, '--redis', 'redis://127.0.0.1:1', '--node-id', 'web-1_a']);
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout, 'presenced: configuration OK\n');
        assert.ok(!fs.existsSync(path.join(tmp, 'data')), '--check-config creates nothing');
    });
});

// ---------------------------------------------------------------------------------------------

describe('precedence: defaults < file < environment < command line', () => {
    /** The heartbeat_ttl (ms) the welcome of a real start announces. */
    async function welcomeTtl(flags, env) {
        const saved = {};
        for (const [k, v] of Object.entries(env)) {
            saved[k] = process.env[k];
            process.env[k] = v;
        }
        let d;
        try {
            d = await startPresenced(['--offline-grace', '0', ...flags]);
        } finally {
            for (const [k, v] of Object.entries(saved)) {
                if (v === undefined) delete process.env[k];
                else process.env[k] = v;
            }
        }
        try {
            const c = await openClient(d, 'prec');
            const ttl = c.welcome.heartbeat_ttl;
            await c.close();
            return ttl;
        } finally {
            await stopDaemon(d);
        }
    }

    test('the same key from the three sources: the welcome shows the winner', T, async () => {
        const file = confFile('heartbeat-ttl = 11\n');
        assert.equal(await welcomeTtl(['--config', file, '--heartbeat-ttl', '13'], { PRESENCED_HEARTBEAT_TTL: '12' }), 13000);
        assert.equal(await welcomeTtl(['--config', file], { PRESENCED_HEARTBEAT_TTL: '12' }), 12000);
        assert.equal(await welcomeTtl(['--config', file], {}), 11000);
        assert.equal(await welcomeTtl([], {}), 30000, 'the default');
        // The flag wins wherever it stands, before or after --config.
        assert.equal(await welcomeTtl(['--heartbeat-ttl', '14', '--config', file], {}), 14000);
    });

    test('a repeatable key given by a source replaces the lower sources\' values', T, async () => {
        const file = confFile('allow-origin = http://file.example\nallow-origin = http://file2.example\n');
        async function allowed(flags, env) {
            const saved = {};
            for (const [k, v] of Object.entries(env)) {
                saved[k] = process.env[k];
                process.env[k] = v;
            }
            let d;
            try {
                d = await startPresenced(['--offline-grace', '0', '--config', file, ...flags]);
            } finally {
                for (const [k, v] of Object.entries(saved)) {
                    if (v === undefined) delete process.env[k];
                    else process.env[k] = v;
                }
            }
            try {
                const out = [];
                for (const o of ['http://file.example', 'http://file2.example', 'http://env1.example', 'http://env2.example',
                    'http://flag.example', 'http://other.example']) {
                    const r = await httpRequest(d, upgradeRequest({ user: 'o', headers: { Origin: o } }).text);
                    assert.ok(r.status === 101 || r.status === 403, `${o}: ${r.status}`);
                    if (r.status === 101) out.push(o.replace(/^http:\/\/|\.example$/g, ''));
                }
                return out;
            } finally {
                await stopDaemon(d);
            }
        }
        assert.deepEqual(await allowed([], {}), ['file', 'file2']);
        assert.deepEqual(await allowed([], { PRESENCED_ALLOW_ORIGIN: 'http://env1.example, http://env2.example' }), ['env1', 'env2']);
        assert.deepEqual(await allowed(['--allow-origin', 'http://flag.example'],
            { PRESENCED_ALLOW_ORIGIN: 'http://env1.example,http://env2.example' }), ['flag']);
        assert.deepEqual(await allowed(['--allow-origin', 'http://flag.example', '--allow-origin', 'http://file.example'], {}),
            ['file', 'flag']);
    });

    test('a long comma-separated list in the environment is taken whole', T, async () => {
        // 30 origins, about 2.6 KB: each one allowed, the last as well as the first.
        const origins = Array.from({ length: 30 }, (_, i) => `http://o${i}-${'x'.repeat(70)}.example`);
        process.env.PRESENCED_ALLOW_ORIGIN = origins.join(',');
        let d;
        try {
            d = await startPresenced(['--offline-grace', '0']);
        } finally {
            delete process.env.PRESENCED_ALLOW_ORIGIN;
        }
        try {
            for (const o of [origins[0], origins[24], origins[29], 'http://o29-x.example']) {
                const r = await httpRequest(d, upgradeRequest({ user: 'o', headers: { Origin: o } }).text);
                assert.equal(r.status, o === 'http://o29-x.example' ? 403 : 101, `${o.slice(0, 12)}...: ${r.status}`);
            }
        } finally {
            await stopDaemon(d);
        }
    });

    test('--check-config refutes the value that wins, and only that one', T, async () => {
        const deadA = path.join(tmp, 'no-dir-from-file');
        const deadB = path.join(tmp, 'no-dir-from-flag');
        const file = confFile(`static-dir = ${deadA}\n`);
        const res = await runMany([
            { args: ['--ephemeral', '--check-config', '--config', file] },
            { args: ['--ephemeral', '--check-config', '--config', file], env: { PRESENCED_STATIC_DIR: tmp } },
            { args: ['--ephemeral', '--check-config', '--config', file, '--static-dir', deadB], env: { PRESENCED_STATIC_DIR: tmp } },
            // A boolean: the file says persistent, the environment ephemeral, the flag persistent
            // again; only a persistent configuration has its data directory checked.
            { args: ['--check-config', '--config', confFile(`ephemeral = false\ndata-dir = ${path.join(secretFile, 'db')}\n`)],
                env: { PRESENCED_EPHEMERAL: 'true' } },
            { args: ['--check-config', '--config', confFile(`ephemeral = false\ndata-dir = ${path.join(secretFile, 'db')}\n`),
                '--ephemeral=false'], env: { PRESENCED_EPHEMERAL: 'true' } },
        ]);
        assert.equal(res[0].status, 2, res[0].stderr);
        assert.match(res[0].stderr, /no-dir-from-file/);
        assert.equal(res[1].status, 0, `the environment's directory wins: ${res[1].stderr}`);
        assert.match(res[1].stdout, /configuration OK/);
        assert.equal(res[2].status, 2, res[2].stderr);
        assert.match(res[2].stderr, /no-dir-from-flag/);
        assert.doesNotMatch(res[2].stderr, /no-dir-from-file/);
        assert.equal(res[3].status, 0, `ephemeral from the environment: ${res[3].stderr}`);
        assert.equal(res[4].status, 2, `persistent from the flag: ${res[4].stderr}`);
        assert.match(res[4].stderr, /data directory .* is not writable/);
    });
});

// ---------------------------------------------------------------------------------------------

describe('the config file itself', () => {
    test('comments, blank lines, [presenced], inline comments, repeated keys', T, async () => {
        const file = confFile([
            '# presenced settings', '; another comment', '', 'heartbeat-ttl = 20', '[presenced]',
            'heartbeat-ttl=21 ; the last one wins', '  ws-path   =   /ws  ', 'dev-auth = yes', 'ephemeral = on', '',
        ].join('\n'));
        const r = run(['--check-config', '--config', file]);
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout, `presenced: configuration OK (${file})\n`);
        const d = await startPresenced(['--config', file, '--offline-grace', '0']);
        try {
            const resp = await httpRequest(d, upgradeRequest({ user: 'f', path: '/ws?user=f' }).text);
            assert.equal(resp.status, 101, 'ws-path from the file');
            const old = await httpRequest(d, upgradeRequest({ user: 'f' }).text);
            assert.notEqual(old.status, 101, 'the default path is gone');
        } finally {
            await stopDaemon(d);
        }
        const c = await welcome(file);
        assert.equal(c, 21000);
    });

    async function welcome(file) {
        const d = await startPresenced(['--config', file, '--offline-grace', '0', '--ws-path', '/presence']);
        try {
            const c = await openClient(d, 'w');
            const ttl = c.welcome.heartbeat_ttl;
            await c.close();
            return ttl;
        } finally {
            await stopDaemon(d);
        }
    }

    test('unknown keys, flag-only keys, unknown sections, bad lines and a missing file are errors', T, async () => {
        const cases = [
            ['heartbeat_ttl = 5\n', 1, /unknown key 'heartbeat_ttl'/],
            ['# ok\nHeartbeat-TTL = 5\n', 2, /unknown key 'Heartbeat-TTL'/],
            ['nope = 1\n', 1, /unknown key 'nope'/],
            ['listen = 127.0.0.1:0\ncheck-config = true\n', 2, /unknown key 'check-config'/],
            ['config = /etc/other.conf\n', 1, /unknown key 'config'/],
            ['help = true\n', 1, /unknown key 'help'/],
            ['version = true\n', 1, /unknown key 'version'/],
            ['[server]\nlisten = 127.0.0.1:0\n', 2, /unknown section \[server\]/],
            ['listen = 127.0.0.1:0\njust some words\n', 2, /not a key = value line/],
            ['heartbeat-ttl 30\n', 1, /not a key = value line/],
            ['[presenced\nlisten = 127.0.0.1:0\n', 1, /line 1/],
            // The first error is the one reported.
            ['nope = 1\nheartbeat-ttl = abc\n', 1, /unknown key 'nope'/],
            ['heartbeat-ttl = abc\nnope = 1\n', 1, /invalid value for 'heartbeat-ttl'/],
        ];
        const files = cases.map(([text]) => confFile(text));
        const res = await runMany(files.map((f) => ({ args: ['--ephemeral', '--check-config', '--config', f] })));
        for (let i = 0; i < cases.length; i++) {
            const [text, line, re] = cases[i];
            const r = res[i];
            assert.equal(r.status, 2, `${show(text)}: exit ${r.status}\n${r.stderr}`);
            assert.match(r.stderr, new RegExp(`^presenced: config file '${reEscape(files[i])}' line ${line}: `), `${show(text)}: ${r.stderr}`);
            assert.match(r.stderr, re, `${show(text)}: ${r.stderr}`);
        }
        const missing = path.join(tmp, 'no-such.conf');
        for (const args of [['--config', missing], [`--config=${missing}`]]) {
            const r = run(['--ephemeral', '--check-config', ...args]);
            assert.equal(r.status, 2, r.stderr);
            assert.match(r.stderr, new RegExp(`cannot read config file '${reEscape(missing)}': No such file or directory`));
        }
        // A directory is no file: it used to read as an empty configuration, "OK".
        const dirAsFile = run(['--ephemeral', '--check-config', '--config', tmp]);
        assert.equal(dirAsFile.status, 2, dirAsFile.stdout + dirAsFile.stderr);
        assert.match(dirAsFile.stderr, /cannot read config file '.*': Is a directory/);
        const r = run(['--ephemeral', '--check-config', '--config']);
        assert.equal(r.status, 2);
        assert.match(r.stderr, /flag '--config' needs a value/);
        // A real start refuses them too.
        const s = run(['--listen', '127.0.0.1:0', '--ephemeral', '--config', files[2]]);
        assert.equal(s.status, 2, s.stderr);
        assert.match(s.stderr, /unknown key 'nope'/);
    });

    test('a line over the INI parser\'s limit is refused clearly, naming its line and key', T, async () => {
        // Legal values (an issuer of 250 bytes, a long path) the parser cannot hold in one line.
        const issuer = 'i'.repeat(250);
        const file = confFile(`# first\ntoken-issuer = ${issuer}\nheartbeat-ttl = 12\n`);
        const r = run(['--ephemeral', '--check-config', '--token-secret-file', secretFile, '--config', file]);
        assert.equal(r.status, 2, r.stderr + r.stdout);
        assert.match(r.stderr, new RegExp(`config file '${reEscape(file)}' line 2: .*'token-issuer'.*longer than`), r.stderr);
        // The same value as a flag or a variable is fine.
        assert.equal(run(['--ephemeral', '--check-config', '--token-secret-file', secretFile, '--token-issuer', issuer]).status, 0);
        assert.equal(run(['--ephemeral', '--check-config', '--token-secret-file', secretFile],
            { PRESENCED_TOKEN_ISSUER: issuer }).status, 0);
        // A long comment line is no key, and harmless.
        const ok = run(['--ephemeral', '--check-config', '--config', confFile(`# ${'c'.repeat(400)}\nheartbeat-ttl = 12\n`)]);
        assert.equal(ok.status, 0, ok.stderr);
    });

    test('PRESENCED_CONFIG names the file as --config does; the flag wins over it', T, async () => {
        const bad = confFile('heartbeat-ttl = abc\n');
        const good = confFile('heartbeat-ttl = 12\n');
        let r = run(['--ephemeral', '--check-config'], { PRESENCED_CONFIG: bad });
        assert.equal(r.status, 2, `the file named by PRESENCED_CONFIG is read: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, new RegExp(`config file '${reEscape(bad)}' line 1: invalid value for 'heartbeat-ttl'`));
        r = run(['--ephemeral', '--check-config', '--config', good], { PRESENCED_CONFIG: bad });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout, `presenced: configuration OK (${good})\n`);
        r = run(['--ephemeral', '--check-config'], { PRESENCED_CONFIG: path.join(tmp, 'absent.conf') });
        assert.equal(r.status, 2);
        assert.match(r.stderr, /cannot read config file/);
        assert.equal(await (async () => {
            process.env.PRESENCED_CONFIG = good;
            try {
                const d = await startPresenced(['--offline-grace', '0']);
                try {
                    const c = await openClient(d, 'e');
                    const t = c.welcome.heartbeat_ttl;
                    await c.close();
                    return t;
                } finally {
                    await stopDaemon(d);
                }
            } finally {
                delete process.env.PRESENCED_CONFIG;
            }
        })(), 12000);
    });
});

// ---------------------------------------------------------------------------------------------

describe('flags and variables that name nothing', () => {
    test('unknown flags, stray arguments and missing values exit 2; unknown variables only warn', T, async () => {
        const res = await runMany([
            { args: ['--ephemeral', '--check-config', '--nope'] },
            { args: ['--ephemeral', '--check-config', 'stray'] },
            { args: ['--ephemeral', '--check-config', '-v'] },
            { args: ['--ephemeral', '--check-config', '--heartbeat-ttl'] },
            { args: ['--ephemeral', '--check-config', '--ephemeral', 'false'] },
            { args: ['--ephemeral', '--check-config'], env: { PRESENCED_NOPE: '1', PRESENCED_HELP: '1' } },
        ]);
        assert.equal(res[0].status, 2);
        assert.match(res[0].stderr, /unknown flag '--nope'/);
        assert.equal(res[1].status, 2);
        assert.match(res[1].stderr, /unexpected argument 'stray'/);
        assert.equal(res[2].status, 2);
        assert.equal(res[3].status, 2);
        assert.match(res[3].stderr, /flag '--heartbeat-ttl' needs a value/);
        assert.equal(res[4].status, 2, 'a boolean flag takes its value with =');
        assert.match(res[4].stderr, /unexpected argument 'false'/);
        assert.equal(res[5].status, 0, res[5].stderr);
        assert.match(res[5].stderr, /environment variable PRESENCED_NOPE is not a setting; ignored/);
        assert.match(res[5].stderr, /environment variable PRESENCED_HELP is not a setting; ignored/);
        assert.match(res[5].stdout, /configuration OK/);
    });

    test('--help and --version exit 0 without checking anything', T, () => {
        const h = run(['--help', '--heartbeat-ttl', '5']);
        assert.equal(h.status, 0);
        assert.match(h.stdout, /^Usage: presenced/);
        const v = run(['--version']);
        assert.equal(v.status, 0);
        assert.match(v.stdout, /^presenced \d+\.\d+\.\d+\n$/);
    });
});
