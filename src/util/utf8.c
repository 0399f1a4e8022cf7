#include "util/utf8.h"

#include <string.h>

/* States after UTF8_ACCEPT and UTF8_REJECT: how many continuation bytes are still owed, and
 * whether the next one has a narrowed range (the second byte of E0, ED, F0, F4 sequences). */
enum {
    NEED1 = 2,    /* one more 80..BF */
    NEED2 = 3,    /* two more 80..BF */
    NEED3 = 4,    /* three more 80..BF */
    AFTER_E0 = 5, /* A0..BF, then NEED1 (no overlong) */
    AFTER_ED = 6, /* 80..9F, then NEED1 (no surrogates) */
    AFTER_F0 = 7, /* 90..BF, then NEED2 (no overlong) */
    AFTER_F4 = 8  /* 80..8F, then NEED2 (nothing above U+10FFFF) */
};

static uint8_t lead_state(uint8_t c) {
    if (c < 0x80)
        return UTF8_ACCEPT;
    if (c < 0xC2)
        return UTF8_REJECT; /* stray continuation or overlong 2-byte lead */
    if (c < 0xE0)
        return NEED1;
    if (c == 0xE0)
        return AFTER_E0;
    if (c == 0xED)
        return AFTER_ED;
    if (c < 0xF0)
        return NEED2;
    if (c == 0xF0)
        return AFTER_F0;
    if (c < 0xF4)
        return NEED3;
    if (c == 0xF4)
        return AFTER_F4;
    return UTF8_REJECT;
}

uint8_t utf8_validate(uint8_t state, const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (state == UTF8_REJECT)
            return UTF8_REJECT;
        if (state == UTF8_ACCEPT) {
            /* ASCII fast path: eight bytes at a time while no high bit is set. */
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i == len)
                break;
            state = lead_state(s[i++]);
            continue;
        }
        uint8_t c = s[i++];
        switch (state) {
        case NEED1:
            state = (c >= 0x80 && c <= 0xBF) ? UTF8_ACCEPT : UTF8_REJECT;
            break;
        case NEED2:
            state = (c >= 0x80 && c <= 0xBF) ? NEED1 : UTF8_REJECT;
            break;
        case NEED3:
            state = (c >= 0x80 && c <= 0xBF) ? NEED2 : UTF8_REJECT;
            break;
        case AFTER_E0:
            state = (c >= 0xA0 && c <= 0xBF) ? NEED1 : UTF8_REJECT;
            break;
        case AFTER_ED:
            state = (c >= 0x80 && c <= 0x9F) ? NEED1 : UTF8_REJECT;
            break;
        case AFTER_F0:
            state = (c >= 0x90 && c <= 0xBF) ? NEED2 : UTF8_REJECT;
            break;
        case AFTER_F4:
            state = (c >= 0x80 && c <= 0x8F) ? NEED2 : UTF8_REJECT;
            break;
        default:
            return UTF8_REJECT;
        }
    }
    return state;
}

bool utf8_is_valid(const uint8_t *s, size_t len) {
    return utf8_validate(UTF8_ACCEPT, s, len) == UTF8_ACCEPT;
}
