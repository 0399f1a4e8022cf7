/* bench_msg_rate: round trips per second through the server.
 *
 * C upgraded WebSocket connections each send {"type":"ping"} as masked text frames, keeping
 * up to W of them outstanding (pipelined), and read the {"type":"pong"} answers; the run ends
 * when a fixed total of M answers has arrived. Reported: round trips per second, the server's
 * CPU time per message (utime + stime from /proc/PID/stat, all threads), this client's own
 * CPU, and round-trip latency percentiles (from queueing a ping to reading its pong, in
 * order on each connection).
 *
 * A warm-up of --warmup messages runs first on the same connections and is not counted.
 * One process, one thread, epoll; bounded by --timeout. Loopback only.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench_common.h"
#include "ws/frame.h"

#define FRAME_MAX 256        /* bytes of one client frame (header + payload) */
#define IN_CAP    (16 << 10) /* bytes of unparsed input kept per connection */

struct opts {
    int port;
    pid_t pid;
    uint32_t conns, window, messages, warmup;
    unsigned timeout_s, concurrency;
    const char *src;
    const char *path;
    const char *label;
    const char *payload;
    const char *expect;
};

struct mconn {
    int fd;
    uint8_t state; /* enum mstate */
    uint8_t want_out;
    uint32_t quota, sent, recvd; /* messages in the current phase */
    uint32_t out_len, out_off;   /* bytes pending in out */
    uint32_t in_len;             /* bytes pending in in */
    uint32_t ts_head;            /* ring index of the oldest outstanding ping */
    uint8_t frame[FRAME_MAX];    /* this connection's masked ping */
    uint32_t frame_len;
    uint8_t *out, *in;
    uint64_t *ts; /* window send times (ns), a ring */
};

enum mstate { MC_CONNECTING, MC_HANDSHAKE, MC_OPEN, MC_DEAD };

struct run {
    const struct opts *o;
    int ep;
    struct mconn *c;
    uint64_t *lat; /* ns, one per measured answer */
    uint64_t nlat;
    uint64_t done, target; /* answers received / wanted in this phase */
    uint64_t errors;
    int measure;
};

static void mconn_dead(struct run *r, struct mconn *c, const char *why) {
    if (c->state == MC_DEAD)
        return;
    if (r->errors++ < 5)
        fprintf(stderr, "bench_msg_rate: connection %ld: %s\n", (long)(c - r->c), why);
    close(c->fd);
    c->fd = -1;
    c->state = MC_DEAD;
}

static void mconn_flush(struct run *r, struct mconn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0) {
            mconn_dead(r, c, strerror(errno));
            return;
        }
        c->out_off += (uint32_t)w;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    uint8_t want = c->out_len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0),
                                 .data.u32 = (uint32_t)(c - r->c)};
        epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

/* Queues pings while the window and the quota allow. */
static void mconn_fill(struct run *r, struct mconn *c, uint64_t now) {
    uint32_t window = r->o->window;
    while (c->sent < c->quota && c->sent - c->recvd < window) {
        if (c->out_len + c->frame_len > window * c->frame_len) {
            /* Compact: the unsent tail moves to the front. */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        memcpy(c->out + c->out_len, c->frame, c->frame_len);
        c->out_len += c->frame_len;
        c->ts[(c->ts_head + (c->sent - c->recvd)) % window] = now;
        c->sent++;
    }
}

/* Parses the server frames in c->in; returns -1 when the connection is unusable. */
static int mconn_parse(struct run *r, struct mconn *c, uint64_t now) {
    const struct opts *o = r->o;
    size_t expect_len = strlen(o->expect);
    uint32_t off = 0;
    while (c->in_len - off >= 2) {
        const uint8_t *p = c->in + off;
        uint32_t avail = c->in_len - off;
        uint8_t opcode = p[0] & 0x0f;
        if (p[1] & 0x80) {
            mconn_dead(r, c, "masked server frame");
            return -1;
        }
        uint64_t len = p[1] & 0x7f;
        uint32_t hdr = 2;
        if (len == 126) {
            if (avail < 4)
                break;
            len = ((uint64_t)p[2] << 8) | p[3];
            hdr = 4;
        } else if (len == 127) {
            mconn_dead(r, c, "unexpectedly large frame");
            return -1;
        }
        if (avail < hdr + len)
            break;
        const uint8_t *payload = p + hdr;
        off += hdr + (uint32_t)len;
        if (opcode == WS_OP_CLOSE) {
            mconn_dead(r, c, "close frame from the server");
            return -1;
        }
        if (opcode != WS_OP_TEXT)
            continue;
        if (len != expect_len || memcmp(payload, o->expect, expect_len) != 0) {
            static const char welcome[] = "{\"type\":\"welcome\"";
            if (len >= sizeof(welcome) - 1 && memcmp(payload, welcome, sizeof(welcome) - 1) == 0)
                continue; /* sent once after the upgrade by servers that greet */
            char why[160];
            snprintf(why, sizeof(why), "unexpected message: %.*s", (int)(len < 120 ? len : 120),
                     (const char *)payload);
            mconn_dead(r, c, why);
            return -1;
        }
        if (c->recvd == c->sent) {
            mconn_dead(r, c, "an answer nobody asked for");
            return -1;
        }
        uint64_t sent_at = c->ts[c->ts_head];
        c->ts_head = (c->ts_head + 1) % o->window;
        c->recvd++;
        r->done++;
        if (r->measure && r->nlat < r->o->messages)
            r->lat[r->nlat++] = now - sent_at;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

static void mconn_readable(struct run *r, struct mconn *c) {
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            mconn_dead(r, c, n == 0 ? "closed by the server" : strerror(errno));
            return;
        }
        c->in_len += (uint32_t)n;
        uint64_t now = bench_now_ns();
        if (mconn_parse(r, c, now))
            return;
        mconn_fill(r, c, now);
        mconn_flush(r, c);
        if (c->state == MC_DEAD || (size_t)n < IN_CAP / 2)
            return; /* a short read drained the socket */
    }
}

/* Connects and upgrades every connection. 0 or -1. */
static int open_all(struct run *r, uint64_t deadline) {
    const struct opts *o = r->o;
    struct sockaddr_in dst, src;
    if (bench_loopback_addr("127.0.0.1", o->port, &dst) || bench_loopback_addr(o->src, 0, &src))
        return -1;
    uint32_t next = 0, open = 0, inflight = 0;
    while (open < o->conns) {
        while (next < o->conns && inflight < o->concurrency) {
            struct mconn *c = &r->c[next];
            c->fd = bench_connect_start(&dst, &src);
            if (c->fd < 0) {
                fprintf(stderr, "bench_msg_rate: connect: %s\n", strerror(-c->fd));
                return -1;
            }
            c->state = MC_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = next};
            epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev);
            next++;
            inflight++;
        }
        if (bench_now_ns() > deadline) {
            fprintf(stderr, "bench_msg_rate: timed out opening connections (%u open)\n", open);
            return -1;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(r->ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            uint32_t i = evs[k].data.u32;
            struct mconn *c = &r->c[i];
            if (c->state == MC_CONNECTING) {
                char user[48], req[BENCH_HANDSHAKE_MAX];
                snprintf(user, sizeof(user), "rate-%d-%u", (int)getpid(), i);
                int len = bench_handshake_request(req, sizeof(req), o->port, o->path, user);
                if (bench_connect_result(c->fd) != 0 || len < 0 ||
                    write(c->fd, req, (size_t)len) != len) {
                    fprintf(stderr, "bench_msg_rate: connection %u failed to connect\n", i);
                    return -1;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->state = MC_HANDSHAKE;
            } else if (c->state == MC_HANDSHAKE) {
                ssize_t got = read(c->fd, c->in + c->in_len, BENCH_HANDSHAKE_MAX - c->in_len);
                if (got < 0 && errno == EAGAIN)
                    continue;
                if (got <= 0) {
                    fprintf(stderr, "bench_msg_rate: connection %u closed in handshake\n", i);
                    return -1;
                }
                c->in_len += (uint32_t)got;
                int head = bench_handshake_response((const char *)c->in, c->in_len);
                if (head < 0) {
                    fprintf(stderr, "bench_msg_rate: connection %u: upgrade refused: %.40s\n", i,
                            (const char *)c->in);
                    return -1;
                }
                if (head == 0)
                    continue;
                memmove(c->in, c->in + head, c->in_len - (uint32_t)head);
                c->in_len -= (uint32_t)head;
                c->state = MC_OPEN;
                inflight--;
                open++;
            }
        }
    }
    return 0;
}

/* Sends total messages spread over the connections and waits for every answer. 0 or -1. */
static int run_phase(struct run *r, uint64_t total, uint64_t deadline) {
    const struct opts *o = r->o;
    r->done = 0;
    r->target = 0;
    uint64_t now = bench_now_ns();
    for (uint32_t i = 0; i < o->conns; i++) {
        struct mconn *c = &r->c[i];
        c->quota = (uint32_t)(total / o->conns + (i < total % o->conns));
        c->sent = c->recvd = 0;
        c->ts_head = 0;
        if (c->state != MC_OPEN)
            continue;
        mconn_fill(r, c, now);
        mconn_flush(r, c);
        if (c->state == MC_OPEN)
            r->target += c->quota;
    }
    while (r->done < r->target) {
        if (bench_now_ns() > deadline) {
            fprintf(stderr, "bench_msg_rate: timed out: %llu of %llu answers\n",
                    (unsigned long long)r->done, (unsigned long long)r->target);
            return -1;
        }
        struct epoll_event evs[512];
        int n = epoll_wait(r->ep, evs, 512, 100);
        if (n < 0 && errno != EINTR)
            return -1;
        for (int k = 0; k < n; k++) {
            struct mconn *c = &r->c[evs[k].data.u32];
            if (c->state != MC_OPEN)
                continue;
            if (evs[k].events & EPOLLOUT)
                mconn_flush(r, c);
            if (c->state == MC_OPEN && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                mconn_readable(r, c);
            if (c->state == MC_DEAD)
                r->target -= c->quota - c->recvd;
        }
    }
    return r->errors ? -1 : 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *sorted, uint64_t n, double p) {
    if (!n)
        return 0;
    uint64_t i = (uint64_t)ceil(p * (double)n) - 1;
    if (i >= n)
        i = n - 1;
    return (double)sorted[i] / 1000.0;
}

static double cpu_self_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_msg_rate --port PORT --pid PID [--conns 100] [--window 16]\n"
                    "  [--messages 200000] [--warmup 10000] [--timeout 60] [--src 127.0.0.40]\n"
                    "  [--path /presence] [--label presenced]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.conns = 100,
                       .window = 16,
                       .messages = 200000,
                       .warmup = 10000,
                       .timeout_s = 60,
                       .concurrency = 256,
                       .src = "127.0.0.40",
                       .path = "/presence",
                       .label = "presenced",
                       .payload = "{\"type\":\"ping\"}",
                       .expect = "{\"type\":\"pong\"}"};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--port"))
            o->port = atoi(v);
        else if (!strcmp(a, "--pid"))
            o->pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--conns"))
            o->conns = (uint32_t)atoi(v);
        else if (!strcmp(a, "--window"))
            o->window = (uint32_t)atoi(v);
        else if (!strcmp(a, "--messages"))
            o->messages = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--warmup"))
            o->warmup = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else if (!strcmp(a, "--src"))
            o->src = v;
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else
            return -1;
    }
    if (argc % 2 == 0 || o->port <= 0 || o->pid <= 0 || o->conns == 0 || o->conns > 15000 ||
        o->window == 0 || o->window > 1024 || o->messages < o->conns || o->timeout_s == 0)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    struct opts o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    if (!bench_proc_alive(o.pid)) {
        fprintf(stderr, "bench_msg_rate: no process %d\n", (int)o.pid);
        return 2;
    }
    uint64_t deadline = bench_now_ns() + (uint64_t)o.timeout_s * 1000000000u;
    struct run r = {.o = &o};
    int rc = 1;
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    r.c = calloc(o.conns, sizeof(*r.c));
    r.lat = malloc(sizeof(*r.lat) * o.messages);
    if (r.ep < 0 || !r.c || !r.lat) {
        fprintf(stderr, "bench_msg_rate: out of memory\n");
        goto out_free;
    }
    size_t plen = strlen(o.payload);
    for (uint32_t i = 0; i < o.conns; i++) {
        struct mconn *c = &r.c[i];
        c->fd = -1;
        c->out = malloc((size_t)o.window * FRAME_MAX);
        c->in = malloc(IN_CAP);
        c->ts = calloc(o.window, sizeof(*c->ts));
        if (!c->out || !c->in || !c->ts) {
            fprintf(stderr, "bench_msg_rate: out of memory\n");
            goto out_close;
        }
        /* Each connection's ping, masked with its own key (RFC 6455 section 5.3). */
        uint8_t mask[4] = {(uint8_t)(0x5a ^ i), (uint8_t)(0xc3 ^ (i >> 8)), 0x96, 0x3c};
        size_t hlen = ws_header_encode(c->frame, WS_OP_TEXT, true, plen, mask);
        memcpy(c->frame + hlen, o.payload, plen);
        ws_mask(c->frame + hlen, plen, mask, 0);
        c->frame_len = (uint32_t)(hlen + plen);
    }
    if (open_all(&r, deadline))
        goto out_close;
    if (o.warmup && run_phase(&r, o.warmup, deadline))
        goto out_close;

    long hz = sysconf(_SC_CLK_TCK);
    uint64_t cpu0, cpu1;
    double self0 = cpu_self_s();
    if (bench_proc_cpu_ticks(o.pid, &cpu0))
        goto out_close;
    r.measure = 1;
    uint64_t t0 = bench_now_ns();
    if (run_phase(&r, o.messages, deadline))
        goto out_close;
    uint64_t t1 = bench_now_ns();
    if (bench_proc_cpu_ticks(o.pid, &cpu1))
        goto out_close;
    double self = cpu_self_s() - self0;

    qsort(r.lat, r.nlat, sizeof(*r.lat), cmp_u64);
    double secs = (double)(t1 - t0) / 1e9;
    double srv_cpu = (double)(cpu1 - cpu0) / (double)hz;
    printf("msg_rate label=%s conns=%u window=%u messages=%llu elapsed_s=%.3f msgs_per_s=%.0f "
           "server_cpu_s=%.2f server_cpu_us_per_msg=%.2f client_cpu_s=%.2f p50_us=%.0f "
           "p99_us=%.0f p999_us=%.0f max_us=%.0f errors=%llu\n",
           o.label, o.conns, o.window, (unsigned long long)r.nlat, secs, (double)r.nlat / secs,
           srv_cpu, srv_cpu * 1e6 / (double)r.nlat, self, pct_us(r.lat, r.nlat, 0.50),
           pct_us(r.lat, r.nlat, 0.99), pct_us(r.lat, r.nlat, 0.999), pct_us(r.lat, r.nlat, 1.0),
           (unsigned long long)r.errors);
    rc = 0;

out_close:
    for (uint32_t i = 0; i < o.conns; i++) {
        if (r.c[i].fd >= 0)
            close(r.c[i].fd);
        free(r.c[i].out);
        free(r.c[i].in);
        free(r.c[i].ts);
    }
out_free:
    free(r.c);
    free(r.lat);
    if (r.ep >= 0)
        close(r.ep);
    return rc;
}
