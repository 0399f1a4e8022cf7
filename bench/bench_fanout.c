/* bench_fanout: how long one presence change takes to reach every watcher, against the floor
 * of doing nothing but one send() per watcher.
 *
 * S subscriber connections, spread over P worker processes (each bound to its own loopback
 * source address), each subscribe to one user (--star); a publisher connection, logged in as
 * that user, changes its status (set_status busy, online, busy, ...) --warmup + --changes
 * times, each change only once every subscriber has received the previous one, plus --gap-ms,
 * so changes never overlap (and the server's latest-wins coalescing never applies). A change's
 * latency at a subscriber = the time the subscriber's read returned the presence_update minus
 * the time just before the publisher's write; all processes run on this machine and read the
 * same CLOCK_MONOTONIC. Reported over the measured changes: the per-recipient percentiles, and
 * per change the time until its last recipient had it ("last").
 *
 * The floor is the same with presenced replaced by a raw relay (forked here): it holds the same
 * number of loopback TCP connections, reads a 64-byte message from the publisher's connection
 * and does one 64-byte send() to each subscriber; other worker processes receive and time it
 * with the same loop. --floor measures the relay alone; --with-floor measures both in one run,
 * their changes interleaved (presenced then relay, relay then presenced, ...), so both see the
 * same load from whatever else runs on the machine; a third line gives the ratios.
 *
 * Server CPU (--pid, and the relay's own) is read before the measured changes and once the
 * process is idle after them. Loopback only; bounded by --timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_ws.h"

#define FLOOR_MSG 64 /* bytes of the relay's message */

enum { OP_QUIT = 1 };

enum { T_WS, T_RAW }; /* targets: presenced, the floor's relay */

struct opts {
    int port;
    pid_t pid;
    uint32_t subs, procs, changes, warmup;
    unsigned src_base, gap_ms, timeout_s, change_timeout_ms;
    const char *path, *label, *star, *users;
    int floor, with_floor;
    bool target[2]; /* which are measured */
};

struct wstat {
    uint64_t received;
    uint64_t errors;
    char err[160];
};

/* Figures shared by the parent and the workers, per target. */
struct shared {
    uint64_t *sent_at; /* per change: ns just before the publisher's write */
    uint64_t *recv_at; /* per change and subscriber: ns of the read that completed it; 0 none */
    uint32_t *got;     /* per change: subscribers that have it */
    uint64_t *loop_ns; /* the relay: per change, its time in its send() loop */
    struct wstat *st;  /* per worker */
};

struct fw {
    const struct opts *o;
    struct shared sh[2];
    struct shared *my; /* this worker's target's */
    struct wstat *st;
    uint32_t first; /* global index of the worker's first subscriber */
    uint32_t n;
    uint16_t *seen;   /* per subscriber: changes received */
    uint32_t *bytes;  /* floor: bytes received per subscriber (after the relay's ack) */
    uint32_t waiting; /* subscribers not yet subscribed (initial_presence) */
    uint8_t *ready;   /* per subscriber */
    int relay_port;   /* floor */
};

static uint32_t total_changes(const struct opts *o) {
    return o->warmup + o->changes;
}

static void record(struct fw *w, uint32_t i, uint64_t now) {
    uint32_t k = w->seen[i]++;
    if (k >= total_changes(w->o)) {
        if (w->st->errors++ == 0)
            snprintf(w->st->err, sizeof(w->st->err), "subscriber %u: more changes than sent",
                     w->first + i);
        return;
    }
    w->my->recv_at[(size_t)k * w->o->subs + w->first + i] = now;
    __atomic_fetch_add(&w->my->got[k], 1, __ATOMIC_RELEASE);
    w->st->received++;
}

/* --- presenced subscribers --- */

static void sub_user(void *ctx, uint32_t i, char *user, size_t size) {
    struct fw *w = ctx;
    snprintf(user, size, "%s-%u", w->o->users, w->first + i);
}

static int sub_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                     size_t len, uint64_t now) {
    struct fw *w = ctx;
    (void)s;
    (void)opcode;
    char head[256];
    snprintf(head, sizeof(head), "{\"type\":\"presence_update\",\"presence\":{\"user_id\":\"%s\"",
             w->o->star);
    if (bws_starts(p, len, head)) {
        /* Changes alternate busy, online, busy, ...: the k-th update must carry the k-th. */
        const char *want = w->seen[i] % 2 == 0 ? "\"status\":\"busy\"" : "\"status\":\"online\"";
        if (!bws_find(p, len, want)) {
            if (w->st->errors++ == 0)
                snprintf(w->st->err, sizeof(w->st->err), "subscriber %u: change %u: %.100s",
                         w->first + i, w->seen[i], (const char *)p);
        }
        record(w, i, now);
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"initial_presence\"") && !w->ready[i]) {
        w->ready[i] = 1;
        w->waiting--;
        return 0;
    }
    if (bws_starts(p, len, "{\"type\":\"welcome\""))
        return 0;
    if (w->st->errors++ == 0)
        snprintf(w->st->err, sizeof(w->st->err), "subscriber %u: unexpected: %.100s", w->first + i,
                 (const char *)p);
    return 0;
}

static int worker_ws(struct fw *w, unsigned idx, int cmd, int rep, uint64_t deadline) {
    const struct opts *o = w->o;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + idx);
    bws_set_t set;
    if (bws_set_init(&set, w->n, o->port, ip, o->path, cmd) != 0 ||
        bws_set_open(&set, sub_user, w, 128, deadline) != 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: %.120s", idx,
                 set.err[0] ? set.err : "cannot set up");
        bws_reply(rep, -1);
        return 1;
    }
    char req[512];
    uint8_t frame[512 + BWS_FRAME_HDR];
    int rlen =
        snprintf(req, sizeof(req), "{\"type\":\"subscribe\",\"user_ids\":[\"%s\"]}", o->star);
    size_t flen = bws_frame(frame, req, (size_t)rlen, idx);
    w->waiting = w->n;
    for (uint32_t i = 0; i < w->n; i++)
        bws_send(&set, i, frame, flen);
    while (w->waiting > 0 && !set.dead && bench_now_ns() < deadline)
        if (bws_poll(&set, 50, sub_frame, w) < 0)
            break;
    if (w->waiting > 0) {
        snprintf(w->st->err, sizeof(w->st->err), "worker %u: subscribing: %.120s", idx,
                 set.dead ? set.err : "timed out");
        bws_reply(rep, -1);
        return 1;
    }
    bws_reply(rep, 0);
    for (;;) {
        int rc = bws_poll(&set, 1000, sub_frame, w);
        if (rc < 0 || bench_now_ns() > deadline)
            break;
        if (set.dead && w->st->errors++ == 0)
            snprintf(w->st->err, sizeof(w->st->err), "%.150s", set.err);
        if (rc == 1)
            break; /* the parent's command: quit */
    }
    bws_set_free(&set);
    return 0;
}

/* --- floor: raw TCP subscribers --- */

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int worker_raw(struct fw *w, unsigned idx, int cmd, int rep, uint64_t deadline) {
    const struct opts *o = w->o;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + idx);
    struct sockaddr_in dst, src;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int *fds = calloc(w->n, sizeof(*fds));
    uint8_t *buf = malloc(64 << 10);
    if (ep < 0 || !fds || !buf || bench_loopback_addr("127.0.0.1", w->relay_port, &dst) ||
        bench_loopback_addr(ip, 0, &src)) {
        bws_reply(rep, -1);
        return 2;
    }
    struct epoll_event cev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, cmd, &cev);
    /* Connect (blocking connects to a listening relay are immediate on loopback) and say
     * who we are: 'S'; the relay answers 'A' once it holds the connection. */
    for (uint32_t i = 0; i < w->n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#ifdef IP_BIND_ADDRESS_NO_PORT
        setsockopt(fds[i], IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&src, sizeof(src)) != 0 ||
            connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)) != 0 ||
            write(fds[i], "S", 1) != 1) {
            snprintf(w->st->err, sizeof(w->st->err), "worker %u: connect %u: %s", idx, i,
                     strerror(errno));
            bws_reply(rep, -1);
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    for (uint32_t i = 0; i < w->n; i++) {
        uint8_t a;
        if (read(fds[i], &a, 1) != 1 || a != 'A') {
            snprintf(w->st->err, sizeof(w->st->err), "worker %u: no ack from the relay", idx);
            bws_reply(rep, -1);
            return 1;
        }
        set_nonblock(fds[i]);
    }
    bws_reply(rep, 0);
    bool quit = false;
    while (!quit && bench_now_ns() < deadline) {
        struct epoll_event evs[512];
        int n = epoll_wait(ep, evs, 512, 1000);
        if (n < 0 && errno != EINTR)
            break;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == UINT64_MAX) {
                quit = true;
                continue;
            }
            uint32_t i = (uint32_t)evs[k].data.u64;
            for (;;) {
                ssize_t r = read(fds[i], buf, 64 << 10);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0) {
                    if (r == 0 || errno != EAGAIN) {
                        if (w->st->errors++ == 0)
                            snprintf(w->st->err, sizeof(w->st->err), "subscriber %u: closed",
                                     w->first + i);
                        epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                    }
                    break;
                }
                uint64_t now = bench_now_ns();
                /* Each FLOOR_MSG bytes completed is one message. */
                uint32_t before = w->bytes[i] / FLOOR_MSG;
                w->bytes[i] += (uint32_t)r;
                for (uint32_t m = before; m < w->bytes[i] / FLOOR_MSG; m++)
                    record(w, i, now);
                if (r < 64 << 10)
                    break;
            }
        }
    }
    for (uint32_t i = 0; i < w->n; i++)
        close(fds[i]);
    free(fds);
    free(buf);
    close(ep);
    return 0;
}

/* Workers 0..P-1 serve the first measured target, P..2P-1 the second; each its own address. */
static int worker(void *ctx, unsigned widx, int cmd, int rep) {
    struct fw *w = ctx;
    const struct opts *o = w->o;
    uint64_t deadline = bench_now_ns() + (uint64_t)o->timeout_s * 1000000000u;
    int target = o->target[T_WS] && widx < o->procs ? T_WS : T_RAW;
    unsigned idx = widx % o->procs;
    w->my = &w->sh[target];
    w->st = &w->my->st[idx];
    w->n = o->subs / o->procs + (idx < o->subs % o->procs);
    w->first = idx * (o->subs / o->procs) + (idx < o->subs % o->procs ? idx : o->subs % o->procs);
    w->seen = calloc(w->n, sizeof(*w->seen));
    w->bytes = calloc(w->n, sizeof(*w->bytes));
    w->ready = calloc(w->n, 1);
    if (!w->seen || !w->bytes || !w->ready) {
        bws_reply(rep, -1);
        return 2;
    }
    return target == T_RAW ? worker_raw(w, widx, cmd, rep, deadline)
                           : worker_ws(w, widx, cmd, rep, deadline);
}

/* --- floor: the relay --- */

/* Accepts subscribers ('S', answered 'A') and one publisher ('P'); for every FLOOR_MSG bytes
 * from the publisher, one send() of FLOOR_MSG bytes to each subscriber. Runs until killed. */
static int relay_main(int port_out, uint32_t subs, uint64_t *loops, uint32_t nloops) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bench_loopback_addr("127.0.0.1", 0, &addr) ||
        bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(lfd, 65535) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0)
        return 2;
    int port = ntohs(addr.sin_port);
    if (write(port_out, &port, sizeof(port)) != (ssize_t)sizeof(port))
        return 2;
    close(port_out);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int *subfd = calloc(subs + 1, sizeof(int));
    uint8_t *role = calloc(1 << 16, 1); /* by fd: 0 unknown, 'S', 'P' */
    uint8_t buf[4096], msg[FLOOR_MSG];
    uint32_t nsub = 0, acc = 0, nmsg = 0;
    if (ep < 0 || !subfd || !role)
        return 2;
    memset(msg, 'm', sizeof(msg));
    struct epoll_event lev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    for (;;) {
        struct epoll_event evs[512];
        int n = epoll_wait(ep, evs, 512, -1);
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == UINT64_MAX) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (fd >= 1 << 16) {
                        close(fd);
                        continue;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            int fd = (int)evs[k].data.u64;
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r <= 0) {
                if (r == 0 || errno != EAGAIN) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                }
                continue;
            }
            size_t off = 0;
            if (role[fd] == 0) {
                role[fd] = buf[0];
                off = 1;
                if (buf[0] == 'S' && nsub < subs) {
                    subfd[nsub++] = fd;
                    if (write(fd, "A", 1) != 1)
                        return 1;
                }
            }
            if (role[fd] != 'P')
                continue;
            acc += (uint32_t)((size_t)r - off);
            while (acc >= FLOOR_MSG) {
                acc -= FLOOR_MSG;
                uint64_t t0 = bench_now_ns();
                for (uint32_t j = 0; j < nsub; j++)
                    send(subfd[j], msg, FLOOR_MSG, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (nmsg < nloops)
                    loops[nmsg] = bench_now_ns() - t0;
                nmsg++;
            }
        }
    }
}

static pid_t relay_start(const struct opts *o, int *port, uint64_t *loops) {
    int p[2];
    if (pipe(p) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(o->timeout_s + 30);
        close(p[0]);
        _exit(relay_main(p[1], o->subs, loops, total_changes(o)));
    }
    close(p[1]);
    ssize_t r = read(p[0], port, sizeof(*port));
    close(p[0]);
    if (r != (ssize_t)sizeof(*port)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* --- The publishers (this process) --- */

struct publisher {
    bws_set_t set; /* presenced */
    int fd;        /* the relay */
    int acked;
};

static void pub_user(void *ctx, uint32_t i, char *user, size_t size) {
    const struct opts *o = ctx;
    (void)i;
    snprintf(user, size, "%s", o->star);
}

static int pub_frame(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode, const uint8_t *p,
                     size_t len, uint64_t now) {
    struct publisher *pub = ctx;
    (void)s;
    (void)i;
    (void)opcode;
    (void)now;
    if (bws_starts(p, len, "{\"type\":\"ack\",\"id\":1}"))
        pub->acked = 1;
    else if (bws_starts(p, len, "{\"type\":\"error\""))
        fprintf(stderr, "bench_fanout: publisher: %.*s\n", (int)(len < 200 ? len : 200), p);
    return 0;
}

/* Opens the publisher of target t from address index addr. 0 or -1. */
static int pub_open(struct publisher *pub, const struct opts *o, int t, unsigned addr,
                    int relay_port, uint64_t deadline) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + addr);
    if (t == T_RAW) {
        struct sockaddr_in dst, src;
        pub->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(pub->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (pub->fd < 0 || bench_loopback_addr("127.0.0.1", relay_port, &dst) ||
            bench_loopback_addr(ip, 0, &src) ||
            bind(pub->fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
            connect(pub->fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 ||
            write(pub->fd, "P", 1) != 1)
            return -1;
        return 0;
    }
    if (bws_set_init(&pub->set, 1, o->port, ip, o->path, -1) != 0 ||
        bws_set_open(&pub->set, pub_user, (void *)o, 1, deadline) != 0)
        return -1;
    uint8_t frame[128];
    static const char hello[] = "{\"type\":\"set_online\",\"device\":\"web\",\"id\":1}";
    bws_send(&pub->set, 0, frame, bws_frame(frame, hello, sizeof(hello) - 1, 77));
    while (!pub->acked && !pub->set.dead && bench_now_ns() < deadline)
        bws_poll(&pub->set, 50, pub_frame, pub);
    return pub->acked ? 0 : -1;
}

/* Makes change k of target t (presenced: busy when k is even, online when odd). 0 or -1. */
static int pub_change(struct publisher *pub, int t, uint32_t k) {
    if (t == T_RAW) {
        uint8_t msg[FLOOR_MSG];
        memset(msg, 'p', sizeof(msg));
        return write(pub->fd, msg, sizeof(msg)) == (ssize_t)sizeof(msg) ? 0 : -1;
    }
    static const char busy[] = "{\"type\":\"set_status\",\"status\":\"busy\"}";
    static const char online[] = "{\"type\":\"set_status\",\"status\":\"online\"}";
    const char *text = k % 2 == 0 ? busy : online;
    uint8_t frame[128];
    size_t len = bws_frame(frame, text, strlen(text), k);
    return bws_send(&pub->set, 0, frame, len);
}

/* Waits until every subscriber of target t has change k (or the change's time limit). */
static int wait_change(struct fw *w, struct publisher *pub, int t, uint32_t k) {
    const struct opts *o = w->o;
    uint32_t *got = &w->sh[t].got[k];
    uint64_t limit = bench_now_ns() + (uint64_t)o->change_timeout_ms * 1000000u;
    while (__atomic_load_n(got, __ATOMIC_ACQUIRE) < o->subs && bench_now_ns() < limit) {
        if (t == T_RAW)
            bench_sleep_ms(1);
        else
            bws_poll(&pub->set, 1, pub_frame, pub);
    }
    uint32_t n = __atomic_load_n(got, __ATOMIC_ACQUIRE);
    if (n < o->subs) {
        fprintf(stderr, "bench_fanout: %s: change %u reached %u of %u subscribers\n",
                t == T_RAW ? "floor" : "presenced", k, n, o->subs);
        return -1;
    }
    return 0;
}

struct figures {
    uint64_t p50, p90, p99, max, last_p50, last_max, loop_p50; /* ns */
    size_t received;
    uint64_t missing, errors;
    double cpu_ms; /* -1 when not measured */
};

/* The figures of target t over changes [warmup, done). */
static int figures_of(struct fw *w, int t, uint32_t done, double cpu_ms, struct figures *fg) {
    const struct opts *o = w->o;
    struct shared *sh = &w->sh[t];
    uint32_t measured = done > o->warmup ? done - o->warmup : 0;
    uint64_t *lat = malloc(sizeof(uint64_t) * ((size_t)measured * o->subs + 1));
    uint64_t *last = malloc(sizeof(uint64_t) * (measured + 1));
    if (!lat || !last) {
        free(lat);
        free(last);
        return -1;
    }
    memset(fg, 0, sizeof(*fg));
    size_t nlat = 0;
    for (uint32_t k = o->warmup; k < done; k++) {
        uint64_t s = sh->sent_at[k], mx = 0;
        for (uint32_t i = 0; i < o->subs; i++) {
            uint64_t r = sh->recv_at[(size_t)k * o->subs + i];
            if (!r) {
                fg->missing++;
                continue;
            }
            uint64_t l = r > s ? r - s : 0;
            lat[nlat++] = l;
            if (l > mx)
                mx = l;
        }
        last[k - o->warmup] = mx;
    }
    bws_sort_u64(lat, nlat);
    bws_sort_u64(last, measured);
    fg->p50 = bws_pct(lat, nlat, 0.50);
    fg->p90 = bws_pct(lat, nlat, 0.90);
    fg->p99 = bws_pct(lat, nlat, 0.99);
    fg->max = bws_pct(lat, nlat, 1.0);
    fg->last_p50 = bws_pct(last, measured, 0.50);
    fg->last_max = bws_pct(last, measured, 1.0);
    if (t == T_RAW) {
        /* The relay's own send loop: wall time from its first send() to the return of its
         * last, per measured change. */
        uint64_t *loops = sh->loop_ns + o->warmup;
        bws_sort_u64(loops, measured);
        fg->loop_p50 = bws_pct(loops, measured, 0.50);
    }
    fg->received = nlat;
    fg->cpu_ms = cpu_ms;
    for (unsigned i = 0; i < o->procs; i++) {
        fg->errors += sh->st[i].errors;
        if (sh->st[i].err[0])
            fprintf(stderr, "bench_fanout: %s worker %u: %s\n", t == T_RAW ? "floor" : "presenced",
                    i, sh->st[i].err);
    }
    free(lat);
    free(last);
    return 0;
}

static void print_figures(const struct opts *o, const char *label, uint32_t measured,
                          const struct figures *fg, bool idle) {
    char loop[32] = "-";
    if (fg->loop_p50)
        snprintf(loop, sizeof(loop), "%.0f", fg->loop_p50 / 1e3);
    printf("fanout label=%s subs=%u procs=%u changes=%u received=%zu missing=%llu "
           "p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f last_p50_us=%.0f last_max_us=%.0f "
           "server_cpu_ms=%.0f server_cpu_ms_per_change=%.1f server_us_per_delivery=%.2f "
           "send_loop_p50_us=%s idle=%s errors=%llu\n",
           label, o->subs, o->procs, measured, fg->received, (unsigned long long)fg->missing,
           fg->p50 / 1e3, fg->p90 / 1e3, fg->p99 / 1e3, fg->max / 1e3, fg->last_p50 / 1e3,
           fg->last_max / 1e3, fg->cpu_ms, measured && fg->cpu_ms >= 0 ? fg->cpu_ms / measured : -1,
           fg->received && fg->cpu_ms >= 0 ? fg->cpu_ms * 1e3 / (double)fg->received : -1, loop,
           idle ? "yes" : "no", (unsigned long long)fg->errors);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_fanout (--port PORT [--pid PID] [--with-floor] | --floor)\n"
                    "  [--subs 10000] [--procs 2] [--changes 20] [--warmup 2] [--gap-ms 100]\n"
                    "  [--change-timeout-ms 10000] [--star star] [--users fan] [--src-base 70]\n"
                    "  [--timeout 180] [--path /presence] [--label presenced]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.subs = 10000,
                       .procs = 2,
                       .changes = 20,
                       .warmup = 2,
                       .src_base = 70,
                       .gap_ms = 100,
                       .timeout_s = 180,
                       .change_timeout_ms = 10000,
                       .path = "/presence",
                       .label = "presenced",
                       .star = "star",
                       .users = "fan"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--floor")) {
            o->floor = 1;
            continue;
        }
        if (!strcmp(a, "--with-floor")) {
            o->with_floor = 1;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        if (!strcmp(a, "--port"))
            o->port = atoi(v);
        else if (!strcmp(a, "--pid"))
            o->pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--subs"))
            o->subs = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--procs"))
            o->procs = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--changes"))
            o->changes = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--warmup"))
            o->warmup = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--gap-ms"))
            o->gap_ms = (unsigned)atoi(v);
        else if (!strcmp(a, "--change-timeout-ms"))
            o->change_timeout_ms = (unsigned)atoi(v);
        else if (!strcmp(a, "--star"))
            o->star = v;
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
    o->target[T_WS] = !o->floor;
    o->target[T_RAW] = o->floor || o->with_floor;
    unsigned workers = o->procs * (o->target[T_WS] + o->target[T_RAW]);
    if ((o->target[T_WS] && o->port <= 0) || (o->floor && o->with_floor) || o->procs == 0 ||
        workers > BWS_WORKERS_MAX || o->subs < o->procs || o->subs / o->procs > 19000 ||
        o->changes == 0 || o->warmup + o->changes > 60000 || o->src_base < 2 ||
        o->src_base + workers + 2 > 255 || o->timeout_s == 0 || strlen(o->star) > 100)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    struct opts o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    if (o.pid > 0 && !bench_proc_alive(o.pid)) {
        fprintf(stderr, "bench_fanout: no process %d\n", (int)o.pid);
        return 2;
    }
    uint64_t deadline = bench_now_ns() + (uint64_t)o.timeout_s * 1000000000u;
    uint32_t total = total_changes(&o);
    unsigned workers = o.procs * (o.target[T_WS] + o.target[T_RAW]);
    struct fw w = {.o = &o};
    for (int t = 0; t < 2; t++) {
        struct shared *sh = &w.sh[t];
        if (!o.target[t])
            continue;
        sh->sent_at = bws_shared(sizeof(uint64_t) * total);
        sh->recv_at = bws_shared(sizeof(uint64_t) * total * (size_t)o.subs);
        sh->got = bws_shared(sizeof(uint32_t) * total);
        sh->loop_ns = bws_shared(sizeof(uint64_t) * total);
        sh->st = bws_shared(sizeof(struct wstat) * o.procs);
        if (!sh->sent_at || !sh->recv_at || !sh->got || !sh->loop_ns || !sh->st)
            return 2;
    }
    pid_t relay = 0;
    if (o.target[T_RAW]) {
        relay = relay_start(&o, &w.relay_port, w.sh[T_RAW].loop_ns);
        if (relay < 0) {
            fprintf(stderr, "bench_fanout: cannot start the relay\n");
            return 1;
        }
    }
    struct publisher pub[2] = {{.fd = -1}, {.fd = -1}};
    bws_fleet_t f = {0};
    int rc = 1;
    for (int t = 0; t < 2; t++) {
        if (o.target[t] &&
            pub_open(&pub[t], &o, t, workers + (unsigned)t, w.relay_port, deadline) != 0) {
            fprintf(stderr, "bench_fanout: cannot open the %s publisher: %s\n",
                    t == T_RAW ? "floor" : "presenced", pub[t].set.err);
            goto out;
        }
    }
    if (bws_fleet_start(&f, workers, worker, &w, o.timeout_s) != 0 ||
        bws_fleet_collect(&f, NULL, deadline) != 0) {
        fprintf(stderr, "bench_fanout: the subscribers did not get ready\n");
        for (int t = 0; t < 2; t++)
            for (unsigned i = 0; o.target[t] && i < o.procs; i++)
                if (w.sh[t].st[i].err[0])
                    fprintf(stderr, "bench_fanout: %s\n", w.sh[t].st[i].err);
        goto out;
    }
    pid_t pids[2] = {o.target[T_WS] ? o.pid : 0, relay};
    uint64_t cpu0[2] = {0}, cpu1[2] = {0};
    bool idle = true;
    uint32_t done = 0;
    for (uint32_t k = 0; k < total; k++) {
        if (k == o.warmup)
            for (int t = 0; t < 2; t++)
                if (pids[t] > 0 && bws_wait_idle(pids[t], 300, 10000, &cpu0[t]) != 0)
                    idle = false;
        /* Both targets in turn, the first alternating: neither always follows the other. */
        for (int n = 0; n < 2; n++) {
            int t = (int)((k + (unsigned)n) % 2);
            if (!o.target[t])
                continue;
            __atomic_store_n(&w.sh[t].sent_at[k], bench_now_ns(), __ATOMIC_RELEASE);
            if (pub_change(&pub[t], t, k) != 0) {
                fprintf(stderr, "bench_fanout: the publisher's write failed\n");
                goto out;
            }
            if (wait_change(&w, &pub[t], t, k) != 0)
                goto report;
            bench_sleep_ms(o.gap_ms);
        }
        done = k + 1;
    }
report:
    for (int t = 0; t < 2; t++)
        if (pids[t] > 0 && bws_wait_idle(pids[t], 300, 10000, &cpu1[t]) != 0)
            idle = false;
    uint32_t measured = done > o.warmup ? done - o.warmup : 0;
    long hz = sysconf(_SC_CLK_TCK);
    struct figures fg[2];
    rc = measured < o.changes ? 1 : 0;
    for (int t = 0; t < 2; t++) {
        if (!o.target[t])
            continue;
        double cpu_ms = pids[t] > 0 ? (double)(cpu1[t] - cpu0[t]) * 1000.0 / (double)hz : -1;
        if (figures_of(&w, t, done, cpu_ms, &fg[t]) != 0)
            goto out;
        print_figures(&o, t == T_RAW ? "floor" : o.label, measured, &fg[t], idle);
        if (fg[t].errors || fg[t].missing)
            rc = 1;
    }
    if (o.target[T_WS] && o.target[T_RAW])
        printf("fanout_ratio label=%s/floor p50=%.2f p90=%.2f p99=%.2f max=%.2f last_p50=%.2f "
               "last_max=%.2f\n",
               o.label, (double)fg[T_WS].p50 / (double)fg[T_RAW].p50,
               (double)fg[T_WS].p90 / (double)fg[T_RAW].p90,
               (double)fg[T_WS].p99 / (double)fg[T_RAW].p99,
               (double)fg[T_WS].max / (double)fg[T_RAW].max,
               (double)fg[T_WS].last_p50 / (double)fg[T_RAW].last_p50,
               (double)fg[T_WS].last_max / (double)fg[T_RAW].last_max);

out:
    if (f.n) {
        bws_fleet_send(&f, OP_QUIT);
        bws_fleet_stop(&f);
    }
    if (o.target[T_WS])
        bws_set_free(&pub[T_WS].set);
    if (pub[T_RAW].fd >= 0)
        close(pub[T_RAW].fd);
    if (relay > 0) {
        kill(relay, SIGKILL);
        waitpid(relay, NULL, 0);
    }
    return rc;
}
