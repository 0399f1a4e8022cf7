#include "http/response.h"

#include <stdio.h>
#include <string.h>

#include "http/request.h"

pd_obuf_t *http_response_new(int status, const char *content_type, const char *extra_headers,
                             const void *body, size_t body_len, bool keep_alive, bool head_only) {
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: presenced\r\nContent-Length: %zu\r\n"
                     "X-Content-Type-Options: nosniff\r\n%s%s%s%s",
                     status, http_status_reason(status), body_len,
                     content_type ? "Content-Type: " : "", content_type ? content_type : "",
                     content_type ? "\r\n" : "", keep_alive ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    size_t extra = extra_headers ? strlen(extra_headers) : 0;
    size_t blen = head_only ? 0 : body_len;
    pd_obuf_t *b = pd_obuf_new((size_t)n + extra + 2 + blen);
    if (!b)
        return NULL;
    pd_obuf_append(&b, head, (size_t)n);
    if (extra)
        pd_obuf_append(&b, extra_headers, extra);
    pd_obuf_append(&b, "\r\n", 2);
    if (blen)
        pd_obuf_append(&b, body, blen);
    return b;
}
