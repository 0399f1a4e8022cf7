/* The JSON writer: exact output for nesting, commas and escapes, jw_time's formatting, and the
 * sticky errors (unbalanced containers, nesting depth). Whatever it finishes must parse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/jsonw.h"
#include "util/obuf.h"

/* Finishes w and checks the payload is exactly want (and, when it is a container, JSON). */
static void expect(jsonw_t *w, const char *want) {
    pd_obuf_t *b = jw_finish(w);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    /* The payload starts after the headroom, unsealed. */
    assert_int_equal(b->head, PD_OBUF_HEADROOM);
    size_t n = pd_obuf_payload_len(b);
    if (n != strlen(want) || memcmp(pd_obuf_payload(b), want, n) != 0)
        fail_msg("wrote  %.*s\nwanted %s", (int)n, (const char *)pd_obuf_payload(b), want);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), n);
    if (!j)
        fail_msg("not JSON: %s", want);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void test_empty_containers(void **state) {
    (void)state;
    jsonw_t w;
    jw_init(&w, 0);
    jw_obj(&w);
    jw_obj_end(&w);
    expect(&w, "{}");
    jw_init(&w, 1);
    jw_arr(&w);
    jw_arr_end(&w);
    expect(&w, "[]");
    jw_init(&w, 8);
    jw_arr(&w);
    jw_arr(&w);
    jw_arr_end(&w);
    jw_obj(&w);
    jw_obj_end(&w);
    jw_arr(&w);
    jw_arr_end(&w);
    jw_arr_end(&w);
    expect(&w, "[[],{},[]]");
}

static void test_values_and_commas(void **state) {
    (void)state;
    jsonw_t w;
    jw_init(&w, 4); /* small: the buffer grows */
    jw_obj(&w);
    jw_key(&w, "s");
    jw_cstr(&w, "text");
    jw_key(&w, "n");
    jw_null(&w);
    jw_key(&w, "t");
    jw_bool(&w, true);
    jw_key(&w, "f");
    jw_bool(&w, false);
    jw_key(&w, "i");
    jw_int(&w, -42);
    jw_key(&w, "max");
    jw_int(&w, INT64_MAX);
    jw_key(&w, "min");
    jw_int(&w, INT64_MIN);
    jw_key(&w, "z");
    jw_int(&w, 0);
    jw_key(&w, "nul");
    jw_cstr(&w, NULL);
    jw_keyn(&w, "keyXX", 3);
    jw_str(&w, "abcdef", 2);
    jw_key(&w, "raw");
    jw_raw(&w, "{\"a\":[1,2]}", 11);
    jw_key(&w, "a");
    jw_arr(&w);
    jw_int(&w, 1);
    jw_cstr(&w, "two");
    jw_obj(&w);
    jw_key(&w, "x");
    jw_arr(&w);
    jw_arr_end(&w);
    jw_obj_end(&w);
    jw_null(&w);
    jw_raw(&w, "3", 1);
    jw_arr_end(&w);
    jw_key(&w, "last");
    jw_str(&w, "", 0);
    jw_obj_end(&w);
    expect(&w, "{\"s\":\"text\",\"n\":null,\"t\":true,\"f\":false,\"i\":-42,"
               "\"max\":9223372036854775807,\"min\":-9223372036854775808,\"z\":0,\"nul\":null,"
               "\"key\":\"ab\",\"raw\":{\"a\":[1,2]},\"a\":[1,\"two\",{\"x\":[]},null,3],"
               "\"last\":\"\"}");
}

static void test_top_level_scalars(void **state) {
    (void)state;
    jsonw_t w;
    jw_init(&w, 0);
    jw_cstr(&w, "alone");
    expect(&w, "\"alone\"");
    jw_init(&w, 0);
    jw_int(&w, 7);
    expect(&w, "7");
    jw_init(&w, 0);
    jw_null(&w);
    expect(&w, "null");
}

static void test_escaping(void **state) {
    (void)state;
    jsonw_t w;
    jw_init(&w, 16);
    jw_arr(&w);
    jw_cstr(&w, "\"");
    jw_cstr(&w, "\\");
    jw_cstr(&w, "a\"b\\c");
    jw_cstr(&w, "\n\r\t");
    jw_cstr(&w, "\x01\x08\x0C\x1F");
    jw_cstr(&w, "/\x7F");
    jw_cstr(&w, "caf\xC3\xA9 \xF0\x9F\x98\x80");
    jw_str(&w, "nul\0in", 6);
    jw_arr_end(&w);
    expect(&w, "[\"\\\"\",\"\\\\\",\"a\\\"b\\\\c\",\"\\n\\r\\t\",\"\\u0001\\u0008\\u000c\\u001f\","
               "\"/\x7F\",\"caf\xC3\xA9 \xF0\x9F\x98\x80\",\"nul\\u0000in\"]");

    /* Keys are escaped the same way. */
    jw_init(&w, 16);
    jw_obj(&w);
    jw_key(&w, "q\"k\\\n");
    jw_int(&w, 1);
    jw_obj_end(&w);
    expect(&w, "{\"q\\\"k\\\\\\n\":1}");

    /* Every byte below 0x20 round-trips through a JSON parser. */
    char all[32];
    for (int c = 1; c < 32; c++)
        all[c - 1] = (char)c;
    all[31] = '\0';
    jw_init(&w, 8);
    jw_arr(&w);
    jw_cstr(&w, all);
    jw_arr_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    assert_non_null(b);
    for (size_t i = 0; i < pd_obuf_payload_len(b); i++)
        assert_true(pd_obuf_payload(b)[i] >= 0x20);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_string_equal(cJSON_GetArrayItem(j, 0)->valuestring, all);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void test_long_strings(void **state) {
    (void)state;
    /* Long text, escapes spread through it: the buffer grows many times. */
    size_t n = 100000;
    char *s = malloc(n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        s[i] = i % 97 == 0 ? '"' : i % 89 == 0 ? '\n' : (char)('a' + i % 26);
    s[n] = '\0';
    jsonw_t w;
    jw_init(&w, 0);
    jw_obj(&w);
    jw_key(&w, "k");
    jw_cstr(&w, s);
    jw_obj_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    assert_non_null(b);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "k")->valuestring, s);
    cJSON_Delete(j);
    pd_obuf_release(b);
    free(s);
}

static void time_is(double t, const char *want) {
    jsonw_t w;
    jw_init(&w, 0);
    jw_time(&w, t);
    expect(&w, want);
}

static void test_time(void **state) {
    (void)state;
    time_is(1764316800.123, "1764316800.123");
    time_is(1764316800.0, "1764316800.000");
    time_is(1764316800.5, "1764316800.500");
    time_is(0, "0.000");
    time_is(0.0004, "0.000");
    time_is(0.0006, "0.001");
    time_is(1.25, "1.250");
    time_is(-1.5, "-1.500");
    time_is(4102444800.999, "4102444800.999"); /* year 2100 */
    time_is(0.9996, "1.000");                  /* rounding carries into the seconds */
    time_is(999999999999.9994, "999999999999.999");
    time_is(1e12, "1000000000000.000"); /* past the fast path: snprintf */
    time_is(12.0005 + 1e-9, "12.001");

    /* Within an object, with commas around it. */
    jsonw_t w;
    jw_init(&w, 0);
    jw_obj(&w);
    jw_key(&w, "a");
    jw_time(&w, 1.0);
    jw_key(&w, "b");
    jw_time(&w, 2.002);
    jw_obj_end(&w);
    expect(&w, "{\"a\":1.000,\"b\":2.002}");

    /* The same digits as snprintf("%.3f") but for values within a hair of a half millisecond
     * (where the two may round differently). */
    uint64_t x = 88172645463325252ull; /* xorshift: the same values every run */
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double t = (double)(x % 5000000000000ull) / 1000.0 + (double)(x >> 60) / 10000.0;
        char want[64];
        snprintf(want, sizeof(want), "%.3f", t);
        double frac = t * 1000.0 - floor(t * 1000.0);
        if (fabs(frac - 0.5) < 1e-3)
            continue;
        jsonw_t tw;
        jw_init(&tw, 0);
        jw_time(&tw, t);
        pd_obuf_t *b = jw_finish(&tw);
        assert_non_null(b);
        assert_int_equal(pd_obuf_payload_len(b), strlen(want));
        assert_memory_equal(pd_obuf_payload(b), want, strlen(want));
        pd_obuf_release(b);
    }

    /* Parsed back to the millisecond. */
    for (double t = 1764316800.0; t < 1764316801.0; t += 0.0371) {
        jw_init(&w, 0);
        jw_time(&w, t);
        pd_obuf_t *b = jw_finish(&w);
        assert_non_null(b);
        cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
        assert_true(cJSON_IsNumber(j));
        assert_true(fabs(j->valuedouble - t) <= 0.0005 + 1e-6);
        cJSON_Delete(j);
        pd_obuf_release(b);
    }
}

static void test_time_out_of_range(void **state) {
    (void)state;
    /* Values no clock gives must not write past the formatting buffer nor produce non-JSON:
     * a huge one is written in full, a non-number is an error. */
    jsonw_t w;
    jw_init(&w, 0);
    jw_arr(&w);
    jw_time(&w, 1e300);
    jw_time(&w, -1.7976931348623157e308);
    jw_arr_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    assert_non_null(b);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_true(cJSON_GetArrayItem(j, 0)->valuedouble == 1e300);
    assert_true(cJSON_GetArrayItem(j, 1)->valuedouble == -1.7976931348623157e308);
    cJSON_Delete(j);
    pd_obuf_release(b);

    const double bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 3; i++) {
        jw_init(&w, 0);
        jw_arr(&w);
        jw_time(&w, bad[i]);
        jw_arr_end(&w);
        assert_null(jw_finish(&w));
    }
}

static void test_unbalanced(void **state) {
    (void)state;
    jsonw_t w;
    /* Left open. */
    jw_init(&w, 0);
    jw_obj(&w);
    jw_key(&w, "a");
    jw_int(&w, 1);
    assert_null(jw_finish(&w));
    jw_init(&w, 0);
    jw_arr(&w);
    jw_arr(&w);
    jw_arr_end(&w);
    assert_null(jw_finish(&w));
    /* Closed once too often: sticky, even if more is written. */
    jw_init(&w, 0);
    jw_obj(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_obj(&w);
    jw_obj_end(&w);
    assert_null(jw_finish(&w));
    jw_init(&w, 0);
    jw_arr_end(&w);
    assert_null(jw_finish(&w));
    /* A finished writer holds nothing: finishing again gives nothing. */
    jw_init(&w, 0);
    jw_null(&w);
    pd_obuf_t *b = jw_finish(&w);
    assert_non_null(b);
    assert_null(w.b);
    pd_obuf_release(b);
}

static void test_depth_limit(void **state) {
    (void)state;
    jsonw_t w;
    /* 31 levels are fine. */
    jw_init(&w, 0);
    for (int i = 0; i < 31; i++)
        jw_arr(&w);
    jw_int(&w, 1);
    for (int i = 0; i < 31; i++)
        jw_arr_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    assert_non_null(b);
    assert_int_equal(pd_obuf_payload_len(b), 31 * 2 + 1);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* Deeper is an error, sticky through the closes. */
    for (int depth = 32; depth <= 40; depth += 8) {
        jw_init(&w, 0);
        for (int i = 0; i < depth; i++) {
            if (i % 2)
                jw_arr(&w);
            else {
                jw_obj(&w);
                jw_key(&w, "k");
            }
        }
        jw_int(&w, 1);
        for (int i = depth - 1; i >= 0; i--) {
            if (i % 2)
                jw_arr_end(&w);
            else
                jw_obj_end(&w);
        }
        assert_int_not_equal(w.err, 0);
        assert_null(jw_finish(&w));
    }

    /* The commas at each level stay right near the limit. */
    jw_init(&w, 0);
    for (int i = 0; i < 31; i++) {
        jw_arr(&w);
        jw_int(&w, i);
    }
    for (int i = 0; i < 31; i++) {
        jw_int(&w, -i);
        jw_arr_end(&w);
    }
    b = jw_finish(&w);
    assert_non_null(b);
    j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(j), 3);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_containers),  cmocka_unit_test(test_values_and_commas),
        cmocka_unit_test(test_top_level_scalars), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_long_strings),      cmocka_unit_test(test_time),
        cmocka_unit_test(test_time_out_of_range), cmocka_unit_test(test_unbalanced),
        cmocka_unit_test(test_depth_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
