/* HTTP/1.1 response serialisation into refcounted output buffers. Pure. */
#ifndef PD_HTTP_RESPONSE_H
#define PD_HTTP_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>

#include "util/obuf.h"

/* Builds a whole response: status line, Server, Content-Length, Content-Type (when given),
 * X-Content-Type-Options, Connection: close unless keep_alive, the caller's extra_headers
 * (complete "Name: value\r\n" lines, or NULL), then the body unless head_only (a HEAD
 * request: the length is still announced). NULL when out of memory. */
pd_obuf_t *http_response_new(int status, const char *content_type, const char *extra_headers,
                             const void *body, size_t body_len, bool keep_alive, bool head_only);

#endif
