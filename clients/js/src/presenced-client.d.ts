// Type declarations of presenced-client (presenced-client.js). Wire protocol: docs/PROTOCOL.md.

export const PROTOCOL_VERSION: 1;

export type Status = 'online' | 'away' | 'busy' | 'offline';
export type ClaimStatus = 'online' | 'away' | 'busy';
export type Visibility = 'everyone' | 'contacts' | 'nobody';

export type ConnectionStateName = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';
export const ConnectionState: {
    readonly IDLE: 'idle';
    readonly CONNECTING: 'connecting';
    readonly CONNECTED: 'connected';
    readonly RECONNECTING: 'reconnecting';
    readonly DISCONNECTED: 'disconnected';
};

/** A user's presence, as the server sends it (a superset of the seed's PresenceInfo). A
 * watcher that loses permission gets only {user_id, status: 'offline'}. */
export interface Presence {
    user_id: string;
    status: Status;
    /** Epoch seconds (millisecond precision). */
    last_seen?: number;
    device?: string;
    devices?: string[];
    custom_status?: string | null;
    activity?: string | null;
}

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export interface Member {
    user_id: string;
    joined_at: number;
    last_seen: number;
    metadata: { [key: string]: JsonValue };
    devices: string[];
}

export interface Welcome {
    type: 'welcome';
    protocol?: number;
    user_id?: string;
    session_id?: number;
    /** ms */
    heartbeat_interval?: number;
    /** ms */
    heartbeat_ttl?: number;
}

/** Any message from the server. */
export interface ServerMessage {
    type: string;
    id?: string | number;
    [key: string]: unknown;
}

export interface Ack extends ServerMessage {
    type: 'ack';
    /** true when the answer was not the server's: the request was cut short by a dropped
     * connection and its effect was restored by the reconnection. */
    restored?: boolean;
}

export interface InitialPresence extends ServerMessage {
    type: 'initial_presence';
    presences: Record<string, Presence>;
}

export interface ChannelMembersAnswer extends ServerMessage {
    type: 'channel_members';
    channel: string;
    count: number;
    members: Member[];
    next_cursor: string | null;
}

export interface PrivacySettings {
    visibility: Visibility;
    contacts: string[];
    blocked: string[];
}

export interface MemberEvent extends ServerMessage {
    type: 'member_joined' | 'member_updated' | 'member_left';
    channel: string;
    member?: Member;
    user_id?: string;
    reason?: 'left' | 'disconnected' | 'timeout';
    count: number;
}

export interface ChannelDelta extends ServerMessage {
    type: 'channel_delta';
    channel: string;
    joined: Member[];
    left: string[];
    updated: Member[];
    /** Entries left out of a delta too large to list whole (present only when not 0). */
    joined_more?: number;
    left_more?: number;
    updated_more?: number;
    count: number;
}

export interface CursorEvent {
    type: 'cursor';
    channel: string;
    user_id: string;
    cursor: JsonValue;
}

export interface TypingEvent {
    type: 'typing';
    channel: string;
    user_id: string;
    typing: boolean;
}

/** What this client claims for itself (the 'status' event). */
export interface OwnStatus {
    /** What others see from this session: 'away' while idle and the chosen status is online;
     * 'offline' after setOffline(). */
    status: Status;
    /** The status the user chose. */
    chosen: ClaimStatus;
    customStatus: string | null;
    activity: string | null;
    idle: boolean;
}

export interface StateInfo {
    previous: ConnectionStateName;
    /** reconnecting: the attempt number (1-based); connecting: attempts made before. */
    attempt?: number;
    /** reconnecting: ms until the next attempt. */
    delay?: number;
    /** The close code of the connection that ended (reconnecting, disconnected). */
    code?: number;
    reason?: string;
    welcome?: Welcome;
}

/** A minimal WebSocket: the browser's, or Node's `ws` package. */
export interface WebSocketLike {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: { data: unknown }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    onclose: ((ev: { code: number; reason: string }) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: { headers?: Record<string, string> }) => WebSocketLike;

export interface ReconnectOptions {
    /** Delay before the first attempt (ms, default 500). */
    initialDelayMs?: number;
    /** Largest delay (ms, default 30000). */
    maxDelayMs?: number;
    /** Growth per attempt (default 2). */
    factor?: number;
    /** 0..1: the delay is drawn uniformly from [d * (1 - jitter), d] (default 0.5). */
    jitter?: number;
    /** Attempts before giving up (default Infinity). */
    maxRetries?: number;
}

export interface ActivityOptions {
    /** Idle time before away (ms, default 300000: 5 minutes). */
    awayAfterMs?: number;
    /** Idle time before away while the page is hidden (ms, default 60000). */
    hiddenAwayAfterMs?: number;
    /** Input events that count as activity. */
    events?: string[];
    /** Where input events are listened for (default: document). */
    target?: EventTarget | null;
    /** What has `hidden` and fires visibilitychange (default: document). */
    document?: (EventTarget & { hidden: boolean }) | null;
}

export interface PresenceClientOptions {
    url?: string;
    userId?: string;
    /** Device label (1..32 bytes), default 'web'. */
    device?: string;
    /** Announce the session (set_online) on every connection (default true). false: watch
     * only, until setOnline()/setStatus(). */
    announce?: boolean;
    /** A JWT, or a function returning one (called on every connection; also enables
     * automatic refresh before `exp`). */
    token?: string | null | (() => string | Promise<string>);
    /** 'query' (?token=, the only way in browsers) or 'header' (Authorization: Bearer, Node `ws`). */
    tokenVia?: 'query' | 'header';
    /** With a token function: send `refresh` before the token expires (default true). */
    tokenRefresh?: boolean;
    /** Append ?user=<userId> to the URL (servers run with --dev-auth). */
    devAuth?: boolean;
    /** WebSocket constructor (Node: the `ws` package). Default: setDefaultWebSocket(), then
     * globalThis.WebSocket. */
    WebSocket?: WebSocketConstructor | null;
    /** Creates each socket (tests, custom transports); overrides WebSocket. */
    webSocketFactory?: ((url: string, init: { headers?: Record<string, string> }) => WebSocketLike) | null;
    /** Requests not answered in this time reject with code 'timeout' (default 10000). */
    requestTimeoutMs?: number;
    /** After open, how long to wait for the server's welcome (default 5000). */
    welcomeTimeoutMs?: number;
    /** Heartbeat interval used until the welcome gives the server's (default 15000). */
    heartbeatIntervalMs?: number;
    /** Reconnection with jittered exponential backoff; false turns it off. */
    reconnect?: ReconnectOptions | false;
    /** Activity detection (browsers); false turns it off. Off in Node unless a target is given. */
    activity?: ActivityOptions | false;
    /** Cursor and typing signals sent per second per room, at most (default 20). */
    cursorHz?: number;
    /** typing(channel, true) sends false after this long without another call (default 5000; 0: never). */
    typingTimeoutMs?: number;
    /** User ids per subscribe request (default 1000). */
    subscribeChunk?: number;
    /** Close codes after which the client stays disconnected (default [4002]: ended by the
     * backend). 4001 (token expired) also, when the token is a fixed string. */
    noReconnectCodes?: number[];
}

export interface SetStatusFields {
    status?: ClaimStatus | 'offline';
    /** null clears; absent keeps. */
    customStatus?: string | null;
    /** Seconds (up to 31 days) after which the custom status clears itself. */
    customStatusExpiresIn?: number;
    /** 'in_call', 'meeting', 'presenting', 'focus' or free text; null clears; absent keeps. */
    activity?: string | null;
}

/** A server error ({code, message}) or a local one: 'timeout', 'disconnected',
 * 'not_connected', 'token', 'socket', 'no_token'. */
export class PresenceError extends Error {
    constructor(code: string, message?: string, request?: object | null, answer?: ServerMessage | null);
    readonly code: string;
    readonly request: object | null;
    readonly answer: ServerMessage | null;
}

/** A room this client is in; its maps are kept up to date from the server's events. */
export class Room {
    readonly channel: string;
    /** This client's own metadata in the room. */
    metadata: { [key: string]: JsonValue } | undefined;
    mode: 'announce' | 'interval';
    count: number;
    members: Map<string, Member>;
    cursors: Map<string, JsonValue>;
    typing: Set<string>;
    nextCursor: string | null;
    joined: boolean;
    /** Members ordered by user id. */
    list(): Member[];
}

export interface PresenceClientEvents {
    /** Connection state changes. */
    state: (state: ConnectionStateName, info: StateInfo) => void;
    welcome: (welcome: Welcome) => void;
    /** After a (re)connection, once the status, subscriptions and rooms are restored. */
    restored: () => void;
    disconnected: (info: { code: number; reason: string }) => void;
    /** A watched user's presence (initial_presence, presence_update, get_presence). */
    presence: (presence: Presence, previous: Presence | undefined) => void;
    /** The seed's name for 'presence'. */
    onPresenceChange: (presence: Presence, previous: Presence | undefined) => void;
    /** This client's own claimed status changed (setStatus, idle, setOffline). */
    status: (own: OwnStatus) => void;
    onStatusChange: (own: OwnStatus) => void;
    idle: (idle: boolean) => void;
    /** Any change of a joined room's member map. */
    /** left_room: after leave(), or with reason 'revoked' when a refresh took the room away. */
    room: (room: Room, change: ServerMessage | { type: 'state' | 'members' } | { type: 'left_room'; reason?: string }) => void;
    member_joined: (event: MemberEvent, room: Room | undefined) => void;
    member_updated: (event: MemberEvent, room: Room | undefined) => void;
    member_left: (event: MemberEvent, room: Room | undefined) => void;
    channel_delta: (event: ChannelDelta, room: Room | undefined) => void;
    cursor: (event: CursorEvent, room: Room | undefined) => void;
    typing: (event: TypingEvent, room: Room | undefined) => void;
    privacy: (settings: PrivacySettings) => void;
    /** Errors no promise received: unsolicited server errors, failed restores or refreshes. */
    error: (error: PresenceError) => void;
    /** Every message from the server. */
    message: (message: ServerMessage) => void;
}

export class PresenceClient {
    /** The seed's signature: new PresenceClient(wsUrl, userId, device), plus options. */
    constructor(wsUrl: string, userId?: string | null, device?: string, options?: PresenceClientOptions);
    constructor(options: PresenceClientOptions & { url: string });

    readonly options: Required<PresenceClientOptions>;
    wsUrl: string;
    /** The user id; once connected, the one the server's welcome names. */
    userId: string | null;
    device: string;
    /** The current socket (null while disconnected). */
    ws: WebSocketLike | null;
    readonly state: ConnectionStateName;
    readonly connected: boolean;
    readonly welcome: Welcome | null;
    readonly sessionId: number | null;
    /** ms, from the welcome. */
    readonly heartbeatInterval: number;
    readonly heartbeatTtl: number | null;
    /** Local cache of the presences seen. */
    readonly presences: Map<string, Presence>;
    readonly subscriptions: Set<string>;
    readonly rooms: Map<string, Room>;
    readonly privacy: PrivacySettings | null;
    /** Whether activity detection finds the user idle. */
    readonly idle: boolean;
    /** What this client claims for itself, re-sent on every connection. */
    readonly own: {
        announced: boolean;
        status: ClaimStatus;
        customStatus: string | null | undefined;
        customStatusExpiresAt: number | null;
        activity: string | null | undefined;
    };

    on<E extends keyof PresenceClientEvents>(event: E, listener: PresenceClientEvents[E]): () => void;
    on(event: string, listener: (...args: any[]) => void): () => void;
    once<E extends keyof PresenceClientEvents>(event: E, listener: PresenceClientEvents[E]): () => void;
    off<E extends keyof PresenceClientEvents>(event: E, listener: PresenceClientEvents[E]): void;

    /** Resolves with the welcome; keeps trying (backoff) until connected, disconnect(), or
     * maxRetries. */
    connect(): Promise<Welcome>;
    /** Closes and stops reconnecting; {offline: true} leaves presence at once (no grace). */
    disconnect(options?: { offline?: boolean; code?: number; reason?: string }): void;
    /** Skips the remaining backoff delay. */
    reconnectNow(): void;
    /** The delay before reconnect attempt n (0-based), jitter included. */
    backoffDelay(n: number): number;

    /** Sends any protocol message with a fresh `id`; resolves with the answer. */
    request<T extends ServerMessage = ServerMessage>(message: { type: string; [key: string]: unknown }, options?: { timeoutMs?: number }): Promise<T>;
    /** Handles one server message (as the seed's client). */
    handleMessage(message: ServerMessage): void;

    setOnline(): Promise<Ack>;
    /** The seed's form: omitted customStatus/activity are sent as null (cleared). */
    setStatus(status: ClaimStatus | 'offline', customStatus?: string | null, activity?: string | null): Promise<Ack>;
    /** Only the given fields change. */
    setStatus(fields: SetStatusFields): Promise<Ack>;
    setOffline(): Promise<Ack>;
    /** Records user activity (input events do it in browsers). */
    markActive(): void;
    setIdle(idle: boolean): void;

    subscribe(userIds: string | string[]): Promise<InitialPresence>;
    subscribeToUsers(userIds: string | string[]): Promise<InitialPresence>;
    unsubscribe(userIds: string | string[]): Promise<Ack>;
    getPresence(userId: string): Presence | undefined;
    fetchPresence(userIds: string | string[]): Promise<Record<string, Presence>>;
    /** Round-trip time in ms. */
    ping(): Promise<number>;

    join(channel: string, metadata?: { [key: string]: JsonValue }): Promise<Room>;
    leave(channel: string): Promise<Ack>;
    update(channel: string, metadata: { [key: string]: JsonValue }): Promise<Ack>;
    room(channel: string): Room | undefined;
    members(channel: string): Member[];
    channelMembers(channel: string, options?: { cursor?: string | null; limit?: number }): Promise<ChannelMembersAnswer>;
    channelCount(channel: string): Promise<number>;
    loadMoreMembers(channel: string, limit?: number): Promise<Room | undefined>;
    cursor(channel: string, value: JsonValue): void;
    typing(channel: string, isTyping?: boolean): void;

    setVisibility(visibility: Visibility): Promise<Ack>;
    addContact(userId: string): Promise<Ack>;
    removeContact(userId: string): Promise<Ack>;
    block(userId: string): Promise<Ack>;
    unblock(userId: string): Promise<Ack>;
    getPrivacy(): Promise<PrivacySettings>;

    /** Sends `refresh` with the given token, or one from the token function. */
    refreshToken(token?: string): Promise<Ack>;
}

/** Sets the WebSocket constructor used when none is given (e.g. `ws` in Node). */
export function setDefaultWebSocket(ctor: WebSocketConstructor | null): void;

/** The `exp` claim of a JWT (unverified), or null. */
export function tokenExpiry(token: string): number | null;

export default PresenceClient;
