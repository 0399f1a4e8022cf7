/* The privacy rule of ARCHITECTURE.md section 2, in one place for every path that shows a
 * presence (snapshots, updates, bulk and single queries, HTTP, the event stream).
 *
 * Requester R may see target T iff R == T, or T does not block R and (T's visibility is
 * everyone, or it is contacts and R is one of T's contacts). visibility "nobody" is
 * invisible: T appears offline to everyone else. Pure.
 */
#ifndef PD_PRIVACY_H
#define PD_PRIVACY_H

#include <stdbool.h>
#include <stdint.h>

#include "presence/presence.h"

enum pd_visibility { PD_VIS_EVERYONE = 0, PD_VIS_CONTACTS = 1, PD_VIS_NOBODY = 2 };

#define PD_CONTACTS_MAX_DEFAULT 5000 /* contacts (and blocked users) per user */

/* "everyone", "contacts", "nobody". */
const char *privacy_visibility_name(uint8_t v);
/* The visibility named s[0..len), or -1. */
int privacy_visibility_parse(const char *s, size_t len);

/* The rule. in_contacts: R is in T's contacts; blocked: T blocks R. */
bool privacy_can_see(pd_str_t requester, pd_str_t target, uint8_t visibility, bool in_contacts,
                     bool blocked);

/* May other be named in owner's contacts or blocked list (added, removed or set)? Anyone but
 * owner: a user cannot be their own contact or block themselves (they always see themselves).
 * Every path that changes the lists asks this: the WebSocket's privacy messages, the HTTP API's
 * PUT .../privacy. Refusals are bad_user_id, PRIVACY_SELF_ENTRY_MESSAGE. */
bool privacy_entry_allowed(pd_str_t owner, pd_str_t other);

#define PRIVACY_SELF_ENTRY_MESSAGE "a user cannot be their own contact or block themselves"

#endif
