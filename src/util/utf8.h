/* Incremental UTF-8 validation (RFC 3629): rejects overlong forms, surrogates and code points
 * above U+10FFFF. The state carries across calls, so a text message split over WebSocket
 * fragments, or a read split mid-character, validates exactly as the whole would.
 * Cost: one byte of state; ASCII runs are checked eight bytes at a time.
 */
#ifndef PD_UTIL_UTF8_H
#define PD_UTIL_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    UTF8_ACCEPT = 0, /* at a character boundary, everything so far valid */
    UTF8_REJECT = 1  /* invalid; stays so */
};

/* Feeds len bytes; returns the new state (UTF8_REJECT as soon as the input cannot be UTF-8).
 * Any other value means "valid so far, inside a character". */
uint8_t utf8_validate(uint8_t state, const uint8_t *s, size_t len);

/* True when s[0..len) is complete, valid UTF-8. */
bool utf8_is_valid(const uint8_t *s, size_t len);

#endif
