/* The network server: one listener on the loop, the connections it accepts, HTTP/1.1 on each
 * until a WebSocket upgrade, then RFC 6455 frames; batched writes of shared output buffers;
 * timeouts on the timing wheel; graceful shutdown.
 *
 * The layers above plug in through an HTTP router (for plain requests) and a table of
 * WebSocket callbacks (for upgraded connections), and talk back through conn_* below.
 */
#ifndef PD_SERVER_SERVER_H
#define PD_SERVER_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "http/request.h"
#include "http/router.h"
#include "log.h"
#include "metrics.h"
#include "util/obuf.h"
#include "util/wheel.h"
#include "ws/handshake.h"

typedef struct server server_t;
typedef struct conn conn_t;

/* Why a WebSocket connection ended, as told to on_close. */
enum conn_end {
    CONN_END_CLOSED,  /* a close handshake, started by either side */
    CONN_END_DROPPED, /* the TCP connection ended without a close handshake */
    CONN_END_TIMEOUT, /* no inbound frame for ws_idle_timeout */
    CONN_END_ERROR,   /* a protocol violation or an output overflow; we closed it */
    CONN_END_SHUTDOWN /* the server is shutting down */
};

typedef struct server_ws_handlers {
    void *ctx;
    /* Decides on a valid upgrade request to the WebSocket path. Returns 0 to accept, after
     * setting *app (the upper layer's state for the connection, given back in every call), or
     * the HTTP status to refuse with (401, 403, 429, 503). Must not send on c yet. */
    int (*on_upgrade)(void *ctx, conn_t *c, const http_request_t *req, void **app);
    /* Called once the 101 response is queued: the connection may be sent to. */
    void (*on_open)(void *ctx, conn_t *c, void *app);
    /* A complete text message, valid UTF-8; data is valid only during the call (it may be
     * modified in place). Binary messages are refused by the server with 1003. */
    void (*on_message)(void *ctx, conn_t *c, void *app, uint8_t *data, size_t len);
    /* The connection is over for the upper layer: c must not be used after this returns.
     * Called once for every accepted upgrade. */
    void (*on_close)(void *ctx, conn_t *c, void *app, enum conn_end why);
} server_ws_handlers_t;

typedef struct server_config {
    struct sockaddr_storage listen_addr;
    const char *ws_path;       /* "/presence" */
    ws_origin_list_t origins;  /* allowed Origin values; empty = any */
    http_limits_t http_limits; /* request head, URI, headers, body */
    uint32_t max_message;      /* bytes of a WebSocket message (default 64 KiB) -> 1009 */
    uint32_t out_max;          /* bytes of queued output past which a connection is closed */
    uint32_t max_connections;  /* open connections past which new ones are refused */
    uint32_t max_per_ip; /* open connections per client address (IPv6: per /64); 0: no limit */
    uint32_t request_timeout_ms;   /* a request must arrive whole within this (408) */
    uint32_t keepalive_timeout_ms; /* an idle keep-alive connection is closed after this */
    uint32_t ws_idle_timeout_ms;   /* a WebSocket with no inbound frame for this is closed */
    uint32_t close_timeout_ms;     /* wait for the peer's close frame, or lingering reads */
} server_config_t;

/* Fills in the defaults above (listen address 127.0.0.1:7070). */
void server_config_default(server_config_t *cfg);

/* New server on loop. Borrows everything it is given until server_free. NULL on ENOMEM. */
server_t *server_new(uv_loop_t *loop, const server_config_t *cfg, pd_log_t *log,
                     pd_metrics_t *metrics, wheel_t *wheel, const http_router_t *router,
                     const server_ws_handlers_t *ws);

/* Binds and listens; logs the URL. 0 or a libuv error code (negative errno). */
int server_listen(server_t *s);

/* The bound port (useful when listening on port 0). */
int server_port(const server_t *s);

/* Stops accepting, closes WebSockets with close_code and reason (1001 on shutdown, 1012 for
 * "reconnect elsewhere") and plain HTTP connections once idle, then calls done(arg) when the
 * last connection is gone or after close_timeout_ms, whichever comes first. */
void server_shutdown(server_t *s, uint16_t close_code, const char *reason, void (*done)(void *arg),
                     void *arg);

/* Closes every handle of the server (listener, connections, internal handles). Run the loop
 * until it has no more handles before server_free. */
void server_close(server_t *s);

/* Frees the server, after server_close and a loop run that let the close callbacks finish. */
void server_free(server_t *s);

/* Open connections (HTTP and WebSocket). */
uint64_t server_connection_count(const server_t *s);

/* --- Connections, for the layers above --- */

/* Queues a sealed WebSocket frame (or any output) for c; takes a new reference to frame.
 * Returns 0, PD_ECLOSED when c is closing (nothing queued), or PD_ELIMIT when queued output
 * passed out_max: c is then closed with 1008 and must be treated as gone. */
int conn_send(conn_t *c, pd_obuf_t *frame);

/* Coalescing send: *slot names this sender's frame while it is still queued and unsent. If it
 * is, that frame is replaced by the new one in place (latest wins, no new queue entry) and 1
 * is returned; otherwise the frame is queued, *slot set and 0 returned. The server clears
 * *slot once the frame starts to be written or c ends, so *slot must stay valid (and at a
 * fixed address) until then or until conn_unslot. Errors as conn_send. */
typedef struct conn_qnode conn_slot_t;
int conn_send_coalesced(conn_t *c, pd_obuf_t *frame, conn_slot_t **slot);

/* Forgets *slot (its frame stays queued) before the memory holding it goes away. */
void conn_unslot(conn_slot_t **slot);

/* Starts the close handshake with code and reason (unsent output goes first); on_close
 * follows when it completes or times out. Harmless when already closing. */
void conn_close_ws(conn_t *c, uint16_t code, const char *reason);

/* Stops (hold) or restarts (!hold) reading c's input for the layer above, e.g. while a client
 * has as many calls in flight as it may: its later messages wait in the socket (and TCP pushes
 * back on the client) until answers come back. Input already buffered is processed after the
 * release, in order. A held connection is not timed out for silence (its frames are unread,
 * not missing). Harmless on a closing connection. */
void conn_hold_input(conn_t *c, bool hold);

/* Loop time (ms) of the last complete frame received: the connection's liveness. */
uint64_t conn_last_rx(const conn_t *c);

/* Bytes queued and not yet written. */
uint32_t conn_out_bytes(const conn_t *c);

/* Server-assigned connection number, unique for the process lifetime. */
uint64_t conn_id(const conn_t *c);

/* The client's address as "ip:port". */
const char *conn_peer(const conn_t *c, char *buf, size_t size);

#endif
