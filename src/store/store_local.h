/* The embedded store: users' shared state in this process's memory, for a single node.
 * Every call completes before it returns, except the callback of a durable change with a
 * database (store_local_load), which runs once the change is committed.
 *
 * Users in memory: those with a session, settings (visibility, contacts, blocks), a field
 * (custom_status, activity, a backend's status) or a last_seen (once connected), and those
 * with a write in flight. A record that holds none of these is freed at the end of the call
 * that emptied it: an id that was only asked about, added as a contact, or given settings
 * that were then taken back costs nothing after the call, and reads exactly as an unknown
 * user. A user who was ever connected keeps a record (their last_seen answers queries and is
 * reloaded at start anyway).
 *
 * Cost per user: one allocation of about 120 bytes plus the id; per session 40 bytes;
 * device labels are interned; privacy settings only for users whose settings differ from the
 * defaults. Custom-status expiry and the last_seen write-behind use the shared timing wheel.
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

/* Makes the store durable: loads every user stored by persist (synchronously, before the loop
 * serves), then starts persist's writer thread on loop (persist_start). From then on a
 * durable change (settings, contacts, blocks, custom_status, activity, a backend's status) is
 * made in memory at once and queued; its callback runs from the loop once its group is
 * committed, so an acknowledgement means durable. A call the queue cannot take is refused with
 * PD_EUNAVAIL (retryable) and changes nothing. last_seen is written behind, once a second.
 * store_shutdown waits for every queued write and answers its caller; store_destroy writes the
 * remaining last_seen. Borrows persist, log and loop until store_destroy (persist_close after
 * it). Call once, before any other call. 0, or PD_EIO / PD_ENOMEM (logged). */
int store_local_load(store_t *st, persist_t *persist, pd_log_t *log, uv_loop_t *loop);

#endif
