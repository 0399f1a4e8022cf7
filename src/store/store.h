/* The store interface: where users' shared state lives, behind a table of function pointers
 * (as Redis's ConnectionType), so the engine cannot tell which backend it talks to.
 *
 * Shared state: each user's sessions (one per present connection, on any node: device and
 * status claim), the aggregate presence computed from them by the rule of presence.h, the
 * user-level fields (custom_status with optional expiry, activity), last_seen, and a version
 * that grows with every visible change. Liveness is not here: heartbeats never reach the
 * store; connections are checked on their node.
 *
 * Calls are asynchronous: the result comes through the callback, which a remote store calls
 * later from the loop; the local store calls it before returning, except for a durable change
 * with a database (privacy_change, privacy_replace, and fields in session_upsert and
 * user_update), whose callback it calls later from the loop once the change is committed
 * (the change itself is in effect, for every reader, when the call returns). A call that
 * fails (returns a negative PD_E* code) never calls its callback; PD_EUNAVAIL means the store
 * cannot take the change now (its backend is unreachable, or the local store's queue of
 * writes is full): nothing changed, retry later. Visible changes (status, custom_status,
 * activity, devices) are announced through the listener, to every node watching the user,
 * before the callback of the call that caused them; a change that is not visible (a
 * heartbeat-free refresh, a lingering session) announces nothing.
 *
 * Grace: a session removed with STORE_REMOVE_GRACE that is its user's last live session is
 * not removed but left lingering (still counted, so nothing visible changes); the caller
 * removes it for good with STORE_REMOVE_FINAL when the grace window ends, unless a new
 * session of the user arrived first, which ends every lingering session of that user.
 */
#ifndef PD_STORE_H
#define PD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "presence/presence.h"

typedef struct store store_t;

enum store_field_op { STORE_KEEP = 0, STORE_CLEAR, STORE_SET };

typedef struct store_text {
    uint8_t op; /* enum store_field_op */
    const char *s;
    size_t len;
} store_text_t;

/* A session as registered in the store. */
typedef struct store_session {
    uint64_t sid;       /* unique per node */
    const char *device; /* label, 1..PD_DEVICE_MAX bytes */
    size_t device_len;
    uint8_t status; /* the session's claim: PD_ONLINE, PD_AWAY or PD_BUSY */
    bool known;     /* the store acknowledged this session before (not since a resync): an
                     * update of its claim, device or fields; a store may skip its
                     * bookkeeping of new sessions */
} store_session_t;

/* User-level fields, last writer wins across devices. */
typedef struct store_user_fields {
    store_text_t custom_status;
    double custom_status_expires; /* epoch seconds, 0 = never; only with STORE_SET */
    store_text_t activity;
    double activity_expires;
    /* A backend's status claim (calendar: busy in a meeting): aggregated like a session's,
     * but only while the user has a live session. */
    uint8_t server_status_op; /* enum store_field_op */
    uint8_t server_status;    /* with STORE_SET: PD_ONLINE, PD_AWAY or PD_BUSY */
    double server_status_expires;
} store_user_fields_t;

enum store_remove_mode {
    STORE_REMOVE_NOW,   /* explicit offline or liveness timeout: gone at once */
    STORE_REMOVE_GRACE, /* disconnect: lingers when it is the user's last live session */
    STORE_REMOVE_FINAL  /* the grace window ended: remove a lingering session, if still there */
};

/* Results. Pointers inside are valid only during the call. */
typedef void (*store_presence_cb)(void *arg, int err, const pd_presence_t *p);
typedef void (*store_remove_cb)(void *arg, int err, bool lingering);
/* The presences the requester may see of the users asked for (in no particular order; unknown
 * users left out), and the ids of known users the privacy rule hides from the requester. */
typedef void (*store_bulk_cb)(void *arg, int err, const pd_presence_t *ps, size_t n,
                              const pd_str_t *hidden, size_t nhidden);

/* --- Privacy: each user's visibility, contacts and blocked users (privacy/privacy.h). --- */
typedef struct store_privacy {
    uint8_t visibility; /* enum pd_visibility */
    const pd_str_t *contacts;
    uint32_t ncontacts;
    const pd_str_t *blocked;
    uint32_t nblocked;
} store_privacy_t;

enum store_privacy_op {
    STORE_PRIV_VISIBILITY,
    STORE_PRIV_ADD_CONTACT,
    STORE_PRIV_REMOVE_CONTACT,
    STORE_PRIV_BLOCK,
    STORE_PRIV_UNBLOCK
};

typedef void (*store_privacy_cb)(void *arg, int err, const store_privacy_t *p);

/* Why a user shows as they do: their sessions and the fields behind the aggregate. */
typedef struct store_session_view {
    uint64_t sid;
    const char *node; /* the node holding the connection ("local" for the embedded store) */
    const char *device;
    uint8_t status; /* the session's claim */
    bool lingering; /* disconnected, inside its grace window */
} store_session_view_t;

typedef struct store_explain {
    const pd_presence_t *presence; /* as shown to someone allowed to see the user */
    const store_session_view_t *sessions;
    size_t nsessions;
    uint8_t visibility;
    uint8_t server_status; /* 0 when none */
    double server_status_expires, custom_status_expires, activity_expires;
} store_explain_t;

typedef void (*store_explain_cb)(void *arg, int err, const store_explain_t *x);
/* visible[i] for requester i: 1 when they may see the target. */
typedef void (*store_bits_cb)(void *arg, int err, const uint8_t *visible);

/* --- Rooms ---
 * A room (channel, document) has members: users, each with one or more connections (on any
 * node) in the room, a JSON metadata object, joined_at and last_seen. A member's connections
 * leave as sessions do: at once (explicit leave, timeout) or, for the member's last
 * connection, after a grace window (disconnect). Members are ordered by user id (bytewise)
 * for pagination. */

enum store_room_event_kind {
    STORE_ROOM_JOINED,  /* member: a new member */
    STORE_ROOM_LEFT,    /* user, reason: the member's last connection is gone */
    STORE_ROOM_UPDATED, /* member: metadata or devices changed */
    STORE_ROOM_SIGNAL,  /* user, signal, payload: ephemeral (cursor, typing), never stored */
    STORE_ROOM_HIDDEN   /* member, changed: the member's hide list changed (room_hide) */
};

/* The privacy rule in rooms: a member is never shown to the users they block (their entry,
 * events and signals), whatever the room. A member's hide list is their blocked users as the
 * node holding their connection last knew it: sorted bytewise, distinct. Every room event
 * and signal carries the concerned member's list, so each node leaves those users' local
 * connections out without asking anyone (privacy/privacy.h has the rule). */
typedef struct store_hide {
    const pd_str_t *ids;
    uint32_t n;
} store_hide_t;

static inline int store_hide_cmp(pd_str_t a, pd_str_t b) {
    int c = memcmp(a.s, b.s, a.len < b.len ? a.len : b.len);
    return c ? c : (a.len > b.len) - (a.len < b.len);
}

/* True when hide holds id. O(log n). */
static inline int store_hide__qsort_cmp(const void *a, const void *b) {
    return store_hide_cmp(*(const pd_str_t *)a, *(const pd_str_t *)b);
}

/* Sorts ids in place in store_hide_cmp order (what store_hide_has searches). */
static inline void store_hide_sort(pd_str_t *ids, size_t n) {
    if (n)
        qsort(ids, n, sizeof(*ids), store_hide__qsort_cmp);
}

static inline bool store_hide_has(const store_hide_t *hide, pd_str_t id) {
    uint32_t lo = 0, hi = hide ? hide->n : 0;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = store_hide_cmp(hide->ids[mid], id);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* A copy of hide in one allocation (free() it); NULL for an empty list or out of memory
 * (*n then 0 or not). */
static inline pd_str_t *store_hide_dup(const store_hide_t *hide, bool *failed) {
    *failed = false;
    if (!hide || hide->n == 0)
        return NULL;
    size_t bytes = sizeof(pd_str_t) * hide->n;
    for (uint32_t i = 0; i < hide->n; i++)
        bytes += hide->ids[i].len + 1;
    pd_str_t *out = malloc(bytes);
    if (!out) {
        *failed = true;
        return NULL;
    }
    char *at = (char *)(out + hide->n);
    for (uint32_t i = 0; i < hide->n; i++) {
        memcpy(at, hide->ids[i].s, hide->ids[i].len);
        at[hide->ids[i].len] = '\0';
        out[i] = (pd_str_t){at, hide->ids[i].len};
        at += hide->ids[i].len + 1;
    }
    return out;
}

/* Whether two hide lists hold the same users. */
static inline bool store_hide_equal(const store_hide_t *a, const store_hide_t *b) {
    if (a->n != b->n)
        return false;
    for (uint32_t i = 0; i < a->n; i++)
        if (store_hide_cmp(a->ids[i], b->ids[i]) != 0)
            return false;
    return true;
}

enum store_leave_reason {
    STORE_LEFT,
    STORE_LEFT_DISCONNECTED,
    STORE_LEFT_TIMEOUT,
    STORE_LEFT_REVOKED /* the connection's token no longer allows the room (refresh) */
};
enum store_signal { STORE_SIGNAL_CURSOR, STORE_SIGNAL_TYPING };

typedef struct store_room_event {
    uint8_t kind;   /* enum store_room_event_kind */
    uint8_t reason; /* LEFT: enum store_leave_reason */
    uint8_t signal; /* SIGNAL: enum store_signal */
    uint32_t count; /* members after the change (SIGNAL: unspecified) */
    pd_str_t room;
    pd_str_t user;             /* the member concerned */
    const pd_member_t *member; /* JOINED, UPDATED, HIDDEN */
    pd_str_t payload;          /* SIGNAL: JSON text */
    store_hide_t hide;         /* every kind: whom the member concerned is hidden from */
    store_hide_t changed;      /* HIDDEN: users now hidden from or shown the member (sorted) */
} store_room_event_t;

typedef struct store_room_conn {
    uint64_t sid; /* the connection's session id, unique per node */
    const char *device;
    size_t device_len;
    store_hide_t hide; /* the member's hide list: replaces the one the store has */
} store_room_conn_t;

/* join: me is the joiner's member view; fresh tells whether they just became a member. */
typedef void (*store_join_cb)(void *arg, int err, const pd_member_t *me, bool fresh,
                              uint32_t count);
typedef void (*store_done_cb)(void *arg, int err);
/* A page of members after a cursor; more tells whether another page follows. */
typedef void (*store_members_cb)(void *arg, int err, const pd_member_t *ms, size_t n,
                                 uint32_t count, bool more);
typedef void (*store_count_cb)(void *arg, int err, uint32_t count);

/* Where a store announces changes: presence to the engine, rooms to the rooms module, each
 * with its own context.
 * - *_changed / room_event: every visible change of a user or room this node watches,
 *   whichever node caused it: what local watchers and members are sent.
 * - *_caused: every visible change this node's own calls caused, on this node only, so
 *   each change reaches the event stream and webhooks exactly once across nodes.
 * The local store announces both, the caused one first, before the callback of the call.
 * A remote store announces changes when they arrive (before or after the callback). */
typedef struct store_listener {
    void *ctx;
    void (*presence_changed)(void *ctx, const pd_presence_t *p);
    void (*presence_caused)(void *ctx, const pd_presence_t *p);
    /* user's privacy settings changed: who may see them must be decided again */
    void (*privacy_changed)(void *ctx, pd_str_t user);
    /* the store lost its backend and has it again: re-register what this node holds */
    void (*resync)(void *ctx);
    void *room_ctx;
    void (*room_event)(void *room_ctx, const store_room_event_t *ev);
    void (*room_caused)(void *room_ctx, const store_room_event_t *ev);
    void (*room_resync)(void *room_ctx);
    /* user's blocked users changed: op STORE_PRIV_BLOCK / STORE_PRIV_UNBLOCK with other when
     * this node made that one change (announced before the call's callback), -1 when the
     * list must be read again. Announced for users this node watches (rooms watch their
     * local members). */
    void (*room_privacy)(void *room_ctx, pd_str_t user, int op, pd_str_t other);
} store_listener_t;

/* Totals a store can tell cheaply, for metrics. */
typedef struct store_stats {
    uint64_t users[PD_BUSY + 1]; /* known users by aggregate status */
    uint64_t rooms;              /* rooms with at least one member */
    uint64_t members;            /* members, summed over rooms */
    uint64_t writes_pending;     /* durable writes queued or being committed (local store) */
} store_stats_t;

typedef struct store_ops {
    const char *name;
    /* Fills s; -1 when this store cannot tell (they live elsewhere). May be NULL. */
    int (*stats)(store_t *st, store_stats_t *s);
    /* True while the store can serve reads (its backend is reachable). NULL: always. */
    bool (*ready)(store_t *st);
    /* A heartbeat of a present session of user, for stores that must see them (seed
     * compatibility). NULL for the others: heartbeats then cost the store nothing. */
    void (*heartbeat)(store_t *st, pd_str_t user);
    /* A sign of life (epoch seconds) of a user with present sessions on this node, so that
     * last_seen survives a crash of the node within one checkpoint period. The engine calls it
     * once per checkpoint for each such user; values not newer than the stored one are
     * ignored. NULL: the store keeps last_seen as of the last change only. */
    void (*seen)(store_t *st, pd_str_t user, double when);
    /* Before the engine and rooms are freed at exit: every call still in flight completes now
     * (a remote store's with an error; the local store's durable changes once committed, with
     * their result), so that its caller frees what it holds; later calls fail with PD_ECLOSED
     * (the local store: durable changes). NULL when every call completes before returning. */
    void (*shutdown)(store_t *st);
    /* Adds or updates session s of user (a new sid ends the user's lingering sessions) and
     * applies the user-level fields; the callback gets the resulting presence. PD_ELIMIT when
     * the user already has PD_SESSIONS_PER_USER_MAX sessions. */
    int (*session_upsert)(store_t *st, pd_str_t user, const store_session_t *s,
                          const store_user_fields_t *fields, store_presence_cb cb, void *arg);
    /* Applies user-level fields without touching sessions (e.g. a backend's status). */
    int (*user_update)(store_t *st, pd_str_t user, const store_user_fields_t *fields,
                       store_presence_cb cb, void *arg);
    /* Removes session sid of user as mode says; the callback tells whether it lingers.
     * Removing a session that is not there succeeds and changes nothing. */
    int (*session_remove)(store_t *st, pd_str_t user, uint64_t sid, int mode, store_remove_cb cb,
                          void *arg);
    /* The presences of up to n users, filtered for requester by the privacy rule (no
     * filtering when requester.s is NULL). */
    int (*presence_get)(store_t *st, pd_str_t requester, const pd_str_t *users, size_t n,
                        store_bulk_cb cb, void *arg);

    /* The user's privacy settings. */
    int (*privacy_get)(store_t *st, pd_str_t user, store_privacy_cb cb, void *arg);
    /* One change of the user's settings (visibility, or other added to / removed from
     * contacts or blocked), acknowledged once durable. PD_ELIMIT (via the callback) when the
     * list already holds max_entries users. Announces privacy_changed when it changed. */
    int (*privacy_change)(store_t *st, pd_str_t user, int op, uint8_t visibility, pd_str_t other,
                          uint32_t max_entries, store_done_cb cb, void *arg);
    /* Replaces all of the user's settings at once. */
    int (*privacy_replace)(store_t *st, pd_str_t user, const store_privacy_t *p,
                           uint32_t max_entries, store_done_cb cb, void *arg);
    /* Why user shows as they do; PD_ENOTFOUND (via the callback) for an unknown user. */
    int (*explain)(store_t *st, pd_str_t user, store_explain_cb cb, void *arg);
    /* Which of n requesters may see target. */
    int (*can_see)(store_t *st, pd_str_t target, const pd_str_t *requesters, size_t n,
                   store_bits_cb cb, void *arg);
    /* Asks for (and stops asking for) the listener's change announcements of user. A store
     * that announces every change to every node may ignore these. Calls are counted: each
     * watch needs its unwatch. */
    int (*watch)(store_t *st, pd_str_t user);
    void (*unwatch)(store_t *st, pd_str_t user);

    /* Adds connection c of user to room (metadata: a JSON object's text, or NULL to keep the
     * member's, "{}" for a new one). A new connection of a member ends its lingering ones.
     * PD_EFULL when the room has max_members members and user is not one of them. */
    int (*room_join)(store_t *st, pd_str_t room, pd_str_t user, const store_room_conn_t *c,
                     pd_str_t metadata, uint32_t max_members, store_join_cb cb, void *arg);
    /* Removes connection sid of user from room as mode says (enum store_remove_mode); the
     * member leaves with reason when it was their last connection. PD_ENOTFOUND (via the
     * callback) when the connection is not in the room. */
    int (*room_leave)(store_t *st, pd_str_t room, pd_str_t user, uint64_t sid, int mode, int reason,
                      store_remove_cb cb, void *arg);
    /* Replaces the member's metadata. PD_ENOTFOUND (via the callback) for a non-member. */
    int (*room_update)(store_t *st, pd_str_t room, pd_str_t user, pd_str_t metadata,
                       store_done_cb cb, void *arg);
    /* Up to limit members with user ids after `after` (empty: from the start), leaving out
     * the members hiding from requester (none left out when requester.s is NULL). */
    int (*room_members)(store_t *st, pd_str_t room, pd_str_t requester, pd_str_t after,
                        uint32_t limit, store_members_cb cb, void *arg);
    int (*room_count)(store_t *st, pd_str_t room, store_count_cb cb, void *arg);
    /* Relays an ephemeral signal of user (hidden from hide) to every node watching the room.
     * Not stored. */
    int (*room_signal)(store_t *st, pd_str_t room, pd_str_t user, int signal, pd_str_t payload,
                       const store_hide_t *hide);
    /* Replaces the member's hide list; when it changed, announces STORE_ROOM_HIDDEN with the
     * users whose view of the member flipped. Nothing for a non-member. */
    int (*room_hide)(store_t *st, pd_str_t room, pd_str_t user, const store_hide_t *hide);
    /* As watch/unwatch, for a room's events. */
    int (*room_watch)(store_t *st, pd_str_t room);
    void (*room_unwatch)(store_t *st, pd_str_t room);
    void (*destroy)(store_t *st);
} store_ops_t;

struct store {
    const store_ops_t *ops;
    store_listener_t listener;
};

static inline void store_listen_presence(store_t *st, void *ctx,
                                         void (*changed)(void *, const pd_presence_t *),
                                         void (*caused)(void *, const pd_presence_t *),
                                         void (*privacy)(void *, pd_str_t),
                                         void (*resync)(void *)) {
    st->listener.ctx = ctx;
    st->listener.presence_changed = changed;
    st->listener.presence_caused = caused;
    st->listener.privacy_changed = privacy;
    st->listener.resync = resync;
}
static inline void store_listen_rooms(store_t *st, void *ctx,
                                      void (*event)(void *, const store_room_event_t *),
                                      void (*caused)(void *, const store_room_event_t *),
                                      void (*resync)(void *),
                                      void (*privacy)(void *, pd_str_t, int, pd_str_t)) {
    st->listener.room_ctx = ctx;
    st->listener.room_event = event;
    st->listener.room_caused = caused;
    st->listener.room_resync = resync;
    st->listener.room_privacy = privacy;
}
static inline int store_session_upsert(store_t *st, pd_str_t user, const store_session_t *s,
                                       const store_user_fields_t *f, store_presence_cb cb,
                                       void *arg) {
    return st->ops->session_upsert(st, user, s, f, cb, arg);
}
static inline int store_user_update(store_t *st, pd_str_t user, const store_user_fields_t *f,
                                    store_presence_cb cb, void *arg) {
    return st->ops->user_update(st, user, f, cb, arg);
}
static inline int store_session_remove(store_t *st, pd_str_t user, uint64_t sid, int mode,
                                       store_remove_cb cb, void *arg) {
    return st->ops->session_remove(st, user, sid, mode, cb, arg);
}
static inline int store_presence_get(store_t *st, pd_str_t requester, const pd_str_t *users,
                                     size_t n, store_bulk_cb cb, void *arg) {
    return st->ops->presence_get(st, requester, users, n, cb, arg);
}
static inline int store_privacy_get(store_t *st, pd_str_t user, store_privacy_cb cb, void *arg) {
    return st->ops->privacy_get(st, user, cb, arg);
}
static inline int store_privacy_change(store_t *st, pd_str_t user, int op, uint8_t visibility,
                                       pd_str_t other, uint32_t max_entries, store_done_cb cb,
                                       void *arg) {
    return st->ops->privacy_change(st, user, op, visibility, other, max_entries, cb, arg);
}
static inline int store_privacy_replace(store_t *st, pd_str_t user, const store_privacy_t *p,
                                        uint32_t max_entries, store_done_cb cb, void *arg) {
    return st->ops->privacy_replace(st, user, p, max_entries, cb, arg);
}
static inline int store_explain(store_t *st, pd_str_t user, store_explain_cb cb, void *arg) {
    return st->ops->explain(st, user, cb, arg);
}
static inline int store_can_see(store_t *st, pd_str_t target, const pd_str_t *requesters, size_t n,
                                store_bits_cb cb, void *arg) {
    return st->ops->can_see(st, target, requesters, n, cb, arg);
}
static inline int store_watch(store_t *st, pd_str_t user) {
    return st->ops->watch(st, user);
}
static inline void store_unwatch(store_t *st, pd_str_t user) {
    st->ops->unwatch(st, user);
}
static inline int store_room_join(store_t *st, pd_str_t room, pd_str_t user,
                                  const store_room_conn_t *c, pd_str_t metadata,
                                  uint32_t max_members, store_join_cb cb, void *arg) {
    return st->ops->room_join(st, room, user, c, metadata, max_members, cb, arg);
}
static inline int store_room_leave(store_t *st, pd_str_t room, pd_str_t user, uint64_t sid,
                                   int mode, int reason, store_remove_cb cb, void *arg) {
    return st->ops->room_leave(st, room, user, sid, mode, reason, cb, arg);
}
static inline int store_room_update(store_t *st, pd_str_t room, pd_str_t user, pd_str_t metadata,
                                    store_done_cb cb, void *arg) {
    return st->ops->room_update(st, room, user, metadata, cb, arg);
}
static inline int store_room_members(store_t *st, pd_str_t room, pd_str_t requester, pd_str_t after,
                                     uint32_t limit, store_members_cb cb, void *arg) {
    return st->ops->room_members(st, room, requester, after, limit, cb, arg);
}
static inline int store_room_count(store_t *st, pd_str_t room, store_count_cb cb, void *arg) {
    return st->ops->room_count(st, room, cb, arg);
}
static inline int store_room_signal(store_t *st, pd_str_t room, pd_str_t user, int signal,
                                    pd_str_t payload, const store_hide_t *hide) {
    return st->ops->room_signal(st, room, user, signal, payload, hide);
}
static inline int store_room_hide(store_t *st, pd_str_t room, pd_str_t user,
                                  const store_hide_t *hide) {
    return st->ops->room_hide(st, room, user, hide);
}
static inline int store_room_watch(store_t *st, pd_str_t room) {
    return st->ops->room_watch(st, room);
}
static inline void store_room_unwatch(store_t *st, pd_str_t room) {
    st->ops->room_unwatch(st, room);
}
static inline void store_shutdown(store_t *st) {
    if (st && st->ops->shutdown)
        st->ops->shutdown(st);
}
static inline void store_destroy(store_t *st) {
    if (st)
        st->ops->destroy(st);
}

#endif
