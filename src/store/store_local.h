/* The embedded store: users' shared state in this process's memory, for a single node.
 * Every call completes before it returns. Users are kept once seen, so an offline user still
 * answers with their last_seen.
 *
 * Cost per user: one allocation of about 100 bytes plus the id; per session 40 bytes;
 * device labels are interned. Custom-status expiry uses the shared timing wheel.
 */
#ifndef PD_STORE_LOCAL_H
#define PD_STORE_LOCAL_H

#include "store/store.h"
#include "util/clock.h"
#include "util/hashmap.h"
#include "util/wheel.h"

/* New local store. Borrows key, wheel and clock until store_destroy. NULL on ENOMEM. */
store_t *store_local_new(const pd_hashkey_t *key, wheel_t *wheel, const pd_clock_t *clock);

#endif
