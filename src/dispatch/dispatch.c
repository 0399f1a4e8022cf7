#include "dispatch/dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/request.h"
#include "proto/proto.h"
#include "util/error.h"
#include "ws/frame.h"

struct dispatch_counters {
    uint64_t *in[PROTO_TYPE_COUNT];
    uint64_t *errors[PROTO_E_COUNT];
    uint64_t *auth_refused;
};

struct dispatch {
    dispatch_config_t cfg;
    engine_t *engine;
    rooms_t *rooms;
    pd_clock_t clock;
    pd_log_t *log;
    proto_limits_t lim;
    struct dispatch_counters n;
};

/* An answer owed to a request whose engine call may complete later. */
struct reply {
    dispatch_t *d;
    conn_t *c;
    proto_id_t id;
    uint8_t type;
    char channel[PROTO_CHANNEL_MAX];
    uint8_t channel_len;
};

static uint64_t dummy_counter;

/* --- The engine's view of connections --- */

static int client_send(void *client, pd_obuf_t *frame) {
    return conn_send(client, frame);
}
static int client_send_coalesced(void *client, pd_obuf_t *frame, void **slot) {
    return conn_send_coalesced(client, frame, (conn_slot_t **)slot);
}
static void client_unslot(void **slot) {
    conn_unslot((conn_slot_t **)slot);
}
static void client_close(void *client, uint16_t code, const char *reason) {
    conn_close_ws(client, code, reason);
}
static uint64_t client_last_rx(void *client) {
    return conn_last_rx(client);
}

const engine_client_ops_t dispatch_client_ops = {
    .send = client_send,
    .send_coalesced = client_send_coalesced,
    .unslot = client_unslot,
    .close = client_close,
    .last_rx_ms = client_last_rx,
};

const engine_codec_t dispatch_codec = {
    .presence_update = proto_encode_presence_update,
    .presence_hidden = proto_encode_presence_hidden,
};

const rooms_codec_t dispatch_rooms_codec = {
    .member_event = proto_encode_member_event,
    .member_left = proto_encode_member_left,
    .member_json = proto_member_json,
    .delta = proto_encode_channel_delta,
    .signal = proto_encode_signal,
};

/* --- Answers --- */

static void send_frame(conn_t *c, pd_obuf_t *f) {
    if (f) {
        conn_send(c, f);
        pd_obuf_release(f);
    }
}

static void send_error(dispatch_t *d, conn_t *c, const proto_id_t *id, int code,
                       const char *message) {
    (*d->n.errors[code])++;
    send_frame(c, proto_encode_error(id, code, message));
}

static void send_ack(conn_t *c, const proto_id_t *id) {
    if (id->kind != PROTO_ID_NONE)
        send_frame(c, proto_encode_ack(id));
}

static struct reply *reply_new(dispatch_t *d, conn_t *c, const proto_msg_t *m) {
    struct reply *r = malloc(sizeof(*r));
    if (r) {
        r->d = d;
        r->c = c;
        r->id = m->id;
        r->type = m->type;
        r->channel_len = (uint8_t)m->channel.len;
        if (m->channel.len)
            memcpy(r->channel, m->channel.s, m->channel.len);
    }
    return r;
}

static void engine_error(dispatch_t *d, conn_t *c, const proto_id_t *id, int type, int err) {
    char msg[128];
    if (err == PD_ENOTFOUND) {
        send_error(d, c, id, PROTO_E_NOT_MEMBER, "the connection has not joined this channel");
    } else if (err == PD_EFULL) {
        send_error(d, c, id, PROTO_E_ROOM_FULL, "the channel has as many members as allowed");
    } else if (err == PD_ELIMIT && type == PROTO_JOIN) {
        send_error(d, c, id, PROTO_E_ROOM_LIMIT,
                   "the connection is in as many channels as allowed");
    } else if (err == PD_ELIMIT && type == PROTO_SUBSCRIBE) {
        send_error(d, c, id, PROTO_E_SUBSCRIPTION_LIMIT,
                   "the connection would watch more users than allowed");
    } else if (err == PD_ELIMIT) {
        snprintf(msg, sizeof(msg), "the user already has %d live sessions",
                 PD_SESSIONS_PER_USER_MAX);
        send_error(d, c, id, PROTO_E_SESSION_LIMIT, msg);
    } else {
        snprintf(msg, sizeof(msg), "%s failed: %s", proto_type_name(type), pd_strerror(err));
        send_error(d, c, id, PROTO_E_INTERNAL, msg);
    }
}

static void on_done(void *arg, int err) {
    struct reply *r = arg;
    if (err == PD_ECLOSED) {
        /* The connection went away meanwhile: nobody to answer. */
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        send_ack(r->c, &r->id);
    }
    free(r);
}

static void on_presences(void *arg, int err, const pd_presence_t *ps, size_t n) {
    struct reply *r = arg;
    if (err == PD_ECLOSED) {
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        const char *type = r->type == PROTO_SUBSCRIBE ? "initial_presence" : "presence_result";
        send_frame(r->c, proto_encode_presences(type, &r->id, ps, n));
    }
    free(r);
}

static pd_str_t reply_channel(const struct reply *r) {
    return (pd_str_t){r->channel, r->channel_len};
}

static void on_state(void *arg, int err, const char *mode, const pd_member_t *ms, size_t n,
                     uint32_t count, bool more) {
    struct reply *r = arg;
    if (err == PD_ECLOSED) {
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        pd_str_t next =
            more && n ? (pd_str_t){ms[n - 1].user_id, ms[n - 1].user_id_len} : (pd_str_t){0};
        send_frame(r->c,
                   proto_encode_channel_state(&r->id, reply_channel(r), mode, ms, n, count, next));
    }
    free(r);
}

static void on_members(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                       bool more) {
    struct reply *r = arg;
    if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        pd_str_t next =
            more && n ? (pd_str_t){ms[n - 1].user_id, ms[n - 1].user_id_len} : (pd_str_t){0};
        send_frame(r->c,
                   proto_encode_channel_members(&r->id, reply_channel(r), ms, n, count, next));
    }
    free(r);
}

static void on_count(void *arg, int err, uint32_t count) {
    struct reply *r = arg;
    if (err)
        engine_error(r->d, r->c, &r->id, r->type, err);
    else
        send_frame(r->c, proto_encode_channel_count(&r->id, reply_channel(r), count));
    free(r);
}

/* Room requests; each either completes through a callback that frees r, or fails here. */
static void do_room(dispatch_t *d, conn_t *c, session_t *s, const proto_msg_t *m) {
    struct reply *r = reply_new(d, c, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = 0;
    switch (m->type) {
    case PROTO_JOIN:
        rc = rooms_join(d->rooms, s, m->channel, m->metadata, on_state, r);
        break;
    case PROTO_LEAVE:
        rc = rooms_leave(d->rooms, s, m->channel, on_done, r);
        break;
    case PROTO_UPDATE:
        rc = rooms_update(d->rooms, s, m->channel, m->metadata, on_done, r);
        break;
    case PROTO_CHANNEL_MEMBERS:
        rc = rooms_members(d->rooms, m->channel, m->after, m->limit, on_members, r);
        break;
    case PROTO_CHANNEL_COUNT:
        rc = rooms_count(d->rooms, m->channel, on_count, r);
        break;
    case PROTO_CURSOR:
    case PROTO_TYPING:
        rc = m->type == PROTO_CURSOR
                 ? rooms_signal(d->rooms, s, m->channel, STORE_SIGNAL_CURSOR, m->payload)
                 : rooms_signal(d->rooms, s, m->channel, STORE_SIGNAL_TYPING,
                                m->typing ? (pd_str_t){"true", 4} : (pd_str_t){"false", 5});
        if (rc == 0)
            send_ack(c, &m->id);
        free(r);
        if (rc)
            engine_error(d, c, &m->id, m->type, rc);
        return;
    }
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        free(r);
    }
}

/* --- Requests --- */

static store_text_t text_field(const proto_opt_t *o) {
    store_text_t t = {.op = STORE_KEEP};
    if (o->state == PROTO_NULL)
        t.op = STORE_CLEAR;
    else if (o->state == PROTO_SET)
        t = (store_text_t){.op = STORE_SET, .s = o->v.s, .len = o->v.len};
    return t;
}

static void do_update(dispatch_t *d, conn_t *c, session_t *s, const proto_msg_t *m) {
    engine_update_t u = {
        .status = m->status, .announce = m->type == PROTO_SET_ONLINE, .auto_away = m->auto_away};
    if (m->device.state == PROTO_SET)
        u.device = m->device.v;
    u.fields.custom_status = text_field(&m->custom_status);
    u.fields.activity = text_field(&m->activity);
    if (m->custom_status_expires_in > 0)
        u.fields.custom_status_expires = pd_clock_wall(&d->clock) + m->custom_status_expires_in;
    struct reply *r = reply_new(d, c, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = engine_update(s, &u, on_done, r);
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        free(r);
    }
}

static void do_ids(dispatch_t *d, conn_t *c, session_t *s, const proto_msg_t *m) {
    struct reply *r = reply_new(d, c, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = m->type == PROTO_SUBSCRIBE ? engine_subscribe(s, m->ids, m->nids, on_presences, r)
                                        : engine_get_presence(s, m->ids, m->nids, on_presences, r);
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        free(r);
    }
}

static void handle(dispatch_t *d, conn_t *c, session_t *s, const proto_msg_t *m) {
    switch (m->type) {
    case PROTO_PING:
        send_frame(c, proto_encode_pong(&m->id));
        break;
    case PROTO_SET_ONLINE:
    case PROTO_SET_STATUS:
        do_update(d, c, s, m);
        break;
    case PROTO_HEARTBEAT:
        engine_heartbeat(s, m->device.state == PROTO_SET ? m->device.v : (pd_str_t){0});
        send_ack(c, &m->id);
        break;
    case PROTO_SET_OFFLINE: {
        struct reply *r = reply_new(d, c, m);
        int rc = r ? engine_set_offline(s, on_done, r) : PD_ENOMEM;
        if (rc) {
            engine_error(d, c, &m->id, m->type, rc);
            free(r);
        }
        break;
    }
    case PROTO_ACTIVITY:
        engine_activity(s);
        send_ack(c, &m->id);
        break;
    case PROTO_SUBSCRIBE:
    case PROTO_GET_PRESENCE:
        do_ids(d, c, s, m);
        break;
    case PROTO_UNSUBSCRIBE:
        engine_unsubscribe(s, m->ids, m->nids);
        send_ack(c, &m->id);
        break;
    case PROTO_JOIN:
    case PROTO_LEAVE:
    case PROTO_UPDATE:
    case PROTO_CURSOR:
    case PROTO_TYPING:
    case PROTO_CHANNEL_MEMBERS:
    case PROTO_CHANNEL_COUNT:
        do_room(d, c, s, m);
        break;
    }
}

/* --- Connection callbacks --- */

static int on_upgrade(void *ctx, conn_t *c, const http_request_t *req, void **app) {
    dispatch_t *d = ctx;
    char user[PD_USER_ID_MAX + 1];
    char peer[64];
    if (!d->cfg.dev_auth) {
        (*d->n.auth_refused)++;
        PD_INFO(d->log, "auth", "conn %llu (%s): refused: no authentication is configured",
                (unsigned long long)conn_id(c), conn_peer(c, peer, sizeof(peer)));
        return 401;
    }
    int n = http_query_get(req->query, req->query_len, "user", user, sizeof(user));
    if (n < 0 || !pd_user_id_valid(user, (size_t)n)) {
        (*d->n.auth_refused)++;
        PD_INFO(d->log, "auth", "conn %llu (%s): refused: %s", (unsigned long long)conn_id(c),
                conn_peer(c, peer, sizeof(peer)),
                n == PD_ENOTFOUND ? "no ?user= (dev auth)" : "invalid ?user= (dev auth)");
        return 401;
    }
    session_t *s = engine_session_open(d->engine, c, (pd_str_t){user, (size_t)n});
    if (!s)
        return 503;
    *app = s;
    return 0;
}

static void on_open(void *ctx, conn_t *c, void *app) {
    dispatch_t *d = ctx;
    session_t *s = app;
    send_frame(c, proto_encode_welcome(engine_session_user(s), engine_session_id(s),
                                       d->cfg.heartbeat_ttl_ms));
}

static void on_message(void *ctx, conn_t *c, void *app, uint8_t *data, size_t len) {
    dispatch_t *d = ctx;
    session_t *s = app;
    /* The hot path: a canonical heartbeat of a present session is liveness only, which the
     * connection has already counted. */
    size_t dev_len = 0;
    const char *dev = engine_session_device(s, &dev_len);
    if (proto_is_canonical_heartbeat(data, len, dev, dev_len)) {
        (*d->n.in[PROTO_HEARTBEAT])++;
        engine_heartbeat(s, (pd_str_t){0});
        return;
    }
    proto_msg_t m;
    proto_error_t err;
    if (proto_decode(data, len, &d->lim, &m, &err) != 0) {
        send_error(d, c, &m.id, err.code, err.message);
        return;
    }
    (*d->n.in[m.type])++;
    handle(d, c, s, &m);
    proto_msg_free(&m);
}

static void on_close(void *ctx, conn_t *c, void *app, enum conn_end why) {
    dispatch_t *d = ctx;
    (void)c;
    int how = why == CONN_END_TIMEOUT ? ENGINE_END_TIMEOUT : ENGINE_END_DISCONNECT;
    rooms_session_close(d->rooms, app, how);
    engine_session_close(app, how);
}

void dispatch_ws_handlers(dispatch_t *d, server_ws_handlers_t *h) {
    memset(h, 0, sizeof(*h));
    h->ctx = d;
    h->on_upgrade = on_upgrade;
    h->on_open = on_open;
    h->on_message = on_message;
    h->on_close = on_close;
}

dispatch_t *dispatch_new(const dispatch_config_t *cfg, engine_t *engine, rooms_t *rooms,
                         const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics) {
    dispatch_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->cfg = *cfg;
    d->engine = engine;
    d->rooms = rooms;
    d->clock = *clock;
    d->log = log;
    d->lim.max_ids = cfg->max_ids;
    for (int i = 0; i < PROTO_TYPE_COUNT; i++) {
        d->n.in[i] = metrics ? pd_metrics_counter(metrics, "presenced_messages_in_total",
                                                  "Protocol messages received, by type", "type",
                                                  proto_type_name(i))
                             : NULL;
        if (!d->n.in[i])
            d->n.in[i] = &dummy_counter;
    }
    for (int i = 0; i < PROTO_E_COUNT; i++) {
        d->n.errors[i] = metrics ? pd_metrics_counter(metrics, "presenced_protocol_errors_total",
                                                      "error messages sent, by code", "code",
                                                      proto_error_name(i))
                                 : NULL;
        if (!d->n.errors[i])
            d->n.errors[i] = &dummy_counter;
    }
    d->n.auth_refused =
        metrics ? pd_metrics_counter(metrics, "presenced_auth_failures_total",
                                     "WebSocket upgrades refused for identity", NULL, NULL)
                : NULL;
    if (!d->n.auth_refused)
        d->n.auth_refused = &dummy_counter;
    return d;
}

void dispatch_free(dispatch_t *d) {
    free(d);
}
