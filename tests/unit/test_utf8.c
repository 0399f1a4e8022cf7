/* Incremental UTF-8 validation (util/utf8.h), against an independent reference decoder:
 * exhaustively over every code point and every 1-, 2- and 3-byte sequence, at every split
 * point, on guarded pages, and over Markus Kuhn's decoder stress cases.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "util/utf8.h"

/* ---- the reference: decode by arithmetic, then check minimality and range ---- */

/* Length of the valid character at s[0..len), or 0 when s does not start with one. */
static size_t ref_char(const uint8_t *s, size_t len) {
    uint8_t c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static bool ref_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t n = ref_char(s + i, len - i);
        if (!n)
            return false;
        i += n;
    }
    return true;
}

static size_t encode(uint32_t cp, uint8_t *b);

/* Proper prefixes (1 to 3 bytes) of the encoding of some scalar value, as bit sets. */
static uint8_t prefix1[256 / 8], prefix2[65536 / 8], prefix3[(1u << 24) / 8];

static void build_prefixes(void) {
    static bool built;
    if (built)
        return;
    for (uint32_t cp = 0x80; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        uint8_t b[4];
        size_t n = encode(cp, b);
        uint32_t k1 = b[0], k2 = k1 << 8 | b[1], k3 = k2 << 8 | b[2];
        prefix1[k1 / 8] |= (uint8_t)(1u << (k1 % 8));
        if (n > 2)
            prefix2[k2 / 8] |= (uint8_t)(1u << (k2 % 8));
        if (n > 3)
            prefix3[k3 / 8] |= (uint8_t)(1u << (k3 % 8));
    }
    built = true;
}

/* True when s[0..len) is valid so far: complete characters, then perhaps the start of one. */
static bool ref_valid_prefix(const uint8_t *s, size_t len) {
    build_prefixes();
    size_t i = 0;
    while (i < len) {
        size_t n = ref_char(s + i, len - i);
        if (!n)
            break;
        i += n;
    }
    size_t tail = len - i;
    const uint8_t *t = s + i;
    switch (tail) {
    case 0:
        return true;
    case 1:
        return prefix1[t[0] / 8] >> (t[0] % 8) & 1;
    case 2: {
        uint32_t k = (uint32_t)t[0] << 8 | t[1];
        return prefix2[k / 8] >> (k % 8) & 1;
    }
    case 3: {
        uint32_t k = (uint32_t)t[0] << 16 | (uint32_t)t[1] << 8 | t[2];
        return prefix3[k / 8] >> (k % 8) & 1;
    }
    default:
        return false;
    }
}

/* utf8_validate over s fed in the pieces ending at ends[]; returns the final state. */
static uint8_t validate_pieces(const uint8_t *s, const size_t *ends, size_t n) {
    uint8_t st = UTF8_ACCEPT;
    size_t at = 0;
    for (size_t k = 0; k < n; k++) {
        st = utf8_validate(st, s + at, ends[k] - at);
        at = ends[k];
    }
    return st;
}

/* The tu_chunked_fn: each piece on a guarded page; the transcript is the verdict and, at
 * each piece boundary, whether the text so far was judged "valid so far". */
static void run_validator(void *ctx, const uint8_t *in, size_t len, const size_t *ends, size_t n,
                          tu_str_t *out) {
    (void)ctx;
    tu_guard_t g;
    tu_guard_init(&g, len);
    uint8_t st = UTF8_ACCEPT;
    size_t at = 0;
    for (size_t k = 0; k < n; k++) {
        const uint8_t *p = tu_guard_place(&g, in + at, ends[k] - at);
        st = utf8_validate(st, p, ends[k] - at);
        /* Valid so far exactly when the reference says the prefix can still be completed. */
        if ((st != UTF8_REJECT) != ref_valid_prefix(in, ends[k]))
            fail_msg("prefix of %zu bytes: state %u", ends[k], st);
        at = ends[k];
    }
    tu_str_printf(out, "%s\n",
                  st == UTF8_ACCEPT   ? "valid"
                  : st == UTF8_REJECT ? "invalid"
                                      : "incomplete");
    tu_guard_destroy(&g);
}

static const char *verdict(const void *s, size_t len) {
    char *got = tu_every_split(run_validator, NULL, s, len);
    static char v[16];
    snprintf(v, sizeof(v), "%s", got);
    v[strcspn(v, "\n")] = '\0';
    free(got);
    return v;
}

#define VALID(s)   assert_string_equal(verdict(s, sizeof(s) - 1), "valid")
#define INVALID(s) assert_string_equal(verdict(s, sizeof(s) - 1), "invalid")
#define PARTIAL(s) assert_string_equal(verdict(s, sizeof(s) - 1), "incomplete")

static size_t encode(uint32_t cp, uint8_t *b) {
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | cp >> 6);
        b[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | cp >> 12);
        b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    b[0] = (uint8_t)(0xF0 | cp >> 18);
    b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- exhaustive ---- */

static void test_every_code_point(void **state) {
    (void)state;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t b[4];
        size_t n = encode(cp, b);
        bool want = cp < 0xD800 || cp > 0xDFFF;
        if (utf8_is_valid(b, n) != want)
            fail_msg("U+%04X", cp);
        /* Every proper prefix is "valid so far" (not ACCEPT, not REJECT) unless surrogate. */
        for (size_t k = 1; k < n && want; k++) {
            uint8_t st = utf8_validate(UTF8_ACCEPT, b, k);
            if (st == UTF8_ACCEPT || st == UTF8_REJECT)
                fail_msg("U+%04X prefix %zu: state %u", cp, k, st);
            /* And the rest completes it. */
            if (utf8_validate(st, b + k, n - k) != UTF8_ACCEPT)
                fail_msg("U+%04X split at %zu", cp, k);
        }
    }
    /* Just past the range: U+110000 .. U+1FFFFF in the 4-byte form. */
    for (uint32_t cp = 0x110000; cp <= 0x1FFFFF; cp += 0x111) {
        uint8_t b[4];
        encode(cp, b);
        assert_false(utf8_is_valid(b, 4));
    }
}

static void test_every_short_sequence(void **state) {
    (void)state;
    uint8_t b[3];
    for (uint32_t x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        assert_int_equal(utf8_is_valid(b, 1), ref_valid(b, 1));
    }
    for (uint32_t x = 0; x < 65536; x++) {
        b[0] = (uint8_t)(x >> 8);
        b[1] = (uint8_t)x;
        if (utf8_is_valid(b, 2) != ref_valid(b, 2))
            fail_msg("%02x %02x", b[0], b[1]);
    }
    for (uint32_t x = 0; x < (1u << 24); x++) {
        b[0] = (uint8_t)(x >> 16);
        b[1] = (uint8_t)(x >> 8);
        b[2] = (uint8_t)x;
        if (utf8_is_valid(b, 3) != ref_valid(b, 3))
            fail_msg("%02x %02x %02x", b[0], b[1], b[2]);
        /* Split after the first byte: the state carries. */
        if ((x & 0xFF) == 0x80 && (utf8_validate(utf8_validate(UTF8_ACCEPT, b, 1), b + 1, 2) ==
                                   UTF8_ACCEPT) != ref_valid(b, 3))
            fail_msg("split %02x | %02x %02x", b[0], b[1], b[2]);
    }
}

static void test_four_byte_sequences(void **state) {
    (void)state;
    /* Every lead and second byte, the last two from the edges of the continuation range. */
    static const uint8_t edge[] = {0x00, 0x7F, 0x80, 0x81, 0xBF, 0xC0, 0xFF};
    uint8_t b[4];
    for (uint32_t x = 0; x < 65536; x++) {
        b[0] = (uint8_t)(x >> 8);
        b[1] = (uint8_t)x;
        for (size_t i = 0; i < sizeof(edge); i++)
            for (size_t j = 0; j < sizeof(edge); j++) {
                b[2] = edge[i];
                b[3] = edge[j];
                if (utf8_is_valid(b, 4) != ref_valid(b, 4))
                    fail_msg("%02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
            }
    }
}

/* ---- Markus Kuhn's UTF-8 decoder capability and stress test ---- */

static void test_kuhn_valid(void **state) {
    (void)state;
    VALID("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"); /* 1: Greek "kosme" */
    /* 2.1 first possible sequence of each length (5 and 6 bytes are not UTF-8 any more) */
    VALID("\x00");
    VALID("\xc2\x80");
    VALID("\xe0\xa0\x80");
    VALID("\xf0\x90\x80\x80");
    INVALID("\xf8\x88\x80\x80\x80");
    INVALID("\xfc\x84\x80\x80\x80\x80");
    /* 2.2 last possible sequence of each length */
    VALID("\x7f");
    VALID("\xdf\xbf");
    VALID("\xef\xbf\xbf");
    INVALID("\xf7\xbf\xbf\xbf"); /* U+1FFFFF */
    INVALID("\xfb\xbf\xbf\xbf\xbf");
    INVALID("\xfd\xbf\xbf\xbf\xbf\xbf");
    /* 2.3 other boundary conditions */
    VALID("\xed\x9f\xbf");       /* U+D7FF */
    VALID("\xee\x80\x80");       /* U+E000 */
    VALID("\xef\xbf\xbd");       /* U+FFFD */
    VALID("\xf4\x8f\xbf\xbf");   /* U+10FFFF */
    INVALID("\xf4\x90\x80\x80"); /* U+110000 */
    /* 5.3 noncharacters are valid UTF-8 */
    VALID("\xef\xbf\xbe");
    VALID("\xef\xbf\xbf");
    VALID("\xef\xb7\x90");     /* U+FDD0 */
    VALID("\xef\xb7\xaf");     /* U+FDEF */
    VALID("\xf0\x9f\xbf\xbe"); /* U+1FFFE */
    VALID("\xf4\x8f\xbf\xbe"); /* U+10FFFE */
    VALID("");
}

static void test_kuhn_malformed(void **state) {
    (void)state;
    /* 3.1 unexpected continuation bytes */
    INVALID("\x80");
    INVALID("\xbf");
    INVALID("\x80\xbf");
    INVALID("\x80\xbf\x80");
    INVALID("\x80\xbf\x80\xbf");
    INVALID("\x80\xbf\x80\xbf\x80\xbf\x80");
    for (int c = 0x80; c <= 0xBF; c++) {
        uint8_t b[3] = {'a', (uint8_t)c, 'b'};
        assert_string_equal(verdict(b, 3), "invalid");
    }
    /* 3.2 lonely start characters, each followed by a space */
    for (int c = 0xC0; c <= 0xFD; c++) {
        uint8_t b[2] = {(uint8_t)c, ' '};
        assert_string_equal(verdict(b, 2), "invalid");
    }
    /* 3.3 sequences with the last continuation byte missing: incomplete at the end when the
     * prefix could still become a character, invalid when it could not */
    INVALID("\xc0");
    PARTIAL("\xe0\xa0");
    INVALID("\xe0\x80"); /* would be overlong whatever follows */
    PARTIAL("\xf0\x90\x80");
    INVALID("\xf0\x80\x80");
    INVALID("\xf8\x88\x80\x80");
    INVALID("\xfc\x84\x80\x80\x80");
    PARTIAL("\xdf");
    PARTIAL("\xef\xbf");
    INVALID("\xf7\xbf\xbf");
    INVALID("\xfb\xbf\xbf\xbf");
    INVALID("\xfd\xbf\xbf\xbf\xbf");
    PARTIAL("\xc2");
    PARTIAL("\xe2\x82");
    PARTIAL("\xf4\x8f\xbf");
    /* 3.4 concatenation of incomplete sequences */
    INVALID("\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80"
            "\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf");
    INVALID("\xdf\xef\xbf");
    INVALID("\xc2\xe2\x82\xac"); /* a truncated character followed by a whole one */
    /* 3.5 impossible bytes */
    INVALID("\xfe");
    INVALID("\xff");
    INVALID("\xfe\xfe\xff\xff");
}

static void test_kuhn_overlong(void **state) {
    (void)state;
    /* 4.1 '/' in overlong forms */
    INVALID("\xc0\xaf");
    INVALID("\xe0\x80\xaf");
    INVALID("\xf0\x80\x80\xaf");
    INVALID("\xf8\x80\x80\x80\xaf");
    INVALID("\xfc\x80\x80\x80\x80\xaf");
    /* 4.2 maximum overlong sequences */
    INVALID("\xc1\xbf");
    INVALID("\xe0\x9f\xbf");
    INVALID("\xf0\x8f\xbf\xbf");
    INVALID("\xf8\x87\xbf\xbf\xbf");
    INVALID("\xfc\x83\xbf\xbf\xbf\xbf");
    /* 4.3 overlong NUL */
    INVALID("\xc0\x80");
    INVALID("\xe0\x80\x80");
    INVALID("\xf0\x80\x80\x80");
    INVALID("\xf8\x80\x80\x80\x80");
    INVALID("\xfc\x80\x80\x80\x80\x80");
}

static void test_kuhn_surrogates(void **state) {
    (void)state;
    /* 5.1 single UTF-16 surrogates */
    INVALID("\xed\xa0\x80");
    INVALID("\xed\xad\xbf");
    INVALID("\xed\xae\x80");
    INVALID("\xed\xaf\xbf");
    INVALID("\xed\xb0\x80");
    INVALID("\xed\xbe\x80");
    INVALID("\xed\xbf\xbf");
    /* 5.2 paired surrogates */
    INVALID("\xed\xa0\x80\xed\xb0\x80");
    INVALID("\xed\xa0\x80\xed\xbf\xbf");
    INVALID("\xed\xad\xbf\xed\xb0\x80");
    INVALID("\xed\xad\xbf\xed\xbf\xbf");
    INVALID("\xed\xae\x80\xed\xb0\x80");
    INVALID("\xed\xae\x80\xed\xbf\xbf");
    INVALID("\xed\xaf\xbf\xed\xb0\x80");
    INVALID("\xed\xaf\xbf\xed\xbf\xbf");
}

/* ---- the state machine's contract ---- */

static void test_mixed_text_every_split(void **state) {
    (void)state;
    VALID("ascii, \xc3\xa9t\xc3\xa9, \xe2\x82\xac 5, \xf0\x9d\x84\x9e clef, "
          "\xf0\x9f\x98\x80 and \xf4\x8f\xbf\xbf.");
    INVALID("good start \xe2\x82\xac then \xed\xa0\x80 a surrogate, then more text");
    PARTIAL("text then a cut \xf0\x9f\x98");
}

static void test_reject_is_sticky(void **state) {
    (void)state;
    uint8_t st = utf8_validate(UTF8_ACCEPT, (const uint8_t *)"\xff", 1);
    assert_int_equal(st, UTF8_REJECT);
    assert_int_equal(utf8_validate(st, (const uint8_t *)"valid ascii", 11), UTF8_REJECT);
    assert_int_equal(utf8_validate(st, (const uint8_t *)"\xc3\xa9", 2), UTF8_REJECT);
    assert_int_equal(utf8_validate(st, NULL, 0), UTF8_REJECT);
    /* Feeding nothing keeps any state. */
    uint8_t mid = utf8_validate(UTF8_ACCEPT, (const uint8_t *)"\xf0\x9f", 2);
    assert_int_equal(utf8_validate(mid, NULL, 0), mid);
    assert_int_equal(utf8_validate(UTF8_ACCEPT, NULL, 0), UTF8_ACCEPT);
    assert_true(utf8_is_valid(NULL, 0));
}

static void test_ascii_fast_path(void **state) {
    (void)state;
    /* ASCII runs of every length around the 8-byte stride, a bad byte at every position, on
     * guarded pages so the 8-byte loads cannot read past the end. */
    tu_guard_t g;
    tu_guard_init(&g, 128);
    uint8_t buf[80];
    for (size_t len = 0; len <= 72; len++) {
        memset(buf, 'a', len);
        const uint8_t *p = tu_guard_place(&g, buf, len);
        assert_true(utf8_is_valid(p, len));
        for (size_t bad = 0; bad < len; bad++) {
            static const uint8_t bads[] = {0x80, 0xFF, 0xC0, 0xF5};
            for (size_t k = 0; k < sizeof(bads); k++) {
                memset(buf, 'a', len);
                buf[bad] = bads[k];
                p = tu_guard_place(&g, buf, len);
                assert_false(utf8_is_valid(p, len));
            }
            /* A valid 2-byte character at every position. */
            if (bad + 1 < len) {
                memset(buf, 'a', len);
                buf[bad] = 0xC3;
                buf[bad + 1] = 0xA9;
                p = tu_guard_place(&g, buf, len);
                assert_true(utf8_is_valid(p, len));
            }
        }
        /* A lead byte as the very last byte: incomplete, not valid. */
        if (len) {
            memset(buf, 'a', len);
            buf[len - 1] = 0xE2;
            p = tu_guard_place(&g, buf, len);
            assert_false(utf8_is_valid(p, len));
            uint8_t st = utf8_validate(UTF8_ACCEPT, p, len);
            assert_true(st != UTF8_ACCEPT && st != UTF8_REJECT);
        }
    }
    /* Non-ASCII bytes with the high bit in each lane of a word, then ASCII again. */
    for (int lane = 0; lane < 8; lane++) {
        memset(buf, 'x', 32);
        buf[8 + lane] = 0xC2;
        buf[9 + lane] = 0x80;
        assert_true(utf8_is_valid(buf, 32));
    }
    tu_guard_destroy(&g);
}

static void test_random_text(void **state) {
    (void)state;
    /* Random mixtures of valid characters and random bytes, at random splits. */
    uint64_t rs = 7;
    for (int round = 0; round < 20000; round++) {
        uint8_t b[64];
        size_t len = 0;
        size_t target = tu_rand(&rs) % 60;
        while (len < target) {
            if (tu_rand(&rs) % 8 == 0) {
                b[len++] = (uint8_t)tu_rand(&rs);
            } else {
                uint32_t cp = (uint32_t)(tu_rand(&rs) % 0x110000);
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    cp = 'x';
                len += encode(cp, b + len);
            }
        }
        size_t ends[3] = {len ? tu_rand(&rs) % len : 0, 0, len};
        ends[1] = ends[0] + (len - ends[0] ? tu_rand(&rs) % (len - ends[0]) : 0);
        bool want = ref_valid(b, len);
        assert_int_equal(utf8_is_valid(b, len), want);
        assert_int_equal(validate_pieces(b, ends, 3) == UTF8_ACCEPT, want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_point),    cmocka_unit_test(test_every_short_sequence),
        cmocka_unit_test(test_four_byte_sequences), cmocka_unit_test(test_kuhn_valid),
        cmocka_unit_test(test_kuhn_malformed),      cmocka_unit_test(test_kuhn_overlong),
        cmocka_unit_test(test_kuhn_surrogates),     cmocka_unit_test(test_mixed_text_every_split),
        cmocka_unit_test(test_reject_is_sticky),    cmocka_unit_test(test_ascii_fast_path),
        cmocka_unit_test(test_random_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
