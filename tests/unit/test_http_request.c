/* HTTP/1.1 request parsing (http/request.h): the incremental parser and its limits, and the
 * header, token and query helpers.
 *
 * Every parser input goes through tu_every_split(): it is fed as the server feeds it (each
 * read handed over until it is used up, one request at a time) cut at every point, in three
 * and byte by byte, each chunk ending at a PROT_NONE page; every cut must give the same
 * requests and the same final status.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <http_parser.h>

#include "testutil.h"

#include "http/request.h"
#include "util/error.h"

/* ---- driving the parser ---- */

struct http_ctx {
    const http_limits_t *lim; /* NULL: the defaults */
};

static void describe(tu_str_t *out, const http_request_t *r) {
    /* Pointers the contract promises: path is the target's start (a later point of an
     * absolute-form target, or a static "/"), query lies inside the target after it. */
    bool inside = r->path >= r->target && r->path + r->path_len <= r->target + r->target_len;
    assert_true(inside || (r->path_len == 1 && r->path[0] == '/'));
    if (r->target[0] == '/')
        assert_ptr_equal(r->path, r->target);
    if (r->query) {
        assert_true(!inside || r->query >= r->path + r->path_len + 1);
        assert_true(r->query + r->query_len <= r->target + r->target_len);
        assert_int_equal(r->query[-1], '?');
    } else {
        assert_int_equal(r->query_len, 0);
    }
    assert_true(r->nheaders <= HTTP_HEADERS_MAX);
    assert_true((r->body == NULL) == (r->body_len == 0));

    tu_str_printf(out, "%s %.*s HTTP/%u.%u%s%s\n", http_method_str((enum http_method)r->method),
                  (int)r->target_len, r->target, r->version_major, r->version_minor,
                  r->keep_alive ? " keep-alive" : "", r->upgrade ? " upgrade" : "");
    tu_str_printf(out, "  path %.*s", (int)r->path_len, r->path);
    if (r->query)
        tu_str_printf(out, " query \"%.*s\"", (int)r->query_len, r->query);
    tu_str_printf(out, "\n");
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const http_header_t *h = &r->headers[i];
        if (h->name_len + h->value_len > 200) {
            tu_str_printf(out, "  %.*s: <%u bytes>\n", (int)h->name_len, h->name, h->value_len);
            continue;
        }
        tu_str_printf(out, "  %.*s: ", (int)h->name_len, h->name);
        tu_str_bytes(out, h->value, h->value_len);
        tu_str_printf(out, "\n");
    }
    if (r->body) {
        tu_str_printf(out, "  body ");
        tu_str_bytes(out, r->body, r->body_len);
        tu_str_printf(out, "\n");
    }
}

/* The tu_chunked_fn. After an upgrade request the rest is another protocol: the transcript
 * says how many bytes are left. Without an error, it ends with whether a request is still
 * in progress. */
static void run_parser(void *ctx, const uint8_t *in, size_t len, const size_t *ends, size_t n,
                       tu_str_t *out) {
    const struct http_ctx *c = ctx;
    http_reqparser_t *p = http_reqparser_new(c->lim);
    assert_non_null(p);
    tu_guard_t g;
    tu_guard_init(&g, len);
    size_t fed = 0;
    bool done = false;
    for (size_t k = 0; k < n && !done; k++) {
        size_t chunk = ends[k] - fed;
        const char *data = (const char *)tu_guard_place(&g, in + fed, chunk);
        fed = ends[k];
        size_t off = 0;
        while (off < chunk && !done) {
            const http_request_t *r = (const http_request_t *)1;
            int status = -1;
            size_t used = http_reqparser_feed(p, data + off, chunk - off, &r, &status);
            assert_true(used <= chunk - off);
            off += used;
            /* 100 Continue is never due with an answer: where the body splits decides whether
             * it is due at all, so the transcript does not say (test_expect_continue does). */
            if (http_reqparser_take_continue(p)) {
                assert_int_equal(status, 0);
                assert_null(r);
                assert_false(http_reqparser_take_continue(p)); /* once */
            }
            if (status) {
                assert_null(r);
                tu_str_printf(out, "status %d\n", status);
                done = true;
            } else if (r) {
                describe(out, r);
                if (r->upgrade) {
                    tu_str_printf(out, "upgrade: %zu bytes left\n", len - (fed - chunk + off));
                    done = true;
                }
            } else if (used == 0) {
                fail_msg("no request, no error, no progress");
            }
        }
    }
    if (!done)
        tu_str_printf(out, "busy %d\n", http_reqparser_busy(p));
    tu_guard_destroy(&g);
    http_reqparser_free(p);
}

static void expect_parse_lim(const char *raw, size_t len, const http_limits_t *lim,
                             const char *expected) {
    struct http_ctx c = {lim};
    char *got = tu_every_split(run_parser, &c, raw, len);
    assert_string_equal(got, expected);
    free(got);
}

static void expect_parse(const char *raw, const char *expected) {
    expect_parse_lim(raw, strlen(raw), NULL, expected);
}

/* Parses raw (whole) and returns the final status (0 when every request was fine). */
static int status_of(const char *raw, size_t len, const http_limits_t *lim) {
    struct http_ctx c = {lim};
    tu_str_t t = {0};
    run_parser(&c, (const uint8_t *)raw, len, &len, 1, &t);
    int status = 0;
    const char *s = strstr(tu_str_get(&t), "status ");
    if (s)
        status = atoi(s + 7);
    tu_str_free(&t);
    return status;
}

/* ---- requests ---- */

static void test_simple_get(void **state) {
    (void)state;
    expect_parse("GET /presence HTTP/1.1\r\nHost: example.com\r\n\r\n",
                 "GET /presence HTTP/1.1 keep-alive\n"
                 "  path /presence\n"
                 "  Host: \"example.com\"\n"
                 "busy 0\n");
    /* Bare LF line ends are tolerated. */
    expect_parse("GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1 keep-alive\n"
                                                "  path /\n"
                                                "  Host: \"a\"\n"
                                                "busy 0\n");
}

static void test_incomplete(void **state) {
    (void)state;
    expect_parse("GET /presence HTTP/1.1\r\nHost: exa", "busy 1\n");
    expect_parse("GET /presence HTTP/1.1\r\nHost: example.com\r\n\r", "busy 1\n");
    expect_parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc", "busy 1\n");
}

static void test_pipelined(void **state) {
    (void)state;
    static const char raw[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                              "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                              "GET /c?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                              "GET /d HTTP/1.1\r\nHo";
    expect_parse(raw, "GET /a HTTP/1.1 keep-alive\n"
                      "  path /a\n"
                      "  Host: \"h\"\n"
                      "POST /b HTTP/1.1 keep-alive\n"
                      "  path /b\n"
                      "  Host: \"h\"\n"
                      "  Content-Length: \"5\"\n"
                      "  body \"hello\"\n"
                      "GET /c?x=1 HTTP/1.1\n"
                      "  path /c query \"x=1\"\n"
                      "  Host: \"h\"\n"
                      "  Connection: \"close\"\n"
                      "busy 1\n");
    /* One at a time: each call stops at the end of a request. */
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *r;
    int status;
    size_t len = sizeof(raw) - 1;
    size_t n = http_reqparser_feed(p, raw, len, &r, &status);
    assert_int_equal(n, strlen("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_non_null(r);
    assert_int_equal(r->path_len, 2);
    assert_false(http_reqparser_busy(p));
    size_t off = n;
    n = http_reqparser_feed(p, raw + off, len - off, &r, &status);
    assert_int_equal(n, strlen("POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"));
    assert_non_null(r);
    assert_int_equal(r->body_len, 5);
    assert_memory_equal(r->body, "hello", 5);
    off += n;
    n = http_reqparser_feed(p, raw + off, len - off, &r, &status);
    assert_non_null(r);
    assert_false(r->keep_alive);
    off += n;
    n = http_reqparser_feed(p, raw + off, len - off, &r, &status);
    assert_int_equal(off + n, len);
    assert_null(r);
    assert_int_equal(status, 0);
    assert_true(http_reqparser_busy(p));
    http_reqparser_free(p);
}

static void test_blank_lines_between_requests(void **state) {
    (void)state;
    expect_parse("GET /a HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
                 "GET /a HTTP/1.1 keep-alive\n"
                 "  path /a\n"
                 "  Host: \"h\"\n"
                 "GET /b HTTP/1.1 keep-alive\n"
                 "  path /b\n"
                 "  Host: \"h\"\n"
                 "busy 0\n");
}

static void test_keep_alive(void **state) {
    (void)state;
    static const struct {
        const char *raw;
        bool keep_alive;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        http_reqparser_t *p = http_reqparser_new(NULL);
        const http_request_t *r;
        int status;
        size_t len = strlen(cases[i].raw);
        assert_int_equal(http_reqparser_feed(p, cases[i].raw, len, &r, &status), len);
        assert_int_equal(status, 0);
        assert_non_null(r);
        assert_int_equal(r->keep_alive, cases[i].keep_alive);
        http_reqparser_free(p);
    }
}

static void test_content_length_body(void **state) {
    (void)state;
    expect_parse("POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n{\"a\":\"b\r\n\"}",
                 "POST /v1/x HTTP/1.1 keep-alive\n"
                 "  path /v1/x\n"
                 "  Host: \"h\"\n"
                 "  Content-Length: \"11\"\n"
                 "  body \"{\\x22a\\x22:\\x22b\\x0d\\x0a\\x22}\"\n"
                 "busy 0\n");
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                 "POST / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  Content-Length: \"0\"\n"
                 "busy 0\n");
}

static void test_chunked_body(void **state) {
    (void)state;
    /* Trailer fields are not merged into the headers (RFC 9110 section 6.5.2). */
    expect_parse("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "4\r\nWiki\r\n5;ext=1\r\npedia\r\nB\r\n in\r\n\r\nchun\r\n0\r\n"
                 "Host: trailer\r\nX-Trailer: x\r\n\r\n",
                 "POST /c HTTP/1.1 keep-alive\n"
                 "  path /c\n"
                 "  Host: \"h\"\n"
                 "  Transfer-Encoding: \"chunked\"\n"
                 "  body \"Wikipedia in\\x0d\\x0a\\x0d\\x0achun\"\n"
                 "busy 0\n");
    /* A bad chunk size. */
    static const char bad_size[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                   "\r\nzz\r\n";
    assert_int_equal(status_of(bad_size, sizeof(bad_size) - 1, NULL), 400);
}

/* ---- limits ---- */

/* A request whose head is exactly head_len bytes, padded with one X-Pad header. */
static char *head_of(size_t head_len) {
    static const char pre[] = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
    size_t fixed = sizeof(pre) - 1 + 4; /* "\r\n\r\n" */
    assert_true(head_len > fixed);
    char *s = malloc(head_len + 1);
    assert_non_null(s);
    memcpy(s, pre, sizeof(pre) - 1);
    memset(s + sizeof(pre) - 1, 'p', head_len - fixed);
    memcpy(s + head_len - 4, "\r\n\r\n", 5);
    return s;
}

static void test_head_limit(void **state) {
    (void)state;
    /* One giant header: 16 KiB exactly passes, one byte more is 431. */
    char *ok = head_of(16 * 1024);
    assert_int_equal(strlen(ok), 16384);
    /* 32 bytes before the value, 4 after it. */
    expect_parse_lim(ok, 16384, NULL,
                     "GET / HTTP/1.1 keep-alive\n"
                     "  path /\n"
                     "  Host: \"h\"\n"
                     "  X-Pad: <16348 bytes>\n"
                     "busy 0\n");
    free(ok);
    char *big = head_of(16 * 1024 + 1);
    expect_parse_lim(big, 16385, NULL, "status 431\n");
    free(big);
    /* A header that never ends is refused once past the limit, not buffered forever. */
    size_t huge = 1 << 20;
    char *endless = malloc(huge);
    assert_non_null(endless);
    memcpy(endless, "GET / HTTP/1.1\r\nX: ", 19);
    memset(endless + 19, 'e', huge - 19);
    assert_int_equal(status_of(endless, huge, NULL), 431);
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *r;
    int status;
    size_t off = 0, n;
    do {
        n = http_reqparser_feed(p, endless + off, huge - off, &r, &status);
        off += n;
    } while (!status && n);
    assert_int_equal(status, 431);
    assert_true(off <= 16 * 1024 + 1); /* scanned no further than the limit */
    http_reqparser_free(p);
    free(endless);

    /* Many small headers adding up past the limit (fewer than the header count limit). */
    tu_str_t t = {0};
    tu_str_printf(&t, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 60; i++)
        tu_str_printf(&t, "X-%02d: %0300d\r\n", i, i);
    tu_str_printf(&t, "\r\n");
    assert_true(t.len > 16384);
    expect_parse_lim(t.s, t.len, NULL, "status 431\n");
    tu_str_free(&t);

    /* A small custom limit, counted over the request line too. */
    http_limits_t lim;
    http_limits_default(&lim);
    lim.head_max = 40;
    static const char r40[] = "GET /0123456789ab HTTP/1.1\r\nHost: hh\r\n\r\n";
    assert_int_equal(sizeof(r40) - 1, 40);
    expect_parse_lim(r40, 40, &lim,
                     "GET /0123456789ab HTTP/1.1 keep-alive\n"
                     "  path /0123456789ab\n"
                     "  Host: \"hh\"\n"
                     "busy 0\n");
    static const char r41[] = "GET /0123456789abc HTTP/1.1\r\nHost: hh\r\n\r\n";
    expect_parse_lim(r41, 41, &lim, "status 431\n");
    /* The limit holds for each request of a pipeline, not for their sum. */
    tu_str_t pipe = {0};
    for (int i = 0; i < 5; i++)
        tu_str_printf(&pipe, "%s", r40);
    assert_int_equal(status_of(pipe.s, pipe.len, &lim), 0);
    tu_str_free(&pipe);
}

static void test_uri_limit(void **state) {
    (void)state;
    for (size_t len = 8191; len <= 8193; len++) {
        tu_str_t t = {0};
        tu_str_printf(&t, "GET /");
        for (size_t i = 1; i < len; i++)
            tu_str_printf(&t, "%c", i == 100 ? '?' : 'u');
        tu_str_printf(&t, " HTTP/1.1\r\nHost: h\r\n\r\n");
        if (len <= 8192) {
            tu_str_t exp = {0};
            tu_str_printf(&exp,
                          "GET %.*s HTTP/1.1 keep-alive\n  path %.*s query \"%.*s\"\n"
                          "  Host: \"h\"\nbusy 0\n",
                          (int)len, t.s + 4, 100, t.s + 4, (int)(len - 101), t.s + 105);
            expect_parse_lim(t.s, t.len, NULL, tu_str_get(&exp));
            tu_str_free(&exp);
        } else {
            expect_parse_lim(t.s, t.len, NULL, "status 414\n");
        }
        tu_str_free(&t);
    }
    /* A target longer than the whole head limit is still a 414. */
    tu_str_t t = {0};
    tu_str_printf(&t, "GET /");
    for (int i = 0; i < 20000; i++)
        tu_str_printf(&t, "v");
    tu_str_printf(&t, " HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(status_of(t.s, t.len, NULL), 414);
    tu_str_free(&t);
}

static void test_header_count_limit(void **state) {
    (void)state;
    for (int count = 63; count <= 65; count++) {
        tu_str_t t = {0};
        tu_str_printf(&t, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (int i = 1; i < count; i++)
            tu_str_printf(&t, "X-%d: v\r\n", i);
        tu_str_printf(&t, "\r\n");
        assert_int_equal(status_of(t.s, t.len, NULL), count <= 64 ? 0 : 431);
        /* The decision does not depend on how the bytes arrive. */
        struct http_ctx c = {NULL};
        char *got = tu_every_split(run_parser, &c, t.s, t.len);
        if (count > 64)
            assert_string_equal(got, "status 431\n");
        free(got);
        tu_str_free(&t);
    }
    /* A custom limit; one above HTTP_HEADERS_MAX is clamped to it. */
    http_limits_t lim;
    http_limits_default(&lim);
    lim.headers_max = 3;
    expect_parse_lim("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", 39, &lim,
                     "GET / HTTP/1.1 keep-alive\n"
                     "  path /\n"
                     "  Host: \"h\"\n"
                     "  A: \"1\"\n"
                     "  B: \"2\"\n"
                     "busy 0\n");
    expect_parse_lim("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 45, &lim,
                     "status 431\n");
    lim.headers_max = 1000;
    tu_str_t t = {0};
    tu_str_printf(&t, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < 65; i++)
        tu_str_printf(&t, "X-%d: v\r\n", i);
    tu_str_printf(&t, "\r\n");
    assert_int_equal(status_of(t.s, t.len, &lim), 431);
    tu_str_free(&t);
}

static void test_body_limit(void **state) {
    (void)state;
    /* Refused from Content-Length alone: no body byte has been sent. */
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n", "status 413\n");
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999\r\n\r\n",
                 "status 413\n");
    /* Exactly the limit: accepted, waiting for the body. */
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\nab", "busy 1\n");

    http_limits_t lim;
    http_limits_default(&lim);
    lim.body_max = 10;
    static const char ten[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    expect_parse_lim(ten, sizeof(ten) - 1, &lim,
                     "POST / HTTP/1.1 keep-alive\n"
                     "  path /\n"
                     "  Host: \"h\"\n"
                     "  Content-Length: \"10\"\n"
                     "  body \"0123456789\"\n"
                     "busy 0\n");
    static const char eleven[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n";
    expect_parse_lim(eleven, sizeof(eleven) - 1, &lim, "status 413\n");
    /* Chunked: counted as the chunks arrive. */
    static const char chunked_ok[] =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n";
    expect_parse_lim(chunked_ok, sizeof(chunked_ok) - 1, &lim,
                     "POST / HTTP/1.1 keep-alive\n"
                     "  path /\n"
                     "  Host: \"h\"\n"
                     "  Transfer-Encoding: \"chunked\"\n"
                     "  body \"abcdefghij\"\n"
                     "busy 0\n");
    static const char chunked_big[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                      "\r\n6\r\nabcdef\r\n5\r\nghijk\r\n0\r\n\r\n";
    expect_parse_lim(chunked_big, sizeof(chunked_big) - 1, &lim, "status 413\n");
    /* A large chunked body over the default limit, fed in big reads. */
    tu_str_t t = {0};
    tu_str_printf(&t, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 40; i++) {
        tu_str_printf(&t, "8000\r\n");
        for (int j = 0; j < 0x8000 / 64; j++)
            tu_str_printf(&t, "%064d", j);
        tu_str_printf(&t, "\r\n");
    }
    tu_str_printf(&t, "0\r\n\r\n");
    assert_int_equal(status_of(t.s, t.len, NULL), 413);
    tu_str_free(&t);
}

static void test_malformed(void **state) {
    (void)state;
    static const char *bad[] = {
        "FOO / HTTP/1.1\r\nHost: h\r\n\r\n",
        "get / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
        "GET / HTTP/1.x\r\nHost: h\r\n\r\n",
        "GET / HTTP/11\r\nHost: h\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost h\r\n\r\n",
        "GET / HTTP/1.1\r\n: h\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHo st: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        "\x16\x03\x01\x02\x31\x01", /* the start of a TLS ClientHello */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct http_ctx c = {NULL};
        char *got = tu_every_split(run_parser, &c, bad[i], strlen(bad[i]));
        if (strcmp(got, "status 400\n") != 0)
            fail_msg("request %zu: %s", i, got);
        free(got);
    }
}

static void test_host_and_version(void **state) {
    (void)state;
    expect_parse("GET / HTTP/1.1\r\nX: y\r\n\r\n", "status 400\n");
    expect_parse("GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\n  path /\nbusy 0\n");
    /* Versions other than 1.x, well-formed: 505, as documented. */
    expect_parse("GET / HTTP/2.0\r\nHost: h\r\n\r\n", "status 505\n");
    expect_parse("GET / HTTP/3.0\r\nHost: h\r\n\r\n", "status 505\n");
    expect_parse("GET / HTTP/0.9\r\nHost: h\r\n\r\n", "status 505\n");
    expect_parse("GET /\r\n\r\n", "status 505\n"); /* HTTP/0.9's request line */
    /* An absolute-form target is kept as sent; it routes by its path. */
    expect_parse("GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\n",
                 "GET http://h/p?q HTTP/1.1 keep-alive\n"
                 "  path /p query \"q\"\n"
                 "  Host: \"h\"\n"
                 "busy 0\n");
    expect_parse("GET https://h:8080 HTTP/1.1\r\nHost: h\r\n\r\n",
                 "GET https://h:8080 HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "busy 0\n");
    /* The protocol name is exactly HTTP (http_parser alone lets "HTTQ" through). */
    expect_parse("GET / HTTQ/1.1\r\nHost: h\r\n\r\n", "status 400\n");
    expect_parse("GET / http/1.1\r\nHost: h\r\n\r\n", "status 400\n");
}

static void test_cl_and_te(void **state) {
    (void)state;
    /* Request smuggling: both framings at once are refused. */
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 "status 400\n");
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Length: 3\r\n\r\n0\r\n\r\n",
                 "status 400\n");
}

/* Folded header lines (obs-fold): every one is refused, whatever its first line holds. An
 * empty first line used to pass ("Content-Length:" CRLF " 5" was read as Content-Length: 5),
 * while a proxy that forwards folds sees an empty Content-Length: request smuggling. */
static void test_obs_fold(void **state) {
    (void)state;
    static const char *bad[] = {
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n\tb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: \t\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n \r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A:\n b\n\n",
        "GET / HTTP/1.1\r\nHost:\r\n h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n b\r\n c\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\t5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n 0\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n chunked\r\n\r\n0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade:\r\n websocket\r\nConnection: Upgrade\r\n\r\n",
        /* A blank-led line right after the request line (RFC 9112 section 2.2). */
        "GET / HTTP/1.1\r\n Host: h\r\n\r\n",
        "GET / HTTP/1.1\r\n\tHost: h\r\n\r\n",
        /* The second request of a pipeline is held to it too. */
        "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nX:\r\n y\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct http_ctx c = {NULL};
        char *got = tu_every_split(run_parser, &c, bad[i], strlen(bad[i]));
        const char *tail = strstr(got, "status ");
        if (!tail || strcmp(tail, "status 400\n") != 0)
            fail_msg("request %zu: %s", i, got);
        free(got);
    }
    /* Folds over the small limits too (refused 400, or over the limit first). */
    http_limits_t lim;
    http_limits_default(&lim);
    lim.body_max = 2;
    static const char folded_cl[] =
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 5\r\n\r\nhello";
    expect_parse_lim(folded_cl, sizeof(folded_cl) - 1, &lim, "status 400\n");
    /* What looks like a fold in a body, a chunk or a chunked body's trailers is not one. */
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\na\r\n b",
                 "POST / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  Content-Length: \"5\"\n"
                 "  body \"a\\x0d\\x0a b\"\n"
                 "busy 0\n");
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\n\n \n\r\n0\r\n\r\n",
                 "POST / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  Transfer-Encoding: \"chunked\"\n"
                 "  body \"\\x0a \\x0a\"\n"
                 "busy 0\n");
    /* Blank lines before a request are not folds; a value with inner blanks is not either. */
    expect_parse("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nX: a \t b\r\n\r\n",
                 "GET / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  X: \"a \\x09 b\"\n"
                 "busy 0\n");
}

/* Expect (RFC 9110 section 10.1.1): 100-continue is answered with an interim 100 before the
 * body when the head is acceptable; any other expectation is refused 417. */
static void test_expect(void **state) {
    (void)state;
    static const char *failed[] = {
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 101-continue\r\nContent-Length: 1\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, x\r\nContent-Length: 1\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nExpect: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continuee\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect:\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: ,\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nexpect: 100-continue;q=1\r\n\r\n",
        "GET / HTTP/1.0\r\nExpect: something\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(failed) / sizeof(failed[0]); i++) {
        struct http_ctx c = {NULL};
        char *got = tu_every_split(run_parser, &c, failed[i], strlen(failed[i]));
        if (strcmp(got, "status 417\n") != 0)
            fail_msg("request %zu: %s", i, got);
        free(got);
    }
    /* Accepted, in any case and list form; GET without a body: nothing to continue. */
    expect_parse("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n\r\n",
                 "GET / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  Expect: \"100-Continue\"\n"
                 "busy 0\n");
    expect_parse("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue , 100-CONTINUE\r\n"
                 "Content-Length: 2\r\n\r\nab",
                 "POST / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  Expect: \"100-continue , 100-CONTINUE\"\n"
                 "  Content-Length: \"2\"\n"
                 "  body \"ab\"\n"
                 "busy 0\n");

    /* When the interim answer is due: the head first, the body after it. */
    static const struct {
        const char *head;
        bool due;
        int status; /* of the head alone */
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", true,
         0},
        {"POST / HTTP/1.1\r\nHost: h\r\nexpect:  100-CONTINUE \r\nTransfer-Encoding: chunked"
         "\r\n\r\n",
         true, 0},
        /* no Expect */
        {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n", false, 0},
        /* HTTP/1.0: the expectation is ignored (RFC 9110 section 10.1.1) */
        {"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", false, 0},
        /* a head refused is answered, never continued */
        {"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", false, 400},
        {"POST / HTTP/1.1\r\nHost: h\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3"
         "\r\n\r\n",
         false, 400},
        {"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
         false, 413},
        {"POST / HTTP/2.0\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", false,
         505},
        {"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nX:\r\n y\r\nContent-Length: 3"
         "\r\n\r\n",
         false, 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        http_reqparser_t *p = http_reqparser_new(NULL);
        const http_request_t *r;
        int status;
        size_t hl = strlen(cases[i].head);
        size_t used = http_reqparser_feed(p, cases[i].head, hl, &r, &status);
        assert_null(r);
        if (status != cases[i].status)
            fail_msg("case %zu: status %d", i, status);
        if (http_reqparser_take_continue(p) != cases[i].due)
            fail_msg("case %zu: continue %s", i, cases[i].due ? "not due" : "due");
        assert_false(http_reqparser_take_continue(p));
        if (status == 0) {
            assert_int_equal(used, hl);
            const char *body = strstr(cases[i].head, "chunked") ? "3\r\nabc\r\n0\r\n\r\n" : "abc";
            assert_int_equal(http_reqparser_feed(p, body, strlen(body), &r, &status), strlen(body));
            assert_int_equal(status, 0);
            assert_non_null(r);
            assert_int_equal(r->body_len, 3);
            assert_false(http_reqparser_take_continue(p));
        }
        http_reqparser_free(p);
    }
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *r;
    int status;
    /* No body announced: complete with its head, nothing to continue. */
    static const char empty[] =
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n";
    http_reqparser_feed(p, empty, sizeof(empty) - 1, &r, &status);
    assert_non_null(r);
    assert_false(http_reqparser_take_continue(p));
    /* Head and body in one read: the body is here, the interim answer is left out. */
    static const char whole[] =
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc";
    http_reqparser_feed(p, whole, sizeof(whole) - 1, &r, &status);
    assert_non_null(r);
    assert_false(http_reqparser_take_continue(p));
    /* A keep-alive request after it asks again, and is told again. */
    static const char again[] =
        "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    assert_int_equal(http_reqparser_feed(p, again, sizeof(again) - 1, &r, &status),
                     sizeof(again) - 1);
    assert_null(r);
    assert_true(http_reqparser_take_continue(p));
    http_reqparser_free(p);
}

static void test_target_split(void **state) {
    (void)state;
    static const struct {
        const char *target, *path, *query; /* query NULL: none */
    } cases[] = {
        {"/", "/", NULL},
        {"/a/b?x=1&y=2", "/a/b", "x=1&y=2"},
        {"/a/b?x=1&y=2#frag", "/a/b", "x=1&y=2"},
        {"/p#f?x", "/p", NULL},
        {"/p?", "/p", ""},
        {"/p?#", "/p", ""},
        {"/p#", "/p", NULL},
        {"/p??q", "/p", "?q"},
        {"/p?a=%20b+c", "/p", "a=%20b+c"},
        {"*", "*", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tu_str_t raw = {0}, exp = {0};
        const char *method = cases[i].target[0] == '*' ? "OPTIONS" : "GET";
        tu_str_printf(&raw, "%s %s HTTP/1.1\r\nHost: h\r\n\r\n", method, cases[i].target);
        tu_str_printf(&exp, "%s %s HTTP/1.1 keep-alive\n  path %s", method, cases[i].target,
                      cases[i].path);
        if (cases[i].query)
            tu_str_printf(&exp, " query \"%s\"", cases[i].query);
        tu_str_printf(&exp, "\n  Host: \"h\"\nbusy 0\n");
        expect_parse_lim(raw.s, raw.len, NULL, tu_str_get(&exp));
        tu_str_free(&raw);
        tu_str_free(&exp);
    }
}

static void test_header_values(void **state) {
    (void)state;
    expect_parse("GET / HTTP/1.1\r\nHost:h\r\nA:   v  \t\r\nB:\r\nC: \t \r\nD: a  b\r\n"
                 "E:\tx\r\nF: caf\xc3\xa9\r\n\r\n",
                 "GET / HTTP/1.1 keep-alive\n"
                 "  path /\n"
                 "  Host: \"h\"\n"
                 "  A: \"v\"\n"
                 "  B: \"\"\n"
                 "  C: \"\"\n"
                 "  D: \"a  b\"\n"
                 "  E: \"x\"\n"
                 "  F: \"caf\\xc3\\xa9\"\n"
                 "busy 0\n");
}

static void test_zero_length_feed(void **state) {
    (void)state;
    /* Feeding nothing is not end of input: nothing happens, before or inside a request. */
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *r;
    int status;
    assert_int_equal(http_reqparser_feed(p, "", 0, &r, &status), 0);
    assert_int_equal(status, 0);
    assert_null(r);
    static const char part[] = "GET / HTTP/1.1\r\nHo";
    assert_int_equal(http_reqparser_feed(p, part, sizeof(part) - 1, &r, &status), sizeof(part) - 1);
    assert_int_equal(http_reqparser_feed(p, "", 0, &r, &status), 0);
    assert_int_equal(status, 0);
    assert_null(r);
    assert_true(http_reqparser_busy(p));
    static const char rest[] = "st: h\r\n\r\n";
    assert_int_equal(http_reqparser_feed(p, rest, sizeof(rest) - 1, &r, &status), sizeof(rest) - 1);
    assert_int_equal(status, 0);
    assert_non_null(r);
    http_reqparser_free(p);
}

static void test_upgrade_rest(void **state) {
    (void)state;
    expect_parse("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "\r\n\x81\x85\x37\xfa\x21\x3d\x7f",
                 "GET /ws HTTP/1.1 keep-alive upgrade\n"
                 "  path /ws\n"
                 "  Host: \"h\"\n"
                 "  Upgrade: \"websocket\"\n"
                 "  Connection: \"Upgrade\"\n"
                 "upgrade: 7 bytes left\n");
}

static void test_busy_and_free(void **state) {
    (void)state;
    http_reqparser_t *p = http_reqparser_new(NULL);
    assert_false(http_reqparser_busy(p));
    const http_request_t *r;
    int status;
    http_reqparser_feed(p, "\r\n", 2, &r, &status);
    assert_false(http_reqparser_busy(p)); /* blank lines before a request are not one */
    http_reqparser_feed(p, "G", 1, &r, &status);
    assert_true(http_reqparser_busy(p));
    http_reqparser_free(p); /* mid-request: the leak checker holds us to freeing it all */
    http_reqparser_free(NULL);
}

/* ---- helpers ---- */

static void test_request_header_lookup(void **state) {
    (void)state;
    static const char raw[] = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n"
                              "Accept: a\r\naccept: b\r\nX: short\r\n\r\n";
    http_reqparser_t *p = http_reqparser_new(NULL);
    const http_request_t *r;
    int status;
    http_reqparser_feed(p, raw, sizeof(raw) - 1, &r, &status);
    assert_non_null(r);
    const http_header_t *h = http_request_header(r, "host");
    assert_non_null(h);
    assert_int_equal(h->value_len, 1);
    assert_non_null(http_request_header(r, "HOST"));
    assert_non_null(http_request_header(r, "x-forwarded-for"));
    /* Exact length: neither a prefix nor an extension matches. */
    assert_null(http_request_header(r, "Hos"));
    assert_null(http_request_header(r, "Host2"));
    assert_null(http_request_header(r, "X-Forwarded"));
    assert_null(http_request_header(r, "X-Forwarded-For-"));
    assert_null(http_request_header(r, ""));
    h = http_request_header(r, "x");
    assert_non_null(h);
    assert_memory_equal(h->value, "short", 5);
    /* The first of duplicates. */
    h = http_request_header(r, "ACCEPT");
    assert_non_null(h);
    assert_memory_equal(h->value, "a", 1);
    http_reqparser_free(p);
}

static bool has_token(const char *value, const char *token) {
    /* The value is not NUL-terminated: it ends at a guarded page. */
    tu_guard_t g;
    tu_guard_init(&g, strlen(value) + 1);
    const char *v = (const char *)tu_guard_place(&g, value, strlen(value));
    bool r = http_header_has_token(v, strlen(value), token);
    tu_guard_destroy(&g);
    return r;
}

static void test_header_has_token(void **state) {
    (void)state;
    assert_true(has_token("Upgrade", "upgrade"));
    assert_true(has_token("keep-alive, Upgrade", "upgrade"));
    assert_true(has_token("keep-alive,Upgrade", "Upgrade"));
    assert_true(has_token("Upgrade, keep-alive", "upgrade"));
    assert_true(has_token("  upgrade  ", "upgrade"));
    assert_true(has_token("a,\tupgrade\t,b", "UPGRADE"));
    assert_true(has_token(",,upgrade,,", "upgrade"));
    assert_false(has_token("Upgraded", "upgrade"));
    assert_false(has_token("Upgrade2", "upgrade"));
    assert_false(has_token("xUpgrade", "upgrade"));
    assert_false(has_token("up grade", "upgrade"));
    assert_false(has_token("upgrade-insecure-requests", "upgrade"));
    assert_false(has_token("", "upgrade"));
    assert_false(has_token(",", "upgrade"));
    assert_false(has_token("upgrad", "upgrade"));
    assert_false(has_token("keep-alive", "upgrade"));
    /* Only len bytes count. */
    assert_false(http_header_has_token("upgrade", 6, "upgrade"));
    assert_true(http_header_has_token("upgrade, x", 7, "upgrade"));
}

/* http_query_get on a copy of query ending at a guarded page (not NUL-terminated). */
static int query_get(const char *query, const char *key, char *out, size_t out_size) {
    tu_guard_t g;
    tu_guard_init(&g, strlen(query) + 1);
    const char *q = (const char *)tu_guard_place(&g, query, strlen(query));
    int rc = http_query_get(q, strlen(query), key, out, out_size);
    tu_guard_destroy(&g);
    return rc;
}

static void expect_query(const char *query, const char *key, const char *want) {
    char out[64];
    memset(out, 'Z', sizeof(out));
    int rc = query_get(query, key, out, sizeof(out));
    if (rc != (int)strlen(want) || strcmp(out, want) != 0)
        fail_msg("query '%s' key '%s': rc %d '%s', want '%s'", query, key, rc, rc >= 0 ? out : "",
                 want);
}

static void test_query_get(void **state) {
    (void)state;
    expect_query("a=1&b=2", "a", "1");
    expect_query("a=1&b=2", "b", "2");
    expect_query("user=al%69ce&x", "user", "alice");
    expect_query("q=%41%42%2f%2F", "q", "AB//");
    expect_query("q=a+b%2Bc", "q", "a b+c");
    expect_query("q=%e2%82%ac", "q", "\xe2\x82\xac");
    expect_query("ab=1&a=2", "a", "2"); /* a key that prefixes another */
    expect_query("a=1&ab=2", "ab", "2");
    expect_query("a=1&a=2", "a", "1"); /* the first */
    expect_query("&&a=1&", "a", "1");
    expect_query("a", "a", "");  /* no '=': empty value */
    expect_query("a=", "a", ""); /* empty value */
    expect_query("x=1&a", "a", "");
    expect_query("a==b", "a", "=b");
    char out[64];
    assert_int_equal(query_get("a=1&b=2", "c", out, sizeof(out)), PD_ENOTFOUND);
    assert_int_equal(query_get("ab=1", "a", out, sizeof(out)), PD_ENOTFOUND);
    assert_int_equal(query_get("a=1", "ab", out, sizeof(out)), PD_ENOTFOUND);
    assert_int_equal(query_get("", "a", out, sizeof(out)), PD_ENOTFOUND);
    assert_int_equal(http_query_get(NULL, 0, "a", out, sizeof(out)), PD_ENOTFOUND);
    /* Keys are compared as sent, not decoded. */
    assert_int_equal(query_get("%61=1", "a", out, sizeof(out)), PD_ENOTFOUND);
    /* Bad escapes. */
    const char *bad[] = {"a=%", "a=%4", "a=%zz", "a=%4g", "a=x%", "a=%%41", "a=%00", "a=b%00c"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (query_get(bad[i], "a", out, sizeof(out)) != PD_EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    /* A bad escape in another key's value does not matter. */
    expect_query("b=%zz&a=ok", "a", "ok");
    /* Output size: out_size - 1 bytes fit, not more. */
    char small[4];
    assert_int_equal(query_get("a=abc", "a", small, sizeof(small)), 3);
    assert_string_equal(small, "abc");
    assert_int_equal(query_get("a=abcd", "a", small, sizeof(small)), PD_ETOOBIG);
    assert_int_equal(query_get("a=%41%41%41%41", "a", small, sizeof(small)), PD_ETOOBIG);
    assert_int_equal(query_get("a=%41%41%41", "a", small, sizeof(small)), 3);
    assert_int_equal(query_get("a=", "a", small, 1), 0);
    assert_string_equal(small, "");
}

static void test_status_reason(void **state) {
    (void)state;
    assert_string_equal(http_status_reason(200), "OK");
    assert_string_equal(http_status_reason(101), "Switching Protocols");
    assert_string_equal(http_status_reason(404), "Not Found");
    assert_string_equal(http_status_reason(413), "Content Too Large");
    assert_string_equal(http_status_reason(414), "URI Too Long");
    assert_string_equal(http_status_reason(426), "Upgrade Required");
    assert_string_equal(http_status_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_reason(505), "HTTP Version Not Supported");
    assert_string_equal(http_status_reason(299), "Unknown");
    /* Every status the parser can answer with has a phrase. */
    assert_string_equal(http_status_reason(100), "Continue");
    assert_string_equal(http_status_reason(417), "Expectation Failed");
    int statuses[] = {400, 413, 414, 417, 431, 505};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        assert_string_not_equal(http_status_reason(statuses[i]), "Unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_blank_lines_between_requests),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_content_length_body),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_head_limit),
        cmocka_unit_test(test_uri_limit),
        cmocka_unit_test(test_header_count_limit),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_host_and_version),
        cmocka_unit_test(test_cl_and_te),
        cmocka_unit_test(test_obs_fold),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_target_split),
        cmocka_unit_test(test_header_values),
        cmocka_unit_test(test_zero_length_feed),
        cmocka_unit_test(test_upgrade_rest),
        cmocka_unit_test(test_busy_and_free),
        cmocka_unit_test(test_request_header_lookup),
        cmocka_unit_test(test_header_has_token),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_status_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
