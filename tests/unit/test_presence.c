/* The presence model: the aggregation rule, status names, and the validation of user ids and
 * labels (ARCHITECTURE.md section 2, PROTOCOL.md section 3).
 *
 * The aggregation rule is checked against an independent statement of it over every
 * combination of 0..3 session claims, then over larger and random sets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "presence/presence.h"

static const uint8_t CLAIMS[] = {PD_ONLINE, PD_AWAY, PD_BUSY};

/* The rule as the documents state it, written independently of the code. */
static uint8_t expected_status(const uint8_t *claims, size_t n) {
    if (n == 0)
        return PD_OFFLINE;
    bool any_online = false;
    for (size_t i = 0; i < n; i++) {
        if (claims[i] == PD_BUSY)
            return PD_BUSY;
        any_online |= claims[i] == PD_ONLINE;
    }
    return any_online ? PD_ONLINE : PD_AWAY;
}

/* ---- aggregation ---- */

static void test_aggregate_no_session_is_offline(void **state) {
    (void)state;
    uint8_t unused = PD_BUSY;
    assert_int_equal(pd_aggregate_status(NULL, 0), PD_OFFLINE);
    assert_int_equal(pd_aggregate_status(&unused, 0), PD_OFFLINE);
}

static void test_aggregate_every_combination_up_to_three(void **state) {
    (void)state;
    size_t checked = 0;
    for (size_t n = 0; n <= 3; n++) {
        size_t combos = 1;
        for (size_t i = 0; i < n; i++)
            combos *= 3;
        for (size_t c = 0; c < combos; c++) {
            uint8_t claims[3];
            size_t k = c;
            for (size_t i = 0; i < n; i++, k /= 3)
                claims[i] = CLAIMS[k % 3];
            uint8_t got = pd_aggregate_status(claims, n);
            uint8_t want = expected_status(claims, n);
            if (got != want) {
                print_error("claims n=%zu [%s %s %s]: got %s, want %s\n", n,
                            n > 0 ? pd_status_name(claims[0]) : "-",
                            n > 1 ? pd_status_name(claims[1]) : "-",
                            n > 2 ? pd_status_name(claims[2]) : "-", pd_status_name(got),
                            pd_status_name(want));
                fail();
            }
            checked++;
        }
    }
    assert_int_equal(checked, 1 + 3 + 9 + 27);
}

static void test_aggregate_named_cases(void **state) {
    (void)state;
    const uint8_t a[] = {PD_AWAY};
    const uint8_t aa[] = {PD_AWAY, PD_AWAY};
    const uint8_t ao[] = {PD_AWAY, PD_ONLINE};
    const uint8_t oa[] = {PD_ONLINE, PD_AWAY};
    const uint8_t aob[] = {PD_AWAY, PD_ONLINE, PD_BUSY};
    const uint8_t baa[] = {PD_BUSY, PD_AWAY, PD_AWAY};
    assert_int_equal(pd_aggregate_status(a, 1), PD_AWAY);
    assert_int_equal(pd_aggregate_status(aa, 2), PD_AWAY);
    assert_int_equal(pd_aggregate_status(ao, 2), PD_ONLINE);
    assert_int_equal(pd_aggregate_status(oa, 2), PD_ONLINE);
    assert_int_equal(pd_aggregate_status(aob, 3), PD_BUSY);
    assert_int_equal(pd_aggregate_status(baa, 3), PD_BUSY);
}

static void test_aggregate_large_sets(void **state) {
    (void)state;
    uint8_t claims[PD_SESSIONS_PER_USER_MAX];
    /* All away, one online last, one busy last. */
    memset(claims, PD_AWAY, sizeof(claims));
    assert_int_equal(pd_aggregate_status(claims, PD_SESSIONS_PER_USER_MAX), PD_AWAY);
    claims[PD_SESSIONS_PER_USER_MAX - 1] = PD_ONLINE;
    assert_int_equal(pd_aggregate_status(claims, PD_SESSIONS_PER_USER_MAX), PD_ONLINE);
    claims[PD_SESSIONS_PER_USER_MAX - 1] = PD_BUSY;
    assert_int_equal(pd_aggregate_status(claims, PD_SESSIONS_PER_USER_MAX), PD_BUSY);
    /* Only the first n count. */
    assert_int_equal(pd_aggregate_status(claims, PD_SESSIONS_PER_USER_MAX - 1), PD_AWAY);

    /* Random sets of every size up to the session cap, against the stated rule. */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (int round = 0; round < 5000; round++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t n = (size_t)(x % (PD_SESSIONS_PER_USER_MAX + 1));
        uint64_t y = x;
        for (size_t i = 0; i < n; i++) {
            y = y * 6364136223846793005ULL + 1442695040888963407ULL;
            /* Skew towards away so that all-away and online-without-busy sets occur. */
            unsigned r = (unsigned)(y >> 60);
            claims[i] = r < 10 ? PD_AWAY : r < 14 ? PD_ONLINE : PD_BUSY;
        }
        assert_int_equal(pd_aggregate_status(claims, n), expected_status(claims, n));
    }
}

static void test_aggregate_offline_claim_counts_as_live(void **state) {
    (void)state;
    /* A live session never makes its user offline, whatever it claims. */
    const uint8_t off[] = {PD_OFFLINE};
    const uint8_t off_on[] = {PD_OFFLINE, PD_ONLINE};
    const uint8_t junk[] = {200};
    assert_int_equal(pd_aggregate_status(off, 1), PD_AWAY);
    assert_int_equal(pd_aggregate_status(off_on, 2), PD_ONLINE);
    assert_int_equal(pd_aggregate_status(junk, 1), PD_AWAY);
}

/* ---- status names ---- */

static void test_status_names(void **state) {
    (void)state;
    assert_string_equal(pd_status_name(PD_OFFLINE), "offline");
    assert_string_equal(pd_status_name(PD_AWAY), "away");
    assert_string_equal(pd_status_name(PD_ONLINE), "online");
    assert_string_equal(pd_status_name(PD_BUSY), "busy");
    assert_string_equal(pd_status_name(4), "offline");
    assert_string_equal(pd_status_name(255), "offline");
}

static void test_status_parse(void **state) {
    (void)state;
    assert_int_equal(pd_status_parse("offline", 7), PD_OFFLINE);
    assert_int_equal(pd_status_parse("away", 4), PD_AWAY);
    assert_int_equal(pd_status_parse("online", 6), PD_ONLINE);
    assert_int_equal(pd_status_parse("busy", 4), PD_BUSY);
    /* Round trip. */
    for (uint8_t s = PD_OFFLINE; s <= PD_BUSY; s++)
        assert_int_equal(pd_status_parse(pd_status_name(s), strlen(pd_status_name(s))), s);

    /* Exact length and case. */
    assert_int_equal(pd_status_parse("", 0), -1);
    assert_int_equal(pd_status_parse("onlin", 5), -1);
    assert_int_equal(pd_status_parse("online ", 7), -1);
    assert_int_equal(pd_status_parse("onlinex", 7), -1);
    assert_int_equal(pd_status_parse("Online", 6), -1);
    assert_int_equal(pd_status_parse("BUSY", 4), -1);
    assert_int_equal(pd_status_parse("idle", 4), -1);
    assert_int_equal(pd_status_parse("invisible", 9), -1);
    /* Only len bytes are read: a prefix of a longer buffer. */
    assert_int_equal(pd_status_parse("busybody", 4), PD_BUSY);
    assert_int_equal(pd_status_parse("away\0", 5), -1);
}

/* ---- ids and labels ---- */

static bool uid(const char *s) {
    return pd_user_id_valid(s, strlen(s));
}

static void test_user_id_lengths(void **state) {
    (void)state;
    char buf[PD_USER_ID_MAX + 2];
    memset(buf, 'u', sizeof(buf));
    assert_false(pd_user_id_valid(buf, 0));
    assert_false(pd_user_id_valid("", 0));
    assert_true(pd_user_id_valid(buf, 1));
    assert_true(pd_user_id_valid(buf, PD_USER_ID_MAX));
    assert_false(pd_user_id_valid(buf, PD_USER_ID_MAX + 1));
    assert_false(pd_user_id_valid(buf, PD_USER_ID_MAX + 2));

    /* Multi-byte characters: the limit is in bytes. */
    for (size_t i = 0; i + 1 < sizeof(buf); i += 2) {
        buf[i] = (char)0xC3; /* U+00E9 */
        buf[i + 1] = (char)0xA9;
    }
    assert_true(pd_user_id_valid(buf, PD_USER_ID_MAX));
    assert_false(pd_user_id_valid(buf, PD_USER_ID_MAX + 2));
    /* Cut inside a character: not valid UTF-8. */
    assert_false(pd_user_id_valid(buf, PD_USER_ID_MAX - 1));
}

static void test_user_id_characters(void **state) {
    (void)state;
    assert_true(uid("alice"));
    assert_true(uid("bob@example.com"));
    assert_true(uid("a b"));   /* space is not a control character */
    assert_true(uid("~"));     /* 0x7E */
    assert_true(uid("\"\\/")); /* JSON-special characters are data */
    assert_true(uid("caf\xC3\xA9"));
    assert_true(uid("\xE2\x82\xAC"));     /* U+20AC */
    assert_true(uid("\xF0\x9F\x98\x80")); /* U+1F600 */
    assert_true(uid("\xC2\xA0"));         /* U+00A0, first after C1 */
    assert_true(uid("\xF4\x8F\xBF\xBF")); /* U+10FFFF */

    /* C0 controls, each of them, anywhere. */
    for (int c = 0x00; c < 0x20; c++) {
        char s[4] = {'a', (char)c, 'b', 0};
        assert_false(pd_user_id_valid(s, 3));
        char t[2] = {(char)c, 0};
        assert_false(pd_user_id_valid(t, 1));
    }
    /* DEL. */
    assert_false(uid("a\x7F"));
    assert_false(uid("\x7F"));
    /* C1 controls U+0080..U+009F (C2 80 .. C2 9F). */
    for (int c = 0x80; c <= 0x9F; c++) {
        char s[4] = {'x', (char)0xC2, (char)c, 0};
        assert_false(pd_user_id_valid(s, 3));
    }
    /* Invalid UTF-8. */
    assert_false(uid("\x80"));             /* lone continuation */
    assert_false(uid("a\xBF"));            /* lone continuation */
    assert_false(uid("\xC3"));             /* truncated */
    assert_false(uid("\xE2\x82"));         /* truncated */
    assert_false(uid("\xC0\xAF"));         /* overlong '/' */
    assert_false(uid("\xC1\xBF"));         /* overlong */
    assert_false(uid("\xE0\x80\xAF"));     /* overlong */
    assert_false(uid("\xED\xA0\x80"));     /* surrogate U+D800 */
    assert_false(uid("\xF4\x90\x80\x80")); /* above U+10FFFF */
    assert_false(uid("\xF5\x80\x80\x80"));
    assert_false(uid("\xFE"));
    assert_false(uid("\xFF"));
    /* An embedded NUL is a control character, even where strlen would stop. */
    assert_false(pd_user_id_valid("ab\0cd", 5));
}

static void test_label_limits(void **state) {
    (void)state;
    char buf[PD_CUSTOM_STATUS_MAX + 2];
    memset(buf, 'x', sizeof(buf));
    const struct {
        size_t max;
    } limits[] = {{PD_DEVICE_MAX}, {PD_ACTIVITY_MAX}, {PD_CUSTOM_STATUS_MAX}, {PD_USER_ID_MAX}};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        size_t max = limits[i].max;
        assert_true(pd_label_valid(buf, max, max, false));
        assert_true(pd_label_valid(buf, max - 1, max, false));
        assert_false(pd_label_valid(buf, max + 1, max, false));
        assert_false(pd_label_valid(buf, max + 1, max, true));
        assert_true(pd_label_valid(buf, 1, max, false));
    }
    assert_int_equal(PD_DEVICE_MAX, 32);
    assert_int_equal(PD_CUSTOM_STATUS_MAX, 256);
    assert_int_equal(PD_ACTIVITY_MAX, 64);
    assert_int_equal(PD_USER_ID_MAX, 128);
    assert_int_equal(PD_SESSIONS_PER_USER_MAX, 64);
}

static void test_label_empty(void **state) {
    (void)state;
    assert_false(pd_label_valid("", 0, PD_DEVICE_MAX, false));
    assert_true(pd_label_valid("", 0, PD_CUSTOM_STATUS_MAX, true));
    assert_true(pd_label_valid(NULL, 0, PD_ACTIVITY_MAX, true));
    assert_false(pd_label_valid(NULL, 0, PD_ACTIVITY_MAX, false));
}

static void test_label_characters(void **state) {
    (void)state;
    const char *ok[] = {"web", "mobile", "in a meeting", "caf\xC3\xA9", "\xF0\x9F\x8D\x95 lunch"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_true(pd_label_valid(ok[i], strlen(ok[i]), PD_CUSTOM_STATUS_MAX, false));
    const char *bad[] = {"tab\there", "new\nline",     "cr\r",        "esc\x1B[0m",
                         "del\x7F",   "c1\xC2\x85",    "c1\xC2\x9F",  "\xC2\x80",
                         "bad\xFF",   "trunc\xE2\x82", "\xED\xBF\xBF"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (pd_label_valid(bad[i], strlen(bad[i]), PD_CUSTOM_STATUS_MAX, true)) {
            print_error("label #%zu accepted\n", i);
            fail();
        }
    }
    /* A C2 lead byte at the very end is invalid UTF-8, not a read past the end. */
    char tail[3] = {'a', (char)0xC2, (char)0x85};
    assert_false(pd_label_valid(tail, 2, PD_DEVICE_MAX, false));
    assert_false(pd_label_valid(tail, 3, PD_DEVICE_MAX, false));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aggregate_no_session_is_offline),
        cmocka_unit_test(test_aggregate_every_combination_up_to_three),
        cmocka_unit_test(test_aggregate_named_cases),
        cmocka_unit_test(test_aggregate_large_sets),
        cmocka_unit_test(test_aggregate_offline_claim_counts_as_live),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_status_parse),
        cmocka_unit_test(test_user_id_lengths),
        cmocka_unit_test(test_user_id_characters),
        cmocka_unit_test(test_label_limits),
        cmocka_unit_test(test_label_empty),
        cmocka_unit_test(test_label_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
