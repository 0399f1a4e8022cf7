#include "util/istr.h"

#include <stdlib.h>
#include <string.h>

static bool istr_eq(const hmap_node_t *n, const void *key, size_t len) {
    const pd_istr_t *s = (const pd_istr_t *)n;
    return s->len == len && memcmp(s->s, key, len) == 0;
}

int istr_table_init(istr_table_t *t, const pd_hashkey_t *key) {
    t->key = key;
    return hmap_init(&t->map, 64);
}

void istr_table_destroy(istr_table_t *t) {
    hmap_destroy(&t->map);
}

const pd_istr_t *istr_get(istr_table_t *t, const char *s, size_t len) {
    uint64_t h = pd_hash(t->key, s, len);
    pd_istr_t *found = (pd_istr_t *)hmap_find(&t->map, h, s, len, istr_eq);
    if (found) {
        found->refs++;
        return found;
    }
    pd_istr_t *n = malloc(sizeof(*n) + len + 1);
    if (!n)
        return NULL;
    n->refs = 1;
    n->len = (uint32_t)len;
    memcpy(n->s, s, len);
    n->s[len] = '\0';
    hmap_insert(&t->map, &n->node, h);
    return n;
}

void istr_put(istr_table_t *t, const pd_istr_t *s) {
    if (!s)
        return;
    pd_istr_t *m = (pd_istr_t *)s;
    if (--m->refs == 0) {
        hmap_remove(&t->map, &m->node);
        free(m);
    }
}
