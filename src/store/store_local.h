/* The embedded store: users' shared state in this process's memory, for a single node.
 * Every call completes before it returns. Users are kept once seen, so an offline user still
 * answers with their last_seen.
 *
 * Cost per user: one allocation of about 100 bytes plus the id; per session 40 bytes;
 * device labels are interned; privacy settings only for users who set them. Custom-status
 * expiry and the last_seen write-behind use the shared timing wheel.
 */
#ifndef PD_STORE_LOCAL_H
#define PD_STORE_LOCAL_H

#include "log.h"
#include "store/persist.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/hashmap.h"
#include "util/wheel.h"

/* New local store, in memory only. Borrows key, wheel and clock until store_destroy. NULL
 * when out of memory. */
store_t *store_local_new(const pd_hashkey_t *key, wheel_t *wheel, const pd_clock_t *clock);

/* Makes the store durable: loads every user stored by persist, then writes settings through
 * and last_seen behind (flushed at store_destroy too). Borrows persist and log until
 * store_destroy. Call once, before any other call. 0, or PD_EIO / PD_ENOMEM (logged). */
int store_local_load(store_t *st, persist_t *persist, pd_log_t *log);

#endif
