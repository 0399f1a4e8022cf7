/* Sessions, subscriptions, fan-out and the engine's timers.
 *
 * Lifetimes: a local user record (struct euser) lives while it has a local session or a
 * local watcher. A session lives while its connection is open, while store calls it made
 * are in flight, and while it lingers in its grace window; it is freed by maybe_free() once
 * none holds. Store callbacks may come later than the call (remote stores), so nothing a
 * callback touches is freed while the call is pending.
 */
#include "engine/engine.h"

#include <sodium.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/istr.h"

struct sub;

struct euser {
    hmap_node_t node;
    session_t *sessions;  /* this node's sessions of the user */
    struct sub *watchers; /* this node's sessions watching the user */
    uint32_t nwatchers;
    uint32_t privacy_gen;      /* privacy changes of the user announced so far */
    uint16_t id_len : 14;      /* at most PD_USER_ID_MAX */
    uint16_t holding : 1;      /* its deliveries are held: a struct hold in engine.holds */
    uint16_t recheck_owed : 1; /* a re-check failed: asked again (engine.recheck_timer) */
    char id[];
};

/* A user whose deliveries are held (see Holds), in engine.holds: only while privacy decisions
 * about its watchers are in the store, so the user record itself stays as small as it was. */
struct hold {
    hmap_node_t node; /* keyed by the user record's address */
    struct euser *u;
    pd_obuf_t *frame; /* the latest change, held; NULL before one comes */
    uint64_t version; /* of frame */
    uint32_t checks;  /* decisions still in the store */
};

/* One session watching one user. */
struct sub {
    hmap_node_t node; /* in engine.subs, keyed by (watcher, target) */
    struct euser *target;
    session_t *watcher;
    struct sub *t_next, *t_prev; /* in target->watchers */
    struct sub *w_next, *w_prev; /* in watcher->subs */
    void *slot;                  /* the watcher's queued, unsent update of target */
    uint32_t gen;                /* target->privacy_gen when the subscription was asked for */
    uint8_t visible : 1;         /* the privacy rule lets the watcher see target */
    uint8_t owed : 1;            /* visible again: the current presence is to be sent */
    uint8_t checking : 1;        /* new: the store has not said yet whether it is visible */
    uint8_t shown : 1;           /* the watcher was shown a presence of target */
    uint8_t fresh : 1;           /* was sent a presence at least as new as the held one */
    uint8_t mark : 1, stale : 1; /* scratch flags of one subscribe answer */
    uint8_t unsure : 1;          /* hidden only because the store could not answer */
};

struct session {
    engine_t *e;
    void *client; /* NULL once the connection is gone */
    struct euser *user;
    session_t *u_next, *u_prev;
    struct sub *subs;
    void *rooms;         /* the rooms module's list of this connection's rooms */
    wheel_timer_t timer; /* idle check while connected; the grace window while lingering */
    const pd_istr_t *device;
    uint64_t last_activity; /* ms: last sign of the user (for server-side idle) */
    /* One word for the id and the state bits: a session stays in a 128-byte malloc chunk. */
    uint64_t sid : 53;         /* random (new_sid) */
    uint64_t claim : 2;        /* PD_ONLINE / PD_AWAY / PD_BUSY while present */
    uint64_t present : 1;      /* registered in the store */
    uint64_t withdrawn : 1;    /* set_offline: heartbeats do not bring it back */
    uint64_t lingering : 1;    /* closed, in its grace window */
    uint64_t closed : 1;       /* the connection is gone */
    uint64_t auto_away : 1;    /* opted in to server-side idle detection */
    uint64_t auto_away_on : 1; /* currently away because of it */
    uint64_t stored : 1;       /* the store acknowledged the session (store_session_t.known) */
    uint64_t kicked : 1;       /* closed by a backend (engine_kick): no grace window */
    uint32_t nsubs;
    uint32_t pending; /* store calls in flight (bounded per connection by dispatch) */
};

struct engine_counters {
    uint64_t *changes, *deliveries, *coalesced, *grace_expired, *grace_revived, *timeouts;
    int64_t *sessions, *present, *subscriptions;
};

struct engine {
    engine_config_t cfg;
    store_t *store;
    wheel_t *wheel;
    pd_clock_t clock;
    const pd_hashkey_t *key;
    engine_client_ops_t ops;
    engine_codec_t codec;
    pd_log_t *log;
    events_t *events; /* backends' feed: the SSE streams, webhooks */
    hmap_t users;
    hmap_t subs;
    hmap_t holds;                /* struct hold by user record */
    wheel_timer_t recheck_timer; /* asks again the re-checks that failed */
    uint32_t recheck_delay_ms;   /* backoff of recheck_timer: 1 s doubling to 30 s */
    istr_table_t labels;
    wheel_timer_t checkpoint; /* live users' last_seen to the store (store_ops.seen) */
    struct engine_counters n;
};

/* A request waiting for its store call. */
struct req {
    session_t *s;
    engine_done_cb done;
    engine_presences_cb pdone;
    engine_privacy_cb privdone;
    void *arg;
    bool subscribing; /* a snapshot for subscribe: new edges are decided by its answer */
    pd_str_t *ids;    /* subscribing: the ids asked for (copies, in one allocation) */
    size_t nids;
};

static void recheck_one(engine_t *e, session_t *w, struct euser *t);
static void recheck_later(engine_t *e, struct euser *t);

static uint64_t dummy_counter;
static int64_t dummy_gauge;

void engine_config_default(engine_config_t *cfg) {
    cfg->heartbeat_ttl_ms = 30000;
    cfg->offline_grace_ms = 5000;
    cfg->away_after_ms = 300000;
    cfg->max_subscriptions = 10000;
    cfg->max_contacts = 5000;
    cfg->checkpoint_ms = 15000;
}

static uint64_t now_ms(engine_t *e) {
    return pd_clock_ms(&e->clock);
}

/* --- Users --- */

static bool euser_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct euser *u = (const struct euser *)n;
    return u->id_len == len && memcmp(u->id, key, len) == 0;
}

static struct euser *find_user(engine_t *e, pd_str_t id) {
    return (struct euser *)hmap_find(&e->users, pd_hash(e->key, id.s, id.len), id.s, id.len,
                                     euser_eq);
}

static struct euser *get_user(engine_t *e, pd_str_t id) {
    struct euser *u = find_user(e, id);
    if (u)
        return u;
    u = calloc(1, sizeof(*u) + id.len + 1);
    if (!u)
        return NULL;
    u->id_len = (uint16_t)id.len;
    memcpy(u->id, id.s, id.len);
    hmap_insert(&e->users, &u->node, pd_hash(e->key, id.s, id.len));
    return u;
}

static pd_str_t user_id(const struct euser *u) {
    return (pd_str_t){u->id, u->id_len};
}

static void maybe_free_user(engine_t *e, struct euser *u) {
    if (u->sessions || u->watchers || u->holding)
        return;
    hmap_remove(&e->users, &u->node);
    free(u);
}

/* --- Holds ---
 * While the store decides a privacy question about some watchers of u (a re-check after u's
 * settings changed, a new subscription's first answer, the fetch of a presence owed), a change
 * of u that arrives may be one the new answer hides: on a remote store the announcement can
 * come before the answer. So u's deliveries are held: the latest change waits, encoded once,
 * and goes to the watchers allowed to see it when the last decision is in. Privacy then holds
 * at every instant; the cost is one store round trip of delay, only around such decisions. */

/* Queues frame for the watcher of s; the watcher has now been shown target. */
static void deliver(engine_t *e, struct sub *s, pd_obuf_t *frame) {
    int rc = e->ops.send_coalesced(s->watcher->client, frame, &s->slot);
    if (rc == 1)
        (*e->n.coalesced)++;
    else if (rc == 0)
        (*e->n.deliveries)++;
    if (rc >= 0)
        s->shown = 1;
}

static bool hold_eq(const hmap_node_t *n, const void *key, size_t len) {
    (void)len;
    return ((const struct hold *)n)->u == *(struct euser *const *)key;
}

static uint64_t hold_hash(engine_t *e, const struct euser *u) {
    return pd_hash(e->key, &u, sizeof(u));
}

/* u's hold, or NULL when its deliveries are not held. */
static struct hold *find_hold(engine_t *e, const struct euser *u) {
    if (!u->holding)
        return NULL;
    return (struct hold *)hmap_find(&e->holds, hold_hash(e, u), &u, sizeof(u), hold_eq);
}

/* One more decision about u's watchers is in the store. PD_ENOMEM (nothing held). */
static int hold_begin(engine_t *e, struct euser *u) {
    struct hold *h = find_hold(e, u);
    if (!h) {
        h = calloc(1, sizeof(*h));
        if (!h)
            return PD_ENOMEM;
        h->u = u;
        hmap_insert(&e->holds, &h->node, hold_hash(e, u));
        u->holding = 1;
    }
    h->checks++;
    return 0;
}

/* Keeps frame (a new reference) as u's latest held change. */
static void hold_frame(struct hold *h, pd_obuf_t *frame, uint64_t version) {
    pd_obuf_retain(frame); /* announcements come in order: the last one is the latest */
    pd_obuf_release(h->frame);
    h->frame = frame;
    h->version = version;
    for (struct sub *s = h->u->watchers; s; s = s->t_next)
        s->fresh = 0; /* nobody has seen this one yet */
}

/* Whether a presence of version v is as new as what u holds (then the held one need not go to
 * a watcher that was just sent it). */
static bool held_not_newer(engine_t *e, const struct euser *u, uint64_t v) {
    const struct hold *h = find_hold(e, u);
    return h && h->frame && v >= h->version;
}

/* One decision is in; the last one sends what was held. May free u. */
static void hold_end(engine_t *e, struct euser *u) {
    struct hold *h = find_hold(e, u);
    if (--h->checks > 0)
        return;
    pd_obuf_t *frame = h->frame;
    hmap_remove(&e->holds, &h->node);
    free(h);
    u->holding = 0;
    for (struct sub *s = u->watchers; frame && s; s = s->t_next) {
        if (s->watcher->client && s->visible && !s->fresh)
            deliver(e, s, frame);
        else if (s->unsure)
            s->owed = 1; /* missed while the store could not say: the current one later */
        s->fresh = 0;
    }
    pd_obuf_release(frame);
    maybe_free_user(e, u);
}

/* --- Subscriptions --- */

static uint64_t sub_hash(const session_t *w, const struct euser *t) {
    uintptr_t k[2] = {(uintptr_t)w, (uintptr_t)t};
    return pd_hash(w->e->key, k, sizeof(k));
}

static bool sub_eq(const hmap_node_t *n, const void *key, size_t len) {
    (void)len;
    const struct sub *s = (const struct sub *)n;
    const uintptr_t *k = key;
    return (uintptr_t)s->watcher == k[0] && (uintptr_t)s->target == k[1];
}

static struct sub *find_sub(engine_t *e, session_t *w, struct euser *t) {
    uintptr_t k[2] = {(uintptr_t)w, (uintptr_t)t};
    return (struct sub *)hmap_find(&e->subs, sub_hash(w, t), k, sizeof(k), sub_eq);
}

static struct sub *add_sub(engine_t *e, session_t *w, struct euser *t) {
    struct sub *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    if (t->nwatchers == 0 && store_watch(e->store, user_id(t)) != 0) {
        free(s);
        return NULL;
    }
    s->target = t;
    s->watcher = w;
    /* Hidden until the store's answer says otherwise (req_presences_done). */
    s->checking = 1;
    s->gen = t->privacy_gen;
    if (hold_begin(e, t) != 0) {
        if (t->nwatchers == 0)
            store_unwatch(e->store, user_id(t));
        free(s);
        return NULL;
    }
    s->t_next = t->watchers;
    if (t->watchers)
        t->watchers->t_prev = s;
    t->watchers = s;
    t->nwatchers++;
    s->w_next = w->subs;
    if (w->subs)
        w->subs->w_prev = s;
    w->subs = s;
    w->nsubs++;
    hmap_insert(&e->subs, &s->node, sub_hash(w, t));
    (*e->n.subscriptions)++;
    return s;
}

static void remove_sub(engine_t *e, struct sub *s) {
    struct euser *t = s->target;
    session_t *w = s->watcher;
    if (s->slot)
        e->ops.unslot(&s->slot);
    hmap_remove(&e->subs, &s->node);
    if (s->t_prev)
        s->t_prev->t_next = s->t_next;
    else
        t->watchers = s->t_next;
    if (s->t_next)
        s->t_next->t_prev = s->t_prev;
    if (s->w_prev)
        s->w_prev->w_next = s->w_next;
    else
        w->subs = s->w_next;
    if (s->w_next)
        s->w_next->w_prev = s->w_prev;
    w->nsubs--;
    t->nwatchers--;
    (*e->n.subscriptions)--;
    bool checking = s->checking;
    free(s);
    if (t->nwatchers == 0)
        store_unwatch(e->store, user_id(t));
    if (checking)
        hold_end(e, t); /* may free t */
    else
        maybe_free_user(e, t);
}

/* --- Fan-out --- */

/* A change this node caused: told to the backends' feed (events reach it exactly once). */
static void on_presence_caused(void *ctx, const pd_presence_t *p) {
    engine_t *e = ctx;
    pd_str_t uid = {p->user_id, p->user_id_len};
    events_publish(e->events, &(pd_event_t){.kind = PD_EV_PRESENCE,
                                            .prev_status = p->prev_status,
                                            .user = uid,
                                            .presence = p});
}

static void on_presence_changed(void *ctx, const pd_presence_t *p) {
    engine_t *e = ctx;
    (*e->n.changes)++;
    struct euser *u = find_user(e, (pd_str_t){p->user_id, p->user_id_len});
    if (!u || !u->watchers)
        return;
    /* Encoded once; every watcher queues a reference to the same frame. */
    pd_obuf_t *frame = e->codec.presence_update(p);
    if (!frame)
        return;
    struct hold *h = find_hold(e, u);
    if (h) {
        hold_frame(h, frame, p->version);
    } else {
        for (struct sub *s = u->watchers; s; s = s->t_next) {
            if (s->watcher->client && s->visible) /* the privacy rule, decided per watcher */
                deliver(e, s, frame);
            else if (s->unsure)
                s->owed = 1; /* missed while the store could not say: the current one later */
        }
    }
    pd_obuf_release(frame);
}

/* --- Sessions --- */

static void session_timer(wheel_timer_t *t, uint64_t now);

/* Session ids are random (a counter would tell anyone the node's connection rate), below 2^53
 * so that JavaScript reads them exactly, and distinct among the user's sessions here, which is
 * where the store keys them. */
static uint64_t new_sid(const struct euser *u) {
    for (;;) {
        uint64_t sid;
        randombytes_buf(&sid, sizeof(sid));
        sid &= (UINT64_C(1) << 53) - 1;
        bool taken = sid == 0;
        for (const session_t *t = u->sessions; t && !taken; t = t->u_next)
            taken = t->sid == sid;
        if (!taken)
            return sid;
    }
}

session_t *engine_session_open(engine_t *e, void *client, pd_str_t user) {
    struct euser *u = get_user(e, user);
    if (!u)
        return NULL;
    session_t *s = calloc(1, sizeof(*s));
    if (!s) {
        maybe_free_user(e, u);
        return NULL;
    }
    s->e = e;
    s->client = client;
    s->user = u;
    s->sid = new_sid(u);
    s->last_activity = now_ms(e);
    wheel_timer_init(&s->timer, session_timer);
    s->u_next = u->sessions;
    if (u->sessions)
        u->sessions->u_prev = s;
    u->sessions = s;
    (*e->n.sessions)++;
    return s;
}

pd_str_t engine_session_user(const session_t *s) {
    return user_id(s->user);
}

uint64_t engine_session_id(const session_t *s) {
    return s->sid;
}

const char *engine_session_device(const session_t *s, size_t *len) {
    if (!s->device)
        return NULL;
    *len = s->device->len;
    return s->device->s;
}

uint32_t engine_session_subscriptions(const session_t *s) {
    return s->nsubs;
}

void *engine_session_client(const session_t *s) {
    return s->client;
}

void **engine_session_rooms(session_t *s) {
    return &s->rooms;
}

const engine_client_ops_t *engine_client_ops(const engine_t *e) {
    return &e->ops;
}

static void maybe_free(session_t *s) {
    if (!s->closed || s->pending || s->lingering)
        return;
    engine_t *e = s->e;
    struct euser *u = s->user;
    wheel_cancel(e->wheel, &s->timer);
    if (s->u_prev)
        s->u_prev->u_next = s->u_next;
    else
        u->sessions = s->u_next;
    if (s->u_next)
        s->u_next->u_prev = s->u_prev;
    istr_put(&e->labels, s->device);
    free(s);
    (*e->n.sessions)--;
    maybe_free_user(e, u);
}

static void set_present(session_t *s, bool present) {
    if (s->present == present)
        return;
    s->present = present;
    if (present)
        (*s->e->n.present)++;
    else
        (*s->e->n.present)--;
}

/* Arms the idle check of a session that opted in, is connected and shows online. */
static void arm_idle(session_t *s) {
    engine_t *e = s->e;
    if (s->auto_away && s->present && !s->closed && s->claim == PD_ONLINE)
        wheel_schedule(e->wheel, &s->timer, s->last_activity + e->cfg.away_after_ms);
    else if (!s->lingering)
        wheel_cancel(e->wheel, &s->timer);
}

static void req_presence_done(void *arg, int err, const pd_presence_t *p) {
    (void)p;
    struct req *r = arg;
    session_t *s = r->s;
    s->pending--;
    if (!err && s->present)
        s->stored = 1;
    if (r->done)
        r->done(r->arg, err);
    free(r);
    maybe_free(s);
}

/* Registers the session's current claim and device in the store, with user fields. */
static int push_session(session_t *s, const store_user_fields_t *fields, engine_done_cb done,
                        void *arg) {
    engine_t *e = s->e;
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return PD_ENOMEM;
    r->s = s;
    r->done = done;
    r->arg = arg;
    store_session_t ss = {.sid = s->sid,
                          .device = s->device ? s->device->s : "unknown",
                          .device_len = s->device ? s->device->len : 7,
                          .status = s->claim,
                          .known = s->stored};
    s->pending++;
    int rc = store_session_upsert(e->store, user_id(s->user), &ss, fields, req_presence_done, r);
    if (rc) {
        s->pending--;
        free(r);
    }
    return rc;
}

/* A reconnect of the user ends the grace windows of their lingering sessions here. */
static void revive_user(engine_t *e, struct euser *u, session_t *except) {
    for (session_t *t = u->sessions, *next; t; t = next) {
        next = t->u_next;
        if (t != except && t->lingering) {
            t->lingering = 0;
            wheel_cancel(e->wheel, &t->timer);
            (*e->n.grace_revived)++;
            maybe_free(t);
        }
    }
}

int engine_update(session_t *s, const engine_update_t *u, engine_done_cb done, void *arg) {
    engine_t *e = s->e;
    if (s->closed)
        return PD_ECLOSED;
    if (u->status == PD_OFFLINE)
        return engine_set_offline(s, done, arg);

    const pd_istr_t *dev = NULL;
    if (u->device.s) {
        dev = istr_get(&e->labels, u->device.s, u->device.len);
        if (!dev)
            return PD_ENOMEM;
    }
    /* Remember the state to restore if the store refuses. */
    const pd_istr_t *old_dev = s->device;
    uint8_t old_claim = s->claim;
    bool was_present = s->present, was_withdrawn = s->withdrawn, was_auto = s->auto_away,
         was_auto_on = s->auto_away_on;

    if (dev)
        s->device = dev;
    if (u->status >= 0)
        s->claim = (uint8_t)u->status;
    else if (u->announce || !s->present)
        s->claim = PD_ONLINE;
    if (u->auto_away >= 0)
        s->auto_away = (unsigned)u->auto_away;
    s->auto_away_on = 0; /* an explicit claim replaces an automatic away */
    s->last_activity = now_ms(e);
    s->withdrawn = 0;
    if (!was_present)
        revive_user(e, s->user, s);
    set_present(s, true);

    int rc = push_session(s, &u->fields, done, arg);
    if (rc) {
        if (dev)
            s->device = old_dev;
        s->claim = old_claim;
        s->withdrawn = was_withdrawn;
        s->auto_away = was_auto;
        s->auto_away_on = was_auto_on;
        set_present(s, was_present);
        istr_put(&e->labels, dev);
        return rc;
    }
    istr_put(&e->labels, dev ? old_dev : NULL);
    arm_idle(s);
    return 0;
}

void engine_heartbeat(session_t *s, pd_str_t device) {
    if (s->closed || s->withdrawn)
        return;
    bool new_device = device.s && (!s->device || s->device->len != device.len ||
                                   memcmp(s->device->s, device.s, device.len) != 0);
    if (s->present && !new_device) {
        /* Stores that mirror heartbeats (seed compatibility) see them; others cost nothing. */
        if (s->e->store->ops->heartbeat)
            s->e->store->ops->heartbeat(s->e->store, user_id(s->user));
        return;
    }
    if (!s->present) {
        engine_update_t u = {.status = -1, .announce = false, .device = device, .auto_away = -1};
        engine_update(s, &u, NULL, NULL);
        return;
    }
    /* Only the label changes: the claim, an automatic away and the time of the last user
     * activity stay as they are (a heartbeat is not user activity). */
    engine_t *e = s->e;
    const pd_istr_t *dev = istr_get(&e->labels, device.s, device.len);
    if (!dev)
        return;
    const pd_istr_t *old = s->device;
    s->device = dev;
    if (push_session(s, NULL, NULL, NULL) != 0) {
        s->device = old;
        istr_put(&e->labels, dev);
        return;
    }
    istr_put(&e->labels, old);
}

static void req_removed(void *arg, int err, bool lingering) {
    struct req *r = arg;
    session_t *s = r->s;
    s->pending--;
    if (lingering && s->closed) {
        /* The user's last session: offline only if the grace window passes. */
        s->lingering = 1;
        wheel_schedule(s->e->wheel, &s->timer, now_ms(s->e) + s->e->cfg.offline_grace_ms);
    }
    if (r->done)
        r->done(r->arg, err);
    free(r);
    maybe_free(s);
}

static int remove_session(session_t *s, int mode, engine_done_cb done, void *arg) {
    s->stored = 0;
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return PD_ENOMEM;
    r->s = s;
    r->done = done;
    r->arg = arg;
    s->pending++;
    int rc = store_session_remove(s->e->store, user_id(s->user), s->sid, mode, req_removed, r);
    if (rc) {
        s->pending--;
        free(r);
    }
    return rc;
}

int engine_set_offline(session_t *s, engine_done_cb done, void *arg) {
    if (s->closed)
        return PD_ECLOSED;
    s->withdrawn = 1;
    s->auto_away_on = 0;
    wheel_cancel(s->e->wheel, &s->timer);
    if (!s->present) {
        if (done)
            done(arg, 0);
        return 0;
    }
    set_present(s, false);
    int rc = remove_session(s, STORE_REMOVE_NOW, done, arg);
    if (rc)
        set_present(s, true);
    return rc;
}

void engine_activity(session_t *s) {
    if (s->closed)
        return;
    s->last_activity = now_ms(s->e);
    if (s->auto_away_on && s->present) {
        s->auto_away_on = 0;
        s->claim = PD_ONLINE;
        push_session(s, NULL, NULL, NULL);
    }
    if (!wheel_timer_armed(&s->timer))
        arm_idle(s);
}

static void session_timer(wheel_timer_t *t, uint64_t now) {
    session_t *s = (session_t *)((char *)t - offsetof(session_t, timer));
    engine_t *e = s->e;
    if (s->lingering) {
        /* The grace window passed without a reconnect: the user goes offline now. */
        s->lingering = 0;
        (*e->n.grace_expired)++;
        if (remove_session(s, STORE_REMOVE_FINAL, NULL, NULL) != 0)
            maybe_free(s);
        return;
    }
    if (!s->auto_away || !s->present || s->closed || s->claim != PD_ONLINE)
        return;
    uint64_t due = s->last_activity + e->cfg.away_after_ms;
    if (due > now) {
        wheel_schedule(e->wheel, t, due); /* activity since arming */
        return;
    }
    s->claim = PD_AWAY;
    s->auto_away_on = 1;
    push_session(s, NULL, NULL, NULL);
}

void engine_session_close(session_t *s, int how) {
    engine_t *e = s->e;
    while (s->subs)
        remove_sub(e, s->subs);
    s->client = NULL;
    s->closed = 1;
    wheel_cancel(e->wheel, &s->timer);
    if (how == ENGINE_END_TIMEOUT)
        (*e->n.timeouts)++;
    s->pending++; /* holds s across a store call that may complete (and free it) at once */
    if (s->present) {
        set_present(s, false);
        /* A kicked session does not linger: the grace window is for reconnects, and a user
         * the backend disconnected (a ban, a password change) is not expected back. */
        int mode = how == ENGINE_END_TIMEOUT || s->kicked ? STORE_REMOVE_NOW : STORE_REMOVE_GRACE;
        if (remove_session(s, mode, NULL, NULL) != 0)
            PD_WARN(e->log, "engine", "session %llu of %.*s: cannot remove from the store",
                    (unsigned long long)s->sid, (int)s->user->id_len, s->user->id);
    }
    s->pending--;
    maybe_free(s);
}

uint32_t engine_user_connections(engine_t *e, pd_str_t user) {
    struct euser *u = find_user(e, user);
    uint32_t n = 0;
    for (session_t *s = u ? u->sessions : NULL; s; s = s->u_next)
        n += s->client != NULL;
    return n;
}

bool engine_session_kicked(const session_t *s) {
    return s->kicked;
}

uint64_t engine_session_count(const engine_t *e) {
    return *e->n.sessions > 0 ? (uint64_t)*e->n.sessions : 0;
}

void engine_flush_lingering(engine_t *e) {
    for (hmap_node_t *n = hmap_first(&e->users); n;) {
        struct euser *u = (struct euser *)n;
        n = hmap_next(&e->users, n);
        /* Timer callbacks may free the user: fetch what is needed first. */
        session_t *t = u->sessions;
        while (t) {
            session_t *next = t->u_next;
            if (t->lingering) {
                wheel_cancel(e->wheel, &t->timer);
                session_timer(&t->timer, now_ms(e));
            }
            t = next;
        }
    }
}

/* --- Snapshots --- */

static int cmp_str(const void *a, const void *b) {
    const pd_str_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

/* Copies ids without duplicates into out (room for n); returns how many. */
static size_t unique_ids(const pd_str_t *ids, size_t n, pd_str_t *out) {
    memcpy(out, ids, n * sizeof(*ids));
    qsort(out, n, sizeof(*out), cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || cmp_str(&out[k - 1], &out[i]) != 0)
            out[k++] = out[i];
    return k;
}

/* The clocks read once for a whole answer (a clock_gettime per user was 3% of a 1,000-user
 * get_presence), on first need. */
struct clock_snap {
    uint64_t now;
    double wall;
    bool read;
};

/* last_seen of a user with live sessions here is refined with their liveness: heartbeats
 * never reach the store, so its value is as of the last change. */
static double local_last_seen(engine_t *e, const pd_presence_t *p, struct clock_snap *c) {
    struct euser *u = find_user(e, (pd_str_t){p->user_id, p->user_id_len});
    double best = p->last_seen;
    if (!u)
        return best;
    for (session_t *s = u->sessions; s; s = s->u_next) {
        if (!s->present || !s->client)
            continue;
        if (!c->read) {
            c->now = now_ms(e);
            c->wall = pd_clock_wall(&e->clock);
            c->read = true;
        }
        uint64_t rx = e->ops.last_rx_ms(s->client);
        double t = c->wall - (double)(c->now > rx ? c->now - rx : 0) / 1000.0;
        if (t > best)
            best = t;
    }
    return best;
}

/* The subscription of s to id, or NULL. */
static struct sub *sub_of(engine_t *e, session_t *s, pd_str_t id) {
    struct euser *t = find_user(e, id);
    return t ? find_sub(e, s, t) : NULL;
}

/* Decides the new edges of a subscribe from its answer (hidden users stay hidden) and sends
 * the snapshot, which shows only what the edges let the watcher see. An edge whose target's
 * settings changed since it was asked for may have been answered from the old settings: it
 * stays hidden, out of the snapshot, and is re-checked on its own (recheck_one). */
static void subscribe_answered(session_t *s, struct req *r, int err, const pd_presence_t *ps,
                               size_t n, const pd_str_t *hidden, size_t nhidden,
                               pd_presence_t *view, size_t *nview) {
    engine_t *e = s->e;
    for (size_t i = 0; !err && i < nhidden; i++) {
        struct sub *sub = sub_of(e, s, hidden[i]);
        if (sub)
            sub->mark = 1;
    }
    for (size_t i = 0; i < r->nids; i++) {
        struct sub *sub = sub_of(e, s, r->ids[i]);
        if (!sub)
            continue;
        bool hidden_here = sub->mark;
        sub->mark = 0;
        if (!sub->checking)
            continue; /* decided before (by a re-check): this answer is not news */
        if (err) {
            remove_sub(e, sub); /* the subscribe failed: nothing of it stays */
        } else if (sub->gen != sub->target->privacy_gen) {
            sub->stale = 1;
        } else {
            sub->visible = !hidden_here;
            sub->checking = 0;
            sub->mark = 1; /* decided here: its hold ends once the snapshot is sent */
        }
    }
    *nview = 0;
    struct clock_snap c = {0};
    for (size_t i = 0; view && i < n; i++) {
        struct sub *sub = sub_of(e, s, (pd_str_t){ps[i].user_id, ps[i].user_id_len});
        if (!sub || !sub->visible || sub->checking)
            continue;
        view[*nview] = ps[i];
        if (ps[i].status != PD_OFFLINE)
            view[*nview].last_seen = local_last_seen(e, &ps[i], &c);
        (*nview)++;
        sub->shown = 1;
        if (sub->mark && held_not_newer(e, sub->target, ps[i].version))
            sub->fresh = 1; /* the snapshot is as new as what is held */
    }
}

/* After the snapshot went out: the holds of the edges it decided end, stale ones are asked
 * again. */
static void subscribe_settled(session_t *s, struct req *r) {
    engine_t *e = s->e;
    for (size_t i = 0; i < r->nids; i++) {
        struct sub *sub = sub_of(e, s, r->ids[i]);
        if (!sub)
            continue;
        if (sub->mark) {
            sub->mark = 0;
            hold_end(e, sub->target);
        } else if (sub->stale) {
            sub->stale = 0;
            recheck_one(e, s, sub->target);
        }
    }
}

static void req_presences_done(void *arg, int err, const pd_presence_t *ps, size_t n,
                               const pd_str_t *hidden, size_t nhidden) {
    struct req *r = arg;
    session_t *s = r->s;
    engine_t *e = s->e;
    s->pending--;
    pd_presence_t *view = NULL;
    if (!err && n) {
        view = malloc(n * sizeof(*view));
        if (!view)
            err = PD_ENOMEM;
    }
    size_t nview = 0;
    if (r->subscribing && !s->closed) {
        subscribe_answered(s, r, err, ps, n, hidden, nhidden, view, &nview);
    } else if (view) {
        struct clock_snap c = {0};
        for (size_t i = 0; i < n; i++) {
            view[i] = ps[i];
            if (view[i].status != PD_OFFLINE)
                view[i].last_seen = local_last_seen(e, &ps[i], &c);
        }
        nview = n;
    }
    if (!s->closed)
        r->pdone(r->arg, err, view, err ? 0 : nview);
    else
        r->pdone(r->arg, PD_ECLOSED, NULL, 0);
    if (r->subscribing && !s->closed && !err)
        subscribe_settled(s, r);
    free(view);
    free(r->ids);
    free(r);
    maybe_free(s);
}

static int query(session_t *s, const pd_str_t *uniq, size_t n, bool subscribing,
                 engine_presences_cb done, void *arg) {
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return PD_ENOMEM;
    r->s = s;
    r->pdone = done;
    r->arg = arg;
    r->subscribing = subscribing;
    if (subscribing) {
        /* The ids outlive the caller's message: one block, the array then the bytes. */
        size_t bytes = n * sizeof(pd_str_t);
        for (size_t i = 0; i < n; i++)
            bytes += uniq[i].len;
        r->ids = malloc(bytes ? bytes : 1);
        if (!r->ids) {
            free(r);
            return PD_ENOMEM;
        }
        char *p = (char *)(r->ids + n);
        for (size_t i = 0; i < n; i++) {
            memcpy(p, uniq[i].s, uniq[i].len);
            r->ids[i] = (pd_str_t){p, uniq[i].len};
            p += uniq[i].len;
        }
        r->nids = n;
    }
    s->pending++;
    /* Every answer is filtered for the asking user by the privacy rule. */
    int rc = store_presence_get(s->e->store, user_id(s->user), uniq, n, req_presences_done, r);
    if (rc) {
        s->pending--;
        free(r->ids);
        free(r);
    }
    return rc;
}

int engine_subscribe(session_t *s, const pd_str_t *ids, size_t n, engine_presences_cb done,
                     void *arg) {
    engine_t *e = s->e;
    if (s->closed)
        return PD_ECLOSED;
    pd_str_t *uniq = malloc(sizeof(*uniq) * (n ? n : 1));
    if (!uniq)
        return PD_ENOMEM;
    n = unique_ids(ids, n, uniq);
    /* Refuse before changing anything when the new ones would pass the limit. */
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        struct euser *u = find_user(e, uniq[i]);
        fresh += !u || !find_sub(e, s, u);
    }
    if (s->nsubs + fresh > e->cfg.max_subscriptions) {
        free(uniq);
        return PD_ELIMIT;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct euser *u = get_user(e, uniq[i]);
        if (!u || (!find_sub(e, s, u) && !add_sub(e, s, u))) {
            if (u)
                maybe_free_user(e, u);
            rc = PD_ENOMEM;
        }
    }
    if (rc == 0)
        rc = query(s, uniq, n, true, done, arg);
    /* Refused: the edges it added would wait for an answer that never comes. */
    for (size_t i = 0; rc && i < n; i++) {
        struct sub *sub = sub_of(e, s, uniq[i]);
        if (sub && sub->checking)
            remove_sub(e, sub);
    }
    free(uniq);
    return rc;
}

void engine_unsubscribe(session_t *s, const pd_str_t *ids, size_t n) {
    engine_t *e = s->e;
    for (size_t i = 0; i < n; i++) {
        struct euser *u = find_user(e, ids[i]);
        struct sub *sub = u ? find_sub(e, s, u) : NULL;
        if (sub)
            remove_sub(e, sub);
    }
}

int engine_get_presence(session_t *s, const pd_str_t *ids, size_t n, engine_presences_cb done,
                        void *arg) {
    if (s->closed)
        return PD_ECLOSED;
    pd_str_t *uniq = malloc(sizeof(*uniq) * (n ? n : 1));
    if (!uniq)
        return PD_ENOMEM;
    n = unique_ids(ids, n, uniq);
    int rc = query(s, uniq, n, false, done, arg);
    free(uniq);
    return rc;
}

/* --- Privacy --- */

/* A re-check of who may see target, after its settings changed (every watcher), or for one
 * new edge answered from settings that changed meanwhile (only). Its answer counts only if
 * no other change was announced since it was asked (gen): a later re-check is then on its way
 * and decides instead, so an answer from old settings never reopens what new ones hide. */
struct recheck {
    engine_t *e;
    session_t *only; /* one watcher's new edge (the session is held by pending) */
    pd_str_t target;
    pd_str_t *requesters; /* sorted, distinct */
    size_t n;
    uint32_t gen; /* target's privacy_gen when asked */
};

static void recheck_free(struct recheck *rc) {
    if (!rc)
        return;
    for (size_t i = 0; i < rc->n; i++)
        free((char *)rc->requesters[i].s);
    free(rc->requesters);
    free((char *)rc->target.s);
    if (rc->only) {
        rc->only->pending--;
        maybe_free(rc->only);
    }
    free(rc);
}

static struct recheck *recheck_new(engine_t *e, struct euser *t, const pd_str_t *ids, size_t n) {
    struct recheck *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return NULL;
    rc->e = e;
    rc->gen = t->privacy_gen;
    /* Copies: the store may answer after these sessions are gone. */
    rc->requesters = calloc(n + 1, sizeof(pd_str_t));
    rc->target.s = malloc(t->id_len + 1u);
    if (!rc->requesters || !rc->target.s)
        goto err_free;
    memcpy((char *)rc->target.s, t->id, t->id_len);
    rc->target.len = t->id_len;
    for (size_t i = 0; i < n; i++, rc->n++) {
        char *c = malloc(ids[i].len + 1);
        if (!c)
            goto err_free;
        memcpy(c, ids[i].s, ids[i].len);
        rc->requesters[i] = (pd_str_t){c, ids[i].len};
    }
    return rc;
err_free:
    recheck_free(rc);
    return NULL;
}

/* The current presence of a user who became visible to some watchers: sent to those. The
 * target is held meanwhile, so a change that comes before this answer is not sent first. */
static void owed_presence(void *arg, int err, const pd_presence_t *ps, size_t n,
                          const pd_str_t *hidden, size_t nhidden) {
    (void)hidden;
    (void)nhidden;
    struct recheck *rc = arg;
    engine_t *e = rc->e;
    struct euser *t = find_user(e, rc->target); /* held: still there */
    pd_obuf_t *frame = !err && n == 1 ? e->codec.presence_update(&ps[0]) : NULL;
    for (struct sub *s = t->watchers; s; s = s->t_next) {
        if (!s->owed || s->unsure)
            continue; /* an unsure one waits for its own re-check */
        s->owed = 0;
        if (frame && s->watcher->client && s->visible) {
            deliver(e, s, frame);
            if (held_not_newer(e, t, ps[0].version))
                s->fresh = 1;
        }
    }
    pd_obuf_release(frame);
    recheck_free(rc);
    hold_end(e, t);
}

/* A hidden watcher's edge: no message, or one bare offline to a watcher that was shown the
 * user (one never shown them must not learn that the account exists). */
static void hide_from(engine_t *e, struct sub *s, pd_obuf_t **hidden, pd_str_t target) {
    s->visible = 0;
    s->owed = 0;
    if (!s->watcher->client || !s->shown)
        return;
    s->shown = 0;
    if (!*hidden)
        *hidden = e->codec.presence_hidden(target);
    if (*hidden && e->ops.send_coalesced(s->watcher->client, *hidden, &s->slot) >= 0)
        (*e->n.deliveries)++;
}

static void rechecked(void *arg, int err, const uint8_t *bits) {
    struct recheck *rc = arg;
    engine_t *e = rc->e;
    struct euser *t = find_user(e, rc->target); /* held: still there */
    if (rc->gen != t->privacy_gen) {
        /* Settings changed again since this was asked: a later re-check decides (every
         * watcher), or this one edge is asked again. */
        if (rc->only && !rc->only->closed) {
            struct sub *sub = find_sub(e, rc->only, t);
            if (sub && sub->checking)
                recheck_one(e, rc->only, t);
        }
        recheck_free(rc);
        hold_end(e, t);
        return;
    }
    pd_obuf_t *hidden = NULL;
    bool owed = false;
    for (struct sub *s = t->watchers, *next; s; s = next) {
        next = s->t_next;
        if (rc->only ? s->watcher != rc->only || !s->checking : s->checking)
            continue; /* new edges are decided by their own answers */
        pd_str_t w = user_id(s->watcher->user);
        pd_str_t *hit = bsearch(&w, rc->requesters, rc->n, sizeof(w), cmp_str);
        if (!hit)
            continue;
        if (err) {
            /* The store could not say: hidden (the safe side) without a word, since the
             * watcher may well still be allowed; asked again later (recheck_later). */
            if (rc->only) {
                s->checking = 0;
                hold_end(e, t); /* the edge's own hold; the re-check's keeps t */
            }
            if (s->visible || rc->only)
                s->unsure = 1;
            s->visible = 0;
            s->owed = 0;
            continue;
        }
        bool visible = bits[hit - rc->requesters];
        bool unsure = s->unsure;
        s->unsure = 0;
        if (rc->only) {
            s->checking = 0;
            s->visible = visible;
            s->owed = visible;
            owed |= visible;
            hold_end(e, t); /* the edge's own hold; the re-check's keeps t */
            continue;
        }
        if (visible == s->visible && !unsure)
            continue;
        if (visible) {
            /* Newly allowed: the current presence. Allowed all along (the store could not say
             * for a while): the current one only if a change went unsent meanwhile. */
            s->visible = 1;
            if (!unsure)
                s->owed = 1;
            owed |= s->owed;
        } else {
            hide_from(e, s, &hidden, rc->target); /* lost permission: one bare offline */
        }
    }
    pd_obuf_release(hidden);
    if (err) {
        PD_WARN(e->log, "engine", "privacy of %.*s could not be re-checked (%s): asked again later",
                (int)rc->target.len, rc->target.s, pd_strerror(err));
        recheck_later(e, t);
    }
    if (owed && hold_begin(e, t) == 0) { /* held until the owed presence is sent */
        if (store_presence_get(e->store, (pd_str_t){0}, &rc->target, 1, owed_presence, rc) == 0) {
            hold_end(e, t); /* the re-check's own hold; the fetch keeps t */
            return;
        }
        hold_end(e, t);
    }
    recheck_free(rc);
    hold_end(e, t);
}

static int recheck_ask(engine_t *e, struct euser *t, struct recheck *rc) {
    int err = hold_begin(e, t);
    if (err)
        return err;
    err = store_can_see(e->store, rc->target, rc->requesters, rc->n, rechecked, rc);
    if (err)
        hold_end(e, t);
    return err;
}

/* Asks again whether w may see t, for w's new edge to t answered from old settings. */
static void recheck_one(engine_t *e, session_t *w, struct euser *t) {
    pd_str_t me = user_id(w->user);
    struct recheck *rc = recheck_new(e, t, &me, 1);
    if (rc) {
        rc->only = w;
        w->pending++;
        if (recheck_ask(e, t, rc) == 0)
            return;
    }
    /* Cannot ask: the edge goes, rather than staying undecided (and t held) forever. */
    PD_WARN(e->log, "engine", "subscription to %.*s could not be checked: dropped", (int)t->id_len,
            t->id);
    recheck_free(rc);
    struct sub *sub = find_sub(e, w, t);
    if (sub)
        remove_sub(e, sub);
}

static void on_privacy_changed(void *ctx, pd_str_t user) {
    engine_t *e = ctx;
    struct euser *t = find_user(e, user);
    if (!t || !t->watchers)
        return;
    t->privacy_gen++; /* answers asked for before this may be from the old settings */
    pd_str_t *ids = malloc(sizeof(*ids) * t->nwatchers);
    struct recheck *rc = NULL;
    if (ids) {
        size_t n = 0;
        for (struct sub *s = t->watchers; s; s = s->t_next)
            ids[n++] = user_id(s->watcher->user);
        n = unique_ids(ids, n, ids);
        rc = recheck_new(e, t, ids, n);
        free(ids);
    }
    if (rc && recheck_ask(e, t, rc) == 0)
        return;
    /* Cannot ask: every watcher is hidden from t (the safe side), silently, until the re-check
     * that is asked again later answers. */
    PD_WARN(e->log, "engine",
            "privacy of %.*s changed but could not be re-checked: asked again later", (int)user.len,
            user.s);
    recheck_free(rc);
    for (struct sub *s = t->watchers; s; s = s->t_next) {
        if (!s->checking && s->visible) {
            s->visible = 0;
            s->owed = 0;
            s->unsure = 1;
        }
    }
    recheck_later(e, t);
}

/* t's privacy is asked again at the next recheck_timer (at once when the store comes back). */
static void recheck_later(engine_t *e, struct euser *t) {
    t->recheck_owed = 1;
    if (!wheel_timer_armed(&e->recheck_timer))
        wheel_schedule(e->wheel, &e->recheck_timer, now_ms(e) + e->recheck_delay_ms);
}

static void recheck_fire(wheel_timer_t *timer, uint64_t now) {
    (void)now;
    engine_t *e = (engine_t *)((char *)timer - offsetof(engine_t, recheck_timer));
    /* The users first: asking again may mark them (or others) again. */
    size_t n = 0, cap = 0;
    pd_str_t *ids = NULL;
    bool left = false; /* marked users not taken this time (out of memory) */
    for (hmap_node_t *h = hmap_first(&e->users); h && !left; h = hmap_next(&e->users, h)) {
        struct euser *u = (struct euser *)h;
        if (!u->recheck_owed)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            pd_str_t *x = realloc(ids, ncap * sizeof(*x));
            if (!x) {
                left = true;
                break;
            }
            ids = x;
            cap = ncap;
        }
        u->recheck_owed = 0;
        ids[n++] = user_id(u); /* stays valid: on_privacy_changed frees no user record */
    }
    for (size_t i = 0; i < n; i++)
        on_privacy_changed(e, ids[i]);
    free(ids);
    /* A re-check that failed again armed the timer (recheck_later): it backs off. */
    if (left || wheel_timer_armed(timer)) {
        e->recheck_delay_ms = e->recheck_delay_ms >= 15000 ? 30000 : e->recheck_delay_ms * 2;
        wheel_schedule(e->wheel, &e->recheck_timer, now_ms(e) + e->recheck_delay_ms);
    } else {
        e->recheck_delay_ms = 1000;
    }
}

static void req_privacy_done(void *arg, int err, const store_privacy_t *p) {
    struct req *r = arg;
    session_t *s = r->s;
    s->pending--;
    r->privdone(r->arg, s->closed ? PD_ECLOSED : err, p);
    free(r);
    maybe_free(s);
}

int engine_privacy_get(session_t *s, engine_privacy_cb done, void *arg) {
    if (s->closed)
        return PD_ECLOSED;
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return PD_ENOMEM;
    r->s = s;
    r->privdone = done;
    r->arg = arg;
    s->pending++;
    int rc = store_privacy_get(s->e->store, user_id(s->user), req_privacy_done, r);
    if (rc) {
        s->pending--;
        free(r);
    }
    return rc;
}

static void req_done(void *arg, int err) {
    struct req *r = arg;
    session_t *s = r->s;
    s->pending--;
    if (r->done)
        r->done(r->arg, s->closed ? PD_ECLOSED : err);
    free(r);
    maybe_free(s);
}

int engine_privacy_change(session_t *s, int op, uint8_t visibility, pd_str_t other,
                          engine_done_cb done, void *arg) {
    if (s->closed)
        return PD_ECLOSED;
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return PD_ENOMEM;
    r->s = s;
    r->done = done;
    r->arg = arg;
    s->pending++;
    int rc = store_privacy_change(s->e->store, user_id(s->user), op, visibility, other,
                                  s->e->cfg.max_contacts, req_done, r);
    if (rc) {
        s->pending--;
        free(r);
    }
    return rc;
}

/* The store's backend came back: every present session here is registered again (the
 * backend may have lost them, or swept them as a dead node's), with its claim and device. */
static void on_resync(void *ctx) {
    engine_t *e = ctx;
    uint64_t n = 0;
    for (hmap_node_t *h = hmap_first(&e->users); h; h = hmap_next(&e->users, h))
        for (session_t *s = ((struct euser *)h)->sessions; s; s = s->u_next) {
            s->stored = 0; /* the backend may have lost it: registered as new */
            if (s->present && !s->closed && push_session(s, NULL, NULL, NULL) == 0)
                n++;
        }
    PD_INFO(e->log, "engine", "store back: %llu sessions registered again", (unsigned long long)n);
    if (wheel_timer_armed(&e->recheck_timer)) {
        /* Re-checks that failed while it was away are asked again now. */
        e->recheck_delay_ms = 1000;
        wheel_schedule(e->wheel, &e->recheck_timer, now_ms(e));
    }
}

/* --- Engine --- */

/* Gauges read from the store at scrape time; NaN from a store that cannot tell. */
static double store_stat(engine_t *e, int which) {
    store_stats_t s;
    if (!e->store->ops->stats || e->store->ops->stats(e->store, &s) != 0)
        return 0.0 / 0.0;
    return which <= PD_BUSY ? (double)s.users[which]
           : which == 4     ? (double)s.rooms
           : which == 5     ? (double)s.members
                            : (double)s.writes_pending;
}
static double gauge_offline(void *ctx) {
    return store_stat(ctx, PD_OFFLINE);
}
static double gauge_away(void *ctx) {
    return store_stat(ctx, PD_AWAY);
}
static double gauge_online(void *ctx) {
    return store_stat(ctx, PD_ONLINE);
}
static double gauge_busy(void *ctx) {
    return store_stat(ctx, PD_BUSY);
}
static double gauge_rooms(void *ctx) {
    return store_stat(ctx, 4);
}
static double gauge_members(void *ctx) {
    return store_stat(ctx, 5);
}
static double gauge_writes(void *ctx) {
    return store_stat(ctx, 6);
}

static void register_metrics(engine_t *e, pd_metrics_t *m) {
    if (m) {
        static const char help[] = "Known users by visible status (every user the store holds)";
        pd_metrics_gauge_fn(m, "presenced_users", help, "status", "offline", gauge_offline, e);
        pd_metrics_gauge_fn(m, "presenced_users", help, "status", "away", gauge_away, e);
        pd_metrics_gauge_fn(m, "presenced_users", help, "status", "online", gauge_online, e);
        pd_metrics_gauge_fn(m, "presenced_users", help, "status", "busy", gauge_busy, e);
        pd_metrics_gauge_fn(m, "presenced_rooms", "Rooms with at least one member", NULL, NULL,
                            gauge_rooms, e);
        pd_metrics_gauge_fn(m, "presenced_room_members", "Members, summed over rooms", NULL, NULL,
                            gauge_members, e);
        pd_metrics_gauge_fn(m, "presenced_store_writes_pending",
                            "Durable writes of the embedded store queued for its writer thread or "
                            "being committed (at most 65,536)",
                            NULL, NULL, gauge_writes, e);
    }
#define COUNTER(field, name, help)                                                                 \
    do {                                                                                           \
        e->n.field = m ? pd_metrics_counter(m, name, help, NULL, NULL) : NULL;                     \
        if (!e->n.field)                                                                           \
            e->n.field = &dummy_counter;                                                           \
    } while (0)
#define GAUGE(field, name, help)                                                                   \
    do {                                                                                           \
        e->n.field = m ? pd_metrics_gauge(m, name, help, NULL, NULL) : NULL;                       \
        if (!e->n.field)                                                                           \
            e->n.field = &dummy_gauge;                                                             \
    } while (0)
    COUNTER(changes, "presenced_presence_changes_total",
            "Visible presence changes announced by the store to this node");
    COUNTER(deliveries, "presenced_fanout_deliveries_total",
            "presence_update frames queued to watchers");
    COUNTER(coalesced, "presenced_fanout_coalesced_total",
            "presence_update frames that replaced an unsent one (slow watcher)");
    COUNTER(grace_expired, "presenced_grace_expired_total",
            "Disconnected sessions whose grace window passed (offline published)");
    COUNTER(grace_revived, "presenced_grace_revived_total",
            "Lingering sessions ended by a reconnect inside the grace window");
    COUNTER(timeouts, "presenced_session_timeouts_total",
            "Sessions ended by the liveness timeout (no heartbeat)");
    GAUGE(sessions, "presenced_sessions", "Sessions (connections) on this node");
    GAUGE(present, "presenced_sessions_present", "Sessions counted in their user's presence");
    GAUGE(subscriptions, "presenced_subscriptions", "Watched users, summed over connections");
#undef COUNTER
#undef GAUGE
}

/* Heartbeats never reach the store (they are the hot path), so a crash would leave a live
 * user's last_seen at their last change; this hands each live user's latest sign of life to
 * the store once per period instead. O(users known here) per period. */
static void checkpoint_fire(wheel_timer_t *t, uint64_t now) {
    engine_t *e = (engine_t *)((char *)t - offsetof(engine_t, checkpoint));
    struct clock_snap c = {0};
    for (hmap_node_t *n = hmap_first(&e->users); n; n = hmap_next(&e->users, n)) {
        struct euser *u = (struct euser *)n;
        bool live = false;
        for (session_t *s = u->sessions; s && !live; s = s->u_next)
            live = s->present && s->client;
        if (!live)
            continue;
        pd_presence_t p = {.user_id = u->id, .user_id_len = u->id_len};
        e->store->ops->seen(e->store, user_id(u), local_last_seen(e, &p, &c));
    }
    wheel_schedule(e->wheel, t, now + e->cfg.checkpoint_ms);
}

engine_t *engine_new(const engine_config_t *cfg, store_t *store, wheel_t *wheel,
                     const pd_clock_t *clock, const pd_hashkey_t *key,
                     const engine_client_ops_t *ops, const engine_codec_t *codec, pd_log_t *log,
                     pd_metrics_t *metrics) {
    engine_t *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->cfg = *cfg;
    e->store = store;
    e->wheel = wheel;
    e->clock = *clock;
    e->key = key;
    e->ops = *ops;
    e->codec = *codec;
    e->log = log;
    if (hmap_init(&e->users, 1024) || hmap_init(&e->subs, 1024) || hmap_init(&e->holds, 16) ||
        istr_table_init(&e->labels, key)) {
        engine_free(e);
        return NULL;
    }
    register_metrics(e, metrics);
    store_listen_presence(store, e, on_presence_changed, on_presence_caused, on_privacy_changed,
                          on_resync);
    wheel_timer_init(&e->checkpoint, checkpoint_fire);
    wheel_timer_init(&e->recheck_timer, recheck_fire);
    e->recheck_delay_ms = 1000;
    if (e->cfg.checkpoint_ms && store->ops->seen)
        wheel_schedule(wheel, &e->checkpoint, now_ms(e) + e->cfg.checkpoint_ms);
    return e;
}

void engine_set_events(engine_t *e, events_t *events) {
    e->events = events;
}

void engine_free(engine_t *e) {
    if (!e)
        return;
    wheel_cancel(e->wheel, &e->checkpoint);
    wheel_cancel(e->wheel, &e->recheck_timer);
    if (e->users.buckets) {
        for (hmap_node_t *n = hmap_first(&e->users); n;) {
            struct euser *u = (struct euser *)n;
            n = hmap_next(&e->users, n);
            /* The last removal may free u (when it has no session): count, do not re-read. */
            for (uint32_t k = u->nwatchers; k > 0; k--)
                remove_sub(e, u->watchers);
        }
        for (hmap_node_t *n = hmap_first(&e->users); n;) {
            struct euser *u = (struct euser *)n;
            n = hmap_next(&e->users, n);
            while (u->sessions) {
                session_t *s = u->sessions;
                u->sessions = s->u_next;
                wheel_cancel(e->wheel, &s->timer);
                istr_put(&e->labels, s->device);
                free(s);
            }
            hmap_remove(&e->users, &u->node);
            free(u);
        }
    }
    if (e->store)
        store_listen_presence(e->store, NULL, NULL, NULL, NULL, NULL);
    hmap_destroy(&e->users);
    if (e->holds.buckets) {
        /* Decisions still in the store at exit: their answers never come (the store failed
         * them before), so nothing else frees these. */
        for (hmap_node_t *n = hmap_first(&e->holds); n;) {
            struct hold *h = (struct hold *)n;
            n = hmap_next(&e->holds, n);
            hmap_remove(&e->holds, &h->node);
            pd_obuf_release(h->frame);
            free(h);
        }
    }
    hmap_destroy(&e->subs);
    hmap_destroy(&e->holds);
    if (e->labels.map.buckets)
        istr_table_destroy(&e->labels);
    free(e);
}

/* --- Backend calls --- */

struct breq {
    engine_t *e;
    engine_bulk_cb bulk;
    engine_done_cb done;
    engine_privacy_cb privacy;
    engine_explain_cb explain;
    pd_str_t user; /* owned copy (explain) */
    void *arg;
};

static struct breq *breq_new(engine_t *e, void *arg) {
    struct breq *b = calloc(1, sizeof(*b));
    if (b) {
        b->e = e;
        b->arg = arg;
    }
    return b;
}

static void bulk_done(void *arg, int err, const pd_presence_t *ps, size_t n, const pd_str_t *hidden,
                      size_t nhidden) {
    (void)hidden;
    (void)nhidden;
    struct breq *b = arg;
    pd_presence_t *view = !err && n ? malloc(n * sizeof(*view)) : NULL;
    if (!err && n && !view)
        err = PD_ENOMEM;
    struct clock_snap c = {0};
    for (size_t i = 0; view && i < n; i++) {
        view[i] = ps[i];
        if (view[i].status != PD_OFFLINE)
            view[i].last_seen = local_last_seen(b->e, &ps[i], &c);
    }
    b->bulk(b->arg, err, view, err ? 0 : n);
    free(view);
    free(b);
}

int engine_query(engine_t *e, pd_str_t requester, const pd_str_t *ids, size_t n, engine_bulk_cb cb,
                 void *arg) {
    pd_str_t *uniq = malloc(sizeof(*uniq) * (n ? n : 1));
    struct breq *b = uniq ? breq_new(e, arg) : NULL;
    if (!b) {
        free(uniq);
        return PD_ENOMEM;
    }
    b->bulk = cb;
    n = unique_ids(ids, n, uniq);
    int rc = store_presence_get(e->store, requester, uniq, n, bulk_done, b);
    if (rc)
        free(b);
    free(uniq);
    return rc;
}

static void breq_presence_done(void *arg, int err, const pd_presence_t *p) {
    (void)p;
    struct breq *b = arg;
    b->done(b->arg, err);
    free(b);
}

int engine_server_update(engine_t *e, pd_str_t user, const store_user_fields_t *f,
                         engine_done_cb cb, void *arg) {
    struct breq *b = breq_new(e, arg);
    if (!b)
        return PD_ENOMEM;
    b->done = cb;
    int rc = store_user_update(e->store, user, f, breq_presence_done, b);
    if (rc)
        free(b);
    return rc;
}

static void breq_privacy_done(void *arg, int err, const store_privacy_t *p) {
    struct breq *b = arg;
    b->privacy(b->arg, err, p);
    free(b);
}

int engine_privacy_of(engine_t *e, pd_str_t user, engine_privacy_cb cb, void *arg) {
    struct breq *b = breq_new(e, arg);
    if (!b)
        return PD_ENOMEM;
    b->privacy = cb;
    int rc = store_privacy_get(e->store, user, breq_privacy_done, b);
    if (rc)
        free(b);
    return rc;
}

static void breq_done(void *arg, int err) {
    struct breq *b = arg;
    b->done(b->arg, err);
    free(b);
}

int engine_privacy_set(engine_t *e, pd_str_t user, const store_privacy_t *p, engine_done_cb cb,
                       void *arg) {
    struct breq *b = breq_new(e, arg);
    if (!b)
        return PD_ENOMEM;
    b->done = cb;
    int rc = store_privacy_replace(e->store, user, p, e->cfg.max_contacts, breq_done, b);
    if (rc)
        free(b);
    return rc;
}

uint32_t engine_kick(engine_t *e, pd_str_t user, uint16_t code, const char *reason) {
    struct euser *u = find_user(e, user);
    uint32_t n = 0;
    for (session_t *s = u ? u->sessions : NULL; s; s = s->u_next) {
        if (s->client && !s->closed) {
            /* The close completes later (on_close from the server's flush): nothing is
             * freed under this loop. */
            s->kicked = 1;
            e->ops.close(s->client, code, reason);
            n++;
        }
    }
    return n;
}

static void explain_done(void *arg, int err, const store_explain_t *x) {
    struct breq *b = arg;
    engine_t *e = b->e;
    double liveness[PD_SESSIONS_PER_USER_MAX] = {0};
    struct euser *u = err ? NULL : find_user(e, b->user);
    uint64_t now = now_ms(e);
    double wall = pd_clock_wall(&e->clock);
    for (size_t i = 0; u && i < x->nsessions && i < PD_SESSIONS_PER_USER_MAX; i++) {
        for (session_t *s = u->sessions; s; s = s->u_next) {
            if (s->sid == x->sessions[i].sid && s->client &&
                strcmp(x->sessions[i].node, "local") == 0) {
                uint64_t rx = e->ops.last_rx_ms(s->client);
                liveness[i] = wall - (double)(now > rx ? now - rx : 0) / 1000.0;
            }
        }
    }
    b->explain(b->arg, err, x, liveness);
    free((char *)b->user.s);
    free(b);
}

int engine_explain(engine_t *e, pd_str_t user, engine_explain_cb cb, void *arg) {
    struct breq *b = breq_new(e, arg);
    char *copy = b ? malloc(user.len + 1) : NULL;
    if (!copy) {
        free(b);
        return PD_ENOMEM;
    }
    memcpy(copy, user.s, user.len);
    b->user = (pd_str_t){copy, user.len};
    b->explain = cb;
    int rc = store_explain(e->store, user, explain_done, b);
    if (rc) {
        free(copy);
        free(b);
    }
    return rc;
}

int engine_can_see(engine_t *e, pd_str_t requester, pd_str_t target, store_bits_cb cb, void *arg) {
    return store_can_see(e->store, target, &requester, 1, cb, arg);
}
