/* Internals shared by server.c (listener, flushing, shutdown) and conn.c (one connection). */
#ifndef PD_SERVER_INTERNAL_H
#define PD_SERVER_INTERNAL_H

#include "server/conn.h"
#include "server/peer_limit.h"
#include "server/server.h"

#define SERVER_READ_BUF    (64 * 1024)  /* the loop's one read buffer */
#define SERVER_IOV_MAX     64           /* buffers per write call */
#define SERVER_FLUSH_MAX   (256 * 1024) /* bytes per connection per loop iteration */
#define SERVER_QNODE_CACHE 4096         /* queue nodes kept for reuse */

struct server_counters {
    uint64_t *accepted, *refused, *http_requests, *ws_upgrades, *ws_messages_in, *ws_bytes_in,
        *ws_frames_out, *bytes_out, *slow_consumer_closes, *request_timeouts, *idle_timeouts,
        *binary_refused, *refused_per_ip;
    int64_t *ws_open;
};

struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_check_t flusher; /* after each poll: flush output, reap closed connections */
    uv_timer_t shutdown_timer;
    server_config_t cfg;
    pd_log_t *log;
    pd_metrics_t *metrics;
    wheel_t *wheel;
    const http_router_t *router;
    server_ws_handlers_t ws;
    conn_t *pending; /* connections to flush or reap */
    struct conn_qnode *free_nodes;
    uint32_t nfree_nodes;
    uint64_t next_id;
    uint64_t nconns; /* TCP connections open (not the closed ones kept for an answer owed) */
    struct server_counters n;
    uint16_t shutdown_code;
    char shutdown_reason[64];
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
    peer_limit_t *peers; /* connections per client address, with cfg.max_per_ip */
    unsigned listening : 1, shutting_down : 1;
    uint8_t rbuf[SERVER_READ_BUF];
};

/* conn.c */
void server__on_connection(uv_stream_t *listener, int status);
void server__flush_conn(conn_t *c);
void server__close_for_shutdown(conn_t *c);
void server__reap_now(conn_t *c);

/* server.c */
void server__mark_pending(conn_t *c);
struct conn_qnode *server__node_get(server_t *s);
void server__node_put(server_t *s, struct conn_qnode *n);
void server__conn_gone(server_t *s);
uint64_t *server__counter(server_t *s, const char *name, const char *help, const char *label,
                          const char *value);

#endif
