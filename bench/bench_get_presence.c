/* bench_get_presence: the server's time for one get_presence of many users.
 *
 * U user connections announce themselves ({"type":"set_online","device":"web","id":1}, each
 * waits for its ack), so U users exist and are online. Then R requester connections send
 * {"type":"get_presence","user_ids":[all U ids],"id":1}, each keeping W requests outstanding,
 * --requests in all after --warmup. Every answer must be a presence_result holding U presences
 * (counted). Reported: the server's CPU per request (utime + stime of all its threads from
 * /proc/PID/stat, read when the server is idle before and after the measured requests, 10-ms
 * ticks), and the round trip from the write of a request to the read completing its answer
 * (which includes moving the answer, about 150 bytes per user, through loopback and this
 * process counting its entries).
 *
 * One process, one epoll set, one loopback source address. Bounded by --timeout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_ws.h"

struct opts {
    int port;
    pid_t pid;
    uint32_t users, requesters, window, requests, warmup;
    unsigned timeout_s;
    const char *src, *path, *label, *prefix;
    int metrics;
};

struct run {
    const struct opts *o;
    uint32_t acks;        /* user connections announced */
    uint64_t **ts;        /* per requester: send times of outstanding requests, a ring */
    uint32_t *head, *out; /* per requester: ring head, requests outstanding */
    uint64_t *lat;        /* ns, per measured answer */
    size_t nlat;
    uint64_t answered, errors;
    size_t answer_bytes;
    int measure;
    char err[200];
};

static void user_of(void *ctx, uint32_t i, char *user, size_t size) {
    const struct run *r = ctx;
    if (i < r->o->users)
        snprintf(user, size, "%s-%u", r->o->prefix, i);
    else
        snprintf(user, size, "%s-req-%u", r->o->prefix, i - r->o->users);
}

static void fail(struct run *r, const char *what, const uint8_t *p, size_t len) {
    if (r->errors++ == 0)
        snprintf(r->err, sizeof(r->err), "%s: %.*s", what, (int)(len < 150 ? len : 150),
                 (const char *)p);
}

static int on_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                    size_t len, uint64_t now) {
    struct run *r = ctx;
    (void)s;
    (void)opcode;
    if (bws_starts(p, len, "{\"type\":\"welcome\""))
        return 0;
    if (i < r->o->users) {
        if (bws_starts(p, len, "{\"type\":\"ack\",\"id\":1}"))
            r->acks++;
        else
            fail(r, "user connection", p, len);
        return 0;
    }
    uint32_t q = i - r->o->users;
    if (!bws_starts(p, len, "{\"type\":\"presence_result\",\"id\":1,\"presences\":{") ||
        r->out[q] == 0) {
        fail(r, "requester", p, len);
        return 0;
    }
    size_t found = bws_count(p, len, "\"user_id\":");
    if (found != r->o->users) {
        char what[64];
        snprintf(what, sizeof(what), "an answer with %zu presences", found);
        fail(r, what, p, len);
    }
    uint64_t sent = r->ts[q][r->head[q]];
    r->head[q] = (r->head[q] + 1) % r->o->window;
    r->out[q]--;
    r->answered++;
    r->answer_bytes = len;
    if (r->measure && r->nlat < r->o->requests)
        r->lat[r->nlat++] = now - sent;
    return 0;
}

/* Sends total requests over the requesters, W outstanding each, and waits for every answer. */
static int phase(struct run *r, bws_set_t *s, const uint8_t *req, size_t req_len, uint64_t total,
                 uint64_t deadline) {
    const struct opts *o = r->o;
    uint64_t sent = 0;
    r->answered = 0;
    while (r->answered < total) {
        if (s->dead || bench_now_ns() > deadline)
            return -1;
        for (uint32_t q = 0; q < o->requesters; q++) {
            while (sent < total && r->out[q] < o->window) {
                r->ts[q][(r->head[q] + r->out[q]) % o->window] = bench_now_ns();
                r->out[q]++;
                sent++;
                if (bws_send(s, o->users + q, req, req_len))
                    return -1;
            }
        }
        if (bws_poll(s, 100, on_frame, r) < 0)
            return -1;
    }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_get_presence --port PORT --pid PID [--users 1000]\n"
                    "  [--requesters 1] [--window 1] [--requests 2000] [--warmup 200]\n"
                    "  [--src 127.0.0.80] [--prefix gp] [--timeout 120] [--path /presence]\n"
                    "  [--label presenced] [--metrics]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.users = 1000,
                       .requesters = 1,
                       .window = 1,
                       .requests = 2000,
                       .warmup = 200,
                       .timeout_s = 120,
                       .src = "127.0.0.80",
                       .path = "/presence",
                       .label = "presenced",
                       .prefix = "gp"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--metrics")) {
            o->metrics = 1;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        if (!strcmp(a, "--port"))
            o->port = atoi(v);
        else if (!strcmp(a, "--pid"))
            o->pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--users"))
            o->users = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--requesters"))
            o->requesters = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--window"))
            o->window = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--requests"))
            o->requests = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--warmup"))
            o->warmup = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--src"))
            o->src = v;
        else if (!strcmp(a, "--prefix"))
            o->prefix = v;
        else if (!strcmp(a, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else
            return -1;
    }
    if (o->port <= 0 || o->pid <= 0 || o->users == 0 || o->users > 10000 || o->requesters == 0 ||
        o->requesters > 100 || o->window == 0 || o->window > 64 || o->requests == 0 ||
        o->timeout_s == 0 || strlen(o->prefix) > 32)
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
        fprintf(stderr, "bench_get_presence: no process %d\n", (int)o.pid);
        return 2;
    }
    uint64_t deadline = bench_now_ns() + (uint64_t)o.timeout_s * 1000000000u;
    struct run r = {.o = &o};
    bws_set_t s;
    int rc = 1;
    r.ts = calloc(o.requesters, sizeof(*r.ts));
    r.head = calloc(o.requesters, sizeof(*r.head));
    r.out = calloc(o.requesters, sizeof(*r.out));
    r.lat = malloc(sizeof(*r.lat) * o.requests);
    size_t cap = 64 + (size_t)o.users * (strlen(o.prefix) + 16);
    char *text = malloc(cap);
    uint8_t *req = malloc(cap + BWS_FRAME_HDR);
    if (!r.ts || !r.head || !r.out || !r.lat || !text || !req)
        return 2;
    for (uint32_t q = 0; q < o.requesters; q++)
        if (!(r.ts[q] = calloc(o.window, sizeof(uint64_t))))
            return 2;
    if (bws_set_init(&s, o.users + o.requesters, o.port, o.src, o.path, -1) != 0)
        return 2;
    if (bws_set_open(&s, user_of, &r, 128, deadline) != 0) {
        fprintf(stderr, "bench_get_presence: %s\n", s.err);
        goto out;
    }
    /* The users: each announced, so each exists (and is online) for the server. */
    static const char hello[] = "{\"type\":\"set_online\",\"device\":\"web\",\"id\":1}";
    for (uint32_t i = 0; i < o.users; i++) {
        uint8_t f[128];
        bws_send(&s, i, f, bws_frame(f, hello, sizeof(hello) - 1, i));
    }
    while (r.acks < o.users && !s.dead && !r.errors && bench_now_ns() < deadline)
        bws_poll(&s, 100, on_frame, &r);
    if (r.acks < o.users) {
        fprintf(stderr, "bench_get_presence: %u of %u users announced: %s%s\n", r.acks, o.users,
                s.err, r.err);
        goto out;
    }
    size_t len = (size_t)snprintf(text, cap, "{\"type\":\"get_presence\",\"user_ids\":[");
    for (uint32_t i = 0; i < o.users; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s\"%s-%u\"", i ? "," : "", o.prefix, i);
    len += (size_t)snprintf(text + len, cap - len, "],\"id\":1}");
    size_t req_len = bws_frame(req, text, len, 42);

    if (o.warmup && phase(&r, &s, req, req_len, o.warmup, deadline) != 0)
        goto out_err;
    double m0 =
        o.metrics ? bws_metric(o.port, "presenced_messages_in_total{type=\"get_presence\"}") : -1;
    uint64_t cpu0, cpu1;
    int idle = bws_wait_idle(o.pid, 300, 10000, &cpu0) == 0;
    double self0 = bws_self_cpu_s(false);
    r.measure = 1;
    uint64_t t0 = bench_now_ns();
    if (phase(&r, &s, req, req_len, o.requests, deadline) != 0)
        goto out_err;
    uint64_t t1 = bench_now_ns();
    double self = bws_self_cpu_s(false) - self0;
    if (bws_wait_idle(o.pid, 300, 10000, &cpu1) != 0)
        idle = 0;
    double m1 =
        o.metrics ? bws_metric(o.port, "presenced_messages_in_total{type=\"get_presence\"}") : -1;
    bws_sort_u64(r.lat, r.nlat);
    long hz = sysconf(_SC_CLK_TCK);
    double srv = (double)(cpu1 - cpu0) / (double)hz;
    double secs = (double)(t1 - t0) / 1e9;
    char counted[32] = "-";
    if (m0 >= 0 && m1 >= 0)
        snprintf(counted, sizeof(counted), "%.0f", m1 - m0);
    printf("get_presence label=%s users=%u requesters=%u window=%u requests=%zu request_bytes=%zu "
           "answer_bytes=%zu elapsed_s=%.3f req_per_s=%.0f server_cpu_s=%.2f "
           "server_us_per_req=%.0f client_cpu_s=%.2f p50_us=%.0f p99_us=%.0f max_us=%.0f "
           "counted=%s idle=%s errors=%llu\n",
           o.label, o.users, o.requesters, o.window, r.nlat, len, r.answer_bytes, secs,
           (double)r.nlat / secs, srv, srv * 1e6 / (double)r.nlat, self,
           bws_pct(r.lat, r.nlat, 0.50) / 1e3, bws_pct(r.lat, r.nlat, 0.99) / 1e3,
           bws_pct(r.lat, r.nlat, 1.0) / 1e3, counted, idle ? "yes" : "no",
           (unsigned long long)r.errors);
    if (r.errors)
        fprintf(stderr, "bench_get_presence: %s\n", r.err);
    rc = r.errors ? 1 : 0;
    goto out;

out_err:
    fprintf(stderr, "bench_get_presence: run failed: %s%s\n", s.err, r.err);
out:
    bws_set_free(&s);
    return rc;
}
