#include "util/obuf.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

#define OBUF_MAX ((size_t)UINT32_MAX - PD_OBUF_HEADROOM - 64)

pd_obuf_t *pd_obuf_new(size_t payload_cap) {
    if (payload_cap > OBUF_MAX)
        return NULL;
    size_t cap = PD_OBUF_HEADROOM + payload_cap;
    pd_obuf_t *b = malloc(sizeof(*b) + cap);
    if (!b)
        return NULL;
    b->refs = 1;
    b->head = PD_OBUF_HEADROOM;
    b->end = PD_OBUF_HEADROOM;
    b->cap = (uint32_t)cap;
    return b;
}

pd_obuf_t *pd_obuf_from(const void *s, size_t len) {
    pd_obuf_t *b = pd_obuf_new(len);
    if (!b)
        return NULL;
    if (len)
        memcpy(b->data + b->end, s, len);
    b->end += (uint32_t)len;
    return b;
}

int pd_obuf_reserve(pd_obuf_t **bp, size_t extra) {
    pd_obuf_t *b = *bp;
    assert(b->refs == 1);
    if (extra <= (size_t)(b->cap - b->end))
        return 0;
    size_t need = (size_t)b->end + extra;
    if (need > OBUF_MAX)
        return PD_ENOMEM;
    size_t cap = (size_t)b->cap * 2;
    if (cap < need)
        cap = need;
    if (cap > OBUF_MAX)
        cap = OBUF_MAX;
    pd_obuf_t *nb = realloc(b, sizeof(*b) + cap);
    if (!nb)
        return PD_ENOMEM;
    nb->cap = (uint32_t)cap;
    *bp = nb;
    return 0;
}

int pd_obuf_append(pd_obuf_t **bp, const void *s, size_t len) {
    int rc = pd_obuf_reserve(bp, len);
    if (rc)
        return rc;
    if (len)
        memcpy((*bp)->data + (*bp)->end, s, len);
    (*bp)->end += (uint32_t)len;
    return 0;
}

void pd_obuf_release(pd_obuf_t *b) {
    if (b && --b->refs == 0)
        free(b);
}
