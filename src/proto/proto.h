/* The wire protocol (docs/PROTOCOL.md, version PROTO_VERSION): JSON messages decoded and
 * validated into C structs, and replies encoded into sealed WebSocket frames.
 *
 * Decoding uses cJSON for the grammar and adds the strictness cJSON lacks, so that validation
 * never depends on the JSON library: trailing bytes, duplicate keys (at any depth) and the
 * escape \u0000 are refused; keys match case-sensitively; unknown types and unknown fields
 * are errors; every string is checked for length and control characters. A message that
 * fails validation changes nothing: the caller answers with proto_encode_error.
 *
 * The hot message, a heartbeat, is recognised byte for byte in its canonical form
 * ({"type":"heartbeat","device":"<the session's device>"}) without building a tree: any
 * other spelling takes the full path and means the same.
 */
#ifndef PD_PROTO_H
#define PD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "presence/presence.h"
#include "util/obuf.h"

#define PROTO_VERSION      1
#define PROTO_ID_MAX       64   /* bytes of a string request id */
#define PROTO_CHANNEL_MAX  200  /* bytes of a channel name */
#define PROTO_METADATA_MAX 2048 /* bytes of a member's metadata object, as re-encoded */
#define PROTO_CURSOR_MAX   512  /* bytes of a cursor payload, as re-encoded */
#define PROTO_PAGE_MAX     1000 /* members per channel_members page */
#define PROTO_PAGE_DEFAULT 100

#define PROTO_TYPE_MAP(XX)                                                                         \
    XX(PING, "ping")                                                                               \
    XX(SET_ONLINE, "set_online")                                                                   \
    XX(HEARTBEAT, "heartbeat")                                                                     \
    XX(SET_STATUS, "set_status")                                                                   \
    XX(SET_OFFLINE, "set_offline")                                                                 \
    XX(ACTIVITY, "activity")                                                                       \
    XX(SUBSCRIBE, "subscribe")                                                                     \
    XX(UNSUBSCRIBE, "unsubscribe")                                                                 \
    XX(GET_PRESENCE, "get_presence")                                                               \
    XX(JOIN, "join")                                                                               \
    XX(LEAVE, "leave")                                                                             \
    XX(UPDATE, "update")                                                                           \
    XX(CURSOR, "cursor")                                                                           \
    XX(TYPING, "typing")                                                                           \
    XX(CHANNEL_MEMBERS, "channel_members")                                                         \
    XX(CHANNEL_COUNT, "channel_count")                                                             \
    XX(SET_VISIBILITY, "set_visibility")                                                           \
    XX(ADD_CONTACT, "add_contact")                                                                 \
    XX(REMOVE_CONTACT, "remove_contact")                                                           \
    XX(BLOCK, "block")                                                                             \
    XX(UNBLOCK, "unblock")                                                                         \
    XX(GET_PRIVACY, "get_privacy")                                                                 \
    XX(REFRESH, "refresh")

enum proto_type {
#define PROTO_TYPE_ENUM(name, str) PROTO_##name,
    PROTO_TYPE_MAP(PROTO_TYPE_ENUM)
#undef PROTO_TYPE_ENUM
        PROTO_TYPE_COUNT
};

/* Error codes sent in {"type":"error","code":...}; the list of docs/PROTOCOL.md. */
#define PROTO_ERROR_MAP(XX)                                                                        \
    XX(BAD_JSON, "bad_json", "not one valid JSON text")                                            \
    XX(BAD_MESSAGE, "bad_message", "the message is not a JSON object")                             \
    XX(MISSING_TYPE, "missing_type", "no string field \"type\"")                                   \
    XX(UNKNOWN_TYPE, "unknown_type", "no message has this type")                                   \
    XX(UNKNOWN_FIELD, "unknown_field", "a field this message does not have")                       \
    XX(BAD_FIELD, "bad_field", "a field of the wrong JSON type or out of range")                   \
    XX(BAD_STATUS, "bad_status", "a status other than online, away, busy or offline")              \
    XX(TOO_LONG, "too_long", "a string longer than its limit")                                     \
    XX(BAD_VALUE, "bad_value", "a string with control characters or empty where not allowed")      \
    XX(BAD_USER_ID, "bad_user_id", "a user id that is empty or has control characters")            \
    XX(BAD_ID, "bad_id", "a request id that is not a string or an integer, or too long")           \
    XX(TOO_MANY_IDS, "too_many_ids", "more user ids in one request than allowed")                  \
    XX(SUBSCRIPTION_LIMIT, "subscription_limit", "more watched users than a connection may have")  \
    XX(SESSION_LIMIT, "session_limit", "the user has too many live sessions")                      \
    XX(NOT_PRESENT, "not_present", "the connection has not announced presence (set_online)")       \
    XX(BAD_CHANNEL, "bad_channel", "a channel name empty, too long or with other bytes")           \
    XX(NOT_MEMBER, "not_member", "the connection is not in the channel")                           \
    XX(ROOM_LIMIT, "room_limit", "the connection is in as many channels as allowed")               \
    XX(ROOM_FULL, "room_full", "the channel has as many members as allowed")                       \
    XX(FORBIDDEN, "forbidden", "the connection's token does not allow this channel")               \
    XX(BAD_VISIBILITY, "bad_visibility", "a visibility other than everyone, contacts or nobody")   \
    XX(LIST_FULL, "list_full", "the contact or block list holds as many users as allowed")         \
    XX(BAD_TOKEN, "bad_token", "a token that does not verify, or has expired")                     \
    XX(WRONG_USER, "wrong_user", "a token for another user than the connection's")                 \
    XX(RATE_LIMITED, "rate_limited", "more messages than the connection's rate allows: slow down") \
    XX(UNAVAILABLE, "unavailable", "the shared store (Redis) cannot be reached: retry later")      \
    XX(INTERNAL, "internal", "the server could not complete the request")

enum proto_error_code {
#define PROTO_ERR_ENUM(name, str, doc) PROTO_E_##name,
    PROTO_ERROR_MAP(PROTO_ERR_ENUM)
#undef PROTO_ERR_ENUM
        PROTO_E_COUNT
};

const char *proto_type_name(int type);
const char *proto_error_name(int code);

/* A request id, echoed in the answer. */
typedef struct proto_id {
    uint8_t kind; /* PROTO_ID_NONE, _STR or _INT */
    int64_t i;
    char s[PROTO_ID_MAX + 1];
} proto_id_t;
enum { PROTO_ID_NONE, PROTO_ID_STR, PROTO_ID_INT };

/* An optional, nullable string field. */
typedef struct proto_opt {
    uint8_t state; /* PROTO_ABSENT, PROTO_NULL or PROTO_SET */
    pd_str_t v;    /* when PROTO_SET: points into the message (valid until proto_msg_free) */
} proto_opt_t;
enum { PROTO_ABSENT, PROTO_NULL, PROTO_SET };

typedef struct proto_msg {
    uint8_t type;     /* enum proto_type */
    int8_t status;    /* set_status / set_online: enum pd_status, -1 when absent */
    int8_t auto_away; /* -1 absent, 0 false, 1 true */
    proto_id_t id;
    proto_opt_t device, custom_status, activity;
    double custom_status_expires_in; /* seconds, 0 = none */
    pd_str_t *ids;                   /* subscribe, unsubscribe, get_presence: the user ids */
    uint32_t nids;
    pd_str_t channel;  /* room messages */
    pd_str_t metadata; /* join, update: compact JSON object text (owned); .s NULL if absent */
    pd_str_t payload;  /* cursor: compact JSON text of the position (owned) */
    pd_str_t after;    /* channel_members: the pagination cursor; .s NULL if absent */
    uint32_t limit;    /* channel_members: page size */
    int8_t typing;     /* typing: 0 or 1 */
    int8_t visibility; /* set_visibility: enum pd_visibility */
    pd_str_t user_id;  /* add_contact, remove_contact, block, unblock */
    pd_str_t token;    /* refresh */
    void *root;        /* the parsed tree (cJSON); strings above point into it */
} proto_msg_t;

typedef struct proto_limits {
    uint32_t max_ids; /* ids in one request */
} proto_limits_t;

typedef struct proto_error {
    uint8_t code; /* enum proto_error_code */
    char message[200];
} proto_error_t;

/* Decodes and validates one message (data may be modified). Returns 0 with *m filled (free
 * it with proto_msg_free), or PD_EPROTO with *err set; m->id is then set when the request id
 * could be read, so the error can carry it. Nothing is left to free after an error. */
int proto_decode(const uint8_t *data, size_t len, const proto_limits_t *lim, proto_msg_t *m,
                 proto_error_t *err);
void proto_msg_free(proto_msg_t *m);

/* The strict part of decoding on its own: one JSON object, no trailing bytes, no duplicate
 * keys at any depth, no \u0000 or raw control bytes in strings, no byte order mark, and only
 * space, tab, CR and LF between tokens (RFC 8259). 0 with *root set (a cJSON
 * tree: free with cJSON_Delete), or PD_EPROTO with *err set (bad_json, bad_message). */
int proto_json_parse(const uint8_t *data, size_t len, void **root, proto_error_t *err);

/* Writers of the shared objects, for other encoders (the HTTP API). */
struct jsonw;
void proto_put_presence(struct jsonw *w, const pd_presence_t *p);
void proto_put_member(struct jsonw *w, const pd_member_t *m);

/* True when data is exactly {"type":"heartbeat","device":"<device>"} or {"type":"heartbeat"}
 * (device NULL accepts only the latter's device-less form too), or, when id is not NULL, one
 * of these with ,"id":"<id>" or ,"id":<integer> last (an id of letters, digits and _-.:, an
 * integer of at most 15 digits without a leading zero): then *id is set (else its kind is
 * PROTO_ID_NONE). Exactly what proto_decode would make of the same bytes. */
bool proto_is_canonical_heartbeat(const uint8_t *data, size_t len, const char *device,
                                  size_t device_len, proto_id_t *id);

/* --- Encoders: each returns a sealed text frame (refs = 1), or NULL when out of memory. --- */

/* {"type":"presence_update","presence":{...}} */
pd_obuf_t *proto_encode_presence_update(const pd_presence_t *p);
/* {"type":"presence_update","presence":{"user_id":..,"status":"offline"}}: all a watcher
 * who lost permission to see the user is told. */
pd_obuf_t *proto_encode_presence_hidden(pd_str_t user_id);
/* {"type":TYPE,"id":..,"presences":{"<id>":{...},...}} for initial_presence and
 * presence_result. */
pd_obuf_t *proto_encode_presences(const char *type, const proto_id_t *id, const pd_presence_t *ps,
                                  size_t n);
/* {"type":"ack","id":..} */
pd_obuf_t *proto_encode_ack(const proto_id_t *id);
/* {"type":"pong"} (with the id when given) */
pd_obuf_t *proto_encode_pong(const proto_id_t *id);
/* {"type":"error","id":..,"code":..,"message":..} */
pd_obuf_t *proto_encode_error(const proto_id_t *id, int code, const char *message);
/* True when name is a valid channel name: 1..PROTO_CHANNEL_MAX bytes of [A-Za-z0-9_:.@/-]. */
bool proto_channel_valid(const char *name, size_t len);

/* The JSON text of a member object (payload only, unsealed), for batching into deltas. */
pd_obuf_t *proto_member_json(const pd_member_t *m);

/* {"type":"channel_state","id":..,"channel":..,"mode":..,"count":N,"members":[...],
 * "next_cursor":..|null} answering join. */
pd_obuf_t *proto_encode_channel_state(const proto_id_t *id, pd_str_t channel, const char *mode,
                                      const pd_member_t *ms, size_t n, uint32_t count,
                                      pd_str_t next_cursor);
/* {"type":"channel_members",...} answering channel_members: same fields but mode. */
pd_obuf_t *proto_encode_channel_members(const proto_id_t *id, pd_str_t channel,
                                        const pd_member_t *ms, size_t n, uint32_t count,
                                        pd_str_t next_cursor);
/* {"type":"channel_count","id":..,"channel":..,"count":N} */
pd_obuf_t *proto_encode_channel_count(const proto_id_t *id, pd_str_t channel, uint32_t count);
/* {"type":TYPE,"channel":..,"member":{...},"count":N}: member_joined, member_updated. */
pd_obuf_t *proto_encode_member_event(const char *type, pd_str_t channel, const pd_member_t *m,
                                     uint32_t count);
/* {"type":"member_left","channel":..,"user_id":..,"reason":..,"count":N} */
pd_obuf_t *proto_encode_member_left(pd_str_t channel, pd_str_t user, const char *reason,
                                    uint32_t count);
/* {"type":"channel_delta","channel":..,"joined":[members],"left":[ids],"updated":[members],
 * "count":N}; members given as JSON texts (proto_member_json). more (NULL: none) counts the
 * joined, left and updated entries left out of the lists: "joined_more" etc. when not 0. */
pd_obuf_t *proto_encode_channel_delta(pd_str_t channel, const pd_str_t *joined, size_t njoined,
                                      const pd_str_t *left, size_t nleft, const pd_str_t *updated,
                                      size_t nupdated, const uint32_t more[3], uint32_t count);
/* {"type":TYPE,"channel":..,"user_id":..,KEY:<json>}: cursor and typing relays. */
pd_obuf_t *proto_encode_signal(const char *type, pd_str_t channel, pd_str_t user, const char *key,
                               pd_str_t json);

/* {"type":"privacy","id":..,"visibility":..,"contacts":[...],"blocked":[...]} */
pd_obuf_t *proto_encode_privacy(const proto_id_t *id, const char *visibility,
                                const pd_str_t *contacts, size_t ncontacts, const pd_str_t *blocked,
                                size_t nblocked);

/* {"type":"welcome","protocol":1,"user_id":..,"session_id":..,"heartbeat_interval":ms,
 * "heartbeat_ttl":ms} sent once a connection opens. */
pd_obuf_t *proto_encode_welcome(pd_str_t user_id, uint64_t session_id, uint32_t heartbeat_ttl_ms);

#endif
