/* Rooms (channels, documents): who is here, with what metadata, and their live cursors, as
 * ARCHITECTURE.md section 2 ("Rooms") lays out.
 *
 * Membership lives behind the store (one member per user however many connections it has in
 * the room; the last connection's disconnect leaves after the grace window). This module
 * keeps what concerns this node: which local connections are in which room, the throttle of
 * their cursor and typing signals (at most cursor_hz per connection, latest value wins), and
 * how events reach them: one event per change while a room is small, and above
 * announce_max members one channel_delta per interval (back below 80% of it, events again).
 *
 * Privacy: the room is shown to the room. Its members and count are answered only to a
 * connection in it, and a member is never shown to the users they block: not in member
 * lists, no member events, no cursor or typing; a block or unblock takes effect on every
 * delivery at once (rooms.c's head tells how). Visibility (invisible, contacts) does not
 * apply inside a room: joining is explicit participation. The HTTP API (backends) is not
 * filtered.
 *
 * Memory: 160 bytes per (connection, room) link; per room with local members 80 bytes + name;
 * per local user with links 40 bytes + id + their hide list (each id + 17 bytes).
 */
#ifndef PD_ROOMS_H
#define PD_ROOMS_H

#include <stdbool.h>
#include <stdint.h>

#include "auth/token.h"
#include "engine/engine.h"
#include "events/events.h"
#include "log.h"
#include "metrics.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/hashmap.h"
#include "util/wheel.h"

typedef struct rooms rooms_t;

typedef struct rooms_config {
    uint32_t announce_max;     /* members above which a room batches its events */
    uint32_t interval_ms;      /* the batching interval */
    uint32_t cursor_hz;        /* signals per second per connection and room */
    uint32_t max_per_conn;     /* rooms one connection may be in */
    uint32_t max_members;      /* members one room may have */
    uint32_t offline_grace_ms; /* a disconnected member's last connection lingers this long */
    uint32_t state_members;    /* members in the channel_state answering a join */
} rooms_config_t;

void rooms_config_default(rooms_config_t *cfg);

/* How events are encoded (provided by the protocol layer). */
typedef struct rooms_codec {
    pd_obuf_t *(*member_event)(const char *type, pd_str_t channel, const pd_member_t *m,
                               uint32_t count);
    pd_obuf_t *(*member_left)(pd_str_t channel, pd_str_t user, const char *reason, uint32_t count);
    pd_obuf_t *(*member_json)(const pd_member_t *m);
    pd_obuf_t *(*delta)(pd_str_t channel, const pd_str_t *joined, size_t njoined,
                        const pd_str_t *left, size_t nleft, const pd_str_t *updated,
                        size_t nupdated, const uint32_t more[3], uint32_t count);
    pd_obuf_t *(*signal)(const char *type, pd_str_t channel, pd_str_t user, const char *key,
                         pd_str_t json);
} rooms_codec_t;

/* New rooms module on engine and store. Borrows everything until rooms_free; chains itself to
 * the store's listener for room events (presence events still reach the engine). */
rooms_t *rooms_new(const rooms_config_t *cfg, engine_t *engine, store_t *store, wheel_t *wheel,
                   const pd_clock_t *clock, const pd_hashkey_t *key, const rooms_codec_t *codec,
                   pd_log_t *log, pd_metrics_t *metrics);
void rooms_free(rooms_t *r);

/* Publishes every membership change the store announces to events (may be NULL). */
void rooms_set_events(rooms_t *r, events_t *events);

/* The state answering a join: the room's mode ("announce" or "interval"), its first members
 * (up to state_members, by user id), its member count, and whether more members follow. */
typedef void (*rooms_state_cb)(void *arg, int err, const char *mode, const pd_member_t *ms,
                               size_t n, uint32_t count, bool more);
typedef void (*rooms_members_cb)(void *arg, int err, const pd_member_t *ms, size_t n,
                                 uint32_t count, bool more);
typedef void (*rooms_count_cb)(void *arg, int err, uint32_t count);

/* Joins (or re-joins, replacing metadata when given) the session's connection to channel.
 * PD_ELIMIT when the connection is in max_per_conn rooms; PD_EFULL (returned, or through the
 * callback) when the room has max_members members; PD_ETOOBIG when the user already has
 * PD_SESSIONS_PER_USER_MAX connections in the room. */
int rooms_join(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t metadata, rooms_state_cb cb,
               void *arg);

/* Leaves; PD_ENOTFOUND when the connection is not in channel. */
int rooms_leave(rooms_t *r, session_t *s, pd_str_t channel, engine_done_cb done, void *arg);

/* Replaces the member's metadata; PD_ENOTFOUND when not in channel. */
int rooms_update(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t metadata, engine_done_cb done,
                 void *arg);

/* Relays a cursor (payload: JSON text) or typing signal to the other members, throttled.
 * PD_ENOTFOUND when the connection is not in channel. */
int rooms_signal(rooms_t *r, session_t *s, pd_str_t channel, int signal, pd_str_t payload);

/* A backend's view (the HTTP API): every member, whoever asks. */
int rooms_members(rooms_t *r, pd_str_t channel, pd_str_t after, uint32_t limit, rooms_members_cb cb,
                  void *arg);
int rooms_count(rooms_t *r, pd_str_t channel, rooms_count_cb cb, void *arg);

/* A connection's view: PD_ENOTFOUND unless the session's connection is in channel; the
 * members hiding from the session's user are left out (the count is every member's). */
int rooms_session_members(rooms_t *r, session_t *s, pd_str_t channel, pd_str_t after,
                          uint32_t limit, rooms_members_cb cb, void *arg);
int rooms_session_count(rooms_t *r, session_t *s, pd_str_t channel, rooms_count_cb cb, void *arg);

/* The session's connection now runs on claims (a refreshed token): it leaves, at once, every
 * room they no longer allow (others see member_left with reason "revoked" when it was the
 * member's last connection there), and is sent channel_left {channel, user_id, reason:
 * "revoked"} for each. */
void rooms_revoke(rooms_t *r, session_t *s, const auth_claims_t *claims);

/* The session's connection is gone: it leaves its rooms (after the grace window unless how
 * is ENGINE_END_TIMEOUT). Call before engine_session_close. */
void rooms_session_close(rooms_t *r, session_t *s, int how);

/* Ends every lingering room connection now (shutdown). */
void rooms_flush_lingering(rooms_t *r);

/* Rooms with local connections, and (connection, room) links. */
uint64_t rooms_local_count(const rooms_t *r);

#endif
