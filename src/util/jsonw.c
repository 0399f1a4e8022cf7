#include "util/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util/error.h"

#define JW_MAX_DEPTH 32

/* Appends; the common case (room left, no error) inline: encoding a large answer is mostly
 * these calls (the get_presence profile in bench/RESULTS.md). */
static inline void put(jsonw_t *w, const void *s, size_t len) {
    pd_obuf_t *b = w->b;
    if (!w->err && b->cap - b->end >= len) {
        memcpy(b->data + b->end, s, len);
        b->end += (uint32_t)len;
        return;
    }
    if (!w->err)
        w->err = pd_obuf_append(&w->b, s, len);
}

static inline void put_char(jsonw_t *w, char c) {
    pd_obuf_t *b = w->b;
    if (!w->err && b->end < b->cap)
        b->data[b->end++] = (uint8_t)c;
    else
        put(w, &c, 1);
}

void jw_init(jsonw_t *w, size_t size_hint) {
    memset(w, 0, sizeof(*w));
    w->b = pd_obuf_new(size_hint ? size_hint : 64);
    if (!w->b)
        w->err = PD_ENOMEM;
    w->first = 1;
}

/* Before any value: a comma unless it is the first in its container or follows a key. */
static void sep(jsonw_t *w) {
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->first & (1u << w->depth))
        w->first &= ~(1u << w->depth);
    else
        put_char(w, ',');
}

static void open(jsonw_t *w, char c) {
    sep(w);
    put_char(w, c);
    if (w->depth + 1 >= JW_MAX_DEPTH) {
        w->err = PD_ELIMIT;
        return;
    }
    w->depth++;
    w->first |= 1u << w->depth;
}

static void close_(jsonw_t *w, char c) {
    if (w->depth == 0) {
        w->err = PD_EINVAL;
        return;
    }
    w->first &= ~(1u << w->depth);
    w->depth--;
    put_char(w, c);
}

void jw_obj(jsonw_t *w) {
    open(w, '{');
}
void jw_obj_end(jsonw_t *w) {
    close_(w, '}');
}
void jw_arr(jsonw_t *w) {
    open(w, '[');
}
void jw_arr_end(jsonw_t *w) {
    close_(w, ']');
}

/* Bytes that must be escaped inside a JSON string. */
static inline bool needs_escape(unsigned char c) {
    return c < 0x20 || c == '"' || c == '\\';
}

static void put_escaped(jsonw_t *w, const char *s, size_t len) {
    /* Most strings (ids, keys, labels) need no escape: one copy with its quotes. */
    size_t clean = 0;
    while (clean < len && !needs_escape((unsigned char)s[clean]))
        clean++;
    pd_obuf_t *b = w->b;
    if (clean == len && !w->err && b->cap - b->end >= len + 2) {
        uint8_t *o = b->data + b->end;
        o[0] = '"';
        memcpy(o + 1, s, len);
        o[len + 1] = '"';
        b->end += (uint32_t)len + 2;
        return;
    }
    put_char(w, '"');
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(w, s + start, i - start);
        char esc[8];
        switch (c) {
        case '"':
            put(w, "\\\"", 2);
            break;
        case '\\':
            put(w, "\\\\", 2);
            break;
        case '\n':
            put(w, "\\n", 2);
            break;
        case '\r':
            put(w, "\\r", 2);
            break;
        case '\t':
            put(w, "\\t", 2);
            break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(w, esc, 6);
        }
        start = i + 1;
    }
    put(w, s + start, len - start);
    put_char(w, '"');
}

void jw_keyn(jsonw_t *w, const char *k, size_t len) {
    sep(w);
    put_escaped(w, k, len);
    put_char(w, ':');
    w->after_key = true;
}

void jw_key(jsonw_t *w, const char *k) {
    jw_keyn(w, k, strlen(k));
}

void jw_str(jsonw_t *w, const char *s, size_t len) {
    sep(w);
    put_escaped(w, s, len);
}

void jw_cstr(jsonw_t *w, const char *s) {
    if (s)
        jw_str(w, s, strlen(s));
    else
        jw_null(w);
}

void jw_null(jsonw_t *w) {
    sep(w);
    put(w, "null", 4);
}

void jw_bool(jsonw_t *w, bool v) {
    sep(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void jw_int(jsonw_t *w, int64_t v) {
    char num[24];
    int n = 24;
    /* Digits backwards, without snprintf; the magnitude as unsigned, so INT64_MIN works. */
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        num[--n] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0)
        num[--n] = '-';
    sep(w);
    put(w, num + n, (size_t)(24 - n));
}

void jw_time(jsonw_t *w, double seconds) {
    /* Room for any finite double in %.3f (DBL_MAX has 309 integer digits): a smaller buffer
     * was read past its end by put() when snprintf truncated. NaN and infinities are not JSON. */
    char num[320];
    if (!isfinite(seconds)) {
        w->err = PD_EINVAL;
        return;
    }
    int n;
    if (seconds >= 0 && seconds < 1e12) {
        /* Timestamps, the common case, in integer milliseconds: snprintf("%.3f") was a third
         * of the time of a 1,000-user get_presence answer. Rounds to nearest like it, except
         * for values within an ulp of a half millisecond. */
        uint64_t ms = (uint64_t)llround(seconds * 1000.0);
        char tmp[24];
        int k = 0;
        for (uint64_t s = ms / 1000; k == 0 || s; s /= 10)
            tmp[k++] = (char)('0' + s % 10);
        n = 0;
        while (k)
            num[n++] = tmp[--k];
        unsigned frac = (unsigned)(ms % 1000);
        num[n++] = '.';
        num[n++] = (char)('0' + frac / 100);
        num[n++] = (char)('0' + frac / 10 % 10);
        num[n++] = (char)('0' + frac % 10);
    } else {
        n = snprintf(num, sizeof(num), "%.3f", seconds);
    }
    sep(w);
    put(w, num, (size_t)n);
}

void jw_raw(jsonw_t *w, const char *json, size_t len) {
    sep(w);
    put(w, json, len);
}

pd_obuf_t *jw_finish(jsonw_t *w) {
    if (w->err || w->depth != 0) {
        pd_obuf_release(w->b);
        w->b = NULL;
        return NULL;
    }
    pd_obuf_t *b = w->b;
    w->b = NULL;
    return b;
}
