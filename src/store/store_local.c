#include "store/store_local.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/istr.h"

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

struct ls_user {
    hmap_node_t node;
    struct ls_session *sessions;
    char *custom_status; /* NULL when unset */
    char *activity;
    double custom_status_expires; /* epoch seconds, 0 = never */
    struct ls_expiry *expiry;     /* armed while custom_status_expires is set */
    const pd_istr_t *last_device;
    double last_seen;
    uint64_t version;
    uint16_t nsessions;
    uint16_t id_len;
    char id[];
};

struct store_local {
    store_t base;
    hmap_t users;
    istr_table_t labels;
    const pd_hashkey_t *key;
    wheel_t *wheel;
    pd_clock_t clock;
    uint64_t seq;
};

/* What a watcher can see, to tell whether a change is visible. */
struct visible {
    uint8_t status;
    uint32_t ndevices;
    const char *custom_status, *activity;
    const char *devices[PD_SESSIONS_PER_USER_MAX];
};

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
    u = calloc(1, sizeof(*u) + id.len + 1);
    if (!u)
        return NULL;
    u->id_len = (uint16_t)id.len;
    memcpy(u->id, id.s, id.len);
    hmap_insert(&st->users, &u->node, pd_hash(st->key, id.s, id.len));
    return u;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Collects the user's distinct device labels (sorted) into devs and returns their count;
 * sets the aggregate status and the most recently updated session. */
static uint32_t collect(const struct ls_user *u, const char **devs, uint8_t *status,
                        const struct ls_session **latest) {
    uint8_t claims[PD_SESSIONS_PER_USER_MAX];
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
    *status = pd_aggregate_status(claims, n);
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
}

/* Fills v with what a watcher can see of the user. */
static void compute(const struct ls_user *u, struct visible *v) {
    const struct ls_session *latest;
    v->ndevices = collect(u, v->devices, &v->status, &latest);
    v->custom_status = u->custom_status;
    v->activity = u->activity;
}

static bool str_eq(const char *a, const char *b) {
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool visible_eq(const struct visible *a, const struct visible *b) {
    if (a->status != b->status || a->ndevices != b->ndevices ||
        !str_eq(a->custom_status, b->custom_status) || !str_eq(a->activity, b->activity))
        return false;
    for (uint32_t i = 0; i < a->ndevices; i++)
        if (a->devices[i] != b->devices[i])
            return false;
    return true;
}

/* Compares with the state before the change; announces it when visible. The caller's
 * callback follows with the same view. */
static void finish_change(struct store_local *st, struct ls_user *u, const struct visible *before,
                          struct visible *after, pd_presence_t *p) {
    compute(u, after);
    bool changed = !visible_eq(before, after);
    if (changed)
        u->version++;
    view(u, p, after->devices);
    if (changed && st->base.listener.presence_changed)
        st->base.listener.presence_changed(st->base.listener.ctx, p);
}

static void expiry_fire(wheel_timer_t *t, uint64_t now);

static void clear_expiry(struct ls_user *u) {
    if (u->expiry) {
        wheel_cancel(u->expiry->st->wheel, &u->expiry->timer);
        free(u->expiry);
        u->expiry = NULL;
    }
    u->custom_status_expires = 0;
}

static int set_text(char **field, const store_text_t *t) {
    if (t->op == STORE_KEEP)
        return 0;
    char *nv = NULL;
    if (t->op == STORE_SET) {
        nv = malloc(t->len + 1);
        if (!nv)
            return PD_ENOMEM;
        memcpy(nv, t->s, t->len);
        nv[t->len] = '\0';
    }
    free(*field);
    *field = nv;
    return 0;
}

static int apply_fields(struct store_local *st, struct ls_user *u, const store_user_fields_t *f) {
    if (!f)
        return 0;
    if (set_text(&u->custom_status, &f->custom_status) || set_text(&u->activity, &f->activity))
        return PD_ENOMEM;
    if (f->custom_status.op != STORE_KEEP)
        clear_expiry(u);
    if (f->custom_status.op == STORE_SET && f->custom_status_expires > 0) {
        struct ls_expiry *e = calloc(1, sizeof(*e));
        if (!e)
            return PD_ENOMEM;
        e->st = st;
        e->user = u;
        wheel_timer_init(&e->timer, expiry_fire);
        u->expiry = e;
        u->custom_status_expires = f->custom_status_expires;
        double in = f->custom_status_expires - pd_clock_wall(&st->clock);
        uint64_t now = pd_clock_ms(&st->clock);
        wheel_schedule(st->wheel, &e->timer, in > 0 ? now + (uint64_t)(in * 1000.0) : now);
    }
    return 0;
}

static void expiry_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct ls_expiry *e = (struct ls_expiry *)t;
    struct store_local *st = e->st;
    struct ls_user *u = e->user;
    struct visible before, after;
    compute(u, &before);
    free(u->custom_status);
    u->custom_status = NULL;
    u->expiry = NULL;
    u->custom_status_expires = 0;
    free(e);
    pd_presence_t p;
    finish_change(st, u, &before, &after, &p);
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
    const pd_istr_t *dev = istr_get(&st->labels, in->device, in->device_len);
    if (!dev)
        return PD_ENOMEM;

    struct visible before, after;
    compute(u, &before);
    if (!s) {
        /* The user is back: every lingering session of theirs ends now, unannounced. */
        for (struct ls_session **l = &u->sessions; *l;) {
            if ((*l)->lingering)
                drop_session(st, u, l);
            else
                l = &(*l)->next;
        }
        s = calloc(1, sizeof(*s));
        if (!s) {
            istr_put(&st->labels, dev);
            return PD_ENOMEM;
        }
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
    u->last_seen = pd_clock_wall(&st->clock);
    int rc = apply_fields(st, u, fields);
    pd_presence_t p;
    finish_change(st, u, &before, &after, &p);
    if (rc == 0 && cb)
        cb(arg, 0, &p);
    return rc;
}

static int ls_user_update(store_t *base, pd_str_t user, const store_user_fields_t *fields,
                          store_presence_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user *u = get_user(st, user);
    if (!u)
        return PD_ENOMEM;
    struct visible before, after;
    compute(u, &before);
    int rc = apply_fields(st, u, fields);
    pd_presence_t p;
    finish_change(st, u, &before, &after, &p);
    if (rc == 0 && cb)
        cb(arg, 0, &p);
    return rc;
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
            u->last_seen = pd_clock_wall(&st->clock);
            if (cb)
                cb(arg, 0, true);
            return 0;
        }
    }
    struct visible before, after;
    compute(u, &before);
    drop_session(st, u, link);
    u->last_seen = pd_clock_wall(&st->clock);
    pd_presence_t p;
    finish_change(st, u, &before, &after, &p);
    if (cb)
        cb(arg, 0, false);
    return 0;
}

static int ls_presence_get(store_t *base, const pd_str_t *users, size_t n, store_bulk_cb cb,
                           void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct ls_user **found = malloc(sizeof(*found) * n + 1);
    pd_presence_t *ps = malloc(sizeof(*ps) * n + 1);
    size_t nfound = 0, ndevs = 0;
    if (!found || !ps)
        goto err_free;
    for (size_t i = 0; i < n; i++) {
        struct ls_user *u = find_user(st, users[i]);
        if (u) {
            found[nfound++] = u;
            ndevs += u->nsessions;
        }
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
    cb(arg, 0, ps, nfound);
    free(devs);
    free(found);
    free(ps);
    return 0;
err_free:
    free(found);
    free(ps);
    return PD_ENOMEM;
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

static void ls_destroy(store_t *base) {
    struct store_local *st = (struct store_local *)base;
    hmap_node_t *n = hmap_first(&st->users);
    while (n) {
        hmap_node_t *next = hmap_next(&st->users, n);
        struct ls_user *u = (struct ls_user *)n;
        while (u->sessions)
            drop_session(st, u, &u->sessions);
        istr_put(&st->labels, u->last_device);
        clear_expiry(u);
        free(u->custom_status);
        free(u->activity);
        free(u);
        n = next;
    }
    hmap_destroy(&st->users);
    istr_table_destroy(&st->labels);
    free(st);
}

static const store_ops_t local_ops = {
    .name = "local",
    .session_upsert = ls_session_upsert,
    .user_update = ls_user_update,
    .session_remove = ls_session_remove,
    .presence_get = ls_presence_get,
    .watch = ls_watch,
    .unwatch = ls_unwatch,
    .destroy = ls_destroy,
};

store_t *store_local_new(const pd_hashkey_t *key, wheel_t *wheel, const pd_clock_t *clock) {
    struct store_local *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->base.ops = &local_ops;
    st->key = key;
    st->wheel = wheel;
    st->clock = *clock;
    if (hmap_init(&st->users, 1024) || istr_table_init(&st->labels, key)) {
        hmap_destroy(&st->users);
        free(st);
        return NULL;
    }
    return st ? &st->base : NULL;
}
