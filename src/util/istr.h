/* Interned, refcounted strings for small labels repeated across many connections (device
 * names: "web", "mobile", ...). Each distinct label is stored once; holders keep an 8-byte
 * pointer instead of a copy, and equal labels compare by pointer.
 * Cost: one allocation (header + bytes) per distinct live label.
 */
#ifndef PD_UTIL_ISTR_H
#define PD_UTIL_ISTR_H

#include <stddef.h>
#include <stdint.h>

#include "util/hashmap.h"

typedef struct pd_istr {
    hmap_node_t node;
    uint32_t refs;
    uint32_t len;
    char s[]; /* NUL-terminated */
} pd_istr_t;

typedef struct istr_table {
    hmap_t map;
    const pd_hashkey_t *key; /* borrowed */
} istr_table_t;

int istr_table_init(istr_table_t *t, const pd_hashkey_t *key);
/* Frees the table; every string must have been released. */
void istr_table_destroy(istr_table_t *t);

/* The interned copy of s[0..len), with one more reference. NULL when out of memory. */
const pd_istr_t *istr_get(istr_table_t *t, const char *s, size_t len);

/* Another reference to an interned string. */
static inline const pd_istr_t *istr_ref(const pd_istr_t *s) {
    ((pd_istr_t *)s)->refs++;
    return s;
}

/* Drops one reference; the last frees the string. NULL is ignored. */
void istr_put(istr_table_t *t, const pd_istr_t *s);

#endif
