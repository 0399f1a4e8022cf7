/* Refcounted output buffers: a message is encoded once and queued, by reference, on every
 * connection that must receive it; the last write to finish releases it.
 *
 * Each buffer reserves PD_OBUF_HEADROOM bytes in front of its payload so a WebSocket frame
 * header can be written backwards in front of the payload (as Mosquitto's WS_PACKET_OFFSET
 * does): the payload is never copied a second time. Cost: 16 bytes of header + headroom.
 * Single-threaded: the refcount is a plain integer owned by the loop thread.
 */
#ifndef PD_UTIL_OBUF_H
#define PD_UTIL_OBUF_H

#include <stddef.h>
#include <stdint.h>

#define PD_OBUF_HEADROOM 10 /* largest server frame header: 2 + 8 length bytes, no mask */

typedef struct pd_obuf {
    uint32_t refs; /* owners: the encoder until it lets go, plus one per queued reference */
    uint32_t head; /* offset in data[] of the first byte to send */
    uint32_t end;  /* offset in data[] one past the last byte */
    uint32_t cap;  /* bytes allocated in data[] */
    uint8_t data[];
} pd_obuf_t;

/* New buffer with room for payload_cap payload bytes after the headroom; refs = 1, empty
 * payload (head = end = PD_OBUF_HEADROOM). NULL when out of memory. */
pd_obuf_t *pd_obuf_new(size_t payload_cap);

/* New buffer holding a copy of s[0..len) as payload; refs = 1. NULL when out of memory. */
pd_obuf_t *pd_obuf_from(const void *s, size_t len);

/* Makes room for extra more payload bytes at the end. Only while the buffer is unshared
 * (refs == 1): it may move, so *bp is updated. 0 or PD_ENOMEM (buffer untouched). */
int pd_obuf_reserve(pd_obuf_t **bp, size_t extra);

/* Appends bytes (growing as pd_obuf_reserve). 0 or PD_ENOMEM. */
int pd_obuf_append(pd_obuf_t **bp, const void *s, size_t len);

static inline pd_obuf_t *pd_obuf_retain(pd_obuf_t *b) {
    b->refs++;
    return b;
}

/* Drops one reference; frees the buffer with the last one. NULL is ignored. */
void pd_obuf_release(pd_obuf_t *b);

static inline uint8_t *pd_obuf_bytes(const pd_obuf_t *b) {
    return (uint8_t *)b->data + b->head;
}
static inline size_t pd_obuf_len(const pd_obuf_t *b) {
    return b->end - b->head;
}
static inline size_t pd_obuf_payload_len(const pd_obuf_t *b) {
    return b->end - PD_OBUF_HEADROOM;
}
static inline uint8_t *pd_obuf_payload(const pd_obuf_t *b) {
    return (uint8_t *)b->data + PD_OBUF_HEADROOM;
}

#endif
