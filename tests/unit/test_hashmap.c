/* The keyed hash map (and the interned strings built on it): insert, find, remove, iteration
 * and growth up to 100k entries, chains of colliding hashes, the keyed SipHash, and istr
 * reference counting with pointer equality of equal labels.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/hashmap.h"
#include "util/istr.h"

typedef struct item {
    hmap_node_t node;
    uint32_t key;
    uint32_t seen; /* visits during one iteration */
} item_t;

static bool item_eq(const hmap_node_t *n, const void *key, size_t len) {
    assert_int_equal(len, sizeof(uint32_t));
    return ((const item_t *)n)->key == *(const uint32_t *)key;
}

static pd_hashkey_t KEY;

static uint64_t h(uint32_t k) {
    return pd_hash(&KEY, &k, sizeof(k));
}

static item_t *find(const hmap_t *m, uint32_t k) {
    return (item_t *)hmap_find(m, h(k), &k, sizeof(k), item_eq);
}

static int group_setup(void **state) {
    (void)state;
    assert_true(sodium_init() >= 0);
    for (int i = 0; i < 16; i++)
        KEY.k[i] = (uint8_t)(i * 13 + 5);
    return 0;
}

static int cmp_u64(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* A record keyed by a variable-length id, as the stores keep users. */
typedef struct user {
    hmap_node_t node;
    size_t len;
    char id[32];
} user_t;

static bool user_eq(const hmap_node_t *n, const void *key, size_t len) {
    const user_t *u = (const user_t *)n;
    return u->len == len && memcmp(u->id, key, len) == 0;
}

/* ---- pd_hash ---- */

static void test_siphash_vectors(void **state) {
    (void)state;
    /* SipHash-2-4 reference vectors (key 00..0f, message 00..len-1), as little-endian
     * 64-bit values. */
    pd_hashkey_t k;
    uint8_t msg[16];
    for (int i = 0; i < 16; i++) {
        k.k[i] = (uint8_t)i;
        msg[i] = (uint8_t)i;
    }
    assert_int_equal(pd_hash(&k, msg, 0), 0x726fdb47dd0e0e31ULL);
    assert_int_equal(pd_hash(&k, msg, 1), 0x74f839c593dc67fdULL);
    assert_int_equal(pd_hash(&k, msg, 15), 0xa129ca6149be45e5ULL);
}

static void test_hash_is_keyed(void **state) {
    (void)state;
    pd_hashkey_t a = KEY, b = KEY;
    b.k[15] ^= 1;
    const char *ids[] = {"alice", "bob", "", "a", "web"};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        size_t n = strlen(ids[i]);
        /* Deterministic under one key, different under another. */
        assert_int_equal(pd_hash(&a, ids[i], n), pd_hash(&a, ids[i], n));
        assert_int_not_equal(pd_hash(&a, ids[i], n), pd_hash(&b, ids[i], n));
    }
    /* Different inputs, lengths included, differ. */
    assert_int_not_equal(pd_hash(&a, "ab", 2), pd_hash(&a, "ba", 2));
    assert_int_not_equal(pd_hash(&a, "ab", 2), pd_hash(&a, "ab\0", 3));
    assert_int_not_equal(pd_hash(&a, "", 0), pd_hash(&a, "\0", 1));

    /* Random keys differ from each other. */
    pd_hashkey_t r1, r2;
    pd_hashkey_generate(&r1);
    pd_hashkey_generate(&r2);
    assert_memory_not_equal(r1.k, r2.k, sizeof(r1.k));
    assert_int_not_equal(pd_hash(&r1, "alice", 5), pd_hash(&r2, "alice", 5));

    /* No collisions among 100k small distinct inputs (a birthday collision of a 64-bit hash
     * here has probability ~3e-10). */
    size_t n = 100000;
    uint64_t *v = malloc(n * sizeof(*v));
    assert_non_null(v);
    for (uint32_t i = 0; i < n; i++)
        v[i] = h(i);
    qsort(v, n, sizeof(*v), cmp_u64);
    for (size_t i = 1; i < n; i++)
        assert_int_not_equal(v[i - 1], v[i]);
    free(v);
}

/* ---- the map ---- */

static void test_init_sizes(void **state) {
    (void)state;
    hmap_t m;
    assert_int_equal(hmap_init(&m, 0), 0);
    assert_int_equal(m.mask + 1, 16);
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    uint32_t k = 1;
    assert_null(hmap_find(&m, h(k), &k, sizeof(k), item_eq));
    hmap_destroy(&m);
    assert_null(m.buckets);
    assert_int_equal(hmap_init(&m, 1000), 0);
    assert_int_equal(m.mask + 1, 1024);
    hmap_destroy(&m);
    assert_int_equal(hmap_init(&m, 1024), 0);
    assert_int_equal(m.mask + 1, 1024);
    hmap_destroy(&m);
}

static void test_insert_find_remove(void **state) {
    (void)state;
    hmap_t m;
    assert_int_equal(hmap_init(&m, 4), 0);
    item_t it[10];
    for (uint32_t i = 0; i < 10; i++) {
        it[i].key = i * 100;
        hmap_insert(&m, &it[i].node, h(it[i].key));
    }
    assert_int_equal(m.count, 10);
    for (uint32_t i = 0; i < 10; i++)
        assert_ptr_equal(find(&m, i * 100), &it[i]);
    assert_null(find(&m, 5));
    hmap_remove(&m, &it[3].node);
    assert_int_equal(m.count, 9);
    assert_null(find(&m, 300));
    assert_ptr_equal(find(&m, 400), &it[4]);
    /* Re-inserted after removal. */
    hmap_insert(&m, &it[3].node, h(300));
    assert_ptr_equal(find(&m, 300), &it[3]);
    for (uint32_t i = 0; i < 10; i++)
        hmap_remove(&m, &it[i].node);
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    hmap_destroy(&m);
}

static void test_collisions(void **state) {
    (void)state;
    /* Every entry under one hash: a single chain, told apart by the key comparison. */
    hmap_t m;
    assert_int_equal(hmap_init(&m, 16), 0);
    item_t it[40];
    const uint64_t same = 0x1234;
    for (uint32_t i = 0; i < 40; i++) {
        it[i].key = i;
        hmap_insert(&m, &it[i].node, same);
    }
    for (uint32_t i = 0; i < 40; i++) {
        uint32_t k = i;
        assert_ptr_equal(hmap_find(&m, same, &k, sizeof(k), item_eq), &it[i]);
    }
    /* The same key under another hash is not found: the hash is compared first. */
    uint32_t k = 7;
    assert_null(hmap_find(&m, same + 1, &k, sizeof(k), item_eq));
    assert_null(hmap_find(&m, same + m.mask + 1, &k, sizeof(k), item_eq));
    /* Remove from the middle, the head and the tail of the chain. */
    hmap_remove(&m, &it[20].node);
    hmap_remove(&m, &it[39].node);
    hmap_remove(&m, &it[0].node);
    assert_int_equal(m.count, 37);
    for (uint32_t i = 0; i < 40; i++) {
        k = i;
        hmap_node_t *n = hmap_find(&m, same, &k, sizeof(k), item_eq);
        if (i == 20 || i == 39 || i == 0)
            assert_null(n);
        else
            assert_ptr_equal(n, &it[i]);
    }
    /* Iteration walks the whole chain. */
    size_t seen = 0;
    for (hmap_node_t *n = hmap_first(&m); n; n = hmap_next(&m, n))
        seen++;
    assert_int_equal(seen, 37);
    hmap_destroy(&m);
}

static void test_100k_growth_and_iteration(void **state) {
    (void)state;
    const uint32_t N = 100000;
    hmap_t m;
    assert_int_equal(hmap_init(&m, 0), 0);
    item_t *it = calloc(N, sizeof(*it));
    assert_non_null(it);
    size_t last_buckets = m.mask + 1;
    int grew = 0;
    for (uint32_t i = 0; i < N; i++) {
        it[i].key = i * 81006u; /* distinct and even: 2 * odd, below 2^31 multiples */
        hmap_insert(&m, &it[i].node, h(it[i].key));
        if (m.mask + 1 != last_buckets) {
            assert_int_equal(m.mask + 1, last_buckets * 2);
            last_buckets = m.mask + 1;
            grew++;
        }
    }
    assert_int_equal(m.count, N);
    assert_true(grew >= 12);          /* 16 -> 131072 */
    assert_true(m.mask + 1 >= N / 2); /* load stays at most about 1 */
    assert_true(m.mask + 1 <= 2 * (size_t)N);
    for (uint32_t i = 0; i < N; i++)
        assert_ptr_equal(find(&m, it[i].key), &it[i]);
    assert_null(find(&m, 1)); /* odd: never inserted */

    /* Iteration visits every entry exactly once. */
    size_t visits = 0;
    for (hmap_node_t *n = hmap_first(&m); n; n = hmap_next(&m, n)) {
        ((item_t *)n)->seen++;
        visits++;
    }
    assert_int_equal(visits, N);
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(it[i].seen, 1);

    /* Removing the current node after fetching the next, every other entry. */
    size_t removed = 0;
    for (hmap_node_t *n = hmap_first(&m); n;) {
        hmap_node_t *next = hmap_next(&m, n);
        item_t *x = (item_t *)n;
        if (x->key / 2 % 2 == 0) { /* even i */
            hmap_remove(&m, n);
            removed++;
        }
        n = next;
    }
    assert_int_equal(m.count, N - removed);
    for (uint32_t i = 0; i < N; i++) {
        item_t *f = find(&m, it[i].key);
        if (i % 2 == 0)
            assert_null(f);
        else
            assert_ptr_equal(f, &it[i]);
    }
    /* And all of them, the same way. */
    for (hmap_node_t *n = hmap_first(&m); n;) {
        hmap_node_t *next = hmap_next(&m, n);
        hmap_remove(&m, n);
        n = next;
    }
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    hmap_destroy(&m);
    free(it);
}

static void test_string_keys(void **state) {
    (void)state;
    /* Variable-length keys, as the stores use them. */
    hmap_t m;
    assert_int_equal(hmap_init(&m, 8), 0);
    user_t u[3] = {{.len = 5, .id = "alice"}, {.len = 4, .id = "alic"}, {.len = 5, .id = "Alice"}};
    for (int i = 0; i < 3; i++)
        hmap_insert(&m, &u[i].node, pd_hash(&KEY, u[i].id, u[i].len));
    assert_ptr_equal(hmap_find(&m, pd_hash(&KEY, "alice", 5), "alice", 5, user_eq), &u[0]);
    assert_ptr_equal(hmap_find(&m, pd_hash(&KEY, "alic", 4), "alic", 4, user_eq), &u[1]);
    assert_ptr_equal(hmap_find(&m, pd_hash(&KEY, "Alice", 5), "Alice", 5, user_eq), &u[2]);
    assert_null(hmap_find(&m, pd_hash(&KEY, "alicE", 5), "alicE", 5, user_eq));
    hmap_destroy(&m);
}

/* ---- istr ---- */

static void test_istr_interning(void **state) {
    (void)state;
    istr_table_t t;
    assert_int_equal(istr_table_init(&t, &KEY), 0);
    const pd_istr_t *a = istr_get(&t, "web", 3);
    const pd_istr_t *b = istr_get(&t, "webXYZ", 3); /* only len bytes count */
    char dyn[] = "web";
    const pd_istr_t *c = istr_get(&t, dyn, 3);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    assert_ptr_equal(a, c);
    assert_int_equal(a->refs, 3);
    assert_int_equal(a->len, 3);
    assert_string_equal(a->s, "web"); /* NUL-terminated copy */
    assert_int_equal(t.map.count, 1);

    const pd_istr_t *d = istr_get(&t, "mobile", 6);
    const pd_istr_t *e = istr_get(&t, "Web", 3);
    const pd_istr_t *f = istr_get(&t, "we", 2);
    assert_true(d != a && e != a && f != a && d != e);
    assert_int_equal(t.map.count, 4);
    assert_int_equal(d->refs, 1);

    /* istr_ref adds a reference. */
    assert_ptr_equal(istr_ref(d), d);
    assert_int_equal(d->refs, 2);
    istr_put(&t, d);
    assert_int_equal(d->refs, 1);
    assert_int_equal(t.map.count, 4);

    /* The last put frees it and forgets it. */
    istr_put(&t, d);
    assert_int_equal(t.map.count, 3);
    const pd_istr_t *d2 = istr_get(&t, "mobile", 6);
    assert_int_equal(d2->refs, 1);
    assert_string_equal(d2->s, "mobile");
    istr_put(&t, d2);

    istr_put(&t, NULL); /* ignored */
    istr_put(&t, a);
    istr_put(&t, b);
    assert_int_equal(a->refs, 1);
    assert_ptr_equal(istr_get(&t, "web", 3), a);
    istr_put(&t, a);
    istr_put(&t, c);
    istr_put(&t, e);
    istr_put(&t, f);
    assert_int_equal(t.map.count, 0);
    istr_table_destroy(&t);
}

static void test_istr_many(void **state) {
    (void)state;
    istr_table_t t;
    assert_int_equal(istr_table_init(&t, &KEY), 0);
    enum { N = 20000 };
    const pd_istr_t **v = calloc(N, sizeof(*v));
    assert_non_null(v);
    char buf[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof(buf), "label-%d", i % (N / 2));
        v[i] = istr_get(&t, buf, (size_t)n);
        assert_non_null(v[i]);
    }
    assert_int_equal(t.map.count, N / 2);
    for (int i = 0; i < N / 2; i++) {
        assert_ptr_equal(v[i], v[i + N / 2]);
        assert_int_equal(v[i]->refs, 2);
    }
    /* Empty label. */
    const pd_istr_t *empty = istr_get(&t, "", 0);
    assert_non_null(empty);
    assert_int_equal(empty->len, 0);
    assert_string_equal(empty->s, "");
    assert_ptr_equal(istr_get(&t, "x", 0), empty);
    istr_put(&t, empty);
    istr_put(&t, empty);
    for (int i = 0; i < N; i++)
        istr_put(&t, v[i]);
    assert_int_equal(t.map.count, 0);
    istr_table_destroy(&t);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_siphash_vectors), cmocka_unit_test(test_hash_is_keyed),
        cmocka_unit_test(test_init_sizes),      cmocka_unit_test(test_insert_find_remove),
        cmocka_unit_test(test_collisions),      cmocka_unit_test(test_100k_growth_and_iteration),
        cmocka_unit_test(test_string_keys),     cmocka_unit_test(test_istr_interning),
        cmocka_unit_test(test_istr_many),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
