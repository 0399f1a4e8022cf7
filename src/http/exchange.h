/* How a route handler answers its request. Implemented by the server layer (server/conn.c).
 *
 * An exchange stands for one request on one connection. The handler answers it exactly once
 * (http_exchange_respond, or http_exchange_stream whatever it returns), during its call or
 * later from any callback on the loop; a connection answers pipelined requests in order, so
 * it reads nothing further until the answer is given.
 *
 * Lifetime: the exchange stays valid until it is answered, even when its connection closes
 * first (reset, EOF, a client timeout, shutdown) and even after the server is freed (a store
 * failing its last calls at exit): the server keeps what the exchange needs until the answer
 * comes, then drops that answer harmlessly; it can never reach another connection. Once
 * answered, the exchange must not be used. So every exchange must be answered, even one whose
 * client is gone (http_exchange_alive() false): that is what releases it, and costs nothing.
 */
#ifndef PD_HTTP_EXCHANGE_H
#define PD_HTTP_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>

#include "http/router.h"
#include "util/obuf.h"

/* Answers with a complete response (see http_response_new for the headers added). Keeps the
 * connection open when the request allowed it. Dropped when the client is gone. ex is invalid
 * after the call. */
void http_exchange_respond(http_exchange_t *ex, int status, const char *content_type,
                           const char *extra_headers, const void *body, size_t body_len);

/* --- Streamed answers (server-sent events) --- */

typedef struct http_stream http_stream_t;

/* Answers with the head of an open-ended response: status, content_type, extra_headers,
 * Cache-Control: no-store and Connection: close (the body ends when the connection does),
 * and returns the stream the body is sent through. on_end(arg) is called exactly once when
 * the stream is over (the client went away, was too slow, or http_stream_end was called),
 * from the server's flush, never from inside an http_stream_* call; the stream must not be
 * used after it. NULL (and on_end never called) when the client is already gone, or when
 * memory ran out (then 503 was answered). Either way ex is answered and invalid after the
 * call. */
http_stream_t *http_exchange_stream(http_exchange_t *ex, int status, const char *content_type,
                                    const char *extra_headers, void (*on_end)(void *arg),
                                    void *arg);

/* Queues a body chunk (a new reference is taken). 0; PD_ECLOSED when the stream is over;
 * PD_ELIMIT when the client's unsent output passed out_max: the stream ends (a reader too
 * slow is dropped, never waited for). */
int http_stream_send(http_stream_t *st, pd_obuf_t *chunk);

/* Ends the stream (queued chunks are still sent). */
void http_stream_end(http_stream_t *st);

/* Bytes queued on the stream and not yet written. */
uint32_t http_stream_backlog(const http_stream_t *st);

/* True while the client is still connected (an answer would be sent). */
bool http_exchange_alive(const http_exchange_t *ex);

/* The client's address as "ip:port" (static storage, overwritten by the next call); "?:0"
 * once the client is gone. */
const char *http_exchange_peer(const http_exchange_t *ex);

#endif
