/* One client connection, and the memory budget that makes millions of them affordable.
 *
 * Budget: an idle, upgraded WebSocket costs at most CONN_IDLE_BUDGET bytes of user space:
 * this struct (libuv's uv_tcp_t is 248 of it), the allocator's header, and whatever the layer
 * above keeps per connection (the engine's session, which asserts its own share). An idle
 * connection owns no read buffer (input goes to the server's one buffer and only an
 * incomplete frame is kept), no parser (freed at the upgrade), no timer handle (a wheel entry
 * is embedded) and no output (queued frames are references to shared buffers, freed once
 * written).
 */
#ifndef PD_SERVER_CONN_H
#define PD_SERVER_CONN_H

#include <assert.h>
#include <stdint.h>
#include <uv.h>

#include "http/request.h"
#include "server/server.h"
#include "util/wheel.h"
#include "ws/frame.h"

#define CONN_IDLE_BUDGET     1024 /* bytes per idle upgraded connection, all layers together */
#define CONN_STRUCT_BUDGET   480  /* of which this struct */
#define CONN_MALLOC_OVERHEAD 16   /* glibc's chunk header per allocation */
#define CONN_APP_BUDGET      (CONN_IDLE_BUDGET - CONN_STRUCT_BUDGET - 2 * CONN_MALLOC_OVERHEAD)

enum conn_state {
    CONN_HTTP,       /* reading HTTP requests */
    CONN_WS_OPEN,    /* upgraded, exchanging messages */
    CONN_WS_CLOSING, /* a close frame was sent: waiting for the peer's, or for the flush */
    CONN_LINGER,     /* final output sent and write side shut: discarding input until EOF */
    CONN_STREAM,     /* an open-ended HTTP answer (server-sent events): output only */
    CONN_DEAD        /* uv_close called; freed in the close callback */
};

/* A queued reference to an output buffer. */
struct conn_qnode {
    struct conn_qnode *next;
    pd_obuf_t *buf;
    struct conn_qnode **slot; /* a coalescing sender's pointer to this node, or NULL */
};

struct conn {
    uv_tcp_t tcp; /* handle.data points to this struct */
    server_t *srv;
    void *app;              /* the upper layer's state, from on_upgrade */
    http_reqparser_t *http; /* while an HTTP request is being read; NULL otherwise */
    uint8_t *in;            /* unconsumed input (an incomplete frame or request) */
    uint8_t *msg;           /* fragments of a fragmented message so far */
    struct conn_qnode *out_head, *out_tail;
    conn_t *next_pending; /* in the server's list of connections to flush or reap */
    wheel_timer_t timer;  /* the one deadline of the current state */
    uint64_t id;
    uint64_t last_rx;        /* ms (loop time) of the last complete inbound frame */
    uint32_t in_len, in_cap; /* bytes */
    uint32_t msg_len, msg_cap;
    uint32_t out_bytes; /* queued and not yet written */
    uint32_t out_off;   /* bytes of out_head already written */
    ws_decoder_t dec;
    uint16_t writing;      /* nodes at the head handed to an unfinished uv_write */
    uint8_t state;         /* enum conn_state */
    uint8_t end_why;       /* enum conn_end, once the WebSocket is over */
    unsigned pending : 1;  /* in the pending list */
    unsigned upgraded : 1; /* on_upgrade accepted: on_close is owed */
    unsigned ended : 1;    /* the WebSocket is over: on_close is to be (or was) called */
    unsigned notified : 1; /* on_close was called */
    unsigned reap : 1;     /* to be closed and freed at the next flush */
    unsigned close_after_flush : 1;
    unsigned awaiting : 1;   /* an HTTP handler has not answered yet */
    unsigned keep_alive : 1; /* the request being answered allows keep-alive */
    unsigned head_only : 1;  /* the request being answered is HEAD */
    unsigned resume : 1;     /* re-read buffered input at the next flush (after a late answer) */
    unsigned paused : 1;     /* reading stopped until the output backlog drains */
    unsigned held : 1;       /* reading stopped by the layer above (calls in flight) */
    uint32_t peer_slot;      /* its address's count in server.peers (0: not counted) */
};

static_assert(sizeof(struct conn) <= CONN_STRUCT_BUDGET, "struct conn over its memory budget");

#endif
