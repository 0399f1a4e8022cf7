/* The presence engine: sessions, their claims and liveness, the grace window, opt-in
 * server-side idle, subscriptions and fan-out, following ARCHITECTURE.md section 2.
 *
 * Users' shared state lives behind the store interface (store/store.h); the engine keeps
 * only what concerns this node's connections: their sessions, who they watch, and the
 * timers. Visible changes come back from the store's listener and are fanned out to the
 * local watchers: encoded once, queued by reference on every watcher, coalesced per
 * (watcher, user) while unsent, so a slow watcher holds at most one pending update per user.
 *
 * The engine talks to connections only through engine_client_ops_t and to the wire format
 * only through engine_codec_t, so it is tested without sockets or JSON.
 *
 * Memory: a session is 120 bytes; a local user record 62 bytes + id; a subscription
 * edge 80 bytes.
 */
#ifndef PD_ENGINE_H
#define PD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "events/events.h"
#include "log.h"
#include "metrics.h"
#include "presence/presence.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/hashmap.h"
#include "util/obuf.h"
#include "util/wheel.h"

typedef struct engine engine_t;
typedef struct session session_t;

/* How the engine reaches a connection ("client"). */
typedef struct engine_client_ops {
    /* Queues a frame (a new reference is taken). 0, or negative when the client is gone. */
    int (*send)(void *client, pd_obuf_t *frame);
    /* Queues a frame, replacing in place the frame *slot names while that one is unsent.
     * Returns 1 when it replaced (coalesced), 0 when it queued, negative when gone. */
    int (*send_coalesced)(void *client, pd_obuf_t *frame, void **slot);
    /* Forgets a slot before the memory holding it is freed. */
    void (*unslot)(void **slot);
    /* Starts closing the client with a WebSocket close code. */
    void (*close)(void *client, uint16_t code, const char *reason);
    /* Loop time (ms) of the client's last inbound frame: its liveness. */
    uint64_t (*last_rx_ms)(void *client);
} engine_client_ops_t;

/* How the engine encodes what it fans out (provided by the protocol layer). */
typedef struct engine_codec {
    pd_obuf_t *(*presence_update)(const pd_presence_t *p);
    pd_obuf_t *(*presence_hidden)(pd_str_t user_id);
} engine_codec_t;

typedef struct engine_config {
    uint32_t heartbeat_ttl_ms;  /* liveness window (enforced by the server) */
    uint32_t offline_grace_ms;  /* a disconnect waits this long before offline */
    uint32_t away_after_ms;     /* opt-in server-side idle: away after this long */
    uint32_t max_subscriptions; /* watched users per connection */
    uint32_t max_contacts;      /* contacts, and blocked users, per user */
    uint32_t checkpoint_ms;     /* live users' last_seen reaches the store this often (0: off) */
} engine_config_t;

void engine_config_default(engine_config_t *cfg);

/* New engine. Borrows everything until engine_free. Sets itself as the store's listener.
 * NULL when out of memory. */
engine_t *engine_new(const engine_config_t *cfg, store_t *store, wheel_t *wheel,
                     const pd_clock_t *clock, const pd_hashkey_t *key,
                     const engine_client_ops_t *ops, const engine_codec_t *codec, pd_log_t *log,
                     pd_metrics_t *metrics);

/* Publishes every presence change the store announces to events (may be NULL). */
void engine_set_events(engine_t *e, events_t *events);

/* Frees the engine; every session must be closed first (lingering ones are dropped). */
void engine_free(engine_t *e);

/* Ends every lingering session now (their grace windows are cut short, offline published):
 * for an orderly shutdown, where no reconnect to this node can come. */
void engine_flush_lingering(engine_t *e);

/* True when a backend closed the session (engine_kick): it gets no grace window. */
bool engine_session_kicked(const session_t *s);

/* Open connections of user on this node (their sessions, closed or lingering ones left out).
 * O(sessions of the user here). */
uint32_t engine_user_connections(engine_t *e, pd_str_t user);

/* Sessions not yet ended: open ones, and closed ones in their grace window. */
uint64_t engine_session_count(const engine_t *e);

/* --- Sessions --- */

/* A new connection of user (a valid id). The session is not present until it announces
 * itself (engine_update or a heartbeat). NULL when out of memory. */
session_t *engine_session_open(engine_t *e, void *client, pd_str_t user);

enum engine_end {
    ENGINE_END_DISCONNECT, /* closed or dropped: offline after the grace window */
    ENGINE_END_TIMEOUT     /* no liveness for heartbeat_ttl: offline at once */
};

/* The connection is gone; s must not be used after this. */
void engine_session_close(session_t *s, int how);

pd_str_t engine_session_user(const session_t *s);
uint64_t engine_session_id(const session_t *s);
/* The session's device label, or NULL before it has one. */
const char *engine_session_device(const session_t *s, size_t *len);

/* --- Requests. Each returns 0 and calls done exactly once (now or later), or returns a
 * negative PD_E* code without calling it. --- */

typedef void (*engine_done_cb)(void *arg, int err);
typedef void (*engine_presences_cb)(void *arg, int err, const pd_presence_t *ps, size_t n);

/* A change of the session's claim and the user's fields (set_online, set_status). */
typedef struct engine_update {
    int8_t status;   /* PD_ONLINE / PD_AWAY / PD_BUSY; PD_OFFLINE withdraws; -1 keep */
    bool announce;   /* set_online: become present (online unless status says) */
    pd_str_t device; /* new device label when device.s != NULL */
    store_user_fields_t fields;
    int8_t auto_away; /* -1 keep, 0 off, 1 on (server-side idle detection) */
} engine_update_t;

/* Applies u. A session becomes present by it unless it withdraws. PD_ELIMIT (via done) when
 * the user has too many sessions. */
int engine_update(session_t *s, const engine_update_t *u, engine_done_cb done, void *arg);

/* A heartbeat: liveness is already counted by the connection; a heartbeat also makes a
 * session that never announced itself present (the seed's semantics), and records a new
 * device label. device.s NULL: no label given. Never answered, never fanned out. */
void engine_heartbeat(session_t *s, pd_str_t device);

/* The session withdraws from presence; the connection stays (it may still watch). */
int engine_set_offline(session_t *s, engine_done_cb done, void *arg);

/* User activity, for sessions that opted in to server-side idle detection. */
void engine_activity(session_t *s);

/* Starts watching ids; done receives the snapshot of those known (unknown users left
 * out). PD_ELIMIT, before anything changes, when the watched count would pass the limit. */
int engine_subscribe(session_t *s, const pd_str_t *ids, size_t n, engine_presences_cb done,
                     void *arg);

/* Stops watching ids (ids not watched are ignored). */
void engine_unsubscribe(session_t *s, const pd_str_t *ids, size_t n);

/* The presence of ids (unknown users left out). */
int engine_get_presence(session_t *s, const pd_str_t *ids, size_t n, engine_presences_cb done,
                        void *arg);

/* --- Privacy: the session's user manages their own settings. --- */

typedef void (*engine_privacy_cb)(void *arg, int err, const store_privacy_t *p);

/* The user's visibility, contacts and blocked users. */
int engine_privacy_get(session_t *s, engine_privacy_cb done, void *arg);

/* One change (enum store_privacy_op) of the user's settings; done once durable. PD_ELIMIT
 * (via done) when the list is full. Watchers everywhere are re-checked at once: one that
 * loses permission gets a bare offline, one that gains it the current presence. */
int engine_privacy_change(session_t *s, int op, uint8_t visibility, pd_str_t other,
                          engine_done_cb done, void *arg);

/* --- Backend calls (the HTTP API): no session; each answers through its callback (now or
 * later) unless it returns an error. --- */

typedef void (*engine_bulk_cb)(void *arg, int err, const pd_presence_t *ps, size_t n);

/* The presences of ids (duplicates once, unknown users left out), filtered by the privacy
 * rule for requester when requester.s is set. */
int engine_query(engine_t *e, pd_str_t requester, const pd_str_t *ids, size_t n, engine_bulk_cb cb,
                 void *arg);

/* A backend sets user-level fields and its own status claim for user. */
int engine_server_update(engine_t *e, pd_str_t user, const store_user_fields_t *f,
                         engine_done_cb cb, void *arg);

/* Any user's privacy settings, read or replaced as a whole. */
int engine_privacy_of(engine_t *e, pd_str_t user, engine_privacy_cb cb, void *arg);
int engine_privacy_set(engine_t *e, pd_str_t user, const store_privacy_t *p, engine_done_cb cb,
                       void *arg);

/* Whether requester may see target (the privacy rule); bits[0] through cb. */
int engine_can_see(engine_t *e, pd_str_t requester, pd_str_t target, store_bits_cb cb, void *arg);

/* Closes every connection of user on this node with code and reason; returns how many. Their
 * sessions end without a grace window (the user is offline once the last one is closed). */
uint32_t engine_kick(engine_t *e, pd_str_t user, uint16_t code, const char *reason);

/* Why user shows as they do, with each local session's last liveness (epoch seconds; 0 for
 * sessions on other nodes or lingering). */
typedef void (*engine_explain_cb)(void *arg, int err, const store_explain_t *x,
                                  const double *liveness);
int engine_explain(engine_t *e, pd_str_t user, engine_explain_cb cb, void *arg);

/* Watched users of the session. */
uint32_t engine_session_subscriptions(const session_t *s);

/* The session's connection, NULL once it is gone. */
void *engine_session_client(const session_t *s);

/* A pointer kept in the session for the rooms module (its list of the connection's rooms). */
void **engine_session_rooms(session_t *s);

/* The engine's connection operations (for modules that send on their own). */
const engine_client_ops_t *engine_client_ops(const engine_t *e);

#endif
