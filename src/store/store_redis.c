/* The Redis store: scripts, answers, subscriptions, leases and sweeps, outages. */
#include "store/store_redis.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "privacy/privacy.h"
#include "store/redis_router.h"
#include "store/redis_scripts.h"
#include "util/error.h"
#include "util/hashmap.h"
#include "util/jsonw.h"

#define KEY_MAX        (PD_USER_ID_MAX + 64)
#define ROOM_CONNS_MAX PD_SESSIONS_PER_USER_MAX

enum script_id {
    S_UPSERT,
    S_REMOVE,
    S_UPDATE,
    S_EXPIRE,
    S_GET,
    S_CAN_SEE,
    S_PRIV_GET,
    S_PRIV_CHANGE,
    S_PRIV_REPLACE,
    S_EXPLAIN,
    S_ROOM_JOIN,
    S_ROOM_LEAVE,
    S_ROOM_UPDATE,
    S_ROOM_MEMBERS,
    S_ROOM_HIDE,
    S_COUNT
};

struct script {
    char *text; /* lib + (room lib) + body */
    size_t len;
    char sha[41]; /* SHA-1 hex of text, for EVALSHA */
};

/* A name counted by how many times it is watched (users and rooms). */
struct watch {
    hmap_node_t node;
    uint64_t version; /* users: the version of the presence this node last heard of */
    /* After a catch-up read announced version floor, messages up to it are stale: published
     * before the read, they reached us after its answer (another connection). */
    uint64_t floor;
    bool catching;     /* a catch-up read is out */
    bool heard_during; /* and a message came meanwhile: the read is no news */
    uint32_t refs;
    uint16_t len;
    char name[];
};

/* A user's field deadline this node set: the script that clears it runs then. */
struct expiry {
    hmap_node_t node;
    wheel_timer_t timer;
    struct store_redis *st;
    uint16_t len;
    char uid[];
};

struct counters {
    uint64_t *scripts, *errors, *sweeps, *resyncs;
};

/* A read held back while this node's subscription to a channel it reads is not confirmed
 * yet: a change published between the read and the confirmation would reach neither the
 * reader (too late for the read) nor this node (not subscribed yet). Polled each tick, up to
 * the command timeout. */
struct gate {
    wheel_timer_t timer;
    struct gate *next, *prev;
    struct store_redis *st;
    uint64_t deadline;
    bool (*waiting)(struct gate *g); /* some channel the read needs is still being subscribed */
    void (*go)(struct gate *g);      /* the read itself */
    void (*drop)(struct gate *g);    /* destroy: frees it without reading or calling back */
};

struct store_redis {
    store_t base;
    redis_router_t *router;
    uv_loop_t *loop;
    wheel_t *wheel;
    pd_clock_t clock;
    pd_log_t *log;
    store_redis_config_t cfg;
    /* This process's name in Redis: the node id and a random incarnation, "ID~hex". A node
     * restarted under the same id is a new incarnation: its sessions never share keys with
     * those the previous process left behind, and those are swept like any dead node's
     * (the lease of the old incarnation is not renewed by the new one). */
    char node[80];
    pd_hashkey_t key;
    struct script scripts[S_COUNT];
    const char *script_texts[S_COUNT]; /* for redis_router_preload */
    size_t script_lens[S_COUNT];
    hmap_t watches;
    hmap_t expiries;
    wheel_timer_t lease_timer, sweep_timer;
    struct gate *gates;   /* reads waiting for subscriptions */
    uint64_t ready_since; /* ms; 0 while not ready */
    bool ever_ready;
    bool closing; /* in destroy: the callers of calls still in flight are gone */
    struct counters n;
};

typedef struct store_redis store_redis_t;

/* True while the store is being destroyed: the engine and rooms that made a call still in
 * flight are freed already (main frees them first), so its reply only frees c. */
static bool caller_gone(const struct store_redis *st, void *c) {
    if (!st->closing)
        return false;
    free(c);
    return true;
}

static uint64_t dummy_counter;

/* --- Gated reads --- */

#define GATE_POLL_MS 10

static void gate_unlink(struct gate *g) {
    if (g->prev)
        g->prev->next = g->next;
    else
        g->st->gates = g->next;
    if (g->next)
        g->next->prev = g->prev;
    g->next = g->prev = NULL;
}

static void gate_fire(wheel_timer_t *t, uint64_t now) {
    struct gate *g = (struct gate *)((char *)t - offsetof(struct gate, timer));
    if (now < g->deadline && g->waiting(g)) {
        wheel_schedule(g->st->wheel, t, now + GATE_POLL_MS);
        return;
    }
    gate_unlink(g);
    g->go(g);
}

/* Runs g's read now, or once the subscriptions it needs are confirmed (bounded). */
static void gate_start(struct store_redis *st, struct gate *g) {
    g->st = st;
    if (!g->waiting(g)) {
        g->go(g);
        return;
    }
    uint64_t now = pd_clock_ms(&st->clock);
    g->deadline = now + st->cfg.timeout_ms;
    wheel_timer_init(&g->timer, gate_fire);
    g->prev = NULL;
    g->next = st->gates;
    if (st->gates)
        st->gates->prev = g;
    st->gates = g;
    wheel_schedule(st->wheel, &g->timer, now + GATE_POLL_MS);
}

/* --- Keys --- */

static size_t ukey(char *out, pd_str_t uid, const char *suffix) {
    return (size_t)snprintf(out, KEY_MAX, "pd:{u:%.*s}%s", (int)uid.len, uid.s, suffix);
}

static size_t rkey(char *out, pd_str_t room, const char *suffix) {
    return (size_t)snprintf(out, KEY_MAX, "pd:{r:%.*s}%s", (int)room.len, room.s, suffix);
}

static size_t nkey(char *out, const char *node, const char *suffix) {
    return (size_t)snprintf(out, KEY_MAX, "pd:{n:%s}%s", node, suffix);
}

/* --- Scripts --- */

static int load_scripts(store_redis_t *st) {
    static const struct {
        int id;
        const char *body;
        bool room;
    } defs[] = {
        {S_UPSERT, lua_upsert, false},
        {S_REMOVE, lua_remove, false},
        {S_UPDATE, lua_update, false},
        {S_EXPIRE, lua_expire, false},
        {S_GET, lua_get, false},
        {S_CAN_SEE, lua_can_see, false},
        {S_PRIV_GET, lua_privacy_get, false},
        {S_PRIV_CHANGE, lua_privacy_change, false},
        {S_PRIV_REPLACE, lua_privacy_replace, false},
        {S_EXPLAIN, lua_explain, false},
        {S_ROOM_JOIN, lua_room_join, true},
        {S_ROOM_LEAVE, lua_room_leave, true},
        {S_ROOM_UPDATE, lua_room_update, true},
        {S_ROOM_MEMBERS, lua_room_members, true},
        {S_ROOM_HIDE, lua_room_hide, true},
    };
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        struct script *s = &st->scripts[defs[i].id];
        const char *room = defs[i].room ? lua_room_lib : "";
        s->len = strlen(lua_lib) + strlen(room) + strlen(defs[i].body);
        s->text = malloc(s->len + 1);
        if (!s->text)
            return PD_ENOMEM;
        snprintf(s->text, s->len + 1, "%s%s%s", lua_lib, room, defs[i].body);
        unsigned char md[20];
        unsigned int mdlen = 0;
        EVP_Digest(s->text, s->len, md, &mdlen, EVP_sha1(), NULL);
        for (int k = 0; k < 20; k++)
            snprintf(s->sha + 2 * k, 3, "%02x", md[k]);
    }
    return 0;
}

/* One script run: EVALSHA, and EVAL once when the server does not know the script (after a
 * restart, or on a new cluster node). */
struct scall {
    store_redis_t *st;
    redis_reply_cb cb;
    void *arg;
    int script;
    bool resent;
    int argc;
    const char **argv;
    size_t *argvlen;
    char slotkey[KEY_MAX];
    size_t slotlen;
};

static void scall_reply(void *arg, const redisReply *r, int err);

static int scall_send(struct scall *c) {
    return redis_router_call(c->st->router, c->slotkey, c->slotlen, c->argc, c->argv, c->argvlen,
                             scall_reply, c);
}

static void scall_reply(void *arg, const redisReply *r, int err) {
    struct scall *c = arg;
    store_redis_t *st = c->st;
    if (!err && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 && !c->resent) {
        c->resent = true;
        c->argv[0] = "EVAL";
        c->argvlen[0] = 4;
        c->argv[1] = st->scripts[c->script].text;
        c->argvlen[1] = st->scripts[c->script].len;
        if (scall_send(c) == 0)
            return;
        err = PD_EUNAVAIL;
    }
    if (!err && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "LIMIT", 5) != 0 &&
        strncmp(r->str, "FULL", 4) != 0) {
        (*st->n.errors)++;
        PD_WARN(st->log, "redis", "script failed: %s", r->str);
    }
    if (err)
        (*st->n.errors)++;
    c->cb(c->arg, err ? NULL : r, err);
    free(c);
}

/* Runs script with keys and args (copied: the EVAL resend needs them after the caller's
 * strings are gone). cb gets the reply or an error. */
static int run(store_redis_t *st, int script, int nkeys, const char **keys, const size_t *klens,
               int nargs, const char **args, const size_t *alens, redis_reply_cb cb, void *arg) {
    int argc = 3 + nkeys + nargs;
    char nk[8];
    size_t nkl = (size_t)snprintf(nk, sizeof(nk), "%d", nkeys);
    size_t strbytes = nkl + 1;
    for (int i = 0; i < nkeys; i++)
        strbytes += klens[i] + 1;
    for (int i = 0; i < nargs; i++)
        strbytes += alens[i] + 1;
    size_t bytes = sizeof(struct scall) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    struct scall *c = calloc(1, bytes + strbytes);
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->cb = cb;
    c->arg = arg;
    c->script = script;
    c->argc = argc;
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + argc);
    char *pool = (char *)(c->argvlen + argc);
    c->argv[0] = "EVALSHA";
    c->argvlen[0] = 7;
    c->argv[1] = st->scripts[script].sha;
    c->argvlen[1] = 40;
    for (int i = 2; i < argc; i++) {
        const char *src = i == 2 ? nk : i < 3 + nkeys ? keys[i - 3] : args[i - 3 - nkeys];
        size_t len = i == 2 ? nkl : i < 3 + nkeys ? klens[i - 3] : alens[i - 3 - nkeys];
        if (len)
            memcpy(pool, src, len);
        pool[len] = '\0';
        c->argv[i] = pool;
        c->argvlen[i] = len;
        pool += len + 1;
    }
    c->slotlen = klens[0] < KEY_MAX ? klens[0] : KEY_MAX - 1;
    memcpy(c->slotkey, keys[0], c->slotlen);
    (*st->n.scripts)++;
    int rc = scall_send(c);
    if (rc)
        free(c);
    return rc;
}

/* --- Decoding what scripts answer and publish --- */

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A presence payload into p (pointers into j; devices into devs, room for 64). */
static bool to_presence(const cJSON *j, pd_presence_t *p, const char **devs) {
    const char *u = str(j, "u");
    if (!u)
        return false;
    memset(p, 0, sizeof(*p));
    p->user_id = u;
    p->user_id_len = strlen(u);
    p->status = (uint8_t)num(j, "s");
    p->prev_status = (uint8_t)num(j, "ps");
    p->last_seen = num(j, "ls");
    p->device = str(j, "d") ? str(j, "d") : "";
    p->custom_status = str(j, "cs");
    p->activity = str(j, "a");
    p->version = (uint64_t)num(j, "v");
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j, "ds");
    for (const cJSON *d = cJSON_IsArray(ds) ? ds->child : NULL;
         d && p->ndevices < PD_SESSIONS_PER_USER_MAX; d = d->next)
        if (cJSON_IsString(d))
            devs[p->ndevices++] = d->valuestring;
    p->devices = devs;
    return true;
}

/* A member object into m; its metadata re-printed into *md (free it). */
static bool to_member(const cJSON *j, pd_member_t *m, const char **devs, char **md) {
    const char *u = str(j, "user_id");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    if (!u || !cJSON_IsObject(meta))
        return false;
    *md = cJSON_PrintUnformatted(meta);
    if (!*md)
        return false;
    memset(m, 0, sizeof(*m));
    m->user_id = u;
    m->user_id_len = strlen(u);
    m->joined_at = num(j, "joined_at");
    m->last_seen = num(j, "last_seen");
    m->metadata = *md;
    m->metadata_len = strlen(*md);
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j, "devices");
    for (const cJSON *d = cJSON_IsArray(ds) ? ds->child : NULL; d && m->ndevices < ROOM_CONNS_MAX;
         d = d->next)
        if (cJSON_IsString(d))
            devs[m->ndevices++] = d->valuestring;
    m->devices = devs;
    return true;
}

/* A hide list (a JSON array of ids, key absent: empty) into a sorted array pointing into j;
 * *arr to free. False when out of memory: the event is then not announced (it must not reach
 * the users it is hidden from). */
static bool to_hide(const cJSON *j, const char *key, store_hide_t *out, pd_str_t **arr) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, key);
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    *arr = NULL;
    *out = (store_hide_t){0};
    if (n <= 0)
        return true;
    *arr = malloc(sizeof(pd_str_t) * (size_t)n);
    if (!*arr)
        return false;
    uint32_t k = 0;
    for (const cJSON *x = a->child; x; x = x->next)
        if (cJSON_IsString(x))
            (*arr)[k++] = (pd_str_t){x->valuestring, strlen(x->valuestring)};
    store_hide_sort(*arr, k);
    *out = (store_hide_t){*arr, k};
    return true;
}

/* A room event ({"t":"j|l|u|s|h","r","u","c","m"|"why"|"sg","p","b","x"}) to the listener's
 * call. */
static void announce_room_event(store_redis_t *st, const cJSON *j, bool caused) {
    const char *t = str(j, "t"), *room = str(j, "r"), *user = str(j, "u");
    if (!t || !room || !user)
        return;
    store_room_event_t ev = {
        .room = {room, strlen(room)}, .user = {user, strlen(user)}, .count = (uint32_t)num(j, "c")};
    pd_member_t m;
    const char *devs[ROOM_CONNS_MAX];
    char *md = NULL;
    char *payload = NULL;
    pd_str_t *hide = NULL, *flips = NULL;
    if (!to_hide(j, "b", &ev.hide, &hide))
        return;
    switch (t[0]) {
    case 'j':
    case 'u':
    case 'h':
        if (!to_member(cJSON_GetObjectItemCaseSensitive(j, "m"), &m, devs, &md) ||
            (t[0] == 'h' && !to_hide(j, "x", &ev.changed, &flips))) {
            cJSON_free(md);
            free(hide);
            return;
        }
        ev.kind = t[0] == 'j'   ? STORE_ROOM_JOINED
                  : t[0] == 'u' ? STORE_ROOM_UPDATED
                                : STORE_ROOM_HIDDEN;
        ev.member = &m;
        break;
    case 'l':
        ev.kind = STORE_ROOM_LEFT;
        ev.reason = (uint8_t)num(j, "why");
        break;
    case 's': {
        ev.kind = STORE_ROOM_SIGNAL;
        ev.signal = (uint8_t)num(j, "sg");
        payload = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "p"));
        if (!payload) {
            free(hide);
            return;
        }
        ev.payload = (pd_str_t){payload, strlen(payload)};
        break;
    }
    default:
        free(hide);
        return;
    }
    store_listener_t *l = &st->base.listener;
    if (caused && l->room_caused)
        l->room_caused(l->room_ctx, &ev);
    if (!caused && l->room_event)
        l->room_event(l->room_ctx, &ev);
    cJSON_free(md);
    cJSON_free(payload);
    free(hide);
    free(flips);
}

static bool watch_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct watch *w = (const struct watch *)n;
    return w->len == len && memcmp(w->name, key, len) == 0;
}

static struct watch *find_watch(store_redis_t *st, const char *name, size_t len) {
    return (struct watch *)hmap_find(&st->watches, pd_hash(&st->key, name, len), name, len,
                                     watch_eq);
}

static struct watch *user_watch(store_redis_t *st, pd_str_t uid) {
    char ch[KEY_MAX];
    return find_watch(st, ch, ukey(ch, uid, ""));
}

/* Remembers the version of a watched user's presence this node has heard of. */
static void heard(store_redis_t *st, const pd_presence_t *p) {
    struct watch *w = user_watch(st, (pd_str_t){p->user_id, p->user_id_len});
    if (w)
        w->version = p->version;
}

/* A change announced on the user's channel: false when a catch-up read already showed it
 * (or something newer). */
static bool news(store_redis_t *st, const pd_presence_t *p) {
    struct watch *w = user_watch(st, (pd_str_t){p->user_id, p->user_id_len});
    if (!w)
        return true;
    if (w->floor && p->version <= w->floor)
        return false;
    w->floor = 0;
    w->version = p->version;
    if (w->catching)
        w->heard_during = true;
    return true;
}

static void on_message(void *ctx, const char *channel, size_t clen, const char *payload,
                       size_t plen) {
    (void)channel;
    (void)clen;
    store_redis_t *st = ctx;
    cJSON *j = cJSON_ParseWithLength(payload, plen);
    const char *t = j ? str(j, "t") : NULL;
    store_listener_t *l = &st->base.listener;
    if (!t) {
        PD_WARN(st->log, "redis", "unreadable message on %.*s", (int)clen, channel);
    } else if (strcmp(t, "p") == 0) {
        pd_presence_t p;
        const char *devs[PD_SESSIONS_PER_USER_MAX];
        if (to_presence(j, &p, devs) && news(st, &p) && l->presence_changed)
            l->presence_changed(l->ctx, &p);
    } else if (strcmp(t, "v") == 0) {
        const char *u = str(j, "u");
        if (u && l->privacy_changed)
            l->privacy_changed(l->ctx, (pd_str_t){u, strlen(u)});
        if (u && l->room_privacy)
            l->room_privacy(l->room_ctx, (pd_str_t){u, strlen(u)}, -1, (pd_str_t){0});
    } else {
        announce_room_event(st, j, false);
    }
    cJSON_Delete(j);
}

/* --- Seed compatibility --- */

/* Mirrors a presence into the seed's keys and channel (not atomic with the change: those
 * keys live in other slots). */
static void seed_mirror(store_redis_t *st, const pd_presence_t *p) {
    char key[KEY_MAX], hb[KEY_MAX], ls[32];
    size_t kl =
        (size_t)snprintf(key, sizeof(key), "presence:%.*s", (int)p->user_id_len, p->user_id);
    size_t hl = (size_t)snprintf(hb, sizeof(hb), "presence:heartbeat:%.*s", (int)p->user_id_len,
                                 p->user_id);
    size_t lsl = (size_t)snprintf(ls, sizeof(ls), "%.6f", p->last_seen);
    const char *status = pd_status_name(p->status);
    const char *argv[] = {"HSET", key,         "user_id", p->user_id, "status",
                          status, "last_seen", ls,        "device",   p->device};
    size_t argvlen[] = {4, kl, 7, p->user_id_len, 6, strlen(status), 9, lsl, 6, strlen(p->device)};
    redis_router_call(st->router, key, kl, 10, argv, argvlen, NULL, NULL);
    /* The seed reads absent optional fields as None. */
    const char *cs = p->custom_status, *act = p->activity;
    if (cs) {
        const char *a2[] = {"HSET", key, "custom_status", cs};
        size_t l2[] = {4, kl, 13, strlen(cs)};
        redis_router_call(st->router, key, kl, 4, a2, l2, NULL, NULL);
    } else {
        const char *a2[] = {"HDEL", key, "custom_status"};
        size_t l2[] = {4, kl, 13};
        redis_router_call(st->router, key, kl, 3, a2, l2, NULL, NULL);
    }
    if (act) {
        const char *a3[] = {"HSET", key, "activity", act};
        size_t l3[] = {4, kl, 8, strlen(act)};
        redis_router_call(st->router, key, kl, 4, a3, l3, NULL, NULL);
    } else {
        const char *a3[] = {"HDEL", key, "activity"};
        size_t l3[] = {4, kl, 8};
        redis_router_call(st->router, key, kl, 3, a3, l3, NULL, NULL);
    }
    if (p->status == PD_OFFLINE) {
        const char *a4[] = {"DEL", hb};
        size_t l4[] = {3, hl};
        redis_router_call(st->router, hb, hl, 2, a4, l4, NULL, NULL);
    } else {
        char ttl[16];
        size_t tl =
            (size_t)snprintf(ttl, sizeof(ttl), "%u", (st->cfg.heartbeat_ttl_ms + 999) / 1000);
        const char *a4[] = {"SET", hb, "1", "EX", ttl};
        size_t l4[] = {3, hl, 1, 2, tl};
        redis_router_call(st->router, hb, hl, 5, a4, l4, NULL, NULL);
    }
    /* PresenceInfo.to_dict() on the seed's global channel. */
    jsonw_t w;
    jw_init(&w, 256);
    jw_obj(&w);
    jw_key(&w, "user_id");
    jw_str(&w, p->user_id, p->user_id_len);
    jw_key(&w, "status");
    jw_cstr(&w, status);
    jw_key(&w, "last_seen");
    jw_time(&w, p->last_seen);
    jw_key(&w, "device");
    jw_cstr(&w, p->device);
    jw_key(&w, "custom_status");
    jw_cstr(&w, cs);
    jw_key(&w, "activity");
    jw_cstr(&w, act);
    jw_obj_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    if (b) {
        const char *a5[] = {"PUBLISH", "presence:updates", (const char *)pd_obuf_payload(b)};
        size_t l5[] = {7, 16, pd_obuf_payload_len(b)};
        redis_router_call(st->router, "presence:updates", 16, 3, a5, l5, NULL, NULL);
        pd_obuf_release(b);
    }
}

static void rd_heartbeat(store_t *base, pd_str_t user) {
    store_redis_t *st = (store_redis_t *)base;
    if (!st->cfg.seed_compat)
        return;
    char hb[KEY_MAX], ttl[16];
    size_t hl = (size_t)snprintf(hb, sizeof(hb), "presence:heartbeat:%.*s", (int)user.len, user.s);
    size_t tl = (size_t)snprintf(ttl, sizeof(ttl), "%u", (st->cfg.heartbeat_ttl_ms + 999) / 1000);
    const char *argv[] = {"SET", hb, "1", "EX", ttl};
    size_t argvlen[] = {3, hl, 1, 2, tl};
    redis_router_call(st->router, hb, hl, 5, argv, argvlen, NULL, NULL);
}

/* --- Presence --- */

/* The answer of a script that returns a presence payload. */
struct pcall {
    store_redis_t *st;
    store_presence_cb cb;
    store_remove_cb rcb;
    void *arg;
};

static int presence_reply(store_redis_t *st, const redisReply *r, pd_presence_t *p,
                          const char **devs, cJSON **root) {
    *root = NULL;
    if (r->type == REDIS_REPLY_ERROR)
        return strncmp(r->str, "LIMIT", 5) == 0 ? PD_ELIMIT : PD_EIO;
    if (r->type != REDIS_REPLY_STRING)
        return PD_EIO;
    *root = cJSON_ParseWithLength(r->str, r->len);
    if (!*root || !to_presence(*root, p, devs))
        return PD_EIO;
    if (num(*root, "ch") != 0) {
        store_listener_t *l = &st->base.listener;
        if (l->presence_caused)
            l->presence_caused(l->ctx, p);
        if (st->cfg.seed_compat)
            seed_mirror(st, p);
    }
    return 0;
}

static void upsert_done(void *arg, const redisReply *r, int err) {
    struct pcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    cJSON *root = NULL;
    if (!err)
        err = presence_reply(c->st, r, &p, devs, &root);
    if (c->cb)
        c->cb(c->arg, err, err ? NULL : &p);
    cJSON_Delete(root);
    free(c);
}

/* Field changes as the scripts take them: ops and seconds from now (Redis's clock). */
static int fields_json(store_redis_t *st, const store_user_fields_t *f, char *out, size_t size) {
    if (!f) {
        out[0] = '\0';
        return 0;
    }
    double wall = pd_clock_wall(&st->clock);
    jsonw_t w;
    jw_init(&w, 256);
    jw_obj(&w);
    jw_key(&w, "cso");
    jw_int(&w, f->custom_status.op == STORE_SET ? 2 : f->custom_status.op == STORE_CLEAR);
    if (f->custom_status.op == STORE_SET) {
        jw_key(&w, "cs");
        jw_str(&w, f->custom_status.s, f->custom_status.len);
        jw_key(&w, "csi");
        jw_time(&w,
                f->custom_status_expires > 0 ? fmax(f->custom_status_expires - wall, 0.001) : 0);
    }
    jw_key(&w, "ao");
    jw_int(&w, f->activity.op == STORE_SET ? 2 : f->activity.op == STORE_CLEAR);
    if (f->activity.op == STORE_SET) {
        jw_key(&w, "a");
        jw_str(&w, f->activity.s, f->activity.len);
        jw_key(&w, "ai");
        jw_time(&w, f->activity_expires > 0 ? fmax(f->activity_expires - wall, 0.001) : 0);
    }
    jw_key(&w, "sso");
    jw_int(&w, f->server_status_op == STORE_SET ? 2 : f->server_status_op == STORE_CLEAR);
    if (f->server_status_op == STORE_SET) {
        jw_key(&w, "ss");
        jw_int(&w, f->server_status);
        jw_key(&w, "ssi");
        jw_time(&w,
                f->server_status_expires > 0 ? fmax(f->server_status_expires - wall, 0.001) : 0);
    }
    jw_obj_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    if (!b || pd_obuf_payload_len(b) >= size) {
        pd_obuf_release(b);
        return PD_ENOMEM;
    }
    memcpy(out, pd_obuf_payload(b), pd_obuf_payload_len(b));
    out[pd_obuf_payload_len(b)] = '\0';
    pd_obuf_release(b);
    return 0;
}

static bool exp_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct expiry *e = (const struct expiry *)n;
    return e->len == len && memcmp(e->uid, key, len) == 0;
}

static void expiry_done(void *arg, const redisReply *r, int err) {
    struct pcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    cJSON *root = NULL;
    if (!err && r->type == REDIS_REPLY_STRING && r->len > 0)
        presence_reply(c->st, r, &p, devs, &root);
    cJSON_Delete(root);
    free(c);
}

static void expiry_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct expiry *e = (struct expiry *)((char *)t - offsetof(struct expiry, timer));
    store_redis_t *st = e->st;
    char p[KEY_MAX], s[KEY_MAX];
    pd_str_t uid = {e->uid, e->len};
    const char *keys[] = {p, s};
    size_t klens[] = {ukey(p, uid, ""), ukey(s, uid, ":s")};
    const char *args[] = {e->uid};
    size_t alens[] = {e->len};
    struct pcall *c = calloc(1, sizeof(*c));
    if (c) {
        c->st = st;
        if (run(st, S_EXPIRE, 2, keys, klens, 1, args, alens, expiry_done, c))
            free(c);
    }
    hmap_remove(&st->expiries, &e->node);
    free(e);
}

/* Remembers to clear a field of uid at deadline (epoch seconds): this node set it, this node
 * runs the clearing script then. (Reads apply the deadline anyway, so a node that dies
 * before its timer leaves nothing visibly wrong; only the change event is late.) */
static void arm_expiry(store_redis_t *st, pd_str_t uid, double deadline) {
    if (deadline <= 0)
        return;
    uint64_t h = pd_hash(&st->key, uid.s, uid.len);
    struct expiry *e = (struct expiry *)hmap_find(&st->expiries, h, uid.s, uid.len, exp_eq);
    double in = deadline - pd_clock_wall(&st->clock);
    uint64_t due = pd_clock_ms(&st->clock) + (uint64_t)(in > 0 ? in * 1000.0 + 5 : 0);
    if (e) {
        if (due < e->timer.due)
            wheel_schedule(st->wheel, &e->timer, due);
        return;
    }
    e = calloc(1, sizeof(*e) + uid.len + 1);
    if (!e)
        return;
    e->st = st;
    e->len = (uint16_t)uid.len;
    memcpy(e->uid, uid.s, uid.len);
    wheel_timer_init(&e->timer, expiry_fire);
    hmap_insert(&st->expiries, &e->node, h);
    wheel_schedule(st->wheel, &e->timer, due);
}

static void arm_field_expiries(store_redis_t *st, pd_str_t uid, const store_user_fields_t *f) {
    if (!f)
        return;
    if (f->custom_status.op == STORE_SET)
        arm_expiry(st, uid, f->custom_status_expires);
    if (f->activity.op == STORE_SET)
        arm_expiry(st, uid, f->activity_expires);
    if (f->server_status_op == STORE_SET)
        arm_expiry(st, uid, f->server_status_expires);
}

/* The node's index of what it registered, for sweeps after its death. */
static void index_add(store_redis_t *st, const char *suffix, const char *entry, size_t len) {
    char key[KEY_MAX];
    size_t kl = nkey(key, st->node, suffix);
    const char *argv[] = {"SADD", key, entry};
    size_t argvlen[] = {4, kl, len};
    redis_router_call(st->router, key, kl, 3, argv, argvlen, NULL, NULL);
}

static void index_remove(store_redis_t *st, const char *suffix, const char *entry, size_t len) {
    char key[KEY_MAX];
    size_t kl = nkey(key, st->node, suffix);
    const char *argv[] = {"SREM", key, entry};
    size_t argvlen[] = {4, kl, len};
    redis_router_call(st->router, key, kl, 3, argv, argvlen, NULL, NULL);
}

static size_t session_entry(char *out, pd_str_t uid, uint64_t sid) {
    int n = snprintf(out, KEY_MAX, "%.*s", (int)uid.len, uid.s);
    out[n] = '\0';
    /* user id, NUL, sid: ids cannot hold NUL, so the split is unambiguous */
    int m = snprintf(out + n + 1, KEY_MAX - (size_t)n - 1, "%llu", (unsigned long long)sid);
    return (size_t)n + 1 + (size_t)m;
}

static int rd_session_upsert(store_t *base, pd_str_t user, const store_session_t *s,
                             const store_user_fields_t *fields, store_presence_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char p[KEY_MAX], sk[KEY_MAX], sess[96], claim[4], max[8], fj[2048], entry[KEY_MAX];
    if (fields_json(st, fields, fj, sizeof(fj)))
        return PD_ENOMEM;
    const char *keys[] = {p, sk};
    size_t klens[] = {ukey(p, user, ""), ukey(sk, user, ":s")};
    size_t sl =
        (size_t)snprintf(sess, sizeof(sess), "%s/%llu", st->node, (unsigned long long)s->sid);
    size_t cl = (size_t)snprintf(claim, sizeof(claim), "%u", s->status);
    size_t ml = (size_t)snprintf(max, sizeof(max), "%d", PD_SESSIONS_PER_USER_MAX);
    const char *args[] = {user.s, sess, s->device, claim, fj, max};
    size_t alens[] = {user.len, sl, s->device_len, cl, strlen(fj), ml};
    struct pcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->cb = cb;
    c->arg = arg;
    /* Indexed before it exists: a crash between the two leaves an entry the sweep ignores,
     * never a session nobody would sweep. A known session is indexed already: a status
     * change costs the script alone. */
    size_t elen = session_entry(entry, user, s->sid);
    if (!s->known)
        index_add(st, ":s", entry, elen);
    int rc = run(st, S_UPSERT, 2, keys, klens, 6, args, alens, upsert_done, c);
    if (rc) {
        free(c);
        return rc;
    }
    arm_field_expiries(st, user, fields);
    return 0;
}

static int rd_user_update(store_t *base, pd_str_t user, const store_user_fields_t *fields,
                          store_presence_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char p[KEY_MAX], sk[KEY_MAX], fj[2048];
    if (fields_json(st, fields, fj, sizeof(fj)))
        return PD_ENOMEM;
    const char *keys[] = {p, sk};
    size_t klens[] = {ukey(p, user, ""), ukey(sk, user, ":s")};
    const char *args[] = {user.s, fj};
    size_t alens[] = {user.len, strlen(fj)};
    struct pcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->cb = cb;
    c->arg = arg;
    int rc = run(st, S_UPDATE, 2, keys, klens, 2, args, alens, upsert_done, c);
    if (rc) {
        free(c);
        return rc;
    }
    arm_field_expiries(st, user, fields);
    return 0;
}

struct rmcall {
    store_redis_t *st;
    store_remove_cb cb;
    void *arg;
    int mode;
    size_t entry_len;
    char entry[KEY_MAX]; /* the index entry to drop once the session is gone for good */
};

static void remove_done(void *arg, const redisReply *r, int err) {
    struct rmcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    bool lingering = false;
    if (!err && r->type == REDIS_REPLY_STRING) {
        if (r->len == 1 && r->str[0] == 'L') {
            lingering = true;
        } else if (r->len > 1) {
            pd_presence_t p;
            const char *devs[PD_SESSIONS_PER_USER_MAX];
            cJSON *root = NULL;
            presence_reply(c->st, r, &p, devs, &root);
            cJSON_Delete(root);
        }
    } else if (!err) {
        err = PD_EIO;
    }
    if (!err && !lingering)
        index_remove(c->st, ":s", c->entry, c->entry_len);
    if (c->cb)
        c->cb(c->arg, err, lingering);
    free(c);
}

static int rd_session_remove(store_t *base, pd_str_t user, uint64_t sid, int mode,
                             store_remove_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char p[KEY_MAX], sk[KEY_MAX], sess[96], m[4];
    const char *keys[] = {p, sk};
    size_t klens[] = {ukey(p, user, ""), ukey(sk, user, ":s")};
    size_t sl = (size_t)snprintf(sess, sizeof(sess), "%s/%llu", st->node, (unsigned long long)sid);
    size_t mlen = (size_t)snprintf(m, sizeof(m), "%d", mode);
    const char *args[] = {user.s, sess, m};
    size_t alens[] = {user.len, sl, mlen};
    struct rmcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->cb = cb;
    c->arg = arg;
    c->mode = mode;
    c->entry_len = session_entry(c->entry, user, sid);
    int rc = run(st, S_REMOVE, 2, keys, klens, 3, args, alens, remove_done, c);
    if (rc)
        free(c);
    return rc;
}

/* A bulk read: one script per user (each in its own slot), answered together. */
struct bulk {
    struct gate gate; /* first: the gate's callbacks cast back */
    store_redis_t *st;
    store_bulk_cb cb;
    void *arg;
    size_t n, left;
    int err;
    redisReply **replies; /* kept until all are in */
    pd_str_t *ids;        /* copies of the ids asked for (the hidden ones are reported) */
    pd_str_t requester;   /* a copy; s NULL for no privacy filter */
};

struct bulk_one {
    struct bulk *b;
    size_t i;
};

static redisReply *copy_reply(const redisReply *r) {
    redisReply *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->type = r->type;
    c->integer = r->integer;
    if (r->str) {
        c->str = malloc(r->len + 1);
        if (!c->str) {
            free(c);
            return NULL;
        }
        memcpy(c->str, r->str, r->len);
        c->str[r->len] = '\0';
        c->len = r->len;
    }
    return c;
}

static void free_copy(redisReply *r) {
    if (r) {
        free(r->str);
        free(r);
    }
}

static void bulk_free(struct bulk *b) {
    free(b->replies);
    for (size_t i = 0; i < b->n; i++)
        free((char *)b->ids[i].s);
    free(b->ids);
    free((char *)b->requester.s);
    free(b);
}

static void bulk_finish(struct bulk *b) {
    pd_presence_t *ps = calloc(b->n + 1, sizeof(*ps));
    const char **devs = calloc(b->n * PD_SESSIONS_PER_USER_MAX + 1, sizeof(char *));
    pd_str_t *hidden = calloc(b->n + 1, sizeof(*hidden));
    cJSON **roots = calloc(b->n + 1, sizeof(*roots));
    size_t np = 0, nh = 0;
    int err = b->err;
    if (!ps || !devs || !hidden || !roots)
        err = PD_ENOMEM;
    for (size_t i = 0; !err && i < b->n; i++) {
        const redisReply *r = b->replies[i];
        if (!r || r->type != REDIS_REPLY_STRING) {
            err = PD_EIO;
            break;
        }
        if (r->len == 1 && r->str[0] == 'U')
            continue;
        if (r->len == 1 && r->str[0] == 'H') {
            hidden[nh++] = b->ids[i];
            continue;
        }
        roots[i] = cJSON_ParseWithLength(r->str, r->len);
        if (roots[i] && to_presence(roots[i], &ps[np], devs + np * PD_SESSIONS_PER_USER_MAX)) {
            heard(b->st, &ps[np]);
            np++;
        }
    }
    if (b->st->closing) {
        /* the caller is gone: nothing to call */
    } else if (err) {
        b->cb(b->arg, err, NULL, 0, NULL, 0);
    } else {
        b->cb(b->arg, 0, ps, np, hidden, nh);
    }
    for (size_t i = 0; i < b->n; i++) {
        if (roots)
            cJSON_Delete(roots[i]);
        free_copy(b->replies[i]);
    }
    free(roots);
    free(ps);
    free(devs);
    free(hidden);
    bulk_free(b);
}

static void bulk_one_done(void *arg, const redisReply *r, int err) {
    struct bulk_one *o = arg;
    struct bulk *b = o->b;
    if (b->st->closing)
        err = PD_ECLOSED; /* bulk_finish then frees without calling back */
    if (err)
        b->err = err;
    else if (!(b->replies[o->i] = copy_reply(r)))
        b->err = PD_ENOMEM;
    free(o);
    if (--b->left == 0)
        bulk_finish(b);
}

static bool rd_ready(store_t *base) {
    return redis_router_ready(((store_redis_t *)base)->router);
}

static bool bulk_waiting(struct gate *g) {
    struct bulk *b = (struct bulk *)g;
    for (size_t i = 0; i < b->n; i++) {
        char ch[KEY_MAX];
        if (redis_router_subscribing(b->st->router, ch, ukey(ch, b->ids[i], "")))
            return true;
    }
    return false;
}

static void bulk_drop(struct gate *g) {
    bulk_free((struct bulk *)g);
}

/* One script per user; the answer once all are in. */
static void bulk_go(struct gate *g) {
    struct bulk *b = (struct bulk *)g;
    store_redis_t *st = b->st;
    size_t n = b->n;
    for (size_t i = 0; i < n; i++) {
        pd_str_t u = b->ids[i];
        char p[KEY_MAX], s[KEY_MAX], c[KEY_MAX], bl[KEY_MAX];
        const char *keys[] = {p, s, c, bl};
        size_t klens[] = {ukey(p, u, ""), ukey(s, u, ":s"), ukey(c, u, ":c"), ukey(bl, u, ":b")};
        const char *args[] = {u.s, b->requester.s ? b->requester.s : ""};
        size_t alens[] = {u.len, b->requester.len};
        struct bulk_one *o = malloc(sizeof(*o));
        int rc = o ? 0 : PD_ENOMEM;
        if (o) {
            o->b = b;
            o->i = i;
            rc = run(st, S_GET, 4, keys, klens, 2, args, alens, bulk_one_done, o);
            if (rc)
                free(o);
        }
        if (rc) {
            /* This one and the rest are not sent: count them out (b may be freed then). */
            b->err = rc;
            b->left -= n - i;
            if (b->left == 0)
                bulk_finish(b);
            return;
        }
    }
}

static char *dup_str(pd_str_t x) {
    char *c = malloc(x.len + 1);
    if (c) {
        if (x.len)
            memcpy(c, x.s, x.len);
        c[x.len] = '\0';
    }
    return c;
}

static int rd_presence_get(store_t *base, pd_str_t requester, const pd_str_t *users, size_t n,
                           store_bulk_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL; /* reads are answered now or not at all */
    if (n == 0) {
        cb(arg, 0, NULL, 0, NULL, 0);
        return 0;
    }
    struct bulk *b = calloc(1, sizeof(*b));
    if (!b)
        return PD_ENOMEM;
    b->st = st;
    b->replies = calloc(n, sizeof(*b->replies));
    b->ids = calloc(n, sizeof(*b->ids));
    if (requester.s)
        b->requester = (pd_str_t){dup_str(requester), requester.len};
    bool ok = b->replies && b->ids && (!requester.s || b->requester.s);
    for (size_t i = 0; ok && i < n; i++) {
        b->ids[i] = (pd_str_t){dup_str(users[i]), users[i].len};
        b->n = i + 1; /* what bulk_free frees */
        ok = b->ids[i].s != NULL;
    }
    if (!ok) {
        bulk_free(b);
        return PD_ENOMEM;
    }
    b->cb = cb;
    b->arg = arg;
    b->left = n;
    b->gate.waiting = bulk_waiting;
    b->gate.go = bulk_go;
    b->gate.drop = bulk_drop;
    gate_start(st, &b->gate);
    return 0;
}

/* --- Privacy --- */

struct privcall {
    store_redis_t *st;
    store_privacy_cb pcb;
    store_done_cb dcb;
    store_bits_cb bcb;
    store_explain_cb xcb;
    void *arg;
    size_t n;
    int op;            /* a block or unblock: told to rooms once done (ulen > 0) */
    size_t ulen, olen; /* user and other in ids */
    char ids[];
};

static void priv_get_done(void *arg, const redisReply *r, int err) {
    struct privcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    cJSON *j = !err && r->type == REDIS_REPLY_STRING ? cJSON_ParseWithLength(r->str, r->len) : NULL;
    if (!j) {
        c->pcb(c->arg, err ? err : PD_EIO, NULL);
        free(c);
        return;
    }
    const cJSON *cl = cJSON_GetObjectItemCaseSensitive(j, "c");
    const cJSON *bl = cJSON_GetObjectItemCaseSensitive(j, "b");
    size_t nc = (size_t)cJSON_GetArraySize(cl), nb = (size_t)cJSON_GetArraySize(bl);
    pd_str_t *cs = calloc(nc + 1, sizeof(*cs)), *bs = calloc(nb + 1, sizeof(*bs));
    if (!cs || !bs) {
        c->pcb(c->arg, PD_ENOMEM, NULL);
    } else {
        store_privacy_t p = {.visibility = (uint8_t)num(j, "vis")};
        for (const cJSON *x = cl ? cl->child : NULL; x; x = x->next)
            if (cJSON_IsString(x))
                cs[p.ncontacts++] = (pd_str_t){x->valuestring, strlen(x->valuestring)};
        for (const cJSON *x = bl ? bl->child : NULL; x; x = x->next)
            if (cJSON_IsString(x))
                bs[p.nblocked++] = (pd_str_t){x->valuestring, strlen(x->valuestring)};
        p.contacts = cs;
        p.blocked = bs;
        c->pcb(c->arg, 0, &p);
    }
    free(cs);
    free(bs);
    cJSON_Delete(j);
    free(c);
}

static int three_keys(pd_str_t user, char *p, char *c, char *b, size_t *klens) {
    klens[0] = ukey(p, user, "");
    klens[1] = ukey(c, user, ":c");
    klens[2] = ukey(b, user, ":b");
    return 0;
}

static int rd_privacy_get(store_t *base, pd_str_t user, store_privacy_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL;
    char p[KEY_MAX], c[KEY_MAX], b[KEY_MAX];
    size_t klens[3];
    three_keys(user, p, c, b, klens);
    const char *keys[] = {p, c, b};
    struct privcall *pc = calloc(1, sizeof(*pc));
    if (!pc)
        return PD_ENOMEM;
    pc->st = st;
    pc->pcb = cb;
    pc->arg = arg;
    int rc = run(st, S_PRIV_GET, 3, keys, klens, 0, NULL, NULL, priv_get_done, pc);
    if (rc)
        free(pc);
    return rc;
}

static void done_reply(void *arg, const redisReply *r, int err) {
    struct privcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    if (!err && r->type == REDIS_REPLY_ERROR)
        err = strncmp(r->str, "LIMIT", 5) == 0 ? PD_ELIMIT : PD_EIO;
    /* Rooms apply this node's block at once, before its answer (the change's message on the
     * user's channel comes later). */
    store_listener_t *l = &c->st->base.listener;
    if (!err && c->ulen && l->room_privacy)
        l->room_privacy(l->room_ctx, (pd_str_t){c->ids, c->ulen}, c->op,
                        (pd_str_t){c->ids + c->ulen + 1, c->olen});
    if (c->dcb)
        c->dcb(c->arg, err);
    free(c);
}

static int rd_privacy_change(store_t *base, pd_str_t user, int op, uint8_t visibility,
                             pd_str_t other, uint32_t max_entries, store_done_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char p[KEY_MAX], c[KEY_MAX], b[KEY_MAX], ops[4], vis[4], max[16];
    size_t klens[3];
    three_keys(user, p, c, b, klens);
    const char *keys[] = {p, c, b};
    size_t ol = (size_t)snprintf(ops, sizeof(ops), "%d", op);
    size_t vl = (size_t)snprintf(vis, sizeof(vis), "%u", visibility);
    size_t ml = (size_t)snprintf(max, sizeof(max), "%u", max_entries);
    const char *args[] = {user.s, ops, vis, other.s ? other.s : "", max};
    size_t alens[] = {user.len, ol, vl, other.s ? other.len : 0, ml};
    bool block = (op == STORE_PRIV_BLOCK || op == STORE_PRIV_UNBLOCK) && other.s;
    struct privcall *pc = calloc(1, sizeof(*pc) + (block ? user.len + other.len + 2 : 0));
    if (!pc)
        return PD_ENOMEM;
    if (block) {
        pc->op = op;
        pc->ulen = user.len;
        pc->olen = other.len;
        memcpy(pc->ids, user.s, user.len);
        memcpy(pc->ids + user.len + 1, other.s, other.len);
    }
    pc->st = st;
    pc->dcb = cb;
    pc->arg = arg;
    int rc = run(st, S_PRIV_CHANGE, 3, keys, klens, 5, args, alens, done_reply, pc);
    if (rc)
        free(pc);
    return rc;
}

static int rd_privacy_replace(store_t *base, pd_str_t user, const store_privacy_t *np,
                              uint32_t max_entries, store_done_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (np->ncontacts > max_entries || np->nblocked > max_entries) {
        cb(arg, PD_ELIMIT);
        return 0;
    }
    char p[KEY_MAX], c[KEY_MAX], b[KEY_MAX], vis[4], nc[16];
    size_t klens[3];
    three_keys(user, p, c, b, klens);
    const char *keys[] = {p, c, b};
    size_t nargs = 3 + np->ncontacts + np->nblocked;
    const char **args = calloc(nargs, sizeof(*args));
    size_t *alens = calloc(nargs, sizeof(*alens));
    struct privcall *pc = calloc(1, sizeof(*pc));
    int rc = PD_ENOMEM;
    if (args && alens && pc) {
        args[0] = user.s;
        alens[0] = user.len;
        alens[1] = (size_t)snprintf(vis, sizeof(vis), "%u", np->visibility);
        args[1] = vis;
        alens[2] = (size_t)snprintf(nc, sizeof(nc), "%u", np->ncontacts);
        args[2] = nc;
        for (uint32_t i = 0; i < np->ncontacts; i++) {
            args[3 + i] = np->contacts[i].s;
            alens[3 + i] = np->contacts[i].len;
        }
        for (uint32_t i = 0; i < np->nblocked; i++) {
            args[3 + np->ncontacts + i] = np->blocked[i].s;
            alens[3 + np->ncontacts + i] = np->blocked[i].len;
        }
        pc->st = st;
        pc->dcb = cb;
        pc->arg = arg;
        rc = run(st, S_PRIV_REPLACE, 3, keys, klens, (int)nargs, args, alens, done_reply, pc);
    }
    if (rc)
        free(pc);
    free(args);
    free(alens);
    return rc;
}

static void bits_done(void *arg, const redisReply *r, int err) {
    struct privcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    uint8_t *bits = calloc(c->n + 1, 1);
    if (!err && (!bits || r->type != REDIS_REPLY_ARRAY || r->elements != c->n))
        err = bits ? PD_EIO : PD_ENOMEM;
    for (size_t i = 0; !err && i < c->n; i++)
        bits[i] = r->element[i]->integer != 0;
    c->bcb(c->arg, err, bits);
    free(bits);
    free(c);
}

static int rd_can_see(store_t *base, pd_str_t target, const pd_str_t *requesters, size_t n,
                      store_bits_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL;
    char p[KEY_MAX], c[KEY_MAX], b[KEY_MAX];
    size_t klens[3];
    three_keys(target, p, c, b, klens);
    const char *keys[] = {p, c, b};
    const char **args = calloc(n + 1, sizeof(*args));
    size_t *alens = calloc(n + 1, sizeof(*alens));
    struct privcall *pc = calloc(1, sizeof(*pc));
    int rc = PD_ENOMEM;
    if (args && alens && pc) {
        args[0] = target.s;
        alens[0] = target.len;
        for (size_t i = 0; i < n; i++) {
            args[1 + i] = requesters[i].s;
            alens[1 + i] = requesters[i].len;
        }
        pc->st = st;
        pc->bcb = cb;
        pc->arg = arg;
        pc->n = n;
        rc = run(st, S_CAN_SEE, 3, keys, klens, (int)n + 1, args, alens, bits_done, pc);
    }
    if (rc)
        free(pc);
    free(args);
    free(alens);
    return rc;
}

static void explain_done(void *arg, const redisReply *r, int err) {
    struct privcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    if (!err && r->type == REDIS_REPLY_STRING && r->len == 0) {
        c->xcb(c->arg, PD_ENOTFOUND, NULL);
        free(c);
        return;
    }
    cJSON *j = !err && r->type == REDIS_REPLY_STRING ? cJSON_ParseWithLength(r->str, r->len) : NULL;
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    if (!j || !to_presence(cJSON_GetObjectItemCaseSensitive(j, "p"), &p, devs)) {
        c->xcb(c->arg, err ? err : PD_EIO, NULL);
        cJSON_Delete(j);
        free(c);
        return;
    }
    store_session_view_t sv[PD_SESSIONS_PER_USER_MAX];
    char nodes[PD_SESSIONS_PER_USER_MAX][80];
    size_t n = 0;
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(j, "s");
    for (const cJSON *x = ss ? ss->child : NULL; x && n < PD_SESSIONS_PER_USER_MAX; x = x->next) {
        const char *k = str(x, "k"), *slash = k ? strrchr(k, '/') : NULL;
        if (!slash)
            continue;
        snprintf(nodes[n], sizeof(nodes[n]), "%.*s", (int)(slash - k), k);
        sv[n] = (store_session_view_t){.sid = strtoull(slash + 1, NULL, 10),
                                       .node = nodes[n],
                                       .device = str(x, "d") ? str(x, "d") : "",
                                       .status = (uint8_t)num(x, "s"),
                                       .lingering = num(x, "l") != 0};
        /* Sessions of this node are called "local", so the engine adds their liveness;
         * others are shown by node id (without the incarnation). */
        if (strcmp(nodes[n], c->st->node) == 0)
            sv[n].node = "local";
        else if (strchr(nodes[n], '~'))
            *strchr(nodes[n], '~') = '\0';
        n++;
    }
    store_explain_t x = {.presence = &p,
                         .sessions = sv,
                         .nsessions = n,
                         .visibility = (uint8_t)num(j, "vis"),
                         .server_status = (uint8_t)num(j, "ss"),
                         .server_status_expires = num(j, "sse"),
                         .custom_status_expires = num(j, "cse"),
                         .activity_expires = num(j, "ae")};
    c->xcb(c->arg, 0, &x);
    cJSON_Delete(j);
    free(c);
}

static int rd_explain(store_t *base, pd_str_t user, store_explain_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL;
    char p[KEY_MAX], s[KEY_MAX];
    const char *keys[] = {p, s};
    size_t klens[] = {ukey(p, user, ""), ukey(s, user, ":s")};
    const char *args[] = {user.s};
    size_t alens[] = {user.len};
    struct privcall *pc = calloc(1, sizeof(*pc));
    if (!pc)
        return PD_ENOMEM;
    pc->st = st;
    pc->xcb = cb;
    pc->arg = arg;
    int rc = run(st, S_EXPLAIN, 2, keys, klens, 1, args, alens, explain_done, pc);
    if (rc)
        free(pc);
    return rc;
}

/* --- Watching --- */

static int watch_name(store_redis_t *st, const char *name, size_t len) {
    uint64_t h = pd_hash(&st->key, name, len);
    struct watch *w = (struct watch *)hmap_find(&st->watches, h, name, len, watch_eq);
    if (w) {
        w->refs++;
        return 0;
    }
    w = calloc(1, sizeof(*w) + len + 1);
    if (!w)
        return PD_ENOMEM;
    w->refs = 1;
    w->len = (uint16_t)len;
    memcpy(w->name, name, len);
    int rc = redis_router_subscribe(st->router, name, len);
    if (rc) {
        free(w);
        return rc;
    }
    hmap_insert(&st->watches, &w->node, h);
    return 0;
}

static void unwatch_name(store_redis_t *st, const char *name, size_t len) {
    uint64_t h = pd_hash(&st->key, name, len);
    struct watch *w = (struct watch *)hmap_find(&st->watches, h, name, len, watch_eq);
    if (!w || --w->refs > 0)
        return;
    redis_router_unsubscribe(st->router, name, len);
    hmap_remove(&st->watches, &w->node);
    free(w);
}

static int rd_watch(store_t *base, pd_str_t user) {
    char ch[KEY_MAX];
    return watch_name((store_redis_t *)base, ch, ukey(ch, user, ""));
}

static void rd_unwatch(store_t *base, pd_str_t user) {
    char ch[KEY_MAX];
    unwatch_name((store_redis_t *)base, ch, ukey(ch, user, ""));
}

static int rd_room_watch(store_t *base, pd_str_t room) {
    char ch[KEY_MAX];
    return watch_name((store_redis_t *)base, ch, rkey(ch, room, ""));
}

static void rd_room_unwatch(store_t *base, pd_str_t room) {
    char ch[KEY_MAX];
    unwatch_name((store_redis_t *)base, ch, rkey(ch, room, ""));
}

/* --- Rooms --- */

struct roomcall {
    store_redis_t *st;
    store_join_cb jcb;
    store_remove_cb rcb;
    store_done_cb dcb;
    store_members_cb mcb;
    store_count_cb ccb;
    void *arg;
    size_t entry_len;
    char entry[KEY_MAX * 2];
};

static size_t room_entry(char *out, pd_str_t room, pd_str_t user, uint64_t sid) {
    int n = snprintf(out, KEY_MAX * 2, "%.*s", (int)room.len, room.s);
    int m = snprintf(out + n + 1, KEY_MAX * 2 - (size_t)n - 1, "%.*s", (int)user.len, user.s);
    int k = snprintf(out + n + m + 2, KEY_MAX * 2 - (size_t)(n + m) - 2, "%llu",
                     (unsigned long long)sid);
    return (size_t)(n + m + k) + 2;
}

static void announce_caused(store_redis_t *st, const cJSON *ev) {
    if (cJSON_IsObject(ev))
        announce_room_event(st, ev, true);
}

static void join_done(void *arg, const redisReply *r, int err) {
    struct roomcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    cJSON *j = NULL;
    if (!err && r->type == REDIS_REPLY_ERROR)
        err = strncmp(r->str, "FULL", 4) == 0    ? PD_EFULL
              : strncmp(r->str, "LIMIT", 5) == 0 ? PD_ELIMIT
                                                 : PD_EIO;
    else if (!err &&
             (r->type != REDIS_REPLY_STRING || !(j = cJSON_ParseWithLength(r->str, r->len))))
        err = PD_EIO;
    pd_member_t m;
    const char *devs[ROOM_CONNS_MAX];
    char *md = NULL;
    if (!err && !to_member(cJSON_GetObjectItemCaseSensitive(j, "m"), &m, devs, &md))
        err = PD_EIO;
    if (!err) {
        announce_caused(c->st, cJSON_GetObjectItemCaseSensitive(j, "ev"));
        c->jcb(c->arg, 0, &m, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fresh")),
               (uint32_t)num(j, "count"));
    } else {
        index_remove(c->st, ":r", c->entry, c->entry_len);
        c->jcb(c->arg, err, NULL, false, 0);
    }
    cJSON_free(md);
    cJSON_Delete(j);
    free(c);
}

/* A hide list as a JSON array (the scripts' and the signals' form). */
static void jw_hide(jsonw_t *w, const store_hide_t *hide) {
    jw_arr(w);
    for (uint32_t i = 0; hide && i < hide->n; i++)
        jw_str(w, hide->ids[i].s, hide->ids[i].len);
    jw_arr_end(w);
}

static pd_obuf_t *hide_json(const store_hide_t *hide) {
    size_t hint = 8;
    for (uint32_t i = 0; hide && i < hide->n; i++)
        hint += hide->ids[i].len + 8;
    jsonw_t w;
    jw_init(&w, hint);
    jw_hide(&w, hide);
    return jw_finish(&w);
}

static int rd_room_join(store_t *base, pd_str_t room, pd_str_t user, const store_room_conn_t *in,
                        pd_str_t metadata, uint32_t max_members, store_join_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char h[KEY_MAX], z[KEY_MAX], ck[96], maxm[16], maxc[8];
    const char *keys[] = {h, z};
    size_t klens[] = {rkey(h, room, ""), rkey(z, room, ":z")};
    size_t ckl = (size_t)snprintf(ck, sizeof(ck), "%s/%llu", st->node, (unsigned long long)in->sid);
    size_t mml = (size_t)snprintf(maxm, sizeof(maxm), "%u", max_members);
    size_t mcl = (size_t)snprintf(maxc, sizeof(maxc), "%d", ROOM_CONNS_MAX);
    pd_obuf_t *hj = hide_json(&in->hide);
    if (!hj)
        return PD_ENOMEM;
    const char *args[] = {room.s,
                          user.s,
                          ck,
                          in->device,
                          metadata.s ? metadata.s : "",
                          maxm,
                          maxc,
                          (const char *)pd_obuf_payload(hj)};
    size_t alens[] = {room.len,
                      user.len,
                      ckl,
                      in->device_len,
                      metadata.s ? metadata.len : 0,
                      mml,
                      mcl,
                      pd_obuf_payload_len(hj)};
    struct roomcall *c = calloc(1, sizeof(*c));
    if (!c) {
        pd_obuf_release(hj);
        return PD_ENOMEM;
    }
    c->st = st;
    c->jcb = cb;
    c->arg = arg;
    c->entry_len = room_entry(c->entry, room, user, in->sid);
    index_add(st, ":r", c->entry, c->entry_len);
    int rc = run(st, S_ROOM_JOIN, 2, keys, klens, 8, args, alens, join_done, c);
    pd_obuf_release(hj);
    if (rc)
        free(c);
    return rc;
}

static void leave_done(void *arg, const redisReply *r, int err) {
    struct roomcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    bool lingering = false;
    if (!err && r->type == REDIS_REPLY_STRING) {
        if (r->len == 1 && r->str[0] == 'L') {
            lingering = true;
        } else if (r->len == 1 && r->str[0] == 'N') {
            err = PD_ENOTFOUND;
        } else if (r->len > 1) {
            cJSON *j = cJSON_ParseWithLength(r->str, r->len);
            announce_caused(c->st, j);
            cJSON_Delete(j);
        }
    } else if (!err) {
        err = PD_EIO;
    }
    if (!lingering && (!err || err == PD_ENOTFOUND))
        index_remove(c->st, ":r", c->entry, c->entry_len);
    if (c->rcb)
        c->rcb(c->arg, err, lingering);
    free(c);
}

static int rd_room_leave(store_t *base, pd_str_t room, pd_str_t user, uint64_t sid, int mode,
                         int reason, store_remove_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char h[KEY_MAX], z[KEY_MAX], ck[96], m[4], why[4];
    const char *keys[] = {h, z};
    size_t klens[] = {rkey(h, room, ""), rkey(z, room, ":z")};
    size_t ckl = (size_t)snprintf(ck, sizeof(ck), "%s/%llu", st->node, (unsigned long long)sid);
    size_t ml = (size_t)snprintf(m, sizeof(m), "%d", mode);
    size_t wl = (size_t)snprintf(why, sizeof(why), "%d", reason);
    const char *args[] = {room.s, user.s, ck, m, why};
    size_t alens[] = {room.len, user.len, ckl, ml, wl};
    struct roomcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->rcb = cb;
    c->arg = arg;
    c->entry_len = room_entry(c->entry, room, user, sid);
    int rc = run(st, S_ROOM_LEAVE, 2, keys, klens, 5, args, alens, leave_done, c);
    if (rc)
        free(c);
    return rc;
}

static void update_done(void *arg, const redisReply *r, int err) {
    struct roomcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    if (!err && r->type == REDIS_REPLY_STRING && r->len == 1 && r->str[0] == 'N')
        err = PD_ENOTFOUND;
    else if (!err && r->type == REDIS_REPLY_STRING && r->len > 2) {
        cJSON *j = cJSON_ParseWithLength(r->str, r->len);
        announce_caused(c->st, j);
        cJSON_Delete(j);
    } else if (!err && r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)
        err = PD_EIO;
    if (c->dcb)
        c->dcb(c->arg, err);
    free(c);
}

static int rd_room_update(store_t *base, pd_str_t room, pd_str_t user, pd_str_t metadata,
                          store_done_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    char h[KEY_MAX], z[KEY_MAX];
    const char *keys[] = {h, z};
    size_t klens[] = {rkey(h, room, ""), rkey(z, room, ":z")};
    const char *args[] = {room.s, user.s, metadata.s};
    size_t alens[] = {room.len, user.len, metadata.len};
    struct roomcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->dcb = cb;
    c->arg = arg;
    int rc = run(st, S_ROOM_UPDATE, 2, keys, klens, 3, args, alens, update_done, c);
    if (rc)
        free(c);
    return rc;
}

static void members_done(void *arg, const redisReply *r, int err) {
    struct roomcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    cJSON *j = !err && r->type == REDIS_REPLY_STRING ? cJSON_ParseWithLength(r->str, r->len) : NULL;
    const cJSON *ms = j ? cJSON_GetObjectItemCaseSensitive(j, "ms") : NULL;
    size_t n = (size_t)cJSON_GetArraySize(ms);
    pd_member_t *arr = calloc(n + 1, sizeof(*arr));
    const char **devs = calloc(n * ROOM_CONNS_MAX + 1, sizeof(char *));
    char **mds = calloc(n + 1, sizeof(char *));
    size_t k = 0;
    if (!j || !arr || !devs || !mds) {
        c->mcb(c->arg, err ? err : PD_EIO, NULL, 0, 0, false);
    } else {
        for (const cJSON *x = ms->child; x; x = x->next)
            if (to_member(x, &arr[k], devs + k * ROOM_CONNS_MAX, &mds[k]))
                k++;
        c->mcb(c->arg, 0, arr, k, (uint32_t)num(j, "count"),
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "more")));
    }
    for (size_t i = 0; mds && i < k; i++)
        cJSON_free(mds[i]);
    free(mds);
    free(devs);
    free(arr);
    cJSON_Delete(j);
    free(c);
}

/* A members read, gated on this node's subscription to the room (a join's first page: the
 * events after it must reach this node). */
struct mread {
    struct gate gate; /* first: the gate's callbacks cast back */
    store_members_cb cb;
    void *arg;
    uint32_t limit;
    pd_str_t room, after, requester; /* in buf */
    char buf[];
};

static bool mread_waiting(struct gate *g) {
    struct mread *m = (struct mread *)g;
    char ch[KEY_MAX];
    return redis_router_subscribing(g->st->router, ch, rkey(ch, m->room, ""));
}

static void mread_drop(struct gate *g) {
    free(g);
}

static int mread_send(struct mread *m) {
    store_redis_t *st = m->gate.st;
    char h[KEY_MAX], z[KEY_MAX], lim[16];
    const char *keys[] = {h, z};
    size_t klens[] = {rkey(h, m->room, ""), rkey(z, m->room, ":z")};
    size_t ll = (size_t)snprintf(lim, sizeof(lim), "%u", m->limit);
    const char *args[] = {m->after.s, lim, m->requester.s};
    size_t alens[] = {m->after.len, ll, m->requester.len};
    struct roomcall *c = calloc(1, sizeof(*c));
    int rc = c ? 0 : PD_ENOMEM;
    if (c) {
        c->st = st;
        c->mcb = m->cb;
        c->arg = m->arg;
        rc = run(st, S_ROOM_MEMBERS, 2, keys, klens, 3, args, alens, members_done, c);
        if (rc)
            free(c);
    }
    return rc;
}

static void mread_go(struct gate *g) {
    struct mread *m = (struct mread *)g;
    int rc = mread_send(m);
    if (rc)
        m->cb(m->arg, rc, NULL, 0, 0, false);
    free(m);
}

static int rd_room_members(store_t *base, pd_str_t room, pd_str_t requester, pd_str_t after,
                           uint32_t limit, store_members_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL;
    size_t alen = after.s ? after.len : 0, qlen = requester.s ? requester.len : 0;
    struct mread *m = calloc(1, sizeof(*m) + room.len + alen + qlen + 3);
    if (!m)
        return PD_ENOMEM;
    m->cb = cb;
    m->arg = arg;
    m->limit = limit;
    memcpy(m->buf, room.s, room.len);
    m->room = (pd_str_t){m->buf, room.len};
    if (alen)
        memcpy(m->buf + room.len + 1, after.s, alen);
    m->after = (pd_str_t){m->buf + room.len + 1, alen};
    char *q = m->buf + room.len + alen + 2;
    if (qlen)
        memcpy(q, requester.s, qlen);
    m->requester = (pd_str_t){q, qlen}; /* '' for a backend: nobody left out */
    m->gate.st = st;
    m->gate.waiting = mread_waiting;
    m->gate.go = mread_go;
    m->gate.drop = mread_drop;
    if (!mread_waiting(&m->gate)) {
        int rc = mread_send(m); /* the usual case: read now, failures returned */
        free(m);
        return rc;
    }
    gate_start(st, &m->gate);
    return 0;
}

static void count_done(void *arg, const redisReply *r, int err) {
    struct roomcall *c = arg;
    if (caller_gone(c->st, c))
        return;
    if (!err && r->type != REDIS_REPLY_INTEGER)
        err = PD_EIO;
    c->ccb(c->arg, err, err ? 0 : (uint32_t)r->integer);
    free(c);
}

static int rd_room_count(store_t *base, pd_str_t room, store_count_cb cb, void *arg) {
    store_redis_t *st = (store_redis_t *)base;
    if (!rd_ready(base))
        return PD_EUNAVAIL;
    char z[KEY_MAX];
    size_t zl = rkey(z, room, ":z");
    const char *argv[] = {"ZCARD", z};
    size_t argvlen[] = {5, zl};
    struct roomcall *c = calloc(1, sizeof(*c));
    if (!c)
        return PD_ENOMEM;
    c->st = st;
    c->ccb = cb;
    c->arg = arg;
    int rc = redis_router_call(st->router, z, zl, 2, argv, argvlen, count_done, c);
    if (rc)
        free(c);
    return rc;
}

static int rd_room_signal(store_t *base, pd_str_t room, pd_str_t user, int signal, pd_str_t payload,
                          const store_hide_t *hide) {
    store_redis_t *st = (store_redis_t *)base;
    char ch[KEY_MAX];
    size_t cl = rkey(ch, room, "");
    size_t hint = 96 + room.len + user.len + payload.len;
    for (uint32_t i = 0; hide && i < hide->n; i++)
        hint += hide->ids[i].len + 8;
    jsonw_t w;
    jw_init(&w, hint);
    jw_obj(&w);
    jw_key(&w, "t");
    jw_cstr(&w, "s");
    jw_key(&w, "r");
    jw_str(&w, room.s, room.len);
    jw_key(&w, "u");
    jw_str(&w, user.s, user.len);
    jw_key(&w, "sg");
    jw_int(&w, signal);
    jw_key(&w, "p");
    jw_raw(&w, payload.s, payload.len);
    if (hide && hide->n) {
        /* Whom the signal is hidden from: each node leaves those users' connections out. */
        jw_key(&w, "b");
        jw_hide(&w, hide);
    }
    jw_obj_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    if (!b)
        return PD_ENOMEM;
    const char *argv[] = {"SPUBLISH", ch, (const char *)pd_obuf_payload(b)};
    size_t argvlen[] = {8, cl, pd_obuf_payload_len(b)};
    int rc = redis_router_call(st->router, ch, cl, 3, argv, argvlen, NULL, NULL);
    pd_obuf_release(b);
    return rc;
}

static void hide_done(void *arg, const redisReply *r, int err) {
    (void)arg;
    (void)r;
    (void)err;
}

static int rd_room_hide(store_t *base, pd_str_t room, pd_str_t user, const store_hide_t *hide) {
    store_redis_t *st = (store_redis_t *)base;
    char h[KEY_MAX], z[KEY_MAX];
    const char *keys[] = {h, z};
    size_t klens[] = {rkey(h, room, ""), rkey(z, room, ":z")};
    pd_obuf_t *hj = hide_json(hide);
    if (!hj)
        return PD_ENOMEM;
    const char *args[] = {room.s, user.s, (const char *)pd_obuf_payload(hj)};
    size_t alens[] = {room.len, user.len, pd_obuf_payload_len(hj)};
    /* The event reaches every node watching the room, this one too; nothing else to do. */
    int rc = run(st, S_ROOM_HIDE, 2, keys, klens, 3, args, alens, hide_done, NULL);
    pd_obuf_release(hj);
    return rc;
}

/* --- Leases and sweeps --- */

static void lease_fire(wheel_timer_t *t, uint64_t now) {
    store_redis_t *st = (store_redis_t *)((char *)t - offsetof(store_redis_t, lease_timer));
    char key[KEY_MAX], ttl[16];
    size_t kl = nkey(key, st->node, ":lease");
    size_t tl = (size_t)snprintf(ttl, sizeof(ttl), "%u", st->cfg.lease_ttl_ms);
    const char *argv[] = {"SET", key, "1", "PX", ttl};
    size_t argvlen[] = {3, kl, 1, 2, tl};
    redis_router_call(st->router, key, kl, 5, argv, argvlen, NULL, NULL);
    const char *a2[] = {"SADD", "pd:nodes", st->node};
    size_t l2[] = {4, 8, strlen(st->node)};
    redis_router_call(st->router, "pd:nodes", 8, 3, a2, l2, NULL, NULL);
    /* Refreshed three times per TTL: one lost refresh does not expire it. */
    wheel_schedule(st->wheel, t, now + st->cfg.lease_ttl_ms / 3);
}

/* One dead node's sweep, step by step through its index sets. */
struct sweep {
    store_redis_t *st;
    char node[80];
    size_t left; /* scripts in flight */
    bool listed_rooms;
};

static void sweep_step(struct sweep *sw);

static void sweep_entry_done(void *arg, const redisReply *r, int err) {
    (void)r;
    (void)err;
    struct sweep *sw = arg;
    if (--sw->left == 0)
        sweep_step(sw);
}

/* One of the dead node's sessions or room connections removed. The change it made is
 * caused here (the only node holding the sweep lock): webhooks and event streams hear of it
 * once. Counted out of the sweep like its SREM, so the sweep goes on once all are done. */
struct sweep_one {
    struct sweep *sw;
    bool room;
};

static void sweep_one_done(void *arg, const redisReply *r, int err) {
    struct sweep_one *o = arg;
    struct sweep *sw = o->sw;
    store_redis_t *st = sw->st;
    if (!err && !st->closing && r->type == REDIS_REPLY_STRING && r->len > 1) {
        if (o->room) {
            cJSON *j = cJSON_ParseWithLength(r->str, r->len);
            announce_caused(st, j);
            cJSON_Delete(j);
        } else {
            pd_presence_t p;
            const char *devs[PD_SESSIONS_PER_USER_MAX];
            cJSON *root = NULL;
            presence_reply(st, r, &p, devs, &root);
            cJSON_Delete(root);
        }
    }
    free(o);
    if (--sw->left == 0)
        sweep_step(sw);
}

/* One entry of a dead node's index: its removal script, then the entry itself (SREM from the
 * index named by suffix), both counted in sw->left. */
static void sweep_entry(struct sweep *sw, int script, const char **keys, const size_t *klens,
                        int nargs, const char **args, const size_t *alens, bool room,
                        const redisReply *e) {
    store_redis_t *st = sw->st;
    struct sweep_one *o = calloc(1, sizeof(*o));
    if (!o)
        return;
    o->sw = sw;
    o->room = room;
    sw->left++;
    if (run(st, script, 2, keys, klens, nargs, args, alens, sweep_one_done, o)) {
        free(o);
        sw->left--;
    }
    char idx[KEY_MAX];
    size_t il = nkey(idx, sw->node, room ? ":r" : ":s");
    const char *a2[] = {"SREM", idx, e->str};
    size_t l2[] = {4, il, e->len};
    sw->left++;
    if (redis_router_call(st->router, idx, il, 3, a2, l2, sweep_entry_done, sw))
        sw->left--;
}

static void sweep_sessions(void *arg, const redisReply *r, int err) {
    struct sweep *sw = arg;
    if (err || r->type != REDIS_REPLY_ARRAY) {
        free(sw);
        return;
    }
    sw->left = 1; /* held until every entry is sent */
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *nul = e->type == REDIS_REPLY_STRING ? memchr(e->str, '\0', e->len) : NULL;
        if (!nul)
            continue;
        pd_str_t uid = {e->str, (size_t)(nul - e->str)};
        char p[KEY_MAX], s[KEY_MAX], sess[128];
        const char *keys[] = {p, s};
        size_t klens[] = {ukey(p, uid, ""), ukey(s, uid, ":s")};
        size_t sl = (size_t)snprintf(sess, sizeof(sess), "%s/%.*s", sw->node,
                                     (int)(e->len - uid.len - 1), nul + 1);
        const char *args[] = {uid.s, sess, "0"};
        size_t alens[] = {uid.len, sl, 1};
        sweep_entry(sw, S_REMOVE, keys, klens, 3, args, alens, false, e);
    }
    if (--sw->left == 0)
        sweep_step(sw);
}

static void sweep_rooms(void *arg, const redisReply *r, int err) {
    struct sweep *sw = arg;
    if (err || r->type != REDIS_REPLY_ARRAY) {
        free(sw);
        return;
    }
    sw->left = 1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *n1 = e->type == REDIS_REPLY_STRING ? memchr(e->str, '\0', e->len) : NULL;
        const char *n2 = n1 ? memchr(n1 + 1, '\0', e->len - (size_t)(n1 + 1 - e->str)) : NULL;
        if (!n2)
            continue;
        pd_str_t room = {e->str, (size_t)(n1 - e->str)}, user = {n1 + 1, (size_t)(n2 - n1 - 1)};
        char h[KEY_MAX], z[KEY_MAX], ck[128];
        const char *keys[] = {h, z};
        size_t klens[] = {rkey(h, room, ""), rkey(z, room, ":z")};
        size_t ckl = (size_t)snprintf(ck, sizeof(ck), "%s/%.*s", sw->node,
                                      (int)(e->len - (size_t)(n2 + 1 - e->str)), n2 + 1);
        const char *args[] = {room.s, user.s, ck, "0", "2"}; /* now, reason timeout */
        size_t alens[] = {room.len, user.len, ckl, 1, 1};
        /* Not leave_done: it would drop the entry from this node's own index, where a
         * connection of the same user with the same sid may be live. */
        sweep_entry(sw, S_ROOM_LEAVE, keys, klens, 5, args, alens, true, e);
    }
    if (--sw->left == 0)
        sweep_step(sw);
}

/* Sessions first, then room connections, then the node is forgotten. */
static void sweep_step(struct sweep *sw) {
    store_redis_t *st = sw->st;
    char key[KEY_MAX];
    if (st->closing) {
        free(sw);
        return;
    }
    if (!sw->listed_rooms) {
        sw->listed_rooms = true;
        size_t kl = nkey(key, sw->node, ":r");
        const char *argv[] = {"SMEMBERS", key};
        size_t argvlen[] = {8, kl};
        if (redis_router_call(st->router, key, kl, 2, argv, argvlen, sweep_rooms, sw))
            free(sw);
        return;
    }
    const char *a2[] = {"SREM", "pd:nodes", sw->node};
    size_t l2[] = {4, 8, strlen(sw->node)};
    redis_router_call(st->router, "pd:nodes", 8, 3, a2, l2, NULL, NULL);
    PD_INFO(st->log, "redis", "swept node %s: its sessions ended, its room connections left",
            sw->node);
    free(sw);
}

static void sweep_locked(void *arg, const redisReply *r, int err) {
    struct sweep *sw = arg;
    store_redis_t *st = sw->st;
    if (err || r->type != REDIS_REPLY_STATUS) {
        free(sw); /* another node sweeps it */
        return;
    }
    (*st->n.sweeps)++;
    PD_WARN(st->log, "redis", "node %s lost its lease: sweeping it", sw->node);
    char key[KEY_MAX];
    size_t kl = nkey(key, sw->node, ":s");
    const char *argv[] = {"SMEMBERS", key};
    size_t argvlen[] = {8, kl};
    if (redis_router_call(st->router, key, kl, 2, argv, argvlen, sweep_sessions, sw))
        free(sw);
}

static void lease_checked(void *arg, const redisReply *r, int err) {
    struct sweep *sw = arg;
    store_redis_t *st = sw->st;
    if (err || r->type != REDIS_REPLY_INTEGER || r->integer != 0) {
        free(sw); /* alive (or unknown): nothing to do */
        return;
    }
    char key[KEY_MAX], ttl[16];
    size_t kl = nkey(key, sw->node, ":sweep");
    size_t tl = (size_t)snprintf(ttl, sizeof(ttl), "%u", st->cfg.lease_ttl_ms * 3);
    const char *argv[] = {"SET", key, st->node, "NX", "PX", ttl};
    size_t argvlen[] = {3, kl, strlen(st->node), 2, 2, tl};
    if (redis_router_call(st->router, key, kl, 6, argv, argvlen, sweep_locked, sw))
        free(sw);
}

static void nodes_listed(void *arg, const redisReply *r, int err) {
    store_redis_t *st = arg;
    if (err || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= sizeof(st->node) ||
            strcmp(e->str, st->node) == 0)
            continue;
        struct sweep *sw = calloc(1, sizeof(*sw));
        if (!sw)
            return;
        sw->st = st;
        memcpy(sw->node, e->str, e->len);
        char key[KEY_MAX];
        size_t kl = nkey(key, sw->node, ":lease");
        const char *argv[] = {"EXISTS", key};
        size_t argvlen[] = {6, kl};
        if (redis_router_call(st->router, key, kl, 2, argv, argvlen, lease_checked, sw))
            free(sw);
    }
}

static void sweep_fire(wheel_timer_t *t, uint64_t now) {
    store_redis_t *st = (store_redis_t *)((char *)t - offsetof(store_redis_t, sweep_timer));
    /* Only a node that has been connected for a whole lease TTL sweeps: after an outage of
     * Redis itself every node reconnects at once, and none must take the others, still
     * reconnecting, for dead. */
    if (st->ready_since && now - st->ready_since >= st->cfg.lease_ttl_ms) {
        const char *argv[] = {"SMEMBERS", "pd:nodes"};
        size_t argvlen[] = {8, 8};
        redis_router_call(st->router, "pd:nodes", 8, 2, argv, argvlen, nodes_listed, st);
    }
    uint32_t every = st->cfg.lease_ttl_ms / 2;
    wheel_schedule(st->wheel, t, now + every / 2 + randombytes_uniform(every));
}

/* What a watched user's channel carried while this node was not subscribed (a reconnect,
 * a slot move) is lost: their privacy is checked again and their presence read, and
 * announced when its version is not the one last heard of. (Rooms' missed events cannot be
 * rebuilt this way; their signals are ephemeral anyway.) */
struct catchup {
    store_redis_t *st;
    size_t len;
    char uid[];
};

static void catchup_done(void *arg, const redisReply *r, int err) {
    struct catchup *c = arg;
    if (caller_gone(c->st, c))
        return;
    store_redis_t *st = c->st;
    cJSON *j = !err && r->type == REDIS_REPLY_STRING && r->len > 1
                   ? cJSON_ParseWithLength(r->str, r->len)
                   : NULL;
    pd_presence_t p;
    const char *devs[PD_SESSIONS_PER_USER_MAX];
    struct watch *w = user_watch(st, (pd_str_t){c->uid, c->len});
    if (w)
        w->catching = false;
    /* A message since the read was sent is newer than the gap, and every later change comes
     * as a message too: then the read is no news. Else it is announced when its version is
     * not the last heard (also when lower: Redis lost its data and counts again). */
    if (w && !w->heard_during && j && to_presence(j, &p, devs)) {
        store_listener_t *l = &st->base.listener;
        bool changed = w->version != p.version;
        w->version = p.version;
        w->floor = p.version;
        if (changed && l->presence_changed)
            l->presence_changed(l->ctx, &p);
    }
    cJSON_Delete(j);
    free(c);
}

static void on_resubscribed(void *ctx, const char *channel, size_t len) {
    store_redis_t *st = ctx;
    static const char prefix[] = "pd:{u:";
    size_t pl = sizeof(prefix) - 1;
    if (len <= pl + 1 || memcmp(channel, prefix, pl) != 0 || channel[len - 1] != '}')
        return;
    pd_str_t uid = {channel + pl, len - pl - 1};
    struct catchup *c = calloc(1, sizeof(*c) + uid.len + 1);
    if (!c)
        return;
    c->st = st;
    c->len = uid.len;
    memcpy(c->uid, uid.s, uid.len);
    struct watch *w = user_watch(st, uid);
    if (w) {
        w->floor = 0; /* versions before the gap say nothing now (Redis may count anew) */
        w->catching = true;
        w->heard_during = false;
    }
    /* Privacy first: both scripts go to the user's slot on one connection, answered in
     * order, so watchers' permissions are current when the presence is announced. */
    store_listener_t *l = &st->base.listener;
    if (l->privacy_changed)
        l->privacy_changed(l->ctx, uid);
    if (l->room_privacy)
        l->room_privacy(l->room_ctx, uid, -1, (pd_str_t){0});
    char p[KEY_MAX], s[KEY_MAX], cs[KEY_MAX], bl[KEY_MAX];
    const char *keys[] = {p, s, cs, bl};
    size_t klens[] = {ukey(p, uid, ""), ukey(s, uid, ":s"), ukey(cs, uid, ":c"),
                      ukey(bl, uid, ":b")};
    const char *args[] = {c->uid, ""};
    size_t alens[] = {uid.len, 0};
    if (run(st, S_GET, 4, keys, klens, 2, args, alens, catchup_done, c))
        free(c);
}

static void on_ready(void *ctx, bool ready) {
    store_redis_t *st = ctx;
    if (!ready) {
        st->ready_since = 0;
        PD_WARN(st->log, "redis",
                "not ready: serving this node's connections from memory; "
                "changes wait for Redis");
        return;
    }
    st->ready_since = pd_clock_ms(&st->clock);
    lease_fire(&st->lease_timer, st->ready_since); /* claim our lease before anything else */
    if (!st->ever_ready) {
        st->ever_ready = true;
        PD_INFO(st->log, "redis", "ready (node %s)", st->node);
        return;
    }
    /* Back after an outage: Redis may have lost what we registered, or another node may have
     * swept us. Everything this node holds is registered again. */
    (*st->n.resyncs)++;
    PD_INFO(st->log, "redis", "ready again: registering this node's sessions and rooms");
    store_listener_t *l = &st->base.listener;
    if (l->resync)
        l->resync(l->ctx);
    if (l->room_resync)
        l->room_resync(l->room_ctx);
}

static int rd_stats(store_t *base, store_stats_t *s) {
    (void)base;
    (void)s;
    return -1; /* the totals live in Redis, across every node */
}

/* Completes every call in flight while its callers still exist: the router fails what is
 * queued or sent, and reads held for a subscription go on to fail the same way. */
static void rd_shutdown(store_t *base) {
    store_redis_t *st = (store_redis_t *)base;
    wheel_cancel(st->wheel, &st->lease_timer);
    wheel_cancel(st->wheel, &st->sweep_timer);
    redis_router_t *router = st->router;
    st->router = NULL; /* later calls fail with PD_ECLOSED */
    redis_router_close(router);
    while (st->gates) {
        struct gate *g = st->gates;
        gate_unlink(g);
        wheel_cancel(st->wheel, &g->timer);
        g->go(g);
    }
}

static void rd_destroy(store_t *base) {
    store_redis_t *st = (store_redis_t *)base;
    st->closing = true;
    while (st->gates) {
        struct gate *g = st->gates;
        gate_unlink(g);
        wheel_cancel(st->wheel, &g->timer);
        g->drop(g);
    }
    wheel_cancel(st->wheel, &st->lease_timer);
    wheel_cancel(st->wheel, &st->sweep_timer);
    redis_router_close(st->router);
    for (hmap_node_t *h = hmap_first(&st->expiries); h;) {
        hmap_node_t *next = hmap_next(&st->expiries, h);
        struct expiry *e = (struct expiry *)h;
        wheel_cancel(st->wheel, &e->timer);
        free(e);
        h = next;
    }
    for (hmap_node_t *h = hmap_first(&st->watches); h;) {
        hmap_node_t *next = hmap_next(&st->watches, h);
        free(h);
        h = next;
    }
    hmap_destroy(&st->expiries);
    hmap_destroy(&st->watches);
    for (int i = 0; i < S_COUNT; i++)
        free(st->scripts[i].text);
    free(st);
}

static const store_ops_t redis_ops = {
    .name = "redis",
    .stats = rd_stats,
    .ready = rd_ready,
    .heartbeat = rd_heartbeat,
    .session_upsert = rd_session_upsert,
    .user_update = rd_user_update,
    .session_remove = rd_session_remove,
    .presence_get = rd_presence_get,
    .privacy_get = rd_privacy_get,
    .privacy_change = rd_privacy_change,
    .privacy_replace = rd_privacy_replace,
    .can_see = rd_can_see,
    .explain = rd_explain,
    .watch = rd_watch,
    .unwatch = rd_unwatch,
    .room_join = rd_room_join,
    .room_leave = rd_room_leave,
    .room_update = rd_room_update,
    .room_members = rd_room_members,
    .room_count = rd_room_count,
    .room_signal = rd_room_signal,
    .room_hide = rd_room_hide,
    .room_watch = rd_room_watch,
    .room_unwatch = rd_room_unwatch,
    .shutdown = rd_shutdown,
    .destroy = rd_destroy,
};

int store_redis_parse_url(const char *url, char *out, size_t out_size) {
    const char *p = url;
    if (strncmp(p, "redis://", 8) == 0)
        p += 8;
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= out_size || !memchr(p, ':', n) || memchr(p, '@', n))
        return -1; /* credentials in the URL are not supported: keep Redis on a private net */
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

static double gauge_ready(void *ctx) {
    return redis_router_ready(((store_redis_t *)ctx)->router) ? 1 : 0;
}

static double gauge_subs(void *ctx) {
    return (double)redis_router_subscriptions(((store_redis_t *)ctx)->router);
}

store_t *store_redis_new(uv_loop_t *loop, wheel_t *wheel, const pd_clock_t *clock,
                         const store_redis_config_t *cfg, pd_log_t *log, pd_metrics_t *metrics,
                         FILE *err) {
    store_redis_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->base.ops = &redis_ops;
    st->loop = loop;
    st->wheel = wheel;
    st->clock = *clock;
    st->log = log;
    st->cfg = *cfg;
    if (!st->cfg.lease_ttl_ms)
        st->cfg.lease_ttl_ms = 10000;
    snprintf(st->node, sizeof(st->node), "%s~%08x", cfg->node_id, randombytes_random());
    pd_hashkey_generate(&st->key);
    wheel_timer_init(&st->lease_timer, lease_fire);
    wheel_timer_init(&st->sweep_timer, sweep_fire);
    if (load_scripts(st) || hmap_init(&st->watches, 1024) || hmap_init(&st->expiries, 64)) {
        fprintf(err, "presenced: out of memory\n");
        rd_destroy(&st->base);
        return NULL;
    }
    redis_router_events_t ev = {.ctx = st,
                                .on_ready = on_ready,
                                .on_message = on_message,
                                .on_resubscribed = on_resubscribed};
    st->router = redis_router_new(loop, wheel, cfg->cluster, cfg->seeds, cfg->nseeds,
                                  cfg->timeout_ms ? cfg->timeout_ms : 2000, &ev, log);
    if (!st->router) {
        fprintf(err, "presenced: bad Redis address (want host:port)\n");
        hmap_destroy(&st->watches);
        hmap_destroy(&st->expiries);
        for (int i = 0; i < S_COUNT; i++)
            free(st->scripts[i].text);
        free(st);
        return NULL;
    }
#define COUNTER(field, name, help)                                                                 \
    do {                                                                                           \
        st->n.field = metrics ? pd_metrics_counter(metrics, name, help, NULL, NULL) : NULL;        \
        if (!st->n.field)                                                                          \
            st->n.field = &dummy_counter;                                                          \
    } while (0)
    COUNTER(scripts, "presenced_redis_scripts_total", "Lua scripts run on Redis by this node");
    COUNTER(errors, "presenced_redis_errors_total", "Redis calls that failed");
    COUNTER(sweeps, "presenced_redis_sweeps_total", "Dead nodes swept by this node");
    COUNTER(resyncs, "presenced_redis_resyncs_total",
            "Times this node registered everything again after Redis came back");
#undef COUNTER
    if (metrics) {
        pd_metrics_gauge_fn(metrics, "presenced_redis_ready", "1 when Redis serves this node", NULL,
                            NULL, gauge_ready, st);
        pd_metrics_gauge_fn(metrics, "presenced_redis_subscriptions",
                            "Sharded channels this node subscribes to", NULL, NULL, gauge_subs, st);
    }
    for (int i = 0; i < S_COUNT; i++) {
        st->script_texts[i] = st->scripts[i].text;
        st->script_lens[i] = st->scripts[i].len;
    }
    redis_router_preload(st->router, st->script_texts, st->script_lens, S_COUNT);
    redis_router_start(st->router);
    uint32_t every = st->cfg.lease_ttl_ms / 2;
    wheel_schedule(wheel, &st->sweep_timer,
                   pd_clock_ms(clock) + every + randombytes_uniform(every));
    PD_INFO(log, "redis", "node %s: %s %s%s", st->node, cfg->cluster ? "cluster" : "server",
            cfg->seeds[0], cfg->seed_compat ? " (seed-compatible keys kept)" : "");
    return &st->base;
}
