/* The listener, the per-iteration flush of pending output, and shutdown.
 *
 * Output is never written from inside the code that produced it: producers queue references
 * and mark the connection pending; once per loop iteration, after all I/O callbacks, the
 * check handle flushes every pending connection with uv_try_write (falling back to uv_write
 * only when the socket is full) and reaps the connections marked for closing. So one event
 * that fans out to thousands of connections costs one write call per connection, and no
 * connection is ever freed inside its own callback stack.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"
#include "util/error.h"

static uint64_t dummy_counter;
static int64_t dummy_gauge;

void server_config_default(server_config_t *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    struct sockaddr_in *in = (struct sockaddr_in *)&cfg->listen_addr;
    uv_ip4_addr("127.0.0.1", 7070, in);
    cfg->ws_path = "/presence";
    http_limits_default(&cfg->http_limits);
    cfg->max_message = 64 * 1024;
    cfg->out_max = 1024 * 1024;
    cfg->max_connections = 1000000;
    cfg->request_timeout_ms = 10000;
    cfg->keepalive_timeout_ms = 60000;
    cfg->ws_idle_timeout_ms = 30000;
    cfg->close_timeout_ms = 5000;
}

uint64_t *server__counter(server_t *s, const char *name, const char *help, const char *label,
                          const char *value) {
    uint64_t *p = s->metrics ? pd_metrics_counter(s->metrics, name, help, label, value) : NULL;
    return p ? p : &dummy_counter;
}

static double gauge_conns(void *ctx) {
    return (double)((server_t *)ctx)->nconns;
}

static void register_metrics(server_t *s) {
    struct server_counters *n = &s->n;
    n->accepted = server__counter(s, "presenced_connections_accepted_total",
                                  "TCP connections accepted", NULL, NULL);
    n->refused = server__counter(s, "presenced_connections_refused_total",
                                 "TCP connections refused at max_connections", NULL, NULL);
    n->refused_per_ip =
        server__counter(s, "presenced_connections_refused_per_ip_total",
                        "TCP connections refused (429) at max_connections_per_ip", NULL, NULL);
    n->http_requests =
        server__counter(s, "presenced_http_requests_total", "HTTP requests parsed", NULL, NULL);
    n->ws_upgrades = server__counter(s, "presenced_ws_upgrades_total",
                                     "WebSocket upgrades accepted", NULL, NULL);
    n->ws_messages_in = server__counter(s, "presenced_ws_messages_in_total",
                                        "WebSocket messages received", NULL, NULL);
    n->ws_bytes_in = server__counter(s, "presenced_ws_bytes_in_total",
                                     "WebSocket frame bytes received", NULL, NULL);
    n->ws_frames_out = server__counter(s, "presenced_out_buffers_total",
                                       "Output buffers queued to connections", NULL, NULL);
    n->bytes_out =
        server__counter(s, "presenced_bytes_out_total", "Bytes written to clients", NULL, NULL);
    n->slow_consumer_closes = server__counter(
        s, "presenced_slow_consumer_closes_total",
        "Connections closed because their queued output passed out_max", NULL, NULL);
    n->request_timeouts =
        server__counter(s, "presenced_http_request_timeouts_total",
                        "HTTP requests that did not arrive in time (408)", NULL, NULL);
    n->idle_timeouts = server__counter(s, "presenced_ws_idle_timeouts_total",
                                       "WebSockets closed for lack of inbound frames", NULL, NULL);
    n->binary_refused = server__counter(s, "presenced_ws_binary_refused_total",
                                        "Binary messages refused with 1003", NULL, NULL);
    int64_t *g = s->metrics ? pd_metrics_gauge(s->metrics, "presenced_websockets_open",
                                               "Open WebSocket connections", NULL, NULL)
                            : NULL;
    n->ws_open = g ? g : &dummy_gauge;
    if (s->metrics)
        pd_metrics_gauge_fn(s->metrics, "presenced_connections_open",
                            "Open TCP connections (HTTP and WebSocket)", NULL, NULL, gauge_conns,
                            s);
}

static void on_check(uv_check_t *h) {
    server_t *s = h->data;
    /* Handlers run while flushing (on_close) may mark more connections: drain until empty. */
    while (s->pending) {
        conn_t *c = s->pending;
        s->pending = c->next_pending;
        c->next_pending = NULL;
        c->pending = 0;
        server__flush_conn(c);
    }
}

server_t *server_new(uv_loop_t *loop, const server_config_t *cfg, pd_log_t *log,
                     pd_metrics_t *metrics, wheel_t *wheel, const http_router_t *router,
                     const server_ws_handlers_t *ws) {
    server_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->cfg = *cfg;
    s->log = log;
    s->metrics = metrics;
    s->wheel = wheel;
    s->router = router;
    if (ws)
        s->ws = *ws;
    if (cfg->max_per_ip && !(s->peers = peer_limit_new(cfg->max_per_ip))) {
        free(s);
        return NULL;
    }
    register_metrics(s);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    uv_check_init(loop, &s->flusher);
    s->flusher.data = s;
    uv_timer_init(loop, &s->shutdown_timer);
    s->shutdown_timer.data = s;
    return s;
}

int server_listen(server_t *s) {
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&s->cfg.listen_addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 4096, server__on_connection);
    if (rc) {
        PD_ERROR(s->log, "server", "cannot listen: %s", uv_strerror(rc));
        return rc;
    }
    s->listening = 1;
    uv_check_start(&s->flusher, on_check);
    char host[64] = "?";
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, host + 1, sizeof(host) - 3);
        host[0] = '[';
        strcat(host, "]");
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
    }
    PD_INFO(s->log, "server", "listening on http://%s:%d/ (WebSocket at ws://%s:%d%s)", host,
            server_port(s), host, server_port(s), s->cfg.ws_path);
    return 0;
}

int server_port(const server_t *s) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len))
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

uint64_t server_connection_count(const server_t *s) {
    return s->nconns;
}

void server__mark_pending(conn_t *c) {
    if (c->pending)
        return;
    server_t *s = c->srv;
    c->pending = 1;
    c->next_pending = s->pending;
    s->pending = c;
}

struct conn_qnode *server__node_get(server_t *s) {
    struct conn_qnode *n = s->free_nodes;
    if (n) {
        s->free_nodes = n->next;
        s->nfree_nodes--;
        return n;
    }
    return malloc(sizeof(*n));
}

void server__node_put(server_t *s, struct conn_qnode *n) {
    if (s->nfree_nodes >= SERVER_QNODE_CACHE) {
        free(n);
        return;
    }
    n->next = s->free_nodes;
    s->free_nodes = n;
    s->nfree_nodes++;
}

static void finish_shutdown(server_t *s) {
    if (!s->shutdown_done)
        return;
    void (*done)(void *) = s->shutdown_done;
    s->shutdown_done = NULL;
    uv_timer_stop(&s->shutdown_timer);
    uv_check_stop(&s->flusher);
    done(s->shutdown_arg);
}

void server__conn_gone(server_t *s) {
    s->nconns--;
    if (s->shutting_down && s->nconns == 0)
        finish_shutdown(s);
}

static void walk_shutdown(uv_handle_t *h, void *arg) {
    server_t *s = arg;
    if (h->type != UV_TCP || h == (uv_handle_t *)&s->listener || uv_is_closing(h))
        return;
    conn_t *c = h->data;
    if (c && c->srv == s)
        server__close_for_shutdown(c);
}

static void walk_force(uv_handle_t *h, void *arg) {
    server_t *s = arg;
    if (h->type != UV_TCP || h == (uv_handle_t *)&s->listener || uv_is_closing(h))
        return;
    conn_t *c = h->data;
    if (c && c->srv == s)
        server__reap_now(c);
}

static void on_shutdown_timeout(uv_timer_t *t) {
    server_t *s = t->data;
    PD_WARN(s->log, "server", "%llu connection(s) did not close in time; dropping them",
            (unsigned long long)s->nconns);
    uv_walk(s->loop, walk_force, s);
    /* Closing handles completes on the next loop turn; report done now: nothing more will be
     * sent or received. */
    finish_shutdown(s);
}

void server_shutdown(server_t *s, uint16_t close_code, const char *reason, void (*done)(void *arg),
                     void *arg) {
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    s->shutdown_code = close_code;
    snprintf(s->shutdown_reason, sizeof(s->shutdown_reason), "%s", reason ? reason : "");
    s->shutdown_done = done;
    s->shutdown_arg = arg;
    if (s->listening && !uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, NULL);
    PD_INFO(s->log, "server", "shutting down: closing %llu connection(s) with %u",
            (unsigned long long)s->nconns, close_code);
    uv_walk(s->loop, walk_shutdown, s);
    if (s->nconns == 0) {
        finish_shutdown(s);
        return;
    }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, s->cfg.close_timeout_ms, 0);
}

void server_close(server_t *s) {
    /* A shutdown still waiting for connections (a second signal forces the exit) is over: its
     * done callback must not run from the close callbacks below, or the caller would close
     * these handles twice (libuv aborts on that). */
    s->shutdown_done = NULL;
    uv_walk(s->loop, walk_force, s);
    if (!uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, NULL);
    if (!uv_is_closing((uv_handle_t *)&s->flusher))
        uv_close((uv_handle_t *)&s->flusher, NULL);
    if (!uv_is_closing((uv_handle_t *)&s->shutdown_timer))
        uv_close((uv_handle_t *)&s->shutdown_timer, NULL);
}

void server_free(server_t *s) {
    if (!s)
        return;
    while (s->free_nodes) {
        struct conn_qnode *n = s->free_nodes;
        s->free_nodes = n->next;
        free(n);
    }
    peer_limit_free(s->peers);
    free(s);
}
