/* Webhooks: POSTs of user online/offline and room occupied/vacated events to the configured
 * URLs, batched, signed, retried, from a bounded queue.
 *
 * Events come from the events hub (events/events.h): a presence change from offline to
 * anything else is "user.online", to offline "user.offline"; a member_joined that makes a
 * room's count 1 is "room.occupied", a member_left that makes it 0 "room.vacated". They are
 * batched per URL: a batch is sent when it holds max_batch events or batch_ms after its first
 * event, whichever comes first, as one JSON body:
 *   {"events":[{"type":"user.online","user_id":"alice","status":"online",
 *               "prev_status":"offline","at":1764..},
 *              {"type":"room.vacated","channel":"doc:1","user_id":"bob","count":0,
 *               "at":1764..}, ...]}
 * ("at": epoch seconds, to the millisecond; in room events "user_id" is the member whose join
 * or leave changed the occupancy)
 * with "Content-Type: application/json", "X-Presenced-Signature: sha256=<hex HMAC-SHA256 of
 * the body with the secret>" and "X-Presenced-Delivery: <id>" (the same on retries).
 * A 2xx answer delivers it; anything else (status, connection error, timeout) is retried
 * with exponential backoff (retry_base_ms doubling, jittered, up to retry_max_ms) at most
 * max_attempts times, then dropped and counted. The queue holds at most queue_max events per
 * URL; past that new events are dropped and counted, never blocking the loop.
 *
 * HTTP is libcurl's multi-socket API driven by the libuv loop: no thread, no blocking call
 * (host names are resolved by libcurl's own asynchronous resolver). Redirects are not
 * followed, only http and https are spoken, and proxies from the environment are ignored.
 */
#ifndef PD_WEBHOOKS_H
#define PD_WEBHOOKS_H

#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "events/events.h"
#include "log.h"
#include "metrics.h"
#include "util/clock.h"

#define WEBHOOKS_URLS_MAX 8

typedef struct webhooks webhooks_t;

typedef struct webhooks_config {
    const char *const *urls; /* http:// or https:// URLs; borrowed during webhooks_new */
    uint32_t nurls;
    const char *secret_file; /* the HMAC secret (trailing newlines dropped, >= 16 bytes) */
    uint32_t batch_ms;       /* default 250 */
    uint32_t max_batch;      /* default 100 */
    uint32_t queue_max;      /* events waiting per URL, default 10000 */
    uint32_t timeout_ms;     /* per request, default 5000 */
    uint32_t retry_base_ms;  /* default 500 */
    uint32_t retry_max_ms;   /* default 30000 */
    uint32_t max_attempts;   /* default 8 */
} webhooks_config_t;

void webhooks_config_default(webhooks_config_t *cfg);

/* Starts delivering events published on hub. Returns NULL after writing why to err (a URL
 * that is not http(s), an unreadable or short secret, libcurl failing to start). */
webhooks_t *webhooks_new(uv_loop_t *loop, const webhooks_config_t *cfg, events_t *hub,
                         const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics, FILE *err);

/* Stops taking events and tries to send what is queued within timeout_ms, then calls
 * done(arg) (from the loop). For an orderly shutdown. */
void webhooks_drain(webhooks_t *w, void (*done)(void *arg), void *arg);

/* Frees everything; the loop must then run until the handles it closed are gone. Handles the
 * owner closed itself (a uv_walk at shutdown, as main does) must have finished closing: the
 * loop ran after that walk. */
void webhooks_free(webhooks_t *w);

#endif
