/* The changes backends are told about: presence changes and room joins/leaves, published by
 * the engine and the rooms module and delivered to every subscriber (the server-sent event
 * streams of /v1/events, webhooks).
 *
 * Subscriptions are intrusive (the subscriber embeds an events_sub_t), so subscribing
 * allocates nothing; a subscriber may unsubscribe itself, or any other, from inside its
 * callback. Events carry borrowed views valid only during the call. Single-threaded.
 */
#ifndef PD_EVENTS_H
#define PD_EVENTS_H

#include <stdint.h>

#include "presence/presence.h"

enum pd_event_kind {
    PD_EV_PRESENCE,      /* presence: a visible change of user */
    PD_EV_MEMBER_JOINED, /* member: user joined room */
    PD_EV_MEMBER_LEFT,   /* user left room, for reason */
    PD_EV_MEMBER_UPDATED /* member: metadata or devices changed */
};

typedef struct pd_event {
    uint8_t kind;        /* enum pd_event_kind */
    uint8_t prev_status; /* PRESENCE: the user's status before the change */
    uint8_t reason;      /* MEMBER_LEFT: 0 left, 1 disconnected, 2 timeout */
    uint32_t count;      /* room events: members after the change */
    pd_str_t user;
    pd_str_t room; /* room events */
    const pd_presence_t *presence;
    const pd_member_t *member;
} pd_event_t;

typedef void (*events_fn)(void *ctx, const pd_event_t *ev);

typedef struct events_sub {
    struct events_sub *next, *prev;
    events_fn fn;
    void *ctx;
} events_sub_t;

typedef struct events {
    events_sub_t *head;
    events_sub_t *cursor; /* the next subscriber of the publish in progress */
    uint64_t published;
} events_t;

static inline void events_init(events_t *h) {
    h->head = h->cursor = 0;
    h->published = 0;
}

/* Adds sub (owned by the caller, at a fixed address until unsubscribed). */
void events_subscribe(events_t *h, events_sub_t *sub, events_fn fn, void *ctx);

/* Removes sub; harmless when it is not subscribed. */
void events_unsubscribe(events_t *h, events_sub_t *sub);

/* Calls every subscriber with ev. h may be NULL (nobody listens). */
void events_publish(events_t *h, const pd_event_t *ev);

/* "left", "disconnected", "timeout". */
const char *events_reason_name(uint8_t reason);

#endif
