/* The privacy rule (privacy/privacy.h): requester R may see target T iff R == T, or T does not
 * block R and (T's visibility is everyone, or it is contacts and R is one of T's contacts).
 *
 * privacy_can_see is checked over every combination of its inputs against that sentence,
 * written out once more here as a table-free model, and the named cases are spelled out one by
 * one so a failure says which rule broke. Visibility names parse and print both ways; anything
 * else is refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "testutil.h"

#include "privacy/privacy.h"

static pd_str_t S(const char *s) {
    return (pd_str_t){s, strlen(s)};
}

static bool see(const char *r, const char *t, uint8_t vis, bool in_contacts, bool blocked) {
    return privacy_can_see(S(r), S(t), vis, in_contacts, blocked);
}

/* ---- the named cases ---- */

static void test_self_always(void **state) {
    (void)state;
    /* A user sees themselves whatever their settings: invisible, contacts-only without being
     * their own contact, even with themselves "blocked" (a list that cannot hold them). */
    for (uint8_t v = PD_VIS_EVERYONE; v <= PD_VIS_NOBODY; v++)
        for (int c = 0; c < 2; c++)
            for (int b = 0; b < 2; b++)
                assert_true(see("alice", "alice", v, c, b));
    assert_true(see("alice", "alice", PD_VIS_NOBODY, false, false));
}

static void test_self_is_bytewise(void **state) {
    (void)state;
    /* Equality is exact: case, a prefix, an extra byte are other users. */
    assert_false(see("Alice", "alice", PD_VIS_NOBODY, false, false));
    assert_false(see("alic", "alice", PD_VIS_NOBODY, false, false));
    assert_false(see("alice", "alic", PD_VIS_NOBODY, false, false));
    assert_false(see("alice ", "alice", PD_VIS_NOBODY, false, false));
    /* Same bytes in different buffers: still the same user. */
    char a[] = "bob", b[] = "bob";
    assert_true(privacy_can_see((pd_str_t){a, 3}, (pd_str_t){b, 3}, PD_VIS_NOBODY, false, false));
    /* Lengths decide, not NUL terminators: "bob" vs the first 2 bytes of it. */
    assert_false(privacy_can_see((pd_str_t){a, 2}, (pd_str_t){b, 3}, PD_VIS_NOBODY, false, false));
    /* Ids with bytes beyond ASCII and embedded in longer buffers. */
    const char *u = "w\xc3\xa9l\xc3\xa9";
    assert_true(privacy_can_see((pd_str_t){u, strlen(u)}, (pd_str_t){"w\xc3\xa9l\xc3\xa9xyz", 6},
                                PD_VIS_NOBODY, false, false));
}

static void test_blocked_never(void **state) {
    (void)state;
    for (uint8_t v = PD_VIS_EVERYONE; v <= PD_VIS_NOBODY; v++) {
        assert_false(see("mallory", "alice", v, false, true));
        /* A blocked contact is still blocked. */
        assert_false(see("mallory", "alice", v, true, true));
    }
}

static void test_everyone(void **state) {
    (void)state;
    assert_true(see("bob", "alice", PD_VIS_EVERYONE, false, false));
    assert_true(see("bob", "alice", PD_VIS_EVERYONE, true, false));
}

static void test_contacts(void **state) {
    (void)state;
    assert_true(see("bob", "alice", PD_VIS_CONTACTS, true, false));
    assert_false(see("carol", "alice", PD_VIS_CONTACTS, false, false));
}

static void test_nobody(void **state) {
    (void)state;
    /* Invisible: not even contacts. */
    assert_false(see("bob", "alice", PD_VIS_NOBODY, true, false));
    assert_false(see("carol", "alice", PD_VIS_NOBODY, false, false));
}

static void test_unknown_visibility_hides(void **state) {
    (void)state;
    /* A value out of the enum (a damaged row) must not widen who sees: only self. */
    for (unsigned v = PD_VIS_NOBODY + 1; v <= 255; v++) {
        assert_false(see("bob", "alice", (uint8_t)v, true, false));
        assert_false(see("bob", "alice", (uint8_t)v, false, false));
        assert_true(see("alice", "alice", (uint8_t)v, false, false));
    }
}

/* ---- every combination against the rule ---- */

static bool model(bool self, uint8_t vis, bool in_contacts, bool blocked) {
    if (self)
        return true;
    if (blocked)
        return false;
    return vis == PD_VIS_EVERYONE || (vis == PD_VIS_CONTACTS && in_contacts);
}

static void test_every_combination(void **state) {
    (void)state;
    const char *ids[] = {"alice", "bob"};
    int seen = 0, hidden = 0;
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 2; t++)
            for (uint8_t v = PD_VIS_EVERYONE; v <= PD_VIS_NOBODY; v++)
                for (int c = 0; c < 2; c++)
                    for (int b = 0; b < 2; b++) {
                        bool want = model(r == t, v, c, b);
                        bool got = see(ids[r], ids[t], v, c, b);
                        if (got != want)
                            fail_msg("can_see(%s -> %s, %s, contact %d, blocked %d) = %d, want %d",
                                     ids[r], ids[t], privacy_visibility_name(v), c, b, got, want);
                        seen += got;
                        hidden += !got;
                    }
    /* 2x2 requester/target x 3 visibilities x 2 x 2 = 48 cases: 24 self (all seen); of the
     * 24 others, everyone+unblocked (2) and contacts+contact+unblocked (1) are seen. */
    assert_int_equal(seen + hidden, 48);
    assert_int_equal(seen, 24 + 2 * 2 + 2 * 1);
}

/* ---- names ---- */

static void test_names(void **state) {
    (void)state;
    assert_string_equal(privacy_visibility_name(PD_VIS_EVERYONE), "everyone");
    assert_string_equal(privacy_visibility_name(PD_VIS_CONTACTS), "contacts");
    assert_string_equal(privacy_visibility_name(PD_VIS_NOBODY), "nobody");
    /* Out of range: the documented default's name, never NULL. */
    assert_string_equal(privacy_visibility_name(3), "everyone");
    assert_string_equal(privacy_visibility_name(255), "everyone");
    assert_int_equal(PD_VIS_EVERYONE, 0); /* the stored default is 0 */
}

static void test_parse(void **state) {
    (void)state;
    assert_int_equal(privacy_visibility_parse("everyone", 8), PD_VIS_EVERYONE);
    assert_int_equal(privacy_visibility_parse("contacts", 8), PD_VIS_CONTACTS);
    assert_int_equal(privacy_visibility_parse("nobody", 6), PD_VIS_NOBODY);
    /* Round trip. */
    for (uint8_t v = PD_VIS_EVERYONE; v <= PD_VIS_NOBODY; v++) {
        const char *n = privacy_visibility_name(v);
        assert_int_equal(privacy_visibility_parse(n, strlen(n)), v);
    }
    /* Only exact names, by length: no prefix, no extension, no case folding. */
    const char *bad[] = {"",        "every",     "everyone ", " everyone", "Everyone",  "EVERYONE",
                         "contact", "contactss", "nobod",     "nobodyy",   "invisible", "friends",
                         "none",    "public",    "private",   "everyone\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (privacy_visibility_parse(bad[i], strlen(bad[i])) != -1)
            fail_msg("\"%s\" parsed as a visibility", bad[i]);
    /* The length given is what counts: "nobody" inside a longer buffer, and cut short. */
    assert_int_equal(privacy_visibility_parse("nobodyXYZ", 6), PD_VIS_NOBODY);
    assert_int_equal(privacy_visibility_parse("nobody", 5), -1);
    assert_int_equal(privacy_visibility_parse("contacts\0x", 10), -1);
}

static void test_parse_guarded(void **state) {
    (void)state;
    /* Reading the name never goes past the length given. */
    tu_guard_t g;
    tu_guard_init(&g, 64);
    const char *names[] = {"everyone", "contacts", "nobody", "e", "no", "contactsX"};
    const int want[] = {PD_VIS_EVERYONE, PD_VIS_CONTACTS, PD_VIS_NOBODY, -1, -1, -1};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *p = (const char *)tu_guard_place(&g, names[i], strlen(names[i]));
        assert_int_equal(privacy_visibility_parse(p, strlen(names[i])), want[i]);
    }
    tu_guard_destroy(&g);
}

/* One rule for the WebSocket and the API: anyone but the owner may be in the owner's lists;
 * the comparison is bytewise and by length (a prefix or a case variant is someone else). */
static void test_entry_allowed(void **state) {
    (void)state;
    pd_str_t ann = {"ann", 3};
    assert_false(privacy_entry_allowed(ann, (pd_str_t){"ann", 3}));
    assert_true(privacy_entry_allowed(ann, (pd_str_t){"an", 2}));
    assert_true(privacy_entry_allowed(ann, (pd_str_t){"anne", 4}));
    assert_true(privacy_entry_allowed(ann, (pd_str_t){"Ann", 3}));
    assert_true(privacy_entry_allowed(ann, (pd_str_t){"bob", 3}));
    assert_string_equal(PRIVACY_SELF_ENTRY_MESSAGE,
                        "a user cannot be their own contact or block themselves");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_allowed),
        cmocka_unit_test(test_self_always),
        cmocka_unit_test(test_self_is_bytewise),
        cmocka_unit_test(test_blocked_never),
        cmocka_unit_test(test_everyone),
        cmocka_unit_test(test_contacts),
        cmocka_unit_test(test_nobody),
        cmocka_unit_test(test_unknown_visibility_hides),
        cmocka_unit_test(test_every_combination),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_guarded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
