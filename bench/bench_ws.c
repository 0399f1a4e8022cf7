#include "bench_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "ws/frame.h"

#define TOKEN_CTL   UINT64_MAX
#define READ_CHUNK  (64u << 10) /* bytes asked of one read() */
#define HEAD_CAP    1024u       /* bytes kept while reading a 101 head */
#define FRAME_LIMIT (64u << 20) /* a server frame larger than this is refused */

/* --- Connections --- */

int bws_set_init(bws_set_t *s, uint32_t n, int port, const char *src_ip, const char *path,
                 int ctl) {
    memset(s, 0, sizeof(*s));
    s->ep = -1;
    if (bench_loopback_addr("127.0.0.1", port, &s->dst) || bench_loopback_addr(src_ip, 0, &s->src))
        return -1;
    s->n = n;
    s->port = port;
    s->path = path;
    s->ctl = ctl;
    s->c = calloc(n ? n : 1, sizeof(*s->c));
    s->buf_cap = READ_CHUNK;
    s->buf = malloc(s->buf_cap);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!s->c || !s->buf || s->ep < 0) {
        bws_set_free(s);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++)
        s->c[i].fd = -1;
    if (ctl >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TOKEN_CTL};
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, ctl, &ev) != 0) {
            bws_set_free(s);
            return -1;
        }
    }
    return 0;
}

static void conn_close(bws_conn_t *c) {
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    free(c->big);
    c->big = NULL;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_off = c->out_len = c->out_cap = 0;
}

void bws_set_free(bws_set_t *s) {
    for (uint32_t i = 0; s->c && i < s->n; i++)
        conn_close(&s->c[i]);
    free(s->c);
    free(s->buf);
    if (s->ep >= 0)
        close(s->ep);
    s->c = NULL;
    s->buf = NULL;
    s->ep = -1;
}

void bws_kill(bws_set_t *s, uint32_t i, const char *why) {
    bws_conn_t *c = &s->c[i];
    if (c->state == BWS_DEAD || c->state == BWS_FREE)
        return;
    if (c->state == BWS_OPEN)
        s->open--;
    if (s->dead++ == 0)
        snprintf(s->err, sizeof(s->err), "connection %u: %s", i, why);
    conn_close(c);
    c->state = BWS_DEAD;
}

static int grow(uint8_t **p, uint32_t *cap, size_t want) {
    if (*cap >= want)
        return 0;
    if (want > FRAME_LIMIT + HEAD_CAP)
        return -1;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < want)
        ncap *= 2;
    uint8_t *np = realloc(*p, ncap);
    if (!np)
        return -1;
    *p = np;
    *cap = (uint32_t)ncap;
    return 0;
}

static void set_events(bws_set_t *s, uint32_t i, bool out) {
    bws_conn_t *c = &s->c[i];
    if (c->want_out == out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = i};
    epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static int flush(bws_set_t *s, uint32_t i) {
    bws_conn_t *c = &s->c[i];
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0) {
            bws_kill(s, i, w < 0 ? strerror(errno) : "write returned 0");
            return -1;
        }
        c->out_off += (uint32_t)w;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    set_events(s, i, c->out_len > 0);
    return 0;
}

int bws_send(bws_set_t *s, uint32_t i, const void *data, size_t len) {
    bws_conn_t *c = &s->c[i];
    if (c->state != BWS_OPEN)
        return -1;
    size_t done = 0;
    if (c->out_len == 0) {
        /* Nothing queued: straight to the socket, queue only what it does not take. */
        while (done < len) {
            ssize_t w = write(c->fd, (const uint8_t *)data + done, len - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                break;
            if (w <= 0) {
                bws_kill(s, i, w < 0 ? strerror(errno) : "write returned 0");
                return -1;
            }
            done += (size_t)w;
        }
        if (done == len)
            return 0;
    }
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (grow(&c->out, &c->out_cap, (size_t)c->out_len + (len - done))) {
        bws_kill(s, i, "out of memory for output");
        return -1;
    }
    memcpy(c->out + c->out_len, (const uint8_t *)data + done, len - done);
    c->out_len += (uint32_t)(len - done);
    set_events(s, i, true);
    return 0;
}

bool bws_pending(const bws_set_t *s, uint32_t i) {
    return s->c[i].out_len > s->c[i].out_off;
}

/* Bytes the first frame in p[0..len) needs in all, or 0 while its header is incomplete. */
static size_t frame_need(const uint8_t *p, size_t len, uint32_t *hdr, uint64_t *plen) {
    if (len < 2)
        return 0;
    uint64_t n = p[1] & 0x7f;
    uint32_t h = 2;
    if (n == 126) {
        if (len < 4)
            return 0;
        n = ((uint64_t)p[2] << 8) | p[3];
        h = 4;
    } else if (n == 127) {
        if (len < 10)
            return 0;
        n = 0;
        for (int k = 2; k < 10; k++)
            n = n << 8 | p[k];
        h = 10;
    }
    if (p[1] & 0x80)
        h += 4; /* a masked frame: the server must not send one; refused by the caller */
    *hdr = h;
    *plen = n;
    return n > FRAME_LIMIT ? SIZE_MAX : h + (size_t)n;
}

/* Hands the complete frames of p[0..len) to fn; returns the bytes consumed, or -1 when the
 * connection must end (close frame, protocol error, fn said so). */
/* Consumes the bytes of a streamed frame found in p[0..len); hands the frame (its head and
 * tail) to fn once complete. Returns the bytes used, or -1 when the connection must end. */
static long stream(bws_set_t *s, uint32_t i, const uint8_t *p, size_t len, bws_frame_fn fn,
                   void *ctx, uint64_t now) {
    struct bws_big *b = s->c[i].big;
    size_t k = b->left < len ? (size_t)b->left : len;
    if (k >= BWS_TAIL) {
        memcpy(b->keep + BWS_HEAD, p + k - BWS_TAIL, BWS_TAIL);
        b->tail_len = BWS_TAIL;
    } else {
        /* Shift the tail left by k and append. */
        uint32_t kept = b->tail_len + (uint32_t)k > BWS_TAIL ? BWS_TAIL - (uint32_t)k : b->tail_len;
        memmove(b->keep + BWS_HEAD, b->keep + BWS_HEAD + b->tail_len - kept, kept);
        memcpy(b->keep + BWS_HEAD + kept, p, k);
        b->tail_len = kept + (uint32_t)k;
    }
    b->left -= k;
    if (b->left > 0)
        return (long)k;
    s->c[i].big = NULL;
    s->frame_len = b->total;
    int rc = fn ? fn(ctx, s, i, b->opcode, b->keep, BWS_HEAD + b->tail_len, now) : 0;
    free(b);
    if (rc != 0) {
        if (s->c[i].state == BWS_OPEN)
            bws_kill(s, i, "unexpected message");
        return -1;
    }
    return s->c[i].state == BWS_OPEN ? (long)k : -1;
}

static long parse(bws_set_t *s, uint32_t i, uint8_t *p, size_t len, bws_frame_fn fn, void *ctx,
                  uint64_t now) {
    size_t off = 0;
    for (;;) {
        if (s->c[i].big) {
            if (off == len)
                return (long)off;
            long k = stream(s, i, p + off, len - off, fn, ctx, now);
            if (k < 0)
                return -1;
            off += (size_t)k;
            continue;
        }
        uint32_t hdr = 0;
        uint64_t plen = 0;
        size_t need = frame_need(p + off, len - off, &hdr, &plen);
        if (need == SIZE_MAX) {
            bws_kill(s, i, "server frame too large");
            return -1;
        }
        if (need != 0 && s->stream_over && plen > s->stream_over && (p[off] & 0x0f) == WS_OP_TEXT) {
            /* A large text frame: its head, once here, and then only its tail are kept. */
            if (len - off < hdr + BWS_HEAD)
                return (long)off;
            struct bws_big *b = malloc(sizeof(*b));
            if (!b) {
                bws_kill(s, i, "out of memory for a large frame");
                return -1;
            }
            b->opcode = WS_OP_TEXT;
            b->total = plen;
            b->left = plen - BWS_HEAD;
            b->tail_len = 0;
            memcpy(b->keep, p + off + hdr, BWS_HEAD);
            s->c[i].big = b;
            off += hdr + BWS_HEAD;
            continue;
        }
        if (need == 0 || len - off < need)
            return (long)off;
        const uint8_t *f = p + off;
        uint8_t opcode = f[0] & 0x0f;
        if (f[1] & 0x80) {
            bws_kill(s, i, "masked server frame");
            return -1;
        }
        if (!(f[0] & 0x80)) {
            bws_kill(s, i, "fragmented server frame (not handled by the benchmarks)");
            return -1;
        }
        off += need;
        if (opcode == WS_OP_CLOSE) {
            uint16_t code = plen >= 2 ? (uint16_t)(f[hdr] << 8 | f[hdr + 1]) : 1005;
            char why[160];
            snprintf(why, sizeof(why), "closed by the server with %u %.*s", code,
                     (int)(plen > 2 ? (plen - 2 < 100 ? plen - 2 : 100) : 0),
                     (const char *)f + hdr + 2);
            s->c[i].close_code = code;
            bws_kill(s, i, why);
            return -1;
        }
        if (opcode == WS_OP_PING || opcode == WS_OP_PONG)
            continue;
        s->frame_len = plen;
        if (fn && fn(ctx, s, i, opcode, f + hdr, (size_t)plen, now) != 0) {
            if (s->c[i].state == BWS_OPEN)
                bws_kill(s, i, "unexpected message");
            return -1;
        }
        if (s->c[i].state != BWS_OPEN)
            return -1;
    }
}

int bws_read(bws_set_t *s, uint32_t i, bws_frame_fn fn, void *ctx) {
    bws_conn_t *c = &s->c[i];
    for (;;) {
        if (c->state != BWS_OPEN)
            return -1;
        uint8_t *base;
        size_t have, cap;
        if (c->in_len) {
            /* A frame is in progress: read into its own buffer, sized for the whole frame,
             * so a large frame is not copied again at every read. */
            uint32_t hdr;
            uint64_t plen;
            size_t need = frame_need(c->in, c->in_len, &hdr, &plen);
            size_t want = c->in_len + READ_CHUNK;
            if (need != SIZE_MAX && need > want && (!s->stream_over || plen <= s->stream_over))
                want = need;
            if (grow(&c->in, &c->in_cap, want)) {
                bws_kill(s, i, "out of memory for input");
                return -1;
            }
            base = c->in;
            have = c->in_len;
            cap = c->in_cap;
        } else {
            base = s->buf;
            have = 0;
            cap = s->buf_cap;
        }
        ssize_t r = read(c->fd, base + have, cap - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0) {
            bws_kill(s, i, r == 0 ? "closed by the server (EOF)" : strerror(errno));
            return -1;
        }
        uint64_t now = bench_now_ns();
        size_t len = have + (size_t)r;
        long off = parse(s, i, base, len, fn, ctx, now);
        if (off < 0)
            return -1;
        size_t rest = len - (size_t)off;
        if (base == c->in) {
            memmove(c->in, c->in + off, rest);
        } else if (rest) {
            if (grow(&c->in, &c->in_cap, rest)) {
                bws_kill(s, i, "out of memory for input");
                return -1;
            }
            memcpy(c->in, base + off, rest);
        }
        c->in_len = (uint32_t)rest;
        if (rest == 0 && c->in_cap > READ_CHUNK) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
        if ((size_t)r < cap - have)
            return 0; /* a short read drained the socket */
    }
}

int bws_poll(bws_set_t *s, int timeout_ms, bws_frame_fn fn, void *ctx) {
    struct epoll_event evs[512];
    int n = epoll_wait(s->ep, evs, 512, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    int ctl = 0;
    for (int k = 0; k < n; k++) {
        if (evs[k].data.u64 == TOKEN_CTL) {
            ctl = 1;
            continue;
        }
        uint32_t i = (uint32_t)evs[k].data.u64;
        if (i >= s->n || s->c[i].state != BWS_OPEN)
            continue;
        if ((evs[k].events & EPOLLOUT) && flush(s, i))
            continue;
        if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            bws_read(s, i, fn, ctx);
    }
    return ctl;
}

/* Handles an event of connection i while opening; returns 1 once it is open, 0 while in
 * progress, -1 on failure. */
static int open_event(bws_set_t *s, uint32_t i, bws_user_fn user, void *ctx) {
    bws_conn_t *c = &s->c[i];
    if (c->state == BWS_CONNECTING) {
        char id[160], req[BENCH_HANDSHAKE_MAX];
        user(ctx, i, id, sizeof(id));
        int len = bench_handshake_request(req, sizeof(req), s->port, s->path, id);
        /* A fresh socket's send buffer takes a 200-byte request whole. */
        if (bench_connect_result(c->fd) != 0 || len < 0 || write(c->fd, req, (size_t)len) != len)
            return -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->state = BWS_HANDSHAKE;
        return 0;
    }
    if (grow(&c->in, &c->in_cap, HEAD_CAP))
        return -1;
    ssize_t got = read(c->fd, c->in + c->in_len, HEAD_CAP - c->in_len);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (got <= 0)
        return -1;
    c->in_len += (uint32_t)got;
    int head = bench_handshake_response((const char *)c->in, c->in_len);
    if (head < 0)
        return -1;
    if (head == 0)
        return 0;
    memmove(c->in, c->in + head, c->in_len - (uint32_t)head);
    c->in_len -= (uint32_t)head;
    c->state = BWS_OPEN;
    c->want_out = 0;
    s->open++;
    return 1;
}

int bws_set_open(bws_set_t *s, bws_user_fn user, void *ctx, unsigned concurrency,
                 uint64_t deadline) {
    uint32_t next = 0, done = 0, inflight = 0;
    while (done < s->n) {
        while (next < s->n && inflight < concurrency) {
            bws_conn_t *c = &s->c[next];
            c->fd = bench_connect_start(&s->dst, &s->src);
            if (c->fd < 0) {
                snprintf(s->err, sizeof(s->err), "connect %u: %s", next, strerror(-c->fd));
                c->fd = -1;
                return -1;
            }
            c->state = BWS_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = next};
            epoll_ctl(s->ep, EPOLL_CTL_ADD, c->fd, &ev);
            next++;
            inflight++;
        }
        if (bench_now_ns() > deadline) {
            snprintf(s->err, sizeof(s->err), "timed out opening connections (%u of %u open)", done,
                     s->n);
            return -1;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(s->ep, evs, 256, 100);
        if (n < 0 && errno != EINTR)
            return -1;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == TOKEN_CTL)
                continue;
            uint32_t i = (uint32_t)evs[k].data.u64;
            int rc = open_event(s, i, user, ctx);
            if (rc < 0) {
                snprintf(s->err, sizeof(s->err), "connection %u: connect or upgrade failed", i);
                return -1;
            }
            if (rc == 1) {
                inflight--;
                done++;
            }
        }
    }
    return 0;
}

size_t bws_frame(uint8_t *out, const char *text, size_t len, uint32_t seed) {
    uint8_t mask[4] = {(uint8_t)(0x5a ^ seed), (uint8_t)(0xc3 ^ (seed >> 8)),
                       (uint8_t)(0x96 ^ (seed >> 16)), (uint8_t)(0x3c ^ (seed >> 24))};
    size_t hlen = ws_header_encode(out, WS_OP_TEXT, true, len, mask);
    memcpy(out + hlen, text, len);
    ws_mask(out + hlen, len, mask, 0);
    return hlen + len;
}

bool bws_starts(const uint8_t *p, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(p, prefix, n) == 0;
}

const uint8_t *bws_find(const uint8_t *p, size_t len, const char *needle) {
    return memmem(p, len, needle, strlen(needle));
}

size_t bws_count(const uint8_t *p, size_t len, const char *needle) {
    size_t n = strlen(needle), count = 0;
    const uint8_t *end = p + len;
    for (const uint8_t *q = p; q < end && (q = memmem(q, (size_t)(end - q), needle, n)); q += n)
        count++;
    return count;
}

/* --- Worker processes --- */

int bws_fleet_start(bws_fleet_t *f, unsigned n, bws_worker_fn fn, void *ctx, unsigned timeout_s) {
    memset(f, 0, sizeof(*f));
    if (n == 0 || n > BWS_WORKERS_MAX)
        return -1;
    for (unsigned i = 0; i < n; i++) {
        int down[2], up[2];
        if (pipe2(down, O_CLOEXEC) != 0)
            goto err_stop;
        if (pipe2(up, O_CLOEXEC) != 0) {
            close(down[0]);
            close(down[1]);
            goto err_stop;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            close(down[0]);
            close(down[1]);
            close(up[0]);
            close(up[1]);
            goto err_stop;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() == 1)
                _exit(3);
            alarm(timeout_s + 30); /* a last bound should the parent hang */
            for (unsigned k = 0; k < f->n; k++) {
                close(f->cmd[k]);
                close(f->rep[k]);
            }
            close(down[1]);
            close(up[0]);
            _exit(fn(ctx, i, down[0], up[1]));
        }
        close(down[0]);
        close(up[1]);
        f->pid[i] = pid;
        f->cmd[i] = down[1];
        f->rep[i] = up[0];
        f->n = i + 1;
    }
    return 0;

err_stop:
    bws_fleet_stop(f);
    return -1;
}

int bws_fleet_send(bws_fleet_t *f, uint32_t op) {
    for (unsigned i = 0; i < f->n; i++)
        if (write(f->cmd[i], &op, sizeof(op)) != (ssize_t)sizeof(op))
            return -1;
    return 0;
}

int bws_fleet_collect(bws_fleet_t *f, int32_t *st, uint64_t deadline) {
    bool got[BWS_WORKERS_MAX] = {false};
    unsigned left = f->n;
    int rc = 0;
    while (left > 0) {
        uint64_t now = bench_now_ns();
        if (now >= deadline)
            return -1;
        struct pollfd pfd[BWS_WORKERS_MAX];
        for (unsigned i = 0; i < f->n; i++)
            pfd[i] = (struct pollfd){.fd = got[i] ? -1 : f->rep[i], .events = POLLIN};
        int pr = poll(pfd, f->n, 100);
        if (pr < 0 && errno != EINTR)
            return -1;
        for (unsigned i = 0; i < f->n; i++) {
            if (got[i] || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int32_t v;
            if (read(f->rep[i], &v, sizeof(v)) != (ssize_t)sizeof(v))
                return -1; /* the worker died */
            if (st)
                st[i] = v;
            if (v < 0)
                rc = -1;
            got[i] = true;
            left--;
        }
    }
    return rc;
}

void bws_fleet_stop(bws_fleet_t *f) {
    for (unsigned i = 0; i < f->n; i++) {
        if (f->pid[i] > 0) {
            kill(f->pid[i], SIGKILL);
            waitpid(f->pid[i], NULL, 0);
            f->pid[i] = 0;
        }
        close(f->cmd[i]);
        close(f->rep[i]);
    }
    f->n = 0;
}

int bws_cmd_read(int cmd, uint32_t *op) {
    for (;;) {
        ssize_t r = read(cmd, op, sizeof(*op));
        if (r < 0 && errno == EINTR)
            continue;
        return r == (ssize_t)sizeof(*op) ? 0 : -1;
    }
}

void bws_reply(int rep, int32_t status) {
    if (write(rep, &status, sizeof(status)) != (ssize_t)sizeof(status))
        _exit(4);
}

void *bws_shared(size_t size) {
    void *p =
        mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* --- Figures --- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void bws_sort_u64(uint64_t *v, size_t n) {
    qsort(v, n, sizeof(*v), cmp_u64);
}

uint64_t bws_pct(const uint64_t *sorted, size_t n, double p) {
    if (n == 0)
        return 0;
    double rank = p * (double)n;
    size_t i = (size_t)rank;
    if ((double)i < rank)
        i++; /* ceil */
    if (i == 0)
        i = 1;
    if (i > n)
        i = n;
    return sorted[i - 1];
}

int bws_wait_idle(pid_t pid, unsigned quiet_ms, unsigned max_ms, uint64_t *ticks) {
    uint64_t start = bench_now_ns(), last;
    if (bench_proc_cpu_ticks(pid, &last))
        return -1;
    unsigned quiet = 0;
    for (;;) {
        bench_sleep_ms(50);
        uint64_t t;
        if (bench_proc_cpu_ticks(pid, &t))
            return -1;
        quiet = t == last ? quiet + 50 : 0;
        last = t;
        *ticks = t;
        if (quiet >= quiet_ms)
            return 0;
        if (bench_now_ns() - start > (uint64_t)max_ms * 1000000u)
            return 1;
    }
}

double bws_self_cpu_s(bool children) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               ru.ru_stime.tv_usec / 1e6;
    if (children) {
        getrusage(RUSAGE_CHILDREN, &ru);
        s += (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
             ru.ru_stime.tv_usec / 1e6;
    }
    return s;
}

double bws_metric(int port, const char *name) {
    size_t cap = 512 << 10;
    char *text = malloc(cap);
    if (!text)
        return -1;
    double v = -1;
    if (bench_http_get(port, "/metrics", text, cap, 3000) == 200)
        v = bench_metric(text, name);
    free(text);
    return v;
}
