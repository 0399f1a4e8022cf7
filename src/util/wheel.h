/* A hashed timing wheel for every deadline in the process: connection idle and request
 * timeouts, session expiry, grace windows, status expiry, batching intervals.
 *
 * A timer fires at the first advance after the end of the tick holding its deadline: never
 * early, at most one tick late.
 *
 * Timers are intrusive (embedded in the object they time), so arming one allocates nothing and
 * a connection carries no uv_timer_t (152 bytes); one loop timer drives the wheel by calling
 * wheel_advance. Scheduling and cancelling are O(1). An advance visits the slots of the ticks
 * that passed and fires every due timer: O(due) plus timers parked in those slots whose
 * deadline lies more than one revolution ahead (slots * tick), each revisited once per
 * revolution. Deadlines often pushed back (liveness) should not be rescheduled on every push:
 * let the timer fire, compare with the latest activity and re-arm (as Mosquitto does).
 *
 * Pure: times are passed in (milliseconds on any monotonic clock), so it is tested without a
 * loop. Cost: 16 bytes per slot (64 KiB for 4096) and 32 bytes per timer.
 */
#ifndef PD_UTIL_WHEEL_H
#define PD_UTIL_WHEEL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct wheel_timer wheel_timer_t;

/* Fired once when the timer is due; the timer is disarmed before the call, so the callback may
 * re-arm it, cancel or arm any other timer, or free the object that embeds it. */
typedef void (*wheel_cb)(wheel_timer_t *t, uint64_t now);

struct wheel_timer {
    wheel_timer_t *next, *prev; /* NULL when disarmed */
    uint64_t due;               /* ms */
    wheel_cb cb;
};

typedef struct wheel {
    wheel_timer_t *slots; /* sentinels of circular lists */
    uint32_t mask;        /* slots - 1 */
    uint32_t tick;        /* ms per slot */
    uint64_t next_tick;   /* first tick not yet processed (not wholly past) */
    uint64_t count;       /* armed timers */
} wheel_t;

/* Sets up a wheel of slots (rounded up to a power of two) ticks of tick_ms each, starting at
 * time now. 0 or PD_ENOMEM. */
int wheel_init(wheel_t *w, uint32_t slots, uint32_t tick_ms, uint64_t now);
void wheel_destroy(wheel_t *w);

/* Prepares a timer that is embedded in a zeroed or new object. */
static inline void wheel_timer_init(wheel_timer_t *t, wheel_cb cb) {
    t->next = t->prev = 0;
    t->due = 0;
    t->cb = cb;
}

static inline bool wheel_timer_armed(const wheel_timer_t *t) {
    return t->next != 0;
}

/* Arms t to fire at time due (re-arming it if armed). A due time already past fires at the
 * next advance. */
void wheel_schedule(wheel_t *w, wheel_timer_t *t, uint64_t due);

/* Disarms t; harmless when it is not armed. */
void wheel_cancel(wheel_t *w, wheel_timer_t *t);

/* Fires every timer due at or before now. Returns how many fired. */
uint64_t wheel_advance(wheel_t *w, uint64_t now);

#endif
