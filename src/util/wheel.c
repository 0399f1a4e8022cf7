#include "util/wheel.h"

#include <stdlib.h>

#include "util/error.h"

static void list_init(wheel_timer_t *s) {
    s->next = s->prev = s;
}

static void list_push(wheel_timer_t *s, wheel_timer_t *t) {
    t->prev = s->prev;
    t->next = s;
    s->prev->next = t;
    s->prev = t;
}

static void list_unlink(wheel_timer_t *t) {
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

int wheel_init(wheel_t *w, uint32_t slots, uint32_t tick_ms, uint64_t now) {
    uint32_t n = 1;
    while (n < slots)
        n <<= 1;
    w->slots = malloc(sizeof(*w->slots) * n);
    if (!w->slots)
        return PD_ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        list_init(&w->slots[i]);
    w->mask = n - 1;
    w->tick = tick_ms ? tick_ms : 1;
    w->next_tick = now / w->tick; /* in progress: not processed until wholly past */
    w->count = 0;
    return 0;
}

void wheel_destroy(wheel_t *w) {
    free(w->slots);
    w->slots = NULL;
}

void wheel_schedule(wheel_t *w, wheel_timer_t *t, uint64_t due) {
    if (t->next)
        list_unlink(t);
    else
        w->count++;
    t->due = due;
    uint64_t tick = due / w->tick;
    /* A deadline in a tick already processed goes to the next one to be processed. */
    if (tick < w->next_tick)
        tick = w->next_tick;
    list_push(&w->slots[tick & w->mask], t);
}

void wheel_cancel(wheel_t *w, wheel_timer_t *t) {
    if (!t->next)
        return;
    list_unlink(t);
    w->count--;
}

uint64_t wheel_advance(wheel_t *w, uint64_t now) {
    uint64_t fired = 0;
    /* A tick's slot is visited once the tick has wholly passed, so every timer of that tick
     * is due then: none is put back for a whole revolution for being a few ms early. The
     * price is lateness of at most one tick. */
    uint64_t end = now / w->tick; /* ticks before this one are wholly past */
    if (end <= w->next_tick)
        return 0;
    /* After a stall longer than a revolution every slot is due for a visit, once. */
    uint64_t start = w->next_tick;
    if (end - start > (uint64_t)w->mask + 1)
        start = end - ((uint64_t)w->mask + 1);
    for (uint64_t tick = start; tick < end; tick++) {
        /* Marked done first: a timer armed by a callback for this tick or earlier goes to the
         * next slot, not back into this one for a whole revolution. */
        w->next_tick = tick + 1;
        wheel_timer_t *slot = &w->slots[tick & w->mask];
        /* Detach the slot so callbacks that arm timers into it are not visited now. */
        wheel_timer_t pending;
        list_init(&pending);
        if (slot->next != slot) {
            pending.next = slot->next;
            pending.prev = slot->prev;
            pending.next->prev = &pending;
            pending.prev->next = &pending;
            list_init(slot);
        }
        while (pending.next != &pending) {
            wheel_timer_t *t = pending.next;
            list_unlink(t);
            if (t->due <= now) {
                w->count--;
                fired++;
                t->cb(t, now);
            } else {
                list_push(slot, t); /* a later revolution's deadline */
            }
        }
    }
    w->next_tick = end;
    return fired;
}
