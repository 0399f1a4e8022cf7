#include "store/redis_conn.h"

#include <sodium.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define READ_BUF       (64 * 1024)

/* HELLO: connected, waiting for the answer to PING. A connection counts as up only once the
 * server answered: a proxy in front of a dead Redis accepts and closes, a Redis loading its
 * data set answers -LOADING, and neither is a Redis to send work to. */
enum state { ST_IDLE, ST_RESOLVING, ST_CONNECTING, ST_HELLO, ST_UP, ST_BACKOFF, ST_CLOSED };

struct pending {
    struct pending *next;
    redis_reply_cb cb;
    void *arg;
    uint64_t deadline; /* ms, loop time */
};

/* One TCP attempt; freed in its close callback, so a new attempt never reuses a handle
 * libuv is still closing. */
struct sock {
    uv_tcp_t tcp;
    uv_connect_t connect;
    redis_conn_t *c; /* NULL once the attempt is abandoned */
};

struct wreq {
    uv_write_t req;
    char *cmd;
};

struct redis_conn {
    uv_loop_t *loop;
    wheel_t *wheel;
    pd_log_t *log;
    char host[256];
    char name[300];
    int port;
    bool pubsub;
    uint32_t timeout_ms;
    redis_conn_events_t ev;
    struct sock *sock;
    uv_getaddrinfo_t gai;
    bool resolving;
    redisReader *reader;
    struct pending *head, *tail;
    size_t npending;
    wheel_timer_t timer; /* connect deadline, reply deadline, or reconnect backoff */
    uint8_t state;
    uint32_t attempts;
    int open_handles; /* sockets and lookups not yet closed: freed when 0 after close */
    char rbuf[READ_BUF];
};

static void timer_fire(wheel_timer_t *t, uint64_t now);
static void connect_now(redis_conn_t *c);
static void came_up(redis_conn_t *c);

static uint64_t now_ms(const redis_conn_t *c) {
    return uv_now(c->loop);
}

static void maybe_free(redis_conn_t *c) {
    if (c->state != ST_CLOSED || c->open_handles > 0)
        return;
    if (c->reader)
        redisReaderFree(c->reader);
    free(c);
}

static void sock_closed(uv_handle_t *h) {
    struct sock *s = h->data;
    redis_conn_t *c = s->c;
    free(s);
    if (c) {
        c->open_handles--;
        maybe_free(c);
    }
}

static void fail_pending(redis_conn_t *c, int err) {
    /* Detached first: a callback may send again (and get PD_ECLOSED: not connected). */
    struct pending *p = c->head;
    c->head = c->tail = NULL;
    c->npending = 0;
    while (p) {
        struct pending *next = p->next;
        if (p->cb)
            p->cb(p->arg, NULL, err);
        free(p);
        p = next;
    }
}

/* Drops the current attempt or connection, fails what was pending, and plans a retry. */
static void drop(redis_conn_t *c, int err, const char *why) {
    bool was_up = c->state == ST_UP;
    if (c->sock) {
        uv_close((uv_handle_t *)&c->sock->tcp, sock_closed);
        c->sock = NULL;
    }
    if (c->reader) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    if (c->state == ST_CLOSED)
        return;
    if (was_up)
        PD_WARN(c->log, "redis", "%s: connection lost (%s); reconnecting", c->name, why);
    else if (c->attempts == 0 || c->attempts % 20 == 0)
        PD_WARN(c->log, "redis", "%s: cannot connect (%s); retrying", c->name, why);
    c->state = ST_BACKOFF;
    /* Jittered exponential backoff: nodes that lost Redis together do not return together. */
    uint32_t shift = c->attempts < 6 ? c->attempts : 6;
    uint32_t base = BACKOFF_MIN_MS << shift;
    if (base > BACKOFF_MAX_MS)
        base = BACKOFF_MAX_MS;
    uint32_t delay = base / 2 + randombytes_uniform(base / 2 + 1);
    c->attempts++;
    wheel_schedule(c->wheel, &c->timer, now_ms(c) + delay);
    fail_pending(c, err);
    if (was_up && c->ev.on_down)
        c->ev.on_down(c->ev.ctx, c);
}

static void arm_reply_deadline(redis_conn_t *c) {
    if (c->state == ST_UP && c->head && !wheel_timer_armed(&c->timer))
        wheel_schedule(c->wheel, &c->timer, c->head->deadline);
}

/* Bytes received and not read yet. A deadline checked after a slow pass of the loop (a flood
 * of clients) may find the answer already waiting in the socket: that is no timeout. */
static bool answer_waiting(redis_conn_t *c) {
    uv_os_fd_t fd;
    int n = 0;
    return c->sock && uv_fileno((uv_handle_t *)&c->sock->tcp, &fd) == 0 &&
           ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static void timer_fire(wheel_timer_t *t, uint64_t now) {
    redis_conn_t *c = (redis_conn_t *)((char *)t - offsetof(redis_conn_t, timer));
    switch (c->state) {
    case ST_RESOLVING:
    case ST_CONNECTING:
    case ST_HELLO:
        drop(c, PD_ETIMEDOUT, "connect timed out");
        break;
    case ST_UP:
        if (c->head && c->head->deadline <= now && answer_waiting(c)) {
            /* Let the loop read it first: check again on the next tick. */
            wheel_schedule(c->wheel, &c->timer, now + 1);
            return;
        }
        if (c->head && c->head->deadline <= now) {
            drop(c, PD_ETIMEDOUT, "reply timed out");
            return;
        }
        arm_reply_deadline(c);
        break;
    case ST_BACKOFF:
        connect_now(c);
        break;
    default:
        break;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct sock *s = h->data;
    buf->base = s->c ? s->c->rbuf : NULL;
    buf->len = s->c ? sizeof(s->c->rbuf) : 0;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    struct sock *s = st->data;
    redis_conn_t *c = s->c;
    if (!c || n == 0)
        return;
    if (n < 0) {
        drop(c, PD_ECLOSED, n == UV_EOF ? "closed by the server" : uv_strerror((int)n));
        return;
    }
    if (redisReaderFeed(c->reader, buf->base, (size_t)n) != REDIS_OK) {
        drop(c, PD_EPROTO, "unreadable reply");
        return;
    }
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            drop(c, PD_EPROTO, "unreadable reply");
            return;
        }
        if (!reply)
            break;
        if (c->state == ST_HELLO) {
            const redisReply *r = reply;
            bool pong = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
            char why[128];
            snprintf(why, sizeof(why), "%s", r->type == REDIS_REPLY_ERROR ? r->str : "no PONG");
            freeReplyObject(reply);
            if (!pong) {
                drop(c, PD_EIO, why);
                return;
            }
            came_up(c);
            if (c->state != ST_UP || c->sock != s)
                return;
            continue;
        }
        if (c->pubsub || !c->head) {
            if (c->ev.on_push)
                c->ev.on_push(c->ev.ctx, c, reply);
        } else {
            struct pending *p = c->head;
            c->head = p->next;
            if (!c->head)
                c->tail = NULL;
            c->npending--;
            if (p->cb)
                p->cb(p->arg, reply, 0);
            free(p);
        }
        freeReplyObject(reply);
        if (c->state != ST_UP || c->sock != s)
            return; /* a callback closed or dropped the connection */
    }
    /* The head changed: its own deadline now applies. (Before the PONG, the connect
     * deadline stays.) */
    if (c->state == ST_UP) {
        wheel_cancel(c->wheel, &c->timer);
        arm_reply_deadline(c);
    }
}

/* The server answered PING: work may go to it. */
static void came_up(redis_conn_t *c) {
    if (c->attempts > 0)
        PD_INFO(c->log, "redis", "%s: connected", c->name);
    c->state = ST_UP;
    c->attempts = 0;
    wheel_cancel(c->wheel, &c->timer);
    if (c->ev.on_up)
        c->ev.on_up(c->ev.ctx, c);
}

static void on_connect(uv_connect_t *req, int status) {
    struct sock *s = req->data;
    redis_conn_t *c = s->c;
    if (!c)
        return;
    if (status < 0) {
        drop(c, PD_ECLOSED, uv_strerror(status));
        return;
    }
    c->reader = redisReaderCreate();
    if (!c->reader) {
        drop(c, PD_ENOMEM, "out of memory");
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    uv_tcp_keepalive(&s->tcp, 1, 30);
    if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) != 0) {
        drop(c, PD_EIO, "cannot read");
        return;
    }
    /* The connect deadline still runs: it covers the answer to PING too. */
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    uv_buf_t b = uv_buf_init((char *)ping, sizeof(ping) - 1);
    c->state = ST_HELLO;
    if (uv_try_write((uv_stream_t *)&s->tcp, &b, 1) != (int)b.len)
        drop(c, PD_EIO, "cannot write");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    redis_conn_t *c = req->data;
    c->resolving = false;
    c->open_handles--;
    if (c->state == ST_CLOSED) {
        uv_freeaddrinfo(res);
        maybe_free(c);
        return;
    }
    if (c->state != ST_RESOLVING) {
        uv_freeaddrinfo(res);
        return; /* timed out meanwhile */
    }
    if (status < 0 || !res) {
        uv_freeaddrinfo(res);
        drop(c, PD_ECLOSED, status < 0 ? uv_strerror(status) : "no address");
        return;
    }
    struct sock *s = calloc(1, sizeof(*s));
    if (!s) {
        uv_freeaddrinfo(res);
        drop(c, PD_ENOMEM, "out of memory");
        return;
    }
    s->c = c;
    uv_tcp_init(c->loop, &s->tcp);
    s->tcp.data = s;
    s->connect.data = s;
    c->open_handles++;
    c->sock = s;
    c->state = ST_CONNECTING;
    int rc = uv_tcp_connect(&s->connect, &s->tcp, res->ai_addr, on_connect);
    uv_freeaddrinfo(res);
    if (rc)
        drop(c, PD_ECLOSED, uv_strerror(rc));
}

static void connect_now(redis_conn_t *c) {
    char port[16];
    snprintf(port, sizeof(port), "%d", c->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->state = ST_RESOLVING;
    wheel_schedule(c->wheel, &c->timer, now_ms(c) + c->timeout_ms);
    if (c->resolving)
        return; /* a lookup of the previous attempt is still out: it continues this one */
    c->gai.data = c;
    c->resolving = true;
    c->open_handles++;
    int rc = uv_getaddrinfo(c->loop, &c->gai, on_resolved, c->host, port, &hints);
    if (rc) {
        c->resolving = false;
        c->open_handles--;
        drop(c, PD_ECLOSED, uv_strerror(rc));
    }
}

redis_conn_t *redis_conn_new(uv_loop_t *loop, wheel_t *wheel, const char *host, int port,
                             bool pubsub, uint32_t timeout_ms, const redis_conn_events_t *ev,
                             pd_log_t *log) {
    redis_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->wheel = wheel;
    c->log = log;
    snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = port;
    snprintf(c->name, sizeof(c->name), "%s:%d%s", host, port, pubsub ? " (pub/sub)" : "");
    c->pubsub = pubsub;
    c->timeout_ms = timeout_ms ? timeout_ms : 2000;
    if (ev)
        c->ev = *ev;
    wheel_timer_init(&c->timer, timer_fire);
    c->state = ST_IDLE;
    return c;
}

void redis_conn_start(redis_conn_t *c) {
    if (c->state == ST_IDLE)
        connect_now(c);
}

static void on_written(uv_write_t *req, int status) {
    struct wreq *w = (struct wreq *)req;
    redisFreeCommand(w->cmd);
    free(w);
    (void)status; /* a failed write shows as a read error or timeout on the connection */
}

int redis_conn_send(redis_conn_t *c, int argc, const char **argv, const size_t *argvlen,
                    redis_reply_cb cb, void *arg) {
    if (c->state != ST_UP)
        return PD_ECLOSED;
    struct wreq *w = malloc(sizeof(*w));
    struct pending *p = c->pubsub ? NULL : malloc(sizeof(*p));
    int len = w ? redisFormatCommandArgv(&w->cmd, argc, argv, argvlen) : -1;
    if (!w || len < 0 || (!c->pubsub && !p)) {
        if (w && len >= 0)
            redisFreeCommand(w->cmd);
        free(w);
        free(p);
        return PD_ENOMEM;
    }
    uv_buf_t b = uv_buf_init(w->cmd, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->sock->tcp, &b, 1, on_written) != 0) {
        redisFreeCommand(w->cmd);
        free(w);
        free(p);
        return PD_ECLOSED;
    }
    if (p) {
        p->next = NULL;
        p->cb = cb;
        p->arg = arg;
        p->deadline = now_ms(c) + c->timeout_ms;
        if (c->tail)
            c->tail->next = p;
        else
            c->head = p;
        c->tail = p;
        c->npending++;
        arm_reply_deadline(c);
    }
    return 0;
}

bool redis_conn_up(const redis_conn_t *c) {
    return c->state == ST_UP;
}

const char *redis_conn_name(const redis_conn_t *c) {
    return c->name;
}

size_t redis_conn_pending(const redis_conn_t *c) {
    return c->npending;
}

void redis_conn_close(redis_conn_t *c) {
    if (!c || c->state == ST_CLOSED)
        return;
    wheel_cancel(c->wheel, &c->timer);
    c->state = ST_CLOSED;
    if (c->sock) {
        struct sock *s = c->sock;
        c->sock = NULL;
        c->open_handles--; /* counted as gone now: sock_closed sees no c */
        if (uv_is_closing((uv_handle_t *)&s->tcp)) {
            /* Closed by the loop owner's shutdown walk (main's), which the loop has run:
             * closing it again aborts in libuv, and no close callback will free it. */
            free(s);
        } else {
            s->c = NULL; /* its close callback must not touch c */
            uv_close((uv_handle_t *)&s->tcp, sock_closed);
        }
    }
    if (c->resolving)
        uv_cancel((uv_req_t *)&c->gai);
    fail_pending(c, PD_ECLOSED);
    maybe_free(c);
}
