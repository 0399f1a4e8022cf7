#include "dispatch/dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/request.h"
#include "privacy/privacy.h"
#include "proto/proto.h"
#include "util/error.h"
#include "ws/frame.h"

#define CLOSE_TOKEN_EXPIRED 4001
#define AUTH_LOG_PER_SEC    10 /* refused upgrades logged per second; the rest only counted */

/* Requests of one connection waiting for the store: at DISPATCH_INFLIGHT_MAX the connection is
 * not read further until answers bring it back to DISPATCH_INFLIGHT_RESUME. A client that
 * pipelines faster than the store answers is slowed by TCP, never by a fault: every request
 * read is answered, and memory held per connection stays bounded. */
#define DISPATCH_INFLIGHT_MAX    64
#define DISPATCH_INFLIGHT_RESUME 32

/* Messages refused by the rate limit since the bucket was last full, past which the client is
 * taken to ignore rate_limited and is closed (1008). */
#define RATE_CLOSE_AFTER 64
#define CLOSE_POLICY     1008

struct dispatch_counters {
    uint64_t *in[PROTO_TYPE_COUNT];
    uint64_t *errors[PROTO_E_COUNT];
    uint64_t *token_expiries;
    uint64_t *inflight_holds;
    uint64_t *rate_limited, *rate_closes, *user_limit_refusals;
};

struct dispatch {
    dispatch_config_t cfg;
    engine_t *engine;
    rooms_t *rooms;
    pd_clock_t clock;
    pd_log_t *log;
    pd_metrics_t *metrics;
    proto_limits_t lim;
    uint64_t auth_log_second; /* rate limit of auth failure lines */
    uint32_t auth_log_count, auth_log_dropped;
    struct dispatch_counters n;
};

/* What the dispatcher keeps per connection: its session and what its token allows. */
struct dconn {
    session_t *s;
    conn_t *c;
    dispatch_t *d;
    wheel_timer_t expiry; /* the token's exp: closes the connection with 4001 */
    double exp;           /* epoch seconds; 0 without a token */
    char **channels;      /* the token's channels patterns; NULL: any channel */
    uint32_t nchannels;
    uint32_t rl_at;     /* ms (loop time, wrapping): the rate bucket's last refill */
    uint16_t replies;   /* answers owed (struct reply), at most DISPATCH_INFLIGHT_MAX + 1 */
    uint16_t rl_tokens; /* messages the bucket allows now (cfg.rate_burst at most) */
    uint8_t rl_refused; /* refused since the bucket was last full (RATE_CLOSE_AFTER) */
    bool gone;          /* the connection closed: c is freed; this lives on for the replies */
    bool held;          /* reading stopped until replies fall to DISPATCH_INFLIGHT_RESUME */
};

/* An answer owed to a request whose engine call may complete later. */
struct reply {
    dispatch_t *d;
    struct dconn *dc; /* dc->gone: the connection closed meanwhile, nobody to answer */
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

static struct reply *reply_new(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    struct reply *r = malloc(sizeof(*r));
    if (r) {
        r->d = d;
        r->dc = dc;
        if (++dc->replies >= DISPATCH_INFLIGHT_MAX && !dc->held) {
            dc->held = true;
            (*d->n.inflight_holds)++;
            conn_hold_input(dc->c, true);
        }
        r->c = dc->c;
        r->id = m->id;
        r->type = m->type;
        r->channel_len = (uint8_t)m->channel.len;
        if (m->channel.len)
            memcpy(r->channel, m->channel.s, m->channel.len);
    }
    return r;
}

static void dconn_free(struct dconn *dc) {
    auth_claims_t old = {.channels = dc->channels, .nchannels = dc->nchannels};
    auth_claims_free(&old);
    free(dc);
}

/* Frees an answered (or abandoned) reply; the last one of a closed connection frees its dconn.
 * Stores answer later than the connection may live (Redis): a reply must never reach a freed
 * conn_t. */
static void reply_free(struct reply *r) {
    if (!r)
        return;
    struct dconn *dc = r->dc;
    free(r);
    --dc->replies;
    if (dc->gone) {
        if (dc->replies == 0)
            dconn_free(dc);
    } else if (dc->held && dc->replies <= DISPATCH_INFLIGHT_RESUME) {
        dc->held = false;
        conn_hold_input(dc->c, false);
    }
}

/* True when nobody is there to answer: the reply is freed. */
static bool reply_gone(struct reply *r) {
    if (!r->dc->gone)
        return false;
    reply_free(r);
    return true;
}

static void engine_error(dispatch_t *d, conn_t *c, const proto_id_t *id, int type, int err) {
    char msg[128];
    if (err == PD_ELIMIT && (type == PROTO_ADD_CONTACT || type == PROTO_BLOCK)) {
        send_error(d, c, id, PROTO_E_LIST_FULL, "the list holds as many users as allowed");
    } else if (err == PD_ENOTFOUND) {
        send_error(d, c, id, PROTO_E_NOT_MEMBER, "the connection has not joined this channel");
    } else if (err == PD_EUNAVAIL) {
        send_error(d, c, id, PROTO_E_UNAVAILABLE,
                   "the store cannot take this right now (Redis unreachable, or the "
                   "embedded store's write queue full); retry with backoff");
    } else if (err == PD_EFULL) {
        send_error(d, c, id, PROTO_E_ROOM_FULL, "the channel has as many members as allowed");
    } else if (err == PD_ETOOBIG && type == PROTO_JOIN) {
        snprintf(msg, sizeof(msg), "the user already has %d connections in this channel",
                 PD_SESSIONS_PER_USER_MAX);
        send_error(d, c, id, PROTO_E_SESSION_LIMIT, msg);
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
    if (reply_gone(r))
        return;
    if (err == PD_ECLOSED) {
        /* The connection went away meanwhile: nobody to answer. */
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        send_ack(r->c, &r->id);
    }
    reply_free(r);
}

static void on_presences(void *arg, int err, const pd_presence_t *ps, size_t n) {
    struct reply *r = arg;
    if (reply_gone(r))
        return;
    if (err == PD_ECLOSED) {
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        const char *type = r->type == PROTO_SUBSCRIBE ? "initial_presence" : "presence_result";
        send_frame(r->c, proto_encode_presences(type, &r->id, ps, n));
    }
    reply_free(r);
}

static pd_str_t reply_channel(const struct reply *r) {
    return (pd_str_t){r->channel, r->channel_len};
}

static void on_state(void *arg, int err, const char *mode, const pd_member_t *ms, size_t n,
                     uint32_t count, bool more) {
    struct reply *r = arg;
    if (reply_gone(r))
        return;
    if (err == PD_ECLOSED) {
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        pd_str_t next =
            more && n ? (pd_str_t){ms[n - 1].user_id, ms[n - 1].user_id_len} : (pd_str_t){0};
        send_frame(r->c,
                   proto_encode_channel_state(&r->id, reply_channel(r), mode, ms, n, count, next));
    }
    reply_free(r);
}

static void on_members(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                       bool more) {
    struct reply *r = arg;
    if (reply_gone(r))
        return;
    if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        pd_str_t next =
            more && n ? (pd_str_t){ms[n - 1].user_id, ms[n - 1].user_id_len} : (pd_str_t){0};
        send_frame(r->c,
                   proto_encode_channel_members(&r->id, reply_channel(r), ms, n, count, next));
    }
    reply_free(r);
}

static void on_count(void *arg, int err, uint32_t count) {
    struct reply *r = arg;
    if (reply_gone(r))
        return;
    if (err)
        engine_error(r->d, r->c, &r->id, r->type, err);
    else
        send_frame(r->c, proto_encode_channel_count(&r->id, reply_channel(r), count));
    reply_free(r);
}

static void on_privacy(void *arg, int err, const store_privacy_t *p) {
    struct reply *r = arg;
    if (reply_gone(r))
        return;
    if (err == PD_ECLOSED) {
    } else if (err) {
        engine_error(r->d, r->c, &r->id, r->type, err);
    } else {
        send_frame(r->c, proto_encode_privacy(&r->id, privacy_visibility_name(p->visibility),
                                              p->contacts, p->ncontacts, p->blocked, p->nblocked));
    }
    reply_free(r);
}

static bool channel_allowed(const struct dconn *dc, pd_str_t channel) {
    auth_claims_t view = {.channels = dc->channels, .nchannels = dc->nchannels};
    return auth_channel_allowed(&view, channel.s, channel.len);
}

/* Privacy requests: the connection's user manages their own settings. */
static void do_privacy(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    conn_t *c = dc->c;
    session_t *s = dc->s;
    pd_str_t me = engine_session_user(s);
    if (m->user_id.s && !privacy_entry_allowed(me, m->user_id)) {
        send_error(d, c, &m->id, PROTO_E_BAD_USER_ID, PRIVACY_SELF_ENTRY_MESSAGE);
        return;
    }
    struct reply *r = reply_new(d, dc, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc;
    switch (m->type) {
    case PROTO_GET_PRIVACY:
        rc = engine_privacy_get(s, on_privacy, r);
        break;
    case PROTO_SET_VISIBILITY:
        rc = engine_privacy_change(s, STORE_PRIV_VISIBILITY, (uint8_t)m->visibility, (pd_str_t){0},
                                   on_done, r);
        break;
    default: {
        int op = m->type == PROTO_ADD_CONTACT      ? STORE_PRIV_ADD_CONTACT
                 : m->type == PROTO_REMOVE_CONTACT ? STORE_PRIV_REMOVE_CONTACT
                 : m->type == PROTO_BLOCK          ? STORE_PRIV_BLOCK
                                                   : STORE_PRIV_UNBLOCK;
        rc = engine_privacy_change(s, op, 0, m->user_id, on_done, r);
    }
    }
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        reply_free(r);
    }
}

/* --- Tokens --- */

static void expiry_fire(wheel_timer_t *t, uint64_t now);

static void arm_expiry(struct dconn *dc) {
    dispatch_t *d = dc->d;
    double in = dc->exp - pd_clock_wall(&d->clock);
    uint64_t now = pd_clock_ms(&d->clock);
    wheel_schedule(d->cfg.wheel, &dc->expiry, in > 0 ? now + (uint64_t)(in * 1000.0) : now);
}

static void expiry_fire(wheel_timer_t *t, uint64_t now) {
    (void)now;
    struct dconn *dc = (struct dconn *)((char *)t - offsetof(struct dconn, expiry));
    if (dc->exp > pd_clock_wall(&dc->d->clock)) {
        arm_expiry(dc); /* refreshed since */
        return;
    }
    (*dc->d->n.token_expiries)++;
    conn_close_ws(dc->c, CLOSE_TOKEN_EXPIRED, "token expired");
}

/* The connection now runs on claims cl (taken over). */
static void take_claims(struct dconn *dc, auth_claims_t *cl) {
    auth_claims_t old = {.channels = dc->channels, .nchannels = dc->nchannels};
    auth_claims_free(&old);
    dc->channels = cl->channels;
    dc->nchannels = cl->nchannels;
    dc->exp = cl->exp;
    cl->channels = NULL;
    cl->nchannels = 0;
    arm_expiry(dc);
}

static void do_refresh(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    auth_claims_t cl;
    const char *why = "tokens_disabled";
    char msg[96];
    if (!d->cfg.auth ||
        auth_verify(d->cfg.auth, m->token.s, m->token.len, pd_clock_wall(&d->clock), &cl, &why)) {
        snprintf(msg, sizeof(msg), "the token was refused (%s)", why);
        send_error(d, dc->c, &m->id, PROTO_E_BAD_TOKEN, msg);
        return;
    }
    pd_str_t me = engine_session_user(dc->s);
    if (cl.sub_len != me.len || memcmp(cl.sub, me.s, me.len) != 0) {
        auth_claims_free(&cl);
        send_error(d, dc->c, &m->id, PROTO_E_WRONG_USER,
                   "the token is for another user than the connection's");
        return;
    }
    take_claims(dc, &cl);
    /* The rooms the new claims no longer allow are left now (PROTOCOL.md, refresh). */
    auth_claims_t now = {.channels = dc->channels, .nchannels = dc->nchannels};
    rooms_revoke(d->rooms, dc->s, &now);
    send_ack(dc->c, &m->id);
}

/* Room requests; each either completes through a callback that frees r, or fails here. */
static void do_room(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    conn_t *c = dc->c;
    session_t *s = dc->s;
    struct reply *r = reply_new(d, dc, m);
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
        rc = rooms_session_members(d->rooms, s, m->channel, m->after, m->limit, on_members, r);
        break;
    case PROTO_CHANNEL_COUNT:
        rc = rooms_session_count(d->rooms, s, m->channel, on_count, r);
        break;
    case PROTO_CURSOR:
    case PROTO_TYPING:
        rc = m->type == PROTO_CURSOR
                 ? rooms_signal(d->rooms, s, m->channel, STORE_SIGNAL_CURSOR, m->payload)
                 : rooms_signal(d->rooms, s, m->channel, STORE_SIGNAL_TYPING,
                                m->typing ? (pd_str_t){"true", 4} : (pd_str_t){"false", 5});
        if (rc == 0)
            send_ack(c, &m->id);
        reply_free(r);
        if (rc)
            engine_error(d, c, &m->id, m->type, rc);
        return;
    }
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        reply_free(r);
    }
}

/* --- Rate limit ---
 * A token bucket per connection (6 bytes): a cheap message takes one token, one that changes
 * or reads the store rate_change_cost; tokens come back at rate_per_sec up to rate_burst. The
 * refill is computed when a message comes: no timer, no work for idle connections. */

static uint32_t msg_cost(const dispatch_t *d, int type) {
    switch (type) {
    case PROTO_PING:
    case PROTO_HEARTBEAT:
    case PROTO_ACTIVITY:
    case PROTO_CURSOR:
    case PROTO_TYPING:
    case PROTO_UNSUBSCRIBE:
        return 1;
    default:
        return d->cfg.rate_change_cost;
    }
}

/* True (and cost taken) when dc's bucket holds cost tokens. */
static bool rate_take(dispatch_t *d, struct dconn *dc, uint32_t cost) {
    const dispatch_config_t *cfg = &d->cfg;
    if (!cfg->rate_per_sec)
        return true;
    uint32_t now = (uint32_t)pd_clock_ms(&d->clock);
    uint64_t add = (uint64_t)(uint32_t)(now - dc->rl_at) * cfg->rate_per_sec / 1000;
    if (add) {
        if (dc->rl_tokens + add >= cfg->rate_burst) {
            dc->rl_tokens = (uint16_t)cfg->rate_burst;
            dc->rl_at = now;
            dc->rl_refused = 0;
        } else {
            dc->rl_tokens = (uint16_t)(dc->rl_tokens + add);
            dc->rl_at += (uint32_t)(add * 1000 / cfg->rate_per_sec); /* keeps the remainder */
        }
    }
    if (dc->rl_tokens < cost)
        return false;
    dc->rl_tokens = (uint16_t)(dc->rl_tokens - cost);
    return true;
}

/* Answers a message over the rate: rate_limited, or 1008 for a client that keeps going. */
static void rate_refuse(dispatch_t *d, struct dconn *dc, const proto_id_t *id) {
    (*d->n.rate_limited)++;
    if (++dc->rl_refused >= RATE_CLOSE_AFTER) {
        if (dc->rl_refused == RATE_CLOSE_AFTER) {
            (*d->n.rate_closes)++;
            conn_close_ws(dc->c, CLOSE_POLICY, "message rate limit exceeded");
        }
        dc->rl_refused = RATE_CLOSE_AFTER;
        return;
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "more than %u messages a second (burst %u): slow down",
             d->cfg.rate_per_sec, d->cfg.rate_burst);
    send_error(d, dc->c, id, PROTO_E_RATE_LIMITED, msg);
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

static void do_update(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    conn_t *c = dc->c;
    session_t *s = dc->s;
    engine_update_t u = {
        .status = m->status, .announce = m->type == PROTO_SET_ONLINE, .auto_away = m->auto_away};
    if (m->device.state == PROTO_SET)
        u.device = m->device.v;
    u.fields.custom_status = text_field(&m->custom_status);
    u.fields.activity = text_field(&m->activity);
    if (m->custom_status_expires_in > 0)
        u.fields.custom_status_expires = pd_clock_wall(&d->clock) + m->custom_status_expires_in;
    struct reply *r = reply_new(d, dc, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = engine_update(s, &u, on_done, r);
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        reply_free(r);
    }
}

static void do_ids(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    conn_t *c = dc->c;
    session_t *s = dc->s;
    struct reply *r = reply_new(d, dc, m);
    if (!r) {
        send_error(d, c, &m->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = m->type == PROTO_SUBSCRIBE ? engine_subscribe(s, m->ids, m->nids, on_presences, r)
                                        : engine_get_presence(s, m->ids, m->nids, on_presences, r);
    if (rc) {
        engine_error(d, c, &m->id, m->type, rc);
        reply_free(r);
    }
}

static void handle(dispatch_t *d, struct dconn *dc, const proto_msg_t *m) {
    conn_t *c = dc->c;
    session_t *s = dc->s;
    switch (m->type) {
    case PROTO_PING:
        send_frame(c, proto_encode_pong(&m->id));
        break;
    case PROTO_SET_ONLINE:
    case PROTO_SET_STATUS:
        do_update(d, dc, m);
        break;
    case PROTO_HEARTBEAT:
        engine_heartbeat(s, m->device.state == PROTO_SET ? m->device.v : (pd_str_t){0});
        send_ack(c, &m->id);
        break;
    case PROTO_SET_OFFLINE: {
        struct reply *r = reply_new(d, dc, m);
        int rc = r ? engine_set_offline(s, on_done, r) : PD_ENOMEM;
        if (rc) {
            engine_error(d, c, &m->id, m->type, rc);
            reply_free(r);
        }
        break;
    }
    case PROTO_ACTIVITY:
        engine_activity(s);
        send_ack(c, &m->id);
        break;
    case PROTO_SUBSCRIBE:
    case PROTO_GET_PRESENCE:
        do_ids(d, dc, m);
        break;
    case PROTO_UNSUBSCRIBE:
        engine_unsubscribe(s, m->ids, m->nids);
        send_ack(c, &m->id);
        break;
    case PROTO_JOIN:
    case PROTO_CHANNEL_MEMBERS:
    case PROTO_CHANNEL_COUNT:
        /* The token's channels claim decides which rooms a connection may join or see. */
        if (!channel_allowed(dc, m->channel)) {
            send_error(d, c, &m->id, PROTO_E_FORBIDDEN,
                       "the connection's token does not allow this channel");
            break;
        }
        do_room(d, dc, m);
        break;
    case PROTO_LEAVE:
    case PROTO_UPDATE:
    case PROTO_CURSOR:
    case PROTO_TYPING:
        do_room(d, dc, m);
        break;
    case PROTO_SET_VISIBILITY:
    case PROTO_ADD_CONTACT:
    case PROTO_REMOVE_CONTACT:
    case PROTO_BLOCK:
    case PROTO_UNBLOCK:
    case PROTO_GET_PRIVACY:
        do_privacy(d, dc, m);
        break;
    case PROTO_REFRESH:
        do_refresh(d, dc, m);
        break;
    }
}

/* --- Connection callbacks --- */

/* Counts a refused upgrade by reason and logs it, at most AUTH_LOG_PER_SEC lines a second
 * (a flood of bad tokens must not flood the log). The client only ever sees 401. */
static int refuse(dispatch_t *d, conn_t *c, const char *reason) {
    if (d->metrics) {
        uint64_t *n = pd_metrics_counter(d->metrics, "presenced_auth_failures_total",
                                         "WebSocket upgrades refused for identity, by reason",
                                         "reason", reason);
        if (n)
            (*n)++;
    }
    uint64_t second = pd_clock_ms(&d->clock) / 1000;
    if (second != d->auth_log_second) {
        if (d->auth_log_dropped)
            PD_INFO(d->log, "auth", "%u more refused upgrades not logged", d->auth_log_dropped);
        d->auth_log_second = second;
        d->auth_log_count = d->auth_log_dropped = 0;
    }
    if (d->auth_log_count++ < AUTH_LOG_PER_SEC) {
        char peer[64];
        PD_INFO(d->log, "auth", "conn %llu (%s): upgrade refused: %s",
                (unsigned long long)conn_id(c), conn_peer(c, peer, sizeof(peer)), reason);
    } else {
        d->auth_log_dropped++;
    }
    return 401;
}

/* Identity comes from the connection: a token (Authorization: Bearer, or ?token= for
 * browsers, which cannot set headers on a WebSocket), or in development ?user=. */
static int on_upgrade(void *ctx, conn_t *c, const http_request_t *req, void **app) {
    dispatch_t *d = ctx;
    char buf[AUTH_TOKEN_MAX + 1];
    const char *token = NULL;
    size_t tlen = 0;
    const http_header_t *h = http_request_header(req, "Authorization");
    if (h && h->value_len > 7 && strncasecmp(h->value, "Bearer ", 7) == 0) {
        token = h->value + 7;
        tlen = h->value_len - 7;
    } else {
        int n = http_query_get(req->query, req->query_len, "token", buf, sizeof(buf));
        if (n == PD_ETOOBIG)
            return refuse(d, c, "too_large");
        if (n > 0) {
            token = buf;
            tlen = (size_t)n;
        }
    }
    auth_claims_t cl = {0};
    pd_str_t user;
    char dev_user[PD_USER_ID_MAX + 1];
    if (token) {
        const char *why = "tokens_disabled";
        if (!d->cfg.auth ||
            auth_verify(d->cfg.auth, token, tlen, pd_clock_wall(&d->clock), &cl, &why) != 0)
            return refuse(d, c, why);
        user = (pd_str_t){cl.sub, cl.sub_len};
    } else if (d->cfg.dev_auth) {
        int n = http_query_get(req->query, req->query_len, "user", dev_user, sizeof(dev_user));
        if (n < 0 || !pd_user_id_valid(dev_user, (size_t)n))
            return refuse(d, c, n == PD_ENOTFOUND ? "no_credentials" : "bad_dev_user");
        user = (pd_str_t){dev_user, (size_t)n};
    } else {
        return refuse(d, c, "no_credentials");
    }
    if (d->cfg.max_conns_per_user &&
        engine_user_connections(d->engine, user) >= d->cfg.max_conns_per_user) {
        (*d->n.user_limit_refusals)++;
        auth_claims_free(&cl);
        return 429; /* the user has as many connections here as allowed */
    }
    struct dconn *dc = calloc(1, sizeof(*dc));
    session_t *s = dc ? engine_session_open(d->engine, c, user) : NULL;
    if (!s) {
        free(dc);
        auth_claims_free(&cl);
        return 503;
    }
    dc->s = s;
    dc->c = c;
    dc->d = d;
    dc->rl_at = (uint32_t)pd_clock_ms(&d->clock);
    dc->rl_tokens = (uint16_t)d->cfg.rate_burst;
    wheel_timer_init(&dc->expiry, expiry_fire);
    if (token)
        take_claims(dc, &cl);
    *app = dc;
    return 0;
}

static void on_open(void *ctx, conn_t *c, void *app) {
    dispatch_t *d = ctx;
    struct dconn *dc = app;
    send_frame(c, proto_encode_welcome(engine_session_user(dc->s), engine_session_id(dc->s),
                                       d->cfg.heartbeat_ttl_ms));
}

static void on_message(void *ctx, conn_t *c, void *app, uint8_t *data, size_t len) {
    dispatch_t *d = ctx;
    struct dconn *dc = app;
    /* The hot path: a canonical heartbeat of a present session is liveness only, which the
     * connection has already counted. */
    size_t dev_len = 0;
    const char *dev = engine_session_device(dc->s, &dev_len);
    proto_id_t hb_id;
    if (proto_is_canonical_heartbeat(data, len, dev, dev_len, &hb_id)) {
        (*d->n.in[PROTO_HEARTBEAT])++;
        if (!rate_take(d, dc, 1)) {
            rate_refuse(d, dc, &hb_id);
            return;
        }
        engine_heartbeat(dc->s, (pd_str_t){0});
        send_ack(c, &hb_id);
        return;
    }
    proto_msg_t m;
    proto_error_t err;
    if (proto_decode(data, len, &d->lim, &m, &err) != 0) {
        if (rate_take(d, dc, 1))
            send_error(d, c, &m.id, err.code, err.message);
        else
            rate_refuse(d, dc, &m.id);
        return;
    }
    (*d->n.in[m.type])++;
    if (rate_take(d, dc, msg_cost(d, m.type)))
        handle(d, dc, &m);
    else
        rate_refuse(d, dc, &m.id);
    proto_msg_free(&m);
}

static void on_close(void *ctx, conn_t *c, void *app, enum conn_end why) {
    dispatch_t *d = ctx;
    struct dconn *dc = app;
    (void)c;
    int how = why == CONN_END_TIMEOUT ? ENGINE_END_TIMEOUT : ENGINE_END_DISCONNECT;
    rooms_session_close(d->rooms, dc->s, how);
    engine_session_close(dc->s, how);
    wheel_cancel(d->cfg.wheel, &dc->expiry);
    dc->gone = true;
    dc->c = NULL;
    if (dc->replies == 0)
        dconn_free(dc);
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
    d->metrics = metrics;
    /* The counters without labels: one table, each falls back to a dummy without metrics. */
    struct {
        uint64_t **p;
        const char *name, *help;
    } counters[] = {
        {&d->n.token_expiries, "presenced_token_expiries_total",
         "Connections closed (4001) because their token expired"},
        {&d->n.inflight_holds, "presenced_inflight_holds_total",
         "Times a connection was not read further because it had as many requests waiting for "
         "the store as allowed"},
        {&d->n.rate_limited, "presenced_rate_limited_total",
         "Messages refused (rate_limited) because their connection passed its message rate"},
        {&d->n.rate_closes, "presenced_rate_limit_closes_total",
         "Connections closed (1008) for going on past their message rate"},
        {&d->n.user_limit_refusals, "presenced_user_connection_refusals_total",
         "WebSocket upgrades refused (429): the user had max-connections-per-user here"},
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        *counters[i].p =
            metrics ? pd_metrics_counter(metrics, counters[i].name, counters[i].help, NULL, NULL)
                    : NULL;
        if (!*counters[i].p)
            *counters[i].p = &dummy_counter;
    }
    return d;
}

void dispatch_free(dispatch_t *d) {
    free(d);
}
