/* Helpers shared by the unit tests.
 *
 * Guarded copies: tu_guard_t is an mmap'd region whose last page is PROT_NONE. Input placed
 * with tu_guard_place() ends on the byte just before that page, so reading even one byte past
 * its end faults, under sanitizers or not (ASan does not see over-reads of mmap'd memory; the
 * page protection does).
 *
 * Every split: tu_every_split() runs an incremental consumer over one input cut into chunks
 * in every possible way (whole, in two at every point, in three for short inputs, byte by
 * byte) and asserts that each run reports exactly what the whole input did. The consumer
 * writes what it observes into a tu_str_t transcript; comparing transcripts as text makes a
 * failure print both.
 *
 * Include after cmocka's prerequisites (stdarg.h, stddef.h, stdint.h, setjmp.h, cmocka.h).
 */
#ifndef PD_TESTS_TESTUTIL_H
#define PD_TESTS_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- guarded copies ---- */

typedef struct tu_guard {
    uint8_t *map;   /* the mapping: usable pages, then one PROT_NONE page */
    size_t map_len; /* bytes mapped, guard page included */
    size_t cap;     /* usable bytes before the guard page */
} tu_guard_t;

/* Maps room for cap bytes (rounded up to whole pages) followed by a PROT_NONE page. */
static inline void tu_guard_init(tu_guard_t *g, size_t cap) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t usable = (cap + page - 1) / page * page;
    if (usable == 0)
        usable = page;
    g->map_len = usable + page;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->map != MAP_FAILED);
    assert_int_equal(mprotect(g->map + usable, page, PROT_NONE), 0);
    g->cap = usable;
}

static inline void tu_guard_destroy(tu_guard_t *g) {
    munmap(g->map, g->map_len);
    g->map = NULL;
}

/* The address at which len bytes end exactly at the guard page. */
static inline uint8_t *tu_guard_at(const tu_guard_t *g, size_t len) {
    assert_true(len <= g->cap);
    return g->map + g->cap - len;
}

/* Copies s[0..len) so that its last byte is the last readable one; s may lie in the region. */
static inline uint8_t *tu_guard_place(tu_guard_t *g, const void *s, size_t len) {
    uint8_t *dst = tu_guard_at(g, len);
    if (len)
        memmove(dst, s, len);
    return dst;
}

/* ---- transcripts ---- */

typedef struct tu_str {
    char *s;
    size_t len, cap;
} tu_str_t;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static inline void
tu_str_printf(tu_str_t *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int n = vsnprintf(t->s ? t->s + t->len : NULL, room, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        if ((size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        t->s = realloc(t->s, cap);
        assert_non_null(t->s);
        t->cap = cap;
    }
}

/* Appends bytes as a quoted C-like string ("ab\x00"); long ones as their length and a hash. */
static inline void tu_str_bytes(tu_str_t *t, const void *p, size_t len) {
    const uint8_t *b = p;
    if (len > 64) {
        uint64_t h = 14695981039346656037ULL; /* FNV-1a */
        for (size_t i = 0; i < len; i++)
            h = (h ^ b[i]) * 1099511628211ULL;
        tu_str_printf(t, "<%zu bytes fnv %016llx>", len, (unsigned long long)h);
        return;
    }
    tu_str_printf(t, "\"");
    for (size_t i = 0; i < len; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7F && b[i] != '"' && b[i] != '\\')
            tu_str_printf(t, "%c", b[i]);
        else
            tu_str_printf(t, "\\x%02x", b[i]);
    }
    tu_str_printf(t, "\"");
}

/* The transcript so far as a NUL-terminated string (never NULL). */
static inline const char *tu_str_get(tu_str_t *t) {
    if (!t->s)
        tu_str_printf(t, "%s", "");
    return t->s;
}

static inline void tu_str_free(tu_str_t *t) {
    free(t->s);
    t->s = NULL;
    t->len = t->cap = 0;
}

/* ---- every split ---- */

/* One run of an incremental consumer: feed in[0..len) as the chunks that end at ends[0] <
 * ends[1] < ... < ends[n - 1] == len, appending what is observed to out. The consumer must
 * behave the same however the input is cut. */
typedef void (*tu_chunked_fn)(void *ctx, const uint8_t *in, size_t len, const size_t *ends,
                              size_t n, tu_str_t *out);

#define TU_SPLIT_ALL   4096 /* inputs up to this size are cut at every point and byte by byte */
#define TU_SPLIT_THREE 48   /* inputs up to this size are also cut in three at every pair */

static inline void tu__run_and_compare(tu_chunked_fn run, void *ctx, const uint8_t *in, size_t len,
                                       const size_t *ends, size_t n, const char *whole,
                                       const char *how) {
    tu_str_t got = {0};
    run(ctx, in, len, ends, n, &got);
    if (strcmp(tu_str_get(&got), whole) != 0) {
        print_error("input of %zu bytes cut %s (%zu chunks, first ends at %zu):\n"
                    "--- whole input gave:\n%s\n--- cut input gave:\n%s\n",
                    len, how, n, ends[0], whole, tu_str_get(&got));
        tu_str_free(&got);
        fail();
    }
    tu_str_free(&got);
}

/* Runs the consumer over in[0..len) whole and cut in every way (sampled for inputs over
 * TU_SPLIT_ALL bytes: every cut within 64 bytes of either end and every 1021st, and byte by
 * byte over the first and last 64 bytes); fails the test when any run differs from the whole.
 * Returns the whole input's transcript, which the caller checks and frees with free(). */
static inline char *tu_every_split(tu_chunked_fn run, void *ctx, const void *input, size_t len) {
    const uint8_t *in = input;
    tu_str_t whole = {0};
    size_t one = len;
    run(ctx, in, len, &one, 1, &whole);
    const char *w = tu_str_get(&whole);
    if (len < 2)
        return whole.s;

    size_t ends[3];
    for (size_t i = 1; i < len; i++) {
        if (len > TU_SPLIT_ALL && i > 64 && i < len - 64 && i % 1021 != 0)
            continue;
        ends[0] = i;
        ends[1] = len;
        tu__run_and_compare(run, ctx, in, len, ends, 2, w, "in two");
    }
    if (len <= TU_SPLIT_THREE) {
        for (size_t i = 1; i < len; i++)
            for (size_t j = i + 1; j < len; j++) {
                ends[0] = i;
                ends[1] = j;
                ends[2] = len;
                tu__run_and_compare(run, ctx, in, len, ends, 3, w, "in three");
            }
    }

    /* Byte by byte (for long inputs: over the first and last 64 bytes, the middle whole). */
    size_t *many = malloc(len * sizeof(*many));
    assert_non_null(many);
    size_t n = 0;
    for (size_t i = 1; i <= len; i++) {
        if (len > TU_SPLIT_ALL && i > 64 && i < len - 64)
            continue;
        many[n++] = i;
    }
    tu__run_and_compare(run, ctx, in, len, many, n, w, "byte by byte");
    free(many);
    return whole.s;
}

/* Deterministic pseudo-random numbers for tests (xorshift64*). */
static inline uint64_t tu_rand(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ULL;
}

#endif
