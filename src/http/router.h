/* Maps method + path to handlers, and answers 404 / 405 (with the Allow list) for the rest.
 *
 * Handlers receive an exchange: the server's handle on one request, through which they answer
 * (now or later) with the functions of http/exchange.h. Routes are few and checked in order,
 * exact paths and prefixes ("/v1/" ...), so a linear scan is the cheapest structure.
 */
#ifndef PD_HTTP_ROUTER_H
#define PD_HTTP_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/request.h"

#define HTTP_M(method)  (1u << (method)) /* bit of an http_parser method in a route's mask */
#define HTTP_ROUTES_MAX 48

typedef struct http_exchange http_exchange_t;

/* Handles one request. req and everything it points to are valid only during the call; the
 * handler must answer through ex, now or later (see http/exchange.h). */
typedef void (*http_handler_fn)(void *ctx, http_exchange_t *ex, const http_request_t *req);

typedef struct http_route {
    const char *path; /* borrowed; must outlive the router */
    size_t path_len;
    uint32_t methods; /* HTTP_M(HTTP_GET) | ...; HEAD is implied by GET */
    bool prefix;      /* matches every path that starts with path */
    http_handler_fn fn;
    void *ctx;
} http_route_t;

typedef struct http_router {
    http_route_t routes[HTTP_ROUTES_MAX];
    size_t count;
} http_router_t;

void http_router_init(http_router_t *r);

/* Adds a route; earlier routes win. 0 or PD_ELIMIT when full. */
int http_router_add(http_router_t *r, uint32_t methods, const char *path, bool prefix,
                    http_handler_fn fn, void *ctx);

/* The route for req, or NULL with *status 404 (no path matches) or 405 (the path matches for
 * other methods: *allow is their mask). */
const http_route_t *http_router_match(const http_router_t *r, const http_request_t *req,
                                      int *status, uint32_t *allow);

/* Formats an Allow header line ("Allow: GET, HEAD\r\n") for a mask into out. */
void http_allow_header(uint32_t allow, char *out, size_t out_size);

#endif
