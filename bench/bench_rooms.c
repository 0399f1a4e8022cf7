/* bench_rooms: rooms under load (issue #4).
 *
 * --mode storm: a join storm. C connections (each its own user), spread over P worker
 * processes bound to their own loopback source addresses, are opened first; then, at one
 * moment, every connection sends {"type":"join","channel":CH,"id":1} as fast as the workers
 * can write. Each connection then reads everything the room sends it: its channel_state (the
 * join's answer: latency from the write of the join to the read of the answer),
 * member_joined while the room announces each change, then channel_delta batches once the
 * room is over --room-announce-max members. Reported: joins per second (C / time until the
 * last channel_state), the time until every member had seen the final count C (in a
 * channel_state, member_joined or channel_delta), the messages and bytes delivered per second
 * over that time, the latency percentiles of the answers, the server's CPU, and connections
 * the server closed (with their close code).
 *
 * --mode cursor: E editors in one room each send a cursor position at --hz, phases spread
 * evenly, for --seconds. The cursor value carries its send time (CLOCK_MONOTONIC ns); every
 * other member's read of the relayed cursor gives one latency sample. Reported: cursor
 * messages sent and delivered per second, latency percentiles, the server's CPU.
 *
 * Server CPU is utime + stime from /proc/PID/stat, read with the server idle before and after.
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
enum { MODE_STORM, MODE_CURSOR };

struct opts {
    int port;
    pid_t pid;
    int mode;
    uint32_t conns, procs;
    unsigned src_base, timeout_s, settle_s;
    double hz, seconds;
    const char *channel, *users, *path, *label;
};

/* --- storm --- */

struct wstat {
    uint64_t states, joined, deltas, other; /* messages received, by type */
    uint64_t bytes;                         /* payload bytes received */
    uint64_t delta_bytes, delta_max;        /* of channel_delta messages: all, the largest */
    uint64_t closed, closed_1008;           /* connections the server closed */
    uint64_t errors;
    uint64_t last_state; /* ns: the worker's last channel_state */
    uint64_t last_final; /* ns: the worker's last connection to see the final count */
    uint32_t complete;   /* connections that have both */
    char err[160];
};

struct shared {
    uint64_t t0;      /* ns: the go */
    uint64_t *lat;    /* per connection: join -> channel_state, ns; 0 none */
    struct wstat *st; /* per worker */
};

struct sw {
    const struct opts *o;
    struct shared *sh;
    struct wstat *st;
    uint32_t first, n;
    uint64_t *sent; /* per connection: ns of the join's write */
    uint8_t *flags; /* per connection: 1 answered, 2 saw the final count */
    uint32_t complete;
};

static void storm_user(void *ctx, uint32_t i, char *user, size_t size) {
    struct sw *w = ctx;
    snprintf(user, size, "%s-%u", w->o->users, w->first + i);
}

static long count_of(const uint8_t *p, size_t len) {
    const uint8_t *c = bws_find(p, len, "\"count\":");
    return c ? strtol((const char *)c + 8, NULL, 10) : -1;
}

static void storm_mark(struct sw *w, uint32_t i, uint8_t flag, uint64_t now) {
    if (w->flags[i] & flag)
        return;
    w->flags[i] |= flag;
    if (flag == 2)
        w->st->last_final = now;
    if (w->flags[i] == 3)
        w->complete++;
}

static int storm_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                       size_t len, uint64_t now) {
    struct sw *w = ctx;
    (void)opcode;
    w->st->bytes += s->frame_len; /* a large delta is streamed: len is what was kept of it */
    long count = count_of(p, len);
    if (bws_starts(p, len, "{\"type\":\"channel_delta\"")) {
        w->st->deltas++;
        w->st->delta_bytes += s->frame_len;
        if (s->frame_len > w->st->delta_max)
            w->st->delta_max = s->frame_len;
    } else if (bws_starts(p, len, "{\"type\":\"member_joined\"")) {
        w->st->joined++;
    } else if (bws_starts(p, len, "{\"type\":\"channel_state\",\"id\":1,")) {
        w->st->states++;
        if (!(w->flags[i] & 1)) {
            w->sh->lat[w->first + i] = now - w->sent[i];
            w->st->last_state = now;
            storm_mark(w, i, 1, now);
        }
    } else if (bws_starts(p, len, "{\"type\":\"welcome\"")) {
        w->st->bytes -= s->frame_len;
        return 0;
    } else {
        w->st->other++;
        if (w->st->errors++ == 0)
            snprintf(w->st->err, sizeof(w->st->err), "connection %u: %.120s", w->first + i,
                     (const char *)p);
        return 0;
    }
    if (count == (long)w->o->conns)
        storm_mark(w, i, 2, now);
    return 0;
}

static int storm_worker(void *ctx, unsigned idx, int cmd, int rep) {
    struct sw *w = ctx;
    const struct opts *o = w->o;
    uint64_t deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    w->st = &w->sh->st[idx];
    w->n = o->conns / o->procs + (idx < o->conns % o->procs);
    w->first =
        idx * (o->conns / o->procs) + (idx < o->conns % o->procs ? idx : o->conns % o->procs);
    w->sent = calloc(w->n, sizeof(*w->sent));
    w->flags = calloc(w->n, 1);
    char ip[32], text[512];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + idx);
    int tlen =
        snprintf(text, sizeof(text), "{\"type\":\"join\",\"channel\":\"%s\",\"id\":1}", o->channel);
    uint8_t frame[512 + BWS_FRAME_HDR];
    size_t flen = bws_frame(frame, text, (size_t)tlen, idx);
    bws_set_t set;
    if (!w->sent || !w->flags || bws_set_init(&set, w->n, o->port, ip, o->path, cmd) != 0) {
        bws_reply(rep, -1);
        return 2;
    }
    /* A delta of thousands of members can pass a megabyte, to every member: keep only what
     * is read of it (its type, and the count at its end). */
    set.stream_over = 256 << 10;
    if (bws_set_open(&set, storm_user, w, 128, deadline) != 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: %.120s", idx, set.err);
        bws_reply(rep, -1);
        return 1;
    }
    /* Let the welcomes arrive before the go. */
    for (int k = 0; k < 5; k++)
        bws_poll(&set, 20, storm_frame, w);
    bws_reply(rep, 0);
    uint32_t op;
    if (bws_cmd_read(cmd, &op) || op != OP_GO)
        return 0;
    for (uint32_t i = 0; i < w->n; i++) {
        w->sent[i] = bench_now_ns();
        bws_send(&set, i, frame, flen);
    }
    /* Until every connection has its answer and the final count, or the connections left
     * cannot get them (closed by the server), or the deadline. */
    while (bench_now_ns() < deadline && w->complete + set.dead < w->n)
        if (bws_poll(&set, 50, storm_frame, w) < 0)
            break;
    w->st->complete = w->complete;
    for (uint32_t i = 0; i < w->n; i++) {
        if (set.c[i].state == BWS_DEAD) {
            w->st->closed++;
            if (set.c[i].close_code == 1008)
                w->st->closed_1008++;
        }
    }
    if (set.dead && !w->st->err[0])
        snprintf(w->st->err, sizeof(w->st->err), "%.150s", set.err);
    bws_reply(rep, 0);
    /* Keep reading (and holding the connections) until the parent has its figures. */
    while (bench_now_ns() < deadline && bws_poll(&set, 200, storm_frame, w) == 0)
        ;
    bws_set_free(&set);
    return 0;
}

static int run_storm(const struct opts *o) {
    uint64_t deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    struct shared sh = {0};
    sh.lat = bws_shared(sizeof(uint64_t) * o->conns);
    sh.st = bws_shared(sizeof(struct wstat) * o->procs);
    if (!sh.lat || !sh.st)
        return 2;
    struct sw w = {.o = o, .sh = &sh};
    bws_fleet_t f;
    int rc = 1;
    if (bws_fleet_start(&f, o->procs, storm_worker, &w, o->timeout_s) != 0)
        return 1;
    if (bws_fleet_collect(&f, NULL, deadline) != 0) {
        for (unsigned i = 0; i < o->procs; i++)
            if (sh.st[i].err[0])
                fprintf(stderr, "bench_rooms: worker %u: %s\n", i, sh.st[i].err);
        goto out;
    }
    double ev0 = bws_metric(o->port, "presenced_room_events_delivered_total");
    double sc0 = bws_metric(o->port, "presenced_slow_consumer_closes_total");
    uint64_t cpu0, cpu1;
    int idle = bws_wait_idle(o->pid, 300, 10000, &cpu0) == 0;
    uint64_t t0 = bench_now_ns();
    if (bws_fleet_send(&f, OP_GO) || bws_fleet_collect(&f, NULL, deadline) != 0)
        goto out;
    uint64_t t1 = bench_now_ns();
    if (bws_wait_idle(o->pid, 300, 20000, &cpu1) != 0)
        idle = 0;
    double ev1 = bws_metric(o->port, "presenced_room_events_delivered_total");
    double sc1 = bws_metric(o->port, "presenced_slow_consumer_closes_total");

    struct wstat sum = {0};
    for (unsigned i = 0; i < o->procs; i++) {
        struct wstat *s = &sh.st[i];
        sum.states += s->states;
        sum.joined += s->joined;
        sum.deltas += s->deltas;
        sum.other += s->other;
        sum.bytes += s->bytes;
        sum.delta_bytes += s->delta_bytes;
        if (s->delta_max > sum.delta_max)
            sum.delta_max = s->delta_max;
        sum.closed += s->closed;
        sum.closed_1008 += s->closed_1008;
        sum.errors += s->errors;
        sum.complete += s->complete;
        if (s->last_state > sum.last_state)
            sum.last_state = s->last_state;
        if (s->last_final > sum.last_final)
            sum.last_final = s->last_final;
        if (s->err[0])
            fprintf(stderr, "bench_rooms: worker %u: %s\n", i, s->err);
    }
    size_t nlat = 0;
    for (uint32_t i = 0; i < o->conns; i++)
        if (sh.lat[i])
            sh.lat[nlat++] = sh.lat[i];
    bws_sort_u64(sh.lat, nlat);
    double joins_s = sum.last_state > t0 ? (double)(sum.last_state - t0) / 1e9 : 0;
    double conv_s = sum.last_final > t0 ? (double)(sum.last_final - t0) / 1e9 : 0;
    uint64_t delivered = sum.states + sum.joined + sum.deltas;
    long hz = sysconf(_SC_CLK_TCK);
    double srv = (double)(cpu1 - cpu0) / (double)hz;
    printf("storm label=%s conns=%u procs=%u answered=%zu complete=%u joins_s=%.3f "
           "joins_per_s=%.0f converged_s=%.3f delivered=%llu states=%llu member_joined=%llu "
           "deltas=%llu delivered_per_s=%.0f mbytes=%.1f mbytes_per_s=%.1f delta_mbytes=%.1f "
           "largest_delta_bytes=%llu min_ms=%.1f "
           "p50_ms=%.1f p99_ms=%.1f max_ms=%.1f server_cpu_s=%.2f server_events=%.0f closed=%llu "
           "closed_1008=%llu slow_closes=%.0f idle=%s errors=%llu run_s=%.1f\n",
           o->label, o->conns, o->procs, nlat, sum.complete, joins_s,
           joins_s > 0 ? (double)nlat / joins_s : 0, conv_s, (unsigned long long)delivered,
           (unsigned long long)sum.states, (unsigned long long)sum.joined,
           (unsigned long long)sum.deltas, conv_s > 0 ? (double)delivered / conv_s : 0,
           (double)sum.bytes / 1e6, conv_s > 0 ? (double)sum.bytes / 1e6 / conv_s : 0,
           (double)sum.delta_bytes / 1e6, (unsigned long long)sum.delta_max,
           nlat ? sh.lat[0] / 1e6 : 0.0, bws_pct(sh.lat, nlat, 0.50) / 1e6,
           bws_pct(sh.lat, nlat, 0.99) / 1e6, bws_pct(sh.lat, nlat, 1.0) / 1e6, srv, ev1 - ev0,
           (unsigned long long)sum.closed, (unsigned long long)sum.closed_1008, sc1 - sc0,
           idle ? "yes" : "no", (unsigned long long)sum.errors, (double)(t1 - t0) / 1e9);
    rc = sum.complete == o->conns && sum.errors == 0 ? 0 : 1;

out:
    bws_fleet_send(&f, OP_QUIT);
    bws_fleet_stop(&f);
    return rc;
}

/* --- cursor --- */

struct cur {
    const struct opts *o;
    uint32_t answered;
    int measure;
    uint64_t *lat;
    size_t nlat, cap;
    uint64_t delivered, other, errors;
    char err[160];
};

static void cursor_user(void *ctx, uint32_t i, char *user, size_t size) {
    const struct cur *c = ctx;
    snprintf(user, size, "%s-%u", c->o->users, i);
}

static int cursor_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                        size_t len, uint64_t now) {
    struct cur *c = ctx;
    (void)s;
    (void)opcode;
    if (bws_starts(p, len, "{\"type\":\"cursor\"")) {
        const uint8_t *t = bws_find(p, len, "\"t\":");
        if (!t) {
            c->errors++;
            return 0;
        }
        uint64_t sent = strtoull((const char *)t + 4, NULL, 10);
        if (c->measure) {
            c->delivered++;
            if (c->nlat < c->cap)
                c->lat[c->nlat++] = now > sent ? now - sent : 0;
        }
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"channel_state\",\"id\":1,")) {
        c->answered++;
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"member_") || bws_starts(p, len, "{\"type\":\"welcome\""))
        return 0;
    if (c->errors++ == 0)
        snprintf(c->err, sizeof(c->err), "editor %u: %.120s", i, (const char *)p);
    return 0;
}

static int run_cursor(const struct opts *o) {
    uint64_t deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    struct cur c = {.o = o};
    uint32_t e = o->conns;
    c.cap = (size_t)(o->hz * o->seconds * 1.1 + 10) * e * (e - 1);
    c.lat = malloc(sizeof(uint64_t) * c.cap);
    bws_set_t s;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base);
    if (!c.lat || bws_set_init(&s, e, o->port, ip, o->path, -1) != 0)
        return 2;
    int rc = 1;
    if (bws_set_open(&s, cursor_user, &c, 64, deadline) != 0) {
        fprintf(stderr, "bench_rooms: %s\n", s.err);
        goto out;
    }
    char text[512];
    uint8_t frame[512 + BWS_FRAME_HDR];
    int tlen = snprintf(text, sizeof(text),
                        "{\"type\":\"join\",\"channel\":\"%s\",\"metadata\":{\"mode\":\"editing\"},"
                        "\"id\":1}",
                        o->channel);
    for (uint32_t i = 0; i < e; i++)
        bws_send(&s, i, frame, bws_frame(frame, text, (size_t)tlen, i));
    while (c.answered < e && !s.dead && bench_now_ns() < deadline)
        bws_poll(&s, 50, cursor_frame, &c);
    if (c.answered < e) {
        fprintf(stderr, "bench_rooms: %u of %u editors joined: %s\n", c.answered, e, s.err);
        goto out;
    }
    /* The join announcements are over before the clock starts. */
    for (uint64_t until = bench_now_ns() + 300000000u; bench_now_ns() < until;)
        bws_poll(&s, 20, cursor_frame, &c);
    double sig0 = bws_metric(o->port, "presenced_room_signals_in_total");
    double out0 = bws_metric(o->port, "presenced_room_signals_delivered_total");
    double co0 = bws_metric(o->port, "presenced_room_signals_coalesced_total");
    uint64_t cpu0, cpu1;
    int idle = bws_wait_idle(o->pid, 300, 10000, &cpu0) == 0;
    double self0 = bws_self_cpu_s(false);
    uint64_t period = (uint64_t)(1e9 / o->hz);
    uint64_t start = bench_now_ns() + 10000000u, end = start + (uint64_t)(o->seconds * 1e9);
    uint64_t *next = calloc(e, sizeof(*next));
    uint64_t sent = 0;
    uint32_t *seq = calloc(e, sizeof(*seq));
    if (!next || !seq)
        goto out;
    for (uint32_t i = 0; i < e; i++)
        next[i] = start + period * i / e; /* phases spread over the period */
    c.measure = 1;
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= end || s.dead)
            break;
        uint64_t soonest = end;
        for (uint32_t i = 0; i < e; i++) {
            if (next[i] <= now) {
                seq[i]++;
                int n = snprintf(text, sizeof(text),
                                 "{\"type\":\"cursor\",\"channel\":\"%s\",\"cursor\":{\"line\":%u,"
                                 "\"ch\":%u,\"t\":%llu}}",
                                 o->channel, seq[i], i, (unsigned long long)bench_now_ns());
                bws_send(&s, i, frame, bws_frame(frame, text, (size_t)n, seq[i] ^ i));
                sent++;
                next[i] += period;
                if (next[i] <= now)
                    next[i] = now + period; /* late: skip, do not burst */
            }
            if (next[i] < soonest)
                soonest = next[i];
        }
        now = bench_now_ns();
        /* Rounded up: a send a fraction of a millisecond late costs nothing (its time is
         * taken at the write), a busy loop would take a core from the server. */
        int wait_ms = soonest > now ? (int)((soonest - now + 999999u) / 1000000u) : 0;
        bws_poll(&s, wait_ms, cursor_frame, &c);
    }
    uint64_t t_end = bench_now_ns();
    /* The last period's coalesced values still come: read them for two periods more. */
    for (uint64_t until = t_end + 2 * period + 50000000u; bench_now_ns() < until;)
        bws_poll(&s, 10, cursor_frame, &c);
    double self = bws_self_cpu_s(false) - self0;
    if (bws_wait_idle(o->pid, 300, 10000, &cpu1) != 0)
        idle = 0;
    double sig1 = bws_metric(o->port, "presenced_room_signals_in_total");
    double out1 = bws_metric(o->port, "presenced_room_signals_delivered_total");
    double co1 = bws_metric(o->port, "presenced_room_signals_coalesced_total");
    bws_sort_u64(c.lat, c.nlat);
    double secs = (double)(t_end - start) / 1e9;
    long hz = sysconf(_SC_CLK_TCK);
    double srv = (double)(cpu1 - cpu0) / (double)hz;
    printf("cursor label=%s editors=%u hz=%.1f seconds=%.1f sent=%llu sent_per_s=%.0f "
           "delivered=%llu delivered_per_s=%.0f relays_per_editor_per_s=%.1f p50_ms=%.2f "
           "p90_ms=%.2f p99_ms=%.2f max_ms=%.2f "
           "server_cpu_s=%.2f server_cpu_pct=%.1f server_us_per_delivery=%.2f "
           "client_cpu_s=%.2f server_signals_in=%.0f server_delivered=%.0f "
           "server_coalesced=%.0f idle=%s errors=%llu\n",
           o->label, e, o->hz, secs, (unsigned long long)sent, (double)sent / secs,
           (unsigned long long)c.delivered, (double)c.delivered / secs,
           (double)c.delivered / ((double)e * (e - 1)) / secs, bws_pct(c.lat, c.nlat, 0.50) / 1e6,
           bws_pct(c.lat, c.nlat, 0.90) / 1e6, bws_pct(c.lat, c.nlat, 0.99) / 1e6,
           bws_pct(c.lat, c.nlat, 1.0) / 1e6, srv, srv * 100 / secs,
           c.delivered ? srv * 1e6 / (double)c.delivered : 0, self, sig1 - sig0, out1 - out0,
           co1 - co0, idle ? "yes" : "no", (unsigned long long)(c.errors + s.dead));
    if (c.errors || s.dead)
        fprintf(stderr, "bench_rooms: %s %s\n", c.err, s.err);
    rc = c.errors || s.dead ? 1 : 0;
    free(next);
    free(seq);

out:
    bws_set_free(&s);
    free(c.lat);
    return rc;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_rooms --port PORT --pid PID --mode storm|cursor\n"
                    "  storm:  [--conns 10000] [--procs 2] [--channel storm] [--src-base 90]\n"
                    "  cursor: [--conns 50] [--hz 30] [--seconds 20] [--channel doc:bench]\n"
                    "  [--users room] [--timeout 180] [--path /presence] [--label presenced]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.mode = -1,
                       .procs = 2,
                       .src_base = 90,
                       .timeout_s = 180,
                       .hz = 30,
                       .seconds = 20,
                       .users = "room",
                       .path = "/presence",
                       .label = "presenced"};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--port"))
            o->port = atoi(v);
        else if (!strcmp(a, "--pid"))
            o->pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--mode"))
            o->mode = !strcmp(v, "storm") ? MODE_STORM : !strcmp(v, "cursor") ? MODE_CURSOR : -2;
        else if (!strcmp(a, "--conns"))
            o->conns = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--procs"))
            o->procs = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--hz"))
            o->hz = atof(v);
        else if (!strcmp(a, "--seconds"))
            o->seconds = atof(v);
        else if (!strcmp(a, "--channel"))
            o->channel = v;
        else if (!strcmp(a, "--users"))
            o->users = v;
        else if (!strcmp(a, "--src-base"))
            o->src_base = (unsigned)atoi(v);
        else if (!strcmp(a, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else
            return -1;
    }
    if (argc % 2 == 0 || o->mode < 0 || o->port <= 0 || o->pid <= 0 || o->timeout_s == 0 ||
        o->src_base < 2 || o->src_base + o->procs > 254)
        return -1;
    if (o->mode == MODE_STORM) {
        if (!o->conns)
            o->conns = 10000;
        if (!o->channel)
            o->channel = "storm";
        if (o->procs == 0 || o->procs > BWS_WORKERS_MAX || o->conns < o->procs ||
            o->conns / o->procs > 19000)
            return -1;
    } else {
        if (!o->conns)
            o->conns = 50;
        if (!o->channel)
            o->channel = "doc:bench";
        if (o->conns < 2 || o->conns > 1000 || o->hz <= 0 || o->hz > 1000 || o->seconds <= 0 ||
            o->seconds > 600)
            return -1;
    }
    return strlen(o->channel) > 200 ? -1 : 0;
}

int main(int argc, char **argv) {
    struct opts o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    if (!bench_proc_alive(o.pid)) {
        fprintf(stderr, "bench_rooms: no process %d\n", (int)o.pid);
        return 2;
    }
    return o.mode == MODE_STORM ? run_storm(&o) : run_cursor(&o);
}
