// The presenced demo: a team roster with live status, your own status controls, and a shared
// document showing who is in it and their cursors. Built on the JavaScript client served by
// presenced at /client/presenced-client.js.
//
// The server has no "list all users" call, so the roster is: everyone who joined the
// well-known room "lobby" (joining it is how you get listed), the people you added by name,
// and whoever you saw before (remembered in localStorage). Their presence comes from a
// subscription. Going invisible also leaves the lobby: room membership is shown to a room's
// members whatever the presence visibility.
//
// URL parameters (handy for trying things out, and for tests):
//   user, device      sign in at once with this name and device
//   token             connect with a token instead of the development identity
//   away_ms           inactivity before away (default 300000)
//   hidden_away_ms    inactivity before away while the tab is hidden (default 60000)
//   reconnect_ms      first reconnect delay (default 500)
//   cursor_hz         cursor updates sent per second (default 20)
//   tick_ms           how often "last seen ... ago" is refreshed (default 5000)
//   lobby, doc        the room names (default "lobby" and "doc:q3-launch-plan")
import { PresenceClient } from './client/presenced-client.js';

const params = new URLSearchParams(location.search);
const num = (name, def) => {
    const v = Number(params.get(name));
    return params.has(name) && params.get(name) !== '' && Number.isFinite(v) && v >= 0 ? v : def;
};
const CONFIG = {
    lobby: params.get('lobby') || 'lobby',
    doc: params.get('doc') || 'doc:q3-launch-plan',
    docTitle: 'Q3 Launch Plan',
    awayMs: num('away_ms', 5 * 60 * 1000),
    hiddenAwayMs: num('hidden_away_ms', 60 * 1000),
    reconnectMs: num('reconnect_ms', 500),
    cursorHz: num('cursor_hz', 20),
    tickMs: Math.max(250, num('tick_ms', 5000)),
};
const NAME_RE = /^[\p{L}\p{N}._-]{1,32}$/u;
const STATUS_RANK = { online: 0, busy: 1, away: 2, offline: 3 };
const STATUS_WORD = { online: 'Online', away: 'Away', busy: 'Busy', offline: 'Offline' };
const ACTIVITIES = {
    in_call: { label: 'In a call', icon: 'call', phrase: 'is in a call' },
    meeting: { label: 'In a meeting', icon: 'calendar', phrase: 'is in a meeting' },
    presenting: { label: 'Presenting', icon: 'screen', phrase: 'is presenting' },
    focus: { label: 'Focus mode', icon: 'moon', phrase: 'turned on focus mode' },
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Small helpers

/** localStorage / sessionStorage that never throw (private modes, disabled storage). */
function storage(kind) {
    return {
        get(key, def = null) {
            try {
                const v = globalThis[kind].getItem(key);
                return v === null ? def : JSON.parse(v);
            } catch {
                return def;
            }
        },
        set(key, value) {
            try {
                globalThis[kind].setItem(key, JSON.stringify(value));
            } catch {
                /* not kept */
            }
        },
        remove(key) {
            try {
                globalThis[kind].removeItem(key);
            } catch {
                /* nothing */
            }
        },
    };
}
const local = storage('localStorage');
const session = storage('sessionStorage');

/** Creates an element: el('div', {class: 'x', dataset: {user: 'a'}}, child, 'text'...). */
function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'dataset') Object.assign(e.dataset, v);
        else if (k === 'text') e.textContent = v;
        else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
const ICON_PATHS = {
    web: ['M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z', 'M3 12h18', 'M12 3c2.5 2.7 3.8 5.7 3.8 9s-1.3 6.3-3.8 9c-2.5-2.7-3.8-5.7-3.8-9S9.5 5.7 12 3z'],
    desktop: ['M5 4h14a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z', 'M8 20h8', 'M12 16v4'],
    mobile: ['M9 2.5h6a2 2 0 0 1 2 2v15a2 2 0 0 1-2 2H9a2 2 0 0 1-2-2v-15a2 2 0 0 1 2-2z', 'M11 18.5h2'],
    call: ['M4 13v-1a8 8 0 0 1 16 0v1', 'M4 13h3v6H5a1 1 0 0 1-1-1z', 'M20 13h-3v6h2a1 1 0 0 0 1-1z'],
    calendar: ['M5 5h14a1 1 0 0 1 1 1v13a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V6a1 1 0 0 1 1-1z', 'M4 10h16', 'M8 3v4', 'M16 3v4'],
    screen: ['M4 4h16v11H4z', 'M12 15v5', 'M8 20h8', 'M10 8l4 2-4 2z'],
    moon: ['M20 14.5A8 8 0 1 1 9.5 4a6.5 6.5 0 0 0 10.5 10.5z'],
    doc: ['M6 2.5h8l5 5V20a1.5 1.5 0 0 1-1.5 1.5h-11A1.5 1.5 0 0 1 5 20V4a1.5 1.5 0 0 1 1-1.5z', 'M14 2.5V8h5'],
    pen: ['M4 20l4.5-1L19 8.5a2.1 2.1 0 0 0-3-3L5.5 16z'],
    eye: ['M2.5 12S6 5.5 12 5.5 21.5 12 21.5 12 18 18.5 12 18.5 2.5 12 2.5 12z', 'M12 9.5a2.5 2.5 0 1 1 0 5 2.5 2.5 0 0 1 0-5z'],
    x: ['M6 6l12 12', 'M18 6L6 18'],
};

function icon(name, cls = 'icon') {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', cls);
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    for (const d of ICON_PATHS[name] || []) {
        const p = document.createElementNS(SVG_NS, 'path');
        p.setAttribute('d', d);
        svg.append(p);
    }
    return svg;
}

function cursorArrow() {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 20 20');
    const p = document.createElementNS(SVG_NS, 'path');
    p.setAttribute('d', 'M3 2l13 7.2-5.6 1.3-2.6 5.5z');
    svg.append(p);
    return svg;
}

/** A stable colour (0..7) for a user id. */
function hueOf(id) {
    let h = 2166136261;
    for (const ch of id) {
        h ^= ch.codePointAt(0);
        h = Math.imul(h, 16777619);
    }
    return (h >>> 0) % 8;
}

function initials(id) {
    const parts = id.split(/[._\-\s]+/).filter(Boolean);
    const chars = parts.length >= 2 ? [parts[0], parts[1]].map((p) => [...p][0]) : [...id].slice(0, 2);
    return chars.join('').toUpperCase();
}

function avatar(id, { size = '', status = null } = {}) {
    const a = el('span', { class: `avatar hue-${hueOf(id)}${size ? ` avatar-${size}` : ''}`, 'aria-hidden': 'true' }, initials(id));
    if (status) {
        a.append(el('span', { class: `dot dot-${status}` }));
        if (status === 'offline') a.classList.add('is-offline');
    }
    return a;
}

/** "just now", "3 min ago", "2 hours ago", "yesterday", or a date. */
function ago(epochSeconds) {
    const s = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (s < 45) return 'just now';
    if (s < 90) return '1 min ago';
    if (s < 45 * 60) return `${Math.round(s / 60)} min ago`;
    if (s < 90 * 60) return '1 hour ago';
    if (s < 22 * 3600) return `${Math.round(s / 3600)} hours ago`;
    if (s < 48 * 3600) return 'yesterday';
    return new Date(epochSeconds * 1000).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

function clockTime(ms = Date.now()) {
    return new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function listWords(words) {
    if (words.length <= 1) return words.join('');
    return `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`;
}

// ---------------------------------------------------------------------------------------------
// State

let client = null;
let me = null; // {name, device}
const people = new Map(); // user id -> {id, added, presence}
const rosterItems = new Map(); // user id -> <li>
let invisible = false;
let docOpen = false;
let docMode = 'viewing';
let reconnectAt = 0;
let connTimer = null;

const knownKey = () => `presenced.people.${me.name}`;
const addedKey = () => `presenced.added.${me.name}`;

function remember() {
    local.set(knownKey(), [...people.keys()].filter((id) => id !== me.name).slice(0, 200));
    local.set(addedKey(), [...people.values()].filter((p) => p.added).map((p) => p.id));
}

/** Adds people to the roster and watches their presence. */
function addPeople(ids, { added = false } = {}) {
    const fresh = [];
    for (const id of ids) {
        if (typeof id !== 'string' || id === '') continue;
        let p = people.get(id);
        if (!p) {
            p = { id, added: false, presence: client.getPresence(id) };
            people.set(id, p);
            fresh.push(id);
        }
        if (added) p.added = true;
    }
    if (fresh.length) client.subscribe(fresh).catch(() => {});
    remember();
    renderRoster();
    return fresh;
}

function removePerson(id) {
    people.delete(id);
    client.unsubscribe([id]).catch(() => {});
    remember();
    renderRoster();
}

// ---------------------------------------------------------------------------------------------
// Sign-in

function showSignin() {
    $('app').hidden = true;
    $('signin').hidden = false;
    const name = local.get('presenced.name', '');
    $('signin-name').value = name;
    const device = local.get('presenced.device', 'web');
    const radio = document.querySelector(`#signin-device input[value="${CSS.escape(device)}"]`);
    if (radio) radio.checked = true;
    $('signin-name').focus();
}

$('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('signin-name').value.trim();
    const device = new FormData(e.target).get('device') || 'web';
    if (!NAME_RE.test(name)) {
        $('signin-error').textContent = name === ''
            ? 'Please enter a name.'
            : 'Use up to 32 letters, digits, dots, dashes or underscores.';
        $('signin-name').setAttribute('aria-invalid', 'true');
        $('signin-name').focus();
        return;
    }
    $('signin-name').removeAttribute('aria-invalid');
    $('signin-error').textContent = '';
    local.set('presenced.name', name);
    local.set('presenced.device', device);
    session.set('presenced.session', { name, device });
    start(name, device);
});

$('signout').addEventListener('click', () => {
    session.remove('presenced.session');
    if (client) client.disconnect({ offline: true });
    // A clean page: no state of this user left behind.
    const url = new URL(location.href);
    url.searchParams.delete('user');
    url.searchParams.delete('device');
    location.replace(url.toString());
});

// ---------------------------------------------------------------------------------------------
// The app

function wsUrl(name) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const base = `${proto}//${location.host}/presence`;
    return params.get('token') ? base : `${base}?user=${encodeURIComponent(name)}`;
}

async function start(name, device) {
    me = { name, device };
    $('signin').hidden = true;
    $('app').hidden = false;
    document.title = `${name} · presenced`;
    $('me-name').textContent = name;
    $('me-device').textContent = device;
    $('me-avatar').replaceWith(Object.assign(avatar(name, { size: 'lg', status: 'online' }), { id: 'me-avatar' }));

    client = new PresenceClient(wsUrl(name), name, device, {
        token: params.get('token') || null,
        activity: { awayAfterMs: CONFIG.awayMs, hiddenAwayAfterMs: CONFIG.hiddenAwayMs },
        reconnect: { initialDelayMs: CONFIG.reconnectMs },
        cursorHz: CONFIG.cursorHz,
    });
    globalThis.presencedDemo = { client, config: CONFIG };

    client.on('state', onConnState);
    client.on('presence', onPresence);
    client.on('status', renderMe);
    client.on('idle', renderMe);
    client.on('room', onRoom);
    client.on('member_joined', (m) => onMemberEvent(m));
    client.on('member_updated', (m) => onMemberEvent(m));
    client.on('member_left', (m) => onMemberEvent(m));
    client.on('cursor', onCursor);
    client.on('typing', renderTyping);

    people.set(name, { id: name, added: false, presence: undefined });
    for (const id of local.get(knownKey(), [])) if (!people.has(id)) people.set(id, { id, added: false, presence: undefined });
    for (const id of local.get(addedKey(), [])) if (people.has(id)) people.get(id).added = true;
    renderRoster();
    renderMe();
    setInterval(renderRoster, CONFIG.tickMs);

    try {
        await client.connect();
    } catch {
        return; // signed out while connecting
    }
    if (client.userId && client.userId !== me.name) {
        // With a token the server decides who this is.
        people.delete(me.name);
        me.name = client.userId;
        people.set(me.name, { id: me.name, added: false, presence: undefined });
        $('me-name').textContent = me.name;
        $('me-avatar').replaceWith(Object.assign(avatar(me.name, { size: 'lg', status: 'online' }), { id: 'me-avatar' }));
    }
    client.subscribe([...people.keys()]).catch(() => {});
    try {
        const privacy = await client.getPrivacy();
        invisible = privacy.visibility === 'nobody';
    } catch {
        invisible = false;
    }
    $('invisible').checked = invisible;
    renderMe();
    if (!invisible) joinLobby();
    if (session.get('presenced.doc', false)) openDoc(session.get('presenced.docMode', 'viewing'));
}

async function joinLobby() {
    try {
        await client.join(CONFIG.lobby, { device: me.device });
    } catch (e) {
        feed(me.name, `could not join the lobby (${e.code})`);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection state

function onConnState(state, info) {
    const conn = $('conn');
    conn.dataset.state = state;
    clearInterval(connTimer);
    connTimer = null;
    $('conn-retry').hidden = state !== 'reconnecting';
    if (state === 'reconnecting') {
        reconnectAt = Date.now() + (info.delay || 0);
        const tick = () => {
            const s = Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000));
            $('conn-text').textContent = s > 0 ? `Reconnecting in ${s}s…` : 'Reconnecting…';
        };
        tick();
        connTimer = setInterval(tick, 1000);
    } else {
        $('conn-text').textContent = { idle: 'Starting…', connecting: 'Connecting…', connected: 'Live', disconnected: 'Disconnected' }[state] || state;
    }
    if (state === 'connected') renderMe();
}

$('conn-retry').addEventListener('click', () => client && client.reconnectNow());

// ---------------------------------------------------------------------------------------------
// You

function ownStatus() {
    const mine = client && client.getPresence(me.name);
    if (client && client.own.announced === false) return 'offline';
    if (mine && mine.status !== 'offline') return mine.status;
    if (!client) return 'online';
    return client.idle && client.own.status === 'online' ? 'away' : client.own.status;
}

function renderMe() {
    if (!me) return;
    const status = ownStatus();
    const av = $('me-avatar');
    const dot = av.querySelector('.dot');
    if (dot) dot.className = `dot dot-${invisible ? 'offline' : status}`;
    let text = STATUS_WORD[status] || status;
    if (client && client.idle && client.own.status === 'online') text = 'Away · inactive';
    if (invisible) text = `${text} · invisible`;
    $('me-status-text').textContent = text;
    $('me-idle').hidden = !(client && client.idle && client.own.status === 'online');
    if (client) {
        const chosen = client.own.status;
        const radio = document.querySelector(`#status-choice input[value="${chosen}"]`);
        if (radio && !radio.checked) radio.checked = true;
    }
}

document.querySelectorAll('#status-choice input').forEach((radio) => {
    radio.addEventListener('change', () => {
        if (!radio.checked || !client) return;
        client.setStatus({ status: radio.value }).catch((e) => feed(me.name, `status not changed: ${e.message}`));
        renderMe();
    });
});

$('custom-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('custom-status').value.trim();
    const secs = Number($('custom-expiry').value);
    const fields = { customStatus: text || null };
    if (text && secs > 0) fields.customStatusExpiresIn = secs;
    client.setStatus(fields).catch((err) => feed(me.name, `custom status not set: ${err.message}`));
});

$('custom-clear').addEventListener('click', () => {
    $('custom-status').value = '';
    client.setStatus({ customStatus: null }).catch(() => {});
    $('custom-status').focus();
});

$('activity').addEventListener('change', (e) => {
    client.setStatus({ activity: e.target.value || null }).catch(() => {});
});

$('invisible').addEventListener('change', async (e) => {
    const on = e.target.checked;
    try {
        await client.setVisibility(on ? 'nobody' : 'everyone');
        invisible = on;
        // Room members see each other whatever the visibility: invisible means out of the lobby.
        if (on) await client.leave(CONFIG.lobby).catch(() => {});
        else await joinLobby();
    } catch (err) {
        e.target.checked = !on;
        feed(me.name, `visibility not changed: ${err.message}`);
    }
    renderMe();
    renderRoster();
});

// ---------------------------------------------------------------------------------------------
// People

function onPresence(p, prev) {
    const person = people.get(p.user_id);
    if (!person) return;
    const before = person.presence || prev;
    person.presence = p;
    if (p.user_id === me.name) renderMe();
    else if (before) {
        const text = describeChange(p, before);
        if (text) feed(p.user_id, text);
    }
    renderRoster();
}

function describeChange(p, prev) {
    const custom = p.custom_status && p.status !== 'offline' ? ` — “${p.custom_status}”` : '';
    if (p.status !== prev.status) {
        if (p.status === 'offline') return 'went offline';
        if (prev.status === 'offline') return `came online${p.status !== 'online' ? ` (${STATUS_WORD[p.status].toLowerCase()})` : ''}`;
        if (p.status === 'online') return 'is back';
        if (p.status === 'busy') return `is busy${custom}`;
        if (p.status === 'away') return 'is away';
    }
    if (p.status === 'offline') return null;
    if (p.custom_status !== prev.custom_status) {
        return p.custom_status ? `set their status to “${p.custom_status}”` : 'cleared their status';
    }
    if (p.activity !== prev.activity) {
        const a = ACTIVITIES[p.activity];
        if (a) return a.phrase;
        return p.activity ? `is ${p.activity}` : null;
    }
    return null;
}

function docMemberOf(id) {
    const room = client && client.room(CONFIG.doc);
    return room && room.joined ? room.members.get(id) : undefined;
}

function statusOf(person) {
    const p = person.presence;
    if (person.id === me.name) return invisible ? 'offline' : ownStatus();
    return p ? p.status : 'offline';
}

function sortKey(person) {
    return [person.id === me.name ? 0 : 1, STATUS_RANK[statusOf(person)] ?? 9, person.id.toLowerCase()];
}

function compareKeys(a, b) {
    for (let i = 0; i < a.length; i++) {
        if (a[i] < b[i]) return -1;
        if (a[i] > b[i]) return 1;
    }
    return 0;
}

function renderPerson(person) {
    const id = person.id;
    const p = person.presence;
    const isMe = id === me.name;
    const status = statusOf(person);
    const li = el('li', { class: 'person', dataset: { user: id, status } });

    li.append(avatar(id, { status }));

    const name = el('div', { class: 'person-name' }, el('span', { class: 'person-label', text: id }));
    if (isMe) name.append(el('span', { class: 'you', text: '(you)' }));
    const devices = p && p.status !== 'offline' && Array.isArray(p.devices) ? p.devices : [];
    for (const d of devices) {
        const kind = ICON_PATHS[d] ? d : null;
        if (kind) name.append(el('span', { class: 'device', title: d }, icon(kind)));
    }
    const docMember = docMemberOf(id);
    if (docMember && !isMe) {
        const editing = docMember.metadata && docMember.metadata.mode === 'editing';
        name.append(el('span', { class: 'chip chip-doc', title: `${editing ? 'Editing' : 'Viewing'} ${CONFIG.docTitle}` },
            icon(editing ? 'pen' : 'eye'), editing ? 'Editing' : 'Viewing'));
    }

    const line = el('div', { class: 'person-status' });
    if (status === 'offline') {
        let word = 'Offline';
        if (isMe && invisible) word = 'Invisible';
        line.append(el('span', { class: 'status-word', text: word }));
        if (!isMe) {
            if (!p) line.append(' · not seen yet');
            else if (typeof p.last_seen === 'number' && p.last_seen > 0) line.append(el('span', { class: 'last-seen', text: ` · last seen ${ago(p.last_seen)}` }));
        }
    } else {
        line.append(el('span', { class: 'status-word', text: STATUS_WORD[status] || status }));
        const act = p && ACTIVITIES[p.activity];
        if (act) line.append(el('span', { class: `chip chip-${p.activity}` }, icon(act.icon), act.label));
        else if (p && p.activity) line.append(el('span', { class: 'chip' }, p.activity));
        else if (devices.length) line.append(` · ${devices.join(', ')}`);
    }

    const main = el('div', { class: 'person-main' }, name, line);
    if (p && p.custom_status && status !== 'offline') main.append(el('div', { class: 'person-custom', text: `“${p.custom_status}”` }));
    li.append(main);

    if (person.added && !isMe) {
        const rm = el('button', { type: 'button', class: 'person-remove', 'aria-label': `Remove ${id} from your list` }, icon('x'));
        rm.addEventListener('click', () => removePerson(id));
        li.append(rm);
    }
    return li;
}

function renderRoster() {
    if (!me) return;
    const list = $('roster');
    const focused = document.activeElement && list.contains(document.activeElement)
        ? document.activeElement.closest('li')?.dataset.user : null;
    const ordered = [...people.values()].sort((a, b) => compareKeys(sortKey(a), sortKey(b)));
    const items = ordered.map(renderPerson);
    // Replace only what changed, so screen readers and focus are not disturbed needlessly.
    const same = list.children.length === items.length &&
        items.every((li, i) => list.children[i].outerHTML === li.outerHTML);
    if (!same) {
        list.replaceChildren(...items);
        if (focused) list.querySelector(`li[data-user="${CSS.escape(focused)}"] button`)?.focus();
    }
    rosterItems.clear();
    for (const li of list.children) rosterItems.set(li.dataset.user, li);
    const others = ordered.filter((p) => p.id !== me.name);
    const online = others.filter((p) => statusOf(p) !== 'offline').length;
    $('people-count').textContent = others.length ? `${online} online` : '';
    $('roster-empty').hidden = others.length > 0;
}

$('add-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('add-name');
    const names = input.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
    const bad = names.filter((n) => !NAME_RE.test(n));
    if (bad.length) {
        input.setAttribute('aria-invalid', 'true');
        input.title = 'Use letters, digits, dots, dashes or underscores';
        return;
    }
    input.removeAttribute('aria-invalid');
    if (!client || names.length === 0) return;
    addPeople(names, { added: true });
    input.value = '';
});

// ---------------------------------------------------------------------------------------------
// Rooms: the lobby (who is around) and the document

function onRoom(room, change) {
    if (room.channel === CONFIG.lobby) {
        addPeople([...room.members.keys()]);
        return;
    }
    if (room.channel === CONFIG.doc) {
        renderDoc();
        if (change && change.type === 'member_left') removeCursor(change.user_id);
        renderRoster();
    }
}

function onMemberEvent(m) {
    if (m.channel === CONFIG.lobby) {
        if (m.type === 'member_joined' && !people.has(m.member.user_id)) feed(m.member.user_id, 'joined the workspace');
        return;
    }
    if (m.channel !== CONFIG.doc) return;
    const id = m.member ? m.member.user_id : m.user_id;
    if (id === me.name) return;
    const mode = m.member && m.member.metadata ? m.member.metadata.mode : null;
    if (m.type === 'member_joined') feed(id, `opened <doc> ${mode === 'editing' ? 'to edit' : ''}`.trim());
    else if (m.type === 'member_updated') {
        if (mode === 'editing') feed(id, 'started editing <doc>');
        else if (mode === 'viewing') feed(id, 'is viewing <doc>');
    } else if (m.type === 'member_left') feed(id, m.reason === 'left' ? 'closed <doc>' : 'left <doc>');
}

async function openDoc(mode = docMode) {
    docMode = mode;
    $(`mode-${mode}`).checked = true;
    try {
        await client.join(CONFIG.doc, { mode });
    } catch (e) {
        feed(me.name, `could not open the document (${e.code})`);
        return;
    }
    docOpen = true;
    session.set('presenced.doc', true);
    session.set('presenced.docMode', mode);
    renderDoc();
    renderRoster();
}

async function closeDoc() {
    docOpen = false;
    session.set('presenced.doc', false);
    client.typing(CONFIG.doc, false);
    await client.leave(CONFIG.doc).catch(() => {});
    $('cursors').replaceChildren();
    renderDoc();
    renderRoster();
}

$('doc-toggle').addEventListener('click', () => (docOpen ? closeDoc() : openDoc()));

document.querySelectorAll('#mode-choice input').forEach((radio) => {
    radio.addEventListener('change', () => {
        if (!radio.checked || !docOpen) return;
        docMode = radio.value;
        session.set('presenced.docMode', docMode);
        client.update(CONFIG.doc, { mode: docMode }).catch(() => {});
        renderDoc();
    });
});

function renderDoc() {
    const room = client && client.room(CONFIG.doc);
    $('doc-open').hidden = !docOpen;
    $('doc-closed').hidden = docOpen;
    $('mode-choice').hidden = !docOpen;
    const toggle = $('doc-toggle');
    toggle.textContent = docOpen ? 'Close' : 'Open document';
    toggle.className = docOpen ? 'btn btn-small' : 'btn btn-primary btn-small';
    $('doc-body').contentEditable = docOpen && docMode === 'editing' ? 'true' : 'false';

    const members = room && room.joined ? room.list() : [];
    const editing = members.filter((m) => m.metadata && m.metadata.mode === 'editing');
    const sorted = [...editing, ...members.filter((m) => !editing.includes(m))];
    const pile = $('doc-members');
    const shown = sorted.slice(0, 5);
    pile.replaceChildren(...shown.map((m) => {
        const mode = m.metadata && m.metadata.mode === 'editing' ? 'editing' : 'viewing';
        const who = m.user_id === me.name ? `${m.user_id} (you)` : m.user_id;
        const li = el('li', { dataset: { user: m.user_id, mode }, title: `${who} — ${mode}` },
            avatar(m.user_id, { size: 'sm' }),
            el('span', { class: `mode-badge hue-${hueOf(m.user_id)}` }, icon(mode === 'editing' ? 'pen' : 'eye')),
            el('span', { class: 'visually-hidden', text: `${who}, ${mode}` }));
        return li;
    }));
    if (sorted.length > shown.length) pile.append(el('li', {}, el('span', { class: 'more', text: `+${sorted.length - shown.length}` })));
    $('doc-sub').textContent = members.length
        ? `Shared document · ${members.length} here${editing.length ? ` · ${editing.length} editing` : ''}`
        : 'Shared document';
    const named = (m) => (m.user_id === me.name ? 'you' : m.user_id);
    const viewers = members.filter((m) => !editing.includes(m));
    const text = $('doc-presence-text');
    text.replaceChildren();
    const phrase = (list, verb) => {
        const names = list.map(named).sort((a, b) => (a === 'you') - (b === 'you'));
        names.forEach((n, i) => {
            if (i > 0) text.append(i === names.length - 1 ? ' and ' : ', ');
            text.append(el('strong', { text: n }));
        });
        const plural = names.length > 1 || names[0] === 'you';
        text.append(` ${plural ? verb[1] : verb[0]}`);
    };
    if (editing.length) phrase(editing, ['is editing', 'are editing']);
    if (editing.length && viewers.length) text.append(' · ');
    if (viewers.length) phrase(viewers, ['is viewing', 'are viewing']);
    // Cursors of people no longer in the room.
    for (const c of [...$('cursors').children]) if (!room || !room.members.has(c.dataset.user)) c.remove();
    renderTyping();
}

// Cursors: positions are fractions of the document surface, so they fit any window size.
function onCursor(msg) {
    if (msg.channel !== CONFIG.doc || !docOpen) return;
    const v = msg.cursor;
    if (!v || typeof v.x !== 'number' || typeof v.y !== 'number') {
        removeCursor(msg.user_id);
        return;
    }
    let c = $('cursors').querySelector(`[data-user="${CSS.escape(msg.user_id)}"]`);
    if (!c) {
        c = el('div', { class: `cursor hue-${hueOf(msg.user_id)}`, dataset: { user: msg.user_id } },
            cursorArrow(), el('span', { class: 'cursor-label', text: msg.user_id }));
        $('cursors').append(c);
    }
    c.style.setProperty('--x', String(Math.min(1, Math.max(0, v.x))));
    c.style.setProperty('--y', String(Math.min(1, Math.max(0, v.y))));
}

function removeCursor(id) {
    const c = $('cursors').querySelector(`[data-user="${CSS.escape(id)}"]`);
    if (c) c.remove();
}

const surface = $('doc-surface');
surface.addEventListener('pointermove', (e) => {
    if (!docOpen) return;
    const r = surface.getBoundingClientRect();
    const x = Math.round(((e.clientX - r.left) / r.width) * 1000) / 1000;
    const y = Math.round(((e.clientY - r.top) / r.height) * 1000) / 1000;
    client.cursor(CONFIG.doc, { x, y });
});
surface.addEventListener('pointerleave', () => {
    if (docOpen) client.cursor(CONFIG.doc, null);
});
$('doc-body').addEventListener('input', () => {
    if (docOpen && docMode === 'editing') client.typing(CONFIG.doc, true);
});
$('doc-body').addEventListener('blur', () => {
    if (docOpen) client.typing(CONFIG.doc, false);
});

function renderTyping() {
    const room = client && client.room(CONFIG.doc);
    const typing = room && docOpen ? [...room.typing].filter((id) => id !== me.name && room.members.has(id)) : [];
    for (const c of $('cursors').children) c.classList.toggle('is-typing', typing.includes(c.dataset.user));
    const text = typing.length === 0 ? '' : `${listWords(typing)} ${typing.length === 1 ? 'is' : 'are'} typing…`;
    if ($('typing').textContent !== text) $('typing').textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Invite

{
    const url = new URL(location.href);
    url.search = '';
    url.hash = '';
    $('invite-link').value = url.toString();
    $('invite-copy').addEventListener('click', async () => {
        const input = $('invite-link');
        let ok = false;
        try {
            await navigator.clipboard.writeText(input.value);
            ok = true;
        } catch {
            input.select();
            ok = document.execCommand && document.execCommand('copy');
        }
        const b = $('invite-copy');
        b.textContent = ok ? 'Copied' : 'Select and copy';
        setTimeout(() => (b.textContent = 'Copy'), 1500);
    });
}

// ---------------------------------------------------------------------------------------------
// Activity feed

function feed(id, text) {
    const list = $('feed');
    const parts = text.split('<doc>');
    const body = el('span', { class: 'feed-text' }, el('strong', { text: id }), ' ');
    parts.forEach((part, i) => {
        body.append(part);
        if (i < parts.length - 1) body.append(el('strong', { text: CONFIG.docTitle }));
    });
    const time = el('time', { class: 'feed-time', datetime: new Date().toISOString(), text: clockTime() });
    body.append(time);
    const item = el('li', { class: 'feed-item is-new', dataset: { user: id } }, avatar(id, { size: 'sm' }), body);
    list.prepend(item);
    setTimeout(() => item.classList.remove('is-new'), 1300);
    while (list.children.length > 50) list.lastElementChild.remove();
    $('feed-empty').hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Boot

const saved = session.get('presenced.session', null);
if (params.get('user') && NAME_RE.test(params.get('user'))) start(params.get('user'), params.get('device') || 'web');
else if (params.get('token')) start('me', params.get('device') || 'web');
else if (saved && NAME_RE.test(saved.name)) start(saved.name, saved.device || 'web');
else showSignin();
