/* The metrics registry (metrics.h) and its Prometheus text rendering: series identity,
 * families in registration order, label escaping, gauge callbacks, and output that a strict
 * reader of the exposition format accepts line by line.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <math.h>

#include "testutil.h"

#include "metrics.h"

/* Renders m into a NUL-terminated string (freed by the caller). */
static char *render(const pd_metrics_t *m) {
    pd_obuf_t *b = pd_metrics_render(m);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    size_t n = pd_obuf_len(b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    memcpy(s, pd_obuf_bytes(b), n);
    s[n] = '\0';
    pd_obuf_release(b);
    return s;
}

static void expect_render(const pd_metrics_t *m, const char *want) {
    char *got = render(m);
    assert_string_equal(got, want);
    free(got);
}

static void test_empty(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    assert_non_null(m);
    expect_render(m, "");
    pd_metrics_free(m);
    pd_metrics_free(NULL);
}

static void test_counter(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    uint64_t *c = pd_metrics_counter(m, "pd_requests_total", "HTTP requests answered", NULL, NULL);
    assert_non_null(c);
    assert_int_equal(*c, 0);
    expect_render(m, "# HELP pd_requests_total HTTP requests answered\n"
                     "# TYPE pd_requests_total counter\n"
                     "pd_requests_total 0\n");
    *c += 5;
    /* Registering again finds the same series. */
    assert_ptr_equal(
        pd_metrics_counter(m, "pd_requests_total", "HTTP requests answered", NULL, NULL), c);
    (*c)++;
    expect_render(m, "# HELP pd_requests_total HTTP requests answered\n"
                     "# TYPE pd_requests_total counter\n"
                     "pd_requests_total 6\n");
    *c = UINT64_MAX;
    expect_render(m, "# HELP pd_requests_total HTTP requests answered\n"
                     "# TYPE pd_requests_total counter\n"
                     "pd_requests_total 18446744073709551615\n");
    pd_metrics_free(m);
}

static void test_labelled_series(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    uint64_t *c1000 = pd_metrics_counter(m, "pd_ws_closes_total", "close frames", "code", "1000");
    uint64_t *c1002 = pd_metrics_counter(m, "pd_ws_closes_total", "close frames", "code", "1002");
    assert_non_null(c1000);
    assert_non_null(c1002);
    assert_ptr_not_equal(c1000, c1002);
    /* The label value is copied: the caller's buffer may change. */
    char v[8] = "1000";
    assert_ptr_equal(pd_metrics_counter(m, "pd_ws_closes_total", "close frames", "code", v), c1000);
    v[3] = '9';
    uint64_t *c1009 = pd_metrics_counter(m, "pd_ws_closes_total", "close frames", "code", v);
    assert_ptr_not_equal(c1009, c1000);
    strcpy(v, "XXXX");
    *c1000 = 3;
    *c1009 = 1;
    expect_render(m, "# HELP pd_ws_closes_total close frames\n"
                     "# TYPE pd_ws_closes_total counter\n"
                     "pd_ws_closes_total{code=\"1000\"} 3\n"
                     "pd_ws_closes_total{code=\"1002\"} 0\n"
                     "pd_ws_closes_total{code=\"1009\"} 1\n");
    pd_metrics_free(m);
}

static void test_families_in_order(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    int64_t *conns = pd_metrics_gauge(m, "pd_connections", "open connections", NULL, NULL);
    uint64_t *msgs = pd_metrics_counter(m, "pd_messages_total", "messages", "dir", "in");
    int64_t *conns2 = pd_metrics_gauge(m, "pd_connections", "open connections", NULL, NULL);
    uint64_t *out = pd_metrics_counter(m, "pd_messages_total", "messages", "dir", "out");
    assert_ptr_equal(conns, conns2);
    *conns = -5; /* gauges are signed */
    *msgs = 10;
    *out = 20;
    expect_render(m, "# HELP pd_connections open connections\n"
                     "# TYPE pd_connections gauge\n"
                     "pd_connections -5\n"
                     "# HELP pd_messages_total messages\n"
                     "# TYPE pd_messages_total counter\n"
                     "pd_messages_total{dir=\"in\"} 10\n"
                     "pd_messages_total{dir=\"out\"} 20\n");
    *conns = INT64_MIN;
    char *s = render(m);
    assert_non_null(strstr(s, "pd_connections -9223372036854775808\n"));
    free(s);
    pd_metrics_free(m);
}

static void test_label_escaping(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    uint64_t *c = pd_metrics_counter(m, "pd_x_total", "x", "path", "a\"b\\c\nd");
    assert_non_null(c);
    pd_metrics_counter(m, "pd_x_total", "x", "path", "");
    pd_metrics_counter(m, "pd_x_total", "x", "path", "\\\\\"\"\n\n");
    pd_metrics_counter(m, "pd_x_total", "x", "path", "caf\xc3\xa9 {} =,");
    expect_render(m, "# HELP pd_x_total x\n"
                     "# TYPE pd_x_total counter\n"
                     "pd_x_total{path=\"a\\\"b\\\\c\\nd\"} 0\n"
                     "pd_x_total{path=\"\"} 0\n"
                     "pd_x_total{path=\"\\\\\\\\\\\"\\\"\\n\\n\"} 0\n"
                     "pd_x_total{path=\"caf\xc3\xa9 {} =,\"} 0\n");
    pd_metrics_free(m);
}

static double gauge_value(void *ctx) {
    int *calls = ctx;
    (*calls)++;
    return *calls * 1.5;
}

static double gauge_const(void *ctx) {
    return *(double *)ctx;
}

static void test_gauge_fn(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    int calls = 0;
    assert_int_equal(
        pd_metrics_gauge_fn(m, "pd_rss_bytes", "resident memory", NULL, NULL, gauge_value, &calls),
        0);
    assert_int_equal(calls, 0); /* read at scrape time only */
    expect_render(m, "# HELP pd_rss_bytes resident memory\n"
                     "# TYPE pd_rss_bytes gauge\n"
                     "pd_rss_bytes 1.5\n");
    expect_render(m, "# HELP pd_rss_bytes resident memory\n"
                     "# TYPE pd_rss_bytes gauge\n"
                     "pd_rss_bytes 3\n");
    assert_int_equal(calls, 2);
    /* Labelled callbacks, and values that need care. */
    double big = 1e21, frac = 0.1, neg = -2.25, whole = 123456789.0;
    pd_metrics_gauge_fn(m, "pd_vals", "values", "k", "big", gauge_const, &big);
    pd_metrics_gauge_fn(m, "pd_vals", "values", "k", "frac", gauge_const, &frac);
    pd_metrics_gauge_fn(m, "pd_vals", "values", "k", "neg", gauge_const, &neg);
    pd_metrics_gauge_fn(m, "pd_vals", "values", "k", "whole", gauge_const, &whole);
    char *s = render(m);
    assert_non_null(strstr(s, "# TYPE pd_vals gauge\n"));
    assert_non_null(strstr(s, "pd_vals{k=\"big\"} 1e+21\n"));
    assert_non_null(strstr(s, "pd_vals{k=\"neg\"} -2.25\n"));
    assert_non_null(strstr(s, "pd_vals{k=\"whole\"} 123456789\n"));
    /* The value printed reads back exactly. */
    const char *f = strstr(s, "pd_vals{k=\"frac\"} ");
    assert_non_null(f);
    assert_true(strtod(f + strlen("pd_vals{k=\"frac\"} "), NULL) == 0.1);
    free(s);
    pd_metrics_free(m);
}

static void test_special_float_values(void **state) {
    (void)state;
    /* The exposition format spells these NaN, +Inf and -Inf. */
    pd_metrics_t *m = pd_metrics_new();
    double nan_v = NAN, inf_v = INFINITY, ninf_v = -INFINITY;
    pd_metrics_gauge_fn(m, "pd_f", "f", "v", "nan", gauge_const, &nan_v);
    pd_metrics_gauge_fn(m, "pd_f", "f", "v", "inf", gauge_const, &inf_v);
    pd_metrics_gauge_fn(m, "pd_f", "f", "v", "ninf", gauge_const, &ninf_v);
    expect_render(m, "# HELP pd_f f\n"
                     "# TYPE pd_f gauge\n"
                     "pd_f{v=\"nan\"} NaN\n"
                     "pd_f{v=\"inf\"} +Inf\n"
                     "pd_f{v=\"ninf\"} -Inf\n");
    pd_metrics_free(m);
}

static void test_long_help_and_names(void **state) {
    (void)state;
    /* Help text and names longer than any fixed line buffer are rendered whole. */
    static char help[2000], name[700], label[600];
    memset(help, 'h', sizeof(help) - 1);
    memset(name, 'n', sizeof(name) - 1);
    memset(label, 'l', sizeof(label) - 1);
    pd_metrics_t *m = pd_metrics_new();
    uint64_t *c = pd_metrics_counter(m, name, help, label, "v");
    assert_non_null(c);
    *c = 7;
    char *s = render(m);
    tu_str_t want = {0};
    tu_str_printf(&want, "# HELP %s %s\n# TYPE %s counter\n%s{%s=\"v\"} 7\n", name, help, name,
                  name, label);
    assert_string_equal(s, tu_str_get(&want));
    tu_str_free(&want);
    free(s);
    pd_metrics_free(m);
}

static void test_help_escaping(void **state) {
    (void)state;
    /* In HELP, backslash and newline are escaped (quotes are not). */
    pd_metrics_t *m = pd_metrics_new();
    pd_metrics_counter(m, "pd_h_total", "line one\nline \"two\" C:\\path", NULL, NULL);
    expect_render(m, "# HELP pd_h_total line one\\nline \"two\" C:\\\\path\n"
                     "# TYPE pd_h_total counter\n"
                     "pd_h_total 0\n");
    pd_metrics_free(m);
}

/* Checks every line of a rendering against the text format's grammar (simplified: metric
 * names [a-zA-Z_:][a-zA-Z0-9_:]*, one optional label, a numeric value). */
static void check_format(const char *s) {
    const char *line = s;
    while (*line) {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl); /* every line ends in \n */
        size_t len = (size_t)(nl - line);
        if (line[0] == '#') {
            assert_true(strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0);
        } else {
            size_t i = 0;
            assert_true(isalpha((unsigned char)line[0]) || line[0] == '_' || line[0] == ':');
            while (i < len && (isalnum((unsigned char)line[i]) || line[i] == '_' || line[i] == ':'))
                i++;
            if (line[i] == '{') {
                i++;
                while (i < len && line[i] != '=')
                    i++;
                assert_true(line[i] == '=' && line[i + 1] == '"');
                i += 2;
                while (i < len && line[i] != '"') {
                    if (line[i] == '\\') {
                        assert_true(line[i + 1] == '\\' || line[i + 1] == '"' ||
                                    line[i + 1] == 'n');
                        i++;
                    }
                    i++;
                }
                assert_true(line[i] == '"' && line[i + 1] == '}');
                i += 2;
            }
            assert_int_equal(line[i], ' ');
            char *end;
            strtod(line + i + 1, &end);
            assert_ptr_equal(end, nl);
        }
        line = nl + 1;
    }
}

static void test_many_series(void **state) {
    (void)state;
    pd_metrics_t *m = pd_metrics_new();
    /* More than the initial 16 KiB render buffer. */
    for (int f = 0; f < 20; f++) {
        char fname[32];
        snprintf(fname, sizeof(fname), "pd_family_%d_total", f);
        /* Names are borrowed: keep them alive in a static table. */
        static char names[20][32];
        strcpy(names[f], fname);
        for (int i = 0; i < 100; i++) {
            char v[16];
            snprintf(v, sizeof(v), "v\"%d\\", i);
            uint64_t *c = pd_metrics_counter(m, names[f], "a family", "id", v);
            assert_non_null(c);
            *c = (uint64_t)(f * 1000 + i);
        }
    }
    char *s = render(m);
    assert_true(strlen(s) > 16384);
    check_format(s);
    assert_non_null(strstr(s, "pd_family_19_total{id=\"v\\\"99\\\\\"} 19099\n"));
    assert_non_null(strstr(s, "pd_family_0_total{id=\"v\\\"0\\\\\"} 0\n"));
    free(s);
    pd_metrics_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_counter),
        cmocka_unit_test(test_labelled_series),
        cmocka_unit_test(test_families_in_order),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_gauge_fn),
        cmocka_unit_test(test_special_float_values),
        cmocka_unit_test(test_long_help_and_names),
        cmocka_unit_test(test_help_escaping),
        cmocka_unit_test(test_many_series),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
