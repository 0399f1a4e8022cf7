/* How a route handler answers its request. Implemented by the server layer (server/conn.c).
 *
 * An exchange stands for one request on one connection. The handler answers it exactly once,
 * during its call or later from any callback on the loop; a connection answers pipelined
 * requests in order, so it reads nothing further until the answer is given. If the
 * connection dies before a late answer, http_exchange_alive() turns false and the answer is
 * dropped; the exchange stays valid until it is answered or released.
 */
#ifndef PD_HTTP_EXCHANGE_H
#define PD_HTTP_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>

#include "http/router.h"
#include "util/obuf.h"

/* Answers with a complete response (see http_response_new for the headers added). Keeps the
 * connection open when the request allowed it. */
void http_exchange_respond(http_exchange_t *ex, int status, const char *content_type,
                           const char *extra_headers, const void *body, size_t body_len);

/* True while the client is still connected. */
bool http_exchange_alive(const http_exchange_t *ex);

/* The client's address as "ip:port" (static storage per exchange). */
const char *http_exchange_peer(const http_exchange_t *ex);

#endif
