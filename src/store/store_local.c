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
};

/* What a watcher can see, to tell whether a change is visible. */
struct visible {
    uint8_t status;
    uint32_t ndevices;
    const char *custom_status, *activity;
    const char *devices[PD_SESSIONS_PER_USER_MAX];
};

static void remove_member(struct store_local *st, struct lr_room *r, struct lr_member *m);
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

static void announce_member(struct store_local *st, struct lr_room *r, struct lr_member *m,
                            int kind) {
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
                             .member = &v};
    st->base.listener.room_event(st->base.listener.room_ctx, &ev);
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
    hmap_remove(&r->members, &m->node);
    while (m->conns)
        drop_conn(st, m, &m->conns);
    free(m->metadata);
    free(m);
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
        hmap_insert(&r->members, &m->node, pd_hash(st->key, user.s, user.len));
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
    if (fresh)
        announce_member(st, r, m, STORE_ROOM_JOINED);
    else if (changed)
        announce_member(st, r, m, STORE_ROOM_UPDATED);
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
        remove_member(st, r, m);
        if (st->base.listener.room_event) {
            store_room_event_t ev = {.kind = STORE_ROOM_LEFT,
                                     .reason = (uint8_t)reason,
                                     .count = r->count,
                                     .room = {r->name, r->name_len},
                                     .user = {id, idlen}};
            st->base.listener.room_event(st->base.listener.room_ctx, &ev);
        }
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
            announce_member(st, r, m, STORE_ROOM_UPDATED);
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
        announce_member(st, r, m, STORE_ROOM_UPDATED);
    if (cb)
        cb(arg, 0);
    return 0;
}

static int ls_room_members(store_t *base, pd_str_t room, pd_str_t after, uint32_t limit,
                           store_members_cb cb, void *arg) {
    struct store_local *st = (struct store_local *)base;
    struct lr_room *r = find_room(st, room);
    if (!r) {
        cb(arg, 0, NULL, 0, 0, false);
        return 0;
    }
    uint32_t start = after.len ? sorted_lower(r, after.s, after.len, false) : 0;
    uint32_t n = r->count - start < limit ? r->count - start : limit;
    size_t ndevs = 0;
    for (uint32_t i = 0; i < n; i++)
        ndevs += r->sorted[start + i]->nconns;
    pd_member_t *ms = malloc(sizeof(*ms) * n + 1);
    const char **devs = malloc(sizeof(*devs) * ndevs + 1);
    if (!ms || !devs) {
        free(ms);
        free(devs);
        return PD_ENOMEM;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        member_view(r->sorted[start + i], &ms[i], devs + off);
        off += ms[i].ndevices;
    }
    cb(arg, 0, ms, n, r->count, start + n < r->count);
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

static int ls_room_signal(store_t *base, pd_str_t room, pd_str_t user, int signal,
                          pd_str_t payload) {
    struct store_local *st = (struct store_local *)base;
    if (!st->base.listener.room_event)
        return 0;
    store_room_event_t ev = {.kind = STORE_ROOM_SIGNAL,
                             .signal = (uint8_t)signal,
                             .room = room,
                             .user = user,
                             .payload = payload};
    st->base.listener.room_event(st->base.listener.room_ctx, &ev);
    return 0;
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

static const store_ops_t local_ops = {
    .name = "local",
    .session_upsert = ls_session_upsert,
    .user_update = ls_user_update,
    .session_remove = ls_session_remove,
    .presence_get = ls_presence_get,
    .watch = ls_watch,
    .unwatch = ls_unwatch,
    .room_join = ls_room_join,
    .room_leave = ls_room_leave,
    .room_update = ls_room_update,
    .room_members = ls_room_members,
    .room_count = ls_room_count,
    .room_signal = ls_room_signal,
    .room_watch = ls_room_watch,
    .room_unwatch = ls_room_unwatch,
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
    if (hmap_init(&st->users, 1024) || hmap_init(&st->rooms, 64) ||
        istr_table_init(&st->labels, key)) {
        hmap_destroy(&st->users);
        hmap_destroy(&st->rooms);
        free(st);
        return NULL;
    }
    return st ? &st->base : NULL;
}
