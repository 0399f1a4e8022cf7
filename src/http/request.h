/* HTTP/1.1 request parsing on http_parser, with presenced's limits.
 *
 * A pure, incremental parser over bytes (no I/O): feed it what arrives and it hands back one
 * complete request at a time, so pipelined requests are answered in order. Limits are checked
 * as bytes arrive, before anything is buffered past them: request line + headers (431),
 * request target (414), header count (431), body (413, refused from Content-Length alone).
 * Stricter than http_parser alone: no folded header lines (obs-fold), exactly one Host,
 * field names that are tokens, the protocol name exactly "HTTP".
 *
 * Cost: the parser state is allocated only while a request is in flight (a connection that
 * sits idle between keep-alive requests holds none); head bytes are copied once into a
 * buffer that grows to at most head_max.
 */
#ifndef PD_HTTP_REQUEST_H
#define PD_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_HEADERS_MAX 64 /* hard upper bound of http_limits_t.headers_max */

typedef struct http_limits {
    uint32_t head_max;    /* bytes of request line + headers (default 16 KiB) -> 431 */
    uint32_t uri_max;     /* bytes of the request target (default 8 KiB) -> 414 */
    uint32_t headers_max; /* header lines (default 64, at most HTTP_HEADERS_MAX) -> 431 */
    uint32_t body_max;    /* bytes of body (default 1 MiB) -> 413 */
} http_limits_t;

void http_limits_default(http_limits_t *lim);

typedef struct http_header {
    const char *name;
    const char *value; /* leading and trailing blanks removed */
    uint32_t name_len;
    uint32_t value_len;
} http_header_t;

typedef struct http_request {
    const char *target; /* the request target as sent ("/presence?user=a") */
    /* The path: inside target, without query or fragment, not percent-decoded; of an
     * absolute-form target ("http://host/p") only "/p", and "/" (static) when it has none. */
    const char *path;
    const char *query; /* after '?', without '#fragment'; NULL when absent */
    const char *body;  /* NULL when there is none */
    size_t target_len, path_len, query_len, body_len;
    uint32_t nheaders;
    uint8_t method; /* enum http_method of http_parser (HTTP_GET, ...) */
    uint8_t version_major, version_minor;
    bool keep_alive; /* the client allows another request on this connection */
    bool upgrade;    /* Connection: upgrade was requested */
    http_header_t headers[HTTP_HEADERS_MAX];
} http_request_t;

typedef struct http_reqparser http_reqparser_t;

/* New parser with the given limits (copied). NULL when out of memory. */
http_reqparser_t *http_reqparser_new(const http_limits_t *lim);
void http_reqparser_free(http_reqparser_t *p);

/* Feeds data[0..len). Returns the bytes consumed; call again with the rest while any remain.
 * When a request completes, *out points to it (valid until the next call) and the return value
 * stops at its end. When the request is bad, *status is the HTTP status to answer before
 * closing and the parser must not be fed again: 400 (malformed, including any folded header
 * line and a missing or repeated Host), 413, 414, 417 (an Expect other than 100-continue),
 * 431, 505 (a version other than 1.x). The head is judged as soon as it is complete, before
 * any body is read. After an upgrade request, the bytes past the returned count belong to the
 * new protocol. */
size_t http_reqparser_feed(http_reqparser_t *p, const char *data, size_t len,
                           const http_request_t **out, int *status);

/* True, once, when the head of the request in progress asked for "Expect: 100-continue", was
 * accepted, announced a body (HTTP/1.1 only) and the body has not all arrived yet: the caller
 * then writes "HTTP/1.1 100 Continue" before the final answer (RFC 9110 section 10.1.1).
 * False again after the call, and never in the call of feed that completes the request (the
 * body is there: the interim answer is omitted, as the RFC allows) or refuses it. */
bool http_reqparser_take_continue(http_reqparser_t *p);

#define HTTP_CONTINUE_RESPONSE "HTTP/1.1 100 Continue\r\n\r\n"

/* True when part of a request has been received but not all of it. */
bool http_reqparser_busy(const http_reqparser_t *p);

/* The first header named name (compared case-insensitively by exact length); NULL if none. */
const http_header_t *http_request_header(const http_request_t *r, const char *name);

/* True when the comma-separated header value contains token, compared case-insensitively as a
 * whole token ("Upgrade" is in "keep-alive, Upgrade", not in "Upgrade2"). */
bool http_header_has_token(const char *value, size_t len, const char *token);

/* Value of key in a query string (a=b&c=d), percent-decoded into out (NUL-terminated, at most
 * out_size - 1 bytes). Returns its length, PD_ENOTFOUND when absent, PD_EINVAL when malformed
 * (bad escape, decodes to NUL), PD_ETOOBIG when it does not fit. */
int http_query_get(const char *query, size_t query_len, const char *key, char *out,
                   size_t out_size);

/* Human reason phrase for a status code ("Not Found"). */
const char *http_status_reason(int status);

#endif
