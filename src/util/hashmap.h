/* An intrusive, chained hash map keyed by a keyed hash (SipHash-2-4 from libsodium), so ids
 * chosen by clients cannot be crafted to collide and degrade lookups.
 *
 * Entries embed an hmap_node_t; the map never allocates entries, only its bucket array, which
 * doubles when the load passes 1. Lookups compare keys through a caller-given function.
 * Cost: 16 bytes per entry (next + hash) and 8 bytes per bucket.
 */
#ifndef PD_UTIL_HASHMAP_H
#define PD_UTIL_HASHMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hmap_node {
    struct hmap_node *next;
    uint64_t hash;
} hmap_node_t;

typedef struct hmap {
    hmap_node_t **buckets;
    size_t mask; /* buckets - 1 */
    size_t count;
} hmap_t;

/* The secret SipHash key; one per process, from libsodium's randomness. */
typedef struct pd_hashkey {
    uint8_t k[16];
} pd_hashkey_t;

/* Fills key with random bytes (libsodium must be initialised: sodium_init()). */
void pd_hashkey_generate(pd_hashkey_t *key);

/* SipHash-2-4 of data under key. */
uint64_t pd_hash(const pd_hashkey_t *key, const void *data, size_t len);

/* True when node n holds key[0..len). */
typedef bool (*hmap_eq_fn)(const hmap_node_t *n, const void *key, size_t len);

/* Sets up an empty map with room for about initial entries. 0 or PD_ENOMEM. */
int hmap_init(hmap_t *m, size_t initial);
void hmap_destroy(hmap_t *m);

/* The node with this hash for which eq(node, key, len) holds, or NULL. */
hmap_node_t *hmap_find(const hmap_t *m, uint64_t hash, const void *key, size_t len, hmap_eq_fn eq);

/* Adds n (not already in a map) under hash. Growing the buckets can fail: then n is still
 * inserted and the map merely gets slower. Never fails. */
void hmap_insert(hmap_t *m, hmap_node_t *n, uint64_t hash);

/* Removes n, which must be in m. O(chain length). */
void hmap_remove(hmap_t *m, hmap_node_t *n);

/* Iteration: first node, then the next one after n (NULL at the end). The map must not be
 * changed while iterating, except by removing the current node after fetching the next. */
hmap_node_t *hmap_first(const hmap_t *m);
hmap_node_t *hmap_next(const hmap_t *m, const hmap_node_t *n);

#endif
