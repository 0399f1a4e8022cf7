/* The RFC 6455 section 4 opening handshake, server side: validation of a parsed HTTP request
 * and the Sec-WebSocket-Accept computation. Pure functions, no I/O.
 */
#ifndef PD_WS_HANDSHAKE_H
#define PD_WS_HANDSHAKE_H

#include <stddef.h>

#include "http/request.h"

#define WS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest */

typedef struct ws_origin_list {
    const char *const *origins; /* exact Origin values allowed; borrowed */
    size_t count;               /* 0: any origin */
} ws_origin_list_t;

/* Checks that req is a valid opening handshake (section 4.2.1). Returns 0 when it is, or the
 * HTTP status to refuse it with: 405 (not GET), 426 (no websocket upgrade asked, or a version
 * other than 13: answer with Sec-WebSocket-Version: 13), 400 (malformed: Connection without
 * the upgrade token, bad or missing key, body present, HTTP/1.0, Sec-WebSocket-Key,
 * Sec-WebSocket-Version or Origin given more than once), 403 (Origin not allowed).
 * *why is set to a short static description for the log. Tokens in Connection and Upgrade are
 * matched as whole, case-insensitive tokens. A request without Origin (a non-browser client)
 * passes the Origin check: only browsers send it, and only browsers need it checked. */
int ws_handshake_check(const http_request_t *req, const ws_origin_list_t *origins,
                       const char **why);

/* Writes the Sec-WebSocket-Accept value for key into out (28 characters and a NUL). */
void ws_accept_key(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1]);

#endif
