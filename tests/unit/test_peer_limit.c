/* Connections per client address (server/peer_limit): the cap per address, addresses counted
 * apart, IPv4-mapped IPv6 as IPv4, IPv6 per /64, slots given back and reused, forgetting
 * addresses without connections, 100,000 addresses, non-IP families.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <string.h>
#include <sys/un.h>

#include "server/peer_limit.h"
#include "util/error.h"

static struct sockaddr_storage v4(const char *ip) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(40000);
    assert_int_equal(inet_pton(AF_INET, ip, &in->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *ip) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
    return ss;
}

static int take(peer_limit_t *pl, struct sockaddr_storage ss, uint32_t *slot) {
    return peer_limit_take(pl, (const struct sockaddr *)&ss, slot);
}

static void test_cap_per_address(void **state) {
    (void)state;
    peer_limit_t *pl = peer_limit_new(3);
    assert_non_null(pl);
    uint32_t s[4];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(take(pl, v4("10.0.0.1"), &s[i]), 0);
        assert_true(s[i] > 0);
        assert_int_equal(s[i], s[0]); /* one address, one slot */
    }
    assert_int_equal(take(pl, v4("10.0.0.1"), &s[3]), PD_ELIMIT);
    assert_int_equal(s[3], 0);
    /* Another address is counted apart; ports never matter. */
    uint32_t other;
    assert_int_equal(take(pl, v4("10.0.0.2"), &other), 0);
    assert_int_not_equal(other, s[0]);
    assert_int_equal(peer_limit_addresses(pl), 2);
    /* A close makes room again. */
    peer_limit_put(pl, s[0]);
    assert_int_equal(take(pl, v4("10.0.0.1"), &s[3]), 0);
    assert_int_equal(take(pl, v4("10.0.0.1"), &s[3]), PD_ELIMIT);
    peer_limit_free(pl);
}

static void test_forget_and_reuse(void **state) {
    (void)state;
    peer_limit_t *pl = peer_limit_new(1);
    uint32_t a, b, c;
    assert_int_equal(take(pl, v4("192.0.2.1"), &a), 0);
    assert_int_equal(take(pl, v4("192.0.2.2"), &b), 0);
    peer_limit_put(pl, a);
    assert_int_equal(peer_limit_addresses(pl), 1);
    peer_limit_put(pl, a); /* a stale slot: ignored, the other address keeps its count */
    peer_limit_put(pl, 0);
    assert_int_equal(take(pl, v4("192.0.2.2"), &c), PD_ELIMIT);
    /* The freed slot serves the next new address. */
    assert_int_equal(take(pl, v4("192.0.2.3"), &c), 0);
    assert_int_equal(c, a);
    peer_limit_free(pl);
}

static void test_ipv6(void **state) {
    (void)state;
    peer_limit_t *pl = peer_limit_new(2);
    uint32_t s;
    /* One /64: the interface part does not make a new address. */
    assert_int_equal(take(pl, v6("2001:db8:1:2::1"), &s), 0);
    assert_int_equal(take(pl, v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), &s), 0);
    assert_int_equal(take(pl, v6("2001:db8:1:2:abcd::9"), &s), PD_ELIMIT);
    /* The next /64 is another address. */
    assert_int_equal(take(pl, v6("2001:db8:1:3::1"), &s), 0);
    /* IPv4-mapped is the IPv4 address, whichever socket family it came on. */
    assert_int_equal(take(pl, v6("::ffff:198.51.100.7"), &s), 0);
    assert_int_equal(take(pl, v4("198.51.100.7"), &s), 0);
    assert_int_equal(take(pl, v6("::ffff:198.51.100.7"), &s), PD_ELIMIT);
    assert_int_equal(peer_limit_addresses(pl), 3);
    peer_limit_free(pl);
}

static void test_not_ip(void **state) {
    (void)state;
    peer_limit_t *pl = peer_limit_new(1);
    struct sockaddr_storage ss = {0};
    ss.ss_family = AF_UNIX;
    uint32_t s = 7;
    assert_int_equal(take(pl, ss, &s), PD_EINVAL);
    assert_int_equal(s, 0);
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
}

static void test_many_addresses(void **state) {
    (void)state;
    enum { N = 100000 };
    peer_limit_t *pl = peer_limit_new(2);
    static uint32_t slots[N];
    for (uint32_t i = 0; i < N; i++) {
        struct sockaddr_storage ss = {0};
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(0x0a000000u + i);
        uint32_t again, over;
        assert_int_equal(take(pl, ss, &slots[i]), 0);
        assert_int_equal(take(pl, ss, &again), 0);
        assert_int_equal(again, slots[i]);
        assert_int_equal(take(pl, ss, &over), PD_ELIMIT);
    }
    assert_int_equal(peer_limit_addresses(pl), N);
    for (uint32_t i = 0; i < N; i++) {
        peer_limit_put(pl, slots[i]);
        peer_limit_put(pl, slots[i]);
    }
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
}

static int group_setup(void **state) {
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_per_address),
        cmocka_unit_test(test_forget_and_reuse),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_not_ip),
        cmocka_unit_test(test_many_addresses),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
