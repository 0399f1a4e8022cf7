/* The two clocks every timed module needs, passed in so tests can drive time by hand:
 * a monotonic millisecond clock (the loop's, which drives the timing wheel) and the wall
 * clock in epoch seconds (for last_seen and expiry times shown to clients). */
#ifndef PD_UTIL_CLOCK_H
#define PD_UTIL_CLOCK_H

#include <stdint.h>

typedef struct pd_clock {
    uint64_t (*mono_ms)(void *ctx);
    double (*wall)(void *ctx);
    void *ctx;
} pd_clock_t;

static inline uint64_t pd_clock_ms(const pd_clock_t *c) {
    return c->mono_ms(c->ctx);
}
static inline double pd_clock_wall(const pd_clock_t *c) {
    return c->wall(c->ctx);
}

#endif
