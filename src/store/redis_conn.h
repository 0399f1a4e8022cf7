/* One connection to one Redis server, on the libuv loop, speaking RESP2.
 *
 * hiredis is used only to encode commands (redisFormatCommandArgv) and decode replies
 * (redisReader): its async API has no timeouts, no cluster support, and in Debian's 0.14
 * aborts on sharded pub/sub messages, so the socket, the queue of pending replies, timeouts
 * and reconnection are ours.
 *
 * Commands are answered in order; each has a deadline (timeout_ms): when the oldest pending
 * one passes it, the connection is dropped (RESP cannot skip a reply) and every pending
 * command fails with PD_ETIMEDOUT. A lost connection fails pending commands with PD_ECLOSED
 * and reconnects with jittered exponential backoff (100 ms doubling to 5 s) until closed.
 * In pub/sub mode every reply (subscription confirmations, messages) goes to on_push.
 */
#ifndef PD_STORE_REDIS_CONN_H
#define PD_STORE_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log.h"
#include "util/wheel.h"

typedef struct redis_conn redis_conn_t;

/* A reply (valid only during the call), or err: PD_ETIMEDOUT, PD_ECLOSED, PD_ENOMEM. */
typedef void (*redis_reply_cb)(void *arg, const redisReply *r, int err);

typedef struct redis_conn_events {
    void *ctx;
    void (*on_up)(void *ctx, redis_conn_t *c);                        /* connected (again) */
    void (*on_down)(void *ctx, redis_conn_t *c);                      /* lost; reconnecting */
    void (*on_push)(void *ctx, redis_conn_t *c, const redisReply *r); /* pub/sub mode */
} redis_conn_events_t;

/* New connection to host:port (not yet connecting: see redis_conn_start). Borrows loop,
 * wheel and log. pubsub: every reply is a push. NULL when out of memory. */
redis_conn_t *redis_conn_new(uv_loop_t *loop, wheel_t *wheel, const char *host, int port,
                             bool pubsub, uint32_t timeout_ms, const redis_conn_events_t *ev,
                             pd_log_t *log);

void redis_conn_start(redis_conn_t *c);

/* Sends a command; cb (may be NULL) gets its reply. PD_ECLOSED when not connected (nothing
 * sent, cb not called), PD_ENOMEM. */
int redis_conn_send(redis_conn_t *c, int argc, const char **argv, const size_t *argvlen,
                    redis_reply_cb cb, void *arg);

bool redis_conn_up(const redis_conn_t *c);
const char *redis_conn_name(const redis_conn_t *c); /* "host:port" */
size_t redis_conn_pending(const redis_conn_t *c);

/* Closes for good: pending commands fail with PD_ECLOSED; the memory is freed once libuv
 * has closed the handles (the loop must run). */
void redis_conn_close(redis_conn_t *c);

#endif
