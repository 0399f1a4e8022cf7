/* The wire protocol: proto_decode over every message type and every error code of
 * docs/PROTOCOL.md, the canonical-heartbeat fast path, and every encoder's frames.
 *
 * Every decoder input is copied to the end of a guarded page (testutil.h), so reading one
 * byte past the message faults. Encoder output is checked by parsing it back with cJSON and
 * by reading the WebSocket header in front of it byte by byte.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>

#include "presence/presence.h"
#include "proto/proto.h"
#include "util/error.h"
#include "util/obuf.h"
#include "util/utf8.h"

#define MAX_IDS 5

static tu_guard_t G;
static const proto_limits_t LIM = {.max_ids = MAX_IDS};

static int group_setup(void **state) {
    (void)state;
    tu_guard_init(&G, 1 << 20);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tu_guard_destroy(&G);
    return 0;
}

/* ---- decoding helpers ---- */

static int decode_n(const void *json, size_t len, proto_msg_t *m, proto_error_t *err) {
    uint8_t *at = tu_guard_place(&G, json, len);
    memset(err, 0, sizeof(*err));
    return proto_decode(at, len, &LIM, m, err);
}

/* Decodes a message that must be valid; the caller frees m. */
#define DECODE_OK(json, m)                                                                         \
    do {                                                                                           \
        proto_error_t err_;                                                                        \
        int rc_ = decode_n((json), strlen(json), (m), &err_);                                      \
        if (rc_ != 0)                                                                              \
            fail_msg("%s: refused with %s (%s)", (json), proto_error_name(err_.code),              \
                     err_.message);                                                                \
    } while (0)

/* Decodes a message that must be refused with code; returns the decoded-so-far message's id
 * kind in *m (nothing else may be left in it). */
static void expect_err_n(const void *json, size_t len, int code, proto_msg_t *m) {
    proto_error_t err;
    int rc = decode_n(json, len, m, &err);
    if (rc == 0) {
        proto_msg_free(m);
        fail_msg("%.*s: accepted, expected %s", (int)len, (const char *)json,
                 proto_error_name(code));
    }
    assert_int_equal(rc, PD_EPROTO);
    if (err.code != code)
        fail_msg("%.*s: got %s (%s), expected %s", (int)len, (const char *)json,
                 proto_error_name(err.code), err.message, proto_error_name(code));
    /* Nothing is left to free; the message is for people and is valid UTF-8. */
    assert_null(m->root);
    assert_null(m->ids);
    assert_true(err.message[0] != '\0');
    assert_true(utf8_is_valid((const uint8_t *)err.message, strlen(err.message)));
}

static void expect_err(const char *json, int code) {
    proto_msg_t m;
    expect_err_n(json, strlen(json), code, &m);
}

static void expect_err_m(const char *json, int code, proto_msg_t *m) {
    expect_err_n(json, strlen(json), code, m);
}

static bool opt_is(const proto_opt_t *o, const char *s) {
    return o->state == PROTO_SET && o->v.len == strlen(s) && memcmp(o->v.s, s, o->v.len) == 0;
}

/* A string of n copies of c, in a static buffer. */
static const char *rep(char c, size_t n) {
    static char buf[2][4096];
    static int which;
    char *b = buf[which ^= 1];
    assert_true(n < sizeof(buf[0]));
    memset(b, c, n);
    b[n] = '\0';
    return b;
}

/* printf into a static buffer (two alternate, so two may be live at once). */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...) {
    static char buf[2][16384];
    static int which;
    char *b = buf[which ^= 1];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(b, sizeof(buf[0]), f, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(buf[0]));
    return b;
}

/* ---- valid messages ---- */

static void test_seed_client_messages(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"type\":\"set_online\",\"device\":\"web\"}", &m);
    assert_int_equal(m.type, PROTO_SET_ONLINE);
    assert_true(opt_is(&m.device, "web"));
    assert_int_equal(m.status, -1);
    assert_int_equal(m.auto_away, -1);
    assert_int_equal(m.custom_status.state, PROTO_ABSENT);
    assert_int_equal(m.activity.state, PROTO_ABSENT);
    assert_int_equal(m.id.kind, PROTO_ID_NONE);
    assert_true(m.custom_status_expires_in == 0);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"heartbeat\",\"device\":\"web\"}", &m);
    assert_int_equal(m.type, PROTO_HEARTBEAT);
    assert_true(opt_is(&m.device, "web"));
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_status\",\"status\":\"away\",\"custom_status\":null,"
              "\"activity\":null}",
              &m);
    assert_int_equal(m.type, PROTO_SET_STATUS);
    assert_int_equal(m.status, PD_AWAY);
    assert_int_equal(m.custom_status.state, PROTO_NULL);
    assert_int_equal(m.activity.state, PROTO_NULL);
    assert_int_equal(m.device.state, PROTO_ABSENT);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\"]}", &m);
    assert_int_equal(m.type, PROTO_SUBSCRIBE);
    assert_int_equal(m.nids, 2);
    assert_int_equal(m.ids[0].len, 1);
    assert_memory_equal(m.ids[0].s, "a", 1);
    assert_memory_equal(m.ids[1].s, "b", 1);
    proto_msg_free(&m);
}

static void test_documented_examples(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"type\":\"set_online\",\"device\":\"web\",\"custom_status\":null}", &m);
    assert_int_equal(m.custom_status.state, PROTO_NULL);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"set_status\",\"status\":\"busy\",\"custom_status\":\"in a meeting\","
              "\"activity\":\"meeting\"}",
              &m);
    assert_int_equal(m.status, PD_BUSY);
    assert_true(opt_is(&m.custom_status, "in a meeting"));
    assert_true(opt_is(&m.activity, "meeting"));
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"set_offline\"}", &m);
    assert_int_equal(m.type, PROTO_SET_OFFLINE);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"activity\"}", &m);
    assert_int_equal(m.type, PROTO_ACTIVITY);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[\"bob\",\"carol\"]}", &m);
    assert_int_equal(m.nids, 2);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"get_presence\",\"user_ids\":[\"bob\",\"carol\"],\"id\":7}", &m);
    assert_int_equal(m.type, PROTO_GET_PRESENCE);
    assert_int_equal(m.id.kind, PROTO_ID_INT);
    assert_int_equal(m.id.i, 7);
    assert_int_equal(m.nids, 2);
    assert_memory_equal(m.ids[1].s, "carol", 5);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"ping\"}", &m);
    assert_int_equal(m.type, PROTO_PING);
    proto_msg_free(&m);
}

static void test_every_type_and_field(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"id\":\"r1\",\"type\":\"set_online\",\"device\":\"mobile\",\"status\":\"busy\","
              "\"custom_status\":\"lunch\",\"custom_status_expires_in\":90.5,"
              "\"activity\":\"focus\",\"auto_away\":true}",
              &m);
    assert_int_equal(m.type, PROTO_SET_ONLINE);
    assert_int_equal(m.id.kind, PROTO_ID_STR);
    assert_string_equal(m.id.s, "r1");
    assert_true(opt_is(&m.device, "mobile"));
    assert_int_equal(m.status, PD_BUSY);
    assert_true(opt_is(&m.custom_status, "lunch"));
    assert_true(m.custom_status_expires_in == 90.5);
    assert_true(opt_is(&m.activity, "focus"));
    assert_int_equal(m.auto_away, 1);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_online\",\"status\":\"offline\",\"auto_away\":false}", &m);
    assert_int_equal(m.status, PD_OFFLINE);
    assert_int_equal(m.auto_away, 0);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_online\",\"device\":null}", &m);
    assert_int_equal(m.device.state, PROTO_NULL);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_online\"}", &m);
    assert_int_equal(m.status, -1);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"heartbeat\"}", &m);
    assert_int_equal(m.type, PROTO_HEARTBEAT);
    assert_int_equal(m.device.state, PROTO_ABSENT);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_status\",\"status\":\"online\",\"custom_status\":\"\","
              "\"activity\":\"\",\"auto_away\":false,\"custom_status_expires_in\":2678400}",
              &m);
    assert_int_equal(m.status, PD_ONLINE);
    assert_true(opt_is(&m.custom_status, "")); /* empty text is a value */
    assert_true(opt_is(&m.activity, ""));
    assert_true(m.custom_status_expires_in == 2678400.0);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_status\"}", &m); /* status absent: the claim is kept */
    assert_int_equal(m.status, -1);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"set_status\",\"custom_status\":\"x\","
              "\"custom_status_expires_in\":null}",
              &m);
    assert_true(m.custom_status_expires_in == 0);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"unsubscribe\",\"user_ids\":[\"a\"],\"id\":-3}", &m);
    assert_int_equal(m.type, PROTO_UNSUBSCRIBE);
    assert_int_equal(m.id.i, -3);
    assert_int_equal(m.nids, 1);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[]}", &m);
    assert_int_equal(m.nids, 0);
    proto_msg_free(&m);

    DECODE_OK("{\"type\":\"ping\",\"id\":\"\"}", &m);
    assert_int_equal(m.id.kind, PROTO_ID_STR);
    assert_string_equal(m.id.s, "");
    proto_msg_free(&m);

    /* Whitespace anywhere JSON allows it; keys in any order; escapes in keys and values. */
    DECODE_OK(" \t\r\n{ \"device\" : \"w\\u0065b\" ,\n\"type\"\t:\"heart\\u0062eat\" } \r\n\t ",
              &m);
    assert_int_equal(m.type, PROTO_HEARTBEAT);
    assert_true(opt_is(&m.device, "web"));
    proto_msg_free(&m);
    DECODE_OK("{\"typ\\u0065\":\"ping\"}", &m);
    assert_int_equal(m.type, PROTO_PING);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"set_online\",\"custom_status\":\"\\\"q\\\" \\\\ \\/ \\u00e9\"}", &m);
    assert_true(opt_is(&m.custom_status, "\"q\" \\ / \xC3\xA9"));
    proto_msg_free(&m);
    /* Escaped backslash then "u0000": a backslash and text, not the NUL escape. */
    DECODE_OK("{\"type\":\"set_online\",\"custom_status\":\"\\\\u0000\"}", &m);
    assert_true(opt_is(&m.custom_status, "\\u0000"));
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[\"\\\\u0000\",\"\\ud83d\\ude00\"]}", &m);
    assert_int_equal(m.ids[0].len, 6);
    assert_int_equal(m.ids[1].len, 4); /* U+1F600 from a surrogate pair */
    assert_memory_equal(m.ids[1].s, "\xF0\x9F\x98\x80", 4);
    proto_msg_free(&m);
}

static void test_names(void **state) {
    (void)state;
    assert_string_equal(proto_type_name(PROTO_PING), "ping");
    assert_string_equal(proto_type_name(PROTO_GET_PRESENCE), "get_presence");
    assert_string_equal(proto_type_name(-1), "unknown");
    assert_string_equal(proto_type_name(PROTO_TYPE_COUNT), "unknown");
    assert_string_equal(proto_error_name(PROTO_E_BAD_JSON), "bad_json");
    assert_string_equal(proto_error_name(PROTO_E_TOO_MANY_IDS), "too_many_ids");
    assert_string_equal(proto_error_name(PROTO_E_INTERNAL), "internal");
    assert_string_equal(proto_error_name(PROTO_E_COUNT), "internal");
    assert_string_equal(proto_error_name(-5), "internal");
    /* Every documented code has its name. */
    const char *doc[] = {"bad_json",           "bad_message",   "missing_type", "unknown_type",
                         "unknown_field",      "bad_field",     "bad_status",   "too_long",
                         "bad_value",          "bad_user_id",   "bad_id",       "too_many_ids",
                         "subscription_limit", "session_limit", "not_present",  "internal"};
    for (size_t i = 0; i < sizeof(doc) / sizeof(doc[0]); i++) {
        bool found = false;
        for (int c = 0; c < PROTO_E_COUNT && !found; c++)
            found = strcmp(proto_error_name(c), doc[i]) == 0;
        if (!found)
            fail_msg("no error code named %s", doc[i]);
    }
}

/* ---- bad_json ---- */

static void test_bad_json_syntax(void **state) {
    (void)state;
    const char *bad[] = {
        "",
        " ",
        "{",
        "}",
        "{\"type\":\"ping\"",
        "{\"type\":\"ping\",}",
        "{\"type\" \"ping\"}",
        "{\"type\":'ping'}",
        "{'type':\"ping\"}",
        "{type:\"ping\"}",
        "{\"type\":\"ping}",
        "{\"type\":ping}",
        "{\"type\":\"ping\",\"id\":tru}",
        "{\"type\":\"ping\",\"id\":nul}",
        "{\"type\":\"ping\",\"id\":-}",
        "{\"type\":\"ping\",\"id\":+1}",
        "{\"type\":\"ping\",\"id\":.5}",
        "{\"type\":\"ping\",\"id\":0x10}",
        "{\"type\":\"ping\",\"id\":NaN}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\",]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\"}",
        "{\"type\":\"ping\"}}",
        "{\"type\":\"ping\"}{}",
        "{\"type\":\"ping\"} {\"type\":\"ping\"}",
        "{\"type\":\"ping\"}x",
        "{\"type\":\"ping\"} 1",
        "{\"type\":\"ping\"}\"",
        "{\"type\":\"set_online\",\"device\":\"\\x41\"}",
        "{\"type\":\"set_online\",\"device\":\"\\u12\"}",
        "{\"type\":\"set_online\",\"device\":\"\\ud800\"}", /* lone surrogate */
        "{\"type\":\"set_online\",\"device\":\"\\udc00x\"}",
        "\"",
        "nul",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_BAD_JSON);

    /* A NUL byte after the value is data after the value. */
    proto_msg_t m;
    expect_err_n("{\"type\":\"ping\"}\0", 16, PROTO_E_BAD_JSON, &m);
    /* Trailing and leading whitespace are fine. */
    DECODE_OK("{\"type\":\"ping\"}  \n\r\t", &m);
    proto_msg_free(&m);
    DECODE_OK("\n{\"type\":\"ping\"}", &m);
    proto_msg_free(&m);
}

static void test_bad_json_nul(void **state) {
    (void)state;
    /* The escape \u0000, anywhere. */
    expect_err("{\"type\":\"set_online\",\"device\":\"a\\u0000b\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"set_online\",\"device\":\"\\u0000\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\\u0000\"}", PROTO_E_BAD_JSON);
    expect_err("{\"ty\\u0000pe\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"subscribe\",\"user_ids\":[\"x\\u0000\"]}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\",\"id\":\"\\\\\\u0000\"}", PROTO_E_BAD_JSON); /* \\ then \u0000 */

    /* A raw NUL byte inside a string would cut it short just the same; JSON forbids raw
     * control characters in strings. */
    proto_msg_t m;
    const char hb[] = "{\"type\":\"heartbeat\",\"device\":\"we\0b\"}";
    expect_err_n(hb, sizeof(hb) - 1, PROTO_E_BAD_JSON, &m);
    const char ty[] = "{\"type\":\"ping\0garbage\"}";
    expect_err_n(ty, sizeof(ty) - 1, PROTO_E_BAD_JSON, &m);
    const char key[] = "{\"type\":\"ping\",\"id\0x\":1}";
    expect_err_n(key, sizeof(key) - 1, PROTO_E_BAD_JSON, &m);
    const char between[] = "{\"type\":\"ping\",\0\"id\":1}";
    expect_err_n(between, sizeof(between) - 1, PROTO_E_BAD_JSON, &m);
    expect_err("{\"type\":\"set_online\",\"device\":\"a\tb\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"set_online\",\"custom_status\":\"line\nbreak\"}", PROTO_E_BAD_JSON);

    /* cJSON decodes a \u escape with a digit that is not hex as U+0000, which cut the string
     * short: user_ids ["bob\uzzzzx"] was read as ["bob"] (found by fuzz_proto). */
    static const char *const bad_hex[] = {
        "{\"type\":\"subscribe\",\"user_ids\":[\"bob\\uzzzzx\"]}",
        "{\"type\":\"set_online\",\"device\":\"we\\u00g1b\"}",
        "{\"type\":\"set_online\",\"device\":\"we\\u00\\u0041b\"}",
        "{\"type\":\"ping\",\"id\":\"a\\u-123b\"}",
        "{\"type\":\"ping\",\"i\\uXYZWd\":1}",
        "{\"type\":\"set_online\",\"device\":\"\\u 123x\"}",
        "{\"type\":\"set_online\",\"device\":\"\\u12\"}",
    };
    for (size_t i = 0; i < sizeof(bad_hex) / sizeof(bad_hex[0]); i++)
        expect_err(bad_hex[i], PROTO_E_BAD_JSON);
    /* ... and a raw control byte right after a backslash is no escape. */
    const char esc_nul[] = "{\"type\":\"subscribe\",\"user_ids\":[\"bo\\u\\\0"
                           "00ex\"]}";
    expect_err_n(esc_nul, sizeof(esc_nul) - 1, PROTO_E_BAD_JSON, &m);
    expect_err("{\"type\":\"set_online\",\"device\":\"a\\\x01\"}", PROTO_E_BAD_JSON);
    /* Proper escapes, in either case, still decode. */
    DECODE_OK("{\"type\":\"set_online\",\"device\":\"\\u0041\\u00e9\\u00E9\\uD83D\\uDE00\"}", &m);
    assert_string_equal(m.device.v.s, "A\xc3\xa9\xc3\xa9\xf0\x9f\x98\x80");
    proto_msg_free(&m);
}

/* Only space, tab, LF and CR separate JSON tokens (RFC 8259 section 2), and a JSON text has no
 * byte order mark: cJSON skips both every byte up to 0x20 and a leading UTF-8 BOM, so these
 * were answered before. Every other control byte, between any two tokens, and the BOM before
 * the value (or after it) are bad_json; the same messages with proper whitespace are fine. */
static void test_bad_json_whitespace(void **state) {
    (void)state;
    /* Every control byte but the four whitespace ones, at each place whitespace may go. */
    static const char *const forms[] = {
        "%c{\"type\":\"ping\"}",
        "{%c\"type\":\"ping\"}",
        "{\"type\"%c:\"ping\"}",
        "{\"type\":%c\"ping\"}",
        "{\"type\":\"ping\"%c}",
        "{\"type\":\"ping\",%c\"id\":1}",
        "{\"type\":\"subscribe\",\"user_ids\":[%c\"a\"]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\"%c,\"b\"]}",
        "{\"type\":\"ping\"}%c",
    };
    proto_msg_t m;
    for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++) {
        for (int c = 1; c < 0x20; c++) {
            char msg[128];
            int n = snprintf(msg, sizeof(msg), forms[f], c);
            assert_true(n > 0 && (size_t)n < sizeof(msg));
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                DECODE_OK(msg, &m);
                proto_msg_free(&m);
            } else {
                expect_err_n(msg, (size_t)n, PROTO_E_BAD_JSON, &m);
            }
        }
        /* DEL is not whitespace either (cJSON refused it already). */
        char msg[128];
        int n = snprintf(msg, sizeof(msg), forms[f], 0x7f);
        expect_err_n(msg, (size_t)n, PROTO_E_BAD_JSON, &m);
    }
    /* The attack's own form. */
    expect_err("{\"type\":\x01\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("\x0b\x0c{\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    /* A UTF-8 BOM, in front, after, or between tokens; other BOMs; a BOM alone. */
    expect_err("\xef\xbb\xbf{\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err(" \xef\xbb\xbf{\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("\xef\xbb\xbf\xef\xbb\xbf{\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\"}\xef\xbb\xbf", PROTO_E_BAD_JSON);
    expect_err("{\xef\xbb\xbf\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("\xfe\xff{\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("\xef\xbb\xbf", PROTO_E_BAD_JSON);
    expect_err("\xef\xbb", PROTO_E_BAD_JSON);
    /* U+FEFF inside a string is text, not a BOM. */
    DECODE_OK("{\"type\":\"set_online\",\"custom_status\":\"\xef\xbb\xbfhi\"}", &m);
    proto_msg_free(&m);
    /* The error says why, for people. */
    proto_error_t err;
    static const char ctl[] = "{\"type\":\x01\"ping\"}", bom[] = "\xef\xbb\xbf{\"type\":\"ping\"}";
    assert_int_equal(decode_n(ctl, sizeof(ctl) - 1, &m, &err), PD_EPROTO);
    assert_non_null(strstr(err.message, "control byte"));
    assert_int_equal(decode_n(bom, sizeof(bom) - 1, &m, &err), PD_EPROTO);
    assert_non_null(strstr(err.message, "byte order mark"));
    /* The strict parser on its own (the /v1 API's bodies go through it) refuses them too. */
    void *root = NULL;
    static const char api_ctl[] = "{\"a\":\x1f"
                                  "1}",
                      api_bom[] = "\xef\xbb\xbf{}", api_ok[] = " \t\r\n{ \"a\" :\t1 }\r\n";
    assert_int_equal(proto_json_parse((const uint8_t *)api_ctl, sizeof(api_ctl) - 1, &root, &err),
                     PD_EPROTO);
    assert_null(root);
    assert_int_equal(proto_json_parse((const uint8_t *)api_bom, sizeof(api_bom) - 1, &root, &err),
                     PD_EPROTO);
    assert_null(root);
    assert_int_equal(proto_json_parse((const uint8_t *)api_ok, sizeof(api_ok) - 1, &root, &err), 0);
    cJSON_Delete(root);
}

static void test_bad_json_duplicate_keys(void **state) {
    (void)state;
    expect_err("{\"type\":\"ping\",\"type\":\"ping\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\",\"type\":\"set_offline\"}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\",\"id\":1,\"id\":2}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"set_online\",\"device\":\"a\",\"device\":\"b\"}", PROTO_E_BAD_JSON);
    /* Equal after unescaping. */
    expect_err("{\"type\":\"ping\",\"t\\u0079pe\":\"ping\"}", PROTO_E_BAD_JSON);
    /* Nested: in an object, in an object inside an array, deeper. */
    expect_err("{\"type\":\"ping\",\"id\":{\"a\":1,\"a\":2}}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\",\"id\":[{\"a\":1},{\"b\":1,\"b\":1}]}", PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"subscribe\",\"user_ids\":[\"a\",{\"k\":[{\"x\":{\"y\":1,\"y\":2}}]}]}",
               PROTO_E_BAD_JSON);
    expect_err("{\"id\":[[[{\"z\":null,\"q\":1,\"z\":null}]]],\"type\":\"ping\"}",
               PROTO_E_BAD_JSON);

    /* Many keys (checked by sorting): a duplicate among them, the last and the first. */
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "{\"type\":\"ping\",\"id\":{");
    for (int i = 0; i < 20; i++)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s\"k%02d\":%d", i ? "," : "", i, i);
    snprintf(buf + n, sizeof(buf) - (size_t)n, ",\"k00\":0}}");
    expect_err(buf, PROTO_E_BAD_JSON);
    /* The same keys without the duplicate: valid JSON, so the id is what is wrong. */
    buf[n] = '}';
    buf[n + 1] = '}';
    buf[n + 2] = '\0';
    expect_err(buf, PROTO_E_BAD_ID);
    /* Exactly 12 keys with the duplicate in the middle; 11 keys pairwise. */
    expect_err("{\"type\":\"ping\",\"id\":{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,"
               "\"c\":1,\"h\":1,\"i\":1,\"j\":1,\"k\":1,\"l\":1}}",
               PROTO_E_BAD_JSON);
    expect_err("{\"type\":\"ping\",\"id\":{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,"
               "\"g\":1,\"h\":1,\"i\":1,\"j\":1,\"a\":1}}",
               PROTO_E_BAD_JSON);
    /* Keys differing in case are different keys: the second is an unknown field. */
    expect_err("{\"type\":\"ping\",\"Type\":\"ping\"}", PROTO_E_UNKNOWN_FIELD);
    /* The same key in sibling objects is no duplicate. */
    expect_err("{\"type\":\"ping\",\"id\":[{\"a\":1},{\"a\":1}]}", PROTO_E_BAD_ID);
}

static void test_bad_json_deep_nesting(void **state) {
    (void)state;
    /* Deeper than any parser should follow: refused, without exhausting the stack. */
    static char deep[300000];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"type\":\"ping\",\"id\":");
    for (int i = 0; i < 100000; i++)
        deep[n++] = '[';
    for (int i = 0; i < 100000; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    proto_msg_t m;
    expect_err_n(deep, n, PROTO_E_BAD_JSON, &m);
    /* Unbalanced, deep. */
    memset(deep, '[', 200000);
    expect_err_n(deep, 200000, PROTO_E_BAD_JSON, &m);
    memset(deep, '{', 200000);
    expect_err_n(deep, 200000, PROTO_E_BAD_JSON, &m);
    /* Moderately deep is parsed, then judged on its fields. */
    n = (size_t)snprintf(deep, sizeof(deep), "{\"type\":\"subscribe\",\"user_ids\":");
    for (int i = 0; i < 200; i++)
        deep[n++] = '[';
    for (int i = 0; i < 200; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    expect_err_n(deep, n, PROTO_E_BAD_FIELD, &m);
}

/* ---- structure ---- */

static void test_bad_message(void **state) {
    (void)state;
    const char *bad[] = {
        "[]", "[{\"type\":\"ping\"}]", "\"ping\"", "1", "-0.5", "null", "true", "false", " [] "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_BAD_MESSAGE);
}

static void test_missing_type(void **state) {
    (void)state;
    const char *bad[] = {"{}",
                         "{\"type\":1}",
                         "{\"type\":null}",
                         "{\"type\":true}",
                         "{\"type\":[\"ping\"]}",
                         "{\"type\":{\"name\":\"ping\"}}",
                         "{\"Type\":\"ping\"}",
                         "{\"TYPE\":\"ping\"}",
                         "{\"type \":\"ping\"}",
                         "{\"device\":\"web\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_MISSING_TYPE);
}

static void test_unknown_type(void **state) {
    (void)state;
    const char *bad[] = {"",
                         "Ping",
                         "PING",
                         "ping ",
                         " ping",
                         "pong",
                         "welcome",
                         "presence_update",
                         "initial_presence",
                         "error",
                         "set_away",
                         "heartbeats",
                         "get_presences",
                         "set-online",
                         "\xC3\xA9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(fmt("{\"type\":\"%s\"}", bad[i]), PROTO_E_UNKNOWN_TYPE);
}

static void test_unknown_field(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"type\":\"ping\",\"device\":\"web\"}",
        "{\"type\":\"heartbeat\",\"status\":\"online\"}",
        "{\"type\":\"heartbeat\",\"device\":\"web\",\"custom_status\":null}",
        "{\"type\":\"set_status\",\"device\":\"web\"}", /* set_status has no device */
        "{\"type\":\"set_online\",\"Device\":\"web\"}",
        "{\"type\":\"set_online\",\"DEVICE\":\"web\"}",
        "{\"type\":\"set_online\",\"device \":\"web\"}",
        "{\"type\":\"set_online\",\"user_ids\":[\"a\"]}",
        "{\"type\":\"set_offline\",\"status\":\"offline\"}",
        "{\"type\":\"activity\",\"activity\":\"focus\"}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\"],\"device\":\"web\"}",
        "{\"type\":\"subscribe\",\"user_id\":\"a\"}",
        "{\"type\":\"get_presence\",\"user_ids\":[],\"ID\":1}",
        "{\"type\":\"unsubscribe\",\"user_ids\":[],\"\":1}",
        "{\"type\":\"ping\",\"timestamp\":1764316800}",
        "{\"type\":\"set_online\",\"auto_away\":true,\"autoAway\":true}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_UNKNOWN_FIELD);
}

/* ---- field types and values ---- */

static void test_bad_field(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"type\":\"set_status\",\"status\":1}",
        "{\"type\":\"set_status\",\"status\":null}",
        "{\"type\":\"set_status\",\"status\":[\"away\"]}",
        "{\"type\":\"set_online\",\"device\":5}",
        "{\"type\":\"set_online\",\"device\":true}",
        "{\"type\":\"set_online\",\"device\":[]}",
        "{\"type\":\"set_online\",\"device\":{}}",
        "{\"type\":\"heartbeat\",\"device\":1}",
        "{\"type\":\"set_online\",\"custom_status\":5}",
        "{\"type\":\"set_online\",\"custom_status\":false}",
        "{\"type\":\"set_status\",\"activity\":{}}",
        "{\"type\":\"set_status\",\"activity\":[\"meeting\"]}",
        "{\"type\":\"set_online\",\"auto_away\":\"true\"}",
        "{\"type\":\"set_online\",\"auto_away\":1}",
        "{\"type\":\"set_online\",\"auto_away\":null}",
        "{\"type\":\"subscribe\",\"user_ids\":\"a\"}",
        "{\"type\":\"subscribe\",\"user_ids\":null}",
        "{\"type\":\"subscribe\",\"user_ids\":{}}",
        "{\"type\":\"subscribe\",\"user_ids\":[1]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\",null]}",
        "{\"type\":\"get_presence\",\"user_ids\":[[\"a\"]]}",
        "{\"type\":\"subscribe\"}",
        "{\"type\":\"unsubscribe\"}",
        "{\"type\":\"get_presence\",\"id\":1}",
        /* custom_status_expires_in: seconds in (0, 31 days], with a custom_status text */
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":\"10\"}",
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":0}",
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":-1}",
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":2678400.5}",
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":1e300}",
        "{\"type\":\"set_status\",\"custom_status\":\"x\",\"custom_status_expires_in\":true}",
        "{\"type\":\"set_status\",\"custom_status_expires_in\":60}",
        "{\"type\":\"set_status\",\"custom_status\":null,\"custom_status_expires_in\":60}",
        "{\"type\":\"set_online\",\"custom_status_expires_in\":60,\"activity\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_BAD_FIELD);

    /* The bounds themselves, and the field before its custom_status. */
    proto_msg_t m;
    DECODE_OK("{\"type\":\"set_status\",\"custom_status_expires_in\":0.001,"
              "\"custom_status\":\"x\"}",
              &m);
    assert_true(m.custom_status_expires_in == 0.001);
    proto_msg_free(&m);
    DECODE_OK("{\"type\":\"set_online\",\"custom_status\":\"\",\"custom_status_expires_in\":1}",
              &m);
    proto_msg_free(&m);
}

static void test_bad_status(void **state) {
    (void)state;
    const char *bad[] = {"idle", "Online", "ONLINE", "", "invisible", "offline ", "dnd", "away!"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_err(fmt("{\"type\":\"set_status\",\"status\":\"%s\"}", bad[i]), PROTO_E_BAD_STATUS);
        expect_err(fmt("{\"type\":\"set_online\",\"status\":\"%s\"}", bad[i]), PROTO_E_BAD_STATUS);
    }
    const char *ok[] = {"online", "away", "busy", "offline"};
    const int want[] = {PD_ONLINE, PD_AWAY, PD_BUSY, PD_OFFLINE};
    for (size_t i = 0; i < 4; i++) {
        proto_msg_t m;
        DECODE_OK(fmt("{\"type\":\"set_status\",\"status\":\"%s\"}", ok[i]), &m);
        assert_int_equal(m.status, want[i]);
        proto_msg_free(&m);
    }
}

static void test_too_long_and_limits(void **state) {
    (void)state;
    proto_msg_t m;
    const struct {
        const char *field;
        size_t max;
    } lim[] = {{"device", PD_DEVICE_MAX},
               {"custom_status", PD_CUSTOM_STATUS_MAX},
               {"activity", PD_ACTIVITY_MAX}};
    for (size_t i = 0; i < 3; i++) {
        DECODE_OK(
            fmt("{\"type\":\"set_online\",\"%s\":\"%s\"}", lim[i].field, rep('x', lim[i].max)), &m);
        proto_opt_t *o = i == 0 ? &m.device : i == 1 ? &m.custom_status : &m.activity;
        assert_int_equal(o->state, PROTO_SET);
        assert_int_equal(o->v.len, lim[i].max);
        proto_msg_free(&m);
        expect_err(
            fmt("{\"type\":\"set_online\",\"%s\":\"%s\"}", lim[i].field, rep('x', lim[i].max + 1)),
            PROTO_E_TOO_LONG);
        /* Limits are in bytes after unescaping: two-byte characters written as escapes. */
        char esc[4096] = "";
        for (size_t k = 0; k < lim[i].max / 2; k++)
            strcat(esc, "\\u00e9");
        DECODE_OK(fmt("{\"type\":\"set_online\",\"%s\":\"%s\"}", lim[i].field, esc), &m);
        proto_msg_free(&m);
        strcat(esc, "\\u00e9");
        expect_err(fmt("{\"type\":\"set_online\",\"%s\":\"%s\"}", lim[i].field, esc),
                   PROTO_E_TOO_LONG);
    }
    /* Heartbeat's device too. */
    expect_err(fmt("{\"type\":\"heartbeat\",\"device\":\"%s\"}", rep('d', PD_DEVICE_MAX + 1)),
               PROTO_E_TOO_LONG);
    /* User ids. */
    DECODE_OK(fmt("{\"type\":\"subscribe\",\"user_ids\":[\"%s\"]}", rep('u', PD_USER_ID_MAX)), &m);
    assert_int_equal(m.ids[0].len, PD_USER_ID_MAX);
    proto_msg_free(&m);
    expect_err(
        fmt("{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"%s\"]}", rep('u', PD_USER_ID_MAX + 1)),
        PROTO_E_TOO_LONG);
    expect_err(
        fmt("{\"type\":\"get_presence\",\"user_ids\":[\"%s\"]}", rep('u', PD_USER_ID_MAX + 1)),
        PROTO_E_TOO_LONG);
}

static void test_bad_value(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"type\":\"set_online\",\"device\":\"\"}",
        "{\"type\":\"heartbeat\",\"device\":\"\"}",
        "{\"type\":\"set_online\",\"device\":\"a\\nb\"}",
        "{\"type\":\"set_online\",\"device\":\"\\t\"}",
        "{\"type\":\"set_online\",\"custom_status\":\"\\u001f\"}",
        "{\"type\":\"set_online\",\"custom_status\":\"del\\u007f\"}",
        "{\"type\":\"set_status\",\"activity\":\"c1\\u0085\"}",
        "{\"type\":\"set_status\",\"activity\":\"\\u009f\"}",
        "{\"type\":\"set_online\",\"device\":\"\\u001b[31m\"}",
        "{\"type\":\"set_online\",\"device\":\"bad\xFF\"}",
        "{\"type\":\"set_online\",\"device\":\"\xC0\xAF\"}",
        "{\"type\":\"set_online\",\"custom_status\":\"\xED\xA0\x80\"}",
        "{\"type\":\"set_online\",\"activity\":\"cut\xE2\x82\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_BAD_VALUE);
}

static void test_bad_user_id(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"type\":\"subscribe\",\"user_ids\":[\"\"]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"\"]}",
        "{\"type\":\"unsubscribe\",\"user_ids\":[\"a\\nb\"]}",
        "{\"type\":\"get_presence\",\"user_ids\":[\"\\u007f\"]}",
        "{\"type\":\"get_presence\",\"user_ids\":[\"\\u0080\"]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"x\xFE\"]}",
        "{\"type\":\"subscribe\",\"user_ids\":[\"\xC3\"]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(bad[i], PROTO_E_BAD_USER_ID);
}

static void test_bad_id(void **state) {
    (void)state;
    const char *bad[] = {"{}",
                         "[]",
                         "[1]",
                         "1.5",
                         "-0.25",
                         "1e300",
                         "9007199254740992",
                         "-9007199254740993",
                         "true",
                         "null",
                         "\"a\\nb\"",
                         "\"\\u0085\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_err(fmt("{\"type\":\"ping\",\"id\":%s}", bad[i]), PROTO_E_BAD_ID);
    expect_err(fmt("{\"type\":\"ping\",\"id\":\"%s\"}", rep('i', PROTO_ID_MAX + 1)),
               PROTO_E_BAD_ID);

    proto_msg_t m;
    DECODE_OK(fmt("{\"type\":\"ping\",\"id\":\"%s\"}", rep('i', PROTO_ID_MAX)), &m);
    assert_int_equal(m.id.kind, PROTO_ID_STR);
    assert_int_equal(strlen(m.id.s), PROTO_ID_MAX);
    proto_msg_free(&m);
    const struct {
        const char *text;
        int64_t v;
    } ints[] = {{"0", 0},
                {"-0", 0},
                {"42", 42},
                {"-7", -7},
                {"1e3", 1000},
                {"2.0", 2},
                {"9007199254740991", 9007199254740991LL},
                {"-9007199254740991", -9007199254740991LL}};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        DECODE_OK(fmt("{\"type\":\"ping\",\"id\":%s}", ints[i].text), &m);
        assert_int_equal(m.id.kind, PROTO_ID_INT);
        assert_int_equal(m.id.i, ints[i].v);
        proto_msg_free(&m);
    }
}

static void test_too_many_ids(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", &m);
    assert_int_equal(m.nids, MAX_IDS);
    proto_msg_free(&m);
    expect_err("{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"]}",
               PROTO_E_TOO_MANY_IDS);
    expect_err("{\"type\":\"get_presence\",\"user_ids\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
               "\"a\"]}",
               PROTO_E_TOO_MANY_IDS);
    expect_err("{\"type\":\"unsubscribe\",\"user_ids\":[1,2,3,4,5,6]}", PROTO_E_TOO_MANY_IDS);
    /* A larger limit. */
    proto_limits_t big = {.max_ids = 1000};
    char *buf = malloc(1000 * 8 + 64);
    assert_non_null(buf);
    for (int count = 1000; count <= 1001; count++) {
        int n = sprintf(buf, "{\"type\":\"subscribe\",\"user_ids\":[");
        for (int i = 0; i < count; i++)
            n += sprintf(buf + n, "%s\"u%d\"", i ? "," : "", i);
        n += sprintf(buf + n, "]}");
        proto_error_t err;
        uint8_t *at = tu_guard_place(&G, buf, (size_t)n);
        int rc = proto_decode(at, (size_t)n, &big, &m, &err);
        if (count == 1000) {
            assert_int_equal(rc, 0);
            assert_int_equal(m.nids, 1000);
            assert_memory_equal(m.ids[999].s, "u999", 4);
            proto_msg_free(&m);
        } else {
            assert_int_equal(rc, PD_EPROTO);
            assert_int_equal(err.code, PROTO_E_TOO_MANY_IDS);
        }
    }
    free(buf);
}

static void test_error_keeps_id(void **state) {
    (void)state;
    proto_msg_t m;
    const struct {
        const char *json;
        int code;
        int kind;
        int64_t i;
        const char *s;
    } cases[] = {
        {"{\"id\":7}", PROTO_E_MISSING_TYPE, PROTO_ID_INT, 7, NULL},
        {"{\"id\":\"req-1\",\"type\":\"nope\"}", PROTO_E_UNKNOWN_TYPE, PROTO_ID_STR, 0, "req-1"},
        {"{\"type\":\"set_status\",\"status\":\"idle\",\"id\":3}", PROTO_E_BAD_STATUS, PROTO_ID_INT,
         3, NULL},
        {"{\"type\":\"subscribe\",\"user_ids\":[\"\"],\"id\":\"s\"}", PROTO_E_BAD_USER_ID,
         PROTO_ID_STR, 0, "s"},
        {"{\"type\":\"ping\",\"id\":-12,\"x\":1}", PROTO_E_UNKNOWN_FIELD, PROTO_ID_INT, -12, NULL},
        {"{\"type\":\"set_online\",\"device\":\"\",\"id\":\"d\"}", PROTO_E_BAD_VALUE, PROTO_ID_STR,
         0, "d"},
        {"{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"],\"id\":5}",
         PROTO_E_TOO_MANY_IDS, PROTO_ID_INT, 5, NULL},
        {"{\"id\":1,\"type\":\"set_status\",\"custom_status_expires_in\":5}", PROTO_E_BAD_FIELD,
         PROTO_ID_INT, 1, NULL},
        {"[1]", PROTO_E_BAD_MESSAGE, PROTO_ID_NONE, 0, NULL},
        /* Not read: the JSON was not valid, or the id itself was wrong. */
        {"{\"id\":7,\"type\":\"ping\"", PROTO_E_BAD_JSON, PROTO_ID_NONE, 0, NULL},
        {"{\"id\":7,\"id\":8,\"type\":\"ping\"}", PROTO_E_BAD_JSON, PROTO_ID_NONE, 0, NULL},
        {"{\"id\":1.5,\"type\":\"ping\"}", PROTO_E_BAD_ID, PROTO_ID_NONE, 0, NULL},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        expect_err_m(cases[k].json, cases[k].code, &m);
        if (m.id.kind != cases[k].kind)
            fail_msg("%s: id kind %d, expected %d", cases[k].json, m.id.kind, cases[k].kind);
        if (cases[k].kind == PROTO_ID_INT)
            assert_int_equal(m.id.i, cases[k].i);
        if (cases[k].kind == PROTO_ID_STR)
            assert_string_equal(m.id.s, cases[k].s);
    }
}

static void test_msg_free(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\",\"c\"],\"id\":\"x\"}", &m);
    assert_non_null(m.root);
    assert_non_null(m.ids);
    proto_msg_free(&m);
    assert_null(m.root);
    assert_null(m.ids);
    assert_int_equal(m.nids, 0);
    assert_int_equal(m.status, -1);
    assert_int_equal(m.auto_away, -1);
    assert_int_equal(m.id.kind, PROTO_ID_NONE);
    proto_msg_free(&m); /* a freed message may be freed again */
    DECODE_OK("{\"type\":\"set_status\",\"status\":\"busy\",\"custom_status\":\"c\","
              "\"activity\":\"a\"}",
              &m);
    proto_msg_free(&m);
    /* The decoder does not keep pointers into the input: the strings live in the message. */
    char buf[] = "{\"type\":\"set_online\",\"device\":\"web\"}";
    proto_error_t err;
    assert_int_equal(proto_decode((uint8_t *)buf, strlen(buf), &LIM, &m, &err), 0);
    memset(buf, 'X', strlen(buf));
    assert_true(opt_is(&m.device, "web"));
    proto_msg_free(&m);
}

/* Every valid message of the tests above, for the truncation and fuzz-like passes. */
static const char *const VALID[] = {
    "{\"type\":\"set_online\",\"device\":\"web\"}",
    "{\"type\":\"heartbeat\",\"device\":\"web\"}",
    "{\"type\":\"set_status\",\"status\":\"away\",\"custom_status\":null,\"activity\":null}",
    "{\"type\":\"subscribe\",\"user_ids\":[\"a\",\"b\"]}",
    "{\"type\":\"set_online\",\"device\":\"web\",\"custom_status\":null}",
    "{\"type\":\"set_status\",\"status\":\"busy\",\"custom_status\":\"in a meeting\","
    "\"activity\":\"meeting\"}",
    "{\"type\":\"set_offline\"}",
    "{\"type\":\"activity\"}",
    "{\"type\":\"ping\",\"id\":\"p-1\"}",
    "{\"type\":\"heartbeat\"}",
    "{\"type\":\"unsubscribe\",\"user_ids\":[\"bob\"],\"id\":12}",
    "{\"type\":\"get_presence\",\"user_ids\":[\"bob\",\"carol\"],\"id\":7}",
    "{\"id\":\"r1\",\"type\":\"set_online\",\"device\":\"mobile\",\"status\":\"busy\","
    "\"custom_status\":\"lunch \\u00e9\\\"\",\"custom_status_expires_in\":90.5,"
    "\"activity\":\"focus\",\"auto_away\":true}",
    "{\"type\":\"set_status\",\"auto_away\":false,\"custom_status\":\"\\\\u0000\"}",
    "{\"type\":\"subscribe\",\"user_ids\":[]}",
    "{\"type\":\"subscribe\",\"user_ids\":[\"\\ud83d\\ude00\",\"x y\"],\"id\":-1}",
};

static void test_every_truncation_is_bad_json(void **state) {
    (void)state;
    for (size_t k = 0; k < sizeof(VALID) / sizeof(VALID[0]); k++) {
        const char *v = VALID[k];
        size_t len = strlen(v);
        proto_msg_t m;
        DECODE_OK(v, &m);
        proto_msg_free(&m);
        for (size_t cut = 0; cut < len; cut++) {
            proto_error_t err;
            int rc = decode_n(v, cut, &m, &err);
            if (rc != PD_EPROTO || err.code != PROTO_E_BAD_JSON) {
                if (rc == 0)
                    proto_msg_free(&m);
                fail_msg("%.*s (cut at %zu of %zu): %s", (int)cut, v, cut, len,
                         rc == 0 ? "accepted" : proto_error_name(err.code));
            }
            assert_null(m.root);
        }
    }
}

/* ---- the canonical heartbeat ---- */

static bool canon(const char *data, const char *device) {
    size_t len = strlen(data);
    uint8_t *at = tu_guard_place(&G, data, len);
    return proto_is_canonical_heartbeat(at, len, device, device ? strlen(device) : 0, NULL);
}

static void test_canonical_heartbeat(void **state) {
    (void)state;
    assert_true(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}", "web"));
    assert_true(canon("{\"type\":\"heartbeat\",\"device\":\"mobile\"}", "mobile"));
    assert_true(canon("{\"type\":\"heartbeat\"}", NULL));
    assert_true(canon("{\"type\":\"heartbeat\"}", "web"));
    assert_true(canon("{\"type\":\"heartbeat\",\"device\":\"caf\xC3\xA9\"}", "caf\xC3\xA9"));
    assert_true(canon(fmt("{\"type\":\"heartbeat\",\"device\":\"%s\"}", rep('d', PD_DEVICE_MAX)),
                      rep('d', PD_DEVICE_MAX)));

    /* Near misses: each means the same or something else, but takes the full path. */
    const char *web = "web";
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}", NULL));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}", "mobile"));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}", "we"));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}", "webb"));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"wex\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"WEB\"}", web));
    assert_false(canon("{\"type\": \"heartbeat\",\"device\":\"web\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\", \"device\":\"web\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"} ", web));
    assert_false(canon(" {\"type\":\"heartbeat\",\"device\":\"web\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"}\n", web));
    assert_false(canon("{\"type\":\"heartbeat\" }", web));
    assert_false(canon("{\"device\":\"web\",\"type\":\"heartbeat\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"w\\u0065b\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"we\\u0062\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"]", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web'}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\",\"x\":1}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":null}", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\"", web));
    assert_false(canon("{\"type\":\"heartbeat\",\"devic\":\"web\"}", web));
    assert_false(canon("{\"type\":\"Heartbeat\",\"device\":\"web\"}", web));
    assert_false(canon("{\"type\":\"heartbeat\"", web));
    assert_false(canon("{\"type\":\"ping\"}", web));
    assert_false(canon("", web));
    assert_false(canon("", NULL));
    /* A label JSON must escape never matches its raw bytes. */
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"a\"b\"}", "a\"b"));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"a\\b\"}", "a\\b"));
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"a\\\\b\"}", "a\\b"));
    /* What it accepts decodes to the same message. */
    proto_msg_t m;
    DECODE_OK("{\"type\":\"heartbeat\",\"device\":\"web\"}", &m);
    assert_int_equal(m.type, PROTO_HEARTBEAT);
    assert_true(opt_is(&m.device, "web"));
    proto_msg_free(&m);
}

/* The forms with an id (what clients/js sends): the id read as proto_decode reads it. */
static void canon_id(const char *data, const char *device, bool want, const char *want_id) {
    size_t len = strlen(data);
    uint8_t *at = tu_guard_place(&G, data, len);
    proto_id_t id;
    bool got = proto_is_canonical_heartbeat(at, len, device, device ? strlen(device) : 0, &id);
    if (got != want)
        fail_msg("%s: %s", data, got ? "taken" : "not taken");
    if (!got) {
        assert_int_equal(id.kind, PROTO_ID_NONE);
        return;
    }
    proto_msg_t m;
    proto_error_t err;
    assert_int_equal(decode_n(data, len, &m, &err), 0);
    assert_int_equal(m.type, PROTO_HEARTBEAT);
    assert_int_equal(id.kind, m.id.kind);
    char text[80] = "";
    if (id.kind == PROTO_ID_STR)
        snprintf(text, sizeof(text), "s:%s", id.s);
    else if (id.kind == PROTO_ID_INT)
        snprintf(text, sizeof(text), "i:%lld", (long long)id.i);
    assert_string_equal(text, want_id);
    assert_true(id.kind != PROTO_ID_INT || id.i == m.id.i);
    assert_true(id.kind != PROTO_ID_STR || strcmp(id.s, m.id.s) == 0);
    proto_msg_free(&m);
}

static void test_canonical_heartbeat_with_id(void **state) {
    (void)state;
    const char *web = "web";
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"id\":\"hb12\"}", web, true, "s:hb12");
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"id\":7}", web, true, "i:7");
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"id\":0}", web, true, "i:0");
    canon_id("{\"type\":\"heartbeat\",\"id\":\"a-b_c.d:e\"}", NULL, true, "s:a-b_c.d:e");
    canon_id("{\"type\":\"heartbeat\",\"id\":123456789012345}", web, true, "i:123456789012345");
    canon_id("{\"type\":\"heartbeat\"}", web, true, "");
    canon_id(fmt("{\"type\":\"heartbeat\",\"id\":\"%s\"}", rep('x', PROTO_ID_MAX)), NULL, true,
             fmt("s:%s", rep('x', PROTO_ID_MAX)));
    /* Anything else takes the full path (which may well accept it). */
    canon_id("{\"type\":\"heartbeat\",\"id\":1234567890123456}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":012}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":-1}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":1.5}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":\"\"}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":\"a b\"}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":\"a\\\"b\"}", web, false, NULL);
    canon_id(fmt("{\"type\":\"heartbeat\",\"id\":\"%s\"}", rep('x', PROTO_ID_MAX + 1)), NULL, false,
             NULL);
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"id\":\"x\",\"id\":\"y\"}", web, false,
             NULL);
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"xid\":\"x\"}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"device\":\"web\",\"status\":\"x\",\"id\":\"y\"}", web,
             false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"device\":\"mobile\",\"id\":\"x\"}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":\"x\",\"device\":\"web\"}", web, false, NULL);
    canon_id("{\"type\":\"heartbeat\",\"id\":\"x\"} ", web, false, NULL);
    /* Without room for an id, the id forms take the full path. */
    assert_false(canon("{\"type\":\"heartbeat\",\"device\":\"web\",\"id\":\"hb1\"}", web));
}

/* ---- encoders ---- */

/* Checks b is a sealed, unmasked FIN text frame whose header length matches its payload, and
 * returns the payload parsed (caller deletes). */
static cJSON *frame_json(const pd_obuf_t *b) {
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    const uint8_t *f = pd_obuf_bytes(b);
    size_t flen = pd_obuf_len(b), plen = pd_obuf_payload_len(b);
    assert_int_equal(f[0], 0x81);     /* FIN, no RSV, text */
    assert_int_equal(f[1] & 0x80, 0); /* not masked */
    size_t hlen, declared;
    if ((f[1] & 0x7F) < 126) {
        hlen = 2;
        declared = f[1] & 0x7F;
        assert_true(plen < 126);
    } else if ((f[1] & 0x7F) == 126) {
        hlen = 4;
        declared = ((size_t)f[2] << 8) | f[3];
        assert_true(plen >= 126 && plen <= 0xFFFF); /* minimal length form */
    } else {
        hlen = 10;
        declared = 0;
        for (int i = 0; i < 8; i++)
            declared = (declared << 8) | f[2 + i];
        assert_true(plen > 0xFFFF);
    }
    assert_int_equal(declared, plen);
    assert_int_equal(flen, hlen + plen);
    assert_ptr_equal(f + hlen, pd_obuf_payload(b));
    /* Text frames carry UTF-8. */
    assert_true(utf8_is_valid(pd_obuf_payload(b), plen));
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), plen);
    if (!j)
        fail_msg("not JSON: %.*s", (int)plen, (const char *)pd_obuf_payload(b));
    /* Exactly one value: no trailing bytes. */
    const char *end = NULL;
    cJSON *k = cJSON_ParseWithLengthOpts((const char *)pd_obuf_payload(b), plen, &end, 0);
    assert_non_null(k);
    assert_ptr_equal(end, (const char *)pd_obuf_payload(b) + plen);
    cJSON_Delete(k);
    return j;
}

static const cJSON *get(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v)
        fail_msg("no field %s", k);
    return v;
}

static const char *get_str(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static int count_keys(const cJSON *o) {
    int n = 0;
    for (const cJSON *c = o->child; c; c = c->next)
        n++;
    return n;
}

static void test_encode_presence_update(void **state) {
    (void)state;
    const char *devs[] = {"mobile", "web"};
    pd_presence_t p = {.user_id = "alice",
                       .user_id_len = 5,
                       .status = PD_BUSY,
                       .last_seen = 1764316800.123,
                       .device = "web",
                       .devices = devs,
                       .ndevices = 2,
                       .custom_status = "in a meeting",
                       .activity = "meeting",
                       .version = 9};
    pd_obuf_t *b = proto_encode_presence_update(&p);
    cJSON *j = frame_json(b);
    assert_int_equal(count_keys(j), 2);
    assert_string_equal(get_str(j, "type"), "presence_update");
    const cJSON *o = get(j, "presence");
    assert_int_equal(count_keys(o), 7);
    assert_string_equal(get_str(o, "user_id"), "alice");
    assert_string_equal(get_str(o, "status"), "busy");
    assert_true(cJSON_IsNumber(get(o, "last_seen")));
    assert_true(fabs(get(o, "last_seen")->valuedouble - 1764316800.123) < 0.0005);
    assert_string_equal(get_str(o, "device"), "web");
    const cJSON *d = get(o, "devices");
    assert_true(cJSON_IsArray(d));
    assert_int_equal(cJSON_GetArraySize(d), 2);
    assert_string_equal(cJSON_GetArrayItem(d, 0)->valuestring, "mobile");
    assert_string_equal(cJSON_GetArrayItem(d, 1)->valuestring, "web");
    assert_string_equal(get_str(o, "custom_status"), "in a meeting");
    assert_string_equal(get_str(o, "activity"), "meeting");
    /* Millisecond precision, as written. */
    assert_non_null(
        memmem(pd_obuf_payload(b), pd_obuf_payload_len(b), "\"last_seen\":1764316800.123,", 27));
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* Offline, nothing set, the user id not NUL-terminated. */
    pd_presence_t q = {.user_id = "bobXYZ",
                       .user_id_len = 3,
                       .status = PD_OFFLINE,
                       .last_seen = 0,
                       .device = NULL,
                       .devices = NULL,
                       .ndevices = 0};
    b = proto_encode_presence_update(&q);
    j = frame_json(b);
    o = get(j, "presence");
    assert_string_equal(get_str(o, "user_id"), "bob");
    assert_string_equal(get_str(o, "status"), "offline");
    assert_string_equal(get_str(o, "device"), "");
    assert_int_equal(cJSON_GetArraySize(get(o, "devices")), 0);
    assert_true(cJSON_IsNull(get(o, "custom_status")));
    assert_true(cJSON_IsNull(get(o, "activity")));
    assert_true(get(o, "last_seen")->valuedouble == 0);
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* Every status name. */
    for (uint8_t s = PD_OFFLINE; s <= PD_BUSY; s++) {
        q.status = s;
        b = proto_encode_presence_update(&q);
        j = frame_json(b);
        assert_string_equal(get_str(get(j, "presence"), "status"), pd_status_name(s));
        cJSON_Delete(j);
        pd_obuf_release(b);
    }
}

static void test_encode_escaping(void **state) {
    (void)state;
    /* Quotes, backslashes, every control character, DEL and multi-byte text survive a
     * round trip. (Validated input never holds controls; the writer escapes them anyway.) */
    char nasty[64];
    size_t n = 0;
    nasty[n++] = '"';
    nasty[n++] = '\\';
    nasty[n++] = '/';
    for (int c = 1; c < 0x20; c++)
        nasty[n++] = (char)c;
    nasty[n++] = 0x7F;
    memcpy(nasty + n, "\xC3\xA9\xF0\x9F\x98\x80", 6);
    n += 6;
    nasty[n] = '\0';
    const char *devs[] = {nasty};
    pd_presence_t p = {.user_id = nasty,
                       .user_id_len = n,
                       .status = PD_ONLINE,
                       .last_seen = 1.5,
                       .device = nasty,
                       .devices = devs,
                       .ndevices = 1,
                       .custom_status = nasty,
                       .activity = nasty};
    pd_obuf_t *b = proto_encode_presence_update(&p);
    cJSON *j = frame_json(b);
    const cJSON *o = get(j, "presence");
    assert_string_equal(get_str(o, "user_id"), nasty);
    assert_string_equal(get_str(o, "device"), nasty);
    assert_string_equal(get_str(o, "custom_status"), nasty);
    assert_string_equal(get_str(o, "activity"), nasty);
    assert_string_equal(cJSON_GetArrayItem(get(o, "devices"), 0)->valuestring, nasty);
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* The raw payload holds no raw control bytes. */
    b = proto_encode_error(NULL, PROTO_E_BAD_VALUE, nasty);
    for (size_t i = 0; i < pd_obuf_payload_len(b); i++)
        assert_true(pd_obuf_payload(b)[i] >= 0x20);
    j = frame_json(b);
    assert_string_equal(get_str(j, "message"), nasty);
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* Keys are escaped too (a user id as the key of presences). */
    pd_presence_t q = p;
    q.devices = NULL;
    q.ndevices = 0;
    b = proto_encode_presences("initial_presence", NULL, &q, 1);
    j = frame_json(b);
    const cJSON *ps = get(j, "presences");
    assert_string_equal(ps->child->string, nasty);
    assert_string_equal(get_str(ps->child, "user_id"), nasty);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void test_encode_presences(void **state) {
    (void)state;
    const char *d1[] = {"web"};
    pd_presence_t ps[3] = {
        {.user_id = "bob",
         .user_id_len = 3,
         .status = PD_ONLINE,
         .last_seen = 10.25,
         .device = "web",
         .devices = d1,
         .ndevices = 1},
        {.user_id = "carol",
         .user_id_len = 5,
         .status = PD_OFFLINE,
         .last_seen = 5,
         .device = "",
         .custom_status = "gone fishing"},
        {.user_id = "dave",
         .user_id_len = 4,
         .status = PD_AWAY,
         .device = "web",
         .devices = d1,
         .ndevices = 1,
         .activity = "focus"},
    };
    proto_id_t none = {.kind = PROTO_ID_NONE};
    pd_obuf_t *b = proto_encode_presences("initial_presence", &none, ps, 3);
    cJSON *j = frame_json(b);
    assert_int_equal(count_keys(j), 2);
    assert_string_equal(get_str(j, "type"), "initial_presence");
    const cJSON *o = get(j, "presences");
    assert_int_equal(count_keys(o), 3);
    assert_string_equal(get_str(get(o, "bob"), "status"), "online");
    assert_string_equal(get_str(get(o, "bob"), "user_id"), "bob");
    assert_string_equal(get_str(get(o, "carol"), "custom_status"), "gone fishing");
    assert_string_equal(get_str(get(o, "dave"), "activity"), "focus");
    assert_int_equal(count_keys(get(o, "dave")), 7);
    cJSON_Delete(j);
    pd_obuf_release(b);

    /* With an integer id, and empty. */
    proto_id_t id = {.kind = PROTO_ID_INT, .i = 7};
    b = proto_encode_presences("presence_result", &id, NULL, 0);
    j = frame_json(b);
    assert_string_equal(get_str(j, "type"), "presence_result");
    assert_true(cJSON_IsNumber(get(j, "id")));
    assert_int_equal(get(j, "id")->valueint, 7);
    assert_true(cJSON_IsObject(get(j, "presences")));
    assert_int_equal(count_keys(get(j, "presences")), 0);
    const char *want = "{\"type\":\"presence_result\",\"id\":7,\"presences\":{}}";
    assert_int_equal(pd_obuf_payload_len(b), strlen(want));
    assert_memory_equal(pd_obuf_payload(b), want, strlen(want));
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void test_encode_ids(void **state) {
    (void)state;
    proto_id_t ids[5] = {{.kind = PROTO_ID_NONE},
                         {.kind = PROTO_ID_INT, .i = 0},
                         {.kind = PROTO_ID_INT, .i = -9007199254740991LL},
                         {.kind = PROTO_ID_STR},
                         {.kind = PROTO_ID_STR}};
    strcpy(ids[3].s, "req \"1\" \\ x");
    strcpy(ids[4].s, "");
    for (int which = 0; which < 3; which++) {
        for (size_t k = 0; k <= 5; k++) {
            const proto_id_t *id = k < 5 ? &ids[k] : NULL;
            pd_obuf_t *b = which == 0   ? proto_encode_ack(id)
                           : which == 1 ? proto_encode_pong(id)
                                        : proto_encode_error(id, PROTO_E_BAD_STATUS, "m");
            cJSON *j = frame_json(b);
            assert_string_equal(get_str(j, "type"), which == 0   ? "ack"
                                                    : which == 1 ? "pong"
                                                                 : "error");
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "id");
            if (!id || id->kind == PROTO_ID_NONE) {
                assert_null(v);
            } else if (id->kind == PROTO_ID_INT) {
                assert_true(cJSON_IsNumber(v));
                assert_true(v->valuedouble == (double)id->i);
            } else {
                assert_true(cJSON_IsString(v));
                assert_string_equal(v->valuestring, id->s);
            }
            if (which == 2) {
                assert_string_equal(get_str(j, "code"), "bad_status");
                assert_string_equal(get_str(j, "message"), "m");
            }
            assert_int_equal(count_keys(j), (v ? 2 : 1) + (which == 2 ? 2 : 0));
            cJSON_Delete(j);
            pd_obuf_release(b);
        }
    }
    /* The exact bytes of the common ones. */
    pd_obuf_t *b = proto_encode_pong(NULL);
    assert_int_equal(pd_obuf_payload_len(b), strlen("{\"type\":\"pong\"}"));
    assert_memory_equal(pd_obuf_payload(b), "{\"type\":\"pong\"}", pd_obuf_payload_len(b));
    pd_obuf_release(b);
    b = proto_encode_ack(&ids[1]);
    assert_memory_equal(pd_obuf_payload(b), "{\"type\":\"ack\",\"id\":0}", pd_obuf_payload_len(b));
    pd_obuf_release(b);
}

static void test_encode_error_every_code(void **state) {
    (void)state;
    proto_id_t id = {.kind = PROTO_ID_STR};
    strcpy(id.s, rep('i', PROTO_ID_MAX));
    for (int c = 0; c < PROTO_E_COUNT; c++) {
        pd_obuf_t *b =
            proto_encode_error(&id, c, "\"status\" must be online, away, busy or offline");
        cJSON *j = frame_json(b);
        assert_string_equal(get_str(j, "code"), proto_error_name(c));
        assert_string_equal(get_str(j, "message"),
                            "\"status\" must be online, away, busy or offline");
        assert_string_equal(get_str(j, "id"), id.s);
        cJSON_Delete(j);
        pd_obuf_release(b);
    }
    /* A long message: a frame with a 16-bit length. */
    char *msg = malloc(70000);
    assert_non_null(msg);
    memset(msg, 'm', 69999);
    msg[69999] = '\0';
    pd_obuf_t *b = proto_encode_error(NULL, PROTO_E_INTERNAL, msg);
    cJSON *j = frame_json(b); /* > 65535: 64-bit length form */
    assert_int_equal(strlen(get_str(j, "message")), 69999);
    cJSON_Delete(j);
    pd_obuf_release(b);
    msg[300] = '\0';
    b = proto_encode_error(NULL, PROTO_E_INTERNAL, msg);
    assert_int_equal(pd_obuf_bytes(b)[1], 126);
    cJSON_Delete(frame_json(b));
    pd_obuf_release(b);
    free(msg);
}

static void test_encode_errors_from_decoder(void **state) {
    (void)state;
    /* The decoder's messages echo client text (an unknown type or field, cut to 64 bytes);
     * the error frame must still be valid UTF-8 and JSON. */
    char type[200] = "x";
    for (int i = 0; i < 40; i++)
        strcat(type, "\xC3\xA9"); /* 1 + 80 bytes: a cut at 64 splits a character */
    char odd[200] = "xx";
    for (int i = 0; i < 40; i++)
        strcat(odd, "\xE2\x82\xAC"); /* 2 + 120 bytes: so does this one */
    const char *inputs[] = {
        fmt("{\"type\":\"%s\"}", type),           fmt("{\"type\":\"%s\"}", odd),
        fmt("{\"type\":\"ping\",\"%s\":1}", odd), fmt("{\"type\":\"ping\",\"%s\":1}", type),
        "{\"type\":\"\\\"quoted\\\\\"}",          "{\"type\":\"ping\",\"a\\u0001b\\\"\":1}",
    };
    for (size_t k = 0; k < sizeof(inputs) / sizeof(inputs[0]); k++) {
        /* fmt's buffers rotate: copy first. */
        char in[1024];
        snprintf(in, sizeof(in), "%s", inputs[k]);
        proto_msg_t m;
        proto_error_t err;
        int rc = decode_n(in, strlen(in), &m, &err);
        assert_int_equal(rc, PD_EPROTO);
        if (!utf8_is_valid((const uint8_t *)err.message, strlen(err.message)))
            fail_msg("input %zu: the error message is not valid UTF-8", k);
        pd_obuf_t *b = proto_encode_error(&m.id, err.code, err.message);
        cJSON *j = frame_json(b);
        assert_string_equal(get_str(j, "message"), err.message);
        cJSON_Delete(j);
        pd_obuf_release(b);
    }
}

static void test_encode_hidden_and_welcome(void **state) {
    (void)state;
    pd_obuf_t *b = proto_encode_presence_hidden((pd_str_t){"carol!!", 5});
    cJSON *j = frame_json(b);
    assert_string_equal(get_str(j, "type"), "presence_update");
    const cJSON *o = get(j, "presence");
    assert_int_equal(count_keys(o), 2);
    assert_string_equal(get_str(o, "user_id"), "carol");
    assert_string_equal(get_str(o, "status"), "offline");
    cJSON_Delete(j);
    pd_obuf_release(b);

    b = proto_encode_welcome((pd_str_t){"al\"ice", 6}, 17, 30000);
    j = frame_json(b);
    assert_int_equal(count_keys(j), 6);
    assert_string_equal(get_str(j, "type"), "welcome");
    assert_int_equal(get(j, "protocol")->valueint, PROTO_VERSION);
    assert_string_equal(get_str(j, "user_id"), "al\"ice");
    assert_int_equal(get(j, "session_id")->valueint, 17);
    assert_int_equal(get(j, "heartbeat_interval")->valueint, 10000);
    assert_int_equal(get(j, "heartbeat_ttl")->valueint, 30000);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void test_encode_frame_lengths(void **state) {
    (void)state;
    /* Payloads just under, at and over each header form's limits. */
    const size_t targets[] = {125, 126, 127, 65535, 65536};
    for (size_t t = 0; t < sizeof(targets) / sizeof(targets[0]); t++) {
        /* An error frame whose message is sized to make the payload exactly the target. */
        pd_obuf_t *probe = proto_encode_error(NULL, PROTO_E_INTERNAL, "");
        size_t base = pd_obuf_payload_len(probe);
        pd_obuf_release(probe);
        assert_true(targets[t] > base);
        char *msg = malloc(targets[t] - base + 1);
        assert_non_null(msg);
        memset(msg, 'z', targets[t] - base);
        msg[targets[t] - base] = '\0';
        pd_obuf_t *b = proto_encode_error(NULL, PROTO_E_INTERNAL, msg);
        assert_int_equal(pd_obuf_payload_len(b), targets[t]);
        cJSON_Delete(frame_json(b)); /* checks the header form for the length */
        pd_obuf_release(b);
        free(msg);
    }
    /* Many presences: a large frame built by the fan-out encoder. */
    pd_presence_t *ps = calloc(1000, sizeof(*ps));
    char(*names)[16] = calloc(1000, 16);
    assert_non_null(ps);
    assert_non_null(names);
    for (int i = 0; i < 1000; i++) {
        snprintf(names[i], 16, "user%04d", i);
        ps[i] = (pd_presence_t){.user_id = names[i],
                                .user_id_len = 8,
                                .status = PD_AWAY,
                                .last_seen = 1764316800.0 + i,
                                .device = "web"};
    }
    pd_obuf_t *b = proto_encode_presences("initial_presence", NULL, ps, 1000);
    cJSON *j = frame_json(b);
    assert_int_equal(count_keys(get(j, "presences")), 1000);
    assert_string_equal(get_str(get(get(j, "presences"), "user0999"), "user_id"), "user0999");
    cJSON_Delete(j);
    pd_obuf_release(b);
    free(ps);
    free(names);
}

/* What the decoder hands out goes back out intact through the encoders. */
static void test_decode_then_encode(void **state) {
    (void)state;
    proto_msg_t m;
    DECODE_OK("{\"type\":\"set_status\",\"status\":\"busy\",\"custom_status\":"
              "\"\\\"q\\\" \\\\ \\u00e9\",\"activity\":\"in_call\",\"id\":\"r\\\"1\"}",
              &m);
    pd_presence_t p = {.user_id = "u",
                       .user_id_len = 1,
                       .status = (uint8_t)m.status,
                       .device = "web",
                       .custom_status = m.custom_status.v.s,
                       .activity = m.activity.v.s};
    pd_obuf_t *b = proto_encode_presences("presence_result", &m.id, &p, 1);
    cJSON *j = frame_json(b);
    assert_string_equal(get_str(j, "id"), "r\"1");
    const cJSON *o = get(get(j, "presences"), "u");
    assert_string_equal(get_str(o, "custom_status"), "\"q\" \\ \xC3\xA9");
    assert_string_equal(get_str(o, "activity"), "in_call");
    assert_string_equal(get_str(o, "status"), "busy");
    cJSON_Delete(j);
    pd_obuf_release(b);
    proto_msg_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_client_messages),
        cmocka_unit_test(test_documented_examples),
        cmocka_unit_test(test_every_type_and_field),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_json_syntax),
        cmocka_unit_test(test_bad_json_nul),
        cmocka_unit_test(test_bad_json_whitespace),
        cmocka_unit_test(test_bad_json_duplicate_keys),
        cmocka_unit_test(test_bad_json_deep_nesting),
        cmocka_unit_test(test_bad_message),
        cmocka_unit_test(test_missing_type),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_unknown_field),
        cmocka_unit_test(test_bad_field),
        cmocka_unit_test(test_bad_status),
        cmocka_unit_test(test_too_long_and_limits),
        cmocka_unit_test(test_bad_value),
        cmocka_unit_test(test_bad_user_id),
        cmocka_unit_test(test_bad_id),
        cmocka_unit_test(test_too_many_ids),
        cmocka_unit_test(test_error_keeps_id),
        cmocka_unit_test(test_msg_free),
        cmocka_unit_test(test_every_truncation_is_bad_json),
        cmocka_unit_test(test_canonical_heartbeat),
        cmocka_unit_test(test_canonical_heartbeat_with_id),
        cmocka_unit_test(test_encode_presence_update),
        cmocka_unit_test(test_encode_escaping),
        cmocka_unit_test(test_encode_presences),
        cmocka_unit_test(test_encode_ids),
        cmocka_unit_test(test_encode_error_every_code),
        cmocka_unit_test(test_encode_errors_from_decoder),
        cmocka_unit_test(test_encode_hidden_and_welcome),
        cmocka_unit_test(test_encode_frame_lengths),
        cmocka_unit_test(test_decode_then_encode),
    };
    /* TEST_FILTER / TEST_SKIP: glob patterns of test names to run or skip. */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (getenv("TEST_SKIP"))
        cmocka_set_skip_filter(getenv("TEST_SKIP"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
