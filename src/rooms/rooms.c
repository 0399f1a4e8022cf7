/* Local room state, event delivery (per event or batched), and signal throttling.
 *
 * Lifetimes: a struct lroom lives while links refer to it (live links of open connections,
 * and lingering links of closed ones waiting out their grace window); the store is asked for
 * the room's events while it has live links. A link is freed once its connection left the
 * room (or its grace window ended) and no store call of its is in flight.
 */
#include "rooms/rooms.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

enum { MODE_ANNOUNCE, MODE_INTERVAL };
static const char *const mode_names[] = {"announce", "interval"};
static const char *const reason_names[] = {"left", "disconnected", "timeout"};

/* A member's change not yet sent, in a room in interval mode. */
struct dentry {
    hmap_node_t node;
    pd_obuf_t *json; /* the member's latest JSON, when a member now */
    uint8_t was_member, is_member;
    uint16_t id_len;
    char id[];
};

struct lroom {
    hmap_node_t node;
    struct rlink *links; /* live links: connections here now */
    uint32_t nlinks;
    uint32_t refs;  /* live and lingering links */
    uint32_t count; /* members, as of the last event */
    uint8_t mode;
    bool watched;
    hmap_t pending; /* user -> struct dentry, in interval mode */
    wheel_timer_t timer;
    rooms_t *owner;
    uint16_t name_len;
    char name[];
};

/* One connection in one room. */
struct rlink {
    struct lroom *room;
    session_t *s;                  /* NULL once the connection is gone */
    struct rlink *r_next, *r_prev; /* in room->links while live */
    struct rlink *s_next;          /* in the session's list */
    wheel_timer_t timer;           /* signal throttle while live; grace while lingering */
    uint64_t last_emit;            /* us (loop ms * 1000): when the last relay was due */
    pd_str_t cursor;               /* pending cursor payload (owned) */
    pd_str_t md; /* the metadata last set (owned), to register it again after a resync */
    uint64_t sid;
    uint32_t pending; /* store calls in flight (bounded per connection by dispatch) */
    int8_t typing;    /* pending typing signal, -1 none */
    uint8_t live : 1, lingering : 1;
    rooms_t *owner;
    pd_str_t user; /* owned copy: store calls may outlive the session */
};

struct rooms_counters {
    uint64_t *joins, *leaves, *events, *deltas, *signals_in, *signals_out, *signals_coalesced;
    int64_t *links, *rooms;
};

struct rooms {
    rooms_config_t cfg;
    engine_t *engine;
    store_t *store;
    wheel_t *wheel;
    pd_clock_t clock;
    const pd_hashkey_t *key;
    engine_client_ops_t ops;
    rooms_codec_t codec;
    pd_log_t *log;
    events_t *events;
    hmap_t rooms;
    struct rlink *lingering; /* links in their grace window, through r_next/r_prev */
    struct rooms_counters n;
};

struct rreq {
    rooms_t *r;
    struct rlink *link;
    rooms_state_cb state;
    rooms_members_cb members;
    engine_done_cb done;
    void *arg;
    bool fresh; /* join: the link was made for this request */
};

static uint64_t dummy_counter;
static int64_t dummy_gauge;

void rooms_config_default(rooms_config_t *cfg) {
    cfg->announce_max = 100;
    cfg->interval_ms = 2000;
    cfg->cursor_hz = 30;
    cfg->max_per_conn = 100;
    cfg->max_members = 100000;
    cfg->offline_grace_ms = 5000;
    cfg->state_members = 100;
}

static uint64_t now_ms(rooms_t *r) {
    return pd_clock_ms(&r->clock);
}

static pd_str_t room_name(const struct lroom *lr) {
    return (pd_str_t){lr->name, lr->name_len};
}

static bool str_eq(pd_str_t a, pd_str_t b) {
    return a.len == b.len && memcmp(a.s, b.s, a.len) == 0;
}

/* --- Rooms --- */

static bool lroom_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct lroom *lr = (const struct lroom *)n;
    return lr->name_len == len && memcmp(lr->name, key, len) == 0;
}

static bool dentry_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct dentry *d = (const struct dentry *)n;
    return d->id_len == len && memcmp(d->id, key, len) == 0;
}

static struct lroom *find_room(rooms_t *r, pd_str_t name) {
    return (struct lroom *)hmap_find(&r->rooms, pd_hash(r->key, name.s, name.len), name.s, name.len,
                                     lroom_eq);
}

static void flush_delta(struct lroom *lr);
static void room_timer(wheel_timer_t *t, uint64_t now);

static struct lroom *get_room(rooms_t *r, pd_str_t name) {
    struct lroom *lr = find_room(r, name);
    if (lr)
        return lr;
    lr = calloc(1, sizeof(*lr) + name.len + 1);
    if (!lr)
        return NULL;
    lr->owner = r;
    lr->name_len = (uint16_t)name.len;
    memcpy(lr->name, name.s, name.len);
    wheel_timer_init(&lr->timer, room_timer);
    hmap_insert(&r->rooms, &lr->node, pd_hash(r->key, name.s, name.len));
    (*r->n.rooms)++;
    return lr;
}

static void drop_pending(struct lroom *lr) {
    if (!lr->pending.buckets)
        return;
    for (hmap_node_t *n = hmap_first(&lr->pending); n;) {
        struct dentry *d = (struct dentry *)n;
        n = hmap_next(&lr->pending, n);
        hmap_remove(&lr->pending, &d->node);
        pd_obuf_release(d->json);
        free(d);
    }
}

static void maybe_free_room(rooms_t *r, struct lroom *lr) {
    if (lr->nlinks == 0 && lr->watched) {
        store_room_unwatch(r->store, room_name(lr));
        lr->watched = false;
    }
    if (lr->refs)
        return;
    wheel_cancel(r->wheel, &lr->timer);
    drop_pending(lr);
    hmap_destroy(&lr->pending);
    hmap_remove(&r->rooms, &lr->node);
    free(lr);
    (*r->n.rooms)--;
}

/* --- Delivery --- */

/* Sends frame (taking its reference) to the room's connections, except those of user (when
 * given). Returns how many it was queued to. */
static uint64_t deliver(struct lroom *lr, pd_obuf_t *frame, pd_str_t except) {
    rooms_t *r = lr->owner;
    uint64_t sent = 0;
    if (!frame)
        return 0;
    for (struct rlink *l = lr->links; l; l = l->r_next) {
        if (except.s && str_eq(l->user, except))
            continue;
        void *client = engine_session_client(l->s);
        if (client && r->ops.send(client, frame) == 0)
            sent++;
    }
    pd_obuf_release(frame);
    return sent;
}

static struct dentry *get_dentry(struct lroom *lr, pd_str_t user, uint8_t was_member) {
    rooms_t *r = lr->owner;
    uint64_t h = pd_hash(r->key, user.s, user.len);
    struct dentry *d = (struct dentry *)hmap_find(&lr->pending, h, user.s, user.len, dentry_eq);
    if (d)
        return d;
    d = calloc(1, sizeof(*d) + user.len + 1);
    if (!d)
        return NULL;
    d->id_len = (uint16_t)user.len;
    memcpy(d->id, user.s, user.len);
    d->was_member = was_member;
    hmap_insert(&lr->pending, &d->node, h);
    return d;
}

/* Records a change for the next channel_delta: only the net change since the last delta
 * is sent (a join then a leave inside one interval is nothing). */
static void accumulate(struct lroom *lr, const store_room_event_t *ev) {
    rooms_t *r = lr->owner;
    struct dentry *d = get_dentry(lr, ev->user, ev->kind != STORE_ROOM_JOINED);
    if (!d)
        return;
    pd_obuf_release(d->json);
    d->json = NULL;
    d->is_member = ev->kind != STORE_ROOM_LEFT;
    if (d->is_member)
        d->json = r->codec.member_json(ev->member);
    if (!wheel_timer_armed(&lr->timer))
        wheel_schedule(r->wheel, &lr->timer, now_ms(r) + r->cfg.interval_ms);
}

/* A delta lists at most this many bytes of members (joined and updated) and of left ids; the
 * rest is only counted ("joined_more" ...): a storm of 10,000 joins made one 1.1 MB delta per
 * member, past out-max, and every member was closed as a slow consumer. */
#define DELTA_MEMBER_BYTES (64 * 1024)
#define DELTA_LEFT_BYTES   (32 * 1024)

static void flush_delta(struct lroom *lr) {
    rooms_t *r = lr->owner;
    size_t n = lr->pending.buckets ? lr->pending.count : 0;
    if (n == 0)
        return;
    pd_str_t *joined = malloc(sizeof(pd_str_t) * n), *left = malloc(sizeof(pd_str_t) * n),
             *updated = malloc(sizeof(pd_str_t) * n);
    size_t nj = 0, nl = 0, nu = 0, member_bytes = 0, left_bytes = 0;
    uint32_t more[3] = {0};
    if (joined && left && updated) {
        for (hmap_node_t *hn = hmap_first(&lr->pending); hn; hn = hmap_next(&lr->pending, hn)) {
            struct dentry *d = (struct dentry *)hn;
            pd_str_t json = d->json ? (pd_str_t){(const char *)pd_obuf_payload(d->json),
                                                 pd_obuf_payload_len(d->json)}
                                    : (pd_str_t){0};
            bool fits = member_bytes + json.len <= DELTA_MEMBER_BYTES;
            if (!d->was_member && d->is_member && json.s) {
                if (fits) {
                    joined[nj++] = json;
                    member_bytes += json.len;
                } else {
                    more[0]++;
                }
            } else if (d->was_member && !d->is_member) {
                if (left_bytes + d->id_len <= DELTA_LEFT_BYTES) {
                    left[nl++] = (pd_str_t){d->id, d->id_len};
                    left_bytes += d->id_len + 3u;
                } else {
                    more[1]++;
                }
            } else if (d->was_member && d->is_member && json.s) {
                if (fits) {
                    updated[nu++] = json;
                    member_bytes += json.len;
                } else {
                    more[2]++;
                }
            }
        }
        if (nj + nl + nu + more[0] + more[1] + more[2] > 0) {
            (*r->n.deltas)++;
            (*r->n.events) += deliver(
                lr,
                r->codec.delta(room_name(lr), joined, nj, left, nl, updated, nu, more, lr->count),
                (pd_str_t){0});
        }
    }
    free(joined);
    free(left);
    free(updated);
    drop_pending(lr);
}

static void room_timer(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct lroom *lr = (struct lroom *)((char *)t - offsetof(struct lroom, timer));
    flush_delta(lr);
}

/* Switches between per-event and batched delivery, with hysteresis: up above announce_max,
 * back below 80% of it, so a room hovering at the threshold does not flap. */
static void update_mode(struct lroom *lr, uint32_t count) {
    rooms_t *r = lr->owner;
    if (lr->mode == MODE_INTERVAL && (uint64_t)count * 10 < (uint64_t)r->cfg.announce_max * 8) {
        /* The batch so far goes out with the count it leads to, before the change that
         * crosses the threshold (which is then sent on its own). */
        flush_delta(lr);
        wheel_cancel(r->wheel, &lr->timer);
        lr->mode = MODE_ANNOUNCE;
    }
    lr->count = count;
    if (lr->mode == MODE_ANNOUNCE && count > r->cfg.announce_max &&
        (lr->pending.buckets || hmap_init(&lr->pending, 64) == 0))
        lr->mode = MODE_INTERVAL;
}

/* A membership change this node caused: told to the backends' feed, once across nodes. */
static void on_room_caused(void *ctx, const store_room_event_t *ev) {
    rooms_t *r = ctx;
    static const uint8_t kinds[] = {[STORE_ROOM_JOINED] = PD_EV_MEMBER_JOINED,
                                    [STORE_ROOM_LEFT] = PD_EV_MEMBER_LEFT,
                                    [STORE_ROOM_UPDATED] = PD_EV_MEMBER_UPDATED};
    if (ev->kind == STORE_ROOM_SIGNAL)
        return;
    events_publish(r->events, &(pd_event_t){.kind = kinds[ev->kind],
                                            .reason = ev->reason,
                                            .count = ev->count,
                                            .user = ev->user,
                                            .room = ev->room,
                                            .member = ev->member});
}

static void on_room_event(void *ctx, const store_room_event_t *ev) {
    rooms_t *r = ctx;
    struct lroom *lr = find_room(r, ev->room);
    if (!lr)
        return;
    if (ev->kind == STORE_ROOM_SIGNAL) {
        if (!lr->links)
            return;
        bool cursor = ev->signal == STORE_SIGNAL_CURSOR;
        pd_obuf_t *f = r->codec.signal(cursor ? "cursor" : "typing", ev->room, ev->user,
                                       cursor ? "cursor" : "typing", ev->payload);
        (*r->n.signals_out) += deliver(lr, f, ev->user);
        return;
    }
    update_mode(lr, ev->count);
    if (!lr->links)
        return;
    if (lr->mode == MODE_INTERVAL) {
        accumulate(lr, ev);
        return;
    }
    pd_obuf_t *f;
    if (ev->kind == STORE_ROOM_LEFT)
        f = r->codec.member_left(ev->room, ev->user, reason_names[ev->reason % 3], ev->count);
    else
        f = r->codec.member_event(ev->kind == STORE_ROOM_JOINED ? "member_joined"
                                                                : "member_updated",
                                  ev->room, ev->member, ev->count);
    (*r->n.events) += deliver(lr, f, ev->user);
}

/* --- Links --- */

static void link_timer(wheel_timer_t *t, uint64_t now);

static struct rlink *find_link(session_t *s, pd_str_t channel) {
    for (struct rlink *l = *engine_session_rooms(s); l; l = l->s_next)
        if (str_eq(room_name(l->room), channel))
            return l;
    return NULL;
}

static uint32_t count_links(session_t *s) {
    uint32_t n = 0;
    for (struct rlink *l = *engine_session_rooms(s); l; l = l->s_next)
        n++;
    return n;
}

static void link_attach(struct lroom *lr, struct rlink *l) {
    l->r_prev = NULL;
    l->r_next = lr->links;
    if (lr->links)
        lr->links->r_prev = l;
    lr->links = l;
    lr->nlinks++;
    l->live = 1;
}

static void link_detach(struct lroom *lr, struct rlink *l) {
    if (!l->live)
        return;
    if (l->r_prev)
        l->r_prev->r_next = l->r_next;
    else
        lr->links = l->r_next;
    if (l->r_next)
        l->r_next->r_prev = l->r_prev;
    lr->nlinks--;
    l->live = 0;
}

static void session_unlink(session_t *s, struct rlink *l) {
    struct rlink **p = (struct rlink **)engine_session_rooms(s);
    while (*p && *p != l)
        p = &(*p)->s_next;
    if (*p)
        *p = l->s_next;
}

static void set_lingering(struct rlink *l, bool on) {
    rooms_t *r = l->owner;
    if (l->lingering == on)
        return;
    l->lingering = on;
    if (on) {
        l->r_prev = NULL;
        l->r_next = r->lingering;
        if (r->lingering)
            r->lingering->r_prev = l;
        r->lingering = l;
    } else {
        if (l->r_prev)
            l->r_prev->r_next = l->r_next;
        else
            r->lingering = l->r_next;
        if (l->r_next)
            l->r_next->r_prev = l->r_prev;
        l->r_next = l->r_prev = NULL;
    }
}

/* Frees the link if nothing holds it any more. */
static void maybe_free_link(struct rlink *l) {
    if (l->live || l->lingering || l->pending || l->s)
        return;
    rooms_t *r = l->owner;
    struct lroom *lr = l->room;
    wheel_cancel(r->wheel, &l->timer);
    free((char *)l->cursor.s);
    free((char *)l->md.s);
    free(l);
    (*r->n.links)--;
    lr->refs--;
    maybe_free_room(r, lr);
}

/* The link's connection is no longer in the room: stop delivering and detach it from the
 * session; store calls still to come use the link's own copy of the user id. */
static void link_release(struct rlink *l) {
    link_detach(l->room, l);
    if (l->s) {
        session_unlink(l->s, l);
        l->s = NULL;
    }
    wheel_cancel(l->owner->wheel, &l->timer);
}

/* --- Requests --- */

static void members_for_state(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                              bool more) {
    struct rreq *q = arg;
    struct rlink *l = q->link;
    l->pending--;
    if (l->s)
        q->state(q->arg, err, mode_names[l->room->mode], ms, n, count, more);
    else
        q->state(q->arg, PD_ECLOSED, NULL, NULL, 0, 0, false);
    free(q);
    maybe_free_link(l);
}

static void joined(void *arg, int err, const pd_member_t *me, bool fresh, uint32_t count) {
    (void)me;
    (void)fresh;
    struct rreq *q = arg;
    struct rlink *l = q->link;
    rooms_t *r = q->r;
    if (err) {
        l->pending--;
        q->state(q->arg, err == PD_ELIMIT ? PD_ETOOBIG : err, NULL, NULL, 0, 0, false);
        if (q->fresh)
            link_release(l);
        free(q);
        maybe_free_link(l);
        return;
    }
    update_mode(l->room, count);
    (*r->n.joins)++;
    /* The answer carries the first page of members; the link stays pending until it is in. */
    int rc = store_room_members(r->store, room_name(l->room), (pd_str_t){0}, r->cfg.state_members,
                                members_for_state, q);
    if (rc) {
        l->pending--;
        q->state(q->arg, rc, NULL, NULL, 0, 0, false);
        free(q);
        maybe_free_link(l);
    }
}

/* Keeps a copy of the metadata a link last set (for a resync). */
static void remember_md(struct rlink *l, pd_str_t md) {
    if (!md.s)
        return;
    char *copy = malloc(md.len + 1);
    if (!copy)
        return; /* a resync then keeps what the store has */
    memcpy(copy, md.s, md.len);
    copy[md.len] = '\0';
    free((char *)l->md.s);
    l->md = (pd_str_t){copy, md.len};
}

static store_room_conn_t conn_of(session_t *s, uint64_t sid) {
    size_t dlen = 0;
    const char *dev = engine_session_device(s, &dlen);
    return (store_room_conn_t){
        .sid = sid, .device = dev ? dev : "unknown", .device_len = dev ? dlen : 7};
}

int rooms_join(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t metadata, rooms_state_cb cb,
               void *arg) {
    if (!engine_session_client(s))
        return PD_ECLOSED;
    struct rlink *l = find_link(s, channel);
    bool fresh_link = !l;
    if (!l) {
        if (count_links(s) >= r->cfg.max_per_conn)
            return PD_ELIMIT;
        struct lroom *lr = get_room(r, channel);
        if (!lr)
            return PD_ENOMEM;
        pd_str_t user = engine_session_user(s);
        l = calloc(1, sizeof(*l) + user.len + 1);
        if (!l) {
            maybe_free_room(r, lr);
            return PD_ENOMEM;
        }
        l->owner = r;
        l->room = lr;
        l->s = s;
        l->sid = engine_session_id(s);
        memcpy((char *)(l + 1), user.s, user.len);
        l->user = (pd_str_t){(const char *)(l + 1), user.len};
        l->typing = -1;
        wheel_timer_init(&l->timer, link_timer);
        lr->refs++;
        (*r->n.links)++;
        if (!lr->watched) {
            if (store_room_watch(r->store, channel) != 0) {
                l->s = NULL;
                maybe_free_link(l);
                return PD_EUNAVAIL;
            }
            lr->watched = true;
        }
        /* Attached before the store call: events of others from now on reach it. */
        link_attach(lr, l);
        l->s_next = *engine_session_rooms(s);
        *engine_session_rooms(s) = l;
    }
    struct rreq *q = calloc(1, sizeof(*q));
    if (!q) {
        if (fresh_link) {
            link_release(l);
            maybe_free_link(l);
        }
        return PD_ENOMEM;
    }
    q->r = r;
    q->link = l;
    q->state = cb;
    q->arg = arg;
    q->fresh = fresh_link;
    remember_md(l, metadata);
    l->pending++;
    store_room_conn_t c = conn_of(s, l->sid);
    int rc =
        store_room_join(r->store, channel, l->user, &c, metadata, r->cfg.max_members, joined, q);
    if (rc == PD_ELIMIT)
        rc = PD_ETOOBIG; /* the member's connections in the room, not this connection's rooms */
    if (rc) {
        l->pending--;
        free(q);
        if (fresh_link) {
            link_release(l);
            maybe_free_link(l);
        }
    }
    return rc;
}

static void left(void *arg, int err, bool lingering) {
    struct rreq *q = arg;
    struct rlink *l = q->link;
    rooms_t *r = q->r;
    l->pending--;
    if (lingering) {
        set_lingering(l, true);
        wheel_schedule(r->wheel, &l->timer, now_ms(r) + r->cfg.offline_grace_ms);
    }
    if (q->done)
        q->done(q->arg, err == PD_ENOTFOUND ? 0 : err);
    free(q);
    maybe_free_link(l);
}

static int leave_link(rooms_t *r, struct rlink *l, int mode, int reason, engine_done_cb done,
                      void *arg) {
    struct rreq *q = calloc(1, sizeof(*q));
    if (!q)
        return PD_ENOMEM;
    q->r = r;
    q->link = l;
    q->done = done;
    q->arg = arg;
    l->pending++;
    int rc = store_room_leave(r->store, room_name(l->room), l->user, l->sid, mode, reason, left, q);
    if (rc) {
        l->pending--;
        free(q);
    }
    return rc;
}

int rooms_leave(rooms_t *r, session_t *s, pd_str_t channel, engine_done_cb done, void *arg) {
    struct rlink *l = find_link(s, channel);
    if (!l)
        return PD_ENOTFOUND;
    l->pending++; /* held across the release and the store call */
    link_release(l);
    int rc = leave_link(r, l, STORE_REMOVE_NOW, STORE_LEFT, done, arg);
    if (rc == 0)
        (*r->n.leaves)++;
    l->pending--;
    maybe_free_link(l);
    return rc;
}

static void updated(void *arg, int err) {
    struct rreq *q = arg;
    struct rlink *l = q->link;
    l->pending--;
    if (q->done)
        q->done(q->arg, err);
    free(q);
    maybe_free_link(l);
}

int rooms_update(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t metadata, engine_done_cb done,
                 void *arg) {
    struct rlink *l = find_link(s, channel);
    if (!l)
        return PD_ENOTFOUND;
    struct rreq *q = calloc(1, sizeof(*q));
    if (!q)
        return PD_ENOMEM;
    q->r = r;
    q->link = l;
    q->done = done;
    q->arg = arg;
    remember_md(l, metadata);
    l->pending++;
    int rc = store_room_update(r->store, channel, l->user, metadata, updated, q);
    if (rc) {
        l->pending--;
        free(q);
    }
    return rc;
}

/* Sends what the link holds back (latest cursor, latest typing); the next period starts at
 * `at`: the time the send was due, not the (later) tick that ran it, or a client sending at
 * exactly cursor_hz would drift to fewer relays and more latency with every period. */
static void emit(struct rlink *l, uint64_t at) {
    rooms_t *r = l->owner;
    l->last_emit = at;
    if (l->cursor.s) {
        store_room_signal(r->store, room_name(l->room), l->user, STORE_SIGNAL_CURSOR, l->cursor);
        free((char *)l->cursor.s);
        l->cursor = (pd_str_t){0};
    }
    if (l->typing >= 0) {
        pd_str_t v = l->typing ? (pd_str_t){"true", 4} : (pd_str_t){"false", 5};
        store_room_signal(r->store, room_name(l->room), l->user, STORE_SIGNAL_TYPING, v);
        l->typing = -1;
    }
}

/* In microseconds, rounded up: at most cursor_hz relays a second. Whole milliseconds (34 for
 * 30 Hz) made a client sending at exactly 30 Hz always early, each value held for a period. */
static uint64_t signal_period(const rooms_t *r) {
    uint32_t hz = r->cfg.cursor_hz ? r->cfg.cursor_hz : 1;
    return (1000000 + hz - 1) / hz;
}

static void link_timer(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct rlink *l = (struct rlink *)((char *)t - offsetof(struct rlink, timer));
    rooms_t *r = l->owner;
    if (l->lingering) {
        /* The grace window passed: the member's last connection leaves for good. */
        set_lingering(l, false);
        if (leave_link(r, l, STORE_REMOVE_FINAL, STORE_LEFT_DISCONNECTED, NULL, NULL) != 0)
            maybe_free_link(l);
        return;
    }
    if (l->live)
        emit(l, l->last_emit + signal_period(r));
}

static uint64_t us_to_ms_ceil(uint64_t due_us) {
    return (due_us + 999) / 1000;
}

int rooms_signal(rooms_t *r, session_t *s, pd_str_t channel, int signal, pd_str_t payload) {
    struct rlink *l = find_link(s, channel);
    if (!l)
        return PD_ENOTFOUND;
    (*r->n.signals_in)++;
    /* Keep only the latest value; an earlier one not yet sent is replaced. */
    if (signal == STORE_SIGNAL_CURSOR) {
        char *copy = malloc(payload.len + 1);
        if (!copy)
            return PD_ENOMEM;
        memcpy(copy, payload.s, payload.len);
        copy[payload.len] = '\0';
        if (l->cursor.s)
            (*r->n.signals_coalesced)++;
        free((char *)l->cursor.s);
        l->cursor = (pd_str_t){copy, payload.len};
    } else {
        if (l->typing >= 0)
            (*r->n.signals_coalesced)++;
        l->typing = (int8_t)(payload.len == 4); /* "true" */
    }
    uint64_t period = signal_period(r);
    /* A value a hair early (the loop clock counts whole milliseconds; a client's timer
     * jitters) goes out now as if on time instead of a timer tick later. The schedule keeps
     * its pace: on average never more than cursor_hz relays a second. */
    uint64_t slack = period / 16 < 2000 ? period / 16 : 2000;
    uint64_t now = now_ms(r) * 1000, due = l->last_emit + period;
    if (wheel_timer_armed(&l->timer))
        return 0; /* the period's end sends the latest */
    if (l->last_emit == 0 || now >= due + period)
        emit(l, now); /* a pause: a new schedule starts now */
    else if (now >= due)
        emit(l, due); /* a value a little late keeps the schedule, or the next one, on time,
                       * would look early and wait for a tick */
    else if (now + slack >= due)
        emit(l, due);
    else
        wheel_schedule(r->wheel, &l->timer, us_to_ms_ceil(due));
    return 0;
}

static void members_done(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                         bool more) {
    struct rreq *q = arg;
    q->members(q->arg, err, ms, n, count, more);
    free(q);
}

int rooms_members(rooms_t *r, pd_str_t channel, pd_str_t after, uint32_t limit, rooms_members_cb cb,
                  void *arg) {
    struct rreq *q = calloc(1, sizeof(*q));
    if (!q)
        return PD_ENOMEM;
    q->r = r;
    q->members = cb;
    q->arg = arg;
    int rc = store_room_members(r->store, channel, after, limit, members_done, q);
    if (rc)
        free(q);
    return rc;
}

int rooms_count(rooms_t *r, pd_str_t channel, rooms_count_cb cb, void *arg) {
    return store_room_count(r->store, channel, cb, arg);
}

void rooms_session_close(rooms_t *r, session_t *s, int how) {
    struct rlink **head = (struct rlink **)engine_session_rooms(s);
    while (*head) {
        struct rlink *l = *head;
        l->pending++; /* held across the release and the store call */
        link_release(l);
        if (how == ENGINE_END_TIMEOUT)
            leave_link(r, l, STORE_REMOVE_NOW, STORE_LEFT_TIMEOUT, NULL, NULL);
        else if (engine_session_kicked(s)) /* disconnected by a backend: not coming back */
            leave_link(r, l, STORE_REMOVE_NOW, STORE_LEFT_DISCONNECTED, NULL, NULL);
        else
            leave_link(r, l, STORE_REMOVE_GRACE, STORE_LEFT_DISCONNECTED, NULL, NULL);
        l->pending--;
        maybe_free_link(l);
    }
}

void rooms_flush_lingering(rooms_t *r) {
    while (r->lingering) {
        struct rlink *l = r->lingering;
        wheel_cancel(r->wheel, &l->timer);
        link_timer(&l->timer, now_ms(r)); /* ends the grace window now */
    }
}

uint64_t rooms_local_count(const rooms_t *r) {
    return r->rooms.count;
}

static void register_metrics(rooms_t *r, pd_metrics_t *m) {
#define COUNTER(field, name, help)                                                                 \
    do {                                                                                           \
        r->n.field = m ? pd_metrics_counter(m, name, help, NULL, NULL) : NULL;                     \
        if (!r->n.field)                                                                           \
            r->n.field = &dummy_counter;                                                           \
    } while (0)
#define GAUGE(field, name, help)                                                                   \
    do {                                                                                           \
        r->n.field = m ? pd_metrics_gauge(m, name, help, NULL, NULL) : NULL;                       \
        if (!r->n.field)                                                                           \
            r->n.field = &dummy_gauge;                                                             \
    } while (0)
    COUNTER(joins, "presenced_room_joins_total", "Room joins by local connections");
    COUNTER(leaves, "presenced_room_leaves_total", "Explicit room leaves by local connections");
    COUNTER(events, "presenced_room_events_delivered_total",
            "member_joined/left/updated and channel_delta frames queued to local connections");
    COUNTER(deltas, "presenced_room_deltas_total", "channel_delta batches built");
    COUNTER(signals_in, "presenced_room_signals_in_total", "cursor and typing messages received");
    COUNTER(signals_out, "presenced_room_signals_delivered_total",
            "cursor and typing frames queued to local connections");
    COUNTER(signals_coalesced, "presenced_room_signals_coalesced_total",
            "cursor and typing values replaced by a newer one before being sent");
    GAUGE(links, "presenced_room_connections", "(connection, room) pairs on this node");
    GAUGE(rooms, "presenced_rooms_local", "Rooms with connections on this node");
#undef COUNTER
#undef GAUGE
}

static void resync_joined(void *arg, int err, const pd_member_t *me, bool fresh, uint32_t count) {
    (void)err;
    (void)me;
    (void)fresh;
    (void)count;
    struct rlink *l = arg;
    l->pending--;
    maybe_free_link(l);
}

/* The store's backend came back: every live connection here joins its rooms again, with the
 * metadata it set (the backend may have lost them, or swept them as a dead node's). */
static void on_room_resync(void *ctx) {
    rooms_t *r = ctx;
    for (hmap_node_t *h = hmap_first(&r->rooms); h; h = hmap_next(&r->rooms, h)) {
        struct lroom *lr = (struct lroom *)h;
        for (struct rlink *l = lr->links; l; l = l->r_next) {
            if (!l->s)
                continue;
            store_room_conn_t c = conn_of(l->s, l->sid);
            l->pending++;
            if (store_room_join(r->store, room_name(lr), l->user, &c, l->md, r->cfg.max_members,
                                resync_joined, l) != 0)
                l->pending--;
        }
    }
}

rooms_t *rooms_new(const rooms_config_t *cfg, engine_t *engine, store_t *store, wheel_t *wheel,
                   const pd_clock_t *clock, const pd_hashkey_t *key, const rooms_codec_t *codec,
                   pd_log_t *log, pd_metrics_t *metrics) {
    rooms_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->cfg = *cfg;
    r->engine = engine;
    r->store = store;
    r->wheel = wheel;
    r->clock = *clock;
    r->key = key;
    r->ops = *engine_client_ops(engine);
    r->codec = *codec;
    r->log = log;
    if (hmap_init(&r->rooms, 64)) {
        free(r);
        return NULL;
    }
    register_metrics(r, metrics);
    store_listen_rooms(store, r, on_room_event, on_room_caused, on_room_resync);
    return r;
}

void rooms_set_events(rooms_t *r, events_t *events) {
    r->events = events;
}

void rooms_free(rooms_t *r) {
    if (!r)
        return;
    rooms_flush_lingering(r);
    store_listen_rooms(r->store, NULL, NULL, NULL, NULL);
    /* Every connection is closed by now; what is left is rooms whose links wait for nothing. */
    for (hmap_node_t *n = hmap_first(&r->rooms); n;) {
        struct lroom *lr = (struct lroom *)n;
        n = hmap_next(&r->rooms, n);
        wheel_cancel(r->wheel, &lr->timer);
        drop_pending(lr);
        hmap_destroy(&lr->pending);
        hmap_remove(&r->rooms, &lr->node);
        free(lr);
    }
    hmap_destroy(&r->rooms);
    free(r);
}
