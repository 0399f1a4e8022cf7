#include "store/store_local.h"

#include <stdlib.h>
#include <string.h>

#include "privacy/privacy.h"
#include "util/error.h"
#include "util/istr.h"

#define LAST_SEEN_FLUSH_MS  1000  /* write-behind period of last_seen */
#define LAST_SEEN_FLUSH_MAX 20000 /* rows per flush: one write of the writer thread */

struct ls_session {
    struct ls_session *next;
    uint64_t sid;
    uint64_t touched; /* store sequence number of its last upsert: the most recent wins */
    const pd_istr_t *device;
    uint8_t status;
    uint8_t lingering;
};

struct ls_expiry {
    wheel_timer_t timer;
    struct store_local *st;
    struct ls_user *user;
};

/* A user id in a contact or block list. */
struct ls_name {
    hmap_node_t node;
    uint16_t len;
    char s[];
};

/* Privacy settings, allocated only for users who changed the defaults. */
struct ls_privacy {
    uint8_t visibility;
    hmap_t contacts, blocked;
};

struct ls_user {
    hmap_node_t node;
    struct ls_session *sessions;
    struct ls_privacy *priv; /* NULL: everyone, no contacts, nobody blocked */
    char *custom_status;     /* NULL when unset */
    char *activity;
    double custom_status_expires; /* epoch seconds, 0 = never */
    double activity_expires;
    double server_status_expires;
    struct ls_expiry *expiry; /* armed while any of the three expiries is set */
    const pd_istr_t *last_device;
    double last_seen;
    uint64_t version;
    uint32_t pending; /* durable writes of this user not yet called back: kept till then */
    uint16_t nsessions;
    uint16_t id_len;
    uint8_t dirty : 1;         /* last_seen not yet written */
    uint8_t unsaved : 1;       /* a write of this user failed: memory is ahead of the file */
    uint8_t server_status : 2; /* a backend's claim (PD_ONLINE/AWAY/BUSY) merged with live
                                  sessions; 0 when none */
    char id[];
};

/* Rooms: a member per user, with the connections that keep them in the room. */
struct lr_conn {
    struct lr_conn *next;
    uint64_t sid;
    const pd_istr_t *device;
    uint8_t lingering;
};

struct lr_member {
    hmap_node_t node; /* in room->members */
    struct lr_conn *conns;
    char *metadata;
    uint32_t metadata_len;
    uint32_t nconns;
    double joined_at, last_seen;
    pd_str_t *hide; /* the member's hide list (store_hide_t), one allocation; NULL: empty */
    uint32_t nhide;
    uint16_t id_len;
    char id[];
};

struct lr_room {
    hmap_node_t node; /* in store_local.rooms */
    hmap_t members;
    struct lr_member **sorted; /* by user id, bytewise: pagination order */
    uint32_t count, cap;
    uint16_t name_len;
    char name[];
};

struct store_local {
    store_t base;
    hmap_t users;
    hmap_t rooms;
    istr_table_t labels;
    const pd_hashkey_t *key;
    wheel_t *wheel;
    pd_clock_t clock;
    uint64_t seq;
    persist_t *persist; /* NULL: memory only */
    pd_log_t *log;
    uint64_t by_status[PD_BUSY + 1]; /* users by aggregate status (metrics) */
    uint64_t members;                /* members summed over rooms (metrics) */
    struct ls_user **dirty;          /* users whose last_seen awaits the next flush */
    size_t ndirty, dirty_cap;
    wheel_timer_t flush_timer;
    bool shut; /* store_shutdown ran: durable changes are refused (PD_ECLOSED) */
};

/* What a durable write calls back, on the loop, once its group is committed. */
enum ls_write_kind {
    LW_QUIET,    /* nobody to answer (an expiry) */
    LW_DONE,     /* store_done_cb */
    LW_PRESENCE, /* store_presence_cb, with the user's presence as of the commit */
    LW_REPAIR,   /* a snapshot of a user whose earlier write failed */
    LW_SEEN      /* a last_seen flush of nusers users */
};

struct ls_write {
    struct store_local *st;
    struct ls_user *u; /* held (u->pending) until the callback; NULL for LW_SEEN */
    uint8_t kind;      /* enum ls_write_kind */
    store_done_cb done;
    store_presence_cb presence;
    void *arg;
    size_t nusers;
    struct ls_user *users[]; /* LW_SEEN: each held */
};

/* What a watcher can see, to tell whether a change is visible. */
/* What a watcher can see of a user's sessions, to tell whether a change is visible. The
 * device labels are held by reference while a change is made, so comparing pointers stays
 * valid even if a label was freed and another allocated at its address meanwhile. (Text
 * fields are compared by apply_fields, which knows their old and new values.) */
struct visible {
    uint8_t status;
    uint32_t ndevices;
    const pd_istr_t *devices[PD_SESSIONS_PER_USER_MAX];
};

static void remove_member(struct store_local *st, struct lr_room *r, struct lr_member *m);
static void maybe_evict(struct store_local *st, struct ls_user *u);
static int submit(struct store_local *st, const persist_write_t *pw, struct ls_write *w);
static int collect_set(const hmap_t *set, pd_str_t **out, uint32_t *n);
static void privacy_free(struct ls_privacy *p);
static int cmp_id(const char *a, size_t alen, const char *b, size_t blen);
static void free_room_if_empty(struct store_local *st, struct lr_room *r);

static bool user_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct ls_user *u = (const struct ls_user *)n;
    return u->id_len == len && memcmp(u->id, key, len) == 0;
}

static struct ls_user *find_user(struct store_local *st, pd_str_t id) {
    return (struct ls_user *)hmap_find(&st->users, pd_hash(st->key, id.s, id.len), id.s, id.len,
                                       user_eq);
}

static struct ls_user *get_user(struct store_local *st, pd_str_t id) {
    struct ls_user *u = find_user(st, id);
    if (u)
        return u;
    /* The id starts inside the struct's tail padding: only the bytes it needs are taken (a
     * user record is a per-connection cost; the struct is never copied whole). */
    size_t bytes = offsetof(struct ls_user, id) + id.len + 1;
    u = calloc(1, bytes > sizeof(*u) ? bytes : sizeof(*u));
    if (!u)
        return NULL;
    u->id_len = (uint16_t)id.len;
    memcpy(u->id, id.s, id.len);
    hmap_insert(&st->users, &u->node, pd_hash(st->key, id.s, id.len));
    st->by_status[PD_OFFLINE]++;
    return u;
}

/* last_seen moves in memory at once and reaches the database with the next flush. */
static void mark_dirty(struct store_local *st, struct ls_user *u) {
    if (!st->persist || u->dirty)
        return;
    if (st->ndirty == st->dirty_cap) {
        size_t cap = st->dirty_cap ? st->dirty_cap * 2 : 256;
        struct ls_user **nd = realloc(st->dirty, cap * sizeof(*nd));
        if (!nd)
            return; /* written at the user's next change instead */
        st->dirty = nd;
        st->dirty_cap = cap;
    }
    st->dirty[st->ndirty++] = u;
    u->dirty = 1;
    if (!wheel_timer_armed(&st->flush_timer))
        wheel_schedule(st->wheel, &st->flush_timer, pd_clock_ms(&st->clock) + LAST_SEEN_FLUSH_MS);
}

static void touch_last_seen(struct store_local *st, struct ls_user *u) {
    u->last_seen = pd_clock_wall(&st->clock);
    mark_dirty(st, u);
}

static const char *last_device(const struct ls_user *u) {
    const struct ls_session *latest = NULL;
    for (const struct ls_session *s = u->sessions; s; s = s->next)
        if (!latest || s->touched > latest->touched)
            latest = s;
    return latest ? latest->device->s : u->last_device ? u->last_device->s : NULL;
}

/* The oldest LAST_SEEN_FLUSH_MAX dirty users go to the writer as one write; the rest wait for
 * the next flush, so a burst (a checkpoint of many users) is spread over seconds. A user
 * stays held until the write is called back; one whose write failed is dirty again. */
static int flush_last_seen(struct store_local *st) {
    if (!st->persist || st->ndirty == 0)
        return 0;
    size_t n = st->ndirty < LAST_SEEN_FLUSH_MAX ? st->ndirty : LAST_SEEN_FLUSH_MAX;
    persist_seen_t *rows = malloc(sizeof(*rows) * n);
    struct ls_write *w = malloc(sizeof(*w) + sizeof(w->users[0]) * n);
    int rc = rows && w ? 0 : PD_ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct ls_user *u = st->dirty[i];
        rows[i] = (persist_seen_t){
            .user = {u->id, u->id_len}, .last_seen = u->last_seen, .device = last_device(u)};
        w->users[i] = u;
    }
    if (rc == 0) {
        *w = (struct ls_write){.st = st, .kind = LW_SEEN, .nusers = n};
        persist_write_t pw = {.kind = PERSIST_W_LAST_SEEN, .seen = rows, .nseen = n};
        rc = submit(st, &pw, w); /* copies rows */
    }
    free(rows);
    if (rc) {
        free(w);
        PD_WARN(st->log, "store", "last_seen of %zu users not queued (%s); retrying later",
                st->ndirty, pd_strerror(rc));
        wheel_schedule(st->wheel, &st->flush_timer, pd_clock_ms(&st->clock) + LAST_SEEN_FLUSH_MS);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        st->dirty[i]->dirty = 0;
        st->dirty[i]->pending++;
    }
    memmove(st->dirty, st->dirty + n, (st->ndirty - n) * sizeof(*st->dirty));
    st->ndirty -= n;
    if (st->ndirty)
        wheel_schedule(st->wheel, &st->flush_timer, pd_clock_ms(&st->clock) + LAST_SEEN_FLUSH_MS);
    return 0;
}

static void flush_timer_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    flush_last_seen((struct store_local *)((char *)t - offsetof(struct store_local, flush_timer)));
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The aggregate of claims[0..n) (room for one more) and the backend's claim, which counts
 * only beside a live session: a calendar saying "busy" never makes an offline user busy. */
static uint8_t aggregate(const struct ls_user *u, uint8_t *claims, size_t n) {
    if (n > 0 && u->server_status)
        claims[n++] = u->server_status;
    return pd_aggregate_status(claims, n);
}

/* Collects the user's distinct device labels (sorted) into devs and returns their count;
 * sets the aggregate status and the most recently updated session. */
static uint32_t collect(const struct ls_user *u, const char **devs, uint8_t *status,
                        const struct ls_session **latest) {
    uint8_t claims[PD_SESSIONS_PER_USER_MAX + 1];
    size_t n = 0;
    uint32_t nd = 0;
    *latest = NULL;
    for (const struct ls_session *s = u->sessions; s; s = s->next) {
        claims[n++] = s->status;
        if (!*latest || s->touched > (*latest)->touched)
            *latest = s;
        bool dup = false;
        for (uint32_t i = 0; i < nd && !dup; i++)
            dup = devs[i] == s->device->s; /* interned: equal labels, equal pointers */
        if (!dup)
            devs[nd++] = s->device->s;
    }
    qsort(devs, nd, sizeof(devs[0]), cmp_str);
    *status = aggregate(u, claims, n);
    return nd;
}

/* Fills p with the user's presence; its device list is written into devs (room for
 * u->nsessions entries). */
static void view(const struct ls_user *u, pd_presence_t *p, const char **devs) {
    const struct ls_session *latest;
    p->ndevices = collect(u, devs, &p->status, &latest);
    p->devices = devs;
    p->user_id = u->id;
    p->user_id_len = u->id_len;
    p->last_seen = u->last_seen;
    p->device = latest ? latest->device->s : u->last_device ? u->last_device->s : "";
    p->custom_status = u->custom_status;
    p->activity = u->activity;
    p->version = u->version;
    p->prev_status = p->status;
}

/* Fills v with what a watcher can see of the user. */
static int cmp_istr(const void *a, const void *b) {
    return strcmp((*(const pd_istr_t *const *)a)->s, (*(const pd_istr_t *const *)b)->s);
}

/* Fills v with the visible state of the user's sessions; with hold, takes a reference on
 * each label (release with release_visible). */
static void compute(struct store_local *st, const struct ls_user *u, struct visible *v, bool hold) {
    (void)st;
    uint8_t claims[PD_SESSIONS_PER_USER_MAX + 1];
    size_t n = 0;
    v->ndevices = 0;
    for (const struct ls_session *s = u->sessions; s; s = s->next) {
        claims[n++] = s->status;
        bool dup = false;
        for (uint32_t i = 0; i < v->ndevices && !dup; i++)
            dup = v->devices[i] == s->device;
        if (!dup)
            v->devices[v->ndevices++] = hold ? istr_ref(s->device) : s->device;
    }
    qsort(v->devices, v->ndevices, sizeof(v->devices[0]), cmp_istr);
    v->status = aggregate(u, claims, n);
}

static void release_visible(struct store_local *st, struct visible *v) {
    for (uint32_t i = 0; i < v->ndevices; i++)
        istr_put(&st->labels, v->devices[i]);
    v->ndevices = 0;
}

static bool str_eq(const char *a, const char *b) {
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool visible_eq(const struct visible *a, const struct visible *b) {
    if (a->status != b->status || a->ndevices != b->ndevices)
        return false;
    for (uint32_t i = 0; i < a->ndevices; i++)
        if (a->devices[i] != b->devices[i])
            return false;
    return true;
}

/* Compares with the state before the change; announces it when visible. The caller's
 * callback follows with the same view. */
static void finish_change(struct store_local *st, struct ls_user *u, struct visible *before,
                          bool fields_changed, pd_presence_t *p, const char **devs) {
    struct visible after;
    compute(st, u, &after, false);
    bool changed = fields_changed || !visible_eq(before, &after);
    uint8_t before_status = before->status;
    st->by_status[before_status]--;
    st->by_status[after.status]++;
    release_visible(st, before);
    if (changed)
        u->version++;
    view(u, p, devs);
    p->prev_status = before_status;
    if (changed && st->base.listener.presence_caused)
        st->base.listener.presence_caused(st->base.listener.ctx, p);
    if (changed && st->base.listener.presence_changed)
        st->base.listener.presence_changed(st->base.listener.ctx, p);
}

/* --- Durable writes: memory changes at once, the file through the writer thread ---
 *
 * A change is made in memory when it is asked for (so privacy holds at every instant and
 * readers see it at once) and queued for the writer; the caller's callback runs once its group
 * is committed. What can fail (a full queue) is tried before memory changes, so a refused
 * change changed nothing. A write that fails leaves the user unsaved: memory is ahead of the
 * file, and the user's next durable change first queues a snapshot of all their settings. */

/* Looks exactly like a user never seen, to every reader. */
static bool looks_unknown(const struct ls_user *u) {
    return !u->sessions && !u->priv && !u->custom_status && !u->activity && !u->server_status &&
           u->last_seen == 0 && !u->last_device;
}

/* A record that holds nothing worth keeping goes: the bound on users in memory is the users
 * with sessions, settings, fields or a last_seen, plus those with writes in flight. */
static void maybe_evict(struct store_local *st, struct ls_user *u) {
    if (!looks_unknown(u) || u->pending || u->dirty || u->unsaved || u->expiry)
        return;
    hmap_remove(&st->users, &u->node);
    st->by_status[PD_OFFLINE]--;
    free(u);
}

/* Privacy back at the defaults costs nothing. */
static void trim_privacy(struct ls_user *u) {
    struct ls_privacy *p = u->priv;
    if (p && p->visibility == PD_VIS_EVERYONE && p->contacts.count == 0 && p->blocked.count == 0) {
        privacy_free(p);
        u->priv = NULL;
    }
}

static void write_done(void *arg, int err) {
    struct ls_write *w = arg;
    struct store_local *st = w->st;
    if (w->kind == LW_SEEN) {
        for (size_t i = 0; i < w->nusers; i++) {
            struct ls_user *u = w->users[i];
            u->pending--;
            if (err)
                mark_dirty(st, u); /* tried again with a later flush */
            maybe_evict(st, u);
        }
        free(w);
        return;
    }
    struct ls_user *u = w->u;
    u->pending--;
    if (err)
        u->unsaved = 1;
    if (w->kind == LW_REPAIR && !err)
        u->unsaved = 0;
    if (w->kind == LW_DONE && w->done) {
        w->done(w->arg, err);
    } else if (w->kind == LW_PRESENCE && w->presence) {
        if (err) {
            w->presence(w->arg, err, NULL);
        } else {
            pd_presence_t p;
            const char *devs[PD_SESSIONS_PER_USER_MAX];
            view(u, &p, devs);
            w->presence(w->arg, 0, &p);
        }
    }
    free(w);
    maybe_evict(st, u);
}

static int submit(struct store_local *st, const persist_write_t *pw, struct ls_write *w) {
    return persist_submit(st->persist, pw, write_done, w);
}

/* Queues pw for u; the callback of kind (done or presence) follows its commit. */
static int submit_for(struct store_local *st, struct ls_user *u, const persist_write_t *pw,
                      uint8_t kind, store_done_cb done, store_presence_cb presence, void *arg) {
    struct ls_write *w = malloc(sizeof(*w));
    if (!w)
        return PD_ENOMEM;
    *w = (struct ls_write){
        .st = st, .u = u, .kind = kind, .done = done, .presence = presence, .arg = arg};
    int rc = submit(st, pw, w);
    if (rc) {
        free(w);
        return rc;
    }
    u->pending++;
    return 0;
}

/* The write of u's user-level fields as they are in memory. */
static persist_write_t fields_write(const struct ls_user *u) {
    return (persist_write_t){.kind = PERSIST_W_FIELDS,
                             .user = {u->id, u->id_len},
                             .fields = {.custom_status = u->custom_status,
                                        .custom_status_expires = u->custom_status_expires,
                                        .activity = u->activity,
                                        .activity_expires = u->activity_expires,
                                        .server_status = u->server_status,
                                        .server_status_expires = u->server_status_expires}};
}

/* Before a durable change of u: refused after shutdown; an unsaved user's settings are queued
 * whole first, so the file catches up with memory. */
static int prepare_durable(struct store_local *st, struct ls_user *u) {
    if (st->shut)
        return PD_ECLOSED;
    if (!u->unsaved)
        return 0;
    pd_str_t *contacts = NULL, *blocked = NULL;
    uint32_t nc = 0, nb = 0;
    if (u->priv && (collect_set(&u->priv->contacts, &contacts, &nc) ||
                    collect_set(&u->priv->blocked, &blocked, &nb))) {
        free(contacts);
        return PD_ENOMEM;
    }
    pd_str_t me = {u->id, u->id_len};
    persist_write_t priv = {.kind = PERSIST_W_REPLACE,
                            .user = me,
                            .visibility = u->priv ? u->priv->visibility : PD_VIS_EVERYONE,
                            .contacts = contacts,
                            .ncontacts = nc,
                            .blocks = blocked,
                            .nblocks = nb};
    persist_write_t fields = fields_write(u);
    int rc = submit_for(st, u, &priv, LW_QUIET, NULL, NULL, NULL);
    if (rc == 0)
        rc = submit_for(st, u, &fields, LW_REPAIR, NULL, NULL, NULL);
    free(contacts);
    free(blocked);
    return rc;
}

/* The answer to a durable call that changed nothing: at once, unless writes of u are still in
 * flight, whose commit it then waits for (an acknowledged setting is on disk). *deferred tells
 * which; 0 or the error of the barrier (nothing happens then). */
static int ack_unchanged(struct store_local *st, struct ls_user *u, uint8_t kind,
                         store_done_cb done, store_presence_cb presence, void *arg,
                         bool *deferred) {
    *deferred = false;
    if (!st->persist || !u->pending)
        return 0;
    persist_write_t barrier = {.kind = PERSIST_W_NONE};
    int rc = submit_for(st, u, &barrier, kind, done, presence, arg);
    *deferred = rc == 0;
    return rc;
}

static void expiry_fire(wheel_timer_t *t, uint64_t now);

/* Arms the user's one expiry timer for the earliest field deadline (or frees it). */
static int rearm_expiry(struct store_local *st, struct ls_user *u) {
    double next = 0;
    const double deadlines[] = {u->custom_status_expires, u->activity_expires,
                                u->server_status_expires};
    for (size_t i = 0; i < 3; i++)
        if (deadlines[i] > 0 && (next == 0 || deadlines[i] < next))
            next = deadlines[i];
    if (next == 0) {
        if (u->expiry) {
            wheel_cancel(st->wheel, &u->expiry->timer);
            free(u->expiry);
            u->expiry = NULL;
        }
        return 0;
    }
    if (!u->expiry) {
        u->expiry = calloc(1, sizeof(*u->expiry));
        if (!u->expiry)
            return PD_ENOMEM;
        u->expiry->st = st;
        u->expiry->user = u;
        wheel_timer_init(&u->expiry->timer, expiry_fire);
    }
    double in = next - pd_clock_wall(&st->clock);
    uint64_t now = pd_clock_ms(&st->clock);
    wheel_schedule(st->wheel, &u->expiry->timer, in > 0 ? now + (uint64_t)(in * 1000.0) : now);
    return 0;
}

/* The new value of a text field (KEEP: NULL here, the old value stays). */
static char *dup_text(const store_text_t *t, bool *ok) {
    *ok = true;
    if (t->op != STORE_SET)
        return NULL;
    char *v = malloc(t->len + 1);
    if (!v) {
        *ok = false;
        return NULL;
    }
    memcpy(v, t->s, t->len);
    v[t->len] = '\0';
    return v;
}

static double new_expiry(uint8_t op, double given, double current) {
    return op == STORE_SET ? given : op == STORE_CLEAR ? 0 : current;
}

/* Applies user-level fields. With a database, a change is queued first (nothing changes when
 * that is refused) and *deferred tells that cb runs at its commit (or at the commit of the
 * user's writes in flight, for fields that change nothing); else the caller answers. *changed
 * tells whether a text a watcher sees changed (a new status claim shows through the
 * aggregate). */
static int apply_fields(struct store_local *st, struct ls_user *u, const store_user_fields_t *f,
                        bool *changed, bool *deferred, store_presence_cb cb, void *arg) {
    *changed = false;
    *deferred = false;
    if (!f || (f->custom_status.op == STORE_KEEP && f->activity.op == STORE_KEEP &&
               f->server_status_op == STORE_KEEP))
        return 0;
    int rc = st->persist ? prepare_durable(st, u) : 0;
    if (rc)
        return rc;
    bool ok1, ok2;
    bool keep_cs = f->custom_status.op == STORE_KEEP, keep_act = f->activity.op == STORE_KEEP;
    char *cs = dup_text(&f->custom_status, &ok1);
    char *act = dup_text(&f->activity, &ok2);
    if (!ok1 || !ok2) {
        free(cs);
        free(act);
        return PD_ENOMEM;
    }
    const char *new_cs = keep_cs ? u->custom_status : cs;
    const char *new_act = keep_act ? u->activity : act;
    double cs_exp =
        new_expiry(f->custom_status.op, f->custom_status_expires, u->custom_status_expires);
    double act_exp = new_expiry(f->activity.op, f->activity_expires, u->activity_expires);
    uint8_t ss = f->server_status_op == STORE_SET     ? f->server_status
                 : f->server_status_op == STORE_CLEAR ? 0
                                                      : u->server_status;
    double ss_exp =
        new_expiry(f->server_status_op, f->server_status_expires, u->server_status_expires);
    bool texts = !str_eq(new_cs, u->custom_status) || !str_eq(new_act, u->activity);
    bool same = !texts && cs_exp == u->custom_status_expires && act_exp == u->activity_expires &&
                ss == u->server_status && ss_exp == u->server_status_expires;
    if (same) {
        free(cs);
        free(act);
        return ack_unchanged(st, u, LW_PRESENCE, NULL, cb, arg, deferred);
    }
    if (st->persist) {
        persist_write_t w = {.kind = PERSIST_W_FIELDS,
                             .user = {u->id, u->id_len},
                             .fields = {.custom_status = new_cs,
                                        .custom_status_expires = cs_exp,
                                        .activity = new_act,
                                        .activity_expires = act_exp,
                                        .server_status = ss,
                                        .server_status_expires = ss_exp}};
        rc = submit_for(st, u, &w, LW_PRESENCE, NULL, cb, arg);
        if (rc) {
            free(cs);
            free(act);
            return rc;
        }
        *deferred = true;
    }
    *changed = texts;
    if (!keep_cs) {
        free(u->custom_status);
        u->custom_status = cs;
    }
    if (!keep_act) {
        free(u->activity);
        u->activity = act;
    }
    u->custom_status_expires = cs_exp;
    u->activity_expires = act_exp;
    u->server_status = ss;
    u->server_status_expires = ss_exp;
    return rearm_expiry(st, u);
}

/* A field's deadline passed: it is cleared, durably, and the change announced. */
static void expiry_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct ls_expiry *e = (struct ls_expiry *)t;
    struct store_local *st = e->st;
    struct ls_user *u = e->user;
    struct visible before;
    compute(st, u, &before, true);
    double wall = pd_clock_wall(&st->clock) + 0.001; /* due: the timer is ms-rounded */
    bool texts = false;
    if (u->custom_status_expires > 0 && u->custom_status_expires <= wall) {
        free(u->custom_status);
        u->custom_status = NULL;
        u->custom_status_expires = 0;
        texts = true;
    }
    if (u->activity_expires > 0 && u->activity_expires <= wall) {
        free(u->activity);
        u->activity = NULL;
        u->activity_expires = 0;
        texts = true;
    }
    if (u->server_status_expires > 0 && u->server_status_expires <= wall) {
        u->server_status = 0;
        u->server_status_expires = 0;
    }
    if (st->persist && !st->shut) {
        /* Best effort: should it be refused or fail, a deadline that passed is dropped when
         * the database is loaded anyway. */
        persist_write_t w = fields_write(u);
        submit_for(st, u, &w, LW_QUIET, NULL, NULL, NULL);
    }
    rearm_expiry(st, u);
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    finish_change(st, u, &before, texts, &p, devs);
    maybe_evict(st, u);
}

static void drop_session(struct store_local *st, struct ls_user *u, struct ls_session **link) {
    struct ls_session *s = *link;
    *link = s->next;
    istr_put(&st->labels, u->last_device);
    u->last_device = istr_ref(s->device);
    istr_put(&st->labels, s->device);
    free(s);
    u->nsessions--;
}

static int ls_session_upsert(store_t *base, pd_str_t user, const store_session_t *in,
                             const store_user_fields_t *fields, store_presence_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = get_user(st, user);
    if (!u)
        return PD_ENOMEM;
    struct ls_session **link = &u->sessions;
    while (*link && (*link)->sid != in->sid)
        link = &(*link)->next;
    struct ls_session *s = *link;
    if (!s && u->nsessions >= PD_SESSIONS_PER_USER_MAX) {
        /* Lingering sessions give way to the new one; only live ones count here. */
        unsigned live = 0;
        for (struct ls_session *t = u->sessions; t; t = t->next)
            live += !t->lingering;
        if (live >= PD_SESSIONS_PER_USER_MAX)
            return PD_ELIMIT;
    }
    /* What can fail first (allocations, then the fields, queued for the disk), so that a
     * refused call changed nothing at all. */
    const pd_istr_t *dev = istr_get(&st->labels, in->device, in->device_len);
    struct ls_session *fresh = s || !dev ? NULL : calloc(1, sizeof(*fresh));
    if (!dev || (!s && !fresh)) {
        istr_put(&st->labels, dev);
        maybe_evict(st, u);
        return PD_ENOMEM;
    }
    struct visible before;
    compute(st, u, &before, true);
    bool fields_changed, deferred;
    int rc = apply_fields(st, u, fields, &fields_changed, &deferred, cb, arg);
    if (rc) {
        release_visible(st, &before);
        istr_put(&st->labels, dev);
        free(fresh);
        maybe_evict(st, u);
        return rc;
    }
    if (!s) {
        /* The user is back: every lingering session of theirs ends now, unannounced. */
        for (struct ls_session **l = &u->sessions; *l;) {
            if ((*l)->lingering)
                drop_session(st, u, l);
            else
                l = &(*l)->next;
        }
        s = fresh;
        s->sid = in->sid;
        s->next = u->sessions;
        u->sessions = s;
        u->nsessions++;
    } else {
        istr_put(&st->labels, s->device);
    }
    s->device = dev;
    s->status = in->status;
    s->lingering = 0;
    s->touched = ++st->seq;
    touch_last_seen(st, u);
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    finish_change(st, u, &before, fields_changed, &p, devs);
    if (cb && !deferred)
        cb(arg, 0, &p);
    return 0;
}

static int ls_user_update(store_t *base, pd_str_t user, const store_user_fields_t *fields,
                          store_presence_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = get_user(st, user);
    if (!u)
        return PD_ENOMEM;
    struct visible before;
    compute(st, u, &before, true);
    bool fields_changed, deferred;
    int rc = apply_fields(st, u, fields, &fields_changed, &deferred, cb, arg);
    if (rc) {
        release_visible(st, &before);
        maybe_evict(st, u);
        return rc;
    }
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    finish_change(st, u, &before, fields_changed, &p, devs);
    if (cb && !deferred)
        cb(arg, 0, &p);
    maybe_evict(st, u);
    return 0;
}

static int ls_session_remove(store_t *base, pd_str_t user, uint64_t sid, int mode,
                             store_remove_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = find_user(st, user);
    struct ls_session **link = u ? &u->sessions : NULL;
    while (link && *link && (*link)->sid != sid)
        link = &(*link)->next;
    if (!link || !*link) {
        if (cb)
            cb(arg, 0, false);
        return 0;
    }
    struct ls_session *s = *link;
    if (mode == STORE_REMOVE_FINAL && !s->lingering) {
        if (cb)
            cb(arg, 0, false); /* revived since: not ours to remove */
        return 0;
    }
    if (mode == STORE_REMOVE_GRACE) {
        bool others = false;
        for (struct ls_session *t = u->sessions; t && !others; t = t->next)
            others = t != s && !t->lingering;
        if (!others) {
            s->lingering = 1;
            touch_last_seen(st, u);
            if (cb)
                cb(arg, 0, true);
            return 0;
        }
    }
    struct visible before;
    compute(st, u, &before, true);
    drop_session(st, u, link);
    /* The end of a grace window is not a sign of life: last_seen stays at the disconnect. */
    if (mode != STORE_REMOVE_FINAL)
        touch_last_seen(st, u);
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    finish_change(st, u, &before, false, &p, devs);
    if (cb)
        cb(arg, 0, false);
    return 0;
}

/* --- Privacy --- */

static bool name_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct ls_name *x = (const struct ls_name *)n;
    return x->len == len && memcmp(x->s, key, len) == 0;
}

static bool set_has(struct store_local *st, const hmap_t *set, pd_str_t id) {
    return hmap_find(set, pd_hash(st->key, id.s, id.len), id.s, id.len, name_eq) != NULL;
}

static int set_add(struct store_local *st, hmap_t *set, pd_str_t id) {
    if (set_has(st, set, id))
        return 0;
    struct ls_name *x = malloc(sizeof(*x) + id.len + 1);
    if (!x)
        return PD_ENOMEM;
    x->len = (uint16_t)id.len;
    memcpy(x->s, id.s, id.len);
    x->s[id.len] = '\0';
    hmap_insert(set, &x->node, pd_hash(st->key, id.s, id.len));
    return 0;
}

static bool set_remove(struct store_local *st, hmap_t *set, pd_str_t id) {
    hmap_node_t *n = hmap_find(set, pd_hash(st->key, id.s, id.len), id.s, id.len, name_eq);
    if (!n)
        return false;
    hmap_remove(set, n);
    free(n);
    return true;
}

static void set_clear(hmap_t *set) {
    for (hmap_node_t *n = hmap_first(set); n;) {
        hmap_node_t *next = hmap_next(set, n);
        hmap_remove(set, n);
        free(n);
        n = next;
    }
}

static void privacy_free(struct ls_privacy *p) {
    if (!p)
        return;
    set_clear(&p->contacts);
    set_clear(&p->blocked);
    hmap_destroy(&p->contacts);
    hmap_destroy(&p->blocked);
    free(p);
}

static struct ls_privacy *get_privacy(struct ls_user *u) {
    if (u->priv)
        return u->priv;
    struct ls_privacy *p = calloc(1, sizeof(*p));
    if (!p || hmap_init(&p->contacts, 16) || hmap_init(&p->blocked, 16)) {
        if (p) {
            hmap_destroy(&p->contacts);
            free(p);
        }
        return NULL;
    }
    u->priv = p;
    return p;
}

static bool may_see(struct store_local *st, const struct ls_user *t, pd_str_t requester) {
    pd_str_t target = {t->id, t->id_len};
    if (!t->priv)
        return true;
    return privacy_can_see(requester, target, t->priv->visibility,
                           set_has(st, &t->priv->contacts, requester),
                           set_has(st, &t->priv->blocked, requester));
}

static int ls_presence_get(store_t *base, pd_str_t requester, const pd_str_t *users, size_t n,
                           store_bulk_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user **found = malloc(sizeof(*found) * n + 1);
    pd_presence_t *ps = malloc(sizeof(*ps) * n + 1);
    pd_str_t *hidden = malloc(sizeof(*hidden) * n + 1);
    size_t nfound = 0, nhidden = 0, ndevs = 0;
    if (!found || !ps || !hidden)
        goto err_free;
    for (size_t i = 0; i < n; i++) {
        struct ls_user *u = find_user(st, users[i]);
        if (!u || looks_unknown(u))
            continue; /* a record with nothing in it (writes in flight) is an unknown user */
        if (requester.s && !may_see(st, u, requester)) {
            hidden[nhidden++] = (pd_str_t){u->id, u->id_len};
            continue;
        }
        found[nfound++] = u;
        ndevs += u->nsessions;
    }
    /* One pool for every view's device list. */
    const char **devs = malloc(sizeof(*devs) * ndevs + 1);
    if (!devs)
        goto err_free;
    size_t off = 0;
    for (size_t i = 0; i < nfound; i++) {
        view(found[i], &ps[i], devs + off);
        off += ps[i].ndevices;
    }
    cb(arg, 0, ps, nfound, hidden, nhidden);
    free(devs);
    free(found);
    free(ps);
    free(hidden);
    return 0;
err_free:
    free(found);
    free(ps);
    free(hidden);
    return PD_ENOMEM;
}

static int collect_set(const hmap_t *set, pd_str_t **out, uint32_t *n) {
    *n = 0;
    *out = malloc(sizeof(**out) * (set->count + 1));
    if (!*out)
        return PD_ENOMEM;
    for (hmap_node_t *x = hmap_first(set); x; x = hmap_next(set, x)) {
        const struct ls_name *nm = (const struct ls_name *)x;
        (*out)[(*n)++] = (pd_str_t){nm->s, nm->len};
    }
    return 0;
}

static int cmp_pd_str(const void *a, const void *b) {
    const pd_str_t *x = a, *y = b;
    return cmp_id(x->s, x->len, y->s, y->len);
}

static int ls_privacy_get(store_t *base, pd_str_t user, store_privacy_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = find_user(st, user);
    store_privacy_t p = {.visibility = PD_VIS_EVERYONE};
    pd_str_t *contacts = NULL, *blocked = NULL;
    if (u && u->priv) {
        p.visibility = u->priv->visibility;
        if (collect_set(&u->priv->contacts, &contacts, &p.ncontacts) ||
            collect_set(&u->priv->blocked, &blocked, &p.nblocked)) {
            free(contacts);
            return PD_ENOMEM;
        }
        /* Sorted, so answers are stable. */
        qsort(contacts, p.ncontacts, sizeof(*contacts), cmp_pd_str);
        qsort(blocked, p.nblocked, sizeof(*blocked), cmp_pd_str);
        p.contacts = contacts;
        p.blocked = blocked;
    }
    cb(arg, 0, &p);
    free(contacts);
    free(blocked);
    return 0;
}

static void announce_privacy(struct store_local *st, struct ls_user *u) {
    if (st->base.listener.privacy_changed)
        st->base.listener.privacy_changed(st->base.listener.ctx, (pd_str_t){u->id, u->id_len});
    /* Rooms read the blocked list again (at once: this store answers before returning). */
    if (st->base.listener.room_privacy)
        st->base.listener.room_privacy(st->base.listener.room_ctx, (pd_str_t){u->id, u->id_len}, -1,
                                       (pd_str_t){0});
}

static struct ls_name *name_new(pd_str_t id) {
    struct ls_name *x = malloc(sizeof(*x) + id.len + 1);
    if (x) {
        x->len = (uint16_t)id.len;
        memcpy(x->s, id.s, id.len);
        x->s[id.len] = '\0';
    }
    return x;
}

static int ls_privacy_change(store_t *base, pd_str_t user, int op, uint8_t visibility,
                             pd_str_t other, uint32_t max_entries, store_done_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    if (op < STORE_PRIV_VISIBILITY || op > STORE_PRIV_UNBLOCK) {
        if (cb)
            cb(arg, PD_EINVAL);
        return 0;
    }
    struct ls_user *u = get_user(st, user);
    if (!u)
        return PD_ENOMEM;
    pd_str_t me = {u->id, u->id_len};
    bool blocked_list = op == STORE_PRIV_BLOCK || op == STORE_PRIV_UNBLOCK;
    bool adding = op == STORE_PRIV_ADD_CONTACT || op == STORE_PRIV_BLOCK;
    /* Decided on the current settings, without allocating any for a change of nothing. */
    struct ls_privacy *cur = u->priv;
    const hmap_t *cur_set = !cur ? NULL : blocked_list ? &cur->blocked : &cur->contacts;
    bool listed = cur_set && set_has(st, cur_set, other);
    bool changed = op == STORE_PRIV_VISIBILITY
                       ? (cur ? cur->visibility : PD_VIS_EVERYONE) != visibility
                       : adding != listed;
    int rc = 0;
    if (changed && adding && (cur_set ? cur_set->count : 0) >= max_entries) {
        if (cb)
            cb(arg, PD_ELIMIT);
        maybe_evict(st, u);
        return 0;
    }
    rc = st->persist ? prepare_durable(st, u) : 0;
    if (rc)
        goto err_evict;
    if (!changed) {
        bool deferred;
        rc = ack_unchanged(st, u, LW_DONE, cb, NULL, arg, &deferred);
        if (rc)
            goto err_evict;
        if (cb && !deferred)
            cb(arg, 0);
        maybe_evict(st, u);
        return 0;
    }
    /* Allocations, then the queued write, then memory: a refusal changes nothing. */
    struct ls_privacy *p = op == STORE_PRIV_VISIBILITY || adding ? get_privacy(u) : cur;
    struct ls_name *x = p && adding ? name_new(other) : NULL;
    if (!p || (adding && !x)) {
        free(x);
        rc = PD_ENOMEM;
        goto err_trim;
    }
    if (st->persist) {
        persist_write_t w = op == STORE_PRIV_VISIBILITY
                                ? (persist_write_t){.kind = PERSIST_W_VISIBILITY,
                                                    .user = me,
                                                    .visibility = visibility}
                                : (persist_write_t){.kind = PERSIST_W_ENTRY,
                                                    .user = me,
                                                    .other = other,
                                                    .blocked = blocked_list,
                                                    .add = adding};
        rc = submit_for(st, u, &w, LW_DONE, cb, NULL, arg);
        if (rc) {
            free(x);
            goto err_trim;
        }
    }
    hmap_t *set = blocked_list ? &p->blocked : &p->contacts;
    if (op == STORE_PRIV_VISIBILITY)
        p->visibility = visibility;
    else if (adding)
        hmap_insert(set, &x->node, pd_hash(st->key, other.s, other.len));
    else
        set_remove(st, set, other);
    trim_privacy(u);
    announce_privacy(st, u);
    if (cb && !st->persist)
        cb(arg, 0);
    maybe_evict(st, u);
    return 0;
err_trim:
    trim_privacy(u);
err_evict:
    maybe_evict(st, u);
    return rc;
}

static int ls_privacy_replace(store_t *base, pd_str_t user, const store_privacy_t *np,
                              uint32_t max_entries, store_done_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    if (np->ncontacts > max_entries || np->nblocked > max_entries) {
        if (cb)
            cb(arg, PD_ELIMIT);
        return 0;
    }
    struct ls_user *u = get_user(st, user);
    if (!u)
        return PD_ENOMEM;
    pd_str_t me = {u->id, u->id_len};
    int err = st->persist ? prepare_durable(st, u) : 0;
    if (err) {
        maybe_evict(st, u);
        return err;
    }
    /* The new settings are built aside, then queued, then swapped in. */
    struct ls_privacy *old = u->priv;
    u->priv = NULL;
    struct ls_privacy *p = get_privacy(u);
    err = p ? 0 : PD_ENOMEM;
    if (p) {
        p->visibility = np->visibility;
        for (uint32_t i = 0; !err && i < np->ncontacts; i++)
            err = set_add(st, &p->contacts, np->contacts[i]);
        for (uint32_t i = 0; !err && i < np->nblocked; i++)
            err = set_add(st, &p->blocked, np->blocked[i]);
    }
    if (!err && st->persist) {
        persist_write_t w = {.kind = PERSIST_W_REPLACE,
                             .user = me,
                             .visibility = np->visibility,
                             .contacts = np->contacts,
                             .ncontacts = np->ncontacts,
                             .blocks = np->blocked,
                             .nblocks = np->nblocked};
        err = submit_for(st, u, &w, LW_DONE, cb, NULL, arg);
    }
    if (err) {
        privacy_free(u->priv);
        u->priv = old;
        maybe_evict(st, u);
        return err;
    }
    privacy_free(old);
    trim_privacy(u);
    announce_privacy(st, u);
    if (cb && !st->persist)
        cb(arg, 0);
    maybe_evict(st, u);
    return 0;
}

static int ls_explain(store_t *base, pd_str_t user, store_explain_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = find_user(st, user);
    if (!u || looks_unknown(u)) {
        cb(arg, PD_ENOTFOUND, NULL);
        return 0;
    }
    store_session_view_t sv[PD_SESSIONS_PER_USER_MAX];
    size_t n = 0;
    for (const struct ls_session *s = u->sessions; s && n < PD_SESSIONS_PER_USER_MAX; s = s->next)
        sv[n++] = (store_session_view_t){.sid = s->sid,
                                         .node = "local",
                                         .device = s->device->s,
                                         .status = s->status,
                                         .lingering = s->lingering};
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    pd_presence_t p;
    view(u, &p, devs);
    store_explain_t x = {.presence = &p,
                         .sessions = sv,
                         .nsessions = n,
                         .visibility = u->priv ? u->priv->visibility : PD_VIS_EVERYONE,
                         .server_status = u->server_status,
                         .server_status_expires = u->server_status_expires,
                         .custom_status_expires = u->custom_status_expires,
                         .activity_expires = u->activity_expires};
    cb(arg, 0, &x);
    return 0;
}

static int ls_can_see(store_t *base, pd_str_t target, const pd_str_t *requesters, size_t n,
                      store_bits_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    uint8_t *bits = malloc(n + 1);
    if (!bits)
        return PD_ENOMEM;
    struct ls_user *t = find_user(st, target);
    for (size_t i = 0; i < n; i++)
        bits[i] = !t || may_see(st, t, requesters[i]);
    cb(arg, 0, bits);
    free(bits);
    return 0;
}

static int ls_stats(store_t *base, store_stats_t *s) {
    struct store_local *st = (struct store_local *)base;
    memcpy(s->users, st->by_status, sizeof(s->users));
    s->rooms = st->rooms.count;
    s->members = st->members;
    s->writes_pending = st->persist ? persist_pending(st->persist) : 0;
    return 0;
}

static int ls_watch(store_t *base, pd_str_t user) {
    (void)base;
    (void)user;
    return 0; /* one node: every change is announced here */
}

static void ls_unwatch(store_t *base, pd_str_t user) {
    (void)base;
    (void)user;
}

/* Every durable call still in flight is answered now, with its real result (the writer
 * commits what is queued; the loop waits for it here, once, at exit); later durable calls are
 * refused with PD_ECLOSED. */
static void ls_shutdown(store_t *base) {
    struct store_local *st = (struct store_local *)base;
    persist_drain(st->persist);
    st->shut = true;
}

static void ls_destroy(store_t *base) {
    struct store_local *st = (struct store_local *)base;
    /* Everything still only in memory reaches the database before the process goes. */
    for (hmap_node_t *n = hmap_first(&st->users); n; n = hmap_next(&st->users, n)) {
        struct ls_user *u = (struct ls_user *)n;
        if (u->sessions)
            touch_last_seen(st, u); /* sessions still open: now is their last sign of life */
    }
    persist_drain(st->persist);
    /* In flushes the queue's bounds admit; a flush that fails makes its users dirty again:
     * three in a row without progress and the rest is given up (and said so). */
    for (int stuck = 0; st->ndirty && stuck < 3;) {
        size_t before = st->ndirty;
        flush_last_seen(st);
        persist_drain(st->persist);
        stuck = st->ndirty < before ? 0 : stuck + 1;
    }
    if (st->ndirty)
        PD_ERROR(st->log, "store", "last_seen of %zu users could not be saved at exit", st->ndirty);
    wheel_cancel(st->wheel, &st->flush_timer);
    free(st->dirty);
    hmap_node_t *n = hmap_first(&st->users);
    while (n) {
        hmap_node_t *next = hmap_next(&st->users, n);
        struct ls_user *u = (struct ls_user *)n;
        while (u->sessions)
            drop_session(st, u, &u->sessions);
        istr_put(&st->labels, u->last_device);
        if (u->expiry) {
            wheel_cancel(st->wheel, &u->expiry->timer);
            free(u->expiry);
        }
        privacy_free(u->priv);
        free(u->custom_status);
        free(u->activity);
        free(u);
        n = next;
    }
    hmap_destroy(&st->users);
    for (hmap_node_t *rn = hmap_first(&st->rooms); rn;) {
        struct lr_room *r = (struct lr_room *)rn;
        rn = hmap_next(&st->rooms, rn);
        while (r->count)
            remove_member(st, r, r->sorted[r->count - 1]);
        free_room_if_empty(st, r);
    }
    hmap_destroy(&st->rooms);
    istr_table_destroy(&st->labels);
    free(st);
}

/* --- Rooms --- */

static bool room_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct lr_room *r = (const struct lr_room *)n;
    return r->name_len == len && memcmp(r->name, key, len) == 0;
}

static bool member_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct lr_member *m = (const struct lr_member *)n;
    return m->id_len == len && memcmp(m->id, key, len) == 0;
}

static struct lr_room *find_room(struct store_local *st, pd_str_t name) {
    return (struct lr_room *)hmap_find(&st->rooms, pd_hash(st->key, name.s, name.len), name.s,
                                       name.len, room_eq);
}

static struct lr_member *find_member(struct store_local *st, struct lr_room *r, pd_str_t user) {
    return (struct lr_member *)hmap_find(&r->members, pd_hash(st->key, user.s, user.len), user.s,
                                         user.len, member_eq);
}

static int cmp_id(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/* Index of the first member whose id sorts after (or, with inclusive, at) id. */
static uint32_t sorted_lower(const struct lr_room *r, const char *id, size_t len, bool inclusive) {
    uint32_t lo = 0, hi = r->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = cmp_id(r->sorted[mid]->id, r->sorted[mid]->id_len, id, len);
        if (c < 0 || (c == 0 && !inclusive))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Fills the member view; devices go into devs (room for m->nconns entries). */
static void member_view(const struct lr_member *m, pd_member_t *v, const char **devs) {
    uint32_t nd = 0;
    for (const struct lr_conn *c = m->conns; c; c = c->next) {
        bool dup = false;
        for (uint32_t i = 0; i < nd && !dup; i++)
            dup = devs[i] == c->device->s;
        if (!dup)
            devs[nd++] = c->device->s;
    }
    qsort(devs, nd, sizeof(devs[0]), cmp_str);
    v->user_id = m->id;
    v->user_id_len = m->id_len;
    v->joined_at = m->joined_at;
    v->last_seen = m->last_seen;
    v->metadata = m->metadata;
    v->metadata_len = m->metadata_len;
    v->devices = devs;
    v->ndevices = nd;
}

/* Local changes are caused here and watched here: both announcements, caused first. */
static void announce_room(struct store_local *st, const store_room_event_t *ev) {
    if (ev->kind != STORE_ROOM_SIGNAL && st->base.listener.room_caused)
        st->base.listener.room_caused(st->base.listener.room_ctx, ev);
    if (st->base.listener.room_event)
        st->base.listener.room_event(st->base.listener.room_ctx, ev);
}

static void announce_member(struct store_local *st, struct lr_room *r, struct lr_member *m,
                            int kind, const store_hide_t *changed) {
    if (!st->base.listener.room_event)
        return;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    const char **dv =
        m->nconns <= PD_SESSIONS_PER_USER_MAX ? devs : malloc(sizeof(*dv) * m->nconns);
    if (!dv)
        return;
    pd_member_t v;
    member_view(m, &v, dv);
    store_room_event_t ev = {.kind = (uint8_t)kind,
                             .count = r->count,
                             .room = {r->name, r->name_len},
                             .user = {m->id, m->id_len},
                             .member = &v,
                             .hide = {m->hide, m->nhide}};
    if (changed)
        ev.changed = *changed;
    announce_room(st, &ev);
    if (dv != devs)
        free(dv);
}

static int set_metadata(struct lr_member *m, pd_str_t md) {
    char *nm = malloc(md.len + 1);
    if (!nm)
        return PD_ENOMEM;
    memcpy(nm, md.s, md.len);
    nm[md.len] = '\0';
    free(m->metadata);
    m->metadata = nm;
    m->metadata_len = (uint32_t)md.len;
    return 0;
}

static void free_room_if_empty(struct store_local *st, struct lr_room *r) {
    if (r->count)
        return;
    hmap_remove(&st->rooms, &r->node);
    hmap_destroy(&r->members);
    free(r->sorted);
    free(r);
}

static void drop_conn(struct store_local *st, struct lr_member *m, struct lr_conn **link) {
    struct lr_conn *c = *link;
    *link = c->next;
    istr_put(&st->labels, c->device);
    free(c);
    m->nconns--;
}

static void remove_member(struct store_local *st, struct lr_room *r, struct lr_member *m) {
    uint32_t i = sorted_lower(r, m->id, m->id_len, true);
    memmove(&r->sorted[i], &r->sorted[i + 1], sizeof(r->sorted[0]) * (r->count - i - 1));
    r->count--;
    st->members--;
    hmap_remove(&r->members, &m->node);
    while (m->conns)
        drop_conn(st, m, &m->conns);
    free(m->metadata);
    free(m->hide);
    free(m);
}

/* The users in exactly one of a and b (both sorted), into out (room for a->n + b->n). */
static uint32_t hide_diff(const store_hide_t *a, const store_hide_t *b, pd_str_t *out) {
    uint32_t i = 0, j = 0, n = 0;
    while (i < a->n || j < b->n) {
        int c = i == a->n ? 1 : j == b->n ? -1 : store_hide_cmp(a->ids[i], b->ids[j]);
        if (c < 0)
            out[n++] = a->ids[i++];
        else if (c > 0)
            out[n++] = b->ids[j++];
        else
            i++, j++;
    }
    return n;
}

/* Replaces the member's hide list; a member others saw already announces whom that shows
 * it to or hides it from (STORE_ROOM_HIDDEN). */
static int set_hide(struct store_local *st, struct lr_room *r, struct lr_member *m,
                    const store_hide_t *hide, bool announce) {
    store_hide_t old = {m->hide, m->nhide}, none = {0};
    if (!hide)
        hide = &none;
    if (store_hide_equal(&old, hide))
        return 0;
    bool failed;
    pd_str_t *copy = store_hide_dup(hide, &failed);
    pd_str_t *flips = malloc(sizeof(pd_str_t) * (old.n + hide->n) + 1);
    if (failed || !flips) {
        free(copy);
        free(flips);
        return PD_ENOMEM;
    }
    m->hide = copy;
    m->nhide = hide->n;
    store_hide_t changed = {flips, hide_diff(&old, hide, flips)};
    if (announce)
        announce_member(st, r, m, STORE_ROOM_HIDDEN, &changed);
    free(flips);
    free((void *)old.ids);
    return 0;
}

static int ls_room_join(store_t *base, pd_str_t room, pd_str_t user, const store_room_conn_t *in,
                        pd_str_t metadata, uint32_t max_members, store_join_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    struct lr_member *m = r ? find_member(st, r, user) : NULL;
    if (!m && r && r->count >= max_members)
        return PD_EFULL;
    bool new_room = !r;
    if (!r) {
        r = calloc(1, sizeof(*r) + room.len + 1);
        if (!r || hmap_init(&r->members, 16)) {
            free(r);
            return PD_ENOMEM;
        }
        r->name_len = (uint16_t)room.len;
        memcpy(r->name, room.s, room.len);
        hmap_insert(&st->rooms, &r->node, pd_hash(st->key, room.s, room.len));
    }
    double now = pd_clock_wall(&st->clock);
    bool fresh = !m;
    if (fresh) {
        if (r->count == r->cap) {
            uint32_t cap = r->cap ? r->cap * 2 : 8;
            struct lr_member **ns = realloc(r->sorted, sizeof(*ns) * cap);
            if (!ns)
                goto err_room;
            r->sorted = ns;
            r->cap = cap;
        }
        m = calloc(1, sizeof(*m) + user.len + 1);
        if (!m)
            goto err_room;
        m->id_len = (uint16_t)user.len;
        memcpy(m->id, user.s, user.len);
        m->joined_at = now;
        if (set_metadata(m, metadata.s ? metadata : (pd_str_t){"{}", 2})) {
            free(m);
            goto err_room;
        }
        if (set_hide(st, r, m, &in->hide, false)) {
            free(m->metadata);
            free(m);
            goto err_room;
        }
        hmap_insert(&r->members, &m->node, pd_hash(st->key, user.s, user.len));
        st->members++;
        uint32_t i = sorted_lower(r, user.s, user.len, true);
        memmove(&r->sorted[i + 1], &r->sorted[i], sizeof(r->sorted[0]) * (r->count - i));
        r->sorted[i] = m;
        r->count++;
    }
    /* Find or add the connection; a new one ends the member's lingering ones. */
    struct lr_conn *c = m->conns;
    while (c && c->sid != in->sid)
        c = c->next;
    bool changed = false;
    if (!c) {
        if (m->nconns >= PD_SESSIONS_PER_USER_MAX) {
            if (fresh)
                remove_member(st, r, m);
            goto err_limit;
        }
        const pd_istr_t *dev = istr_get(&st->labels, in->device, in->device_len);
        c = dev ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            istr_put(&st->labels, dev);
            if (fresh)
                remove_member(st, r, m);
            goto err_room;
        }
        /* Devices before the change, to tell whether others see a difference. */
        const char *before[PD_SESSIONS_PER_USER_MAX + 1];
        pd_member_t bv;
        if (!fresh)
            member_view(m, &bv, before);
        for (struct lr_conn **l = &m->conns; *l;) {
            if ((*l)->lingering)
                drop_conn(st, m, l);
            else
                l = &(*l)->next;
        }
        c->sid = in->sid;
        c->device = dev;
        c->next = m->conns;
        m->conns = c;
        m->nconns++;
        if (!fresh) {
            const char *after[PD_SESSIONS_PER_USER_MAX + 1];
            pd_member_t av;
            member_view(m, &av, after);
            changed = av.ndevices != bv.ndevices;
            for (uint32_t i = 0; !changed && i < av.ndevices; i++)
                changed = av.devices[i] != bv.devices[i];
        }
    }
    c->lingering = 0;
    m->last_seen = now;
    if (!fresh && metadata.s &&
        (metadata.len != m->metadata_len || memcmp(metadata.s, m->metadata, metadata.len))) {
        if (set_metadata(m, metadata) == 0)
            changed = true;
    }
    if (!fresh)
        set_hide(st, r, m, &in->hide, true); /* out of memory: the list it had stays */
    if (fresh)
        announce_member(st, r, m, STORE_ROOM_JOINED, NULL);
    else if (changed)
        announce_member(st, r, m, STORE_ROOM_UPDATED, NULL);
    if (cb) {
        const char *devs[PD_SESSIONS_PER_USER_MAX + 1];
        pd_member_t v;
        member_view(m, &v, devs);
        cb(arg, 0, &v, fresh, r->count);
    }
    return 0;
err_limit:
    free_room_if_empty(st, r);
    return PD_ELIMIT;
err_room:
    if (new_room || r->count == 0)
        free_room_if_empty(st, r);
    return PD_ENOMEM;
}

static int ls_room_leave(store_t *base, pd_str_t room, pd_str_t user, uint64_t sid, int mode,
                         int reason, store_remove_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    struct lr_member *m = r ? find_member(st, r, user) : NULL;
    struct lr_conn **link = m ? &m->conns : NULL;
    while (link && *link && (*link)->sid != sid)
        link = &(*link)->next;
    if (!link || !*link) {
        if (cb)
            cb(arg, PD_ENOTFOUND, false);
        return 0;
    }
    struct lr_conn *c = *link;
    if (mode == STORE_REMOVE_FINAL && !c->lingering) {
        if (cb)
            cb(arg, 0, false);
        return 0;
    }
    bool last = true;
    for (struct lr_conn *t = m->conns; t && last; t = t->next)
        last = t == c || t->lingering;
    if (mode == STORE_REMOVE_GRACE && last) {
        c->lingering = 1;
        m->last_seen = pd_clock_wall(&st->clock);
        if (cb)
            cb(arg, 0, true);
        return 0;
    }
    if (last) {
        /* The member's last connection: they leave the room. */
        char id[PD_USER_ID_MAX + 1];
        size_t idlen = m->id_len;
        memcpy(id, m->id, idlen);
        store_hide_t hide = {m->hide, m->nhide};
        m->hide = NULL; /* kept for the event */
        remove_member(st, r, m);
        if (st->base.listener.room_event) {
            store_room_event_t ev = {.kind = STORE_ROOM_LEFT,
                                     .reason = (uint8_t)reason,
                                     .count = r->count,
                                     .room = {r->name, r->name_len},
                                     .user = {id, idlen},
                                     .hide = hide};
            announce_room(st, &ev);
        }
        free((void *)hide.ids);
        free_room_if_empty(st, r);
    } else {
        const char *before[PD_SESSIONS_PER_USER_MAX + 1], *after[PD_SESSIONS_PER_USER_MAX + 1];
        pd_member_t bv, av;
        member_view(m, &bv, before);
        drop_conn(st, m, link);
        member_view(m, &av, after);
        bool changed = av.ndevices != bv.ndevices;
        for (uint32_t i = 0; !changed && i < av.ndevices; i++)
            changed = av.devices[i] != bv.devices[i];
        if (changed)
            announce_member(st, r, m, STORE_ROOM_UPDATED, NULL);
    }
    if (cb)
        cb(arg, 0, false);
    return 0;
}

static int ls_room_update(store_t *base, pd_str_t room, pd_str_t user, pd_str_t metadata,
                          store_done_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    struct lr_member *m = r ? find_member(st, r, user) : NULL;
    if (!m) {
        if (cb)
            cb(arg, PD_ENOTFOUND);
        return 0;
    }
    bool changed = metadata.len != m->metadata_len || memcmp(metadata.s, m->metadata, metadata.len);
    if (changed && set_metadata(m, metadata))
        return PD_ENOMEM;
    m->last_seen = pd_clock_wall(&st->clock);
    if (changed)
        announce_member(st, r, m, STORE_ROOM_UPDATED, NULL);
    if (cb)
        cb(arg, 0);
    return 0;
}

static bool hides(const struct lr_member *m, pd_str_t requester) {
    store_hide_t h = {m->hide, m->nhide};
    return requester.s && store_hide_has(&h, requester);
}

static int ls_room_members(store_t *base, pd_str_t room, pd_str_t requester, pd_str_t after,
                           uint32_t limit, store_members_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    if (!r) {
        cb(arg, 0, NULL, 0, 0, false);
        return 0;
    }
    uint32_t start = after.len ? sorted_lower(r, after.s, after.len, false) : 0;
    /* The page: the next limit members the requester may see (the others are skipped). */
    uint32_t end = start, n = 0;
    size_t ndevs = 0;
    for (; end < r->count && n < limit; end++) {
        if (hides(r->sorted[end], requester))
            continue;
        ndevs += r->sorted[end]->nconns;
        n++;
    }
    pd_member_t *ms = malloc(sizeof(*ms) * n + 1);
    const char **devs = malloc(sizeof(*devs) * ndevs + 1);
    if (!ms || !devs) {
        free(ms);
        free(devs);
        return PD_ENOMEM;
    }
    size_t off = 0;
    uint32_t k = 0;
    for (uint32_t i = start; i < end; i++) {
        if (hides(r->sorted[i], requester))
            continue;
        member_view(r->sorted[i], &ms[k], devs + off);
        off += ms[k++].ndevices;
    }
    bool more = false;
    for (uint32_t i = end; i < r->count && !more; i++)
        more = !hides(r->sorted[i], requester);
    cb(arg, 0, ms, n, r->count, more);
    free(ms);
    free(devs);
    return 0;
}

static int ls_room_count(store_t *base, pd_str_t room, store_count_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    cb(arg, 0, r ? r->count : 0);
    return 0;
}

static int ls_room_signal(store_t *base, pd_str_t room, pd_str_t user, int signal, pd_str_t payload,
                          const store_hide_t *hide) {
    struct store_local *st = (struct store_local *)base;
    if (!st->base.listener.room_event)
        return 0;
    store_room_event_t ev = {.kind = STORE_ROOM_SIGNAL,
                             .signal = (uint8_t)signal,
                             .room = room,
                             .user = user,
                             .payload = payload};
    if (hide)
        ev.hide = *hide;
    announce_room(st, &ev);
    return 0;
}

static int ls_room_hide(store_t *base, pd_str_t room, pd_str_t user, const store_hide_t *hide) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    struct lr_member *m = r ? find_member(st, r, user) : NULL;
    return m ? set_hide(st, r, m, hide, true) : 0;
}

static int ls_room_watch(store_t *base, pd_str_t room) {
    (void)base;
    (void)room;
    return 0;
}

static void ls_room_unwatch(store_t *base, pd_str_t room) {
    (void)base;
    (void)room;
}

/* Only worth it when there is a database to survive a crash in. */
static void ls_seen(store_t *base, pd_str_t user, double when) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = st->persist ? find_user(st, user) : NULL;
    if (!u || when <= u->last_seen)
        return;
    u->last_seen = when;
    mark_dirty(st, u);
}

static const store_ops_t local_ops = {
    .name = "local",
    .stats = ls_stats,
    .seen = ls_seen,
    .shutdown = ls_shutdown,
    .session_upsert = ls_session_upsert,
    .user_update = ls_user_update,
    .session_remove = ls_session_remove,
    .presence_get = ls_presence_get,
    .privacy_get = ls_privacy_get,
    .privacy_change = ls_privacy_change,
    .privacy_replace = ls_privacy_replace,
    .can_see = ls_can_see,
    .explain = ls_explain,
    .watch = ls_watch,
    .unwatch = ls_unwatch,
    .room_join = ls_room_join,
    .room_leave = ls_room_leave,
    .room_update = ls_room_update,
    .room_members = ls_room_members,
    .room_count = ls_room_count,
    .room_signal = ls_room_signal,
    .room_hide = ls_room_hide,
    .room_watch = ls_room_watch,
    .room_unwatch = ls_room_unwatch,
    .destroy = ls_destroy,
};

/* --- Loading from the database --- */

static int load_user(void *ctx, const persist_user_t *pu) {
    struct store_local *st = ctx;
    if (!pd_user_id_valid(pu->id.s, pu->id.len))
        return 0; /* not a user id this version accepts: left in the file, not loaded */
    struct ls_user *u = get_user(st, pu->id);
    if (!u)
        return PD_ENOMEM;
    u->last_seen = pu->last_seen;
    if (pu->device && !(u->last_device = istr_get(&st->labels, pu->device, strlen(pu->device))))
        return PD_ENOMEM;
    if (pu->visibility != PD_VIS_EVERYONE) {
        struct ls_privacy *p = get_privacy(u);
        if (!p)
            return PD_ENOMEM;
        p->visibility = pu->visibility <= PD_VIS_NOBODY ? pu->visibility : PD_VIS_NOBODY;
    }
    /* Fields whose deadline passed while the server was down are not brought back. */
    double now = pd_clock_wall(&st->clock);
    const persist_fields_t *f = &pu->f;
    if (f->custom_status && !(f->custom_status_expires > 0 && f->custom_status_expires <= now)) {
        if (!(u->custom_status = strdup(f->custom_status)))
            return PD_ENOMEM;
        u->custom_status_expires = f->custom_status_expires;
    }
    if (f->activity && !(f->activity_expires > 0 && f->activity_expires <= now)) {
        if (!(u->activity = strdup(f->activity)))
            return PD_ENOMEM;
        u->activity_expires = f->activity_expires;
    }
    if (f->server_status >= PD_AWAY && f->server_status <= PD_BUSY &&
        !(f->server_status_expires > 0 && f->server_status_expires <= now)) {
        u->server_status = f->server_status;
        u->server_status_expires = f->server_status_expires;
    }
    return rearm_expiry(st, u);
}

static int load_entry(void *ctx, pd_str_t user, pd_str_t other, bool blocked) {
    struct store_local *st = ctx;
    if (!pd_user_id_valid(user.s, user.len) || !pd_user_id_valid(other.s, other.len))
        return 0;
    struct ls_user *u = get_user(st, user);
    struct ls_privacy *p = u ? get_privacy(u) : NULL;
    if (!p)
        return PD_ENOMEM;
    return set_add(st, blocked ? &p->blocked : &p->contacts, other);
}

store_t *store_local_new(const pd_hashkey_t *key, wheel_t *wheel, const pd_clock_t *clock) {
    struct store_local *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->base.ops = &local_ops;
    st->key = key;
    st->wheel = wheel;
    st->clock = *clock;
    wheel_timer_init(&st->flush_timer, flush_timer_fire);
    if (hmap_init(&st->users, 1024) || hmap_init(&st->rooms, 64) ||
        istr_table_init(&st->labels, key)) {
        hmap_destroy(&st->users);
        hmap_destroy(&st->rooms);
        free(st);
        return NULL;
    }
    return &st->base;
}

int store_local_load(store_t *base, persist_t *persist, pd_log_t *log, uv_loop_t *loop) {
    struct store_local *st = (struct store_local *)base;
    st->log = log;
    persist_loader_t l = {.ctx = st, .user = load_user, .entry = load_entry};
    int rc = persist_load(persist, &l);
    if (rc)
        return rc;
    /* Rows that hold nothing (settings back at their defaults) are not kept in memory. */
    for (hmap_node_t *n = hmap_first(&st->users); n;) {
        hmap_node_t *next = hmap_next(&st->users, n);
        trim_privacy((struct ls_user *)n);
        maybe_evict(st, (struct ls_user *)n);
        n = next;
    }
    rc = persist_start(persist, loop, NULL);
    if (rc)
        return rc;
    st->persist = persist; /* after loading: loading itself writes nothing back */
    PD_INFO(log, "store", "loaded %zu users from the database", st->users.count);
    return 0;
}
