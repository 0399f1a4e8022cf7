/* The WebSocket application: identifies each connection at the upgrade, turns its messages
 * (decoded and validated by proto/) into engine requests, and answers them (ack, error,
 * snapshots). It is the only place that knows both the wire format and the engine.
 */
#ifndef PD_DISPATCH_H
#define PD_DISPATCH_H

#include <stdbool.h>

#include "auth/token.h"
#include "engine/engine.h"
#include "rooms/rooms.h"
#include "log.h"
#include "metrics.h"
#include "server/server.h"
#include "util/clock.h"

typedef struct dispatch dispatch_t;

typedef struct dispatch_config {
    bool dev_auth;               /* trust ?user=ID (development only) */
    const auth_config_t *auth;   /* tokens (alg NONE: not accepted); borrowed */
    wheel_t *wheel;              /* token expiry timers */
    uint32_t heartbeat_ttl_ms;   /* told to clients in the welcome message */
    uint32_t max_ids;            /* user ids per request */
    uint32_t max_conns_per_user; /* open connections of one user on this node (0: no limit) */
    /* Messages per connection: a token bucket of rate_burst messages refilled at rate_per_sec
     * (0: no limit); a message that changes or reads the store takes rate_change_cost tokens,
     * a heartbeat, ping, activity, cursor or typing one. */
    uint32_t rate_per_sec;
    uint32_t rate_burst;
    uint32_t rate_change_cost;
} dispatch_config_t;

/* New dispatcher over engine and rooms. Borrows everything until dispatch_free. NULL on
 * ENOMEM. */
dispatch_t *dispatch_new(const dispatch_config_t *cfg, engine_t *engine, rooms_t *rooms,
                         const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics);
void dispatch_free(dispatch_t *d);

/* Fills in the server's WebSocket callbacks, bound to d. */
void dispatch_ws_handlers(dispatch_t *d, server_ws_handlers_t *h);

/* The engine's view of a connection: conn_* of the server. */
extern const engine_client_ops_t dispatch_client_ops;

/* The engine's encoders: the protocol's presence_update frames. */
extern const engine_codec_t dispatch_codec;

/* The rooms module's encoders: the protocol's room events. */
extern const rooms_codec_t dispatch_rooms_codec;

#endif
