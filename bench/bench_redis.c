/* bench_redis: what the Redis store (issue #8) costs, measured from the client side against
 * real presenced processes and a real redis-server (bench/run-redis.sh starts them all on
 * 127.0.0.1): node A and node B share the Redis, node L runs the local store.
 *
 * Phases (--phases, run in the order given):
 *   1. Redis commands per heartbeat. --conns connections on A announce themselves
 *      (set_online, acknowledged); then one window of --hb-rounds x --hb-interval-ms with no
 *      client traffic (the background: lease refreshes and sweeps of A and B), then a window
 *      of the same length in which every connection sends one heartbeat per round (H =
 *      conns x rounds), closed by a ping on every connection (its pong proves every heartbeat
 *      before it was handled). Per heartbeat = (calls in the heartbeat window - calls in the
 *      idle window x length ratio) / H, from INFO commandstats, summed and per command.
 *   2. Redis commands per status change: one connection on A alternates set_status away /
 *      online (20 warm-up changes, then --changes counted), once with nobody watching and
 *      once with --watchers connections on B subscribed to the user; each change is
 *      acknowledged, and received by every watcher (or --change-timeout-ms passes), before
 *      the next, so no two are ever coalesced; every update must arrive. The same background
 *      subtraction. Phase 1's and 2's connections stay open until phases 3 and 4: closing
 *      them would set Redis to work inside later windows.
 *   3. Fan-out latency: --fan-users publisher connections, each watched by --fan-watchers
 *      connections (each subscribed to one publisher); the publishers change status one at a
 *      time, round robin (the next --gap-ms after the previous one reached all its
 *      watchers; --fan-warmup first), and each change's latency at a watcher = the time its read
 *      returned the presence_update minus the time just before the publisher's write (one
 *      process, one CLOCK_MONOTONIC). Three placements: publishers on A and watchers on B
 *      (cross-node, through Redis), both on A (one node, Redis store), both on L (one node,
 *      local store).
 *   4. Heartbeats per second: --tp-conns connections announce themselves, then send
 *      --tp-count heartbeats in all, flow-controlled: each connection writes --tp-batch
 *      heartbeats and a ping in one go and waits for the pong before its next batch (so at
 *      most conns x batch heartbeats are queued anywhere). Figures: wall rate, and count /
 *      server CPU seconds (utime + stime from /proc, read when the server is idle before and
 *      after; the pings, one per batch, are in it). L and A in turn, --tp-rounds times, same
 *      client, same process. --tp-flood 1 instead writes as fast as the sockets take it and
 *      pings once at the end: the kernel then queues megabytes per connection and the node
 *      spends seconds in one loop iteration (see loop_lag_ms).
 *
 * Every counting window is bracketed in Redis by MULTI / ECHO tag / INFO commandstats / EXEC,
 * which nothing can interleave with; with a MONITOR connection open (phases 1 and 2 only:
 * MONITOR slows Redis) the commands between the two tags are split into those presenced sent
 * ("top": round trips' worth) and those its Lua scripts ran ("lua"). This program's own
 * commands (MULTI, ECHO, INFO, EXEC) are left out of every figure; presenced sends none of
 * them. Loopback only; everything is bounded by --timeout.
 */
#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_ws.h"

#define HB_METRIC "presenced_messages_in_total{type=\"heartbeat\"}"

struct opts {
    int redis_port;
    int a_port, b_port, l_port;
    pid_t a_pid, b_pid, l_pid;
    const char *phases;
    uint32_t conns, hb_rounds, hb_interval_ms;
    uint32_t changes, watchers;
    uint32_t fan_users, fan_watchers, fan_changes, fan_warmup, gap_ms, change_timeout_ms;
    uint32_t tp_conns, tp_batch, tp_rounds, tp_flood;
    uint64_t tp_count;
    double grace_s;
    unsigned src_base, timeout_s;
};

/* --- Command tallies --- */

#define TALLY_MAX 96

struct tally {
    unsigned n;
    struct {
        char name[40];
        double v;
    } e[TALLY_MAX];
};

static double *tally_at(struct tally *t, const char *name) {
    for (unsigned i = 0; i < t->n; i++)
        if (strcmp(t->e[i].name, name) == 0)
            return &t->e[i].v;
    if (t->n == TALLY_MAX)
        name = "(other)";
    for (unsigned i = 0; i < t->n; i++)
        if (strcmp(t->e[i].name, name) == 0)
            return &t->e[i].v;
    unsigned i = t->n < TALLY_MAX ? t->n++ : TALLY_MAX - 1;
    snprintf(t->e[i].name, sizeof(t->e[i].name), "%s", name);
    t->e[i].v = 0;
    return &t->e[i].v;
}

static double tally_get(const struct tally *t, const char *name) {
    for (unsigned i = 0; i < t->n; i++)
        if (strcmp(t->e[i].name, name) == 0)
            return t->e[i].v;
    return 0;
}

static double tally_sum(const struct tally *t) {
    double s = 0;
    for (unsigned i = 0; i < t->n; i++)
        s += t->e[i].v;
    return s;
}

/* Writes "name:value,..." of the entries, largest first, each divided by div, into out; fmt
 * formats the value. Entries that fmt would print as zero (a background subtraction's
 * remainder) are left out when fmt is "%.3f". */
static void tally_print(const struct tally *t, double div, const char *fmt, char *out,
                        size_t size) {
    bool skip_small = strcmp(fmt, "%.3f") == 0;
    unsigned idx[TALLY_MAX];
    for (unsigned i = 0; i < t->n; i++)
        idx[i] = i;
    for (unsigned i = 1; i < t->n; i++)
        for (unsigned k = i; k > 0 && t->e[idx[k]].v > t->e[idx[k - 1]].v; k--) {
            unsigned x = idx[k];
            idx[k] = idx[k - 1];
            idx[k - 1] = x;
        }
    size_t off = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < t->n && off + 64 < size; i++) {
        double v = t->e[idx[i]].v;
        if (v == 0 || (skip_small && v / div < 0.0005 && v / div > -0.0005))
            continue;
        off += (size_t)snprintf(out + off, size - off, "%s%s:", off ? "," : "", t->e[idx[i]].name);
        off += (size_t)snprintf(out + off, size - off, fmt, v / div);
    }
    if (!off)
        snprintf(out, size, "none");
}

/* --- The run --- */

struct app {
    struct opts o;
    redisContext *rc;
    char self[64]; /* our control connection as MONITOR names it: "127.0.0.1:PORT" */
    unsigned src_next;
    unsigned seq; /* window tags */
    uint64_t deadline;
    bool have_bg;
    struct win *bg; /* the idle window */
    int failures;
};

static bool over(const struct app *a) {
    return bench_now_ns() > a->deadline;
}

static void fail(struct app *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct app *a, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_redis: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    a->failures++;
}

/* --- Redis: INFO commandstats, atomically with a tag --- */

static bool own_command(const char *name) {
    return !strcmp(name, "info") || !strcmp(name, "echo") || !strcmp(name, "multi") ||
           !strcmp(name, "exec");
}

static void parse_commandstats(const char *s, struct tally *t) {
    memset(t, 0, sizeof(*t));
    while (s && *s) {
        const char *eol = strchr(s, '\n');
        if (strncmp(s, "cmdstat_", 8) == 0) {
            const char *c = strchr(s, ':');
            const char *calls = c ? strstr(c, "calls=") : NULL;
            if (c && calls && (!eol || calls < eol) && c - s - 8 < 40) {
                char name[40];
                snprintf(name, sizeof(name), "%.*s", (int)(c - s - 8), s + 8);
                if (!own_command(name))
                    *tally_at(t, name) += strtod(calls + 6, NULL);
            }
        }
        s = eol ? eol + 1 : NULL;
    }
}

/* MULTI; ECHO tag; INFO commandstats; EXEC. 0 or -1. */
static int rstats(struct app *a, const char *tag, struct tally *out) {
    redisContext *rc = a->rc;
    if (redisAppendCommand(rc, "MULTI") || redisAppendCommand(rc, "ECHO %s", tag) ||
        redisAppendCommand(rc, "INFO commandstats") || redisAppendCommand(rc, "EXEC"))
        return -1;
    int rcode = 0;
    for (int k = 0; k < 4; k++) {
        redisReply *r = NULL;
        if (redisGetReply(rc, (void **)&r) != REDIS_OK || !r) {
            fail(a, "redis: %s", rc->errstr);
            return -1;
        }
        if (k == 3) {
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                r->element[1]->type != REDIS_REPLY_STRING)
                rcode = -1;
            else
                parse_commandstats(r->element[1]->str, out);
        }
        freeReplyObject(r);
    }
    return rcode;
}

/* --- Redis: MONITOR --- */

struct mon {
    int fd;
    char *buf;
    size_t len, off, cap;
};

static int mon_read(struct mon *m, uint64_t deadline) {
    if (m->off > 0) {
        memmove(m->buf, m->buf + m->off, m->len - m->off);
        m->len -= m->off;
        m->off = 0;
    }
    if (m->cap - m->len < 65536) {
        size_t cap = m->cap ? m->cap * 2 : 1 << 20;
        char *nb = realloc(m->buf, cap);
        if (!nb)
            return -1;
        m->buf = nb;
        m->cap = cap;
    }
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now > deadline)
            return -1;
        struct pollfd p = {.fd = m->fd, .events = POLLIN};
        int t = (int)((deadline - now) / 1000000u) + 1;
        int n = poll(&p, 1, t);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        ssize_t r = read(m->fd, m->buf + m->len, m->cap - m->len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        m->len += (size_t)r;
        return 0;
    }
}

/* The next line (NUL-terminated, without CRLF), or NULL at the deadline. */
static char *mon_line(struct mon *m, uint64_t deadline) {
    for (;;) {
        char *start = m->buf ? m->buf + m->off : NULL;
        char *nl = start ? memchr(start, '\n', m->len - m->off) : NULL;
        if (nl) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            m->off = (size_t)(nl + 1 - m->buf);
            return start;
        }
        if (mon_read(m, deadline))
            return NULL;
    }
}

static int mon_open(struct app *a, struct mon *m) {
    memset(m, 0, sizeof(*m));
    struct sockaddr_in dst;
    if (bench_loopback_addr("127.0.0.1", a->o.redis_port, &dst))
        return -1;
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (m->fd < 0 || connect(m->fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 ||
        write(m->fd, "MONITOR\r\n", 9) != 9) {
        fail(a, "monitor: %s", strerror(errno));
        return -1;
    }
    char *l = mon_line(m, bench_now_ns() + 5000000000u);
    if (!l || strcmp(l, "+OK") != 0) {
        fail(a, "monitor: no +OK");
        return -1;
    }
    return 0;
}

static void mon_close(struct mon *m) {
    if (m->fd > 0)
        close(m->fd);
    free(m->buf);
    memset(m, 0, sizeof(*m));
}

/* Is a top-level command one of the background's (node leases, node list, sweep locks)? */
static bool background_key(const char *key, size_t len) {
    return (len == 8 && memcmp(key, "pd:nodes", 8) == 0) ||
           (len > 6 && memcmp(key + len - 6, ":lease", 6) == 0) ||
           (len > 6 && memcmp(key + len - 6, ":sweep", 6) == 0);
}

/* Reads MONITOR lines until the ECHO of end_tag from our own connection, counting those after
 * the ECHO of start_tag: top-level commands in top (and, not counting lease/sweep ones, in
 * *work), those run by scripts in lua. 0, or -1 (the end tag did not come). */
static int mon_collect(struct app *a, struct mon *m, const char *start_tag, const char *end_tag,
                       struct tally *top, struct tally *lua, double *work) {
    char qs[64], qe[64];
    snprintf(qs, sizeof(qs), "\"%s\"", start_tag);
    snprintf(qe, sizeof(qe), "\"%s\"", end_tag);
    bool in = false;
    uint64_t deadline = bench_now_ns() + 20000000000u;
    memset(top, 0, sizeof(*top));
    memset(lua, 0, sizeof(*lua));
    *work = 0;
    for (;;) {
        char *l = mon_line(m, deadline);
        if (!l) {
            fail(a, "monitor: the end tag did not come");
            return -1;
        }
        /* +1795847209.160488 [0 127.0.0.1:51442] "SADD" "pd:{n:A}:s" "..." */
        char *br = strchr(l, '[');
        char *sp = br ? strchr(br, ' ') : NULL;
        char *eb = sp ? strchr(sp, ']') : NULL;
        if (!eb || eb[1] != ' ' || eb[2] != '"')
            continue;
        char *src = sp + 1;
        *eb = '\0';
        char *cmd = eb + 3;
        char *cq = strchr(cmd, '"');
        if (!cq)
            continue;
        *cq = '\0';
        for (char *p = cmd; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (strcmp(src, a->self) == 0) {
            if (strcmp(cmd, "echo") == 0 && strstr(cq + 1, qs))
                in = true;
            else if (strcmp(cmd, "echo") == 0 && strstr(cq + 1, qe))
                return in ? 0 : -1;
            continue;
        }
        if (!in)
            continue;
        if (strcmp(src, "lua") == 0) {
            (*tally_at(lua, cmd))++;
            continue;
        }
        (*tally_at(top, cmd))++;
        /* The key: the next quoted token (keys here hold no quote or backslash). */
        char *k = strstr(cq + 1, " \"");
        char *ke = k ? strchr(k + 2, '"') : NULL;
        if (!k || !ke || !background_key(k + 2, (size_t)(ke - k - 2)))
            (*work)++;
    }
}

/* --- Counting windows --- */

struct win {
    struct tally cs0, cs;  /* INFO commandstats at the start, then the window's deltas */
    struct tally top, lua; /* MONITOR: commands presenced sent, commands its scripts ran */
    double work;           /* top-level commands other than lease/sweep ones */
    double secs;
    bool monitored;
    struct mon m;
    uint64_t t0;
    char tag[2][48];
};

static int win_begin(struct app *a, struct win *w, bool monitor) {
    memset(w, 0, sizeof(*w));
    unsigned s = ++a->seq;
    snprintf(w->tag[0], sizeof(w->tag[0]), "pd-bench-%u-start", s);
    snprintf(w->tag[1], sizeof(w->tag[1]), "pd-bench-%u-end", s);
    if (monitor && mon_open(a, &w->m) != 0)
        return -1;
    w->monitored = monitor;
    if (rstats(a, w->tag[0], &w->cs0) != 0) {
        mon_close(&w->m);
        return -1;
    }
    w->t0 = bench_now_ns();
    return 0;
}

static int win_end(struct app *a, struct win *w) {
    w->secs = (double)(bench_now_ns() - w->t0) / 1e9;
    struct tally cs1;
    int rc = rstats(a, w->tag[1], &cs1);
    if (rc == 0) {
        memset(&w->cs, 0, sizeof(w->cs));
        for (unsigned i = 0; i < cs1.n; i++) {
            double d = cs1.e[i].v - tally_get(&w->cs0, cs1.e[i].name);
            if (d != 0)
                *tally_at(&w->cs, cs1.e[i].name) = d;
        }
    }
    if (w->monitored) {
        if (rc == 0)
            rc = mon_collect(a, &w->m, w->tag[0], w->tag[1], &w->top, &w->lua, &w->work);
        mon_close(&w->m);
    }
    return rc;
}

/* t minus the background's counts scaled to secs. */
static void net_of(const struct tally *t, const struct tally *bg, double ratio, struct tally *out) {
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < t->n; i++)
        *tally_at(out, t->e[i].name) = t->e[i].v;
    for (unsigned i = 0; i < bg->n; i++)
        *tally_at(out, bg->e[i].name) -= bg->e[i].v * ratio;
}

/* --- Connection groups --- */

struct fan;

struct grp {
    bws_set_t set;
    struct app *a;
    char prefix[32];
    uint32_t n;
    uint32_t waiting; /* connections awaiting an ack, a pong or initial_presence */
    uint8_t *wait;
    uint64_t updates; /* presence_update frames */
    uint64_t errors;
    char err[200];
    struct fan *fan;
    uint32_t *ready; /* when set: connections whose awaited answer came, to act on */
    uint32_t nready;
    bool open;
};

static void grp_user(void *ctx, uint32_t i, char *user, size_t size) {
    struct grp *g = ctx;
    snprintf(user, size, "%s-%u", g->prefix, i);
}

static void grp_error(struct grp *g, uint32_t i, const uint8_t *p, size_t len) {
    if (g->errors++ == 0)
        snprintf(g->err, sizeof(g->err), "%s-%u: unexpected: %.*s", g->prefix, i,
                 (int)(len < 140 ? len : 140), (const char *)p);
}

static void fan_record(struct grp *g, uint32_t i, const uint8_t *p, size_t len, uint64_t now);

static int on_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                    size_t len, uint64_t now) {
    struct grp *g = ctx;
    (void)s;
    if (opcode != 1)
        return 0;
    if (bws_starts(p, len, "{\"type\":\"presence_update\"")) {
        g->updates++;
        if (g->fan)
            fan_record(g, i, p, len, now);
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"ack\"") || bws_starts(p, len, "{\"type\":\"pong\"") ||
        bws_starts(p, len, "{\"type\":\"initial_presence\"")) {
        if (g->wait[i]) {
            g->wait[i] = 0;
            g->waiting--;
            if (g->ready)
                g->ready[g->nready++] = i;
        } else {
            grp_error(g, i, p, len);
        }
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"welcome\""))
        return 0;
    grp_error(g, i, p, len);
    return 0;
}

static int grp_open(struct app *a, struct grp *g, const char *prefix, uint32_t n, int port) {
    memset(g, 0, sizeof(*g));
    g->a = a;
    g->n = n;
    snprintf(g->prefix, sizeof(g->prefix), "%s", prefix);
    char ip[32];
    unsigned src = a->o.src_base + a->src_next++;
    if (src > 254)
        src = a->o.src_base + (a->src_next = 0);
    snprintf(ip, sizeof(ip), "127.0.0.%u", src);
    g->wait = calloc(n, 1);
    if (!g->wait || bws_set_init(&g->set, n, port, ip, "/presence", -1) != 0) {
        fail(a, "%s: out of memory", prefix);
        return -1;
    }
    g->open = true;
    if (bws_set_open(&g->set, grp_user, g, 128, a->deadline) != 0) {
        fail(a, "%s: connecting: %s", prefix, g->set.err);
        return -1;
    }
    return 0;
}

static void grp_close(struct grp *g) {
    if (g->open)
        bws_set_free(&g->set);
    free(g->wait);
    g->wait = NULL;
    g->open = false;
}

/* Sends text on connection i, expecting an answer when expect. */
static int grp_send(struct grp *g, uint32_t i, const char *text, bool expect) {
    uint8_t frame[1024 + BWS_FRAME_HDR];
    size_t len = strlen(text);
    if (len > 1024)
        return -1;
    size_t flen = bws_frame(frame, text, len, i * 2654435761u + 17);
    if (expect && !g->wait[i]) {
        g->wait[i] = 1;
        g->waiting++;
    }
    return bws_send(&g->set, i, frame, flen);
}

static int grp_send_all(struct grp *g, const char *text, bool expect) {
    for (uint32_t i = 0; i < g->n; i++)
        if (grp_send(g, i, text, expect))
            return -1;
    return 0;
}

/* Polls until no connection waits for an answer. 0 or -1. */
static int grp_wait(struct grp *g, unsigned timeout_ms) {
    uint64_t limit = bench_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (g->waiting > 0) {
        if (g->set.dead || bench_now_ns() > limit || over(g->a)) {
            fail(g->a, "%s: %u answers missing (%s)", g->prefix, g->waiting,
                 g->set.dead ? g->set.err : "timed out");
            return -1;
        }
        if (bws_poll(&g->set, 20, on_frame, g) < 0)
            return -1;
    }
    return 0;
}

/* Polls for ms, reading whatever comes. */
static void grp_drain(struct grp *g, unsigned ms) {
    uint64_t limit = bench_now_ns() + (uint64_t)ms * 1000000u;
    while (bench_now_ns() < limit)
        if (bws_poll(&g->set, 10, on_frame, g) < 0)
            break;
}

static int grp_check(struct app *a, struct grp *g) {
    if (g->errors || g->set.dead) {
        fail(a, "%s: %llu unexpected messages, %u connections dead: %s", g->prefix,
             (unsigned long long)g->errors, g->set.dead, g->err[0] ? g->err : g->set.err);
        return -1;
    }
    return 0;
}

static const char SET_ONLINE[] = "{\"type\":\"set_online\",\"device\":\"web\",\"id\":1}";
static const char PING[] = "{\"type\":\"ping\"}";
static const char HEARTBEAT[] = "{\"type\":\"heartbeat\",\"device\":\"web\"}";

/* Opens n connections as prefix-i and announces each (acknowledged). */
static int grp_online(struct app *a, struct grp *g, const char *prefix, uint32_t n, int port) {
    if (grp_open(a, g, prefix, n, port) || grp_send_all(g, SET_ONLINE, true) || grp_wait(g, 30000))
        return -1;
    return grp_check(a, g);
}

/* --- Servers --- */

static bool nodes_alive(struct app *a) {
    const struct {
        const char *name;
        pid_t pid;
    } n[] = {{"A", a->o.a_pid}, {"B", a->o.b_pid}, {"L", a->o.l_pid}};
    bool ok = true;
    for (size_t i = 0; i < 3; i++)
        if (n[i].pid > 0 && !bench_proc_alive(n[i].pid)) {
            fail(a, "node %s (pid %d) is gone", n[i].name, (int)n[i].pid);
            ok = false;
        }
    return ok;
}

/* Waits until the nodes' CPU is quiet (after closes: past the offline grace first). */
static void settle(struct app *a, bool after_close) {
    if (after_close)
        bench_sleep_ms((unsigned)(a->o.grace_s * 1000 + 500));
    uint64_t t;
    pid_t p[] = {a->o.a_pid, a->o.b_pid, a->o.l_pid};
    for (size_t i = 0; i < 3; i++)
        if (p[i] > 0)
            bws_wait_idle(p[i], 300, 10000, &t);
}

/* --- 1. Redis commands per heartbeat --- */

static int measure_background(struct app *a, unsigned ms, struct grp *keep) {
    static struct win bg;
    settle(a, false);
    if (win_begin(a, &bg, true))
        return -1;
    grp_drain(keep, ms);
    if (win_end(a, &bg))
        return -1;
    a->bg = &bg;
    a->have_bg = true;
    char top[1024], cs[1024];
    tally_print(&bg.cs, 1, "%.0f", cs, sizeof(cs));
    tally_print(&bg.top, 1, "%.0f", top, sizeof(top));
    printf("background secs=%.2f calls=%.0f per_s=%.2f top_calls=%.0f lua_calls=%.0f "
           "not_lease_or_sweep=%.0f commands=%s top=%s\n",
           bg.secs, tally_sum(&bg.cs), tally_sum(&bg.cs) / bg.secs, tally_sum(&bg.top),
           tally_sum(&bg.lua), bg.work, cs, top);
    fflush(stdout);
    return 0;
}

static int phase_heartbeat(struct app *a, struct grp *g) {
    const struct opts *o = &a->o;
    unsigned ms = o->hb_rounds * o->hb_interval_ms;
    if (!a->have_bg && measure_background(a, ms, g))
        return -1;
    double m0 = bws_metric(o->a_port, HB_METRIC);
    struct win w;
    if (win_begin(a, &w, true))
        return -1;
    uint8_t frame[sizeof(HEARTBEAT) + BWS_FRAME_HDR];
    size_t flen = bws_frame(frame, HEARTBEAT, sizeof(HEARTBEAT) - 1, 99);
    uint64_t sent = 0;
    uint64_t t0 = bench_now_ns();
    for (uint32_t r = 0; r < o->hb_rounds && !g->set.dead && !over(a); r++) {
        for (uint32_t i = 0; i < g->n; i++)
            if (bws_send(&g->set, i, frame, flen) == 0)
                sent++;
        uint64_t next = t0 + (uint64_t)(r + 1) * o->hb_interval_ms * 1000000u;
        while (bench_now_ns() < next)
            if (bws_poll(&g->set, 5, on_frame, g) < 0)
                break;
    }
    /* The pongs: every heartbeat before them was handled. */
    if (grp_send_all(g, PING, true) || grp_wait(g, 30000)) {
        win_end(a, &w);
        return -1;
    }
    /* The window lasts as long as the idle one at least. */
    double elapsed_ms = (double)(bench_now_ns() - w.t0) / 1e6;
    if (elapsed_ms < a->bg->secs * 1000)
        grp_drain(g, (unsigned)(a->bg->secs * 1000 - elapsed_ms));
    if (win_end(a, &w))
        return -1;
    double m1 = bws_metric(o->a_port, HB_METRIC);
    double ratio = w.secs / a->bg->secs;
    struct tally net;
    net_of(&w.cs, &a->bg->cs, ratio, &net);
    double calls = tally_sum(&w.cs), bgc = tally_sum(&a->bg->cs);
    char cmds[1024], nets[1024], top[1024];
    /* Per command: the window's calls / the idle window's. */
    size_t off = 0;
    cmds[0] = '\0';
    struct tally all;
    net_of(&w.cs, &a->bg->cs, 0, &all);
    for (unsigned i = 0; i < a->bg->cs.n; i++)
        tally_at(&all, a->bg->cs.e[i].name);
    for (unsigned i = 0; i < all.n && off + 64 < sizeof(cmds); i++)
        off += (size_t)snprintf(cmds + off, sizeof(cmds) - off, "%s%s:%.0f/%.0f", off ? "," : "",
                                all.e[i].name, tally_get(&w.cs, all.e[i].name),
                                tally_get(&a->bg->cs, all.e[i].name));
    if (!off)
        snprintf(cmds, sizeof(cmds), "none");
    tally_print(&net, (double)sent, "%+.6f", nets, sizeof(nets));
    tally_print(&w.top, 1, "%.0f", top, sizeof(top));
    printf("per_heartbeat conns=%u heartbeats=%llu counted=%.0f secs=%.2f idle_secs=%.2f "
           "calls=%.0f idle_calls=%.0f net_calls=%.1f per_heartbeat=%.6f top_calls=%.0f "
           "lua_calls=%.0f not_lease_or_sweep=%.0f commands=%s net_per_heartbeat=%s top=%s\n",
           g->n, (unsigned long long)sent, m1 >= 0 && m0 >= 0 ? m1 - m0 : -1, w.secs, a->bg->secs,
           calls, bgc, calls - bgc * ratio, (calls - bgc * ratio) / (double)sent, tally_sum(&w.top),
           tally_sum(&w.lua), w.work, cmds, nets, top);
    fflush(stdout);
    if (m1 - m0 != (double)sent)
        fail(a, "node A counted %.0f heartbeats, %llu were sent", m1 - m0,
             (unsigned long long)sent);
    if (w.work > 0)
        fail(a, "%.0f commands other than lease/sweep ones during the heartbeat window", w.work);
    return grp_check(a, g);
}

/* --- 2. Redis commands per status change --- */

/* pub and wat are left open (the caller closes them once no window is left to measure:
 * closing sets Redis to work, at once and after the offline grace). */
static int phase_status(struct app *a, struct grp *keep, struct grp *pubp, struct grp *watp,
                        uint32_t nwatch, const char *prefix) {
    const struct opts *o = &a->o;
    struct grp *pub = pubp, *wat = watp;
    char wp[32], req[256];
    if (grp_online(a, pub, prefix, 1, o->a_port))
        return -1;
    if (nwatch > 0) {
        snprintf(wp, sizeof(wp), "%sw", prefix);
        snprintf(req, sizeof(req), "{\"type\":\"subscribe\",\"user_ids\":[\"%s-0\"]}", prefix);
        if (grp_open(a, wat, wp, nwatch, o->b_port) || grp_send_all(wat, req, true) ||
            grp_wait(wat, 30000))
            return -1;
    }
    /* Warm-up: the first run of each script on a connection may be an EVAL (NOSCRIPT). Each
     * change waits for its ack and, with watchers, for all of them to have it: changes never
     * overlap, so the nodes' latest-wins coalescing never merges two. */
    uint32_t k = 0, warm = 20, short_changes = 0, first_short = 0;
    for (; k < warm + o->changes; k++) {
        static struct win w;
        if (k == warm) {
            settle(a, false);
            if (!a->have_bg && measure_background(a, o->hb_rounds * o->hb_interval_ms, keep))
                return -1;
            if (win_begin(a, &w, true))
                return -1;
        }
        uint64_t before = wat->updates;
        snprintf(req, sizeof(req), "{\"type\":\"set_status\",\"status\":\"%s\",\"id\":%u}",
                 k % 2 == 0 ? "away" : "online", k + 2);
        if (grp_send(pub, 0, req, true) || grp_wait(pub, 10000)) {
            if (k >= warm)
                win_end(a, &w);
            return -1;
        }
        uint64_t limit = bench_now_ns() + (uint64_t)o->change_timeout_ms * 1000000u;
        while (nwatch > 0 && wat->updates - before < nwatch && bench_now_ns() < limit)
            bws_poll(&wat->set, 1, on_frame, wat);
        if (wat->updates - before < nwatch && short_changes++ == 0)
            first_short = k; /* some watcher did not get this change in time */
        if (k + 1 < warm + o->changes)
            continue;
        /* The last change: the window ends. */
        if (win_end(a, &w))
            return -1;
        double ratio = w.secs / a->bg->secs, n = o->changes;
        struct tally net, tnet;
        net_of(&w.cs, &a->bg->cs, ratio, &net);
        net_of(&w.top, &a->bg->top, ratio, &tnet);
        char s_net[1024], s_top[1024], s_lua[1024];
        tally_print(&net, n, "%.3f", s_net, sizeof(s_net));
        tally_print(&tnet, n, "%.3f", s_top, sizeof(s_top));
        tally_print(&w.lua, n, "%.3f", s_lua, sizeof(s_lua));
        double calls = tally_sum(&w.cs), bgc = tally_sum(&a->bg->cs) * ratio;
        double top = tally_sum(&w.top), bgt = tally_sum(&a->bg->top) * ratio;
        uint64_t got = wat->updates, expect = (uint64_t)(warm + o->changes) * nwatch;
        printf("per_status_change watchers_on_B=%u changes=%u secs=%.2f calls=%.0f "
               "bg_calls=%.1f per_change=%.3f top_per_change=%.3f lua_per_change=%.3f "
               "work_per_change=%.3f updates=%llu expected_updates=%llu short_changes=%u "
               "commands=%s top=%s lua=%s\n",
               nwatch, o->changes, w.secs, calls, bgc, (calls - bgc) / n, (top - bgt) / n,
               tally_sum(&w.lua) / n, w.work / n, (unsigned long long)got,
               (unsigned long long)expect, short_changes, s_net, s_top, s_lua);
        fflush(stdout);
        if (got != expect)
            fail(a,
                 "status changes: B's watchers got %llu updates, %llu expected; %u changes "
                 "(counting the %u warm-up ones from 0; the first: %u) did not reach all %u "
                 "within %u ms",
                 (unsigned long long)got, (unsigned long long)expect, short_changes, warm,
                 first_short, nwatch, o->change_timeout_ms);
    }
    return grp_check(a, pub) || (nwatch && grp_check(a, wat)) ? -1 : 0;
}

/* --- 3. Fan-out latency --- */

struct fan {
    uint32_t users, per_user, total, warm;
    const char *pub_prefix;
    uint64_t *sent_at; /* per change */
    uint32_t *got;     /* per change: watchers that have it */
    uint64_t *last;    /* per change: the latest watcher's latency */
    uint32_t *seen;    /* per watcher: updates received */
    uint64_t *lat;
    size_t nlat;
    uint64_t errors;
    char err[200];
};

static void fan_record(struct grp *g, uint32_t i, const uint8_t *p, size_t len, uint64_t now) {
    struct fan *f = g->fan;
    uint32_t j = i % f->users, n = f->seen[i]++;
    uint64_t k = (uint64_t)n * f->users + j;
    char uid[96];
    snprintf(uid, sizeof(uid), "\"user_id\":\"%s-%u\"", f->pub_prefix, j);
    const char *want = n % 2 == 0 ? "\"status\":\"away\"" : "\"status\":\"online\"";
    if (k >= f->total || !f->sent_at[k] || !bws_find(p, len, uid) || !bws_find(p, len, want)) {
        if (f->errors++ == 0)
            snprintf(f->err, sizeof(f->err), "watcher %u, update %u: %.*s", i, n,
                     (int)(len < 140 ? len : 140), (const char *)p);
        return;
    }
    uint64_t l = now > f->sent_at[k] ? now - f->sent_at[k] : 0;
    f->got[k]++;
    if (l > f->last[k])
        f->last[k] = l;
    if (k >= f->warm)
        f->lat[f->nlat++] = l;
}

static int phase_fanout(struct app *a, const char *label, const char *tag, int pub_port,
                        int w_port) {
    const struct opts *o = &a->o;
    struct fan f = {.users = o->fan_users,
                    .per_user = o->fan_watchers,
                    .warm = o->fan_warmup,
                    .total = o->fan_warmup + o->fan_changes};
    uint32_t nw = f.users * f.per_user;
    char pp[32], wp[32], req[256];
    snprintf(pp, sizeof(pp), "fp%s", tag);
    snprintf(wp, sizeof(wp), "fw%s", tag);
    f.pub_prefix = pp;
    f.sent_at = calloc(f.total, sizeof(uint64_t));
    f.got = calloc(f.total, sizeof(uint32_t));
    f.last = calloc(f.total, sizeof(uint64_t));
    f.seen = calloc(nw, sizeof(uint32_t));
    f.lat = calloc((size_t)f.total * f.per_user + 1, sizeof(uint64_t));
    struct grp pub = {0}, wat = {0};
    int rc = -1;
    if (!f.sent_at || !f.got || !f.last || !f.seen || !f.lat) {
        fail(a, "fan-out: out of memory");
        goto out;
    }
    if (grp_online(a, &pub, pp, f.users, pub_port) || grp_open(a, &wat, wp, nw, w_port))
        goto out;
    wat.fan = &f;
    for (uint32_t i = 0; i < nw; i++) {
        snprintf(req, sizeof(req), "{\"type\":\"subscribe\",\"user_ids\":[\"%s-%u\"]}", pp,
                 i % f.users);
        if (grp_send(&wat, i, req, true))
            goto out;
    }
    if (grp_wait(&wat, 30000))
        goto out;
    settle(a, false);
    uint64_t missing = 0;
    uint32_t timeouts = 0;
    static const char away[] = "{\"type\":\"set_status\",\"status\":\"away\"}";
    static const char online[] = "{\"type\":\"set_status\",\"status\":\"online\"}";
    uint8_t fa[sizeof(away) + BWS_FRAME_HDR], fo[sizeof(online) + BWS_FRAME_HDR];
    size_t la = bws_frame(fa, away, sizeof(away) - 1, 5),
           lo = bws_frame(fo, online, sizeof(online) - 1, 6);
    uint32_t done = 0;
    uint64_t t0 = bench_now_ns();
    for (uint32_t k = 0; k < f.total && !over(a); k++) {
        uint32_t j = k % f.users, n = k / f.users;
        f.sent_at[k] = bench_now_ns();
        if (bws_send(&pub.set, j, n % 2 == 0 ? fa : fo, n % 2 == 0 ? la : lo)) {
            fail(a, "%s: the publisher's write failed", label);
            goto out;
        }
        uint64_t limit = bench_now_ns() + (uint64_t)o->change_timeout_ms * 1000000u;
        while (f.got[k] < f.per_user && bench_now_ns() < limit && !wat.set.dead)
            bws_poll(&wat.set, 1, on_frame, &wat);
        bws_poll(&pub.set, 0, on_frame, &pub);
        if (f.got[k] < f.per_user) {
            timeouts++;
            if (k >= f.warm)
                missing += f.per_user - f.got[k];
        }
        done = k + 1;
        if (o->gap_ms) {
            uint64_t gap = bench_now_ns() + (uint64_t)o->gap_ms * 1000000u;
            while (bench_now_ns() < gap)
                bws_poll(&wat.set, 1, on_frame, &wat);
        }
    }
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    grp_drain(&wat, 200);
    uint32_t measured = done > f.warm ? done - f.warm : 0;
    uint64_t *last = f.last + f.warm;
    bws_sort_u64(f.lat, f.nlat);
    bws_sort_u64(last, measured);
    printf("fanout label=%s publishers=%u watchers=%u watchers_per_user=%u changes=%u "
           "samples=%zu missing=%llu timeouts=%u p50_us=%.0f p90_us=%.0f p99_us=%.0f "
           "max_us=%.0f last_p50_us=%.0f last_p99_us=%.0f last_max_us=%.0f errors=%llu "
           "secs=%.1f\n",
           label, f.users, nw, f.per_user, measured, f.nlat, (unsigned long long)missing, timeouts,
           bws_pct(f.lat, f.nlat, 0.50) / 1e3, bws_pct(f.lat, f.nlat, 0.90) / 1e3,
           bws_pct(f.lat, f.nlat, 0.99) / 1e3, bws_pct(f.lat, f.nlat, 1.0) / 1e3,
           bws_pct(last, measured, 0.50) / 1e3, bws_pct(last, measured, 0.99) / 1e3,
           bws_pct(last, measured, 1.0) / 1e3, (unsigned long long)f.errors, secs);
    fflush(stdout);
    if (f.errors)
        fail(a, "%s: %llu wrong updates: %s", label, (unsigned long long)f.errors, f.err);
    if (timeouts)
        fail(a, "%s: %u changes did not reach all their watchers within %u ms", label, timeouts,
             o->change_timeout_ms);
    rc = f.errors || timeouts || measured < o->fan_changes || grp_check(a, &pub) ||
                 grp_check(a, &wat)
             ? -1
             : 0;
out:
    grp_close(&pub);
    grp_close(&wat);
    free(f.sent_at);
    free(f.got);
    free(f.last);
    free(f.seen);
    free(f.lat);
    return rc;
}

/* --- 4. Heartbeats per second --- */

static int phase_throughput(struct app *a, const char *label, const char *tag, int port, pid_t pid,
                            bool redis) {
    const struct opts *o = &a->o;
    struct grp g = {0};
    int rc = -1;
    uint8_t *batch = NULL;
    uint64_t *left = NULL;
    if (grp_online(a, &g, tag, o->tp_conns, port))
        goto out;
    size_t one = 0;
    batch = malloc((size_t)o->tp_batch * (sizeof(HEARTBEAT) + BWS_FRAME_HDR));
    left = calloc(g.n, sizeof(uint64_t));
    g.ready = calloc(g.n, sizeof(uint32_t));
    if (!batch || !left || !g.ready)
        goto out;
    for (uint32_t k = 0; k < o->tp_batch; k++)
        one = bws_frame(batch + k * one, HEARTBEAT, sizeof(HEARTBEAT) - 1, 4242);
    uint8_t ping[sizeof(PING) + BWS_FRAME_HDR];
    size_t ping_len = bws_frame(ping, PING, sizeof(PING) - 1, 4343);
    for (uint32_t i = 0; i < g.n; i++)
        left[i] = o->tp_count / g.n + (i < o->tp_count % g.n);
    uint64_t cpu0, cpu1;
    bws_wait_idle(pid, 300, 10000, &cpu0);
    double m0 = bws_metric(port, HB_METRIC);
    double rs0 = redis ? bws_metric(port, "presenced_redis_resyncs_total") : 0;
    struct win w;
    memset(&w, 0, sizeof(w));
    if (redis && win_begin(a, &w, false))
        goto out;
    double ccpu0 = bws_self_cpu_s(false);
    uint64_t t0 = bench_now_ns(), sent = 0, pings = 0;
    bool ok = false;
    if (!o->tp_flood) {
        /* Flow-controlled: each connection has one batch and its closing ping outstanding; the
         * pong releases the next batch. The last pong of a connection proves all its
         * heartbeats were handled. */
        uint32_t finished = 0;
        g.nready = g.n;
        for (uint32_t i = 0; i < g.n; i++)
            g.ready[i] = i;
        while (finished < g.n && !g.set.dead && !over(a)) {
            while (g.nready > 0) {
                uint32_t i = g.ready[--g.nready];
                if (left[i] == 0) {
                    finished++;
                    continue;
                }
                uint64_t k = left[i] < o->tp_batch ? left[i] : o->tp_batch;
                g.wait[i] = 1;
                g.waiting++;
                if (bws_send(&g.set, i, batch, (size_t)k * one) ||
                    bws_send(&g.set, i, ping, ping_len))
                    break;
                left[i] -= k;
                sent += k;
                pings++;
            }
            if (bws_poll(&g.set, 20, on_frame, &g) < 0)
                break;
        }
        ok = finished == g.n && !g.set.dead;
    } else {
        /* Flood: every connection writes whenever its socket takes more; one ping each at
         * the end. */
        uint32_t sending = g.n;
        while (sending > 0 && !g.set.dead && !over(a)) {
            bool wrote = false;
            for (uint32_t i = 0; i < g.n; i++) {
                if (left[i] == 0 || bws_pending(&g.set, i))
                    continue;
                uint64_t k = left[i] < o->tp_batch ? left[i] : o->tp_batch;
                if (bws_send(&g.set, i, batch, (size_t)k * one))
                    break;
                left[i] -= k;
                sent += k;
                wrote = true;
                if (left[i] == 0)
                    sending--;
            }
            if (bws_poll(&g.set, wrote ? 0 : 20, on_frame, &g) < 0)
                break;
        }
        g.nready = 0;
        ok = sending == 0 && grp_send_all(&g, PING, true) == 0 && grp_wait(&g, 60000) == 0;
        pings = g.n;
    }
    if (!ok) {
        if (redis)
            win_end(a, &w);
        fail(a, "%s: the heartbeats did not all go out (%s)", label,
             g.set.dead ? g.set.err : "timed out");
        goto out;
    }
    uint64_t t1 = bench_now_ns();
    double ccpu = bws_self_cpu_s(false) - ccpu0;
    /* The worst lateness of the node's 10-ms tick over the last 10 s (so over the run when it
     * took less). */
    double lag = bws_metric(port, "presenced_loop_lag_seconds");
    int idle = bws_wait_idle(pid, 300, 20000, &cpu1);
    double m1 = bws_metric(port, HB_METRIC);
    /* Whether the node lost Redis meanwhile (and registered everything again). */
    double rs1 = redis ? bws_metric(port, "presenced_redis_resyncs_total") : 0;
    double calls = -1;
    if (redis) {
        if (win_end(a, &w))
            goto out;
        calls = tally_sum(&w.cs);
    }
    double bgc = redis && a->have_bg ? tally_sum(&a->bg->cs) * w.secs / a->bg->secs : 0;
    double srv = (double)(cpu1 - cpu0) / (double)sysconf(_SC_CLK_TCK);
    double secs = (double)(t1 - t0) / 1e9;
    char cmds[1024] = "-";
    if (redis)
        tally_print(&w.cs, 1, "%.0f", cmds, sizeof(cmds));
    printf("throughput label=%s mode=%s conns=%u batch=%u heartbeats=%llu pings=%llu "
           "counted=%.0f secs=%.3f wall_per_s=%.0f server_cpu_s=%.2f per_core_per_s=%.0f "
           "server_ns_per_hb=%.0f client_cpu_s=%.2f idle=%s loop_lag_ms=%.0f redis_resyncs=%.0f "
           "redis_calls=%.0f redis_window_s=%.2f bg_calls_expected=%.1f redis_net_per_hb=%.7f "
           "redis_commands=%s\n",
           label, o->tp_flood ? "flood" : "window", g.n, o->tp_batch, (unsigned long long)sent,
           (unsigned long long)pings, m1 - m0, secs, (double)sent / secs, srv,
           srv > 0 ? (double)sent / srv : 0, srv * 1e9 / (double)sent, ccpu,
           idle == 0 ? "yes" : "no", lag * 1e3, rs1 - rs0, calls, redis ? w.secs : 0, bgc,
           redis ? (calls - bgc) / (double)sent : 0, cmds);
    fflush(stdout);
    if (m1 - m0 != (double)sent)
        fail(a, "%s: the node counted %.0f heartbeats, %llu were sent", label, m1 - m0,
             (unsigned long long)sent);
    if (rs1 != rs0)
        fail(a,
             "%s: the node lost Redis during the heartbeats and registered its sessions "
             "again (%.0f times; its log says why): %.0f Redis commands in the window",
             label, rs1 - rs0, calls);
    rc = grp_check(a, &g);
out:
    free(g.ready);
    g.ready = NULL;
    grp_close(&g);
    free(batch);
    free(left);
    return rc;
}

/* --- Options --- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_redis --redis-port P --a-port P --a-pid PID --b-port P --b-pid PID\n"
            "  --l-port P --l-pid PID [--phases 1234] [--conns 1000] [--hb-rounds 100]\n"
            "  [--hb-interval-ms 100] [--changes 1000] [--watchers 10] [--fan-users 100]\n"
            "  [--fan-watchers 10] [--fan-changes 2000] [--fan-warmup 100] [--gap-ms 1]\n"
            "  [--change-timeout-ms 2000] [--tp-conns 1000] [--tp-count 3000000]\n"
            "  [--tp-batch 100] [--tp-rounds 2] [--tp-flood 0|1] [--grace-s 5] [--src-base 100]\n"
            "  [--timeout 240]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.phases = "1234",
                       .conns = 1000,
                       .hb_rounds = 100,
                       .hb_interval_ms = 100,
                       .changes = 1000,
                       .watchers = 10,
                       .fan_users = 100,
                       .fan_watchers = 10,
                       .fan_changes = 2000,
                       .fan_warmup = 100,
                       .gap_ms = 1,
                       .change_timeout_ms = 2000,
                       .tp_conns = 1000,
                       .tp_count = 3000000,
                       .tp_batch = 100,
                       .tp_rounds = 2,
                       .grace_s = 5,
                       .src_base = 100,
                       .timeout_s = 240};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        struct {
            const char *name;
            uint32_t *u;
        } u32[] = {{"--conns", &o->conns},
                   {"--hb-rounds", &o->hb_rounds},
                   {"--hb-interval-ms", &o->hb_interval_ms},
                   {"--changes", &o->changes},
                   {"--watchers", &o->watchers},
                   {"--fan-users", &o->fan_users},
                   {"--fan-watchers", &o->fan_watchers},
                   {"--fan-changes", &o->fan_changes},
                   {"--fan-warmup", &o->fan_warmup},
                   {"--gap-ms", &o->gap_ms},
                   {"--change-timeout-ms", &o->change_timeout_ms},
                   {"--tp-conns", &o->tp_conns},
                   {"--tp-batch", &o->tp_batch},
                   {"--tp-rounds", &o->tp_rounds},
                   {"--tp-flood", &o->tp_flood}};
        bool found = false;
        for (size_t x = 0; x < sizeof(u32) / sizeof(u32[0]); x++)
            if (!strcmp(k, u32[x].name)) {
                *u32[x].u = (uint32_t)strtoul(v, NULL, 10);
                found = true;
            }
        if (found)
            continue;
        if (!strcmp(k, "--redis-port"))
            o->redis_port = atoi(v);
        else if (!strcmp(k, "--a-port"))
            o->a_port = atoi(v);
        else if (!strcmp(k, "--b-port"))
            o->b_port = atoi(v);
        else if (!strcmp(k, "--l-port"))
            o->l_port = atoi(v);
        else if (!strcmp(k, "--a-pid"))
            o->a_pid = (pid_t)atoi(v);
        else if (!strcmp(k, "--b-pid"))
            o->b_pid = (pid_t)atoi(v);
        else if (!strcmp(k, "--l-pid"))
            o->l_pid = (pid_t)atoi(v);
        else if (!strcmp(k, "--phases"))
            o->phases = v;
        else if (!strcmp(k, "--tp-count"))
            o->tp_count = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--grace-s"))
            o->grace_s = strtod(v, NULL);
        else if (!strcmp(k, "--src-base"))
            o->src_base = (unsigned)atoi(v);
        else if (!strcmp(k, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else
            return -1;
    }
    if (o->redis_port <= 0 || o->a_port <= 0 || o->b_port <= 0 || o->l_port <= 0 || o->a_pid <= 0 ||
        o->b_pid <= 0 || o->l_pid <= 0 || o->conns == 0 || o->conns > 19000 || o->hb_rounds == 0 ||
        o->hb_interval_ms == 0 || o->changes == 0 || o->watchers > 19000 || o->fan_users == 0 ||
        o->fan_watchers == 0 || (uint64_t)o->fan_users * o->fan_watchers > 19000 ||
        o->fan_changes == 0 || o->fan_changes + (uint64_t)o->fan_warmup > 1000000 ||
        o->tp_conns == 0 || o->tp_conns > 19000 || o->tp_batch == 0 || o->tp_batch > 4096 ||
        o->tp_count < o->tp_conns || o->src_base < 2 || o->src_base > 230 || o->timeout_s == 0 ||
        o->grace_s < 0 || o->grace_s > 60)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    static struct app a;
    if (parse_opts(argc, argv, &a.o)) {
        usage();
        return 2;
    }
    const struct opts *o = &a.o;
    a.deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    struct timeval tv = {5, 0};
    a.rc = redisConnectWithTimeout("127.0.0.1", o->redis_port, tv);
    if (!a.rc || a.rc->err) {
        fprintf(stderr, "bench_redis: redis: %s\n", a.rc ? a.rc->errstr : "out of memory");
        return 1;
    }
    redisSetTimeout(a.rc, tv);
    struct sockaddr_in me;
    socklen_t ml = sizeof(me);
    if (getsockname(a.rc->fd, (struct sockaddr *)&me, &ml) != 0)
        return 1;
    snprintf(a.self, sizeof(a.self), "127.0.0.1:%u", ntohs(me.sin_port));
    if (!nodes_alive(&a))
        return 1;

    /* Phase 1's connections stay up through phase 2: closing them would set Redis to work
     * (removals, offlines after the grace) inside later windows. */
    static struct grp hb, st[4];
    bool hb_up = false;
    for (const char *ph = o->phases; *ph && !over(&a); ph++) {
        switch (*ph) {
        case '1':
        case '2':
            if (!hb_up) {
                if (grp_online(&a, &hb, "hb", o->conns, o->a_port))
                    goto done;
                hb_up = true;
            }
            if (*ph == '1') {
                phase_heartbeat(&a, &hb);
            } else {
                phase_status(&a, &hb, &st[0], &st[1], 0, "st0");
                if (o->watchers)
                    phase_status(&a, &hb, &st[2], &st[3], o->watchers, "st1");
            }
            break;
        case '3':
        case '4':
            if (hb_up) {
                grp_close(&hb);
                for (int i = 0; i < 4; i++)
                    grp_close(&st[i]);
                hb_up = false;
                settle(&a, true);
            }
            if (*ph == '3') {
                phase_fanout(&a, "cross-node_redis", "x", o->a_port, o->b_port);
                settle(&a, true);
                phase_fanout(&a, "one-node_redis", "r", o->a_port, o->a_port);
                settle(&a, true);
                phase_fanout(&a, "one-node_local", "l", o->l_port, o->l_port);
                settle(&a, true);
            } else {
                for (uint32_t r = 1; r <= o->tp_rounds && !over(&a); r++) {
                    char tag[16];
                    snprintf(tag, sizeof(tag), "tl%u", r);
                    phase_throughput(&a, "local", tag, o->l_port, o->l_pid, false);
                    settle(&a, true);
                    snprintf(tag, sizeof(tag), "tr%u", r);
                    phase_throughput(&a, "redis", tag, o->a_port, o->a_pid, true);
                    settle(&a, true);
                }
            }
            break;
        default:
            fail(&a, "unknown phase %c", *ph);
        }
        if (!nodes_alive(&a))
            break;
    }
done:
    grp_close(&hb);
    for (int i = 0; i < 4; i++)
        grp_close(&st[i]);
    if (over(&a))
        fail(&a, "the run passed its --timeout of %u s", o->timeout_s);
    nodes_alive(&a);
    redisFree(a.rc);
    return a.failures ? 1 : 0;
}
