#include "server/peer_limit.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/hashmap.h"

#define ADDR_MAX 9 /* a family byte, then 4 (IPv4) or 8 (an IPv6 /64) bytes */

struct pent {
    hmap_node_t node;
    uint32_t open; /* connections from this address */
    uint32_t slot; /* its index in pl->slots */
    uint8_t len;
    uint8_t addr[ADDR_MAX];
};

struct peer_limit {
    hmap_t map;
    pd_hashkey_t key;
    uint32_t max;
    struct pent **slots; /* slot -> entry; slot 0 unused, free slots chained through freed */
    uint32_t nslots, capslots;
    uint32_t *freed; /* free slot numbers, a stack */
    uint32_t nfreed;
};

/* The counted form of sa: family byte and address (IPv6 cut to its /64). 0: not IP. */
static size_t addr_key(const struct sockaddr *sa, uint8_t out[ADDR_MAX]) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out[0] = 4;
        memcpy(out + 1, &in->sin_addr, 4);
        return 5;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *b = in6->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, sizeof(mapped)) == 0) {
            out[0] = 4;
            memcpy(out + 1, b + 12, 4);
            return 5;
        }
        out[0] = 6;
        memcpy(out + 1, b, 8);
        return 9;
    }
    return 0;
}

static bool pent_eq(const hmap_node_t *n, const void *key, size_t len) {
    const struct pent *p = (const struct pent *)n;
    return p->len == len && memcmp(p->addr, key, len) == 0;
}

peer_limit_t *peer_limit_new(uint32_t max) {
    peer_limit_t *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return NULL;
    pl->max = max;
    pd_hashkey_generate(&pl->key);
    if (hmap_init(&pl->map, 64)) {
        free(pl);
        return NULL;
    }
    pl->nslots = 1; /* slot 0 means none */
    return pl;
}

void peer_limit_free(peer_limit_t *pl) {
    if (!pl)
        return;
    for (uint32_t i = 1; i < pl->nslots; i++)
        free(pl->slots[i]);
    hmap_destroy(&pl->map);
    free(pl->slots);
    free(pl->freed);
    free(pl);
}

/* A slot number for a new entry, growing the tables when none is free. 0 when out of
 * memory. */
static uint32_t slot_get(peer_limit_t *pl) {
    if (pl->nfreed)
        return pl->freed[--pl->nfreed];
    if (pl->nslots >= pl->capslots) {
        uint32_t cap = pl->capslots ? pl->capslots * 2 : 64;
        struct pent **s = realloc(pl->slots, cap * sizeof(*s));
        if (!s)
            return 0;
        pl->slots = s;
        uint32_t *f = realloc(pl->freed, cap * sizeof(*f));
        if (!f)
            return 0;
        pl->freed = f;
        pl->capslots = cap;
    }
    return pl->nslots++;
}

int peer_limit_take(peer_limit_t *pl, const struct sockaddr *sa, uint32_t *slot) {
    uint8_t key[ADDR_MAX];
    size_t len = addr_key(sa, key);
    *slot = 0;
    if (!len)
        return PD_EINVAL;
    uint64_t h = pd_hash(&pl->key, key, len);
    struct pent *p = (struct pent *)hmap_find(&pl->map, h, key, len, pent_eq);
    if (p) {
        if (p->open >= pl->max)
            return PD_ELIMIT;
        p->open++;
        *slot = p->slot;
        return 0;
    }
    p = calloc(1, sizeof(*p));
    uint32_t s = p ? slot_get(pl) : 0;
    if (!s) {
        free(p);
        return PD_ENOMEM;
    }
    p->open = 1;
    p->slot = s;
    p->len = (uint8_t)len;
    memcpy(p->addr, key, len);
    pl->slots[s] = p;
    hmap_insert(&pl->map, &p->node, h);
    *slot = s;
    return 0;
}

void peer_limit_put(peer_limit_t *pl, uint32_t slot) {
    if (!slot || slot >= pl->nslots || !pl->slots[slot])
        return;
    struct pent *p = pl->slots[slot];
    if (--p->open)
        return;
    hmap_remove(&pl->map, &p->node);
    pl->slots[slot] = NULL;
    pl->freed[pl->nfreed++] = slot; /* freed has room for every slot */
    free(p);
}

uint32_t peer_limit_addresses(const peer_limit_t *pl) {
    return (uint32_t)pl->map.count;
}
