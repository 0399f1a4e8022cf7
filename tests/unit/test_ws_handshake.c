/* The RFC 6455 section 4 opening handshake: ws_handshake_check on requests parsed from raw
 * text by the real http_reqparser, and the Sec-WebSocket-Accept computation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "http/request.h"
#include "ws/handshake.h"

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

/* The parts of a handshake request; NULL leaves a header out. */
struct hs {
    const char *method, *version;
    const char *upgrade, *connection, *key, *ws_version, *origin;
    const char *extra; /* raw header lines, each ending in \r\n */
    const char *body;  /* sent with a Content-Length */
};

static struct hs valid(void) {
    return (struct hs){.method = "GET",
                       .version = "HTTP/1.1",
                       .upgrade = "websocket",
                       .connection = "Upgrade",
                       .key = RFC_KEY,
                       .ws_version = "13"};
}

/* Renders h, parses it with http_reqparser, and returns ws_handshake_check's answer. */
static int check(struct hs h, const ws_origin_list_t *origins, const char **why) {
    tu_str_t t = {0};
    tu_str_printf(&t, "%s /presence?user=a HTTP/%s\r\nHost: example.com\r\n", h.method,
                  h.version + 5);
    if (h.upgrade)
        tu_str_printf(&t, "Upgrade: %s\r\n", h.upgrade);
    if (h.connection)
        tu_str_printf(&t, "Connection: %s\r\n", h.connection);
    if (h.key)
        tu_str_printf(&t, "Sec-WebSocket-Key: %s\r\n", h.key);
    if (h.ws_version)
        tu_str_printf(&t, "Sec-WebSocket-Version: %s\r\n", h.ws_version);
    if (h.origin)
        tu_str_printf(&t, "Origin: %s\r\n", h.origin);
    if (h.extra)
        tu_str_printf(&t, "%s", h.extra);
    if (h.body)
        tu_str_printf(&t, "Content-Length: %zu\r\n", strlen(h.body));
    tu_str_printf(&t, "\r\n%s", h.body ? h.body : "");

    http_reqparser_t *p = http_reqparser_new(NULL);
    assert_non_null(p);
    const http_request_t *req = NULL;
    int status = 0;
    size_t off = 0;
    while (!req && off < t.len) {
        off += http_reqparser_feed(p, t.s + off, t.len - off, &req, &status);
        assert_int_equal(status, 0);
    }
    assert_non_null(req);
    *why = "not set";
    int rc = ws_handshake_check(req, origins, why);
    if (rc == 0)
        assert_null(*why);
    else
        assert_true(*why && strcmp(*why, "not set") != 0 && (*why)[0] != '\0');
    http_reqparser_free(p);
    tu_str_free(&t);
    return rc;
}

static int check_simple(struct hs h) {
    const char *why;
    return check(h, NULL, &why);
}

static void test_valid(void **state) {
    (void)state;
    assert_int_equal(check_simple(valid()), 0);
    /* Tokens are case-insensitive and may sit in lists. */
    const char *upgrades[] = {"websocket",        "WebSocket",      "WEBSOCKET",
                              "foo/1, websocket", "websocket, h2c", " websocket "};
    for (size_t i = 0; i < sizeof(upgrades) / sizeof(upgrades[0]); i++) {
        struct hs h = valid();
        h.upgrade = upgrades[i];
        assert_int_equal(check_simple(h), 0);
    }
    const char *conns[] = {"Upgrade",
                           "upgrade",
                           "UPGRADE",
                           "keep-alive, Upgrade",
                           "Upgrade, keep-alive",
                           "keep-alive,upgrade",
                           "keep-alive ,\tUpgrade"};
    for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
        struct hs h = valid();
        h.connection = conns[i];
        assert_int_equal(check_simple(h), 0);
    }
    /* Header names are case-insensitive too. */
    struct hs h = valid();
    h.key = h.ws_version = h.upgrade = h.connection = NULL;
    h.extra = "upgrade: websocket\r\nCONNECTION: upgrade\r\nsec-websocket-key: " RFC_KEY
              "\r\nSEC-WEBSOCKET-VERSION: 13\r\n";
    assert_int_equal(check_simple(h), 0);
    /* Content-Length: 0 is no body. */
    h = valid();
    h.extra = "Content-Length: 0\r\n";
    assert_int_equal(check_simple(h), 0);
}

static void test_method(void **state) {
    (void)state;
    const char *methods[] = {"POST", "HEAD", "PUT", "OPTIONS", "DELETE"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        struct hs h = valid();
        h.method = methods[i];
        assert_int_equal(check_simple(h), 405);
        /* The method is checked first. */
        h.upgrade = NULL;
        assert_int_equal(check_simple(h), 405);
    }
}

static void test_upgrade_header(void **state) {
    (void)state;
    struct hs h = valid();
    h.upgrade = NULL;
    assert_int_equal(check_simple(h), 426);
    /* Whole tokens only: not a prefix, not a suffix, not another protocol. */
    const char *bad[] = {"websocket2", "websocketx", "xwebsocket",    "web socket",
                         "h2c",        "",           "websocket/13x", "websockets"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = valid();
        h.upgrade = bad[i];
        assert_int_equal(check_simple(h), 426);
    }
}

static void test_connection_header(void **state) {
    (void)state;
    const char *bad[] = {"Upgraded", "keep-alive", "close", "upgrade-insecure", "xupgrade", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hs h = valid();
        h.connection = bad[i];
        assert_int_equal(check_simple(h), 400);
    }
    struct hs h = valid();
    h.connection = NULL;
    assert_int_equal(check_simple(h), 400);
}

static void test_version_header(void **state) {
    (void)state;
    struct hs h = valid();
    h.ws_version = NULL;
    assert_int_equal(check_simple(h), 426);
    const char *bad[] = {"8", "12", "130", "1", "", "13, 8", "0x0D", "31"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = valid();
        h.ws_version = bad[i];
        assert_int_equal(check_simple(h), 426);
    }
    /* Surrounding blanks are not part of a header value. */
    h = valid();
    h.ws_version = "  13  ";
    assert_int_equal(check_simple(h), 0);
}

static void test_keys(void **state) {
    (void)state;
    const char *good[] = {RFC_KEY, "x3JJHMbDL1EzLkh9GBhXDw==", "AAAAAAAAAAAAAAAAAAAAAA==",
                          "/////////////////////w==", "+/+/+/+/+/+/+/+/+/+/+g=="};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct hs h = valid();
        h.key = good[i];
        assert_int_equal(check_simple(h), 0);
    }
    const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ",       /* no padding */
        "dGhlIHNhbXBsZSBub25jZQ=",      /* 23 characters */
        "dGhlIHNhbXBsZSBub25jZQ===",    /* 25 characters */
        "dGhlIHNhbXBsZSBub25jZQ=A",     /* padding then data */
        "dGhlIHNhbXBsZSBub25jZ!==",     /* not base64 */
        "dGhlIHNhbXBsZSBub25jZ-==",     /* base64url alphabet */
        "dGhlIHNhbX_sZSBub25jZQ==",     /* base64url alphabet */
        "dGhlIHNhbXBs ZSBub25jZQ==",    /* blank inside */
        "AAAAAAAAAA=AAAAAAAAAAA==",     /* padding inside */
        "dGhlIHNhbXBsZSBub25jZR==",     /* stray bits in the last character */
        "dGhlIHNhbXBsZSBub25jZW==",     /* stray bits */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", /* 20 bytes */
        "AAAAAAAAAAAAAAAAAAAA",         /* 15 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAAA",     /* 18 bytes, no padding */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hs h = valid();
        h.key = bad[i];
        if (check_simple(h) != 400)
            fail_msg("key '%s' accepted", bad[i]);
    }
    struct hs h = valid();
    h.key = NULL;
    assert_int_equal(check_simple(h), 400);

    /* The 22nd character carries 2 bits of the key and 4 padding bits that must be zero:
     * of the 64 characters exactly A, Q, g and w pass. */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int c = 0; c < 64; c++) {
        char key[25] = "AAAAAAAAAAAAAAAAAAAAAA==";
        key[21] = b64[c];
        h = valid();
        h.key = key;
        assert_int_equal(check_simple(h), c % 16 == 0 ? 0 : 400);
    }
}

static void test_http_version_and_body(void **state) {
    (void)state;
    struct hs h = valid();
    h.version = "HTTP/1.0";
    assert_int_equal(check_simple(h), 400);
    h = valid();
    h.body = "abc";
    assert_int_equal(check_simple(h), 400);
    /* A chunked body. */
    tu_str_t t = {0};
    tu_str_printf(&t, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: " RFC_KEY "\r\nSec-WebSocket-Version: 13\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *req = NULL;
    int status = 0;
    size_t off = 0;
    while (!req && !status && off < t.len)
        off += http_reqparser_feed(p, t.s + off, t.len - off, &req, &status);
    assert_int_equal(status, 0);
    assert_non_null(req);
    assert_int_equal(req->body_len, 3);
    const char *why;
    assert_int_equal(ws_handshake_check(req, NULL, &why), 400);
    http_reqparser_free(p);
    tu_str_free(&t);
}

static void test_origin(void **state) {
    (void)state;
    static const char *const allowed[] = {"https://app.example", "http://localhost:8080"};
    ws_origin_list_t list = {allowed, 2};
    const char *why;
    struct hs h = valid();
    /* Absent: a non-browser client, allowed. */
    assert_int_equal(check(h, &list, &why), 0);
    h.origin = "https://app.example";
    assert_int_equal(check(h, &list, &why), 0);
    h.origin = "http://localhost:8080";
    assert_int_equal(check(h, &list, &why), 0);
    const char *denied[] = {"https://evil.example",
                            "https://app.example.evil",
                            "https://app.exampl",
                            "https://app.example/",
                            "http://app.example",
                            "HTTPS://APP.EXAMPLE",
                            "http://localhost:808",
                            "null",
                            ""};
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
        h.origin = denied[i];
        if (check(h, &list, &why) != 403)
            fail_msg("origin '%s' allowed", denied[i]);
    }
    /* An empty list or none: every origin. */
    ws_origin_list_t none = {NULL, 0};
    h.origin = "https://evil.example";
    assert_int_equal(check(h, &none, &why), 0);
    assert_int_equal(check(h, NULL, &why), 0);
    /* The handshake's own errors come before the Origin check. */
    h.key = "short";
    assert_int_equal(check(h, &list, &why), 400);
}

/* Sec-WebSocket-Key, Sec-WebSocket-Version and Origin are each sent once: a second one, with
 * the same value or another, in any letter case, is a malformed handshake (400), whatever the
 * Origin policy; before the fix, the first was used and the second ignored. */
static void test_repeated_headers(void **state) {
    (void)state;
    static const char *const allowed[] = {"https://app.example"};
    ws_origin_list_t list = {allowed, 1}, any = {NULL, 0};
    const ws_origin_list_t *policies[] = {NULL, &any, &list};
    static const char *const extras[] = {
        "Sec-WebSocket-Key: " RFC_KEY "\r\n", "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        "Sec-WebSocket-Version: 13\r\n",      "SEC-WEBSOCKET-VERSION: 8\r\n",
        "Origin: https://app.example\r\n",    "origin: https://evil.example\r\n",
    };
    for (size_t p = 0; p < sizeof(policies) / sizeof(policies[0]); p++) {
        for (size_t i = 0; i < sizeof(extras) / sizeof(extras[0]); i++) {
            struct hs h = valid();
            h.origin = "https://app.example";
            h.extra = extras[i];
            const char *why;
            int rc = check(h, policies[p], &why);
            if (rc != 400)
                fail_msg("policy %zu, extra %zu: %d", p, i, rc);
        }
    }
    /* Three of one kind; and a repeated key beside a bad version is still a 400. */
    struct hs h = valid();
    h.extra = "Sec-WebSocket-Key: " RFC_KEY "\r\nSec-WebSocket-Key: " RFC_KEY "\r\n";
    assert_int_equal(check_simple(h), 400);
    h = valid();
    h.ws_version = "8";
    h.extra = "Sec-WebSocket-Version: 13\r\n";
    assert_int_equal(check_simple(h), 400);
    /* Other repeated headers are fine: list headers may come as several lines. */
    h = valid();
    h.extra = "Connection: keep-alive\r\nUpgrade: h2c\r\nX-Other: 1\r\nX-Other: 2\r\n";
    assert_int_equal(check_simple(h), 0);
    /* One Origin, given among the extra lines: fine. */
    h = valid();
    h.extra = "Origin: https://app.example\r\n";
    const char *why;
    assert_int_equal(check(h, &list, &why), 0);
}

static void test_accept_key(void **state) {
    (void)state;
    char out[WS_ACCEPT_LEN + 1];
    memset(out, 'Z', sizeof(out));
    ws_accept_key(RFC_KEY, strlen(RFC_KEY), out);
    assert_string_equal(out, RFC_ACCEPT);
    ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, out);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    ws_accept_key("AAAAAAAAAAAAAAAAAAAAAA==", 24, out);
    assert_string_equal(out, "ICX+Yqv66kxgM0FcWaLWlFLwTAI=");
    /* The key need not be NUL-terminated: read exactly key_len bytes from a guarded page. */
    tu_guard_t g;
    tu_guard_init(&g, 64);
    const char *k = (const char *)tu_guard_place(&g, RFC_KEY, 24);
    ws_accept_key(k, 24, out);
    assert_string_equal(out, RFC_ACCEPT);
    /* An over-long key is cut, not overflowed. */
    char big[200];
    memset(big, 'k', sizeof(big));
    const char *bk = (const char *)tu_guard_place(&g, big, sizeof(big));
    ws_accept_key(bk, sizeof(big), out);
    assert_int_equal(strlen(out), WS_ACCEPT_LEN);
    tu_guard_destroy(&g);
}

static void test_upgrade_request_fields(void **state) {
    (void)state;
    /* What the server relies on after a good handshake: the upgrade flag, and the bytes
     * past the request belong to WebSocket. */
    static const char raw[] = "GET /presence HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: " RFC_KEY
                              "\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x85";
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *req;
    int status;
    size_t n = http_reqparser_feed(p, raw, sizeof(raw) - 1, &req, &status);
    assert_int_equal(status, 0);
    assert_non_null(req);
    assert_true(req->upgrade);
    assert_int_equal(n, sizeof(raw) - 3);
    const char *why;
    assert_int_equal(ws_handshake_check(req, NULL, &why), 0);
    http_reqparser_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_method),
        cmocka_unit_test(test_upgrade_header),
        cmocka_unit_test(test_connection_header),
        cmocka_unit_test(test_version_header),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_http_version_and_body),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_repeated_headers),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_upgrade_request_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
