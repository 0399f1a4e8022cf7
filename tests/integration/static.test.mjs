// Static files (src/http/static.c): the demo page at / (--static-dir) and the JavaScript
// client at /client/ (--client-dir), over raw sockets so that no client library normalizes
// the request target first.
//   - Nothing outside the mounted directories is ever served: "..", "." and empty segments,
//     percent-encoded dots and slashes, double encoding, backslashes (raw and encoded), NUL
//     bytes (encoded and raw), absolute paths, overlong UTF-8 dots, absolute-form targets, and
//     symlinks leading out (to a file, to a directory, dangling, looping) all get 404 or 400,
//     and the secret placed next to the static directory appears in no answer.
//   - Hidden names (a segment starting with '.': /.env, /.git/config), asked for by name,
//     encoded, or reached through a visible symlink, are 404 unless --static-dotfiles.
//   - Only regular files: no directory listing, no FIFO (which must not hang the server), no
//     file over the size limit; a directory serves its index.html.
//   - Content types by extension; the CSP and Referrer-Policy only on HTML; nosniff; ETag and
//     Last-Modified with Cache-Control: no-cache, and 304 for a matching If-None-Match; HEAD
//     with the length and no body; other methods 405 with Allow.
// The daemon runs with a temporary static directory built for the test.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { assertHttpHealthy, httpRequest, rawConnect, startDaemon } from './lib/daemon.mjs';

const T = { timeout: 60000 };
const CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";
const SECRET = 'TOP-SECRET-7f3a9c';
const DOT_SECRET = 'DOT-SECRET-1b2e44'; // in the hidden files inside the static directory

let d;
let tmp;
let web;
const files = {
    'index.html': '<!doctype html><title>home</title>\n',
    'app.js': 'console.log("app");\n',
    'mod.mjs': 'export default 1;\n',
    'style.css': 'body { color: red; }\n',
    'logo.svg': '<svg xmlns="http://www.w3.org/2000/svg"/>\n',
    'data.json': '{"a":1}\n',
    'notes.txt': 'notes\n',
    'blob.bin': 'bytes\n',
    'sub/index.html': '<!doctype html><title>sub</title>\n',
    'sub/page.txt': 'page\n',
    'empty/.keep': '',
    'caf\u00e9.txt': 'accent\n',
    'a b.txt': 'space\n',
};

/** GET (or another method) of a raw request target; Connection: close. */
function get(target, { method = 'GET', headers = {}, noBody = method === 'HEAD' } = {}) {
    let text = `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n`;
    for (const [k, v] of Object.entries(headers)) text += `${k}: ${v}\r\n`;
    return httpRequest(d, `${text}\r\n`, { noBody });
}

/** Sends raw bytes as a request; resolves with the response. */
function rawRequest(bytes) {
    return httpRequest(d, bytes);
}

before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pd-static-'));
    web = path.join(tmp, 'web');
    const client = path.join(tmp, 'client');
    const outside = path.join(tmp, 'outside');
    for (const dir of [web, client, outside]) fs.mkdirSync(dir);
    for (const [name, body] of Object.entries(files)) {
        fs.mkdirSync(path.dirname(path.join(web, name)), { recursive: true });
        fs.writeFileSync(path.join(web, name), body);
    }
    fs.mkdirSync(path.join(web, 'nolisting'));
    fs.writeFileSync(path.join(web, 'nolisting', 'x.txt'), 'x\n');
    fs.writeFileSync(path.join(client, 'presenced-client.js'), 'export class PresenceClient {}\n');
    fs.writeFileSync(path.join(outside, 'secret.txt'), `${SECRET}\n`);
    fs.writeFileSync(path.join(tmp, 'secret.txt'), `${SECRET}\n`);
    // Symlinks: out of the directory (file, directory, absolute, to /), dangling, a loop, and
    // one that stays inside.
    fs.symlinkSync('../outside/secret.txt', path.join(web, 'leak.txt'));
    fs.symlinkSync('../outside', path.join(web, 'leakdir'));
    fs.symlinkSync(path.join(outside, 'secret.txt'), path.join(web, 'abs-leak.txt'));
    fs.symlinkSync('/', path.join(web, 'rootfs'));
    fs.symlinkSync('does-not-exist', path.join(web, 'dangling.txt'));
    fs.symlinkSync('loop.txt', path.join(web, 'loop.txt'));
    fs.symlinkSync('index.html', path.join(web, 'alias.html'));
    fs.symlinkSync('sub', path.join(web, 'subalias'));
    // Hidden files inside the directory, and names leading to them.
    for (const name of ['.env', '.git/config', '.git/index.html', 'sub/.htpasswd', '.well-known/security.txt']) {
        fs.mkdirSync(path.dirname(path.join(web, name)), { recursive: true });
        fs.writeFileSync(path.join(web, name), `${DOT_SECRET} ${name}\n`);
    }
    fs.writeFileSync(path.join(client, '.env'), `${DOT_SECRET} client\n`);
    fs.symlinkSync('.env', path.join(web, 'visible-env.txt'));
    fs.symlinkSync('.git', path.join(web, 'visible-git'));
    fs.symlinkSync('index.html', path.join(web, '.alias.html'));
    // A FIFO (opening it would block) and a file over the 16 MiB limit (sparse).
    const fifo = spawnSync('mkfifo', [path.join(web, 'fifo')]);
    assert.equal(fifo.status, 0, 'mkfifo');
    const big = path.join(web, 'big.txt');
    fs.writeFileSync(big, '');
    fs.truncateSync(big, 16 * 1024 * 1024 + 1);
    d = await startDaemon(['--static-dir', web, '--client-dir', client]);
});

after(async () => {
    if (d) await d.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function assertNoSecret(r, what) {
    assert.ok(!r.body.includes(SECRET) && !r.head.includes(SECRET), `${what}: the secret leaked`);
}

describe('traversal', () => {
    const refused = [
        // Plain and dotted segments.
        '/../secret.txt',
        '/../outside/secret.txt',
        '/sub/../../secret.txt',
        '/sub/../index.html', // even when it would stay inside
        '/./index.html',
        '/sub/./page.txt',
        '/sub//page.txt',
        // Percent-encoded dots and slashes, in every mix and case.
        '/%2e%2e/secret.txt',
        '/%2E%2E/secret.txt',
        '/%2e%2e%2fsecret.txt',
        '/..%2fsecret.txt',
        '/..%2Foutside%2Fsecret.txt',
        '/.%2e/secret.txt',
        '/%2e./secret.txt',
        '/sub%2f..%2f..%2fsecret.txt',
        '/sub/%2e%2e/%2e%2e/outside/secret.txt',
        '/%2e/index.html',
        // Double encoding: decoded once, "%2e%2e" is then a (missing) file name.
        '/%252e%252e/secret.txt',
        '/%252e%252e%252fsecret.txt',
        '/..%252fsecret.txt',
        // Backslashes, raw and encoded.
        '/..\\secret.txt',
        '/sub\\..\\..\\secret.txt',
        '/%5c..%5csecret.txt',
        '/..%5Csecret.txt',
        '/index.html%5c',
        // NUL, encoded.
        '/index.html%00',
        '/index.html%00.txt',
        '/%00',
        // Absolute paths (relative to the mount, never the file system root).
        '//etc/passwd',
        '/%2fetc%2fpasswd',
        '/%2Fetc/passwd',
        `/${tmp.slice(1)}/secret.txt`,
        `/%2f${tmp.slice(1).replaceAll('/', '%2f')}%2fsecret.txt`,
        // Overlong UTF-8 forms of "." and "/" are not dots or slashes.
        '/%c0%ae%c0%ae/secret.txt',
        '/%c0%af..%c0%afsecret.txt',
        '/%e0%80%ae%e0%80%ae/secret.txt',
        // Malformed escapes.
        '/%',
        '/%2',
        '/%zz',
        '/index.html%',
        // Symlinks out of the directory.
        '/leak.txt',
        '/abs-leak.txt',
        '/leakdir/secret.txt',
        '/leakdir/',
        '/leakdir',
        '/rootfs/etc/passwd',
        '/rootfs/',
        '/dangling.txt',
        '/loop.txt',
        // The client mount is a directory of its own.
        '/client/../index.html',
        '/client/%2e%2e/index.html',
        '/client/..%2f..%2fsecret.txt',
        '/client/../../secret.txt',
    ];
    for (const target of refused) {
        test(`GET ${target} is refused`, T, async () => {
            const r = await get(target);
            assert.ok(r.status === 404 || r.status === 400, `${target}: ${r.status}\n${r.head}`);
            assertNoSecret(r, target);
            assert.ok(!r.body.includes('<title>home</title>'), `${target} served index.html`);
        });
    }

    test('raw NUL and control bytes in the target: refused, the server keeps serving', T, async () => {
        for (const target of ['/index.html\0', '/\0/../secret.txt', '/index\0.html']) {
            const bytes = Buffer.concat([Buffer.from('GET '), Buffer.from(target, 'latin1'),
                Buffer.from(' HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')]);
            const r = await rawRequest(bytes);
            assert.ok(r.status === 400 || r.status === 404, `${JSON.stringify(target)}: ${r.status}`);
            assertNoSecret(r, JSON.stringify(target));
        }
        await assertHttpHealthy(d);
    });

    test('absolute-form and asterisk targets do not reach files outside', T, async () => {
        for (const target of [`http://127.0.0.1:${d.port}/../secret.txt`, `http://127.0.0.1:${d.port}/%2e%2e/secret.txt`, '*', '../secret.txt', 'secret.txt']) {
            const r = await get(target);
            assert.ok(r.status === 400 || r.status === 404, `${target}: ${r.status}`);
            assertNoSecret(r, target);
        }
    });

    test('only regular files: no listing, no FIFO, nothing over the size limit', T, async () => {
        for (const target of ['/nolisting/', '/nolisting', '/empty/', '/fifo', '/big.txt']) {
            const r = await get(target);
            assert.equal(r.status, 404, `${target}: ${r.status}`);
        }
        await assertHttpHealthy(d); // the FIFO did not block the event loop
    });

    test('symlinks that stay inside are followed', T, async () => {
        const r = await get('/alias.html');
        assert.equal(r.status, 200);
        assert.equal(r.body, files['index.html']);
        const s = await get('/subalias/page.txt');
        assert.equal(s.status, 200);
        assert.equal(s.body, files['sub/page.txt']);
    });
});

describe('serving', () => {
    test('files, directories and their index.html, encoded names, query strings', T, async () => {
        const cases = [
            ['/', 'index.html'],
            ['/index.html', 'index.html'],
            ['/sub/', 'sub/index.html'],
            ['/sub/page.txt', 'sub/page.txt'],
            ['/caf%C3%A9.txt', 'caf\u00e9.txt'],
            ['/a%20b.txt', 'a b.txt'],
            ['/%61pp.js', 'app.js'],
            ['/index.html?v=2&x=%2e%2e', 'index.html'],
        ];
        for (const [target, name] of cases) {
            const r = await get(target);
            assert.equal(r.status, 200, `${target}: ${r.status}`);
            assert.equal(r.body, files[name], target);
            assert.equal(Number(r.headers['content-length']), Buffer.byteLength(files[name]), target);
        }
        const c = await get('/client/presenced-client.js');
        assert.equal(c.status, 200);
        assert.match(c.body, /PresenceClient/);
        assert.equal((await get('/missing.html')).status, 404);
    });

    test('a directory without its slash: 301 to it, the Location rebuilt, never "//host"', T, async () => {
        for (const [target, location] of [['/sub', '/sub/'], ['//sub', '/sub/'], ['/sub?x=1', '/sub/'], ['/%73ub', '/sub/']]) {
            const r = await get(target);
            assert.equal(r.status, 301, `${target}: ${r.status}`);
            assert.equal(r.headers.location, location, target);
        }
        assert.equal((await get('/nolisting')).status, 404); // no index.html: nothing to send to
    });

    test('absolute-form targets (RFC 9112 section 3.2.2) are served by their path', T, async () => {
        const base = `http://127.0.0.1:${d.port}`;
        for (const [target, name] of [[`${base}/app.js`, 'app.js'], [`${base}/sub/page.txt`, 'sub/page.txt'], [base, 'index.html'], [`${base}?q=1`, 'index.html']]) {
            const r = await get(target);
            assert.equal(r.status, 200, `${target}: ${r.status}`);
            assert.equal(r.body, files[name], target);
        }
    });

    test('content types; the CSP and Referrer-Policy on HTML only; nosniff everywhere', T, async () => {
        const types = {
            '/': 'text/html; charset=utf-8',
            '/index.html': 'text/html; charset=utf-8',
            '/app.js': 'text/javascript; charset=utf-8',
            '/mod.mjs': 'text/javascript; charset=utf-8',
            '/style.css': 'text/css; charset=utf-8',
            '/logo.svg': 'image/svg+xml',
            '/data.json': 'application/json',
            '/notes.txt': 'text/plain; charset=utf-8',
            '/blob.bin': 'application/octet-stream',
            '/client/presenced-client.js': 'text/javascript; charset=utf-8',
        };
        for (const [target, type] of Object.entries(types)) {
            const r = await get(target);
            assert.equal(r.status, 200, target);
            assert.equal(r.headers['content-type'], type, target);
            assert.equal(r.headers['x-content-type-options'], 'nosniff', target);
            if (type.startsWith('text/html')) {
                assert.equal(r.headers['content-security-policy'], CSP, target);
                assert.equal(r.headers['referrer-policy'], 'no-referrer', target);
            } else {
                assert.equal(r.headers['content-security-policy'], undefined, target);
            }
        }
    });

    test('ETag, Last-Modified and Cache-Control; 304 for a matching If-None-Match', T, async () => {
        const r = await get('/app.js');
        const etag = r.headers.etag;
        assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
        assert.equal(r.headers['cache-control'], 'no-cache');
        const mtime = fs.statSync(path.join(web, 'app.js')).mtime;
        assert.equal(r.headers['last-modified'], mtime.toUTCString());

        const nm = await get('/app.js', { headers: { 'If-None-Match': etag } });
        assert.equal(nm.status, 304);
        assert.equal(nm.body, '');
        assert.equal(nm.headers.etag, etag);
        assert.equal(nm.headers['cache-control'], 'no-cache');

        const other = await get('/app.js', { headers: { 'If-None-Match': '"0-0"' } });
        assert.equal(other.status, 200);
        assert.equal(other.body, files['app.js']);
        // A list, a weak tag, "*" (RFC 9110 section 13.1.2: compared weakly).
        for (const v of [`"0-0", ${etag}`, `W/${etag}`, `"a-b",W/${etag} , "c-d"`, '*']) {
            assert.equal((await get('/app.js', { headers: { 'If-None-Match': v } })).status, 304, v);
        }
        assert.equal((await get('/app.js', { headers: { 'If-None-Match': `"0-0", W/"1-1"` } })).status, 200);

        // HTML keeps its CSP on 304.
        const html = await get('/', { headers: { 'If-None-Match': (await get('/')).headers.etag } });
        assert.equal(html.status, 304);
        assert.equal(html.headers['content-security-policy'], CSP);

        // A changed file gets a new ETag and the new body.
        const file = path.join(web, 'notes.txt');
        const first = (await get('/notes.txt')).headers.etag;
        fs.writeFileSync(file, 'notes, longer now\n');
        const changed = await get('/notes.txt', { headers: { 'If-None-Match': first } });
        assert.equal(changed.status, 200);
        assert.equal(changed.body, 'notes, longer now\n');
        assert.notEqual(changed.headers.etag, first);
    });

    test('HEAD: the headers of GET, no body', T, async () => {
        const c = await rawConnect(d);
        try {
            await c.write('HEAD /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
            const r = await c.readResponse(5000, { noBody: true });
            assert.equal(r.status, 200);
            assert.equal(Number(r.headers['content-length']), Buffer.byteLength(files['index.html']));
            assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
            assert.equal(r.headers['content-security-policy'], CSP);
            assert.ok(r.headers.etag);
            await c.waitEnd(5000);
            assert.equal(c.buf.length, 0, `bytes after a HEAD answer: ${c.buf.toString('latin1')}`);
        } finally {
            c.destroy();
        }
        const missing = await get('/nope.html', { method: 'HEAD' });
        assert.equal(missing.status, 404);
    });

    test('hidden files and directories: 404 by name, encoded, or through a symlink', T, async () => {
        const targets = [
            '/.env', '/%2eenv', '/%2Eenv', '/.env?x=1', '/.git/config', '/.git/', '/.git',
            '/.git/index.html', '/%2egit/config', '/sub/.htpasswd', '/sub/%2ehtpasswd',
            '/.well-known/security.txt', '/empty/.keep', '/.alias.html', '/visible-env.txt',
            '/visible-git/config', '/visible-git/', '/client/.env', 'http://h/.env',
        ];
        const served = [];
        for (const target of targets) {
            const r = await get(target);
            if (r.status !== 404) served.push(`${target} -> ${r.status}`);
            assert.ok(!r.body.includes(DOT_SECRET) && !r.head.includes(DOT_SECRET), `${target}: leaked`);
        }
        assert.deepEqual(served, [], 'hidden names answered with something else than 404');
        // HEAD too, and the visible files beside them are still served.
        assert.equal((await get('/.env', { method: 'HEAD' })).status, 404);
        assert.equal((await get('/sub/page.txt')).status, 200);
        assert.equal((await get('/empty/')).status, 404); // no index.html, no listing
    });

    test('--static-dotfiles serves them', T, async () => {
        const d2 = await startDaemon(['--static-dir', web, '--static-dotfiles']);
        try {
            for (const name of ['.env', '.git/config', '.well-known/security.txt', 'sub/.htpasswd']) {
                const r = await httpRequest(d2, `GET /${name} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
                assert.equal(r.status, 200, name);
                assert.equal(r.body, `${DOT_SECRET} ${name}\n`);
            }
            const r = await httpRequest(d2, 'GET /visible-env.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
            assert.equal(r.status, 200);
            // Traversal stays refused with it.
            const t = await httpRequest(d2, 'GET /../secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
            assert.equal(t.status, 404);
        } finally {
            await d2.stop();
        }
    });

    test('other methods: 405 with Allow', T, async () => {
        for (const method of ['POST', 'PUT', 'DELETE']) {
            const r = await httpRequest(d, `${method} /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
            assert.equal(r.status, 405, method);
            assert.match(r.headers.allow, /GET/);
            assert.match(r.headers.allow, /HEAD/);
        }
    });

    test('keep-alive: several files on one connection', T, async () => {
        const c = await rawConnect(d);
        try {
            await c.write('GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' +
                'GET /../secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
            const a = await c.readResponse();
            const b = await c.readResponse();
            const e = await c.readResponse();
            assert.deepEqual([a.status, a.body], [200, files['app.js']]);
            assert.deepEqual([b.status, b.body], [200, files['style.css']]);
            assert.equal(e.status, 404);
        } finally {
            c.destroy();
        }
    });
});
