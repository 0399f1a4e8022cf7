// presenced-client: the JavaScript client of presenced (docs/PROTOCOL.md), for browsers and
// Node. One dependency-free ES module.
//
// It is a superset of the seed document's browser `PresenceClient`:
//
//     const presence = new PresenceClient('wss://example.com/presence?token=...', 'user123', 'web');
//     presence.on('onPresenceChange', (p) => updateUserStatus(p.user_id, p.status));
//     await presence.connect();
//     presence.subscribeToUsers(['friend1', 'friend2']);
//     presence.setStatus('away');
//     presence.disconnect();
//
// and adds: promises for every request (matched by the protocol's request `id`), token
// authentication and refresh, heartbeats at the server's interval, activity detection (away
// after 5 minutes, 1 minute when the page is hidden), automatic reconnection with jittered
// exponential backoff that restores subscriptions, rooms and status, a connection-state event,
// rooms with a local member map, throttled cursors and typing signals, privacy settings, and a
// local cache of the presences seen. See clients/js/README.md.

export const PROTOCOL_VERSION = 1;

/** Connection states, in the order a connection usually goes through them. */
export const ConnectionState = Object.freeze({
    IDLE: 'idle', // created, connect() not called yet
    CONNECTING: 'connecting', // a WebSocket is opening (or waiting for the welcome)
    CONNECTED: 'connected', // welcomed; requests are sent at once
    RECONNECTING: 'reconnecting', // the connection dropped; waiting out the backoff delay
    DISCONNECTED: 'disconnected', // disconnect() was called, or reconnecting gave up
});

const OPEN = 1; // WebSocket.OPEN, the same in browsers and `ws`

const DEFAULTS = {
    device: 'web',
    announce: true, // announce the session (set_online) on every connection
    token: null, // a JWT string, or a function returning one (or a promise of one)
    tokenVia: 'query', // 'query' (?token=) or 'header' (Authorization: Bearer; Node `ws` only)
    tokenRefresh: true, // with a token function: refresh before `exp`
    devAuth: false, // append ?user=<userId> (servers started with --dev-auth)
    WebSocket: null, // a WebSocket constructor (Node: `ws`); default: globalThis.WebSocket
    webSocketFactory: null, // (url, {headers}) => WebSocket-like; overrides WebSocket
    requestTimeoutMs: 10000,
    welcomeTimeoutMs: 5000,
    heartbeatIntervalMs: 15000, // used only until (or if never) the server's welcome says otherwise
    reconnect: {
        initialDelayMs: 500,
        maxDelayMs: 30000,
        factor: 2,
        jitter: 0.5, // the delay is drawn from [d * (1 - jitter), d]
        maxRetries: Infinity,
    },
    activity: {
        awayAfterMs: 5 * 60 * 1000,
        hiddenAwayAfterMs: 60 * 1000,
        events: ['mousedown', 'mousemove', 'keydown', 'scroll', 'touchstart', 'wheel', 'pointerdown'],
        target: undefined, // where input events are listened for; default: document
        document: undefined, // what has `hidden` and fires visibilitychange; default: document
    },
    cursorHz: 20, // cursor and typing signals sent per second per room, at most
    typingTimeoutMs: 5000, // typing(channel, true) turns itself off after this long (0: never)
    subscribeChunk: 1000, // user ids per subscribe request (the server's default limit)
    // Close codes after which the client does not reconnect by itself: 4002, the session was
    // ended by the application's backend (HTTP API). 4001 (token expired) is added when the
    // token is a fixed string, which cannot be renewed.
    noReconnectCodes: [4002],
};

const ALIASES = {
    onPresenceChange: 'presence',
    onStatusChange: 'status',
    onConnectionChange: 'state',
};

let defaultWebSocket = null;

/** Sets the WebSocket constructor used when none is given (e.g. `ws` in Node). */
export function setDefaultWebSocket(ctor) {
    defaultWebSocket = ctor;
}

/** An error answered by the server ({code, message}), or a local one (code `timeout`,
 * `disconnected`, `not_connected`). */
export class PresenceError extends Error {
    constructor(code, message, request = null, answer = null) {
        super(message || code);
        this.name = 'PresenceError';
        this.code = code;
        this.request = request; // the request message, when there was one
        this.answer = answer; // the server's error message, when there was one
    }
}

/** A room the client is in: its members as a local map kept up to date from events. */
export class Room {
    constructor(channel, metadata) {
        this.channel = channel;
        this.metadata = metadata; // this client's own metadata in the room
        this.mode = 'announce'; // or 'interval' (large rooms: channel_delta batches)
        this.count = 0; // member count, as last told by the server
        this.members = new Map(); // user_id -> member object
        this.cursors = new Map(); // user_id -> last cursor value received
        this.typing = new Set(); // user_ids currently typing
        this.nextCursor = null; // members beyond the first page: pass to loadMoreMembers()
        this.joined = false; // the server confirmed the join on the current connection
    }

    /** The members as an array, ordered by user id. */
    list() {
        return [...this.members.values()].sort((a, b) => (a.user_id < b.user_id ? -1 : a.user_id > b.user_id ? 1 : 0));
    }
}

const now = () => (globalThis.performance && typeof performance.now === 'function' ? performance.now() : Date.now());
const isObject = (x) => x !== null && typeof x === 'object' && !Array.isArray(x);

/** The `exp` claim of a JWT (epoch seconds), or null. Not verified: only for scheduling. */
export function tokenExpiry(token) {
    try {
        const part = String(token).split('.')[1];
        const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
        const json = typeof atob === 'function'
            ? decodeURIComponent(Array.from(atob(b64), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''))
            : Buffer.from(b64, 'base64').toString('utf8');
        const exp = JSON.parse(json).exp;
        return typeof exp === 'number' ? exp : null;
    } catch {
        return null;
    }
}

function reportListenerError(e) {
    if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
    else setTimeout(() => {
        throw e;
    }, 0);
}

export class PresenceClient {
    /**
     * new PresenceClient(wsUrl, userId, device, options) — the seed's signature plus options;
     * or new PresenceClient({url, userId, device, ...options}).
     */
    constructor(wsUrl, userId, device, options = {}) {
        if (isObject(wsUrl)) {
            options = wsUrl;
            wsUrl = options.url;
            userId = options.userId;
            device = options.device;
        }
        if (typeof wsUrl !== 'string' || wsUrl === '') throw new TypeError('PresenceClient: a WebSocket URL is required');
        const o = { ...DEFAULTS, ...options };
        o.reconnect = options.reconnect === false ? false : { ...DEFAULTS.reconnect, ...(isObject(options.reconnect) ? options.reconnect : {}) };
        o.activity = options.activity === false ? false : { ...DEFAULTS.activity, ...(isObject(options.activity) ? options.activity : {}) };
        this.options = o;

        // The seed's public fields.
        this.wsUrl = wsUrl;
        this.userId = userId ?? null; // from the welcome once connected (the server decides)
        this.device = device || o.device;
        this.ws = null;

        this.state = ConnectionState.IDLE;
        this.welcome = null; // the last welcome message
        this.sessionId = null;
        this.heartbeatInterval = o.heartbeatIntervalMs;
        this.heartbeatTtl = null;

        /** Local cache: user_id -> the last presence object seen (subscriptions, get_presence). */
        this.presences = new Map();
        /** Users watched (restored on reconnect). */
        this.subscriptions = new Set();
        /** channel -> Room (restored on reconnect). */
        this.rooms = new Map();
        /** The last privacy settings answered by getPrivacy() (null until then). */
        this.privacy = null;

        // What this client claims for itself; re-sent on every connection.
        this.own = {
            announced: !!o.announce,
            status: 'online', // the status the user chose: online, away or busy
            customStatus: undefined, // undefined: never set by this client (not sent)
            customStatusExpiresAt: null, // epoch ms, when set with an expiry
            activity: undefined,
        };
        this.idle = false;
        this._ownVersion = 0;

        this._listeners = new Map();
        this._seq = 0;
        this._pending = new Map(); // id -> request record, sent and waiting for the answer
        this._outbox = []; // request records waiting for a connection
        this._attempt = 0; // reconnect attempts since the last welcome
        this._timers = { reconnect: null, heartbeat: null, welcome: null, refresh: null, idle: null };
        this._signals = new Map(); // `${kind}\n${channel}` -> {last, value, timer, has}
        this._typingOff = new Map(); // channel -> timer
        this._connectWaiters = [];
        this._want = false; // the user wants a connection (connect() called, not disconnect())
        this._generation = 0; // increases with every socket, to ignore events of old ones
        this._lastInbound = 0;
        this._hbSentAt = null;
        this._token = typeof o.token === 'string' ? o.token : null;
        this._activityBound = null;
        this._onlineBound = null;
        this._lastActivity = now();
        this._hiddenSince = null;
    }

    // ---------------------------------------------------------------------------------------
    // Events

    /** Adds a listener; returns a function that removes it. The seed's names (onPresenceChange,
     * onStatusChange) are aliases of 'presence' and 'status'. */
    on(event, fn) {
        const name = ALIASES[event] || event;
        if (!this._listeners.has(name)) this._listeners.set(name, new Set());
        this._listeners.get(name).add(fn);
        return () => this.off(event, fn);
    }

    off(event, fn) {
        const set = this._listeners.get(ALIASES[event] || event);
        if (set) set.delete(fn);
    }

    once(event, fn) {
        const off = this.on(event, (...args) => {
            off();
            fn(...args);
        });
        return off;
    }

    _emit(event, ...args) {
        const set = this._listeners.get(event);
        if (!set || set.size === 0) return false;
        for (const fn of [...set]) {
            try {
                fn(...args);
            } catch (e) {
                reportListenerError(e);
            }
        }
        return true;
    }

    _setState(state, info = {}) {
        if (this.state === state && state !== ConnectionState.RECONNECTING) return;
        const previous = this.state;
        this.state = state;
        this._emit('state', state, { previous, ...info });
    }

    // ---------------------------------------------------------------------------------------
    // Connection

    /** Opens the connection; resolves with the welcome once the server greets this client.
     * Rejects if disconnect() is called first or reconnecting gives up. */
    connect() {
        if (this.state === ConnectionState.CONNECTED && this.welcome) return Promise.resolve(this.welcome);
        const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
        if (!this._want) {
            this._want = true;
            this._attempt = 0;
            this._startActivity();
            this._startOnlineListener();
            this._open();
        }
        return p;
    }

    /** Closes the connection and stops reconnecting. With {offline: true} the session leaves
     * presence at once (set_offline) instead of after the server's offline grace period. */
    disconnect({ offline = false, code = 1000, reason = '' } = {}) {
        this._want = false;
        this._stopActivity();
        this._stopOnlineListener();
        clearTimeout(this._timers.reconnect);
        this._timers.reconnect = null;
        const ws = this.ws;
        if (ws && ws.readyState === OPEN && offline) this._sendRaw({ type: 'set_offline' });
        this._teardownSocket();
        if (ws) {
            try {
                ws.close(code, reason);
            } catch {
                /* already closing */
            }
        }
        this._failAll(new PresenceError('disconnected', 'the client disconnected'));
        for (const w of this._connectWaiters.splice(0)) w.reject(new PresenceError('disconnected', 'the client disconnected'));
        this._clearSignals();
        for (const room of this.rooms.values()) room.joined = false;
        this._setState(ConnectionState.DISCONNECTED, { code, reason });
    }

    /** Whether the connection is open and welcomed. */
    get connected() {
        return this.state === ConnectionState.CONNECTED;
    }

    async _open() {
        const gen = ++this._generation;
        this._setState(ConnectionState.CONNECTING, { attempt: this._attempt });
        let token = this._token;
        if (typeof this.options.token === 'function') {
            try {
                token = await this.options.token();
                this._token = token;
            } catch (e) {
                if (gen !== this._generation || !this._want) return;
                this._emit('error', new PresenceError('token', `getting a token failed: ${e && e.message}`));
                this._scheduleReconnect(0, 'token');
                return;
            }
            if (gen !== this._generation || !this._want) return;
        }
        let url = this.wsUrl;
        const params = [];
        if (token && this.options.tokenVia !== 'header') params.push(`token=${encodeURIComponent(token)}`);
        if (this.options.devAuth && this.userId && !/[?&]user=/.test(url)) params.push(`user=${encodeURIComponent(this.userId)}`);
        if (params.length) url += (url.includes('?') ? '&' : '?') + params.join('&');
        const headers = token && this.options.tokenVia === 'header' ? { Authorization: `Bearer ${token}` } : undefined;

        let ws;
        try {
            ws = this._createSocket(url, headers);
        } catch (e) {
            this._emit('error', new PresenceError('socket', `could not open a WebSocket: ${e && e.message}`));
            this._scheduleReconnect(1006, String(e && e.message));
            return;
        }
        this.ws = ws;
        this.welcome = null;
        this._lastInbound = now();
        ws.onopen = () => {
            if (gen !== this._generation) return;
            this._lastInbound = now();
            // A server that sends no welcome (not presenced?) still gets a working client.
            this._timers.welcome = setTimeout(() => {
                if (gen === this._generation && !this.welcome) this._onWelcome(null);
            }, this.options.welcomeTimeoutMs);
        };
        ws.onmessage = (event) => {
            if (gen !== this._generation) return;
            this._lastInbound = now();
            let msg;
            try {
                msg = JSON.parse(typeof event.data === 'string' ? event.data : String(event.data));
            } catch {
                return;
            }
            this.handleMessage(msg);
        };
        ws.onerror = () => {
            /* a close event follows */
        };
        ws.onclose = (event) => {
            if (gen !== this._generation) return;
            this._onSocketClosed(event ? event.code : 1006, event ? event.reason : '');
        };
    }

    _createSocket(url, headers) {
        const o = this.options;
        if (o.webSocketFactory) return o.webSocketFactory(url, { headers });
        const Ctor = o.WebSocket || defaultWebSocket || globalThis.WebSocket;
        if (!Ctor) throw new Error('no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)');
        return headers ? new Ctor(url, [], { headers }) : new Ctor(url);
    }

    _teardownSocket() {
        this._generation++;
        clearInterval(this._timers.heartbeat);
        clearTimeout(this._timers.welcome);
        clearTimeout(this._timers.refresh);
        this._timers.heartbeat = this._timers.welcome = this._timers.refresh = null;
        const ws = this.ws;
        if (ws) {
            ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
            // `ws` (Node) emits 'error' as an event too: never let it go unhandled.
            if (typeof ws.on === 'function') ws.on('error', () => {});
        }
        this.ws = null;
    }

    _onSocketClosed(code, reason) {
        this._teardownSocket();
        this._clearSignals();
        for (const room of this.rooms.values()) {
            room.joined = false;
            room.cursors.clear();
            room.typing.clear();
        }
        // Requests that were sent but not answered: the state they change is restored with the
        // next connection; the others are sent again then.
        for (const r of [...this._pending.values()]) {
            this._pending.delete(r.id);
            if (r.restoredBy) r.settle(true, { type: 'ack', id: r.id, restored: true });
            else this._outbox.push(r);
        }
        this._emit('disconnected', { code, reason });
        if (!this._want) {
            this._setState(ConnectionState.DISCONNECTED, { code, reason });
            return;
        }
        if (code === 4001 && typeof this.options.token !== 'function') {
            // The token expired and there is no way to get another one.
            this._giveUp(code, reason || 'token expired');
            return;
        }
        if (this.options.noReconnectCodes.includes(code)) {
            this._giveUp(code, reason);
            return;
        }
        this._scheduleReconnect(code, reason);
    }

    /** The delay before reconnect attempt n (0-based): exponential, capped, jittered. */
    backoffDelay(n) {
        const r = this.options.reconnect;
        const base = Math.min(r.maxDelayMs, r.initialDelayMs * Math.pow(r.factor, n));
        const jitter = Math.min(1, Math.max(0, r.jitter));
        return Math.round(base * (1 - jitter * Math.random()));
    }

    _scheduleReconnect(code, reason) {
        const r = this.options.reconnect;
        if (!r || this._attempt >= r.maxRetries) {
            this._giveUp(code, reason);
            return;
        }
        const delay = this.backoffDelay(this._attempt);
        this._attempt++;
        clearTimeout(this._timers.reconnect);
        this._timers.reconnect = setTimeout(() => {
            this._timers.reconnect = null;
            if (this._want) this._open();
        }, delay);
        this._setState(ConnectionState.RECONNECTING, { attempt: this._attempt, delay, code, reason });
    }

    _giveUp(code, reason) {
        this._want = false;
        this._stopActivity();
        this._stopOnlineListener();
        this._failAll(new PresenceError('disconnected', `connection lost (${code}${reason ? ` ${reason}` : ''})`));
        for (const w of this._connectWaiters.splice(0))
            w.reject(new PresenceError('disconnected', `could not connect (${code}${reason ? ` ${reason}` : ''})`));
        this._setState(ConnectionState.DISCONNECTED, { code, reason });
    }

    /** Reconnects now instead of at the end of the backoff delay (e.g. the network is back). */
    reconnectNow() {
        if (!this._want || this.state !== ConnectionState.RECONNECTING) return;
        clearTimeout(this._timers.reconnect);
        this._timers.reconnect = null;
        this._open();
    }

    _startOnlineListener() {
        if (this._onlineBound || typeof globalThis.addEventListener !== 'function' || typeof globalThis.document === 'undefined') return;
        this._onlineBound = () => this.reconnectNow();
        globalThis.addEventListener('online', this._onlineBound);
    }

    _stopOnlineListener() {
        if (!this._onlineBound) return;
        globalThis.removeEventListener('online', this._onlineBound);
        this._onlineBound = null;
    }

    _onWelcome(msg) {
        clearTimeout(this._timers.welcome);
        this._timers.welcome = null;
        this.welcome = msg || { type: 'welcome' };
        if (msg) {
            if (msg.user_id) this.userId = msg.user_id;
            this.sessionId = msg.session_id ?? null;
            if (typeof msg.heartbeat_interval === 'number' && msg.heartbeat_interval > 0) this.heartbeatInterval = msg.heartbeat_interval;
            if (typeof msg.heartbeat_ttl === 'number' && msg.heartbeat_ttl > 0) this.heartbeatTtl = msg.heartbeat_ttl;
        }
        this._attempt = 0; // backoff starts over after every successful connection
        this._startHeartbeat();
        this._scheduleRefresh();
        this._setState(ConnectionState.CONNECTED, { welcome: this.welcome });
        this._emit('welcome', this.welcome);
        this._restore();
        for (const w of this._connectWaiters.splice(0)) w.resolve(this.welcome);
    }

    _startHeartbeat() {
        clearInterval(this._timers.heartbeat);
        this._hbSentAt = null; // when the oldest heartbeat not followed by any message was sent
        this._hbLastAt = null; // when the last heartbeat (with an id or not) was sent
        const interval = Math.max(50, this.heartbeatInterval);
        this._timers.heartbeat = setInterval(() => this._heartbeat(), interval);
    }

    _heartbeat() {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN) return;
        // A heartbeat carries an id, so that the server answers it, only when nothing arrived
        // since the previous one: a connection that then stays silent past the TTL is dead (a
        // half-open TCP connection) and is replaced. The others are the bare form the server
        // takes on its fast path without answering.
        const ttl = this.heartbeatTtl ?? 3 * this.heartbeatInterval;
        const t = now();
        if (this._hbSentAt !== null && this._lastInbound < this._hbSentAt && t - this._hbSentAt > ttl) {
            try {
                ws.close(4000, 'no answer');
            } catch {
                /* ignore */
            }
            this._onSocketClosed(4000, 'no answer from the server');
            return;
        }
        const quiet = this._hbLastAt == null || this._lastInbound < this._hbLastAt;
        this._hbLastAt = t;
        if (!quiet && this.own.announced) {
            this._sendRaw({ type: 'heartbeat', device: this.device });
            return;
        }
        if (this._hbSentAt === null || this._lastInbound >= this._hbSentAt) this._hbSentAt = t;
        const id = `hb${++this._seq}`;
        // A session that did not announce itself stays unannounced: ping keeps it alive.
        this._sendRaw(this.own.announced ? { type: 'heartbeat', device: this.device, id } : { type: 'ping', id });
    }

    /** After a (re)connection: the session's status, subscriptions and rooms, then the queue. */
    _restore() {
        const gen = this._generation;
        const jobs = [];
        // Restore requests cut short by another drop are simply made again by the next restore.
        const restore = { direct: true, restoredBy: true };
        const report = (p) => jobs.push(p.catch((e) => {
            this._emit('error', e);
            return null;
        }));
        if (this.own.announced) {
            const m = { type: 'set_online', device: this.device, status: this._effectiveStatus() };
            this._ownFields(m);
            report(this._request(m, restore));
        }
        const ids = [...this.subscriptions];
        for (let i = 0; i < ids.length; i += this.options.subscribeChunk) {
            const chunk = ids.slice(i, i + this.options.subscribeChunk);
            report(this._request({ type: 'subscribe', user_ids: chunk }, restore).then((a) => {
                this._markMissing(chunk, a);
                return a;
            }));
        }
        for (const room of this.rooms.values()) {
            const m = { type: 'join', channel: room.channel };
            if (room.metadata !== undefined) m.metadata = room.metadata;
            report(this._request(m, restore));
        }
        const queued = this._outbox.splice(0);
        for (const r of queued) this._transmit(r);
        Promise.all(jobs).then(() => {
            if (gen === this._generation && this.state === ConnectionState.CONNECTED) this._emit('restored');
        });
    }

    // ---------------------------------------------------------------------------------------
    // Requests

    _sendRaw(obj) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN) return false;
        ws.send(JSON.stringify(obj));
        return true;
    }

    /**
     * Sends any protocol message as a request: it gets an `id`, and the promise resolves with
     * the server's answer (ack, or the answer's own type) or rejects with a PresenceError
     * carrying the server's error code and message. While the connection is down, the request
     * waits for the next one (up to requestTimeoutMs).
     */
    request(msg, opts = {}) {
        return this._request({ ...msg }, opts);
    }

    _request(msg, { direct = false, timeoutMs = this.options.requestTimeoutMs, restoredBy = false } = {}) {
        const id = `c${++this._seq}`;
        msg.id = id;
        let settle;
        const p = new Promise((resolve, reject) => {
            settle = (ok, value) => {
                clearTimeout(rec.timer);
                this._pending.delete(id);
                const i = this._outbox.indexOf(rec);
                if (i >= 0) this._outbox.splice(i, 1);
                if (ok) resolve(value);
                else reject(value);
            };
        });
        const rec = { id, msg, settle, restoredBy, timer: null };
        if (timeoutMs > 0 && Number.isFinite(timeoutMs))
            rec.timer = setTimeout(() => rec.settle(false, new PresenceError('timeout', `no answer to ${msg.type} within ${timeoutMs} ms`, msg)), timeoutMs);
        if (this.state === ConnectionState.DISCONNECTED) {
            rec.settle(false, new PresenceError('not_connected', 'the client is not connected (call connect())', msg));
        } else if (direct || this.state === ConnectionState.CONNECTED) {
            this._transmit(rec);
        } else {
            this._outbox.push(rec);
        }
        // Seed-style callers never look at the promise: a failure must not become an unhandled
        // rejection. Callers that await it still see the rejection.
        p.catch(() => {});
        return p;
    }

    _transmit(rec) {
        this._pending.set(rec.id, rec);
        if (!this._sendRaw(rec.msg)) {
            this._pending.delete(rec.id);
            this._outbox.push(rec);
        }
    }

    _failAll(err) {
        for (const r of [...this._pending.values(), ...this._outbox]) r.settle(false, new PresenceError(err.code, err.message, r.msg));
        this._pending.clear();
        this._outbox.length = 0;
    }

    /** Handles one message from the server (public, as in the seed's client). */
    handleMessage(msg) {
        if (!isObject(msg)) return;
        this._emit('message', msg);
        const rec = msg.id !== undefined ? this._pending.get(msg.id) : undefined;
        switch (msg.type) {
            case 'welcome':
                this._onWelcome(msg);
                break;
            case 'initial_presence':
            case 'presence_result':
                if (isObject(msg.presences)) for (const p of Object.values(msg.presences)) this._updatePresence(p);
                break;
            case 'presence_update':
                if (isObject(msg.presence)) this._updatePresence(msg.presence);
                break;
            case 'channel_state':
                this._onChannelState(msg);
                break;
            case 'channel_members':
                this._onChannelMembers(msg);
                break;
            case 'member_joined':
            case 'member_updated':
            case 'member_left':
                this._onMemberEvent(msg);
                break;
            case 'channel_delta':
                this._onChannelDelta(msg);
                break;
            case 'channel_left':
                // The server took this connection out of a room (a refreshed token no longer
                // allows it): as a leave, without asking for one.
                if (typeof msg.channel === 'string') this._forgetRoom(msg.channel, msg.reason);
                break;
            case 'cursor':
            case 'typing':
                this._onSignal(msg);
                break;
            case 'privacy':
                this.privacy = { visibility: msg.visibility, contacts: msg.contacts || [], blocked: msg.blocked || [] };
                this._emit('privacy', this.privacy);
                break;
            case 'error':
                if (!rec) this._emit('error', new PresenceError(msg.code, msg.message, null, msg));
                break;
            default:
                break;
        }
        if (rec) {
            if (msg.type === 'error') rec.settle(false, new PresenceError(msg.code, msg.message, rec.msg, msg));
            else rec.settle(true, msg);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Own presence

    _effectiveStatus() {
        return this.idle && this.own.status === 'online' ? 'away' : this.own.status;
    }

    /** Adds the user-level fields this client has set to a set_online/set_status message. */
    _ownFields(m) {
        const o = this.own;
        if (o.customStatus !== undefined) {
            m.custom_status = o.customStatus;
            if (o.customStatus !== null && o.customStatusExpiresAt) {
                const left = Math.ceil((o.customStatusExpiresAt - Date.now()) / 1000);
                if (left > 0) m.custom_status_expires_in = left;
                else {
                    m.custom_status = null;
                    o.customStatus = null;
                    o.customStatusExpiresAt = null;
                }
            }
        }
        if (o.activity !== undefined) m.activity = o.activity;
        return m;
    }

    _emitStatus() {
        this._emit('status', {
            status: this.own.announced ? this._effectiveStatus() : 'offline',
            chosen: this.own.status,
            customStatus: this.own.customStatus ?? null,
            activity: this.own.activity ?? null,
            idle: this.idle,
        });
    }

    /** The seed's set_online: announces the session as online. */
    setOnline() {
        this.own.announced = true;
        this.own.status = 'online';
        this._emitStatus();
        return this._request({ type: 'set_online', device: this.device, status: this._effectiveStatus() });
    }

    /**
     * setStatus(status, customStatus = null, activity = null) — the seed's form: omitted
     * customStatus and activity are sent as null, which clears them.
     * setStatus({status, customStatus, customStatusExpiresIn, activity}) — only the fields
     * given change; null clears.
     * status 'offline' acts as setOffline().
     */
    setStatus(status, customStatus = null, activity = null) {
        let fields;
        if (isObject(status)) fields = status;
        else fields = { status, customStatus, activity };
        if (fields.status === 'offline') return this.setOffline();
        const m = { type: 'set_status' };
        const before = { ...this.own };
        if (fields.status !== undefined) {
            if (!['online', 'away', 'busy'].includes(fields.status))
                return Promise.reject(new PresenceError('bad_status', '"status" must be online, away, busy or offline'));
            this.own.status = fields.status;
        }
        if ('customStatus' in fields) {
            this.own.customStatus = fields.customStatus;
            this.own.customStatusExpiresAt = fields.customStatus !== null && fields.customStatusExpiresIn
                ? Date.now() + fields.customStatusExpiresIn * 1000 : null;
            m.custom_status = fields.customStatus;
            if (this.own.customStatusExpiresAt) m.custom_status_expires_in = fields.customStatusExpiresIn;
        }
        if ('activity' in fields) {
            this.own.activity = fields.activity;
            m.activity = fields.activity;
        }
        this.own.announced = true;
        m.status = this._effectiveStatus();
        const version = ++this._ownVersion;
        this._emitStatus();
        const p = this._request(m);
        p.catch((e) => {
            // Refused by the server (too long, bad value...): not kept, so not restored later.
            if (e.answer && version === this._ownVersion) {
                this.own = before;
                this._emitStatus();
            }
        });
        return p;
    }

    /** Leaves presence at once (others see offline; no grace). The connection stays open and
     * keeps watching; setOnline() or setStatus() comes back. */
    setOffline() {
        this.own.announced = false;
        this._emitStatus();
        return this._request({ type: 'set_offline' }, { restoredBy: true });
    }

    // ---------------------------------------------------------------------------------------
    // Activity detection

    /** Records user activity now (input events call this; so can the application). */
    markActive() {
        this._lastActivity = now();
        if (this.idle) this._setIdle(false);
        else this._scheduleIdleCheck();
    }

    /** Forces the idle state (true: away while the chosen status is online). */
    setIdle(idle) {
        this._setIdle(!!idle);
    }

    _setIdle(idle) {
        if (this.idle === idle) return;
        this.idle = idle;
        this._emit('idle', idle);
        if (this.own.announced && this.own.status === 'online') {
            this._emitStatus();
            this._request({ type: 'set_status', status: idle ? 'away' : 'online' });
        }
        this._scheduleIdleCheck();
    }

    _activityDoc() {
        const a = this.options.activity;
        return a && (a.document !== undefined ? a.document : globalThis.document);
    }

    _startActivity() {
        const a = this.options.activity;
        if (!a || this._activityBound) return;
        const target = a.target !== undefined ? a.target : globalThis.document;
        if (!target || typeof target.addEventListener !== 'function') return;
        const doc = this._activityDoc();
        const onInput = () => {
            // Cheap for frequent events (mousemove): a timestamp, and at most a state change.
            this._lastActivity = now();
            if (this.idle && !(doc && doc.hidden)) this._setIdle(false);
        };
        const onVisibility = () => {
            if (doc.hidden) this._hiddenSince = now();
            else {
                this._hiddenSince = null;
                this.markActive();
            }
            this._scheduleIdleCheck();
        };
        for (const ev of a.events) target.addEventListener(ev, onInput, { passive: true, capture: true });
        if (doc && typeof doc.addEventListener === 'function') doc.addEventListener('visibilitychange', onVisibility);
        this._activityBound = { target, doc, onInput, onVisibility, events: [...a.events] };
        this._lastActivity = now();
        this._hiddenSince = doc && doc.hidden ? now() : null;
        this._scheduleIdleCheck();
    }

    _stopActivity() {
        const b = this._activityBound;
        clearTimeout(this._timers.idle);
        this._timers.idle = null;
        if (!b) return;
        for (const ev of b.events) b.target.removeEventListener(ev, b.onInput, { capture: true });
        if (b.doc && typeof b.doc.removeEventListener === 'function') b.doc.removeEventListener('visibilitychange', b.onVisibility);
        this._activityBound = null;
    }

    _scheduleIdleCheck() {
        clearTimeout(this._timers.idle);
        this._timers.idle = null;
        const a = this.options.activity;
        if (!a || !this._activityBound || this.idle) return;
        let deadline = this._lastActivity + a.awayAfterMs;
        if (this._hiddenSince !== null) deadline = Math.min(deadline, Math.max(this._lastActivity, this._hiddenSince) + a.hiddenAwayAfterMs);
        this._timers.idle = setTimeout(() => {
            this._timers.idle = null;
            if (!this._activityBound) return;
            const t = now();
            let due = this._lastActivity + a.awayAfterMs;
            if (this._hiddenSince !== null) due = Math.min(due, Math.max(this._lastActivity, this._hiddenSince) + a.hiddenAwayAfterMs);
            if (t + 1 >= due) this._setIdle(true);
            else this._scheduleIdleCheck();
        }, Math.max(0, deadline - now()));
    }

    // ---------------------------------------------------------------------------------------
    // Watching others

    _updatePresence(p) {
        if (!isObject(p) || typeof p.user_id !== 'string') return;
        const previous = this.presences.get(p.user_id);
        this.presences.set(p.user_id, p);
        this._emit('presence', p, previous);
    }

    /** Users the server left out of an answer (unknown, or not visible to this user): shown as
     * offline locally if the cache still says otherwise. */
    _markMissing(ids, answer) {
        if (!answer || !isObject(answer.presences)) return; // not an answer (cut short by a drop)
        const got = answer.presences;
        for (const id of ids) {
            if (got[id]) continue;
            const cached = this.presences.get(id);
            if (cached && cached.status !== 'offline') this._updatePresence({ user_id: id, status: 'offline' });
        }
    }

    /** The cached presence of a user (undefined when never seen). */
    getPresence(userId) {
        return this.presences.get(userId);
    }

    /** Starts watching users; resolves with the initial_presence answer. */
    subscribe(userIds) {
        const ids = [...new Set(Array.isArray(userIds) ? userIds : [userIds])];
        for (const id of ids) this.subscriptions.add(id);
        if (ids.length === 0) return Promise.resolve({ type: 'initial_presence', presences: {} });
        const chunks = [];
        for (let i = 0; i < ids.length; i += this.options.subscribeChunk) chunks.push(ids.slice(i, i + this.options.subscribeChunk));
        const ps = chunks.map((chunk) => this._request({ type: 'subscribe', user_ids: chunk }).then((a) => {
            this._markMissing(chunk, a);
            return a;
        }));
        const all = Promise.all(ps).then((answers) => ({
            type: 'initial_presence',
            presences: Object.assign({}, ...answers.map((a) => a.presences || {})),
        }));
        all.catch(() => {});
        return all;
    }

    /** The seed's name for subscribe(). */
    subscribeToUsers(userIds) {
        return this.subscribe(userIds);
    }

    /** Stops watching users (they stay in the cache). */
    unsubscribe(userIds) {
        const ids = [...new Set(Array.isArray(userIds) ? userIds : [userIds])].filter((id) => this.subscriptions.has(id));
        for (const id of ids) this.subscriptions.delete(id);
        if (ids.length === 0) return Promise.resolve({ type: 'ack' });
        return this._request({ type: 'unsubscribe', user_ids: ids }, { restoredBy: true });
    }

    /** Asks for users' presence once (no subscription); resolves with {user_id: presence}. */
    async fetchPresence(userIds) {
        const ids = [...new Set(Array.isArray(userIds) ? userIds : [userIds])];
        const a = await this._request({ type: 'get_presence', user_ids: ids });
        return a.presences || {};
    }

    /** Application-level round trip; resolves with the round-trip time in ms. */
    async ping() {
        const t = now();
        await this._request({ type: 'ping' });
        return now() - t;
    }

    // ---------------------------------------------------------------------------------------
    // Rooms

    /** Joins a room (or replaces this client's metadata in it); resolves with the Room, whose
     * member map is then kept up to date from the server's events. */
    async join(channel, metadata) {
        let room = this.rooms.get(channel);
        if (!room) {
            room = new Room(channel, metadata);
            this.rooms.set(channel, room);
        } else if (metadata !== undefined) room.metadata = metadata;
        const m = { type: 'join', channel };
        if (metadata !== undefined) m.metadata = metadata;
        try {
            await this._request(m);
        } catch (e) {
            // A refused join (forbidden, room_full, bad_channel...) is not restored later.
            if (this.rooms.get(channel) === room && !room.joined && e.code !== 'timeout' && e.code !== 'disconnected') this.rooms.delete(channel);
            throw e;
        }
        return room;
    }

    /** Forgets a room this connection is no longer in (not joined again on reconnect). */
    _forgetRoom(channel, reason) {
        const room = this.rooms.get(channel);
        this.rooms.delete(channel);
        for (const key of [...this._signals.keys()]) if (key.endsWith(`\n${channel}`)) this._dropSignal(key);
        clearTimeout(this._typingOff.get(channel));
        this._typingOff.delete(channel);
        if (room) {
            room.joined = false;
            this._emit('room', room, reason ? { type: 'left_room', reason } : { type: 'left_room' });
        }
    }

    /** Leaves a room. */
    leave(channel) {
        this._forgetRoom(channel);
        if (this.state !== ConnectionState.CONNECTED) return Promise.resolve({ type: 'ack' });
        return this._request({ type: 'leave', channel }, { restoredBy: true });
    }

    /** Replaces this client's metadata in a room (others get member_updated). */
    update(channel, metadata) {
        const room = this.rooms.get(channel);
        if (room) room.metadata = metadata;
        return this._request({ type: 'update', channel, metadata });
    }

    /** The Room of a channel this client is in (undefined otherwise). */
    room(channel) {
        return this.rooms.get(channel);
    }

    /** The members of a room as an array (this client's local map). */
    members(channel) {
        const room = this.rooms.get(channel);
        return room ? room.list() : [];
    }

    /** One page of a room's members (any room); resolves with the channel_members answer. */
    channelMembers(channel, { cursor = null, limit = 100 } = {}) {
        return this._request({ type: 'channel_members', channel, cursor, limit });
    }

    /** A room's member count (any room). */
    async channelCount(channel) {
        const a = await this._request({ type: 'channel_count', channel });
        return a.count;
    }

    /** Loads the next page of a joined room's members into its map; resolves with the Room. */
    async loadMoreMembers(channel, limit = 1000) {
        const room = this.rooms.get(channel);
        if (!room || !room.nextCursor) return room;
        await this.channelMembers(channel, { cursor: room.nextCursor, limit });
        return room;
    }

    _onChannelState(msg) {
        const room = this.rooms.get(msg.channel);
        if (!room) return;
        room.joined = true;
        room.mode = msg.mode || 'announce';
        room.count = msg.count ?? 0;
        room.members = new Map((msg.members || []).map((m) => [m.user_id, m]));
        room.nextCursor = msg.next_cursor ?? null;
        for (const id of [...room.cursors.keys()]) if (!room.members.has(id)) room.cursors.delete(id);
        this._emit('room', room, { type: 'state' });
    }

    _onChannelMembers(msg) {
        const room = this.rooms.get(msg.channel);
        if (!room || !room.joined) return;
        for (const m of msg.members || []) room.members.set(m.user_id, m);
        room.count = msg.count ?? room.count;
        room.nextCursor = msg.next_cursor ?? null;
        this._emit('room', room, { type: 'members' });
    }

    _onMemberEvent(msg) {
        const room = this.rooms.get(msg.channel);
        if (room) {
            if (msg.type === 'member_left') {
                room.members.delete(msg.user_id);
                room.cursors.delete(msg.user_id);
                room.typing.delete(msg.user_id);
            } else if (isObject(msg.member)) room.members.set(msg.member.user_id, msg.member);
            if (typeof msg.count === 'number') room.count = msg.count;
        }
        this._emit(msg.type, msg, room);
        if (room) this._emit('room', room, msg);
    }

    _onChannelDelta(msg) {
        const room = this.rooms.get(msg.channel);
        if (room) {
            for (const id of msg.left || []) {
                room.members.delete(id);
                room.cursors.delete(id);
                room.typing.delete(id);
            }
            for (const m of msg.joined || []) room.members.set(m.user_id, m);
            for (const m of msg.updated || []) room.members.set(m.user_id, m);
            if (typeof msg.count === 'number') room.count = msg.count;
            // A delta too big to list whole: some leavers are not named, so the map may hold
            // members who are gone. Read the first page again, at a random moment within a
            // couple of seconds, so that a whole large room does not ask at once.
            if (msg.left_more && !room.reloading) {
                room.reloading = true;
                setTimeout(() => this._reloadMembers(room), Math.random() * 2000);
            }
        }
        this._emit('channel_delta', msg, room);
        if (room) this._emit('room', room, msg);
    }

    async _reloadMembers(room) {
        try {
            const page = await this.channelMembers(room.channel, { limit: Math.max(100, Math.min(room.members.size, 1000)) });
            if (this.rooms.get(room.channel) !== room || !room.joined) return;
            room.members = new Map((page.members || []).map((m) => [m.user_id, m]));
            room.nextCursor = page.next_cursor ?? null;
            room.count = page.count ?? room.count;
            this._emit('room', room, { type: 'members' });
        } catch {
            /* disconnected: the rejoin after the reconnect brings a fresh channel_state */
        } finally {
            room.reloading = false;
        }
    }

    _onSignal(msg) {
        const room = this.rooms.get(msg.channel);
        if (msg.type === 'cursor') {
            if (room) room.cursors.set(msg.user_id, msg.cursor);
        } else if (room) {
            if (msg.typing) room.typing.add(msg.user_id);
            else room.typing.delete(msg.user_id);
        }
        this._emit(msg.type, msg, room);
    }

    // ---------------------------------------------------------------------------------------
    // Cursors and typing (ephemeral, throttled here to options.cursorHz per room)

    /** Sends this client's cursor in a room (any JSON value up to 512 bytes). Calls faster
     * than cursorHz are coalesced: the latest value is sent at the end of the period. */
    cursor(channel, value) {
        this._signal('cursor', channel, value);
    }

    /** Sends whether this user is typing in a room (throttled like cursors). typing true turns
     * itself off after typingTimeoutMs without another call. */
    typing(channel, isTyping = true) {
        const on = !!isTyping;
        clearTimeout(this._typingOff.get(channel));
        this._typingOff.delete(channel);
        if (on && this.options.typingTimeoutMs > 0) {
            this._typingOff.set(channel, setTimeout(() => {
                this._typingOff.delete(channel);
                this._signal('typing', channel, false);
            }, this.options.typingTimeoutMs));
        }
        this._signal('typing', channel, on);
    }

    _signal(kind, channel, value) {
        if (!this.rooms.has(channel) || this.state !== ConnectionState.CONNECTED) return;
        const key = `${kind}\n${channel}`;
        let s = this._signals.get(key);
        if (!s) {
            s = { last: -Infinity, value: undefined, sent: undefined, timer: null, has: false };
            this._signals.set(key, s);
        }
        if (kind === 'typing' && !s.has && s.sent === value) return; // no change
        s.value = value;
        s.has = true;
        if (!s.timer) this._pumpSignal(kind, channel, s);
    }

    /** Sends the signal's latest value now if a whole period has passed since the last one,
     * else once it has (timers have millisecond granularity: never a period short). */
    _pumpSignal(kind, channel, s) {
        const period = 1000 / Math.max(0.001, this.options.cursorHz);
        const wait = s.last + period - now();
        if (wait <= 0) this._flushSignal(kind, channel, s);
        else s.timer = setTimeout(() => {
            s.timer = null;
            this._pumpSignal(kind, channel, s);
        }, Math.ceil(wait));
    }

    _flushSignal(kind, channel, s) {
        if (!s.has) return;
        s.has = false;
        s.last = now();
        s.sent = s.value;
        this._sendRaw(kind === 'cursor' ? { type: 'cursor', channel, cursor: s.value } : { type: 'typing', channel, typing: s.value });
    }

    _dropSignal(key) {
        const s = this._signals.get(key);
        if (s) clearTimeout(s.timer);
        this._signals.delete(key);
    }

    _clearSignals() {
        for (const key of [...this._signals.keys()]) this._dropSignal(key);
        for (const t of this._typingOff.values()) clearTimeout(t);
        this._typingOff.clear();
    }

    // ---------------------------------------------------------------------------------------
    // Privacy (durable on the server; each change resolves once written)

    /** 'everyone', 'contacts' or 'nobody' (invisible). */
    setVisibility(visibility) {
        return this._request({ type: 'set_visibility', visibility });
    }

    addContact(userId) {
        return this._request({ type: 'add_contact', user_id: userId });
    }

    removeContact(userId) {
        return this._request({ type: 'remove_contact', user_id: userId });
    }

    block(userId) {
        return this._request({ type: 'block', user_id: userId });
    }

    unblock(userId) {
        return this._request({ type: 'unblock', user_id: userId });
    }

    /** Resolves with {visibility, contacts, blocked}. */
    async getPrivacy() {
        await this._request({ type: 'get_privacy' });
        return this.privacy;
    }

    // ---------------------------------------------------------------------------------------
    // Tokens

    /** Replaces the connection's token (the same user's); without an argument, asks the token
     * function for a new one. Later reconnections use it too. */
    async refreshToken(token) {
        if (token === undefined) {
            if (typeof this.options.token !== 'function') throw new PresenceError('no_token', 'no token given and no token function');
            token = await this.options.token();
        }
        const a = await this._request({ type: 'refresh', token });
        this._token = token;
        this._scheduleRefresh();
        return a;
    }

    _scheduleRefresh() {
        clearTimeout(this._timers.refresh);
        this._timers.refresh = null;
        if (typeof this.options.token !== 'function' || !this.options.tokenRefresh || !this._token) return;
        const exp = tokenExpiry(this._token);
        if (exp === null) return;
        const left = exp * 1000 - Date.now();
        // Refresh a quarter of the remaining lifetime before expiry, at most a minute before.
        const delay = Math.max(0, left - Math.min(60000, left / 4));
        this._timers.refresh = setTimeout(() => {
            this._timers.refresh = null;
            if (this.state !== ConnectionState.CONNECTED) return;
            this.refreshToken().catch((e) => {
                this._emit('error', e);
                // Try again shortly unless expiry is past (the server will close with 4001,
                // and the reconnection gets a fresh token).
                if (tokenExpiry(this._token) * 1000 > Date.now() + 1000 && !this._timers.refresh)
                    this._timers.refresh = setTimeout(() => this._scheduleRefresh(), 1000);
            });
        }, delay);
    }
}

export default PresenceClient;
