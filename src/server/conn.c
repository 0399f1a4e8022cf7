/* One connection's life: HTTP requests until an upgrade, then WebSocket frames, then the
 * close handshake, lingering and the free.
 *
 * Invariants:
 * - Input is read into the server's one buffer; only bytes of an incomplete frame or request
 *   are copied into c->in, which is freed as soon as it empties.
 * - The upper layer hears on_close exactly once per accepted upgrade, always from the flush
 *   (never from inside its own calls into conn_*), and c is freed only in the libuv close
 *   callback that follows (hiredis's adapters/libuv.h, Redis's freeClientAsync).
 * - An HTTP exchange is the connection itself, so c is never freed while an answer is owed
 *   (c->awaiting): a connection closed first keeps its struct, emptied and detached from the
 *   server (c->srv NULL: the server may be freed before a store fails its last calls), and
 *   the late answer frees it instead of being written. Its memory cannot be reused by another
 *   connection before the answer, so the answer can never reach anyone else. Cost: the bare
 *   struct per abandoned request, until the store answers or fails the call (its timeout).
 * - Queued output is a list of references to shared buffers; a node handed to uv_write is
 *   never touched until its callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "http/exchange.h"
#include "http/response.h"
#include "server/server_internal.h"
#include "util/error.h"
#include "ws/handshake.h"

#define CLOSE_CODE_IDLE 4000 /* presenced: no inbound frame within the idle timeout */

static void conn_on_timer(wheel_timer_t *t, uint64_t now);
static void conn_process(conn_t *c, uint8_t *data, size_t len);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static inline conn_t *conn_of_timer(wheel_timer_t *t) {
    return (conn_t *)((char *)t - offsetof(conn_t, timer));
}

static inline uint64_t now_ms(const conn_t *c) {
    return uv_now(c->srv->loop);
}

uint64_t conn_id(const conn_t *c) {
    return c->id;
}

uint64_t conn_last_rx(const conn_t *c) {
    return c->last_rx;
}

uint32_t conn_out_bytes(const conn_t *c) {
    return c->out_bytes;
}

const char *conn_peer(const conn_t *c, char *buf, size_t size) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(buf, size, "%s:%d", ip, port);
    return buf;
}

/* --- Output queue --- */

static void node_unslot(struct conn_qnode *n) {
    if (n->slot) {
        *n->slot = NULL;
        n->slot = NULL;
    }
}

static void queue_release_head(conn_t *c) {
    struct conn_qnode *n = c->out_head;
    c->out_head = n->next;
    if (!c->out_head)
        c->out_tail = NULL;
    c->out_bytes -= (uint32_t)(pd_obuf_len(n->buf) - c->out_off);
    c->out_off = 0;
    node_unslot(n);
    pd_obuf_release(n->buf);
    server__node_put(c->srv, n);
}

/* Drops every queued node not handed to an unfinished write. */
static void queue_drop_unsent(conn_t *c) {
    struct conn_qnode **link = &c->out_head;
    for (uint16_t i = 0; i < c->writing && *link; i++)
        link = &(*link)->next;
    struct conn_qnode *n = *link;
    *link = NULL;
    c->out_tail = NULL;
    for (struct conn_qnode *t = c->out_head; t; t = t->next)
        c->out_tail = t;
    while (n) {
        struct conn_qnode *next = n->next;
        c->out_bytes -= (uint32_t)pd_obuf_len(n->buf);
        node_unslot(n);
        pd_obuf_release(n->buf);
        server__node_put(c->srv, n);
        n = next;
    }
}

static struct conn_qnode *queue_push(conn_t *c, pd_obuf_t *b) {
    struct conn_qnode *n = server__node_get(c->srv);
    if (!n)
        return NULL;
    n->next = NULL;
    n->buf = pd_obuf_retain(b);
    n->slot = NULL;
    if (c->out_tail)
        c->out_tail->next = n;
    else
        c->out_head = n;
    c->out_tail = n;
    c->out_bytes += (uint32_t)pd_obuf_len(b);
    (*c->srv->n.ws_frames_out)++;
    server__mark_pending(c);
    return n;
}

/* --- Ending --- */

/* Marks c to be closed and freed at the next flush. */
static void conn_reap(conn_t *c) {
    if (c->state == CONN_DEAD)
        return;
    c->reap = 1;
    server__mark_pending(c);
}

/* The WebSocket is over for the upper layer; on_close is delivered at the next flush. */
static void conn_end(conn_t *c, enum conn_end why) {
    if (c->ended)
        return;
    c->ended = 1;
    c->end_why = (uint8_t)why;
    if (c->upgraded)
        (*c->srv->n.ws_open)--;
    server__mark_pending(c);
}

/* A streamed answer's owner. */
struct conn_stream {
    void (*on_end)(void *arg);
    void *arg;
};

static void notify_stream_end(conn_t *c) {
    if (c->state != CONN_STREAM || c->notified)
        return;
    c->notified = 1;
    struct conn_stream *cs = c->app;
    c->app = NULL;
    if (cs) {
        cs->on_end(cs->arg);
        free(cs);
    }
}

static void notify_close(conn_t *c) {
    if (!c->upgraded || c->notified || !c->ended)
        return;
    c->notified = 1;
    /* Frames still queued stay queued, but their senders' slots are cleared first: the
     * upper layer frees what they point into when it hears of the close. */
    for (struct conn_qnode *n = c->out_head; n; n = n->next)
        node_unslot(n);
    if (c->srv->ws.on_close)
        c->srv->ws.on_close(c->srv->ws.ctx, c, c->app, (enum conn_end)c->end_why);
}

static void on_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    server_t *s = c->srv;
    if (s->peers)
        peer_limit_put(s->peers, c->peer_slot);
    while (c->out_head) {
        c->out_off = 0;
        queue_release_head(c);
    }
    http_reqparser_free(c->http);
    c->http = NULL;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    free(c->msg);
    c->msg = NULL;
    if (c->awaiting)
        c->srv = NULL; /* the answer owed frees it (http_exchange_respond) */
    else
        free(c);
    server__conn_gone(s);
}

void server__reap_now(conn_t *c) {
    if (c->state == CONN_DEAD)
        return;
    if (c->awaiting)
        (*server__counter(c->srv, "presenced_http_answers_abandoned_total",
                          "HTTP requests whose connection closed before their answer (dropped)",
                          NULL, NULL))++;
    notify_stream_end(c);
    if (c->upgraded && !c->ended)
        conn_end(c, CONN_END_DROPPED);
    notify_close(c);
    wheel_cancel(c->srv->wheel, &c->timer);
    c->state = CONN_DEAD;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* Sends a close frame and waits for the peer's (or the timeout). */
static void start_ws_close(conn_t *c, uint16_t code, const char *reason, enum conn_end why) {
    if (c->state != CONN_WS_OPEN)
        return;
    conn_end(c, why);
    pd_obuf_t *f = ws_close_frame_new(code, reason);
    if (f) {
        queue_push(c, f);
        pd_obuf_release(f);
    }
    c->state = CONN_WS_CLOSING;
    char key[24];
    snprintf(key, sizeof(key), "%u", code);
    (*server__counter(c->srv, "presenced_ws_closes_sent_total", "Close frames sent, by close code",
                      "code", key))++;
    wheel_schedule(c->srv->wheel, &c->timer, now_ms(c) + c->srv->cfg.close_timeout_ms);
}

void conn_close_ws(conn_t *c, uint16_t code, const char *reason) {
    start_ws_close(c, code, reason, CONN_END_CLOSED);
}

void server__close_for_shutdown(conn_t *c) {
    server_t *s = c->srv;
    switch (c->state) {
    case CONN_WS_OPEN:
        start_ws_close(c, s->shutdown_code, s->shutdown_reason, CONN_END_SHUTDOWN);
        break;
    case CONN_STREAM:
        conn_reap(c); /* its client reconnects elsewhere, or once the server is back */
        break;
    case CONN_HTTP:
        /* A request in flight is answered (with Connection: close); an idle one just goes.
         * Nothing is flagged here: http_exchange_respond drops keep-alive while shutting down,
         * which closes the connection after the answer. (Setting close_after_flush here made
         * http_input ignore the rest of a request still arriving: it was never answered, only
         * dropped at the shutdown timeout.) */
        if (!((c->http && http_reqparser_busy(c->http)) || c->awaiting))
            conn_reap(c);
        break;
    default:
        break;
    }
}

/* --- Writing --- */

struct conn_wreq {
    uv_write_t req;
    conn_t *c;
};

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

static void conn_after_drain(conn_t *c) {
    if (!c->close_after_flush || c->out_head)
        return;
    c->close_after_flush = 0;
    if (c->state == CONN_HTTP) {
        /* Lingering close: shut the write side and read until EOF, so unread request bytes
         * do not make the kernel reset the connection before the response arrives. */
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
            free(req);
            conn_reap(c);
            return;
        }
        c->state = CONN_LINGER;
        wheel_schedule(c->srv->wheel, &c->timer, now_ms(c) + c->srv->cfg.close_timeout_ms);
    } else {
        /* RFC 6455 section 7.1.1: once the close handshake is done, the server closes TCP. */
        conn_reap(c);
    }
}

static void on_write(uv_write_t *req, int status) {
    struct conn_wreq *w = (struct conn_wreq *)req;
    conn_t *c = w->c;
    uint16_t nodes = c->writing;
    free(w);
    if (status == UV_ECANCELED || c->state == CONN_DEAD)
        return; /* on_closed releases the queue */
    c->writing = 0;
    for (uint16_t i = 0; i < nodes && c->out_head; i++)
        queue_release_head(c);
    if (status < 0) {
        if (c->upgraded)
            conn_end(c, CONN_END_DROPPED);
        conn_reap(c);
        return;
    }
    server__mark_pending(c);
}

static void conn_write(conn_t *c) {
    server_t *s = c->srv;
    size_t budget = SERVER_FLUSH_MAX;
    while (c->out_head && !c->writing && budget > 0) {
        uv_buf_t iov[SERVER_IOV_MAX];
        unsigned n = 0;
        size_t total = 0;
        size_t off = c->out_off;
        for (struct conn_qnode *q = c->out_head; q && n < SERVER_IOV_MAX; q = q->next) {
            iov[n].base = (char *)pd_obuf_bytes(q->buf) + off;
            iov[n].len = pd_obuf_len(q->buf) - off;
            total += iov[n].len;
            off = 0;
            n++;
        }
        int r = uv_try_write((uv_stream_t *)&c->tcp, iov, n);
        if (r == UV_EAGAIN || r == UV_ENOSYS)
            r = 0;
        if (r < 0) {
            if (c->upgraded)
                conn_end(c, CONN_END_DROPPED);
            conn_reap(c);
            return;
        }
        (*s->n.bytes_out) += (uint64_t)r;
        budget = (size_t)r >= budget ? 0 : budget - (size_t)r;
        /* Release what went out whole; note how far into the next buffer we got. */
        size_t done = (size_t)r;
        unsigned first = 0;
        while (first < n && done >= iov[first].len) {
            done -= iov[first].len;
            queue_release_head(c);
            first++;
        }
        if (first < n) {
            c->out_off += (uint32_t)done;
            c->out_bytes -= (uint32_t)done;
            iov[first].base += done;
            iov[first].len -= done;
            node_unslot(c->out_head); /* started: can no longer be replaced */
        }
        if ((size_t)r == total)
            continue;
        /* The socket is full: hand the rest of this batch to libuv, which writes it as the
         * socket drains. The nodes stay queued (and untouchable) until on_write. */
        struct conn_wreq *w = malloc(sizeof(*w));
        if (!w) {
            conn_reap(c);
            return;
        }
        w->c = c;
        unsigned left = n - first;
        struct conn_qnode *q = c->out_head;
        for (unsigned i = 0; i < left; i++, q = q->next)
            node_unslot(q);
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, iov + first, left, on_write) != 0) {
            free(w);
            conn_reap(c);
            return;
        }
        c->writing = (uint16_t)left;
        return;
    }
    if (c->out_head && !c->writing)
        server__mark_pending(c); /* over this iteration's budget: continue next time */
    /* The backlog that paused reading has drained: read (and answer) again. */
    if (c->paused && c->out_bytes <= s->cfg.out_max / 4 && c->state != CONN_DEAD && !c->reap) {
        c->paused = 0;
        c->resume = 1;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        server__mark_pending(c);
    }
    conn_after_drain(c);
}

void server__flush_conn(conn_t *c) {
    if (c->state == CONN_DEAD)
        return;
    if (c->reap) {
        /* One last attempt to get queued bytes (a close frame) out before the close. */
        if (c->out_head && !c->writing) {
            c->reap = 0;
            c->close_after_flush = 0;
            conn_write(c);
        }
        server__reap_now(c);
        return;
    }
    notify_close(c);
    if (c->resume && !c->awaiting) {
        c->resume = 0;
        uint8_t *in = c->in;
        uint32_t len = c->in_len;
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        if (len)
            conn_process(c, in, len);
        free(in);
        if (c->state == CONN_DEAD || c->reap) {
            server__mark_pending(c);
            return;
        }
    }
    conn_write(c);
}

void conn_hold_input(conn_t *c, bool hold) {
    if (hold) {
        c->held = 1;
        return;
    }
    if (!c->held)
        return;
    c->held = 0;
    if (c->paused || c->state == CONN_DEAD || c->reap)
        return;    /* the drain of the output backlog resumes reading */
    c->resume = 1; /* what waited in c->in is processed at the next flush */
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    server__mark_pending(c);
}

static int send_checked(conn_t *c, pd_obuf_t *frame) {
    server_t *s = c->srv;
    if (c->state != CONN_WS_OPEN)
        return PD_ECLOSED;
    if ((uint64_t)c->out_bytes + pd_obuf_len(frame) > s->cfg.out_max) {
        /* A client that does not read must not make us hold unbounded output for it. The
         * queue cannot drain, so what is unsent is dropped to make room for the close. */
        (*s->n.slow_consumer_closes)++;
        char peer[64];
        PD_INFO(s->log, "server", "conn %llu (%s): output over %u bytes, closing (1008)",
                (unsigned long long)c->id, conn_peer(c, peer, sizeof(peer)), s->cfg.out_max);
        queue_drop_unsent(c);
        start_ws_close(c, WS_CLOSE_POLICY, "output queue full: client too slow", CONN_END_ERROR);
        return PD_ELIMIT;
    }
    return 0;
}

int conn_send(conn_t *c, pd_obuf_t *frame) {
    int rc = send_checked(c, frame);
    if (rc)
        return rc;
    return queue_push(c, frame) ? 0 : PD_ENOMEM;
}

int conn_send_coalesced(conn_t *c, pd_obuf_t *frame, conn_slot_t **slot) {
    struct conn_qnode *n = *slot;
    if (n && c->state == CONN_WS_OPEN) {
        c->out_bytes += (uint32_t)pd_obuf_len(frame);
        c->out_bytes -= (uint32_t)pd_obuf_len(n->buf);
        pd_obuf_release(n->buf);
        n->buf = pd_obuf_retain(frame);
        return 1;
    }
    int rc = send_checked(c, frame);
    if (rc)
        return rc;
    n = queue_push(c, frame);
    if (!n)
        return PD_ENOMEM;
    n->slot = slot;
    *slot = n;
    return 0;
}

void conn_unslot(conn_slot_t **slot) {
    if (*slot) {
        (*slot)->slot = NULL;
        *slot = NULL;
    }
}

/* --- HTTP --- */

static void http_send(conn_t *c, pd_obuf_t *resp, bool keep_alive) {
    if (resp) {
        queue_push(c, resp);
        pd_obuf_release(resp);
    } else {
        keep_alive = false;
    }
    char status[4] = {0};
    if (resp && pd_obuf_len(resp) > 12)
        memcpy(status, pd_obuf_bytes(resp) + 9, 3);
    (*server__counter(c->srv, "presenced_http_responses_total", "HTTP responses, by status",
                      "status", status))++;
    if (!keep_alive)
        c->close_after_flush = 1;
}

/* Answers an error and closes: the request stream can no longer be trusted. */
static void http_fail(conn_t *c, int status, const char *extra_headers) {
    char body[128];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, http_status_reason(status));
    http_send(c,
              http_response_new(status, "text/plain; charset=utf-8", extra_headers, body, (size_t)n,
                                false, false),
              false);
    http_reqparser_free(c->http);
    c->http = NULL;
    wheel_schedule(c->srv->wheel, &c->timer, now_ms(c) + c->srv->cfg.close_timeout_ms);
}

/* The exchange is answered: a connection already closed (kept only for this) is freed. True
 * when it was, and nothing may touch c again. */
static bool exchange_settle(conn_t *c) {
    c->awaiting = 0;
    if (c->srv)
        return false;
    free(c);
    return true;
}

void http_exchange_respond(http_exchange_t *ex, int status, const char *content_type,
                           const char *extra_headers, const void *body, size_t body_len) {
    conn_t *c = (conn_t *)ex;
    if (!c->awaiting)
        return;
    if (exchange_settle(c))
        return; /* the client went away: the answer goes nowhere */
    bool keep_alive = c->keep_alive && !c->srv->shutting_down;
    if (c->state == CONN_HTTP && !c->reap) {
        http_send(c,
                  http_response_new(status, content_type, extra_headers, body, body_len, keep_alive,
                                    c->head_only),
                  keep_alive);
        /* A late answer lets the connection read on; input that waited is parsed first. */
        if (c->resume) {
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
            server__mark_pending(c);
        }
    }
}

http_stream_t *http_exchange_stream(http_exchange_t *ex, int status, const char *content_type,
                                    const char *extra_headers, void (*on_end)(void *arg),
                                    void *arg) {
    conn_t *c = (conn_t *)ex;
    if (!c->awaiting)
        return NULL;
    if (c->state != CONN_HTTP || c->reap) {
        exchange_settle(c); /* the client is gone: nobody to answer */
        return NULL;
    }
    struct conn_stream *cs = malloc(sizeof(*cs));
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: presenced\r\nContent-Type: %s\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n"
                     "X-Content-Type-Options: nosniff\r\n%s\r\n",
                     status, http_status_reason(status), content_type,
                     extra_headers ? extra_headers : "");
    pd_obuf_t *b = cs && n > 0 && (size_t)n < sizeof(head) ? pd_obuf_from(head, (size_t)n) : NULL;
    if (!b) {
        free(cs);
        /* Out of memory (or a head too long): answered all the same, never left owed. */
        http_exchange_respond(ex, 503, "text/plain; charset=utf-8", NULL, "out of memory\n", 14);
        return NULL;
    }
    cs->on_end = on_end;
    cs->arg = arg;
    c->awaiting = 0;
    c->state = CONN_STREAM;
    c->app = cs;
    http_reqparser_free(c->http);
    c->http = NULL;
    /* No idle timeout: the owner sends keep-alive chunks; a dead client shows as an error. */
    wheel_cancel(c->srv->wheel, &c->timer);
    queue_push(c, b);
    pd_obuf_release(b);
    (*server__counter(c->srv, "presenced_http_responses_total", "HTTP responses, by status",
                      "status", status == 200 ? "200" : "other"))++;
    return (http_stream_t *)c;
}

int http_stream_send(http_stream_t *st, pd_obuf_t *chunk) {
    conn_t *c = (conn_t *)st;
    if (c->state != CONN_STREAM || c->reap)
        return PD_ECLOSED;
    if ((uint64_t)c->out_bytes + pd_obuf_len(chunk) > c->srv->cfg.out_max) {
        (*c->srv->n.slow_consumer_closes)++;
        conn_reap(c);
        return PD_ELIMIT;
    }
    return queue_push(c, chunk) ? 0 : PD_ENOMEM;
}

void http_stream_end(http_stream_t *st) {
    conn_t *c = (conn_t *)st;
    if (c->state == CONN_STREAM)
        c->close_after_flush = 1;
    server__mark_pending(c);
}

uint32_t http_stream_backlog(const http_stream_t *st) {
    return ((const conn_t *)st)->out_bytes;
}

bool http_exchange_alive(const http_exchange_t *ex) {
    const conn_t *c = (const conn_t *)ex;
    return c->srv && c->state == CONN_HTTP && !c->reap;
}

const char *http_exchange_peer(const http_exchange_t *ex) {
    static char buf[64];
    const conn_t *c = (const conn_t *)ex;
    if (!c->srv) {
        snprintf(buf, sizeof(buf), "?:0"); /* closed: its socket is gone */
        return buf;
    }
    return conn_peer(c, buf, sizeof(buf));
}

static bool path_is(const http_request_t *req, const char *path) {
    size_t n = strlen(path);
    return req->path_len == n && memcmp(req->path, path, n) == 0;
}

static void handle_upgrade(conn_t *c, const http_request_t *req) {
    server_t *s = c->srv;
    const char *why = NULL;
    int status = ws_handshake_check(req, &s->cfg.origins, &why);
    if (status) {
        (*server__counter(s, "presenced_ws_handshake_failures_total",
                          "WebSocket upgrade requests refused, by HTTP status", "status",
                          status == 405   ? "405"
                          : status == 426 ? "426"
                          : status == 403 ? "403"
                                          : "400"))++;
        char peer[64];
        PD_DEBUG(s->log, "server", "conn %llu (%s): upgrade refused (%d): %s",
                 (unsigned long long)c->id, conn_peer(c, peer, sizeof(peer)), status, why);
        const char *extra = status == 426   ? "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                            : status == 405 ? "Allow: GET\r\n"
                                            : NULL;
        http_fail(c, status, extra);
        return;
    }
    if (s->shutting_down) {
        http_fail(c, 503, "Retry-After: 1\r\n");
        return;
    }
    void *app = NULL;
    if (s->ws.on_upgrade) {
        status = s->ws.on_upgrade(s->ws.ctx, c, req, &app);
        if (status) {
            http_fail(c, status, NULL);
            return;
        }
    }
    const http_header_t *key = http_request_header(req, "Sec-WebSocket-Key");
    char accept[WS_ACCEPT_LEN + 1];
    ws_accept_key(key->value, key->value_len, accept);
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    pd_obuf_t *resp = pd_obuf_from(head, (size_t)n);
    if (!resp) {
        http_fail(c, 503, NULL);
        return;
    }
    queue_push(c, resp);
    pd_obuf_release(resp);
    c->app = app;
    c->upgraded = 1;
    c->state = CONN_WS_OPEN;
    c->last_rx = now_ms(c);
    ws_decoder_init(&c->dec, s->cfg.max_message);
    (*s->n.ws_upgrades)++;
    (*s->n.ws_open)++;
    wheel_schedule(s->wheel, &c->timer, c->last_rx + s->cfg.ws_idle_timeout_ms);
    if (s->ws.on_open)
        s->ws.on_open(s->ws.ctx, c, app);
}

static void handle_request(conn_t *c, const http_request_t *req) {
    server_t *s = c->srv;
    (*s->n.http_requests)++;
    if (path_is(req, s->cfg.ws_path)) {
        handle_upgrade(c, req);
        return;
    }
    /* Upgrade requests to any other path are answered as plain requests (RFC 9110 section
     * 7.8 lets a server ignore Upgrade): no path but ws_path ever changes protocol. */
    c->keep_alive = req->keep_alive;
    c->head_only = req->method == HTTP_HEAD;
    c->awaiting = 1;
    int status = 0;
    uint32_t allow = 0;
    const http_route_t *rt = s->router ? http_router_match(s->router, req, &status, &allow) : NULL;
    if (!rt) {
        char extra[128] = "";
        if (status == 405)
            http_allow_header(allow, extra, sizeof(extra));
        else
            status = 404;
        char body[64];
        int n = snprintf(body, sizeof(body), "%d %s\n", status, http_status_reason(status));
        http_exchange_respond((http_exchange_t *)c, status, "text/plain; charset=utf-8",
                              extra[0] ? extra : NULL, body, (size_t)n);
        return;
    }
    rt->fn(rt->ctx, (http_exchange_t *)c, req);
}

/* Parses HTTP input; returns the bytes used. Stops at an upgrade (the rest is WebSocket). */
static size_t http_input(conn_t *c, uint8_t *data, size_t len) {
    server_t *s = c->srv;
    size_t off = 0;
    while (off < len && c->state == CONN_HTTP && !c->reap && !c->close_after_flush) {
        if (c->out_bytes > s->cfg.out_max / 2) {
            c->paused = 1; /* answers are not being read: stop parsing more requests */
            return off;
        }
        if (c->awaiting) {
            /* Pipelined input behind a request still being answered waits its turn. */
            c->resume = 1;
            uv_read_stop((uv_stream_t *)&c->tcp);
            return off;
        }
        if (!c->http) {
            c->http = http_reqparser_new(&s->cfg.http_limits);
            if (!c->http) {
                conn_reap(c);
                return len;
            }
            wheel_schedule(s->wheel, &c->timer, now_ms(c) + s->cfg.request_timeout_ms);
        }
        const http_request_t *req = NULL;
        int status = 0;
        off += http_reqparser_feed(c->http, (const char *)data + off, len - off, &req, &status);
        if (status) {
            char peer[64];
            PD_DEBUG(s->log, "http", "conn %llu (%s): bad request, answering %d",
                     (unsigned long long)c->id, conn_peer(c, peer, sizeof(peer)), status);
            http_fail(c, status, NULL);
            return len;
        }
        if (http_reqparser_take_continue(c->http)) {
            /* Expect: 100-continue on an acceptable head: the client holds its body back
             * until told to go on (RFC 9110 section 10.1.1). */
            pd_obuf_t *cont =
                pd_obuf_from(HTTP_CONTINUE_RESPONSE, sizeof(HTTP_CONTINUE_RESPONSE) - 1);
            if (cont) {
                queue_push(c, cont);
                pd_obuf_release(cont);
            }
        }
        if (!req)
            continue;
        handle_request(c, req);
        /* A refused upgrade answered through http_fail, which freed the parser: stop here
         * (dereferencing c->http below crashed the daemon on every refused handshake). */
        if (c->state != CONN_HTTP || !c->http)
            break;
        if (!http_reqparser_busy(c->http)) {
            http_reqparser_free(c->http);
            c->http = NULL;
            if (!c->close_after_flush)
                wheel_schedule(s->wheel, &c->timer, now_ms(c) + s->cfg.keepalive_timeout_ms);
        }
    }
    if (c->state == CONN_WS_OPEN) {
        http_reqparser_free(c->http);
        c->http = NULL;
    } else if (c->close_after_flush || c->reap) {
        return len; /* anything after a closing response is ignored */
    }
    return off;
}

/* --- WebSocket --- */

static void ws_fail(conn_t *c, uint16_t code, const char *reason) {
    char key[24];
    snprintf(key, sizeof(key), "%u", code);
    (*server__counter(c->srv, "presenced_ws_protocol_errors_total",
                      "WebSocket connections failed for a protocol violation, by close code",
                      "code", key))++;
    char peer[64];
    PD_DEBUG(c->srv->log, "ws", "conn %llu (%s): failing with %u: %s", (unsigned long long)c->id,
             conn_peer(c, peer, sizeof(peer)), code, reason);
    if (c->state == CONN_WS_OPEN) {
        start_ws_close(c, code, reason, CONN_END_ERROR);
    } else {
        conn_reap(c);
    }
}

static void deliver(conn_t *c, uint8_t *data, size_t len) {
    server_t *s = c->srv;
    (*s->n.ws_messages_in)++;
    if (s->ws.on_message)
        s->ws.on_message(s->ws.ctx, c, c->app, data, len);
}

static const char *decode_reason(uint16_t code) {
    switch (code) {
    case WS_CLOSE_TOO_BIG:
        return "message too big";
    case WS_CLOSE_BAD_DATA:
        return "invalid UTF-8";
    default:
        return "protocol error";
    }
}

/* Decodes frames; returns the bytes used (the rest is an incomplete frame). */
static size_t ws_input(conn_t *c, uint8_t *data, size_t len) {
    server_t *s = c->srv;
    size_t off = 0;
    size_t need = 0;
    while (off < len && (c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING) && !c->reap) {
        /* Backpressure: a client whose answers are not being written out fast enough is not
         * read further until they are; out_max then only stops clients that never read. */
        if (c->out_bytes > s->cfg.out_max / 2) {
            c->paused = 1;
            break;
        }
        if (c->held && c->state == CONN_WS_OPEN)
            break; /* the layer above waits for answers first (conn_hold_input) */
        ws_event_t ev;
        uint16_t code = 0;
        int rc = ws_decode(&c->dec, data + off, len - off, &ev, &need, &code);
        if (rc == PD_EAGAIN)
            break;
        if (rc < 0) {
            ws_fail(c, code, decode_reason(code));
            return len;
        }
        off += (size_t)rc;
        (*s->n.ws_bytes_in) += (uint64_t)rc;
        c->last_rx = now_ms(c);
        switch (ev.type) {
        case WS_EV_DATA:
            if (c->state != CONN_WS_OPEN)
                break; /* section 5.5.1: after our close frame, data is discarded */
            if (ev.opcode == WS_OP_BINARY) {
                (*s->n.binary_refused)++;
                ws_fail(c, WS_CLOSE_UNSUPPORTED, "binary messages are not supported");
                return len;
            }
            if (ev.first && ev.fin) {
                deliver(c, ev.payload, ev.len);
                break;
            }
            /* An empty fragment adds nothing: c->msg may still be NULL, and memcpy to
             * NULL + 0 is undefined (UBSan aborts on it), so it is skipped. */
            if (ev.len && c->msg_len + ev.len > c->msg_cap) {
                size_t cap = c->msg_cap ? c->msg_cap : 1024;
                while (cap < c->msg_len + ev.len)
                    cap *= 2;
                uint8_t *m = realloc(c->msg, cap);
                if (!m) {
                    ws_fail(c, WS_CLOSE_INTERNAL, "out of memory");
                    return len;
                }
                c->msg = m;
                c->msg_cap = (uint32_t)cap;
            }
            if (ev.len) {
                memcpy(c->msg + c->msg_len, ev.payload, ev.len);
                c->msg_len += (uint32_t)ev.len;
            }
            if (ev.fin) {
                /* A message of empty fragments only has no buffer: hand over a valid empty one. */
                deliver(c, c->msg ? c->msg : ev.payload, c->msg_len);
                free(c->msg);
                c->msg = NULL;
                c->msg_len = c->msg_cap = 0;
            }
            break;
        case WS_EV_PING:
            if (c->state == CONN_WS_OPEN) {
                pd_obuf_t *pong = ws_frame_new(WS_OP_PONG, ev.payload, ev.len);
                if (pong && send_checked(c, pong) == 0)
                    queue_push(c, pong);
                pd_obuf_release(pong);
            }
            break;
        case WS_EV_PONG:
            break;
        case WS_EV_CLOSE:
            if (c->state == CONN_WS_OPEN) {
                /* Echo the peer's code (section 5.5.1), then close once it is written. */
                conn_end(c, CONN_END_CLOSED);
                uint16_t echo = ev.close_code == WS_CLOSE_NO_STATUS ? 0 : ev.close_code;
                pd_obuf_t *f = ws_close_frame_new(echo, NULL);
                if (f) {
                    queue_push(c, f);
                    pd_obuf_release(f);
                }
                c->state = CONN_WS_CLOSING;
                c->close_after_flush = 1;
                wheel_schedule(s->wheel, &c->timer, now_ms(c) + s->cfg.close_timeout_ms);
                server__mark_pending(c);
            } else {
                conn_reap(c); /* the answer to our close: handshake complete */
            }
            return len;
        }
    }
    return off;
}

/* Keeps data[0..len) (an incomplete frame or request) for the next read. Only the bytes
 * present are kept, not the size the frame announces: a header alone must not make us
 * reserve a whole message's worth of memory. */
static void keep_input(conn_t *c, const uint8_t *data, size_t len) {
    bool inside = c->in && data >= c->in && data < c->in + c->in_cap;
    if (inside) {
        memmove(c->in, data, len);
        c->in_len = (uint32_t)len;
        return;
    }
    uint8_t *nb = malloc(len);
    if (!nb) {
        conn_reap(c);
        return;
    }
    memcpy(nb, data, len);
    free(c->in);
    c->in = nb;
    c->in_cap = c->in_len = (uint32_t)len;
}

static void conn_process(conn_t *c, uint8_t *data, size_t len) {
    size_t off = 0;
    if (c->state == CONN_HTTP)
        off = http_input(c, data, len);
    if (c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING)
        off += ws_input(c, data + off, len - off);
    if (off < len && !c->reap && c->state != CONN_DEAD && c->state != CONN_LINGER) {
        keep_input(c, data + off, len - off);
        if (c->paused || c->held)
            uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (c->in) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    conn_t *c = h->data;
    buf->base = (char *)c->srv->rbuf;
    buf->len = sizeof(c->srv->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (c->upgraded)
            conn_end(c, CONN_END_DROPPED);
        conn_reap(c);
        return;
    }
    if (c->state == CONN_LINGER || c->state == CONN_STREAM || c->state == CONN_DEAD || c->reap)
        return; /* nothing more is read from these: only EOF matters */
    uint8_t *data = (uint8_t *)buf->base;
    size_t len = (size_t)nread;
    if (c->in_len) {
        /* Complete the kept bytes with the new ones; the frame or request continues. */
        size_t total = (size_t)c->in_len + len;
        if (total > c->in_cap) {
            /* Geometric growth: a large frame arriving in small segments is copied O(n). */
            size_t cap = (size_t)c->in_cap * 2;
            if (cap < total)
                cap = total;
            uint8_t *nb = realloc(c->in, cap);
            if (!nb) {
                conn_reap(c);
                return;
            }
            c->in = nb;
            c->in_cap = (uint32_t)cap;
        }
        memcpy(c->in + c->in_len, data, len);
        c->in_len = (uint32_t)total;
        data = c->in;
        len = total;
    }
    conn_process(c, data, len);
}

static void conn_on_timer(wheel_timer_t *t, uint64_t now) {
    conn_t *c = conn_of_timer(t);
    server_t *s = c->srv;
    switch (c->state) {
    case CONN_HTTP:
        if ((c->http && http_reqparser_busy(c->http)) || (!c->http && c->in_len && !c->awaiting)) {
            (*s->n.request_timeouts)++;
            http_fail(c, 408, NULL);
        } else if (c->awaiting || c->close_after_flush) {
            wheel_schedule(s->wheel, t, now + s->cfg.close_timeout_ms);
        } else {
            conn_reap(c);
        }
        break;
    case CONN_WS_OPEN: {
        uint64_t due = c->last_rx + s->cfg.ws_idle_timeout_ms;
        if (c->held && !c->paused)
            due = now + s->cfg.ws_idle_timeout_ms; /* its frames wait unread: not silent */
        if (due > now) {
            wheel_schedule(s->wheel, t, due); /* activity since arming: check again later */
            break;
        }
        if (c->paused) {
            /* Not read from because it does not read what it asked for: a slow consumer.
             * Its unsent output goes; the close frame waits (close_timeout) for it to read. */
            (*s->n.slow_consumer_closes)++;
            queue_drop_unsent(c);
            start_ws_close(c, WS_CLOSE_POLICY, "output queue full: client too slow",
                           CONN_END_ERROR);
            c->paused = 0;
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read); /* for its close frame */
            break;
        }
        (*s->n.idle_timeouts)++;
        start_ws_close(c, CLOSE_CODE_IDLE, "no heartbeat", CONN_END_TIMEOUT);
        conn_reap(c); /* a silent peer is not waited for */
        break;
    }
    default:
        conn_reap(c);
        break;
    }
}

/* Counts c against its address's connections; false (after a best-effort 429) when the
 * address has max_per_ip open already. An address that cannot be read is not counted. */
static bool peer_admitted(server_t *s, conn_t *c) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return true;
    int rc = peer_limit_take(s->peers, (const struct sockaddr *)&ss, &c->peer_slot);
    if (rc != PD_ELIMIT && rc != PD_ENOMEM)
        return true;
    (*s->n.refused_per_ip)++;
    static const char busy[] = "HTTP/1.1 429 Too Many Requests\r\nServer: presenced\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 39\r\n"
                               "Connection: close\r\n\r\ntoo many connections from this address\n";
    uv_buf_t b = uv_buf_init((char *)busy, sizeof(busy) - 1);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* the socket is new: it has room */
    return false;
}

void server__on_connection(uv_stream_t *listener, int status) {
    server_t *s = listener->data;
    if (status < 0) {
        PD_WARN(s->log, "server", "accept failed: %s", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->srv = s;
    c->id = ++s->next_id;
    s->nconns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        c->state = CONN_DEAD;
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    (*s->n.accepted)++;
    wheel_timer_init(&c->timer, conn_on_timer);
    if (s->nconns > s->cfg.max_connections || s->shutting_down) {
        (*s->n.refused)++;
        c->state = CONN_DEAD;
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    if (s->peers && !peer_admitted(s, c)) {
        c->state = CONN_DEAD;
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = CONN_HTTP;
    wheel_schedule(s->wheel, &c->timer, uv_now(s->loop) + s->cfg.request_timeout_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}
