/* Open connections per client address, for --max-connections-per-ip: a node facing the
 * internet should not let one address take its connections (each costs memory and a file).
 *
 * An address is an IPv4 address (IPv4-mapped IPv6 ones count as IPv4), or the /64 prefix of
 * an IPv6 address: one subscriber usually holds a whole /64, so counting full IPv6 addresses
 * would limit nothing. A connection holds a slot (a small integer, 4 bytes in struct conn)
 * from its accept to its close; an address without open connections is forgotten.
 *
 * Cost: one 40-byte entry (and its malloc header) per address with open connections, and 8 bytes of
 * slot table per address ever open at once. Lookups are O(1) through a keyed (SipHash) map, so
 * crafted addresses cannot collide.
 */
#ifndef PD_SERVER_PEER_LIMIT_H
#define PD_SERVER_PEER_LIMIT_H

#include <stdint.h>
#include <sys/socket.h>

typedef struct peer_limit peer_limit_t;

/* A table allowing max open connections per address (max > 0). NULL when out of memory. */
peer_limit_t *peer_limit_new(uint32_t max);
void peer_limit_free(peer_limit_t *pl);

/* Counts a new connection from sa. 0 with *slot set (> 0), PD_ELIMIT when the address has max
 * open already (nothing counted), PD_EINVAL for an address family other than IPv4/IPv6
 * (e.g. a Unix socket: not counted, *slot 0), PD_ENOMEM. */
int peer_limit_take(peer_limit_t *pl, const struct sockaddr *sa, uint32_t *slot);

/* The connection holding slot closed (0 is ignored). */
void peer_limit_put(peer_limit_t *pl, uint32_t slot);

/* Addresses with open connections. */
uint32_t peer_limit_addresses(const peer_limit_t *pl);

#endif
