/* Local room state, event delivery (per event or batched), and signal throttling.
 *
 * Lifetimes: a struct lroom lives while links refer to it (live links of open connections,
 * and lingering links of closed ones waiting out their grace window); the store is asked for
 * the room's events while it has live links. A link is freed once its connection left the
 * room (or its grace window ended) and no store call of its is in flight. A struct ruser (a
 * local user with links) lives while links or privacy reads refer to it.
 *
 * Privacy (ARCHITECTURE.md section 2, the rule: R may see T iff T does not block R; rooms
 * override visibility, not blocks): every room message about a member T (member events,
 * cursor, typing) carries T's hide list, the users T blocks, as T's node knows it; each node
 * leaves those users' connections out as it delivers (a binary search per recipient, and
 * only when the list is not empty), so a cursor costs no store call. T's node holds the
 * list in T's struct ruser: read before T's first join goes to the store, changed at once
 * by the store's room_privacy announcement of a block or unblock this node made (before the
 * call's answer), read again on any other change; each change is written to the rooms T is
 * in (store_room_hide), whose members then see T appear or disappear (STORE_ROOM_HIDDEN).
 */
#include "rooms/rooms.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

enum { MODE_ANNOUNCE, MODE_INTERVAL };
static const char *const mode_names[] = {"announce", "interval"};

/* A member's change not yet sent, in a room in interval mode. */
struct dentry {
    hmap_node_t node;
    pd_obuf_t *json;   /* the member's latest JSON, when a member now */
    store_hide_t hide; /* whom the member is hidden from, as of the latest change (owned) */
    uint8_t was_member, is_member;
    uint16_t id_len;
    char id[];
};

/* A local user with links: whom they are hidden from (see the file head). */
struct ruser {
    hmap_node_t node;
    pd_str_t *hide; /* sorted, distinct, one allocation; NULL when empty */
    uint32_t nhide;
    uint32_t refs;       /* links and privacy reads */
    uint32_t gen;        /* changes applied since loaded: a read older than one is stale */
    struct rlink *links; /* the user's links here, live and lingering, through u_next */
    bool loaded;
    bool watched; /* store_watch of the user, for its room_privacy announcements */
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
    bool marked;    /* scratch of write_hide: the room has been written to */
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
    struct ruser *u;      /* a reference: store calls may outlive the session */
    struct rlink *u_next; /* in u->links */
    pd_str_t user;        /* u's id */
};

struct rooms_counters {
    uint64_t *joins, *leaves, *revoked, *events, *deltas, *signals_in, *signals_out,
        *signals_coalesced;
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
    hmap_t users;            /* user -> struct ruser */
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
    bool fresh;        /* join: the link was made for this request */
    pd_str_t metadata; /* join waiting for its user's hide list: the metadata (owned) */
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

/* --- Users and their hide lists --- */

static bool ruser_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct ruser *u = (const struct ruser *)n;
    return u->id_len == len && memcmp(u->id, key, len) == 0;
}

static struct ruser *find_ruser(rooms_t *r, pd_str_t user) {
    return (struct ruser *)hmap_find(&r->users, pd_hash(r->key, user.s, user.len), user.s, user.len,
                                     ruser_eq);
}

static struct ruser *get_ruser(rooms_t *r, pd_str_t user) {
    struct ruser *u = find_ruser(r, user);
    if (!u) {
        u = calloc(1, sizeof(*u) + user.len + 1);
        if (!u)
            return NULL;
        u->id_len = (uint16_t)user.len;
        memcpy(u->id, user.s, user.len);
        hmap_insert(&r->users, &u->node, pd_hash(r->key, user.s, user.len));
        /* Changes of the user's blocked list made elsewhere reach this node through it. */
        u->watched = store_watch(r->store, user) == 0;
    }
    u->refs++;
    return u;
}

static void put_ruser(rooms_t *r, struct ruser *u) {
    if (--u->refs)
        return;
    if (u->watched)
        store_unwatch(r->store, (pd_str_t){u->id, u->id_len});
    hmap_remove(&r->users, &u->node);
    free(u->hide);
    free(u);
}

static store_hide_t hide_of(const struct ruser *u) {
    return (store_hide_t){u->hide, u->nhide};
}

static void write_hide(rooms_t *r, struct ruser *u);

/* Makes ids (any order) the user's hide list; once loaded, a change is written to the
 * user's rooms. */
static int set_user_hide(rooms_t *r, struct ruser *u, const pd_str_t *ids, uint32_t n) {
    pd_str_t *sorted = malloc(sizeof(*sorted) * n + 1);
    if (!sorted)
        return PD_ENOMEM;
    if (n) {
        memcpy(sorted, ids, sizeof(*sorted) * n);
        store_hide_sort(sorted, n);
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (k == 0 || store_hide_cmp(sorted[k - 1], sorted[i]) != 0)
            sorted[k++] = sorted[i];
    store_hide_t next = {sorted, k}, now = hide_of(u);
    if (u->loaded && store_hide_equal(&now, &next)) {
        free(sorted);
        return 0;
    }
    bool failed;
    pd_str_t *copy = store_hide_dup(&next, &failed);
    free(sorted);
    if (failed)
        return PD_ENOMEM;
    free(u->hide);
    u->hide = copy;
    u->nhide = k;
    if (!u->loaded) {
        u->loaded = true;
        return 0;
    }
    u->gen++;
    write_hide(r, u);
    return 0;
}

/* A block or unblock this node just made: applied now, before its answer reaches anyone. */
static void apply_delta(rooms_t *r, struct ruser *u, int op, pd_str_t other) {
    pd_str_t *ids = malloc(sizeof(*ids) * (u->nhide + 1));
    if (!ids)
        return;
    uint32_t n = 0;
    for (uint32_t i = 0; i < u->nhide; i++)
        if (!str_eq(u->hide[i], other))
            ids[n++] = u->hide[i];
    if (op == STORE_PRIV_BLOCK)
        ids[n++] = other;
    set_user_hide(r, u, ids, n);
    free(ids);
}

struct rreq;
static void join_go(struct rreq *q, int err);

/* A read of a user's blocked list; join: the join waiting for it. */
struct pread {
    rooms_t *r;
    struct ruser *u;
    uint32_t gen;
    struct rreq *join;
};

static void privacy_read(void *arg, int err, const store_privacy_t *p) {
    struct pread *pr = arg;
    rooms_t *r = pr->r;
    struct ruser *u = pr->u;
    /* An answer older than a change applied since is stale: the change stands. */
    if (!err && (!u->loaded || pr->gen == u->gen))
        err = set_user_hide(r, u, p->blocked, p->nblocked);
    if (pr->join)
        join_go(pr->join, u->loaded ? 0 : err ? err : PD_EIO);
    put_ruser(r, u);
    free(pr);
}

static int read_hide(rooms_t *r, struct ruser *u, struct rreq *join) {
    struct pread *pr = calloc(1, sizeof(*pr));
    if (!pr)
        return PD_ENOMEM;
    *pr = (struct pread){.r = r, .u = u, .gen = u->gen, .join = join};
    u->refs++;
    int rc = store_privacy_get(r->store, (pd_str_t){u->id, u->id_len}, privacy_read, pr);
    if (rc) {
        u->refs--;
        free(pr);
    }
    return rc;
}

static void on_room_privacy(void *ctx, pd_str_t user, int op, pd_str_t other) {
    rooms_t *r = ctx;
    struct ruser *u = find_ruser(r, user);
    if (!u)
        return;
    if (u->loaded && other.s && (op == STORE_PRIV_BLOCK || op == STORE_PRIV_UNBLOCK))
        apply_delta(r, u, op, other);
    else if (op < 0 || !u->loaded)
        read_hide(r, u, NULL); /* failed: the next change or resync reads it */
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
        free((void *)d->hide.ids);
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

static bool send_link(struct rlink *l, pd_obuf_t *frame) {
    void *client = frame ? engine_session_client(l->s) : NULL;
    return client && l->owner->ops.send(client, frame) == 0;
}

/* Sends frame (taking its reference) to the room's connections, except those of user (when
 * given) and those of the users in hide. Returns how many it was queued to. */
static uint64_t deliver(struct lroom *lr, pd_obuf_t *frame, pd_str_t except,
                        const store_hide_t *hide) {
    uint64_t sent = 0;
    if (!frame)
        return 0;
    bool filter = hide && hide->n;
    for (struct rlink *l = lr->links; l; l = l->r_next) {
        if (except.s && str_eq(l->user, except))
            continue;
        if (filter && store_hide_has(hide, l->user))
            continue; /* the member blocks this user: nothing of theirs reaches them */
        sent += send_link(l, frame);
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
    free((void *)d->hide.ids);
    bool failed;
    d->hide.ids = store_hide_dup(&ev->hide, &failed);
    d->hide.n = failed ? 0 : ev->hide.n;
    d->is_member = ev->kind != STORE_ROOM_LEFT;
    if (failed) /* whom to hide it from is not known: nobody is told of it */
        d->is_member = d->was_member;
    else if (d->is_member)
        d->json = r->codec.member_json(ev->member);
    if (!wheel_timer_armed(&lr->timer))
        wheel_schedule(r->wheel, &lr->timer, now_ms(r) + r->cfg.interval_ms);
}

/* A delta lists at most this many bytes of members (joined and updated) and of left ids; the
 * rest is only counted ("joined_more" ...): a storm of 10,000 joins made one 1.1 MB delta per
 * member, past out-max, and every member was closed as a slow consumer. */
#define DELTA_MEMBER_BYTES (64 * 1024)
#define DELTA_LEFT_BYTES   (32 * 1024)

/* The delta of the pending changes as viewer sees them (viewer.s NULL: all of them); NULL
 * when there is nothing to tell. The arrays have room for every pending change. */
static pd_obuf_t *build_delta(struct lroom *lr, pd_str_t viewer, pd_str_t *joined, pd_str_t *left,
                              pd_str_t *updated) {
    rooms_t *r = lr->owner;
    size_t nj = 0, nl = 0, nu = 0, member_bytes = 0, left_bytes = 0;
    uint32_t more[3] = {0};
    for (hmap_node_t *hn = hmap_first(&lr->pending); hn; hn = hmap_next(&lr->pending, hn)) {
        struct dentry *d = (struct dentry *)hn;
        if (viewer.s && store_hide_has(&d->hide, viewer))
            continue;
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
    if (nj + nl + nu + more[0] + more[1] + more[2] == 0)
        return NULL;
    (*r->n.deltas)++;
    return r->codec.delta(room_name(lr), joined, nj, left, nl, updated, nu, more, lr->count);
}

/* Whether a pending change is hidden from user. */
static bool delta_hides(struct lroom *lr, pd_str_t user) {
    for (hmap_node_t *hn = hmap_first(&lr->pending); hn; hn = hmap_next(&lr->pending, hn))
        if (store_hide_has(&((struct dentry *)hn)->hide, user))
            return true;
    return false;
}

static void flush_delta(struct lroom *lr) {
    rooms_t *r = lr->owner;
    size_t n = lr->pending.buckets ? lr->pending.count : 0;
    if (n == 0)
        return;
    pd_str_t *joined = malloc(sizeof(pd_str_t) * n), *left = malloc(sizeof(pd_str_t) * n),
             *updated = malloc(sizeof(pd_str_t) * n);
    if (joined && left && updated) {
        bool any_hide = false;
        for (hmap_node_t *hn = hmap_first(&lr->pending); hn && !any_hide;
             hn = hmap_next(&lr->pending, hn))
            any_hide = ((struct dentry *)hn)->hide.n > 0;
        pd_obuf_t *all = build_delta(lr, (pd_str_t){0}, joined, left, updated);
        if (!any_hide) {
            (*r->n.events) += deliver(lr, all, (pd_str_t){0}, NULL);
        } else {
            /* Someone changed is hidden from some members: those get a delta of their own. */
            for (struct rlink *l = lr->links; l; l = l->r_next) {
                if (!delta_hides(lr, l->user)) {
                    (*r->n.events) += send_link(l, all);
                    continue;
                }
                pd_obuf_t *mine = build_delta(lr, l->user, joined, left, updated);
                (*r->n.events) += send_link(l, mine);
                pd_obuf_release(mine);
            }
            pd_obuf_release(all);
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
    if (ev->kind == STORE_ROOM_SIGNAL || ev->kind == STORE_ROOM_HIDDEN)
        return;
    events_publish(r->events, &(pd_event_t){.kind = kinds[ev->kind],
                                            .reason = ev->reason,
                                            .count = ev->count,
                                            .user = ev->user,
                                            .room = ev->room,
                                            .member = ev->member});
}

/* The member's hide list changed: the users it now hides from see them leave (as if they
 * left: nothing tells a block from a leave), those it shows itself to again see them join.
 * A change of theirs not yet sent in a delta goes by the new list. */
static void on_hidden(struct lroom *lr, const store_room_event_t *ev) {
    rooms_t *r = lr->owner;
    if (lr->pending.buckets) {
        struct dentry *d =
            (struct dentry *)hmap_find(&lr->pending, pd_hash(r->key, ev->user.s, ev->user.len),
                                       ev->user.s, ev->user.len, dentry_eq);
        bool failed;
        pd_str_t *copy = d ? store_hide_dup(&ev->hide, &failed) : NULL;
        if (d && !failed) {
            free((void *)d->hide.ids);
            d->hide = (store_hide_t){copy, ev->hide.n};
        }
    }
    pd_obuf_t *gone = NULL, *back = NULL;
    for (struct rlink *l = lr->links; l && ev->changed.n; l = l->r_next) {
        if (str_eq(l->user, ev->user) || !store_hide_has(&ev->changed, l->user))
            continue;
        pd_obuf_t **f = store_hide_has(&ev->hide, l->user) ? &gone : &back;
        if (!*f)
            *f = f == &gone
                     ? r->codec.member_left(ev->room, ev->user, "left", lr->count)
                     : r->codec.member_event("member_joined", ev->room, ev->member, lr->count);
        (*r->n.events) += send_link(l, *f);
    }
    pd_obuf_release(gone);
    pd_obuf_release(back);
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
        (*r->n.signals_out) += deliver(lr, f, ev->user, &ev->hide);
        return;
    }
    if (ev->kind == STORE_ROOM_HIDDEN) {
        on_hidden(lr, ev);
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
        f = r->codec.member_left(ev->room, ev->user, events_reason_name(ev->reason), ev->count);
    else
        f = r->codec.member_event(ev->kind == STORE_ROOM_JOINED ? "member_joined"
                                                                : "member_updated",
                                  ev->room, ev->member, ev->count);
    (*r->n.events) += deliver(lr, f, ev->user, &ev->hide);
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
    for (struct rlink **p = &l->u->links; *p; p = &(*p)->u_next) {
        if (*p == l) {
            *p = l->u_next;
            break;
        }
    }
    put_ruser(r, l->u);
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

static void send_frame(rooms_t *r, void *client, pd_obuf_t *frame) {
    if (frame) {
        r->ops.send(client, frame);
        pd_obuf_release(frame);
    }
}

/* The user's hide list changed: the rooms they are in here learn it (each node of theirs
 * writes it; the store announces a change once). Once per room the user is live in, through
 * the user's own links: a block costs what the user's rooms cost, not every room's links. */
static void write_hide(rooms_t *r, struct ruser *u) {
    store_hide_t hide = hide_of(u);
    for (struct rlink *l = u->links; l; l = l->u_next) {
        if (l->live && !l->room->marked) {
            l->room->marked = true;
            store_room_hide(r->store, room_name(l->room), l->user, &hide);
        }
    }
    for (struct rlink *l = u->links; l; l = l->u_next)
        l->room->marked = false;
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

static void join_fail(struct rreq *q, int err);

static void joined(void *arg, int err, const pd_member_t *me, bool fresh, uint32_t count) {
    (void)me;
    (void)fresh;
    struct rreq *q = arg;
    struct rlink *l = q->link;
    rooms_t *r = q->r;
    if (err) {
        join_fail(q, err);
        return;
    }
    update_mode(l->room, count);
    (*r->n.joins)++;
    /* The answer carries the first page of members; the link stays pending until it is in. */
    int rc = store_room_members(r->store, room_name(l->room), l->user, (pd_str_t){0},
                                r->cfg.state_members, members_for_state, q);
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

static store_room_conn_t conn_of(const struct rlink *l) {
    size_t dlen = 0;
    const char *dev = engine_session_device(l->s, &dlen);
    return (store_room_conn_t){.sid = l->sid,
                               .device = dev ? dev : "unknown",
                               .device_len = dev ? dlen : 7,
                               .hide = hide_of(l->u)};
}

static void join_fail(struct rreq *q, int err) {
    struct rlink *l = q->link;
    l->pending--;
    q->state(q->arg, err == PD_ELIMIT ? PD_ETOOBIG : err, NULL, NULL, 0, 0, false);
    if (q->fresh)
        link_release(l);
    free((char *)q->metadata.s);
    free(q);
    maybe_free_link(l);
}

static int join_send(struct rreq *q, pd_str_t metadata) {
    struct rlink *l = q->link;
    rooms_t *r = q->r;
    store_room_conn_t c = conn_of(l);
    return store_room_join(r->store, room_name(l->room), l->user, &c, metadata, r->cfg.max_members,
                           joined, q);
}

/* The joiner's hide list is in (err 0): the join goes to the store, unless the connection
 * left the room (or closed) meanwhile. */
static void join_go(struct rreq *q, int err) {
    struct rlink *l = q->link;
    if (!err && (!l->live || !l->s))
        err = PD_ECLOSED;
    pd_str_t md = q->metadata;
    q->metadata = (pd_str_t){0}; /* the store copies what it keeps */
    if (!err)
        err = join_send(q, md);
    free((char *)md.s);
    if (err)
        join_fail(q, err);
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
        l = calloc(1, sizeof(*l));
        struct ruser *u = l ? get_ruser(r, engine_session_user(s)) : NULL;
        if (!u) {
            free(l);
            maybe_free_room(r, lr);
            return PD_ENOMEM;
        }
        l->owner = r;
        l->room = lr;
        l->s = s;
        l->sid = engine_session_id(s);
        l->u = u;
        l->u_next = u->links;
        u->links = l;
        l->user = (pd_str_t){u->id, u->id_len};
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
    int rc;
    if (l->u->loaded) {
        rc = join_send(q, metadata);
    } else {
        /* Nothing of the joiner goes out before it is known whom to hide it from. */
        if (metadata.s) {
            char *md = malloc(metadata.len + 1);
            if (md) {
                memcpy(md, metadata.s, metadata.len);
                md[metadata.len] = '\0';
            }
            q->metadata = (pd_str_t){md, metadata.len};
        }
        rc = metadata.s && !q->metadata.s ? PD_ENOMEM : read_hide(r, l->u, q);
    }
    if (rc == PD_ELIMIT)
        rc = PD_ETOOBIG; /* the member's connections in the room, not this connection's rooms */
    if (rc) {
        l->pending--;
        free((char *)q->metadata.s);
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
    store_hide_t hide = hide_of(l->u);
    l->last_emit = at;
    if (l->cursor.s) {
        store_room_signal(r->store, room_name(l->room), l->user, STORE_SIGNAL_CURSOR, l->cursor,
                          &hide);
        free((char *)l->cursor.s);
        l->cursor = (pd_str_t){0};
    }
    if (l->typing >= 0) {
        pd_str_t v = l->typing ? (pd_str_t){"true", 4} : (pd_str_t){"false", 5};
        store_room_signal(r->store, room_name(l->room), l->user, STORE_SIGNAL_TYPING, v, &hide);
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
    if (!l->u->loaded)
        return 0; /* its join is not in yet: whom to hide it from is not known */
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
    int rc = store_room_members(r->store, channel, (pd_str_t){0}, after, limit, members_done, q);
    if (rc)
        free(q);
    return rc;
}

int rooms_count(rooms_t *r, pd_str_t channel, rooms_count_cb cb, void *arg) {
    return store_room_count(r->store, channel, cb, arg);
}

int rooms_session_members(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t after,
                          uint32_t limit, rooms_members_cb cb, void *arg) {
    struct rlink *l = find_link(s, channel);
    if (!l)
        return PD_ENOTFOUND; /* members only: the room is shown to the room */
    struct rreq *q = calloc(1, sizeof(*q));
    if (!q)
        return PD_ENOMEM;
    q->r = r;
    q->members = cb;
    q->arg = arg;
    int rc = store_room_members(r->store, channel, l->user, after, limit, members_done, q);
    if (rc)
        free(q);
    return rc;
}

int rooms_session_count(rooms_t *r, session_t *s, pd_str_t channel, rooms_count_cb cb, void *arg) {
    if (!find_link(s, channel))
        return PD_ENOTFOUND;
    return store_room_count(r->store, channel, cb, arg);
}

void rooms_revoke(rooms_t *r, session_t *s, const auth_claims_t *claims) {
    void *client = engine_session_client(s);
    for (struct rlink *l = *engine_session_rooms(s), *next; l; l = next) {
        next = l->s_next;
        pd_str_t name = room_name(l->room);
        if (auth_channel_allowed(claims, name.s, name.len))
            continue;
        if (client)
            send_frame(r, client,
                       r->codec.signal("channel_left", name, l->user, "reason",
                                       (pd_str_t){"\"revoked\"", 9}));
        l->pending++; /* held across the release and the store call */
        link_release(l);
        leave_link(r, l, STORE_REMOVE_NOW, STORE_LEFT_REVOKED, NULL, NULL);
        (*r->n.revoked)++;
        l->pending--;
        maybe_free_link(l);
    }
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
    COUNTER(revoked, "presenced_room_revocations_total",
            "Rooms left because a refreshed token no longer allowed them");
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
            store_room_conn_t c = conn_of(l);
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
    if (hmap_init(&r->rooms, 64) || hmap_init(&r->users, 64)) {
        hmap_destroy(&r->rooms);
        free(r);
        return NULL;
    }
    register_metrics(r, metrics);
    store_listen_rooms(store, r, on_room_event, on_room_caused, on_room_resync, on_room_privacy);
    return r;
}

void rooms_set_events(rooms_t *r, events_t *events) {
    r->events = events;
}

void rooms_free(rooms_t *r) {
    if (!r)
        return;
    rooms_flush_lingering(r);
    store_listen_rooms(r->store, NULL, NULL, NULL, NULL, NULL);
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
    for (hmap_node_t *n = hmap_first(&r->users); n;) {
        struct ruser *u = (struct ruser *)n;
        n = hmap_next(&r->users, n);
        hmap_remove(&r->users, &u->node);
        free(u->hide);
        free(u);
    }
    hmap_destroy(&r->users);
    free(r);
}
