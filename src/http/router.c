#include "http/router.h"

#include <http_parser.h>
#include <stdio.h>
#include <string.h>

#include "util/error.h"

void http_router_init(http_router_t *r) {
    memset(r, 0, sizeof(*r));
}

int http_router_add(http_router_t *r, uint32_t methods, const char *path, bool prefix,
                    http_handler_fn fn, void *ctx) {
    if (r->count == HTTP_ROUTES_MAX)
        return PD_ELIMIT;
    if (methods & HTTP_M(HTTP_GET))
        methods |= HTTP_M(HTTP_HEAD);
    r->routes[r->count++] = (http_route_t){.path = path,
                                           .path_len = strlen(path),
                                           .methods = methods,
                                           .prefix = prefix,
                                           .fn = fn,
                                           .ctx = ctx};
    return 0;
}

const http_route_t *http_router_match(const http_router_t *r, const http_request_t *req,
                                      int *status, uint32_t *allow) {
    *allow = 0;
    bool path_found = false;
    for (size_t i = 0; i < r->count; i++) {
        const http_route_t *rt = &r->routes[i];
        bool hit =
            rt->prefix
                ? req->path_len >= rt->path_len && memcmp(req->path, rt->path, rt->path_len) == 0
                : req->path_len == rt->path_len && memcmp(req->path, rt->path, rt->path_len) == 0;
        if (!hit)
            continue;
        if (req->method < 32 && (rt->methods & HTTP_M(req->method)))
            return rt;
        path_found = true;
        *allow |= rt->methods;
    }
    *status = path_found ? 405 : 404;
    return NULL;
}

void http_allow_header(uint32_t allow, char *out, size_t out_size) {
    size_t n = (size_t)snprintf(out, out_size, "Allow: ");
    bool first = true;
    for (int m = 0; m < 32 && n < out_size; m++) {
        if (!(allow & HTTP_M(m)))
            continue;
        n += (size_t)snprintf(out + n, out_size - n, "%s%s", first ? "" : ", ",
                              http_method_str((enum http_method)m));
        first = false;
    }
    if (n < out_size)
        snprintf(out + n, out_size - n, "\r\n");
}
