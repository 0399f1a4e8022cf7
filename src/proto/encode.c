/* Encoding of server messages straight into sealed WebSocket frames. */
#include <string.h>

#include "proto/proto.h"
#include "util/jsonw.h"
#include "ws/frame.h"

static pd_obuf_t *seal(jsonw_t *w) {
    pd_obuf_t *b = jw_finish(w);
    if (b)
        ws_frame_seal(b, WS_OP_TEXT);
    return b;
}

static void put_id(jsonw_t *w, const proto_id_t *id) {
    if (!id || id->kind == PROTO_ID_NONE)
        return;
    jw_key(w, "id");
    if (id->kind == PROTO_ID_INT)
        jw_int(w, id->i);
    else
        jw_cstr(w, id->s);
}

/* The presence object: a superset of the seed's PresenceInfo.to_dict(). */
void proto_put_presence(jsonw_t *w, const pd_presence_t *p) {
    jw_obj(w);
    jw_key(w, "user_id");
    jw_str(w, p->user_id, p->user_id_len);
    jw_key(w, "status");
    jw_cstr(w, pd_status_name(p->status));
    jw_key(w, "last_seen");
    jw_time(w, p->last_seen);
    jw_key(w, "device");
    jw_cstr(w, p->device ? p->device : "");
    jw_key(w, "devices");
    jw_arr(w);
    for (uint32_t i = 0; i < p->ndevices; i++)
        jw_cstr(w, p->devices[i]);
    jw_arr_end(w);
    jw_key(w, "custom_status");
    jw_cstr(w, p->custom_status);
    jw_key(w, "activity");
    jw_cstr(w, p->activity);
    jw_obj_end(w);
}

pd_obuf_t *proto_encode_presence_update(const pd_presence_t *p) {
    jsonw_t w;
    jw_init(&w, 192 + p->user_id_len);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "presence_update");
    jw_key(&w, "presence");
    proto_put_presence(&w, p);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_presence_hidden(pd_str_t user_id) {
    jsonw_t w;
    jw_init(&w, 96 + user_id.len);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "presence_update");
    jw_key(&w, "presence");
    jw_obj(&w);
    jw_key(&w, "user_id");
    jw_str(&w, user_id.s, user_id.len);
    jw_key(&w, "status");
    jw_cstr(&w, "offline");
    jw_obj_end(&w);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_presences(const char *type, const proto_id_t *id, const pd_presence_t *ps,
                                  size_t n) {
    jsonw_t w;
    jw_init(&w, 64 + n * 200);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, type);
    put_id(&w, id);
    jw_key(&w, "presences");
    jw_obj(&w);
    for (size_t i = 0; i < n; i++) {
        jw_keyn(&w, ps[i].user_id, ps[i].user_id_len);
        proto_put_presence(&w, &ps[i]);
    }
    jw_obj_end(&w);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_ack(const proto_id_t *id) {
    jsonw_t w;
    jw_init(&w, 96);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "ack");
    put_id(&w, id);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_pong(const proto_id_t *id) {
    jsonw_t w;
    jw_init(&w, 96);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "pong");
    put_id(&w, id);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_error(const proto_id_t *id, int code, const char *message) {
    jsonw_t w;
    jw_init(&w, 128 + strlen(message));
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "error");
    put_id(&w, id);
    jw_key(&w, "code");
    jw_cstr(&w, proto_error_name(code));
    jw_key(&w, "message");
    jw_cstr(&w, message);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_welcome(pd_str_t user_id, uint64_t session_id, uint32_t heartbeat_ttl_ms) {
    jsonw_t w;
    jw_init(&w, 160 + user_id.len);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "welcome");
    jw_key(&w, "protocol");
    jw_int(&w, PROTO_VERSION);
    jw_key(&w, "user_id");
    jw_str(&w, user_id.s, user_id.len);
    jw_key(&w, "session_id");
    jw_int(&w, (int64_t)session_id);
    /* Clients heartbeat at a third of the TTL, so two may be lost before expiry. */
    jw_key(&w, "heartbeat_interval");
    jw_int(&w, heartbeat_ttl_ms / 3);
    jw_key(&w, "heartbeat_ttl");
    jw_int(&w, heartbeat_ttl_ms);
    jw_obj_end(&w);
    return seal(&w);
}

/* --- Rooms --- */

void proto_put_member(jsonw_t *w, const pd_member_t *m) {
    jw_obj(w);
    jw_key(w, "user_id");
    jw_str(w, m->user_id, m->user_id_len);
    jw_key(w, "joined_at");
    jw_time(w, m->joined_at);
    jw_key(w, "last_seen");
    jw_time(w, m->last_seen);
    jw_key(w, "metadata");
    /* Our own compact re-encoding of a validated object (proto_decode), never client bytes. */
    jw_raw(w, m->metadata, m->metadata_len);
    jw_key(w, "devices");
    jw_arr(w);
    for (uint32_t i = 0; i < m->ndevices; i++)
        jw_cstr(w, m->devices[i]);
    jw_arr_end(w);
    jw_obj_end(w);
}

pd_obuf_t *proto_member_json(const pd_member_t *m) {
    jsonw_t w;
    jw_init(&w, 128 + m->user_id_len + m->metadata_len);
    proto_put_member(&w, m);
    return jw_finish(&w);
}

static void put_head(jsonw_t *w, const char *type, const proto_id_t *id, pd_str_t channel) {
    jw_obj(w);
    jw_key(w, "type");
    jw_cstr(w, type);
    put_id(w, id);
    jw_key(w, "channel");
    jw_str(w, channel.s, channel.len);
}

static pd_obuf_t *members_page(const char *type, const proto_id_t *id, pd_str_t channel,
                               const char *mode, const pd_member_t *ms, size_t n, uint32_t count,
                               pd_str_t next_cursor) {
    size_t hint = 128 + channel.len;
    for (size_t i = 0; i < n; i++)
        hint += 128 + ms[i].user_id_len + ms[i].metadata_len;
    jsonw_t w;
    jw_init(&w, hint);
    put_head(&w, type, id, channel);
    if (mode) {
        jw_key(&w, "mode");
        jw_cstr(&w, mode);
    }
    jw_key(&w, "count");
    jw_int(&w, count);
    jw_key(&w, "members");
    jw_arr(&w);
    for (size_t i = 0; i < n; i++)
        proto_put_member(&w, &ms[i]);
    jw_arr_end(&w);
    jw_key(&w, "next_cursor");
    if (next_cursor.s)
        jw_str(&w, next_cursor.s, next_cursor.len);
    else
        jw_null(&w);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_channel_state(const proto_id_t *id, pd_str_t channel, const char *mode,
                                      const pd_member_t *ms, size_t n, uint32_t count,
                                      pd_str_t next_cursor) {
    return members_page("channel_state", id, channel, mode, ms, n, count, next_cursor);
}

pd_obuf_t *proto_encode_channel_members(const proto_id_t *id, pd_str_t channel,
                                        const pd_member_t *ms, size_t n, uint32_t count,
                                        pd_str_t next_cursor) {
    return members_page("channel_members", id, channel, NULL, ms, n, count, next_cursor);
}

pd_obuf_t *proto_encode_channel_count(const proto_id_t *id, pd_str_t channel, uint32_t count) {
    jsonw_t w;
    jw_init(&w, 96 + channel.len);
    put_head(&w, "channel_count", id, channel);
    jw_key(&w, "count");
    jw_int(&w, count);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_member_event(const char *type, pd_str_t channel, const pd_member_t *m,
                                     uint32_t count) {
    jsonw_t w;
    jw_init(&w, 192 + channel.len + m->user_id_len + m->metadata_len);
    put_head(&w, type, NULL, channel);
    jw_key(&w, "member");
    proto_put_member(&w, m);
    jw_key(&w, "count");
    jw_int(&w, count);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_member_left(pd_str_t channel, pd_str_t user, const char *reason,
                                    uint32_t count) {
    jsonw_t w;
    jw_init(&w, 128 + channel.len + user.len);
    put_head(&w, "member_left", NULL, channel);
    jw_key(&w, "user_id");
    jw_str(&w, user.s, user.len);
    jw_key(&w, "reason");
    jw_cstr(&w, reason);
    jw_key(&w, "count");
    jw_int(&w, count);
    jw_obj_end(&w);
    return seal(&w);
}

static void put_raw_list(jsonw_t *w, const char *key, const pd_str_t *items, size_t n, bool raw) {
    jw_key(w, key);
    jw_arr(w);
    for (size_t i = 0; i < n; i++) {
        if (raw)
            jw_raw(w, items[i].s, items[i].len);
        else
            jw_str(w, items[i].s, items[i].len);
    }
    jw_arr_end(w);
}

pd_obuf_t *proto_encode_channel_delta(pd_str_t channel, const pd_str_t *joined, size_t njoined,
                                      const pd_str_t *left, size_t nleft, const pd_str_t *updated,
                                      size_t nupdated, const uint32_t more[3], uint32_t count) {
    size_t hint = 192 + channel.len;
    for (size_t i = 0; i < njoined; i++)
        hint += joined[i].len + 1;
    for (size_t i = 0; i < nleft; i++)
        hint += left[i].len + 3;
    for (size_t i = 0; i < nupdated; i++)
        hint += updated[i].len + 1;
    jsonw_t w;
    jw_init(&w, hint);
    put_head(&w, "channel_delta", NULL, channel);
    put_raw_list(&w, "joined", joined, njoined, true);
    put_raw_list(&w, "left", left, nleft, false);
    put_raw_list(&w, "updated", updated, nupdated, true);
    static const char *const more_keys[3] = {"joined_more", "left_more", "updated_more"};
    for (int i = 0; more && i < 3; i++) {
        if (more[i]) {
            jw_key(&w, more_keys[i]);
            jw_int(&w, more[i]);
        }
    }
    jw_key(&w, "count");
    jw_int(&w, count);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_signal(const char *type, pd_str_t channel, pd_str_t user, const char *key,
                               pd_str_t json) {
    jsonw_t w;
    jw_init(&w, 96 + channel.len + user.len + json.len);
    put_head(&w, type, NULL, channel);
    jw_key(&w, "user_id");
    jw_str(&w, user.s, user.len);
    jw_key(&w, key);
    jw_raw(&w, json.s, json.len);
    jw_obj_end(&w);
    return seal(&w);
}

pd_obuf_t *proto_encode_privacy(const proto_id_t *id, const char *visibility,
                                const pd_str_t *contacts, size_t ncontacts, const pd_str_t *blocked,
                                size_t nblocked) {
    size_t hint = 128;
    for (size_t i = 0; i < ncontacts; i++)
        hint += contacts[i].len + 3;
    for (size_t i = 0; i < nblocked; i++)
        hint += blocked[i].len + 3;
    jsonw_t w;
    jw_init(&w, hint);
    jw_obj(&w);
    jw_key(&w, "type");
    jw_cstr(&w, "privacy");
    put_id(&w, id);
    jw_key(&w, "visibility");
    jw_cstr(&w, visibility);
    put_raw_list(&w, "contacts", contacts, ncontacts, false);
    put_raw_list(&w, "blocked", blocked, nblocked, false);
    jw_obj_end(&w);
    return seal(&w);
}
