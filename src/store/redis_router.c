#include "store/redis_router.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/hashmap.h"

#define NODES_MAX    128
#define ATTEMPTS_MAX 4
#define REFRESH_MS   10000
#define SUB_BATCH    256

enum { SUB_UNSENT, SUB_SENT, SUB_ACTIVE }; /* ACTIVE: the server confirmed it */

struct rnode {
    redis_router_t *r;
    char host[256];
    int port;
    redis_conn_t *cmd, *sub;
};

struct rchan {
    hmap_node_t node;
    uint16_t slot;
    int16_t nodei; /* where it is (or is to be) subscribed; -1 unknown */
    uint8_t state;
    bool was_active; /* confirmed before: a new confirmation may follow a gap */
    uint16_t len;
    char name[];
};

struct rcall {
    struct rcall *next;
    redis_router_t *r;
    redis_reply_cb cb;
    void *arg;
    wheel_timer_t retry;
    uint16_t slot;
    int16_t ask_node; /* -1, or the node an ASK redirect named (used once) */
    uint8_t attempts;
    bool any_node; /* broadcast: sent to node ask_node, no routing */
    int argc;
    const char **argv;
    size_t *argvlen;
};

struct redis_router {
    uv_loop_t *loop;
    wheel_t *wheel;
    pd_log_t *log;
    bool cluster;
    uint32_t timeout_ms;
    redis_router_events_t ev;
    struct rnode nodes[NODES_MAX];
    int nnodes;
    int16_t slots[REDIS_SLOTS]; /* node index per slot, -1 unknown */
    struct rcall *wait_head, *wait_tail;
    size_t nwait;
    hmap_t chans;
    pd_hashkey_t key;
    wheel_timer_t refresh_timer, flush_timer;
    bool refreshing, refresh_again, ready, closed;
    const char *const *preload; /* scripts loaded first on every connection (borrowed) */
    const size_t *preload_lens;
    size_t npreload;
};

static void call_send(struct rcall *c);
static void update_ready(redis_router_t *r);
static void refresh(redis_router_t *r);

/* --- Slots --- */

static uint16_t crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t redis_slot(const char *key, size_t len) {
    /* Cluster spec: hash only what is between the first '{' and the next '}', if non-empty. */
    const char *open = memchr(key, '{', len);
    if (open) {
        const char *close = memchr(open + 1, '}', len - (size_t)(open + 1 - key));
        if (close && close > open + 1) {
            key = open + 1;
            len = (size_t)(close - key);
        }
    }
    return crc16(key, len) & (REDIS_SLOTS - 1);
}

/* --- Nodes --- */

static void node_up(void *ctx, redis_conn_t *c);
static void node_down(void *ctx, redis_conn_t *c);
static void sub_push(void *ctx, redis_conn_t *c, const redisReply *rep);
static void sub_up(void *ctx, redis_conn_t *c);

static int node_index(redis_router_t *r, const char *host, int port) {
    for (int i = 0; i < r->nnodes; i++)
        if (r->nodes[i].port == port && strcmp(r->nodes[i].host, host) == 0)
            return i;
    if (r->nnodes == NODES_MAX || strlen(host) >= sizeof(r->nodes[0].host))
        return -1;
    struct rnode *n = &r->nodes[r->nnodes];
    n->r = r;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    redis_conn_events_t ev = {.ctx = n, .on_up = node_up, .on_down = node_down};
    n->cmd = redis_conn_new(r->loop, r->wheel, host, port, false, r->timeout_ms, &ev, r->log);
    if (!n->cmd)
        return -1;
    redis_conn_start(n->cmd);
    return r->nnodes++;
}

/* "host:port" (IPv6 as [addr]:port). */
static int parse_addr(const char *s, size_t len, char *host, size_t hsize, int *port) {
    size_t colon = len;
    while (colon > 0 && s[colon - 1] != ':')
        colon--;
    if (colon == 0)
        return -1;
    colon--; /* the index of the last ':' */
    const char *h = s;
    size_t hl = colon;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    size_t pl = len - colon - 1;
    if (hl == 0 || hl >= hsize || pl == 0 || pl > 5)
        return -1;
    int p = 0;
    for (size_t i = 0; i < pl; i++) {
        char c = s[colon + 1 + i];
        if (c < '0' || c > '9')
            return -1;
        p = p * 10 + (c - '0');
    }
    if (p <= 0 || p > 65535)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = p;
    return 0;
}

static int route(const redis_router_t *r, uint16_t slot) {
    return r->cluster ? r->slots[slot] : 0;
}

/* --- Calls --- */

static void wait_push(struct rcall *c) {
    redis_router_t *r = c->r;
    c->next = NULL;
    if (r->wait_tail)
        r->wait_tail->next = c;
    else
        r->wait_head = c;
    r->wait_tail = c;
    r->nwait++;
}

static void call_free(struct rcall *c) {
    wheel_cancel(c->r->wheel, &c->retry);
    free(c);
}

static void call_finish(struct rcall *c, const redisReply *rep, int err) {
    if (c->cb)
        c->cb(c->arg, rep, err);
    call_free(c);
}

/* Resends what waits for a route: after a node came up or the slot map changed. */
static void flush_waiting(redis_router_t *r) {
    struct rcall *c = r->wait_head;
    r->wait_head = r->wait_tail = NULL;
    r->nwait = 0;
    while (c) {
        struct rcall *next = c->next;
        call_send(c);
        c = next;
    }
}

static void retry_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    call_send((struct rcall *)((char *)t - offsetof(struct rcall, retry)));
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381": the node named. */
static int redirect_node(redis_router_t *r, const char *msg, uint16_t *slot) {
    const char *sp = strchr(msg, ' ');
    const char *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
    if (!sp2)
        return -1;
    *slot = (uint16_t)(strtoul(sp + 1, NULL, 10) & (REDIS_SLOTS - 1));
    char host[256];
    int port;
    if (parse_addr(sp2 + 1, strlen(sp2 + 1), host, sizeof(host), &port))
        return -1;
    return node_index(r, host, port);
}

static void call_reply(void *arg, const redisReply *rep, int err) {
    struct rcall *c = arg;
    redis_router_t *r = c->r;
    bool was_ask = c->ask_node >= 0 && !c->any_node;
    if (!c->any_node)
        c->ask_node = -1;
    if (err) {
        /* The connection went: resend once it (or the slot's new owner) is back. */
        if (++c->attempts < ATTEMPTS_MAX && !r->closed && !c->any_node) {
            wait_push(c);
            return;
        }
        call_finish(c, NULL, err);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR && r->cluster && !c->any_node && !r->closed) {
        uint16_t slot;
        if (strncmp(rep->str, "MOVED ", 6) == 0 && c->attempts + 1 < ATTEMPTS_MAX) {
            int ni = redirect_node(r, rep->str, &slot);
            if (ni >= 0) {
                r->slots[slot] = (int16_t)ni;
                refresh(r); /* more slots probably moved with it */
                c->attempts++;
                call_send(c);
                return;
            }
        } else if (strncmp(rep->str, "ASK ", 4) == 0 && !was_ask &&
                   c->attempts + 1 < ATTEMPTS_MAX) {
            int ni = redirect_node(r, rep->str, &slot);
            if (ni >= 0) {
                c->ask_node = (int16_t)ni;
                c->attempts++;
                call_send(c);
                return;
            }
        } else if ((strncmp(rep->str, "TRYAGAIN", 8) == 0 ||
                    strncmp(rep->str, "CLUSTERDOWN", 11) == 0) &&
                   c->attempts + 1 < ATTEMPTS_MAX) {
            c->attempts++;
            wheel_schedule(r->wheel, &c->retry, uv_now(r->loop) + 100u * c->attempts);
            return;
        }
    }
    call_finish(c, rep, 0);
}

static void call_send(struct rcall *c) {
    redis_router_t *r = c->r;
    if (r->closed) {
        call_finish(c, NULL, PD_EUNAVAIL);
        return;
    }
    int ni = c->ask_node >= 0 ? c->ask_node : route(r, c->slot);
    redis_conn_t *conn = ni >= 0 ? r->nodes[ni].cmd : NULL;
    if (!conn || !redis_conn_up(conn)) {
        if (c->any_node) {
            call_finish(c, NULL, PD_EUNAVAIL);
            return;
        }
        wait_push(c);
        return;
    }
    if (c->ask_node >= 0 && !c->any_node) {
        static const char *asking[] = {"ASKING"};
        static const size_t asking_len[] = {6};
        redis_conn_send(conn, 1, asking, asking_len, NULL, NULL);
    }
    int rc = redis_conn_send(conn, c->argc, c->argv, c->argvlen, call_reply, c);
    if (rc == PD_ECLOSED && !c->any_node)
        wait_push(c);
    else if (rc)
        call_finish(c, NULL, rc);
}

static struct rcall *call_new(redis_router_t *r, int argc, const char **argv, const size_t *argvlen,
                              redis_reply_cb cb, void *arg) {
    size_t bytes = sizeof(struct rcall) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i] + 1;
    struct rcall *c = calloc(1, bytes);
    if (!c)
        return NULL;
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->ask_node = -1;
    c->argc = argc;
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + argc);
    char *p = (char *)(c->argvlen + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], argvlen[i]);
        p[argvlen[i]] = '\0';
        c->argv[i] = p;
        c->argvlen[i] = argvlen[i];
        p += argvlen[i] + 1;
    }
    wheel_timer_init(&c->retry, retry_fire);
    return c;
}

int redis_router_call(redis_router_t *r, const char *key, size_t klen, int argc, const char **argv,
                      const size_t *argvlen, redis_reply_cb cb, void *arg) {
    if (!r)
        return PD_ECLOSED; /* closed at shutdown (store_shutdown) */
    if (r->nwait >= REDIS_WAIT_MAX)
        return PD_EUNAVAIL;
    struct rcall *c = call_new(r, argc, argv, argvlen, cb, arg);
    if (!c)
        return PD_ENOMEM;
    c->slot = redis_slot(key, klen);
    call_send(c);
    return 0;
}

int redis_router_broadcast(redis_router_t *r, int argc, const char **argv, const size_t *argvlen,
                           redis_reply_cb cb, void *arg) {
    int sent = 0;
    if (!r)
        return 0;
    for (int i = 0; i < r->nnodes; i++) {
        if (!redis_conn_up(r->nodes[i].cmd))
            continue;
        struct rcall *c = call_new(r, argc, argv, argvlen, cb, arg);
        if (!c)
            break;
        c->any_node = true;
        c->ask_node = (int16_t)i;
        call_send(c);
        sent++;
    }
    return sent;
}

/* --- Subscriptions --- */

static bool chan_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct rchan *ch = (const struct rchan *)n;
    return ch->len == len && memcmp(ch->name, key, len) == 0;
}

static struct rchan *find_chan(redis_router_t *r, const char *name, size_t len) {
    return (struct rchan *)hmap_find(&r->chans, pd_hash(&r->key, name, len), name, len, chan_eq);
}

static void schedule_flush(redis_router_t *r) {
    if (!wheel_timer_armed(&r->flush_timer))
        wheel_schedule(r->wheel, &r->flush_timer, uv_now(r->loop));
}

static redis_conn_t *sub_conn(redis_router_t *r, int ni) {
    struct rnode *n = &r->nodes[ni];
    if (!n->sub) {
        redis_conn_events_t ev = {.ctx = n, .on_up = sub_up, .on_push = sub_push};
        n->sub =
            redis_conn_new(r->loop, r->wheel, n->host, n->port, true, r->timeout_ms, &ev, r->log);
        if (n->sub)
            redis_conn_start(n->sub);
    }
    return n->sub;
}

static int cmp_node_slot(const void *a, const void *b) {
    const struct rchan *x = *(struct rchan *const *)a, *y = *(struct rchan *const *)b;
    if (x->nodei != y->nodei)
        return x->nodei < y->nodei ? -1 : 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

/* Sends the subscriptions not yet sent: one SSUBSCRIBE per master and batch, and in a
 * cluster one per slot as well (a server refuses channels of several slots in one command
 * with CROSSSLOT, subscribing none of them). */
static void flush_subs(wheel_timer_t *t, uint64_t now) {
    redis_router_t *r = (redis_router_t *)((char *)t - offsetof(redis_router_t, flush_timer));
    size_t n = 0;
    for (hmap_node_t *h = hmap_first(&r->chans); h; h = hmap_next(&r->chans, h)) {
        struct rchan *ch = (struct rchan *)h;
        if (ch->state == SUB_UNSENT && ch->nodei < 0)
            ch->nodei = (int16_t)route(r, ch->slot);
        n += ch->state == SUB_UNSENT && ch->nodei >= 0;
    }
    if (n == 0)
        return;
    struct rchan **list = malloc(n * sizeof(*list));
    if (!list) {
        wheel_schedule(r->wheel, &r->flush_timer, now + 100);
        return;
    }
    size_t k = 0;
    for (hmap_node_t *h = hmap_first(&r->chans); h && k < n; h = hmap_next(&r->chans, h)) {
        struct rchan *ch = (struct rchan *)h;
        if (ch->state != SUB_UNSENT || ch->nodei < 0)
            continue;
        redis_conn_t *sc = sub_conn(r, ch->nodei);
        if (sc && redis_conn_up(sc)) /* else sub_up sends it */
            list[k++] = ch;
    }
    qsort(list, k, sizeof(*list), cmp_node_slot);
    const char *argv[SUB_BATCH + 1];
    size_t argvlen[SUB_BATCH + 1];
    argv[0] = "SSUBSCRIBE";
    argvlen[0] = 10;
    for (size_t i = 0; i < k;) {
        size_t j = i;
        int argc = 1;
        while (j < k && argc <= SUB_BATCH && list[j]->nodei == list[i]->nodei &&
               (!r->cluster || list[j]->slot == list[i]->slot)) {
            argv[argc] = list[j]->name;
            argvlen[argc++] = list[j]->len;
            j++;
        }
        if (redis_conn_send(r->nodes[list[i]->nodei].sub, argc, argv, argvlen, NULL, NULL) == 0)
            for (size_t x = i; x < j; x++)
                list[x]->state = SUB_SENT;
        i = j;
    }
    free(list);
}

int redis_router_subscribe(redis_router_t *r, const char *channel, size_t len) {
    if (!r)
        return PD_ECLOSED;
    if (find_chan(r, channel, len))
        return 0;
    struct rchan *ch = calloc(1, sizeof(*ch) + len + 1);
    if (!ch)
        return PD_ENOMEM;
    ch->len = (uint16_t)len;
    memcpy(ch->name, channel, len);
    ch->slot = redis_slot(channel, len);
    ch->nodei = -1;
    ch->state = SUB_UNSENT;
    hmap_insert(&r->chans, &ch->node, pd_hash(&r->key, channel, len));
    schedule_flush(r);
    return 0;
}

void redis_router_unsubscribe(redis_router_t *r, const char *channel, size_t len) {
    struct rchan *ch = r ? find_chan(r, channel, len) : NULL;
    if (!ch)
        return;
    if (ch->state != SUB_UNSENT && ch->nodei >= 0 && r->nodes[ch->nodei].sub &&
        redis_conn_up(r->nodes[ch->nodei].sub)) {
        const char *argv[] = {"SUNSUBSCRIBE", ch->name};
        size_t argvlen[] = {12, ch->len};
        redis_conn_send(r->nodes[ch->nodei].sub, 2, argv, argvlen, NULL, NULL);
    }
    hmap_remove(&r->chans, &ch->node);
    free(ch);
}

static void sub_up(void *ctx, redis_conn_t *c) {
    (void)c;
    struct rnode *n = ctx;
    redis_router_t *r = n->r;
    int ni = (int)(n - r->nodes);
    /* A new connection has no subscriptions: everything routed here goes again. */
    for (hmap_node_t *h = hmap_first(&r->chans); h; h = hmap_next(&r->chans, h)) {
        struct rchan *ch = (struct rchan *)h;
        if (ch->nodei == ni)
            ch->state = SUB_UNSENT;
    }
    schedule_flush(r);
}

/* A subscribe the server refused. MOVED: our map is stale (a slot moved while we were
 * subscribing); the slot's channels go to the owner it names. */
static void sub_refused(redis_router_t *r, struct rnode *n, const char *msg) {
    uint16_t slot;
    int ni;
    int16_t here = (int16_t)(n - r->nodes);
    if (!r->cluster || strncmp(msg, "MOVED ", 6) != 0 || (ni = redirect_node(r, msg, &slot)) < 0) {
        PD_WARN(r->log, "redis", "%s:%d refused a subscription: %s", n->host, n->port, msg);
        return;
    }
    r->slots[slot] = (int16_t)ni;
    for (hmap_node_t *h = hmap_first(&r->chans); h; h = hmap_next(&r->chans, h)) {
        struct rchan *ch = (struct rchan *)h;
        if (ch->slot == slot && ch->nodei == here && ch->state == SUB_SENT) {
            ch->nodei = (int16_t)ni;
            ch->state = SUB_UNSENT;
        }
    }
    schedule_flush(r);
    refresh(r);
}

static void sub_push(void *ctx, redis_conn_t *c, const redisReply *rep) {
    (void)c;
    struct rnode *n = ctx;
    redis_router_t *r = n->r;
    if (rep->type == REDIS_REPLY_ERROR) {
        sub_refused(r, n, rep->str);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rep->element[0]->str;
    const redisReply *chr = rep->element[1];
    if (strcmp(kind, "smessage") == 0 || strcmp(kind, "message") == 0) {
        const redisReply *p = rep->element[2];
        if (p->type == REDIS_REPLY_STRING && r->ev.on_message)
            r->ev.on_message(r->ev.ctx, chr->str, chr->len, p->str, p->len);
    } else if (strcmp(kind, "ssubscribe") == 0) {
        /* From now on every message on it reaches us: reads of what it announces may go. */
        struct rchan *ch = find_chan(r, chr->str, chr->len);
        if (ch && ch->state == SUB_SENT && ch->nodei == (int16_t)(n - r->nodes)) {
            ch->state = SUB_ACTIVE;
            /* Messages published while it was moving or reconnecting never reached us. */
            bool again = ch->was_active;
            ch->was_active = true;
            if (again && r->ev.on_resubscribed)
                r->ev.on_resubscribed(r->ev.ctx, ch->name, ch->len);
        }
    } else if (strcmp(kind, "sunsubscribe") == 0) {
        /* Not asked for (we forget channels before unsubscribing): the slot moved. Find its
         * new owner and subscribe there. */
        struct rchan *ch = find_chan(r, chr->str, chr->len);
        if (ch) {
            /* (Or the answer to our own SUNSUBSCRIBE of a channel subscribed again since:
             * subscribing once more does no harm.) */
            ch->state = SUB_UNSENT;
            ch->nodei = -1;
            schedule_flush(r); /* standalone: the same server; a cluster waits for the map */
            refresh(r);
        }
    }
}

/* --- Slot map --- */

static const redisReply *map_get(const redisReply *m, const char *key) {
    if (m->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2)
        if (m->element[i]->type == REDIS_REPLY_STRING && strcmp(m->element[i]->str, key) == 0)
            return m->element[i + 1];
    return NULL;
}

/* CLUSTER SHARDS (Redis 7): [ {slots:[lo,hi,...], nodes:[{ip,endpoint,port,role,health}]} ] */
static int apply_shards(redis_router_t *r, const redisReply *rep, int16_t *slots) {
    if (rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t s = 0; s < rep->elements; s++) {
        const redisReply *sl = map_get(rep->element[s], "slots");
        const redisReply *nodes = map_get(rep->element[s], "nodes");
        if (!sl || !nodes || sl->type != REDIS_REPLY_ARRAY || nodes->type != REDIS_REPLY_ARRAY)
            return -1;
        int master = -1;
        for (size_t k = 0; k < nodes->elements && master < 0; k++) {
            const redisReply *role = map_get(nodes->element[k], "role");
            const redisReply *health = map_get(nodes->element[k], "health");
            const redisReply *ip = map_get(nodes->element[k], "endpoint");
            const redisReply *port = map_get(nodes->element[k], "port");
            if (!ip || ip->type != REDIS_REPLY_STRING || !strcmp(ip->str, "?"))
                ip = map_get(nodes->element[k], "ip");
            if (!role || role->type != REDIS_REPLY_STRING || strcmp(role->str, "master") || !ip ||
                ip->type != REDIS_REPLY_STRING || !port || port->type != REDIS_REPLY_INTEGER)
                continue;
            if (health && health->type == REDIS_REPLY_STRING && strcmp(health->str, "online"))
                continue;
            master = node_index(r, ip->str, (int)port->integer);
        }
        for (size_t k = 0; k + 1 < sl->elements; k += 2) {
            long long lo = sl->element[k]->integer, hi = sl->element[k + 1]->integer;
            for (long long x = lo; x <= hi && x < REDIS_SLOTS && x >= 0; x++)
                slots[x] = (int16_t)master;
        }
    }
    return 0;
}

/* CLUSTER SLOTS: [ [lo, hi, [ip, port, id], replicas...] ] */
static int apply_slots(redis_router_t *r, const redisReply *rep, int16_t *slots) {
    if (rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t s = 0; s < rep->elements; s++) {
        const redisReply *e = rep->element[s];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
            return -1;
        const redisReply *ip = e->element[2]->element[0], *port = e->element[2]->element[1];
        if (ip->type != REDIS_REPLY_STRING || port->type != REDIS_REPLY_INTEGER)
            return -1;
        int master = node_index(r, ip->str, (int)port->integer);
        for (long long x = e->element[0]->integer; x <= e->element[1]->integer && x < REDIS_SLOTS;
             x++)
            slots[x] = (int16_t)master;
    }
    return 0;
}

static void map_reply(void *arg, const redisReply *rep, int err);

static void ask_map(redis_router_t *r, const char *what) {
    for (int i = 0; i < r->nnodes; i++) {
        if (!redis_conn_up(r->nodes[i].cmd))
            continue;
        const char *argv[] = {"CLUSTER", what};
        size_t argvlen[] = {7, strlen(what)};
        struct rcall *c = call_new(r, 2, argv, argvlen, map_reply, r);
        if (!c)
            break;
        c->any_node = true;
        c->ask_node = (int16_t)i;
        call_send(c);
        r->refreshing = true;
        return;
    }
}

static void map_reply(void *arg, const redisReply *rep, int err) {
    redis_router_t *r = arg;
    r->refreshing = false;
    bool again = r->refresh_again; /* asked for while this one was out: it may be stale */
    r->refresh_again = false;
    if (r->closed)
        return;
    if (err || !rep)
        return; /* the next refresh tries another node */
    if (rep->type == REDIS_REPLY_ERROR) {
        if (strstr(rep->str, "unknown") || strstr(rep->str, "Unknown")) {
            ask_map(r, "SLOTS"); /* a server without CLUSTER SHARDS */
        } else {
            PD_WARN(r->log, "redis", "cluster map refused: %s", rep->str);
        }
        return;
    }
    int16_t slots[REDIS_SLOTS];
    for (int i = 0; i < REDIS_SLOTS; i++)
        slots[i] = -1;
    bool shards = rep->elements > 0 && rep->element[0]->type == REDIS_REPLY_ARRAY &&
                  rep->element[0]->elements > 0 &&
                  rep->element[0]->element[0]->type == REDIS_REPLY_STRING;
    if ((shards ? apply_shards(r, rep, slots) : apply_slots(r, rep, slots)) != 0) {
        PD_WARN(r->log, "redis", "cluster map unreadable; keeping the previous one");
        return;
    }
    memcpy(r->slots, slots, sizeof(slots));
    /* Subscriptions follow their slots to the current owners. */
    for (hmap_node_t *h = hmap_first(&r->chans); h; h = hmap_next(&r->chans, h)) {
        struct rchan *ch = (struct rchan *)h;
        int owner = r->slots[ch->slot];
        if (ch->nodei != owner) {
            if (ch->state != SUB_UNSENT && ch->nodei >= 0 && r->nodes[ch->nodei].sub &&
                redis_conn_up(r->nodes[ch->nodei].sub)) {
                const char *argv[] = {"SUNSUBSCRIBE", ch->name};
                size_t argvlen[] = {12, ch->len};
                redis_conn_send(r->nodes[ch->nodei].sub, 2, argv, argvlen, NULL, NULL);
            }
            ch->nodei = (int16_t)owner;
            ch->state = SUB_UNSENT;
        }
    }
    schedule_flush(r);
    flush_waiting(r); /* before update_ready, as in node_up */
    update_ready(r);
    if (again)
        refresh(r);
}

static void refresh(redis_router_t *r) {
    if (!r->cluster || r->closed)
        return;
    if (r->refreshing) {
        r->refresh_again = true;
        return;
    }
    ask_map(r, "SHARDS");
}

static void refresh_fire(wheel_timer_t *t, uint64_t now) {
    redis_router_t *r = (redis_router_t *)((char *)t - offsetof(redis_router_t, refresh_timer));
    refresh(r);
    wheel_schedule(r->wheel, t, now + REFRESH_MS);
}

/* --- Readiness --- */

static void update_ready(redis_router_t *r) {
    bool ready = true;
    if (!r->cluster) {
        ready = r->nnodes > 0 && redis_conn_up(r->nodes[0].cmd);
    } else {
        for (int s = 0; s < REDIS_SLOTS && ready; s++)
            ready = r->slots[s] >= 0 && redis_conn_up(r->nodes[r->slots[s]].cmd);
    }
    if (ready == r->ready)
        return;
    r->ready = ready;
    if (r->ev.on_ready)
        r->ev.on_ready(r->ev.ctx, ready);
}

void redis_router_preload(redis_router_t *r, const char *const *texts, const size_t *lens,
                          size_t n) {
    r->preload = texts;
    r->preload_lens = lens;
    r->npreload = n;
}

static void preloaded(void *arg, const redisReply *rep, int err) {
    redis_router_t *r = arg;
    if (err || rep->type == REDIS_REPLY_ERROR)
        PD_WARN(r->log, "redis", "SCRIPT LOAD failed: %s",
                err ? pd_strerror(err) : rep->str); /* EVALSHA falls back to EVAL */
}

static void node_up(void *ctx, redis_conn_t *c) {
    struct rnode *n = ctx;
    redis_router_t *r = n->r;
    /* Before anything else on this connection, which answers in order. */
    for (size_t i = 0; i < r->npreload; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", r->preload[i]};
        const size_t lens[] = {6, 4, r->preload_lens[i]};
        redis_conn_send(c, 3, argv, lens, preloaded, r);
    }
    if (r->cluster)
        refresh(r);
    /* What waited goes first: becoming ready makes the store re-register everything, and
     * those newer commands must not overtake the older ones (a state nobody set would show). */
    flush_waiting(r);
    update_ready(r);
}

static void node_down(void *ctx, redis_conn_t *c) {
    (void)c;
    struct rnode *n = ctx;
    update_ready(n->r);
}

/* --- Life cycle --- */

redis_router_t *redis_router_new(uv_loop_t *loop, wheel_t *wheel, bool cluster,
                                 const char *const *seeds, size_t nseeds, uint32_t timeout_ms,
                                 const redis_router_events_t *ev, pd_log_t *log) {
    redis_router_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->loop = loop;
    r->wheel = wheel;
    r->log = log;
    r->cluster = cluster;
    r->timeout_ms = timeout_ms;
    if (ev)
        r->ev = *ev;
    for (int i = 0; i < REDIS_SLOTS; i++)
        r->slots[i] = cluster ? -1 : 0;
    pd_hashkey_generate(&r->key);
    wheel_timer_init(&r->refresh_timer, refresh_fire);
    wheel_timer_init(&r->flush_timer, flush_subs);
    if (hmap_init(&r->chans, 256)) {
        free(r);
        return NULL;
    }
    for (size_t i = 0; i < nseeds; i++) {
        char host[256];
        int port;
        if (parse_addr(seeds[i], strlen(seeds[i]), host, sizeof(host), &port) ||
            node_index(r, host, port) < 0) {
            redis_router_close(r);
            return NULL;
        }
        if (!cluster)
            break;
    }
    return r;
}

void redis_router_start(redis_router_t *r) {
    if (r->cluster)
        wheel_schedule(r->wheel, &r->refresh_timer, uv_now(r->loop) + REFRESH_MS);
}

bool redis_router_subscribing(redis_router_t *r, const char *channel, size_t len) {
    const struct rchan *ch = r ? find_chan(r, channel, len) : NULL;
    return ch && ch->state != SUB_ACTIVE;
}

bool redis_router_ready(const redis_router_t *r) {
    return r && r->ready;
}

uint64_t redis_router_subscriptions(const redis_router_t *r) {
    return r ? r->chans.count : 0;
}

void redis_router_close(redis_router_t *r) {
    if (!r)
        return;
    r->closed = true;
    wheel_cancel(r->wheel, &r->refresh_timer);
    wheel_cancel(r->wheel, &r->flush_timer);
    struct rcall *c = r->wait_head;
    r->wait_head = r->wait_tail = NULL;
    while (c) {
        struct rcall *next = c->next;
        call_finish(c, NULL, PD_EUNAVAIL);
        c = next;
    }
    for (int i = 0; i < r->nnodes; i++) {
        redis_conn_close(r->nodes[i].cmd); /* fails their pending calls (freed there) */
        redis_conn_close(r->nodes[i].sub);
    }
    for (hmap_node_t *h = hmap_first(&r->chans); h;) {
        hmap_node_t *next = hmap_next(&r->chans, h);
        hmap_remove(&r->chans, h);
        free(h);
        h = next;
    }
    hmap_destroy(&r->chans);
    free(r);
}
