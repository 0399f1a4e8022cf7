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
static void put_presence(jsonw_t *w, const pd_presence_t *p) {
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
    put_presence(&w, p);
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
        put_presence(&w, &ps[i]);
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
