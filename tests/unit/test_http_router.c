/* The router (http/router.h): exact and prefix routes, first match wins, 404 versus 405 with
 * the Allow mask, HEAD implied by GET, and the Allow header text.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <http_parser.h>

#include "testutil.h"

#include "http/router.h"
#include "util/error.h"

static void handler_a(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    (void)ctx;
    (void)ex;
    (void)req;
}

static void handler_b(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    (void)ctx;
    (void)ex;
    (void)req;
}

static int ctx_health, ctx_metrics, ctx_v1, ctx_v1_users, ctx_ws;

static void setup_router(http_router_t *r) {
    http_router_init(r);
    assert_int_equal(
        http_router_add(r, HTTP_M(HTTP_GET), "/healthz", false, handler_a, &ctx_health), 0);
    assert_int_equal(
        http_router_add(r, HTTP_M(HTTP_GET), "/metrics", false, handler_a, &ctx_metrics), 0);
    /* A more specific prefix before the general one: earlier routes win. */
    assert_int_equal(http_router_add(r, HTTP_M(HTTP_GET) | HTTP_M(HTTP_PUT), "/v1/users/", true,
                                     handler_b, &ctx_v1_users),
                     0);
    assert_int_equal(
        http_router_add(r, HTTP_M(HTTP_GET) | HTTP_M(HTTP_POST), "/v1/", true, handler_b, &ctx_v1),
        0);
    assert_int_equal(http_router_add(r, HTTP_M(HTTP_POST), "/ws", false, handler_a, &ctx_ws), 0);
}

/* Matches method + path (the path placed at the end of a guarded page: not NUL-terminated). */
static const http_route_t *match(const http_router_t *r, enum http_method m, const char *path,
                                 int *status, uint32_t *allow) {
    tu_guard_t g;
    tu_guard_init(&g, strlen(path) + 1);
    http_request_t req;
    memset(&req, 0, sizeof(req));
    req.method = (uint8_t)m;
    req.path = (const char *)tu_guard_place(&g, path, strlen(path));
    req.path_len = strlen(path);
    req.target = req.path;
    req.target_len = req.path_len;
    *status = -1;
    *allow = 0xDEADBEEF;
    const http_route_t *rt = http_router_match(r, &req, status, allow);
    tu_guard_destroy(&g);
    return rt;
}

static void expect_route(const http_router_t *r, enum http_method m, const char *path, void *ctx) {
    int status;
    uint32_t allow;
    const http_route_t *rt = match(r, m, path, &status, &allow);
    if (!rt || rt->ctx != ctx)
        fail_msg("%s %s: wrong route", http_method_str(m), path);
}

static void expect_status(const http_router_t *r, enum http_method m, const char *path,
                          int want_status, uint32_t want_allow) {
    int status;
    uint32_t allow;
    const http_route_t *rt = match(r, m, path, &status, &allow);
    if (rt)
        fail_msg("%s %s: matched %s", http_method_str(m), path, rt->path);
    assert_int_equal(status, want_status);
    assert_int_equal(allow, want_allow);
}

#define GET_HEAD (HTTP_M(HTTP_GET) | HTTP_M(HTTP_HEAD))

static void test_exact_routes(void **state) {
    (void)state;
    http_router_t r;
    setup_router(&r);
    expect_route(&r, HTTP_GET, "/healthz", &ctx_health);
    expect_route(&r, HTTP_GET, "/metrics", &ctx_metrics);
    expect_route(&r, HTTP_POST, "/ws", &ctx_ws);
    /* Exact means exact: no prefix, no extension, no trailing slash, case-sensitive. */
    expect_status(&r, HTTP_GET, "/healthz/", 404, 0);
    expect_status(&r, HTTP_GET, "/healthzz", 404, 0);
    expect_status(&r, HTTP_GET, "/health", 404, 0);
    expect_status(&r, HTTP_GET, "/HEALTHZ", 404, 0);
    expect_status(&r, HTTP_GET, "", 404, 0);
    expect_status(&r, HTTP_GET, "/", 404, 0);
}

static void test_prefix_routes(void **state) {
    (void)state;
    http_router_t r;
    setup_router(&r);
    expect_route(&r, HTTP_GET, "/v1/", &ctx_v1);
    expect_route(&r, HTTP_GET, "/v1/presence", &ctx_v1);
    expect_route(&r, HTTP_POST, "/v1/a/b/c", &ctx_v1);
    expect_route(&r, HTTP_GET, "/v1/users/42", &ctx_v1_users);
    expect_route(&r, HTTP_PUT, "/v1/users/", &ctx_v1_users);
    /* Shorter than the prefix, or not quite it. */
    expect_status(&r, HTTP_GET, "/v1", 404, 0);
    expect_status(&r, HTTP_GET, "/v2/x", 404, 0);
    expect_status(&r, HTTP_GET, "/V1/x", 404, 0);
    /* /v1/users (no slash) falls to the general /v1/ prefix. */
    expect_route(&r, HTTP_GET, "/v1/users", &ctx_v1);
    /* POST to /v1/users/x: the first matching route does not allow it, the second does. */
    expect_route(&r, HTTP_POST, "/v1/users/x", &ctx_v1);
}

static void test_405_and_allow(void **state) {
    (void)state;
    http_router_t r;
    setup_router(&r);
    expect_status(&r, HTTP_POST, "/healthz", 405, GET_HEAD);
    expect_status(&r, HTTP_DELETE, "/metrics", 405, GET_HEAD);
    expect_status(&r, HTTP_GET, "/ws", 405, HTTP_M(HTTP_POST));
    expect_status(&r, HTTP_HEAD, "/ws", 405, HTTP_M(HTTP_POST)); /* HEAD only with GET */
    /* The mask gathers every route whose path matches. */
    expect_status(&r, HTTP_DELETE, "/v1/users/1", 405,
                  GET_HEAD | HTTP_M(HTTP_PUT) | HTTP_M(HTTP_POST));
    expect_status(&r, HTTP_DELETE, "/v1/x", 405, GET_HEAD | HTTP_M(HTTP_POST));
    /* Methods whose bit does not fit in the mask are never allowed. */
    expect_status(&r, HTTP_UNLINK, "/healthz", 405, GET_HEAD);
    expect_status(&r, HTTP_SOURCE, "/v1/x", 405, GET_HEAD | HTTP_M(HTTP_POST));
}

static void test_head_implied_by_get(void **state) {
    (void)state;
    http_router_t r;
    setup_router(&r);
    expect_route(&r, HTTP_HEAD, "/healthz", &ctx_health);
    expect_route(&r, HTTP_HEAD, "/v1/users/1", &ctx_v1_users);
    const http_route_t *rt = &r.routes[0];
    assert_int_equal(rt->methods, GET_HEAD);
    assert_int_equal(r.routes[4].methods, HTTP_M(HTTP_POST));
}

static void test_route_fields_and_limit(void **state) {
    (void)state;
    http_router_t r;
    http_router_init(&r);
    assert_int_equal(r.count, 0);
    /* An empty router: everything is 404. */
    expect_status(&r, HTTP_GET, "/", 404, 0);
    static int ctx;
    assert_int_equal(http_router_add(&r, HTTP_M(HTTP_POST), "/x", true, handler_b, &ctx), 0);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.routes[0].path, "/x");
    assert_int_equal(r.routes[0].path_len, 2);
    assert_true(r.routes[0].prefix);
    assert_ptr_equal(r.routes[0].fn, handler_b);
    assert_ptr_equal(r.routes[0].ctx, &ctx);
    /* Fill it up: the 49th is refused and changes nothing. */
    for (int i = 1; i < HTTP_ROUTES_MAX; i++)
        assert_int_equal(http_router_add(&r, HTTP_M(HTTP_GET), "/fill", false, handler_a, NULL), 0);
    assert_int_equal(r.count, HTTP_ROUTES_MAX);
    assert_int_equal(http_router_add(&r, HTTP_M(HTTP_GET), "/late", false, handler_a, NULL),
                     PD_ELIMIT);
    assert_int_equal(r.count, HTTP_ROUTES_MAX);
    expect_status(&r, HTTP_GET, "/late", 404, 0);
    /* An empty prefix matches everything. */
    http_router_init(&r);
    assert_int_equal(http_router_add(&r, HTTP_M(HTTP_GET), "", true, handler_a, &ctx), 0);
    expect_route(&r, HTTP_GET, "/anything", &ctx);
    expect_route(&r, HTTP_GET, "", &ctx);
}

static void expect_allow(uint32_t mask, const char *want) {
    char out[256];
    memset(out, 'Z', sizeof(out));
    http_allow_header(mask, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_allow_header(void **state) {
    (void)state;
    expect_allow(GET_HEAD, "Allow: GET, HEAD\r\n");
    expect_allow(HTTP_M(HTTP_POST), "Allow: POST\r\n");
    /* In http_parser's method order. */
    expect_allow(HTTP_M(HTTP_PUT) | HTTP_M(HTTP_DELETE) | GET_HEAD | HTTP_M(HTTP_POST),
                 "Allow: DELETE, GET, HEAD, POST, PUT\r\n");
    expect_allow(HTTP_M(HTTP_OPTIONS) | HTTP_M(HTTP_PATCH), "Allow: OPTIONS, PATCH\r\n");
    expect_allow(HTTP_M(HTTP_LINK), "Allow: LINK\r\n"); /* the highest bit */
    expect_allow(0, "Allow: \r\n");
    /* A small buffer: truncated, NUL-terminated, nothing written past it. */
    for (size_t size = 1; size <= 40; size++) {
        char out[64];
        memset(out, 'Z', sizeof(out));
        http_allow_header(GET_HEAD | HTTP_M(HTTP_POST) | HTTP_M(HTTP_PUT), out, size);
        assert_true(strlen(out) < size);
        assert_memory_equal(out, "Allow: GET, HEAD, POST, PUT\r\n", strlen(out));
        for (size_t i = size; i < sizeof(out); i++)
            assert_int_equal(out[i], 'Z');
    }
    /* Every method at once fits in a reasonable buffer. */
    char all[512];
    http_allow_header(0xFFFFFFFFu, all, sizeof(all));
    assert_true(strncmp(all, "Allow: DELETE, GET, HEAD, ", 26) == 0);
    assert_non_null(strstr(all, "M-SEARCH"));
    assert_true(strlen(all) > 2 && strcmp(all + strlen(all) - 2, "\r\n") == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_routes),           cmocka_unit_test(test_prefix_routes),
        cmocka_unit_test(test_405_and_allow),          cmocka_unit_test(test_head_implied_by_get),
        cmocka_unit_test(test_route_fields_and_limit), cmocka_unit_test(test_allow_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
