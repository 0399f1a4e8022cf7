/* The store interface: where users' shared state lives, behind a table of function pointers
 * (as Redis's ConnectionType), so the engine cannot tell which backend it talks to.
 *
 * Shared state: each user's sessions (one per present connection, on any node: device and
 * status claim), the aggregate presence computed from them by the rule of presence.h, the
 * user-level fields (custom_status with optional expiry, activity), last_seen, and a version
 * that grows with every visible change. Liveness is not here: heartbeats never reach the
 * store; connections are checked on their node.
 *
 * Calls are asynchronous: the result comes through the callback, which the local store calls
 * before returning and a remote store calls later from the loop. A call that fails (returns
 * a negative PD_E* code) never calls its callback. Visible changes (status, custom_status,
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
} store_session_t;

/* User-level fields, last writer wins across devices. */
typedef struct store_user_fields {
    store_text_t custom_status;
    double custom_status_expires; /* epoch seconds, 0 = never; only with STORE_SET */
    store_text_t activity;
} store_user_fields_t;

enum store_remove_mode {
    STORE_REMOVE_NOW,   /* explicit offline or liveness timeout: gone at once */
    STORE_REMOVE_GRACE, /* disconnect: lingers when it is the user's last live session */
    STORE_REMOVE_FINAL  /* the grace window ended: remove a lingering session, if still there */
};

/* Results. Pointers inside are valid only during the call. */
typedef void (*store_presence_cb)(void *arg, int err, const pd_presence_t *p);
typedef void (*store_remove_cb)(void *arg, int err, bool lingering);
/* Known users only, in the order asked, unknown ones left out. */
typedef void (*store_bulk_cb)(void *arg, int err, const pd_presence_t *ps, size_t n);

/* Where a store announces visible changes. */
typedef struct store_listener {
    void *ctx;
    void (*presence_changed)(void *ctx, const pd_presence_t *p);
} store_listener_t;

typedef struct store_ops {
    const char *name;
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
    /* The presences of up to n users. */
    int (*presence_get)(store_t *st, const pd_str_t *users, size_t n, store_bulk_cb cb, void *arg);
    /* Asks for (and stops asking for) the listener's change announcements of user. A store
     * that announces every change to every node may ignore these. Calls are counted: each
     * watch needs its unwatch. */
    int (*watch)(store_t *st, pd_str_t user);
    void (*unwatch)(store_t *st, pd_str_t user);
    void (*destroy)(store_t *st);
} store_ops_t;

struct store {
    const store_ops_t *ops;
    store_listener_t listener;
};

static inline void store_set_listener(store_t *st, const store_listener_t *l) {
    st->listener = *l;
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
static inline int store_presence_get(store_t *st, const pd_str_t *users, size_t n, store_bulk_cb cb,
                                     void *arg) {
    return st->ops->presence_get(st, users, n, cb, arg);
}
static inline int store_watch(store_t *st, pd_str_t user) {
    return st->ops->watch(st, user);
}
static inline void store_unwatch(store_t *st, pd_str_t user) {
    st->ops->unwatch(st, user);
}
static inline void store_destroy(store_t *st) {
    if (st)
        st->ops->destroy(st);
}

#endif
