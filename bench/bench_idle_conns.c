/* bench_idle_conns: the server memory one idle, upgraded WebSocket costs.
 *
 * Opens idle WebSocket connections to a running server in steps (1k, 5k, 10k, 19k by default)
 * and, after each step has settled, reads the server's memory from /proc: VmRSS, RssAnon, the
 * Rss of its [heap] mapping and, with --malloc-stats, the bytes malloc reports in use (by
 * calling malloc_stats() in the server through gdb and reading what it prints on the server's
 * stderr). Each figure is reported as (after - baseline) / connections, and as the slope
 * between steps, which must stay flat if the cost is linear.
 *
 * The client side is spread over worker processes (each under its own open-file limit), each
 * bound to its own loopback source address (127.0.0.2, .3, ...). The parent only steers the
 * workers and measures. Everything is bounded in time (--timeout); workers die with the
 * parent (PR_SET_PDEATHSIG) and close every connection at the end.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "ws/frame.h"

#define MAX_STEPS   16
#define MAX_WORKERS 16
#define CTL_TOKEN   UINT64_MAX

enum ctl_op { OP_TARGET = 1, OP_STATUS, OP_QUIT };

struct ctl_msg {
    uint32_t op;
    uint32_t target; /* OP_TARGET: connections this worker must hold */
};

struct ctl_rep {
    uint32_t open;     /* upgraded and idle */
    uint32_t inflight; /* connecting or handshaking */
    uint32_t failed;   /* refused, reset or not upgraded */
    uint32_t dropped;  /* upgraded, then closed or written to by the server */
    int32_t err;       /* 0, or why the target cannot be reached (negative errno) */
};

struct opts {
    int port;
    pid_t pid;
    uint32_t steps[MAX_STEPS];
    int nsteps;
    uint32_t procs;    /* client processes */
    uint32_t per_proc; /* connections per process at the last step (derived) */
    unsigned src_base;
    unsigned concurrency;
    unsigned settle_ms;
    unsigned timeout_s;
    const char *path;
    const char *label;
    const char *malloc_log; /* the server's stderr log, for --malloc-stats */
    const char *hello;      /* a text message each connection sends once upgraded, or NULL */
    const char *users;      /* user id prefix; ids are PREFIX-WORKER-N (default idle-PID) */
    int metrics;
};

/* --- Worker --- */

enum iconn_state { IC_FREE, IC_CONNECTING, IC_HANDSHAKE, IC_OPEN };

struct iconn {
    int fd;
    uint8_t state;
    uint8_t hlen;    /* bytes in hdr */
    uint16_t len;    /* bytes in buf */
    uint32_t skip;   /* payload bytes of the current server frame still to pass over */
    uint8_t hdr[10]; /* a server frame header being read */
    char *buf;       /* the response head, only while handshaking */
};

struct worker {
    const struct opts *o;
    unsigned idx;
    int ep, ctl;
    struct sockaddr_in dst, src;
    struct iconn *conns;
    uint32_t cap, next; /* slots; slots used so far (a failed slot is not reused) */
    uint32_t target;
    struct ctl_rep st;
    int reply_due; /* a TARGET is waiting for its answer */
};

static void iconn_close(struct iconn *c) {
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    free(c->buf);
    c->buf = NULL;
    c->fd = -1;
    c->state = IC_FREE;
}

static void iconn_fail(struct worker *w, struct iconn *c) {
    if (c->state == IC_OPEN) {
        w->st.open--;
        w->st.dropped++;
    } else {
        w->st.inflight--;
        w->st.failed++;
    }
    iconn_close(c);
}

static int iconn_start(struct worker *w) {
    uint32_t i = w->next++;
    struct iconn *c = &w->conns[i];
    int fd = bench_connect_start(&w->dst, &w->src);
    if (fd < 0)
        return fd;
    c->fd = fd;
    c->state = IC_CONNECTING;
    c->len = 0;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = i};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int e = -errno;
        iconn_close(c);
        return e;
    }
    w->st.inflight++;
    return 0;
}

/* Follows the server's frames in p[0..n) (a welcome message is allowed on an idle
 * connection). Returns true when a close frame starts. */
static bool iconn_frames(struct iconn *c, const uint8_t *p, size_t n) {
    while (n > 0) {
        if (c->skip) {
            size_t k = c->skip < n ? c->skip : n;
            c->skip -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        c->hdr[c->hlen++] = *p++;
        n--;
        if (c->hlen < 2)
            continue;
        uint8_t len7 = c->hdr[1] & 0x7f;
        unsigned need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
        if (c->hlen < need)
            continue;
        if ((c->hdr[0] & 0x0f) == 0x8)
            return true;
        uint64_t len = len7;
        if (len7 >= 126) {
            len = 0;
            for (unsigned k = 2; k < need; k++)
                len = len << 8 | c->hdr[k];
        }
        c->skip = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
        c->hlen = 0;
    }
    return false;
}

/* Sends --hello as a masked text frame (the answer, if any, is passed over like a welcome). */
static int iconn_send_hello(const struct worker *w, const struct iconn *c, uint32_t i) {
    uint8_t frame[WS_CLIENT_HDR_MAX + 1024];
    size_t len = strlen(w->o->hello);
    uint8_t mask[4] = {(uint8_t)i, (uint8_t)(i >> 8), (uint8_t)w->idx, 0xa5};
    size_t hlen = ws_header_encode(frame, WS_OP_TEXT, true, len, mask);
    memcpy(frame + hlen, w->o->hello, len);
    ws_mask(frame + hlen, len, mask, 0);
    return write(c->fd, frame, hlen + len) == (ssize_t)(hlen + len) ? 0 : -1;
}

static void iconn_event(struct worker *w, uint32_t i, uint32_t events) {
    struct iconn *c = &w->conns[i];
    if (c->state == IC_CONNECTING) {
        if (bench_connect_result(c->fd) != 0) {
            iconn_fail(w, c);
            return;
        }
        char user[48], req[BENCH_HANDSHAKE_MAX];
        if (w->o->users)
            snprintf(user, sizeof(user), "%.24s-%u-%u", w->o->users, w->idx, i);
        else
            snprintf(user, sizeof(user), "idle-%d-%u-%u", (int)getppid(), w->idx, i);
        int n = bench_handshake_request(req, sizeof(req), w->o->port, w->o->path, user);
        c->buf = malloc(BENCH_HANDSHAKE_MAX);
        /* A fresh socket's send buffer takes a 200-byte request whole. */
        if (n < 0 || !c->buf || write(c->fd, req, (size_t)n) != n) {
            iconn_fail(w, c);
            return;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = i};
        epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->state = IC_HANDSHAKE;
        return;
    }
    if (c->state == IC_HANDSHAKE) {
        ssize_t r = read(c->fd, c->buf + c->len, BENCH_HANDSHAKE_MAX - c->len);
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            iconn_fail(w, c);
            return;
        }
        c->len += (uint16_t)r;
        int head = bench_handshake_response(c->buf, c->len);
        if (head < 0) {
            iconn_fail(w, c);
            return;
        }
        if (head == 0)
            return;
        bool closing = iconn_frames(c, (const uint8_t *)c->buf + head, c->len - (size_t)head);
        free(c->buf);
        c->buf = NULL;
        c->state = IC_OPEN;
        w->st.inflight--;
        w->st.open++;
        if (closing || (w->o->hello && iconn_send_hello(w, c, i) != 0))
            iconn_fail(w, c);
        return;
    }
    if (c->state == IC_OPEN) {
        /* An idle connection may hear a welcome; a close frame or EOF is a drop. */
        (void)events;
        uint8_t tmp[512];
        ssize_t r = read(c->fd, tmp, sizeof(tmp));
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0 || iconn_frames(c, tmp, (size_t)r))
            iconn_fail(w, c);
    }
}

static void worker_reply(struct worker *w, int32_t err) {
    struct ctl_rep rep = w->st;
    rep.err = err;
    if (write(w->ctl, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
        _exit(4);
}

static int worker_main(const struct opts *o, unsigned idx, int ctl) {
    struct worker wk = {.o = o, .idx = idx, .ctl = ctl};
    struct worker *w = &wk;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        return 3;
    alarm(o->timeout_s + 30); /* a last bound should the parent hang */
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%u", o->src_base + idx);
    if (bench_loopback_addr("127.0.0.1", o->port, &w->dst) || bench_loopback_addr(ip, 0, &w->src))
        return 2;
    /* Slots for the connections plus as many failures again, each slot used once. */
    w->cap = o->per_proc * 2;
    w->conns = calloc(w->cap, sizeof(*w->conns));
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!w->conns || w->ep < 0)
        return 2;
    for (uint32_t i = 0; i < w->cap; i++)
        w->conns[i].fd = -1;
    struct epoll_event cev = {.events = EPOLLIN, .data.u64 = CTL_TOKEN};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, ctl, &cev);

    for (;;) {
        int32_t err = 0;
        while (w->st.open + w->st.inflight < w->target && w->st.inflight < o->concurrency) {
            if (w->next >= w->cap || w->st.failed > o->per_proc) {
                err = -ENOSPC;
                break;
            }
            int rc = iconn_start(w);
            if (rc < 0) {
                w->st.failed++;
                if (rc == -EMFILE || rc == -ENFILE || rc == -EADDRNOTAVAIL) {
                    err = rc;
                    break;
                }
            }
        }
        if (w->reply_due && (w->st.open >= w->target || (err && w->st.inflight == 0))) {
            worker_reply(w, w->st.open >= w->target ? 0 : err);
            w->reply_due = 0;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(w->ep, evs, 256, 50);
        if (n < 0 && errno != EINTR)
            return 2;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 != CTL_TOKEN) {
                iconn_event(w, (uint32_t)evs[k].data.u64, evs[k].events);
                continue;
            }
            struct ctl_msg m;
            ssize_t r = read(ctl, &m, sizeof(m));
            if (r != (ssize_t)sizeof(m) || m.op == OP_QUIT) {
                for (uint32_t i = 0; i < w->next; i++)
                    if (w->conns[i].state != IC_FREE)
                        iconn_close(&w->conns[i]);
                w->st.open = w->st.inflight = 0;
                if (r == (ssize_t)sizeof(m))
                    worker_reply(w, 0);
                return 0;
            }
            if (m.op == OP_TARGET) {
                w->target = m.target;
                w->reply_due = 1;
            } else {
                worker_reply(w, 0);
            }
        }
    }
}

/* --- Parent --- */

struct fleet {
    int n;
    pid_t pids[MAX_WORKERS];
    int ctl[MAX_WORKERS];
    struct ctl_rep rep[MAX_WORKERS];
};

static uint64_t g_deadline; /* ns */

static void fleet_kill(struct fleet *f) {
    for (int i = 0; i < f->n; i++)
        if (f->pids[i] > 0) {
            kill(f->pids[i], SIGKILL);
            waitpid(f->pids[i], NULL, 0);
            f->pids[i] = 0;
        }
}

/* Sends op to every worker and collects every answer before the deadline. 0 or -1. */
static int fleet_ask(struct fleet *f, uint32_t op, const uint32_t *targets) {
    for (int i = 0; i < f->n; i++) {
        struct ctl_msg m = {.op = op, .target = targets ? targets[i] : 0};
        if (write(f->ctl[i], &m, sizeof(m)) != (ssize_t)sizeof(m))
            return -1;
    }
    int left = f->n;
    int got[MAX_WORKERS] = {0};
    while (left > 0) {
        uint64_t now = bench_now_ns();
        if (now >= g_deadline) {
            fprintf(stderr, "bench_idle_conns: timed out waiting for the workers\n");
            return -1;
        }
        struct pollfd pfd[MAX_WORKERS];
        for (int i = 0; i < f->n; i++)
            pfd[i] = (struct pollfd){.fd = got[i] ? -1 : f->ctl[i], .events = POLLIN};
        int pr = poll(pfd, (nfds_t)f->n, 200);
        if (pr < 0 && errno != EINTR)
            return -1;
        for (int i = 0; i < f->n; i++) {
            if (got[i] || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (read(f->ctl[i], &f->rep[i], sizeof(f->rep[i])) != (ssize_t)sizeof(f->rep[i])) {
                fprintf(stderr, "bench_idle_conns: worker %d died\n", i);
                return -1;
            }
            got[i] = 1;
            left--;
        }
    }
    return 0;
}

static void fleet_sum(const struct fleet *f, struct ctl_rep *sum) {
    memset(sum, 0, sizeof(*sum));
    for (int i = 0; i < f->n; i++) {
        sum->open += f->rep[i].open;
        sum->inflight += f->rep[i].inflight;
        sum->failed += f->rep[i].failed;
        sum->dropped += f->rep[i].dropped;
        if (f->rep[i].err && !sum->err)
            sum->err = f->rep[i].err;
    }
}

struct mem {
    long rss_kb, anon_kb, heap_kb;
    long long malloc_inuse; /* bytes, -1 when not measured */
};

/* Reads the "in use bytes" of the last "Total" block malloc_stats() wrote to the server's log;
 * *blocks is set to the number of such blocks. */
static long long read_malloc_log(const char *log, int *blocks) {
    *blocks = 0;
    FILE *f = fopen(log, "re");
    if (!f)
        return -1;
    long long inuse = -1;
    int in_total = 0;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "Total (incl. mmap):", 19) == 0) {
            in_total = 1;
        } else if (in_total && strncmp(line, "in use bytes", 12) == 0) {
            const char *eq = strchr(line, '=');
            if (eq)
                inuse = strtoll(eq + 1, NULL, 10);
            in_total = 0;
            (*blocks)++;
        }
    }
    fclose(f);
    return inuse;
}

/* Calls malloc_stats() inside the server (gdb attaches for about half a second) and reads the
 * "in use bytes" of its "Total" block from the tail of the server's log. gdb's exit status is
 * not trusted (it can fail to restore some register state on detach after a good call): the
 * new block in the log is the proof.
 * A signal reaching the server during the call must neither stop gdb (which would then detach
 * leaving the server inside the call, returning into gdb's dummy frame: SIGSEGV) nor be lost:
 * gdb passes signals through without stopping, and unwinds the call should one stop it. */
static long long malloc_inuse(const struct opts *o) {
    if (!o->malloc_log)
        return -1;
    int before, after;
    read_malloc_log(o->malloc_log, &before);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "timeout 20 gdb -q -nx -batch -p %d -ex 'set unwindonsignal on' "
             "-ex 'handle SIGTERM SIGINT SIGHUP SIGQUIT SIGPIPE SIGUSR1 SIGUSR2 SIGALRM SIGCHLD "
             "nostop noprint pass' -ex 'call (void)malloc_stats()' >/dev/null 2>&1",
             (int)o->pid);
    if (system(cmd) == -1)
        return -1;
    for (int i = 0; i < 20; i++) {
        long long inuse = read_malloc_log(o->malloc_log, &after);
        if (after > before)
            return inuse;
        bench_sleep_ms(50);
    }
    return -1;
}

static int measure(const struct opts *o, struct mem *m) {
    if (bench_proc_status_kb(o->pid, "VmRSS", &m->rss_kb) ||
        bench_proc_status_kb(o->pid, "RssAnon", &m->anon_kb))
        return -1;
    if (bench_proc_heap_kb(o->pid, &m->heap_kb))
        m->heap_kb = 0;
    m->malloc_inuse = -1;
    return 0;
}

/* Waits settle_ms, then until VmRSS stops moving (two equal readings 250 ms apart, at most
 * 20 readings). */
static int measure_settled(const struct opts *o, struct mem *m) {
    bench_sleep_ms(o->settle_ms);
    if (measure(o, m))
        return -1;
    for (int i = 0; i < 20 && bench_now_ns() < g_deadline; i++) {
        bench_sleep_ms(250);
        struct mem again;
        if (measure(o, &again))
            return -1;
        int same = again.rss_kb == m->rss_kb;
        *m = again;
        if (same)
            break;
    }
    m->malloc_inuse = malloc_inuse(o);
    return 0;
}

static double server_ws_open(const struct opts *o) {
    if (!o->metrics)
        return -1;
    static char text[64 * 1024];
    if (bench_http_get(o->port, "/metrics", text, sizeof(text), 3000) != 200)
        return -1;
    return bench_metric(text, "presenced_websockets_open");
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_idle_conns --port PORT --pid PID [--steps 1000,5000,10000,19000]\n"
            "  [--procs 4] [--src-base 2] [--concurrency 256] [--settle-ms 2000]\n"
            "  [--timeout 240] [--path /presence] [--label presenced] [--metrics]\n"
            "  [--malloc-stats SERVER_STDERR_LOG] [--hello TEXT_MESSAGE] [--users PREFIX]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.procs = 4,
                       .src_base = 2,
                       .concurrency = 256,
                       .settle_ms = 2000,
                       .timeout_s = 240,
                       .path = "/presence",
                       .label = "presenced"};
    o->nsteps = bench_parse_list("1000,5000,10000,19000", o->steps, MAX_STEPS);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--metrics")) {
            o->metrics = 1;
            continue;
        }
        if (!v)
            return -1;
        i++;
        if (!strcmp(a, "--port"))
            o->port = atoi(v);
        else if (!strcmp(a, "--pid"))
            o->pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--steps"))
            o->nsteps = bench_parse_list(v, o->steps, MAX_STEPS);
        else if (!strcmp(a, "--procs"))
            o->procs = (uint32_t)atoi(v);
        else if (!strcmp(a, "--src-base"))
            o->src_base = (unsigned)atoi(v);
        else if (!strcmp(a, "--concurrency"))
            o->concurrency = (unsigned)atoi(v);
        else if (!strcmp(a, "--settle-ms"))
            o->settle_ms = (unsigned)atoi(v);
        else if (!strcmp(a, "--timeout"))
            o->timeout_s = (unsigned)atoi(v);
        else if (!strcmp(a, "--path"))
            o->path = v;
        else if (!strcmp(a, "--label"))
            o->label = v;
        else if (!strcmp(a, "--malloc-stats"))
            o->malloc_log = v;
        else if (!strcmp(a, "--hello"))
            o->hello = v;
        else if (!strcmp(a, "--users"))
            o->users = v;
        else
            return -1;
    }
    if ((o->hello && strlen(o->hello) > 1024) || o->port <= 0 || o->port > 65535 || o->pid <= 0 ||
        o->nsteps <= 0 || o->procs == 0 || o->procs > MAX_WORKERS || o->concurrency == 0 ||
        o->timeout_s == 0 || o->src_base < 2)
        return -1;
    for (int i = 1; i < o->nsteps; i++)
        if (o->steps[i] <= o->steps[i - 1])
            return -1;
    uint32_t max_n = o->steps[o->nsteps - 1];
    o->per_proc = (max_n + o->procs - 1) / o->procs;
    return o->per_proc ? 0 : -1;
}

static double per_conn(long long after, long long before, uint32_t n) {
    return n ? (double)(after - before) / n : 0;
}

int main(int argc, char **argv) {
    struct opts o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    struct fleet f = {.n = (int)o.procs};
    if (o.src_base + (unsigned)f.n > 255) {
        fprintf(stderr, "bench_idle_conns: source addresses past 127.0.0.255\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < o.per_proc + 32) {
        fprintf(stderr,
                "bench_idle_conns: %u connections per process is over the open-file limit %llu: "
                "raise --procs\n",
                o.per_proc, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    if (!bench_proc_alive(o.pid)) {
        fprintf(stderr, "bench_idle_conns: no process %d\n", (int)o.pid);
        return 2;
    }
    g_deadline = bench_now_ns() + (uint64_t)o.timeout_s * 1000000000u;

    for (int i = 0; i < f.n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            perror("socketpair");
            fleet_kill(&f);
            return 1;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            fleet_kill(&f);
            return 1;
        }
        if (pid == 0) {
            close(sv[0]);
            for (int j = 0; j < i; j++)
                close(f.ctl[j]);
            _exit(worker_main(&o, (unsigned)i, sv[1]));
        }
        close(sv[1]);
        f.pids[i] = pid;
        f.ctl[i] = sv[0];
    }

    int rc = 1;
    struct mem base;
    if (measure(&o, &base)) {
        fprintf(stderr, "bench_idle_conns: cannot read /proc/%d\n", (int)o.pid);
        goto out_kill;
    }
    base.malloc_inuse = malloc_inuse(&o);
    printf("# idle WebSocket connections to %s (pid %d, 127.0.0.1:%d%s): %d client processes "
           "on 127.0.0.%u-127.0.0.%u, one user id per connection\n",
           o.label, (int)o.pid, o.port, o.path, f.n, o.src_base, o.src_base + (unsigned)f.n - 1);
    if (o.hello)
        printf("# each connection sent once, after the upgrade: %s\n", o.hello);
    printf("# baseline before this run's connections: VmRSS %ld KiB, RssAnon %ld KiB, "
           "[heap] %ld KiB",
           base.rss_kb, base.anon_kb, base.heap_kb);
    if (base.malloc_inuse >= 0)
        printf(", malloc in use %lld B", base.malloc_inuse);
    printf("\n# per connection = (after - baseline) / conns; slope = between this step and the "
           "previous one\n");
    printf("%-9s %-10s %-12s %-13s %-13s %-13s %-13s %-11s %-7s\n", "conns", "VmRSS_KiB",
           "RSS_B/conn", "Anon_B/conn", "heap_B/conn", "malloc_B/conn", "slope_B/conn",
           "server_open", "dropped");
    fflush(stdout);

    struct mem prev = base;
    uint32_t prev_n = 0;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int points = 0;
    for (int s = 0; s < o.nsteps; s++) {
        uint32_t n = o.steps[s];
        uint32_t targets[MAX_WORKERS];
        for (int i = 0; i < f.n; i++)
            targets[i] = n / (uint32_t)f.n + ((uint32_t)i < n % (uint32_t)f.n);
        if (fleet_ask(&f, OP_TARGET, targets))
            goto out_kill;
        struct ctl_rep sum;
        fleet_sum(&f, &sum);
        if (!bench_proc_alive(o.pid)) {
            printf("# server process %d is gone at step %u\n", (int)o.pid, n);
            goto out_kill;
        }
        if (sum.open < n)
            printf("# step %u: only %u connections upgraded (%u failed, first error %s)\n", n,
                   sum.open, sum.failed, strerror(-sum.err));
        struct mem m;
        if (measure_settled(&o, &m))
            goto out_kill;
        if (fleet_ask(&f, OP_STATUS, NULL))
            goto out_kill;
        fleet_sum(&f, &sum);
        double open_srv = server_ws_open(&o);
        uint32_t held = sum.open;
        char malloc_col[32] = "-", open_col[16] = "-";
        if (m.malloc_inuse >= 0 && base.malloc_inuse >= 0)
            snprintf(malloc_col, sizeof(malloc_col), "%.0f",
                     per_conn(m.malloc_inuse, base.malloc_inuse, held));
        if (open_srv >= 0)
            snprintf(open_col, sizeof(open_col), "%.0f", open_srv);
        printf("%-9u %-10ld %-12.0f %-13.0f %-13.0f %-13s %-13.0f %-11s %-7u\n", held, m.rss_kb,
               per_conn(m.rss_kb * 1024LL, base.rss_kb * 1024LL, held),
               per_conn(m.anon_kb * 1024LL, base.anon_kb * 1024LL, held),
               per_conn(m.heap_kb * 1024LL, base.heap_kb * 1024LL, held), malloc_col,
               per_conn(m.rss_kb * 1024LL, prev.rss_kb * 1024LL, held - prev_n), open_col,
               sum.dropped);
        fflush(stdout);
        sx += held;
        sy += (double)m.rss_kb * 1024;
        sxx += (double)held * held;
        sxy += (double)held * m.rss_kb * 1024;
        points++;
        prev = m;
        prev_n = held;
        if (sum.open < n)
            break;
    }
    if (points >= 2) {
        double slope = (points * sxy - sx * sy) / (points * sxx - sx * sx);
        printf("# least-squares slope of VmRSS over the %d steps: %.0f B/conn\n", points, slope);
    }

    if (fleet_ask(&f, OP_QUIT, NULL))
        goto out_kill;
    for (int i = 0; i < f.n; i++) {
        waitpid(f.pids[i], NULL, 0);
        f.pids[i] = 0;
    }
    /* The server frees each connection as it sees its EOF. */
    double left = -1;
    for (int i = 0; i < 40 && o.metrics; i++) {
        left = server_ws_open(&o);
        if (left == 0)
            break;
        bench_sleep_ms(250);
    }
    struct mem after;
    if (measure_settled(&o, &after) == 0) {
        printf("# after closing all: VmRSS %ld KiB (%+ld KiB vs baseline), [heap] %ld KiB",
               after.rss_kb, after.rss_kb - base.rss_kb, after.heap_kb);
        if (after.malloc_inuse >= 0)
            printf(", malloc in use %lld B (%+lld B vs baseline)", after.malloc_inuse,
                   after.malloc_inuse - base.malloc_inuse);
        if (left >= 0)
            printf(", server websockets open %.0f", left);
        printf("\n");
    }
    rc = bench_proc_alive(o.pid) ? 0 : 1;
out_kill:
    fleet_kill(&f);
    return rc;
}
