// The demo page (web/) and the JavaScript client it loads from /client/, in a real headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core; never downloaded):
//   - two browser contexts as two users sign in through the form and see each other appear in
//     the roster; a status change (busy, custom status, activity) shows on the other side; a
//     third user goes away after simulated inactivity (?away_ms= makes it short) and comes back
//     on input; invisible shows as offline and back; both open the document and see each
//     other's avatars, mode, cursor (moving) and typing; closing a context shows that user
//     offline ("last seen just now") and out of the document;
//   - keyboard only: sign in with Tab, arrows and Enter; focus is visible; the live regions
//     exist; nothing overflows at phone width;
//   - no console error, page error or CSP violation on any page;
//   - a screenshot with several users (one busy with a custom status, one away, one offline
//     "last seen 3 min ago", cursors in the document) is taken and checked; it replaces
//     docs/demo.png only when PD_SCREENSHOT=1 (so test runs leave the tree clean), else it goes
//     to a temporary file.
// Every wait is bounded; the daemon is stopped at the end and must exit 0.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { PresenceClient } from '../../clients/js/src/presenced-client.js';
import { SRC, sleep, startDaemon } from '../integration/lib/daemon.mjs';

const T = { timeout: 120000 };
const WAIT = 10000; // ms for any one UI condition
const GRACE = 0.5; // --offline-grace (s)
const LAUNCH = {
    executablePath: '/usr/bin/chromium',
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30000,
};
const DOC = 'doc:q3-launch-plan';

let d;
let browser;
let base;
const problems = []; // console errors, page errors, CSP violations: none expected

before(async () => {
    assert.ok(fs.existsSync(LAUNCH.executablePath), 'Debian\'s chromium is required (scripts/setup.sh installs it)');
    d = await startDaemon(['--offline-grace', String(GRACE)]);
    base = `http://127.0.0.1:${d.port}`;
    browser = await chromium.launch(LAUNCH);
});

after(async () => {
    if (browser) await browser.close();
    if (d) await d.stop();
});

/** A new context and page, watched for errors. */
async function newPage({ width = 1280, height = 800 } = {}) {
    const context = await browser.newContext({ viewport: { width, height } });
    context.setDefaultTimeout(WAIT);
    const page = await context.newPage();
    page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    return { context, page };
}

/** Signs in through the form. */
async function signIn(page, name, device = 'web', query = '') {
    await page.goto(`${base}/${query}`);
    await page.waitForSelector('#signin:not([hidden])');
    await page.fill('#signin-name', name);
    await page.click(`label[for="dev-${device}"]`);
    await page.click('#signin-form button[type="submit"]');
    await page.waitForSelector('#conn[data-state="connected"]');
    await page.waitForSelector(`#roster li[data-user="${name}"]`);
}

const person = (id, status) => `#roster li[data-user="${id}"]${status ? `[data-status="${status}"]` : ''}`;

/** Waits until the text of selector on page includes every string of parts. */
async function waitText(page, selector, parts, timeout = WAIT) {
    await page.waitForFunction(([sel, want]) => {
        const e = document.querySelector(sel);
        return e && want.every((w) => e.textContent.includes(w));
    }, [selector, [].concat(parts)], { timeout });
}

/** The --x/--y of a remote cursor on page (numbers), or null. */
function cursorAt(page, user) {
    return page.evaluate((u) => {
        const c = document.querySelector(`#cursors .cursor[data-user="${u}"]`);
        return c ? { x: Number(c.style.getPropertyValue('--x')), y: Number(c.style.getPropertyValue('--y')) } : null;
    }, user);
}

/** Moves the mouse to fractions (fx, fy) of the document surface. */
async function pointAt(page, fx, fy) {
    const box = await page.locator('#doc-surface').boundingBox();
    await page.mouse.move(box.x + box.width * fx, box.y + box.height * fy, { steps: 4 });
}

describe('demo page', () => {
    test('two users see each other: status, away, invisible, the document and its cursors, offline', T, async () => {
        const a = await newPage();
        const b = await newPage();
        let c = null;
        try {
            // tick_ms: the page refreshes "last seen" and its peek into the document every second.
            await signIn(a.page, 'alice', 'web', '?tick_ms=1000');
            await signIn(b.page, 'bob', 'mobile', '?tick_ms=1000');

            // Each appears in the other's roster, online, with the device.
            await a.page.waitForSelector(person('bob', 'online'));
            await b.page.waitForSelector(person('alice', 'online'));
            await waitText(a.page, person('bob'), ['Online', 'mobile']);
            await waitText(a.page, '#feed', 'bob');

            // bob: busy, a custom status, an activity.
            await b.page.click('label[for="st-busy"]');
            await b.page.fill('#custom-status', 'Quarterly planning');
            await b.page.press('#custom-status', 'Enter');
            await b.page.selectOption('#activity', 'meeting');
            await a.page.waitForSelector(person('bob', 'busy'));
            await waitText(a.page, person('bob'), ['Busy', 'In a meeting', 'Quarterly planning']);
            await waitText(a.page, '#feed', 'bob is busy');
            await waitText(b.page, '#me-status-text', 'Busy');

            // carol, signed in by URL with a short inactivity timer, goes away by herself...
            c = await newPage();
            const t0 = Date.now();
            await c.page.goto(`${base}/?user=carol&device=desktop&away_ms=1500`);
            await c.page.waitForSelector('#conn[data-state="connected"]');
            await a.page.waitForSelector(person('carol'));
            await a.page.waitForSelector(person('carol', 'away'));
            assert.ok(Date.now() - t0 >= 1400, `away after ${Date.now() - t0} ms, expected at least 1500 of inactivity`);
            await c.page.waitForSelector('#me-idle:not([hidden])');
            await waitText(a.page, '#feed', 'carol is away');
            // ...and comes back on input.
            await c.page.mouse.move(200, 300);
            await c.page.mouse.move(260, 320);
            await a.page.waitForSelector(person('carol', 'online'));
            await c.page.waitForSelector('#me-idle[hidden]', { state: 'attached' });

            // bob goes invisible: offline for alice, who still sees the others; then visible again.
            await b.page.click('label[for="invisible"]');
            await a.page.waitForSelector(person('bob', 'offline'));
            await waitText(b.page, '#me-status-text', 'invisible');
            await waitText(a.page, '#feed', 'bob went offline');
            await b.page.waitForSelector(person('carol', 'online')); // bob still sees carol
            await b.page.click('label[for="invisible"]');
            await a.page.waitForSelector(person('bob', 'busy'));

            // The document: both open it; avatars and modes.
            await a.page.click('#doc-toggle');
            await a.page.waitForSelector('#doc-open:not([hidden])');
            // (Who is in a room is shown only to its members: bob sees alice once he opens it.)
            await b.page.click('#doc-toggle');
            await a.page.waitForSelector('#doc-members li[data-user="bob"][data-mode="viewing"]');
            await b.page.waitForSelector('#doc-members li[data-user="alice"]');
            await b.page.click('label[for="mode-editing"]');
            await a.page.waitForSelector('#doc-members li[data-user="bob"][data-mode="editing"]');
            await waitText(a.page, '#doc-presence-text', ['bob', 'is editing']);
            await waitText(a.page, person('bob'), 'Editing');

            // alice's cursor moves on bob's screen.
            await pointAt(a.page, 0.25, 0.3);
            await b.page.waitForSelector('#cursors .cursor[data-user="alice"]');
            await b.page.waitForFunction(() => {
                const e = document.querySelector('#cursors .cursor[data-user="alice"]');
                return e && Math.abs(Number(e.style.getPropertyValue('--x')) - 0.25) < 0.02;
            });
            const first = await cursorAt(b.page, 'alice');
            assert.ok(Math.abs(first.y - 0.3) < 0.02, JSON.stringify(first));
            await pointAt(a.page, 0.7, 0.6);
            await b.page.waitForFunction(() => {
                const e = document.querySelector('#cursors .cursor[data-user="alice"]');
                return e && Math.abs(Number(e.style.getPropertyValue('--x')) - 0.7) < 0.02 &&
                    Math.abs(Number(e.style.getPropertyValue('--y')) - 0.6) < 0.02;
            });
            // The label names her; her own page shows no cursor of her own.
            await waitText(b.page, '#cursors .cursor[data-user="alice"] .cursor-label', 'alice');
            assert.equal(await a.page.locator('#cursors .cursor[data-user="alice"]').count(), 0);

            // bob types in the document: alice sees it, and his cursor.
            await b.page.click('#doc-body p');
            await b.page.keyboard.type('Hello ');
            await waitText(a.page, '#typing', 'bob is typing');
            await a.page.waitForSelector('#cursors .cursor[data-user="bob"]');

            // bob closes his window: offline after the grace period, out of the document.
            await b.context.close();
            b.context = null;
            await a.page.waitForSelector(person('bob', 'offline'));
            await waitText(a.page, person('bob'), 'last seen just now');
            await a.page.waitForSelector('#doc-members li[data-user="bob"]', { state: 'detached' });
            await a.page.waitForSelector('#cursors .cursor[data-user="bob"]', { state: 'detached' });
            assert.equal(await a.page.textContent('#typing'), '');
            await waitText(a.page, '#feed', 'bob went offline');
        } finally {
            for (const x of [a, b, c]) if (x && x.context) await x.context.close();
        }
        assert.deepEqual(problems, []);
    });

    test('keyboard only: sign in, focus is visible; live regions; phone width does not overflow', T, async () => {
        const { context, page } = await newPage({ width: 390, height: 844 });
        try {
            await page.goto(`${base}/`);
            await page.waitForSelector('#signin:not([hidden])');
            // The name field has focus at once.
            assert.equal(await page.evaluate(() => document.activeElement.id), 'signin-name');
            // An invalid name is explained, not sent.
            await page.keyboard.type('no spaces please');
            await page.keyboard.press('Enter');
            await waitText(page, '#signin-error', 'letters');
            assert.equal(await page.getAttribute('#signin-name', 'aria-invalid'), 'true');
            await page.fill('#signin-name', 'erin');
            await page.keyboard.press('Tab'); // to the device radio group
            assert.equal(await page.evaluate(() => document.activeElement.id), 'dev-web');
            const outline = await page.evaluate(() => getComputedStyle(document.activeElement.nextElementSibling).outlineStyle);
            assert.notEqual(outline, 'none', 'the focused radio shows a focus ring on its label');
            await page.keyboard.press('ArrowRight'); // desktop
            await page.keyboard.press('Tab'); // the submit button
            assert.equal(await page.evaluate(() => document.activeElement.type), 'submit');
            assert.notEqual(await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle), 'none');
            await page.keyboard.press('Enter');
            await page.waitForSelector('#conn[data-state="connected"]');
            assert.equal(await page.textContent('#me-device'), 'desktop');

            // Status by keyboard: focus the status radios and move with the arrows.
            await page.focus('#st-online');
            await page.keyboard.press('ArrowRight'); // away
            await page.keyboard.press('ArrowRight'); // busy
            await page.waitForSelector(person('erin', 'busy'));

            // Live regions and labels.
            assert.equal(await page.getAttribute('#feed', 'role'), 'log');
            assert.equal(await page.getAttribute('#conn', 'role'), 'status');
            assert.equal(await page.getAttribute('#typing', 'aria-live'), 'polite');
            const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, button')]
                .filter((e) => e.offsetParent !== null || e.type === 'radio' || e.type === 'checkbox')
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
                .map((e) => e.id || e.outerHTML.slice(0, 80)));
            assert.deepEqual(unlabelled, [], 'every control has a label');

            // Phone width: nothing wider than the screen.
            const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
            assert.ok(widths[0] <= widths[1], `page ${widths[0]} px wide in a ${widths[1]} px viewport`);

            // Sign out: back to the form, name remembered.
            await page.click('#signout');
            await page.waitForSelector('#signin:not([hidden])');
            assert.equal(await page.inputValue('#signin-name'), 'erin');
        } finally {
            await context.close();
        }
        assert.deepEqual(problems, []);
    });

    test('a reload inside the grace period is not an offline flap; the session and document come back', T, async () => {
        const a = await newPage();
        const w = await newPage();
        try {
            await signIn(w.page, 'watcher');
            await signIn(a.page, 'frank', 'web');
            await a.page.click('#doc-toggle');
            await a.page.waitForSelector('#doc-open:not([hidden])');
            await w.page.waitForSelector(person('frank', 'online'));
            await a.page.reload();
            await a.page.waitForSelector('#conn[data-state="connected"]');
            await a.page.waitForSelector('#doc-open:not([hidden])'); // still in the document
            await sleep(GRACE * 1000 + 500);
            await w.page.waitForSelector(person('frank', 'online'));
            const feedText = await w.page.textContent('#feed');
            assert.ok(!feedText.includes('frank went offline'), `a reload showed as offline: ${feedText}`);
        } finally {
            await a.context.close();
            await w.context.close();
        }
        assert.deepEqual(problems, []);
    });

    test('screenshot: several users, one busy with a custom status, cursors in the document (docs/demo.png)', T, async () => {
        const others = [];
        const make = async (user, device) => {
            const cl = new PresenceClient(d.wsUrl(user), user, device, { WebSocket, activity: false, typingTimeoutMs: 0 });
            others.push(cl);
            await cl.connect();
            await cl.join('lobby', { device });
            return cl;
        };
        const { context, page } = await newPage({ width: 1280, height: 800 });
        try {
            // dave was around earlier and left; the page remembers him as "last seen".
            const dave = await make('dave', 'desktop');
            await page.goto(`${base}/?user=alice&device=web`);
            await page.waitForSelector('#conn[data-state="connected"]');
            await page.waitForSelector(person('dave', 'online'));
            const bob = await make('bob', 'mobile');
            const carol = await make('carol', 'desktop');
            await page.waitForSelector(person('carol', 'online'));
            await bob.setStatus({ status: 'busy', customStatus: 'Quarterly planning', activity: 'meeting' });
            await page.click('#doc-toggle');
            await page.waitForSelector('#doc-open:not([hidden])');
            await bob.join(DOC, { mode: 'editing' });
            await carol.join(DOC, { mode: 'viewing' });
            await carol.setStatus({ status: 'away' });
            dave.disconnect();
            await page.waitForSelector(person('dave', 'offline'));
            await page.fill('#custom-status', 'Reviewing the plan');
            await page.press('#custom-status', 'Enter');
            await page.evaluate(() => document.activeElement.blur());
            bob.cursor(DOC, { x: 0.64, y: 0.33 });
            carol.cursor(DOC, { x: 0.31, y: 0.72 });
            bob.typing(DOC, true);
            await page.waitForSelector('#cursors .cursor[data-user="bob"].is-typing');
            await page.waitForSelector('#cursors .cursor[data-user="carol"]');
            await page.waitForSelector(person('carol', 'away'));
            await waitText(page, person('bob'), 'Quarterly planning');
            await waitText(page, person('alice'), 'Reviewing the plan');
            // Three minutes later, as far as the page's clock knows (nothing else changes).
            await page.clock.setFixedTime(Date.now() + 3 * 60 * 1000 + 10 * 1000);
            await waitText(page, person('dave'), 'last seen 3 min ago', 15000);
            await page.mouse.move(4, 796); // no hover effects in the picture
            await sleep(400); // transitions settle
            const out = process.env.PD_SCREENSHOT === '1'
                ? path.join(SRC, 'docs', 'demo.png')
                : path.join(os.tmpdir(), `presenced-demo-${process.pid}.png`);
            await page.screenshot({ path: out });
            const png = fs.readFileSync(out);
            assert.equal(png.subarray(1, 4).toString(), 'PNG');
            assert.equal(png.readUInt32BE(16), 1280);
            assert.equal(png.readUInt32BE(20), 800);
            if (out.startsWith(os.tmpdir())) fs.rmSync(out);
        } finally {
            for (const cl of others) cl.disconnect();
            await context.close();
        }
        assert.deepEqual(problems, []);
    });
});
