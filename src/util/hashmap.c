#include "util/hashmap.h"

#include <sodium.h>
#include <stdlib.h>

#include "util/error.h"

void pd_hashkey_generate(pd_hashkey_t *key) {
    randombytes_buf(key->k, sizeof(key->k));
}

uint64_t pd_hash(const pd_hashkey_t *key, const void *data, size_t len) {
    uint64_t out;
    crypto_shorthash((unsigned char *)&out, data, len, key->k);
    return out;
}

int hmap_init(hmap_t *m, size_t initial) {
    size_t n = 16;
    while (n < initial)
        n <<= 1;
    m->buckets = calloc(n, sizeof(*m->buckets));
    if (!m->buckets)
        return PD_ENOMEM;
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void hmap_destroy(hmap_t *m) {
    free(m->buckets);
    m->buckets = NULL;
    m->count = 0;
}

hmap_node_t *hmap_find(const hmap_t *m, uint64_t hash, const void *key, size_t len, hmap_eq_fn eq) {
    for (hmap_node_t *n = m->buckets[hash & m->mask]; n; n = n->next)
        if (n->hash == hash && eq(n, key, len))
            return n;
    return NULL;
}

static void grow(hmap_t *m) {
    size_t n = (m->mask + 1) * 2;
    hmap_node_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i <= m->mask; i++) {
        hmap_node_t *e = m->buckets[i];
        while (e) {
            hmap_node_t *next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = nb;
    m->mask = n - 1;
}

void hmap_insert(hmap_t *m, hmap_node_t *n, uint64_t hash) {
    if (m->count >= m->mask + 1)
        grow(m);
    n->hash = hash;
    hmap_node_t **b = &m->buckets[hash & m->mask];
    n->next = *b;
    *b = n;
    m->count++;
}

void hmap_remove(hmap_t *m, hmap_node_t *n) {
    hmap_node_t **link = &m->buckets[n->hash & m->mask];
    while (*link && *link != n)
        link = &(*link)->next;
    if (*link) {
        *link = n->next;
        n->next = NULL;
        m->count--;
    }
}

hmap_node_t *hmap_first(const hmap_t *m) {
    for (size_t i = 0; i <= m->mask; i++)
        if (m->buckets[i])
            return m->buckets[i];
    return NULL;
}

hmap_node_t *hmap_next(const hmap_t *m, const hmap_node_t *n) {
    if (n->next)
        return n->next;
    for (size_t i = (n->hash & m->mask) + 1; i <= m->mask; i++)
        if (m->buckets[i])
            return m->buckets[i];
    return NULL;
}
