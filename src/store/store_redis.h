/* The Redis store: users' and rooms' shared state in Redis 7 (standalone or Cluster), so
 * that many presenced nodes behind any load balancer act as one (ARCHITECTURE.md section 5).
 *
 * - Each change is one Lua script run (EVALSHA; reloaded with EVAL on NOSCRIPT) on the
 *   user's or room's keys, which share a hash tag ({u:ID}, {r:NAME}): it updates sessions or
 *   members, recomputes the aggregate, and when something visible changed stores it and
 *   SPUBLISHes it on the user's or room's channel. Heartbeats send nothing: liveness is
 *   checked by each node for its own connections.
 * - Nodes SSUBSCRIBE to the channels of the users and rooms their connections watch
 *   (counted: the first watch subscribes, the last unwatch unsubscribes).
 * - Each node keeps a lease key (refreshed a few times per lease TTL) and indexes the
 *   sessions and room connections it registered; a node whose lease expired is swept by a
 *   survivor holding the sweep lock: its sessions end (offline published) and its room
 *   connections leave with reason timeout.
 * - Redis unreachable: commands that change state wait (bounded) and are sent when it is
 *   back; reads fail (PD_EUNAVAIL); the node stays up for its connections and reports not
 *   ready; when Redis is back it registers every session and room connection again.
 * - Seed compatibility (optional): the seed's keys presence:ID (hash) and
 *   presence:heartbeat:ID (TTL) are kept and changes published on presence:updates in the
 *   seed's JSON, at the cost of a write per heartbeat.
 */
#ifndef PD_STORE_REDIS_H
#define PD_STORE_REDIS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "log.h"
#include "metrics.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/wheel.h"

typedef struct store_redis_config {
    bool cluster;
    const char *const *seeds; /* "host:port"; one for standalone (borrowed during new) */
    size_t nseeds;
    const char *node_id;   /* this node's id (letters, digits, - and _) */
    uint32_t lease_ttl_ms; /* default 10000 */
    uint32_t timeout_ms;   /* connect and command timeout, default 2000 */
    bool seed_compat;
    uint32_t heartbeat_ttl_ms; /* seed compatibility: the TTL of presence:heartbeat:ID */
} store_redis_config_t;

/* New Redis store; starts connecting. NULL after writing why to err. */
store_t *store_redis_new(uv_loop_t *loop, wheel_t *wheel, const pd_clock_t *clock,
                         const store_redis_config_t *cfg, pd_log_t *log, pd_metrics_t *metrics,
                         FILE *err);

/* Parses "redis://host:port" (or "host:port") into out ("host:port"). 0 or -1. */
int store_redis_parse_url(const char *url, char *out, size_t out_size);

#endif
