/* Routing commands and sharded subscriptions to the right Redis: one standalone server, or
 * the masters of a Redis Cluster.
 *
 * Cluster: the slot of a key is CRC16 of its hash tag ({...}) modulo 16384; the slot map
 * comes from CLUSTER SHARDS (CLUSTER SLOTS on servers without it) and is refreshed every
 * 10 s and whenever a reply says it is stale: MOVED updates the slot and resends, ASK sends
 * ASKING then the command once to the node named, TRYAGAIN and CLUSTERDOWN are retried with
 * backoff. Each master has a command connection and, when something is subscribed there, a
 * pub/sub connection.
 *
 * Delivery is at least once: a command whose connection dropped before its reply is resent
 * when the node is back (at most 4 attempts), so the scripts sent through here are written
 * to be safe to repeat. While no route is ready commands wait in a bounded queue (then fail
 * with PD_EUNAVAIL).
 *
 * Sharded subscriptions (SSUBSCRIBE) are remembered by channel and re-issued after a
 * reconnect or when the server reports them gone (an unsolicited sunsubscribe: the slot
 * moved, or a MOVED refusal), on whichever master then owns the channel's slot. Subscribes
 * made in one loop iteration go out together, one SSUBSCRIBE per master and slot. A channel
 * counts as subscribed once the server confirmed it (redis_router_subscribing).
 */
#ifndef PD_STORE_REDIS_ROUTER_H
#define PD_STORE_REDIS_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "store/redis_conn.h"
#include "util/wheel.h"

#define REDIS_SLOTS    16384
#define REDIS_WAIT_MAX 100000 /* commands waiting for a route */

typedef struct redis_router redis_router_t;

typedef struct redis_router_events {
    void *ctx;
    /* The router became ready (every slot has a master whose connection is up) or stopped
     * being so. */
    void (*on_ready)(void *ctx, bool ready);
    /* A message on a subscribed channel. */
    void (*on_message)(void *ctx, const char *channel, size_t clen, const char *payload,
                       size_t plen);
    /* A channel is subscribed again after a reconnect or a slot move: what was published on
     * it in between was lost. */
    void (*on_resubscribed)(void *ctx, const char *channel, size_t clen);
} redis_router_events_t;

/* seeds: "host:port" of the standalone server, or of some cluster nodes (borrowed during
 * the call). NULL on ENOMEM or a malformed seed. */
redis_router_t *redis_router_new(uv_loop_t *loop, wheel_t *wheel, bool cluster,
                                 const char *const *seeds, size_t nseeds, uint32_t timeout_ms,
                                 const redis_router_events_t *ev, pd_log_t *log);
void redis_router_start(redis_router_t *r);

/* Sends a command for the slot of key (a key of the command, or any string with the same
 * hash tag); cb gets the reply (an error reply too) or err (PD_EUNAVAIL, PD_ETIMEDOUT).
 * argv is copied. 0 or PD_ENOMEM / PD_EUNAVAIL (queue full) / PD_ECLOSED (r NULL: the
 * router was closed); cb is called only after 0. Every function here takes a NULL router as
 * a closed one. */
int redis_router_call(redis_router_t *r, const char *key, size_t klen, int argc, const char **argv,
                      const size_t *argvlen, redis_reply_cb cb, void *arg);

/* Scripts every command connection loads (SCRIPT LOAD) as its first commands each time it
 * comes up, before anything queued: an EVALSHA then never meets NOSCRIPT after a restart or
 * on a new cluster node, whose EVAL resend would run after commands sent later (a user's
 * second change before their first). texts[i] (len[i] bytes) are borrowed until the router is
 * closed. Set before redis_router_start. */
void redis_router_preload(redis_router_t *r, const char *const *texts, const size_t *lens,
                          size_t n);

/* Sends a command to every master (e.g. SCRIPT LOAD); cb is called once per master. Returns
 * how many it was sent to. */
int redis_router_broadcast(redis_router_t *r, int argc, const char **argv, const size_t *argvlen,
                           redis_reply_cb cb, void *arg);

/* Subscribes (SSUBSCRIBE) to channel until unsubscribed, across reconnects and slot moves. */
int redis_router_subscribe(redis_router_t *r, const char *channel, size_t len);
void redis_router_unsubscribe(redis_router_t *r, const char *channel, size_t len);

/* True while channel is subscribed but the server has not confirmed it yet (first
 * subscribe, reconnect, slot move): a message published now may not reach us. */
bool redis_router_subscribing(redis_router_t *r, const char *channel, size_t len);

bool redis_router_ready(const redis_router_t *r);
uint64_t redis_router_subscriptions(const redis_router_t *r);

/* The hash slot of key (CRC16 of its hash tag). */
uint16_t redis_slot(const char *key, size_t len);

/* Fails every call waiting or in flight (their callbacks run now, with PD_EUNAVAIL) and
 * frees the router. */
void redis_router_close(redis_router_t *r);

#endif
