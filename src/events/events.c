#include "events/events.h"

void events_subscribe(events_t *h, events_sub_t *sub, events_fn fn, void *ctx) {
    sub->fn = fn;
    sub->ctx = ctx;
    sub->prev = 0;
    sub->next = h->head;
    if (h->head)
        h->head->prev = sub;
    h->head = sub;
}

void events_unsubscribe(events_t *h, events_sub_t *sub) {
    if (!sub->fn)
        return;
    /* A publish in progress must not step onto a removed subscriber. */
    if (h->cursor == sub)
        h->cursor = sub->next;
    if (sub->prev)
        sub->prev->next = sub->next;
    else if (h->head == sub)
        h->head = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    sub->next = sub->prev = 0;
    sub->fn = 0;
}

void events_publish(events_t *h, const pd_event_t *ev) {
    if (!h || !h->head)
        return;
    h->published++;
    /* Not re-entrant: a subscriber that publishes from its callback is not expected. */
    events_sub_t *saved = h->cursor;
    for (events_sub_t *s = h->head; s; s = h->cursor) {
        h->cursor = s->next;
        s->fn(s->ctx, ev);
    }
    h->cursor = saved;
}

const char *events_reason_name(uint8_t reason) {
    static const char *const names[] = {"left", "disconnected", "timeout", "revoked"};
    return reason < sizeof(names) / sizeof(names[0]) ? names[reason] : "left";
}
