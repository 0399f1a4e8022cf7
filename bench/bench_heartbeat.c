/* bench_heartbeat: the server's CPU time per heartbeat.
 *
 * C upgraded WebSocket connections, spread over P worker processes (each bound to its own
 * loopback source address), each announce themselves once (--hello, {"type":"set_online",...})
 * and then send only heartbeat frames (--frame), masked, --batch of them per write, until a
 * fixed total (--count) has been written. Every connection then sends {"type":"ping"} and waits
 * for the pong: messages on a connection are handled in order, so the last pong proves every
 * heartbeat was processed. The server's CPU (utime + stime of all its threads, from
 * /proc/PID/stat, 10-ms ticks) is read once it is idle before the run and once it is idle
 * again after it (no tick for --quiet-ms); the figure is count / server CPU seconds:
 * heartbeats per second one core can absorb.
 *
 * The closing pings (one per connection) are in the window, so the figure is slightly
 * pessimistic (by C pings of a few microseconds each). A --frame with an "id" is answered with
 * an ack per heartbeat (counted: acks=); any other answer is an error. With --metrics the server's
 * presenced_messages_in_total{type="heartbeat"} must have grown by exactly count.
 * Loopback only; bounded by --timeout.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_ws.h"

enum { OP_GO = 1, OP_QUIT };

struct opts {
    int port;
    pid_t pid;
    uint32_t conns, procs, batch;
    uint64_t count;
    unsigned src_base, timeout_s, quiet_ms;
    const char *path, *label, *frame, *hello, *users;
    int metrics;
};

struct wstat {
    uint64_t sent;   /* heartbeats written */
    uint64_t pongs;  /* closing pongs received */
    uint64_t acks;   /* acks received (heartbeats that carry an id) */
    uint64_t errors; /* messages that were not the expected pong or an ack */
    double cpu_s;    /* the worker's own CPU over the run */
    char err[160];
};

struct hbw {
    const struct opts *o;
    struct wstat *st;
    bws_set_t set;
    unsigned idx;
    uint32_t first; /* global index of this worker's first connection */
    uint64_t *left; /* heartbeats still to write, per connection */
    uint8_t *phase; /* 0 sending, 1 ping sent, 2 pong seen */
    uint32_t waiting;
};

static const char PING[] = "{\"type\":\"ping\"}";
static const char PONG[] = "{\"type\":\"pong\"}";

static void user_of(void *ctx, uint32_t i, char *user, size_t size) {
    struct hbw *w = ctx;
    snprintf(user, size, "%s-%u", w->o->users, w->first + i);
}

static int on_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                    size_t len, uint64_t now) {
    struct hbw *w = ctx;
    (void)s;
    (void)opcode;
    (void)now;
    if (len == sizeof(PONG) - 1 && memcmp(p, PONG, len) == 0 && w->phase[i] == 1) {
        w->phase[i] = 2;
        w->waiting--;
        w->st->pongs++;
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"welcome\""))
        return 0;
    if (bws_starts(p, len, "{\"type\":\"ack\"")) {
        w->st->acks++; /* heartbeats with an id are answered */
        return 0;
    }
    if (w->st->errors++ == 0)
        snprintf(w->st->err, sizeof(w->st->err), "unexpected message: %.*s",
                 (int)(len < 120 ? len : 120), (const char *)p);
    return 0;
}

/* Sends the ping on every connection whose phase is 0 and waits for all pongs. */
static int sync_all(struct hbw *w, const uint8_t *ping, size_t ping_len, uint64_t deadline) {
    for (uint32_t i = 0; i < w->set.n; i++) {
        if (w->phase[i] == 0) {
            w->phase[i] = 1;
            w->waiting++;
            if (bws_send(&w->set, i, ping, ping_len))
                return -1;
        }
    }
    while (w->waiting > 0) {
        if (w->set.dead || bench_now_ns() > deadline)
            return -1;
        if (bws_poll(&w->set, 50, on_frame, w) < 0)
            return -1;
    }
    return 0;
}

static int worker(void *ctx, unsigned idx, int cmd, int rep) {
    struct hbw *w = ctx;
    const struct opts *o = w->o;
    w->idx = idx;
    w->st += idx;
    uint64_t deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    uint32_t n = o->conns / o->procs + (idx < o->conns % o->procs);
    w->first =
        idx * (o->conns / o->procs) + (idx < o->conns % o->procs ? idx : o->conns % o->procs);
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + idx);
    w->left = calloc(n, sizeof(*w->left));
    w->phase = calloc(n, 1);
    size_t flen = strlen(o->frame);
    uint8_t *batch = malloc(o->batch * (flen + BWS_FRAME_HDR));
    uint8_t ping[64], hello[1024 + BWS_FRAME_HDR];
    size_t ping_len = bws_frame(ping, PING, sizeof(PING) - 1, idx);
    size_t hello_len = bws_frame(hello, o->hello, strlen(o->hello), idx);
    /* The batch: the same masked heartbeat back to back (a mask per frame is the client's
     * choice; the server unmasks every frame whatever the key). */
    size_t frame_len = 0;
    for (uint32_t k = 0; batch && k < o->batch; k++)
        frame_len = bws_frame(batch + k * frame_len, o->frame, flen, idx * 7919u + 1);
    if (!w->left || !w->phase || !batch ||
        bws_set_init(&w->set, n, o->port, ip, o->path, cmd) != 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: out of memory", idx);
        bws_reply(rep, -1);
        return 2;
    }
    if (bws_set_open(&w->set, user_of, w, 128, deadline) != 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: %.120s", idx, w->set.err);
        bws_reply(rep, -1);
        return 1;
    }
    for (uint32_t i = 0; i < n; i++)
        bws_send(&w->set, i, hello, hello_len);
    if (sync_all(w, ping, ping_len, deadline) != 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: announcing: %.120s", idx,
                 w->set.dead ? w->set.err : "timed out");
        bws_reply(rep, -1);
        return 1;
    }
    w->st->pongs = w->st->acks = 0; /* the run's only */
    bws_reply(rep, 0);

    uint32_t op;
    if (bws_cmd_read(cmd, &op) || op != OP_GO)
        return 0;
    double cpu0 = bws_self_cpu_s(false);
    /* This worker's share of the total, spread evenly over its connections. */
    uint64_t share = o->count / o->procs + (idx < o->count % o->procs);
    for (uint32_t i = 0; i < n; i++) {
        w->left[i] = share / n + (i < share % n);
        w->phase[i] = 0;
    }
    uint32_t sending = n;
    while (sending > 0) {
        if (w->set.dead || bench_now_ns() > deadline)
            break;
        bool wrote = false;
        for (uint32_t i = 0; i < n; i++) {
            if (w->left[i] == 0 || bws_pending(&w->set, i))
                continue;
            uint64_t k = w->left[i] < o->batch ? w->left[i] : o->batch;
            if (bws_send(&w->set, i, batch, (size_t)k * frame_len))
                break;
            w->left[i] -= k;
            w->st->sent += k;
            wrote = true;
            if (w->left[i] == 0)
                sending--;
        }
        if (bws_poll(&w->set, wrote ? 0 : 20, on_frame, w) < 0)
            break;
    }
    int rc = sending == 0 && !w->set.dead ? sync_all(w, ping, ping_len, deadline) : -1;
    w->st->cpu_s = bws_self_cpu_s(false) - cpu0;
    if (rc && !w->st->err[0])
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: %.120s", idx,
                 w->set.dead ? w->set.err : "timed out");
    bws_reply(rep, rc);
    /* Hold the connections until the parent has read the server's figures. */
    bws_cmd_read(cmd, &op);
    bws_set_free(&w->set);
    bws_reply(rep, 0);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_heartbeat --port PORT --pid PID [--conns 2000] [--procs 2]\n"
                    "  [--count 10000000] [--batch 100] [--frame "
                    "'{\"type\":\"heartbeat\",\"device\":\"web\"}']\n"
                    "  [--hello '{\"type\":\"set_online\",\"device\":\"web\"}'] [--src-base 60]\n"
                    "  [--quiet-ms 300] [--timeout 180] [--path /presence] [--label presenced]\n"
                    "  [--users hb] [--metrics]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.conns = 2000,
                       .procs = 2,
                       .batch = 100,
                       .count = 10000000,
                       .src_base = 60,
                       .timeout_s = 180,
                       .quiet_ms = 300,
                       .path = "/presence",
                       .label = "presenced",
                       .frame = "{\"type\":\"heartbeat\",\"device\":\"web\"}",
                       .hello = "{\"type\":\"set_online\",\"device\":\"web\"}",
                       .users = "hb"};
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
        else if (!strcmp(a, "--conns"))
            o->conns = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--procs"))
            o->procs = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--count"))
            o->count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--batch"))
            o->batch = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--frame"))
            o->frame = v;
        else if (!strcmp(a, "--hello"))
            o->hello = v;
        else if (!strcmp(a, "--src-base"))
            o->src_base = (unsigned)atoi(v);
        else if (!strcmp(a, "--quiet-ms"))
            o->quiet_ms = (unsigned)atoi(v);
        else if (!strcmp(a, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else if (!strcmp(a, "--users"))
            o->users = v;
        else
            return -1;
    }
    if (o->port <= 0 || o->pid <= 0 || o->procs == 0 || o->procs > BWS_WORKERS_MAX ||
        o->conns < o->procs || o->conns / o->procs > 19000 || o->batch == 0 || o->batch > 4096 ||
        o->count < o->conns || strlen(o->frame) > 1024 || strlen(o->hello) > 1024 ||
        o->src_base < 2 || o->src_base + o->procs > 255 || o->timeout_s == 0)
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
        fprintf(stderr, "bench_heartbeat: no process %d\n", (int)o.pid);
        return 2;
    }
    uint64_t deadline = bench_now_ns() + (uint64_t)o.timeout_s * 1000000000u;
    struct wstat *st = bws_shared(sizeof(*st) * o.procs);
    if (!st)
        return 2;
    struct hbw w = {.o = &o, .st = st};
    bws_fleet_t f;
    int rc = 1;
    const char *metric = "presenced_messages_in_total{type=\"heartbeat\"}";
    if (bws_fleet_start(&f, o.procs, worker, &w, o.timeout_s) != 0) {
        fprintf(stderr, "bench_heartbeat: cannot start the workers\n");
        return 1;
    }
    if (bws_fleet_collect(&f, NULL, deadline) != 0)
        goto out_stop;
    double m0 = o.metrics ? bws_metric(o.port, metric) : -1;
    uint64_t cpu0, cpu1;
    int idle0 = bws_wait_idle(o.pid, o.quiet_ms, 10000, &cpu0);
    if (idle0 < 0)
        goto out_stop;
    uint64_t t0 = bench_now_ns();
    if (bws_fleet_send(&f, OP_GO) || bws_fleet_collect(&f, NULL, deadline) != 0)
        goto out_stop;
    uint64_t t1 = bench_now_ns();
    int idle1 = bws_wait_idle(o.pid, o.quiet_ms, 20000, &cpu1);
    if (idle1 < 0)
        goto out_stop;
    double m1 = o.metrics ? bws_metric(o.port, metric) : -1;

    uint64_t sent = 0, pongs = 0, acks = 0, errors = 0;
    double client_cpu = 0;
    for (unsigned i = 0; i < o.procs; i++) {
        sent += st[i].sent;
        pongs += st[i].pongs;
        acks += st[i].acks;
        errors += st[i].errors;
        client_cpu += st[i].cpu_s;
    }
    long hz = sysconf(_SC_CLK_TCK);
    double srv = (double)(cpu1 - cpu0) / (double)hz;
    double secs = (double)(t1 - t0) / 1e9;
    char counted[32] = "-";
    if (o.metrics && m0 >= 0 && m1 >= 0)
        snprintf(counted, sizeof(counted), "%.0f", m1 - m0);
    printf("heartbeat label=%s conns=%u procs=%u count=%llu batch=%u frame_bytes=%zu "
           "elapsed_s=%.3f wall_per_s=%.0f server_cpu_s=%.2f per_core_per_s=%.0f "
           "server_ns_per_msg=%.0f client_cpu_s=%.2f counted=%s pongs=%llu acks=%llu errors=%llu "
           "idle=%s frame=%s\n",
           o.label, o.conns, o.procs, (unsigned long long)sent, o.batch, strlen(o.frame), secs,
           (double)sent / secs, srv, srv > 0 ? (double)sent / srv : 0.0, srv * 1e9 / (double)sent,
           client_cpu, counted, (unsigned long long)pongs, (unsigned long long)acks,
           (unsigned long long)errors, idle0 == 0 && idle1 == 0 ? "yes" : "no", o.frame);
    rc = errors || sent != o.count || (o.metrics && m1 - m0 != (double)o.count) ? 1 : 0;
    if (o.metrics && m1 - m0 != (double)o.count)
        fprintf(stderr, "bench_heartbeat: the server counted %s heartbeats, %llu were sent\n",
                counted, (unsigned long long)sent);
    bws_fleet_send(&f, OP_QUIT);
    bws_fleet_collect(&f, NULL, bench_now_ns() + 10000000000u);

out_stop:
    if (rc)
        for (unsigned i = 0; i < o.procs; i++)
            if (st[i].err[0])
                fprintf(stderr, "bench_heartbeat: %s\n", st[i].err);
    bws_fleet_stop(&f);
    return rc;
}
