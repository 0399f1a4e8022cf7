/* The presence engine over the embedded store, with a hand-driven clock and timing wheel,
 * fake clients and the real protocol encoders.
 *
 * The store's calls are counted by a spy (store_local's ops table with counting entries), so
 * "a heartbeat never reaches the store" is observed, not inferred. Fake clients queue frames
 * as the server does: send_coalesced replaces the frame its slot names while it is unsent,
 * and fc_flush() "writes" the queue, clearing the slots, as the server does once a frame
 * starts to be written. What a watcher received is read back by parsing the frames' JSON.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "log.h"
#include "metrics.h"
#include "proto/proto.h"
#include "store/store.h"
#include "store/store_local.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/obuf.h"
#include "util/wheel.h"

#define T0_MS   1000000u
#define T0_WALL 1764316800.0
#define TICK_MS 10
#define GRACE   5000u
#define AWAY    300000u
#define NCLIENT 8
#define NSESS   128

/* ---- fake clients ---- */

typedef struct qent {
    pd_obuf_t *frame;
    void **slot; /* the coalescing sender's slot naming this entry, or NULL */
} qent_t;

typedef struct fclient {
    qent_t *q[64]; /* queued, unsent */
    size_t nq;
    pd_obuf_t *sent[512]; /* "written" by fc_flush */
    size_t nsent;
    uint64_t last_rx;
    bool gone;
    int closes;
    uint16_t close_code;
} fclient_t;

static int fc_send(void *client, pd_obuf_t *frame) {
    fclient_t *c = client;
    if (c->gone)
        return PD_ECLOSED;
    assert_true(c->nq < 64);
    qent_t *q = calloc(1, sizeof(*q));
    assert_non_null(q);
    q->frame = pd_obuf_retain(frame);
    c->q[c->nq++] = q;
    return 0;
}

static int fc_send_coalesced(void *client, pd_obuf_t *frame, void **slot) {
    fclient_t *c = client;
    if (c->gone)
        return PD_ECLOSED;
    if (*slot) {
        qent_t *q = *slot;
        assert_ptr_equal(q->slot, slot);
        pd_obuf_release(q->frame);
        q->frame = pd_obuf_retain(frame);
        return 1;
    }
    assert_int_equal(fc_send(client, frame), 0);
    qent_t *q = c->q[c->nq - 1];
    q->slot = slot;
    *slot = q;
    return 0;
}

static void fc_unslot(void **slot) {
    if (*slot) {
        ((qent_t *)*slot)->slot = NULL;
        *slot = NULL;
    }
}

static void fc_close(void *client, uint16_t code, const char *reason) {
    (void)reason;
    fclient_t *c = client;
    c->closes++;
    c->close_code = code;
}

static uint64_t fc_last_rx(void *client) {
    return ((fclient_t *)client)->last_rx;
}

/* Writes everything queued: the slots are cleared, the frames move to sent. */
static void fc_flush(fclient_t *c) {
    for (size_t i = 0; i < c->nq; i++) {
        qent_t *q = c->q[i];
        if (q->slot)
            *q->slot = NULL;
        assert_true(c->nsent < 512);
        c->sent[c->nsent++] = q->frame;
        free(q);
    }
    c->nq = 0;
}

static void fc_free(fclient_t *c) {
    fc_flush(c);
    for (size_t i = 0; i < c->nsent; i++)
        pd_obuf_release(c->sent[i]);
    c->nsent = 0;
}

static const engine_client_ops_t fc_ops = {
    .send = fc_send,
    .send_coalesced = fc_send_coalesced,
    .unslot = fc_unslot,
    .close = fc_close,
    .last_rx_ms = fc_last_rx,
};

/* ---- the codec: the real encoders, counted ---- */

static int n_encoded;

static pd_obuf_t *count_update(const pd_presence_t *p) {
    n_encoded++;
    return proto_encode_presence_update(p);
}

static pd_obuf_t *count_hidden(pd_str_t user) {
    n_encoded++;
    return proto_encode_presence_hidden(user);
}

static const engine_codec_t codec = {.presence_update = count_update,
                                     .presence_hidden = count_hidden};

/* ---- the spy: store_local's own ops table, with counting entries ---- */

/* Counts of the store calls the engine made. The store object is store_local's; only its
 * ops pointer is swapped for a copy whose counted entries call the originals, so every
 * other operation (present or added later) reaches the store untouched. */
typedef struct spy {
    int upserts, removes, watches, unwatches;
} spy_t;

static spy_t spy;
static const store_ops_t *local_ops;
static store_ops_t spy_ops;

static int spy_upsert(store_t *st, pd_str_t user, const store_session_t *s,
                      const store_user_fields_t *f, store_presence_cb cb, void *arg) {
    spy.upserts++;
    return local_ops->session_upsert(st, user, s, f, cb, arg);
}

static int spy_remove(store_t *st, pd_str_t user, uint64_t sid, int mode, store_remove_cb cb,
                      void *arg) {
    spy.removes++;
    return local_ops->session_remove(st, user, sid, mode, cb, arg);
}

static int spy_watch(store_t *st, pd_str_t user) {
    spy.watches++;
    return local_ops->watch(st, user);
}

static void spy_unwatch(store_t *st, pd_str_t user) {
    spy.unwatches++;
    local_ops->unwatch(st, user);
}

static void spy_install(store_t *st) {
    local_ops = st->ops;
    spy_ops = *st->ops;
    spy_ops.session_upsert = spy_upsert;
    spy_ops.session_remove = spy_remove;
    spy_ops.watch = spy_watch;
    spy_ops.unwatch = spy_unwatch;
    st->ops = &spy_ops;
    memset(&spy, 0, sizeof(spy));
}

/* ---- the fixture ---- */

typedef struct snapshot {
    int calls, err;
    size_t n;
    char users[16][PD_USER_ID_MAX + 1];
    uint8_t status[16];
    double last_seen[16];
} snapshot_t;

typedef struct efx {
    uint64_t ms;
    double wall;
    pd_clock_t clock;
    wheel_t wheel;
    pd_hashkey_t key;
    store_t *local;
    engine_config_t cfg;
    pd_log_t log;
    pd_metrics_t *metrics;
    engine_t *e;
    fclient_t c[NCLIENT];
    session_t *sess[NSESS];
    bool open[NSESS];
    size_t nsess;
    int done_calls, done_err;
    snapshot_t snap;
} efx_t;

static uint64_t fx_mono(void *ctx) {
    return ((efx_t *)ctx)->ms;
}

static double fx_wall(void *ctx) {
    return ((efx_t *)ctx)->wall;
}

static void make_engine(efx_t *f) {
    f->e = engine_new(&f->cfg, f->local, &f->wheel, &f->clock, &f->key, &fc_ops, &codec, &f->log,
                      f->metrics);
    assert_non_null(f->e);
}

static int setup(void **state) {
    efx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ms = T0_MS;
    f->wall = T0_WALL;
    f->clock = (pd_clock_t){.mono_ms = fx_mono, .wall = fx_wall, .ctx = f};
    for (int i = 0; i < 16; i++)
        f->key.k[i] = (uint8_t)(0xA5 ^ i);
    assert_int_equal(wheel_init(&f->wheel, 4096, TICK_MS, f->ms), 0);
    f->local = store_local_new(&f->key, &f->wheel, &f->clock);
    assert_non_null(f->local);
    spy_install(f->local);
    engine_config_default(&f->cfg);
    f->cfg.offline_grace_ms = GRACE;
    f->cfg.away_after_ms = AWAY;
    f->cfg.max_subscriptions = 100;
    pd_log_init(&f->log);
    f->log.level = PD_LOG_ERROR;
    f->metrics = pd_metrics_new();
    assert_non_null(f->metrics);
    for (int i = 0; i < NCLIENT; i++)
        f->c[i].last_rx = f->ms;
    n_encoded = 0;
    make_engine(f);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    efx_t *f = *state;
    if (f->e) {
        for (size_t i = 0; i < f->nsess; i++)
            if (f->open[i])
                engine_session_close(f->sess[i], ENGINE_END_DISCONNECT);
        engine_free(f->e);
    }
    f->local->ops = local_ops;
    store_destroy(f->local);
    /* Everyone cancelled what they armed. */
    assert_int_equal(f->wheel.count, 0);
    wheel_destroy(&f->wheel);
    for (int i = 0; i < NCLIENT; i++)
        fc_free(&f->c[i]);
    pd_metrics_free(f->metrics);
    free(f);
    return 0;
}

static pd_str_t S(const char *s) {
    return (pd_str_t){s, strlen(s)};
}

/* Moves both clocks and the wheel forward. */
static void advance(efx_t *f, uint64_t ms) {
    f->ms += ms;
    f->wall += (double)ms / 1000.0;
    wheel_advance(&f->wheel, f->ms);
}

static uint64_t counter(efx_t *f, const char *name) {
    uint64_t *v = pd_metrics_counter(f->metrics, name, "", NULL, NULL);
    assert_non_null(v);
    return *v;
}

static int64_t gauge(efx_t *f, const char *name) {
    int64_t *v = pd_metrics_gauge(f->metrics, name, "", NULL, NULL);
    assert_non_null(v);
    return *v;
}

static session_t *open_s(efx_t *f, int client, const char *user) {
    assert_true(f->nsess < NSESS);
    session_t *s = engine_session_open(f->e, &f->c[client], S(user));
    assert_non_null(s);
    f->sess[f->nsess] = s;
    f->open[f->nsess++] = true;
    return s;
}

static void close_s(efx_t *f, session_t *s, int how) {
    for (size_t i = 0; i < f->nsess; i++) {
        if (f->sess[i] == s && f->open[i]) {
            f->open[i] = false;
            engine_session_close(s, how);
            return;
        }
    }
    fail_msg("closing a session that is not open");
}

static void on_done(void *arg, int err) {
    efx_t *f = arg;
    f->done_calls++;
    f->done_err = err;
}

static void on_presences(void *arg, int err, const pd_presence_t *ps, size_t n) {
    efx_t *f = arg;
    snapshot_t *s = &f->snap;
    s->calls++;
    s->err = err;
    s->n = n;
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) {
        assert_true(ps[i].user_id_len <= PD_USER_ID_MAX);
        memcpy(s->users[i], ps[i].user_id, ps[i].user_id_len);
        s->users[i][ps[i].user_id_len] = '\0';
        s->status[i] = ps[i].status;
        s->last_seen[i] = ps[i].last_seen;
    }
}

static engine_update_t upd(int8_t status, const char *device) {
    engine_update_t u = {.status = status, .announce = true, .auto_away = -1};
    if (device)
        u.device = S(device);
    return u;
}

/* set_online with a device (and status, -1 for the default). */
static void set_online(efx_t *f, session_t *s, const char *device, int8_t status) {
    engine_update_t u = upd(status, device);
    int calls = f->done_calls;
    assert_int_equal(engine_update(s, &u, on_done, f), 0);
    assert_int_equal(f->done_calls, calls + 1);
    assert_int_equal(f->done_err, 0);
}

static void subscribe(efx_t *f, session_t *s, const char *const *ids, size_t n) {
    pd_str_t v[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        v[i] = S(ids[i]);
    int calls = f->snap.calls;
    assert_int_equal(engine_subscribe(s, v, n, on_presences, f), 0);
    assert_int_equal(f->snap.calls, calls + 1);
    assert_int_equal(f->snap.err, 0);
}

static void subscribe1(efx_t *f, session_t *s, const char *id) {
    subscribe(f, s, &id, 1);
}

/* "user status dev1,dev2" of a presence_update frame, read from its JSON. */
static const char *describe(const pd_obuf_t *b) {
    static char out[512];
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "type")->valuestring,
                        "presence_update");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "presence");
    assert_true(cJSON_IsObject(p));
    const cJSON *uid = cJSON_GetObjectItemCaseSensitive(p, "user_id");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(p, "status");
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(p, "devices");
    assert_true(cJSON_IsString(uid));
    assert_true(cJSON_IsString(st));
    int n = snprintf(out, sizeof(out), "%s %s ", uid->valuestring, st->valuestring);
    bool first = true;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs) {
        n += snprintf(out + n, sizeof(out) - (size_t)n, "%s%s", first ? "" : ",", d->valuestring);
        first = false;
    }
    cJSON_Delete(j);
    return out;
}

/* A field of a presence_update frame's presence, as printed JSON (caller frees). */
static char *field(const pd_obuf_t *b, const char *name) {
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "presence"), name);
    assert_non_null(v);
    char *s = cJSON_PrintUnformatted(v);
    cJSON_Delete(j);
    return s;
}

static void assert_field(const pd_obuf_t *b, const char *name, const char *want) {
    char *got = field(b, name);
    assert_string_equal(got, want);
    free(got);
}

/* The one frame queued on c since the last flush, described; flushes. */
static const char *take_one(fclient_t *c) {
    assert_int_equal(c->nq, 1);
    size_t k = c->nsent;
    fc_flush(c);
    return describe(c->sent[k]);
}

/* The status the store holds for user ("unknown" when it does not know them). */
static const char *store_status(efx_t *f, session_t *asker, const char *user) {
    pd_str_t id = S(user);
    int calls = f->snap.calls;
    assert_int_equal(engine_get_presence(asker, &id, 1, on_presences, f), 0);
    assert_int_equal(f->snap.calls, calls + 1);
    return f->snap.n ? pd_status_name(f->snap.status[0]) : "unknown";
}

/* ---- becoming present ---- */

static void test_open_is_not_present(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    assert_int_equal(f->snap.n, 0);
    assert_int_equal(spy.upserts, 0);
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "unknown");
    pd_str_t u = engine_session_user(a);
    assert_int_equal(u.len, 5);
    assert_memory_equal(u.s, "alice", 5);
    size_t len = 0;
    assert_null(engine_session_device(a, &len));
    assert_true(engine_session_id(a) != engine_session_id(w));
    /* Closing a session that never announced itself touches nothing. */
    close_s(f, a, ENGINE_END_DISCONNECT);
    assert_int_equal(spy.removes, 0);
    advance(f, GRACE * 2);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_present_by_update(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    assert_int_equal(spy.upserts, 1);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    assert_field(f->c[0].sent[0], "device", "\"web\"");
    assert_field(f->c[0].sent[0], "custom_status", "null");
    size_t len = 0;
    const char *dev = engine_session_device(a, &len);
    assert_non_null(dev);
    assert_int_equal(len, 3);
    assert_memory_equal(dev, "web", 3);
    assert_string_equal(store_status(f, w, "alice"), "online");
    assert_int_equal(gauge(f, "presenced_sessions_present"), 1);
    assert_int_equal(gauge(f, "presenced_sessions"), 2);

    /* Status busy with user fields. */
    engine_update_t u = upd(PD_BUSY, NULL);
    u.announce = false;
    u.fields.custom_status = (store_text_t){STORE_SET, "in a \"meeting\"", 14};
    u.fields.activity = (store_text_t){STORE_SET, "meeting", 7};
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    assert_string_equal(take_one(&f->c[0]), "alice busy web");
    assert_field(f->c[0].sent[1], "custom_status", "\"in a \\\"meeting\\\"\"");
    assert_field(f->c[0].sent[1], "activity", "\"meeting\"");
    /* Status kept (-1), fields cleared. */
    u = upd(-1, NULL);
    u.announce = false;
    u.fields.custom_status.op = STORE_CLEAR;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    assert_string_equal(take_one(&f->c[0]), "alice busy web");
    assert_field(f->c[0].sent[2], "custom_status", "null");
    assert_field(f->c[0].sent[2], "activity", "\"meeting\"");
}

static void test_present_without_device_is_unknown(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, NULL, PD_AWAY);
    assert_string_equal(take_one(&f->c[0]), "alice away unknown");
}

static void test_present_by_heartbeat(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    engine_heartbeat(a, S("web"));
    assert_int_equal(spy.upserts, 1);
    assert_string_equal(take_one(&f->c[0]), "alice online web");

    /* Heartbeats on a present session: no store call, no fan-out. */
    for (int i = 0; i < 10; i++) {
        advance(f, 10000);
        f->c[1].last_rx = f->ms;
        engine_heartbeat(a, S("web"));
        engine_heartbeat(a, (pd_str_t){NULL, 0});
    }
    assert_int_equal(spy.upserts, 1);
    assert_int_equal(spy.removes, 0);
    assert_int_equal(f->c[0].nq, 0);
    assert_int_equal(n_encoded, 1);

    /* A heartbeat with a new device label is recorded (and visible). */
    engine_heartbeat(a, S("desktop"));
    assert_int_equal(spy.upserts, 2);
    assert_string_equal(take_one(&f->c[0]), "alice online desktop");
    /* It keeps the claim. */
    set_online(f, a, NULL, PD_BUSY);
    assert_string_equal(take_one(&f->c[0]), "alice busy desktop");
    engine_heartbeat(a, S("web"));
    assert_string_equal(take_one(&f->c[0]), "alice busy web");
}

static void test_heartbeat_without_device(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    engine_heartbeat(a, (pd_str_t){NULL, 0});
    assert_string_equal(take_one(&f->c[0]), "alice online unknown");
}

/* ---- leaving ---- */

static void test_set_offline_is_immediate_and_sticky(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    fc_flush(&f->c[0]);
    int calls = f->done_calls;
    assert_int_equal(engine_set_offline(a, on_done, f), 0);
    assert_int_equal(f->done_calls, calls + 1);
    assert_int_equal(f->done_err, 0);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
    assert_int_equal(gauge(f, "presenced_sessions_present"), 0);

    /* Heartbeats do not bring it back. */
    int ups = spy.upserts;
    for (int i = 0; i < 5; i++) {
        advance(f, 10000);
        engine_heartbeat(a, S("web"));
        engine_heartbeat(a, S("mobile"));
    }
    assert_int_equal(spy.upserts, ups);
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "offline");
    /* set_offline again: nothing to do, still answered. */
    assert_int_equal(engine_set_offline(a, on_done, f), 0);
    assert_int_equal(f->done_calls, calls + 2);
    assert_int_equal(f->c[0].nq, 0);
    /* Closing it publishes nothing (already offline), now or after the grace window. */
    close_s(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE * 2);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_set_offline_then_online(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    assert_int_equal(engine_set_offline(a, on_done, f), 0);
    fc_flush(&f->c[0]);
    set_online(f, a, NULL, -1);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    /* "status":"offline" in an update acts as set_offline. */
    engine_update_t u = upd(PD_OFFLINE, NULL);
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
    engine_heartbeat(a, S("web"));
    assert_int_equal(f->c[0].nq, 0);
}

static void test_set_offline_before_present(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    int calls = f->done_calls;
    assert_int_equal(engine_set_offline(a, on_done, f), 0);
    assert_int_equal(f->done_calls, calls + 1);
    assert_int_equal(spy.removes, 0);
    /* It withdrew: its first heartbeat does not announce it. */
    engine_heartbeat(a, S("web"));
    assert_int_equal(spy.upserts, 0);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_disconnect_lingers_for_grace(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", PD_BUSY);
    fc_flush(&f->c[0]);
    close_s(f, a, ENGINE_END_DISCONNECT);
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "busy");
    assert_int_equal(gauge(f, "presenced_sessions"), 2); /* still held, lingering */

    advance(f, GRACE - TICK_MS);
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "busy");
    assert_int_equal(counter(f, "presenced_grace_expired_total"), 0);

    advance(f, 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
    assert_field(f->c[0].sent[1], "device", "\"web\""); /* the last one used */
    assert_string_equal(store_status(f, w, "alice"), "offline");
    assert_int_equal(counter(f, "presenced_grace_expired_total"), 1);
    assert_int_equal(gauge(f, "presenced_sessions"), 1);
    /* Once only. */
    advance(f, GRACE * 4);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_reconnect_inside_grace_publishes_nothing(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    fc_flush(&f->c[0]);
    close_s(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE / 2);
    /* A page reload: a new connection of alice, same device, announcing by heartbeat. */
    session_t *a2 = open_s(f, 2, "alice");
    engine_heartbeat(a2, S("web"));
    assert_int_equal(f->c[0].nq, 0);
    assert_int_equal(counter(f, "presenced_grace_revived_total"), 1);
    assert_int_equal(gauge(f, "presenced_sessions"), 2); /* the lingering one is gone */
    advance(f, GRACE * 3);
    assert_int_equal(f->c[0].nq, 0);
    assert_int_equal(counter(f, "presenced_grace_expired_total"), 0);
    assert_string_equal(store_status(f, w, "alice"), "online");
    assert_int_equal(n_encoded, 1);

    /* The new session's own disconnect still gets its grace window. */
    close_s(f, a2, ENGINE_END_DISCONNECT);
    advance(f, GRACE - TICK_MS);
    assert_int_equal(f->c[0].nq, 0);
    advance(f, 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
}

static void test_reconnect_other_device_inside_grace(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    fc_flush(&f->c[0]);
    close_s(f, a, ENGINE_END_DISCONNECT);
    advance(f, 1000);
    session_t *a2 = open_s(f, 2, "alice");
    set_online(f, a2, "mobile", -1);
    /* The device list changes; offline is never published. */
    assert_string_equal(take_one(&f->c[0]), "alice online mobile");
    advance(f, GRACE * 3);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_timeout_is_immediate(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    fc_flush(&f->c[0]);
    close_s(f, a, ENGINE_END_TIMEOUT);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
    assert_int_equal(counter(f, "presenced_session_timeouts_total"), 1);
    assert_int_equal(gauge(f, "presenced_sessions"), 1);
    advance(f, GRACE * 3);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_flush_lingering(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    session_t *b = open_s(f, 2, "bob");
    const char *ids[] = {"alice", "bob"};
    subscribe(f, w, ids, 2);
    set_online(f, a, "web", -1);
    set_online(f, b, "web", -1);
    fc_flush(&f->c[0]);
    close_s(f, a, ENGINE_END_DISCONNECT);
    close_s(f, b, ENGINE_END_DISCONNECT);
    assert_int_equal(f->c[0].nq, 0);
    engine_flush_lingering(f->e);
    assert_int_equal(f->c[0].nq, 2);
    fc_flush(&f->c[0]);
    assert_string_equal(store_status(f, w, "alice"), "offline");
    assert_string_equal(store_status(f, w, "bob"), "offline");
    assert_int_equal(gauge(f, "presenced_sessions"), 1);
    advance(f, GRACE * 3);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_two_devices(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *web = open_s(f, 1, "alice");
    session_t *mob = open_s(f, 2, "alice");
    subscribe1(f, w, "alice");
    set_online(f, web, "web", PD_ONLINE);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    set_online(f, mob, "mobile", PD_BUSY);
    assert_string_equal(take_one(&f->c[0]), "alice busy mobile,web");
    assert_field(f->c[0].sent[1], "device", "\"mobile\"");
    set_online(f, web, NULL, PD_AWAY);
    assert_int_equal(f->c[0].nq, 0); /* busy still wins: nothing visible changed */
    set_online(f, mob, NULL, PD_AWAY);
    assert_string_equal(take_one(&f->c[0]), "alice away mobile,web");
    set_online(f, mob, NULL, PD_BUSY);
    assert_string_equal(take_one(&f->c[0]), "alice busy mobile,web");

    /* Closing one (not the last) updates the devices at once. */
    close_s(f, mob, ENGINE_END_DISCONNECT);
    assert_string_equal(take_one(&f->c[0]), "alice away web");
    advance(f, GRACE * 2);
    assert_int_equal(f->c[0].nq, 0);
    /* Then the last one: after the grace window. */
    close_s(f, web, ENGINE_END_DISCONNECT);
    assert_int_equal(f->c[0].nq, 0);
    advance(f, GRACE + 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
}

static void test_session_limit(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    subscribe1(f, w, "alice");
    for (int i = 0; i < PD_SESSIONS_PER_USER_MAX; i++)
        set_online(f, open_s(f, 1, "alice"), "web", -1);
    fc_flush(&f->c[0]);
    session_t *extra = open_s(f, 2, "alice");
    engine_update_t u = upd(PD_BUSY, "mobile");
    int calls = f->done_calls;
    int rc = engine_update(extra, &u, on_done, f);
    /* Either form the contract allows: refused at once, or through done. */
    if (rc == 0) {
        assert_int_equal(f->done_calls, calls + 1);
        assert_int_equal(f->done_err, PD_ELIMIT);
    } else {
        assert_int_equal(rc, PD_ELIMIT);
        assert_int_equal(f->done_calls, calls);
    }
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "online");
    assert_int_equal(gauge(f, "presenced_sessions_present"), PD_SESSIONS_PER_USER_MAX);
    /* The refused session is not present: closing it touches nothing visible. */
    close_s(f, extra, ENGINE_END_TIMEOUT);
    assert_int_equal(f->c[0].nq, 0);
}

/* ---- subscriptions ---- */

static bool snap_has(const snapshot_t *s, const char *user, uint8_t status) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->users[i], user) == 0)
            return s->status[i] == status;
    return false;
}

static void test_subscribe_snapshot(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    session_t *b = open_s(f, 2, "bob");
    set_online(f, a, "web", PD_BUSY);
    set_online(f, b, "web", -1);
    assert_int_equal(engine_set_offline(b, NULL, NULL), 0); /* bob: known, offline */

    const char *ids[] = {"alice", "carol", "bob", "alice", "bob"};
    subscribe(f, w, ids, 5);
    assert_int_equal(f->snap.n, 2); /* carol was never seen; duplicates once */
    assert_true(snap_has(&f->snap, "alice", PD_BUSY));
    assert_true(snap_has(&f->snap, "bob", PD_OFFLINE));
    assert_int_equal(engine_session_subscriptions(w), 3); /* carol is watched all the same */
    assert_int_equal(gauge(f, "presenced_subscriptions"), 3);

    /* Subscribing again to the same ids changes nothing. */
    subscribe(f, w, ids, 5);
    assert_int_equal(engine_session_subscriptions(w), 3);

    /* carol appears: the watcher hears of it. */
    session_t *c = open_s(f, 3, "carol");
    set_online(f, c, "mobile", -1);
    assert_string_equal(take_one(&f->c[0]), "carol online mobile");
    /* Empty request: empty snapshot. */
    subscribe(f, w, NULL, 0);
    assert_int_equal(f->snap.n, 0);
}

static void test_subscribe_limit(void **state) {
    efx_t *f = *state;
    f->cfg.max_subscriptions = 4;
    engine_free(f->e);
    make_engine(f);
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    set_online(f, a, "web", -1);
    const char *three[] = {"alice", "bob", "carol"};
    subscribe(f, w, three, 3);
    assert_int_equal(engine_session_subscriptions(w), 3);

    /* Two new ones would make 5. */
    pd_str_t two[] = {S("dave"), S("erin")};
    int calls = f->snap.calls;
    int watches = spy.watches;
    assert_int_equal(engine_subscribe(w, two, 2, on_presences, f), PD_ELIMIT);
    assert_int_equal(f->snap.calls, calls);
    assert_int_equal(engine_session_subscriptions(w), 3);
    assert_int_equal(spy.watches, watches);
    assert_int_equal(gauge(f, "presenced_subscriptions"), 3);
    /* Nothing was watched: dave's changes do not arrive. */
    session_t *d = open_s(f, 2, "dave");
    set_online(f, d, "web", -1);
    assert_int_equal(f->c[0].nq, 0);

    /* Already-watched ids and duplicates do not count against the limit. */
    const char *mixed[] = {"alice", "dave", "bob", "dave"};
    subscribe(f, w, mixed, 4);
    assert_int_equal(engine_session_subscriptions(w), 4);
    assert_int_equal(f->snap.n, 2); /* alice and dave are known; bob is not */
    /* Full: one more is refused, the same ones are fine. */
    pd_str_t one = S("zed");
    assert_int_equal(engine_subscribe(w, &one, 1, on_presences, f), PD_ELIMIT);
    subscribe(f, w, three, 3);
    assert_int_equal(engine_session_subscriptions(w), 4);
}

static void test_unsubscribe(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    session_t *b = open_s(f, 2, "bob");
    const char *ids[] = {"alice", "bob"};
    subscribe(f, w, ids, 2);
    set_online(f, a, "web", -1);
    set_online(f, b, "web", -1);
    assert_int_equal(f->c[0].nq, 2);
    fc_flush(&f->c[0]);

    pd_str_t gone[] = {S("alice"), S("nobody"), S("alice")};
    engine_unsubscribe(w, gone, 3);
    assert_int_equal(engine_session_subscriptions(w), 1);
    set_online(f, a, NULL, PD_BUSY);
    assert_int_equal(f->c[0].nq, 0);
    set_online(f, b, NULL, PD_BUSY);
    assert_string_equal(take_one(&f->c[0]), "bob busy web");
    pd_str_t bob = S("bob");
    engine_unsubscribe(w, &bob, 1);
    assert_int_equal(engine_session_subscriptions(w), 0);
    assert_int_equal(gauge(f, "presenced_subscriptions"), 0);
    assert_int_equal(spy.unwatches, spy.watches);
    set_online(f, b, NULL, PD_AWAY);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_unsubscribe_with_pending_update(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    set_online(f, a, "web", -1);
    assert_int_equal(f->c[0].nq, 1);
    assert_non_null(f->c[0].q[0]->slot);
    /* The queued frame stays queued; its slot is forgotten before the edge goes. */
    pd_str_t id = S("alice");
    engine_unsubscribe(w, &id, 1);
    assert_int_equal(f->c[0].nq, 1);
    assert_null(f->c[0].q[0]->slot);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
}

static void test_fanout_encodes_once(void **state) {
    efx_t *f = *state;
    session_t *w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = open_s(f, i, "watcher");
        subscribe1(f, w[i], "alice");
    }
    session_t *a = open_s(f, 5, "alice");
    n_encoded = 0;
    set_online(f, a, "web", -1);
    assert_int_equal(n_encoded, 1);
    pd_obuf_t *frame = f->c[0].q[0]->frame;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(f->c[i].nq, 1);
        assert_ptr_equal(f->c[i].q[0]->frame, frame);
    }
    assert_int_equal(frame->refs, 4); /* the encoder let go of its own */
    assert_string_equal(describe(frame), "alice online web");
    assert_int_equal(counter(f, "presenced_fanout_deliveries_total"), 4);
    assert_int_equal(counter(f, "presenced_presence_changes_total"), 1);
    /* The frame is a sealed text frame. */
    assert_int_equal(pd_obuf_bytes(frame)[0], 0x81);

    /* Nobody watching: not even encoded. */
    session_t *b = open_s(f, 6, "bob");
    set_online(f, b, "web", -1);
    assert_int_equal(n_encoded, 1);
    assert_int_equal(counter(f, "presenced_presence_changes_total"), 2);
}

static void test_coalescing(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *w2 = open_s(f, 3, "watcher2");
    session_t *a = open_s(f, 1, "alice");
    session_t *b = open_s(f, 2, "bob");
    const char *ids[] = {"alice", "bob"};
    subscribe(f, w, ids, 2);
    subscribe1(f, w2, "alice");
    fclient_t *c = &f->c[0];

    set_online(f, a, "web", -1);
    assert_int_equal(c->nq, 1);
    fc_flush(&f->c[3]); /* the other watcher keeps up */
    set_online(f, a, NULL, PD_BUSY);
    assert_int_equal(c->nq, 1); /* replaced in place */
    assert_string_equal(describe(c->q[0]->frame), "alice busy web");
    assert_int_equal(counter(f, "presenced_fanout_coalesced_total"), 1);
    assert_int_equal(f->c[3].nq, 1); /* flushed: a new entry */

    set_online(f, b, "mobile", -1);
    assert_int_equal(c->nq, 2); /* another user: queued separately */
    set_online(f, a, NULL, PD_AWAY);
    assert_int_equal(c->nq, 2);
    assert_int_equal(counter(f, "presenced_fanout_coalesced_total"), 3); /* w and w2 */
    set_online(f, b, NULL, PD_BUSY);
    assert_int_equal(c->nq, 2);
    assert_int_equal(counter(f, "presenced_fanout_coalesced_total"), 4);

    /* Only the latest of each remains, in first-queued order. */
    fc_flush(c);
    assert_int_equal(c->nsent, 2);
    assert_string_equal(describe(c->sent[0]), "alice away web");
    assert_string_equal(describe(c->sent[1]), "bob busy mobile");

    /* After a flush the next update is queued anew. */
    set_online(f, a, NULL, PD_ONLINE);
    assert_int_equal(c->nq, 1);
    set_online(f, a, NULL, PD_BUSY);
    assert_int_equal(c->nq, 1);
    fc_flush(c);
    assert_string_equal(describe(c->sent[2]), "alice busy web");
    assert_int_equal(counter(f, "presenced_fanout_coalesced_total"), 7); /* w and w2 again */
}

static void test_closing_watcher_removes_subscriptions(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    const char *ids[] = {"alice", "bob", "carol"};
    subscribe(f, w, ids, 3);
    set_online(f, a, "web", -1);
    assert_int_equal(f->c[0].nq, 1); /* unsent, slotted */
    assert_int_equal(gauge(f, "presenced_subscriptions"), 3);
    close_s(f, w, ENGINE_END_DISCONNECT);
    assert_int_equal(gauge(f, "presenced_subscriptions"), 0);
    assert_int_equal(spy.unwatches, spy.watches);
    assert_null(f->c[0].q[0]->slot); /* the slot was forgotten */
    set_online(f, a, NULL, PD_BUSY);
    assert_int_equal(f->c[0].nq, 1);
    assert_string_equal(describe(f->c[0].q[0]->frame), "alice online web");
    assert_int_equal(gauge(f, "presenced_sessions"), 1);
}

static void test_get_presence(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    f->c[1].last_rx = f->ms;
    set_online(f, a, "web", -1);
    double announced = f->wall;
    /* Heartbeats keep coming (the connection's last_rx) but never reach the store. */
    advance(f, 20000);
    f->c[1].last_rx = f->ms - 2000;
    engine_heartbeat(a, S("web"));
    pd_str_t ids[] = {S("nobody"), S("alice"), S("alice")};
    assert_int_equal(engine_get_presence(w, ids, 3, on_presences, f), 0);
    assert_int_equal(f->snap.n, 1);
    assert_string_equal(f->snap.users[0], "alice");
    /* last_seen is the connection's liveness, not the store's last change. */
    double want = f->wall - 2.0;
    assert_true(f->snap.last_seen[0] > announced);
    assert_true(f->snap.last_seen[0] > want - 0.001 && f->snap.last_seen[0] < want + 0.001);
    assert_int_equal(engine_session_subscriptions(w), 0); /* a query watches nothing */
}

/* ---- server-side idle ---- */

static void test_auto_away(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    engine_update_t u = upd(-1, "web");
    u.auto_away = 1;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    assert_string_equal(take_one(&f->c[0]), "alice online web");

    advance(f, AWAY - TICK_MS);
    assert_int_equal(f->c[0].nq, 0);
    advance(f, 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice away web");
    /* Activity brings it back. */
    advance(f, 60000);
    engine_activity(a);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    /* Activity pushes the deadline back. */
    advance(f, AWAY / 2);
    engine_activity(a);
    assert_int_equal(f->c[0].nq, 0);
    advance(f, AWAY / 2 + 2 * TICK_MS);
    assert_int_equal(f->c[0].nq, 0); /* half an idle period since the activity */
    advance(f, AWAY / 2);
    assert_string_equal(take_one(&f->c[0]), "alice away web");
    /* An explicit claim replaces the automatic away, and re-arms the idle check. */
    set_online(f, a, NULL, PD_ONLINE);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    advance(f, AWAY + 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice away web");
    /* Turning it off: online for good. */
    u = upd(PD_ONLINE, NULL);
    u.auto_away = 0;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    assert_string_equal(take_one(&f->c[0]), "alice online web");
    advance(f, AWAY * 3);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_auto_away_heartbeats_are_not_activity(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    engine_update_t u = upd(-1, "web");
    u.auto_away = 1;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    fc_flush(&f->c[0]);
    int ups = spy.upserts;
    for (uint64_t t = 0; t < AWAY - 10000; t += 10000) {
        advance(f, 10000);
        engine_heartbeat(a, S("web"));
    }
    assert_int_equal(f->c[0].nq, 0);
    assert_int_equal(spy.upserts, ups);
    advance(f, 10000 + 2 * TICK_MS);
    assert_string_equal(take_one(&f->c[0]), "alice away web");
    /* Heartbeats do not bring it back either. */
    engine_heartbeat(a, S("web"));
    assert_int_equal(f->c[0].nq, 0);
}

static void test_no_auto_away_without_opt_in(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice"); /* set_online, no auto_away */
    session_t *b = open_s(f, 2, "bob");   /* only heartbeats, as the seed's client */
    session_t *c = open_s(f, 3, "carol"); /* auto_away, but busy */
    const char *ids[] = {"alice", "bob", "carol"};
    subscribe(f, w, ids, 3);
    set_online(f, a, "web", -1);
    engine_heartbeat(b, S("web"));
    engine_update_t u = upd(PD_BUSY, "web");
    u.auto_away = 1;
    assert_int_equal(engine_update(c, &u, on_done, f), 0);
    fc_flush(&f->c[0]);
    for (int i = 0; i < 100; i++) {
        advance(f, 10000);
        engine_heartbeat(b, S("web"));
    }
    assert_int_equal(f->c[0].nq, 0);
    assert_string_equal(store_status(f, w, "alice"), "online");
    assert_string_equal(store_status(f, w, "bob"), "online");
    assert_string_equal(store_status(f, w, "carol"), "busy");
    /* Activity of a session that did not opt in changes nothing. */
    engine_activity(a);
    engine_activity(b);
    assert_int_equal(f->c[0].nq, 0);
}

static void test_auto_away_with_closing(void **state) {
    efx_t *f = *state;
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    subscribe1(f, w, "alice");
    engine_update_t u = upd(-1, "web");
    u.auto_away = 1;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    fc_flush(&f->c[0]);
    /* Closed before its idle deadline: the timer becomes the grace window. */
    advance(f, AWAY - GRACE / 2);
    close_s(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE / 2 + 2 * TICK_MS);
    assert_int_equal(f->c[0].nq, 0);
    advance(f, GRACE / 2);
    assert_string_equal(take_one(&f->c[0]), "alice offline ");
    advance(f, AWAY);
    assert_int_equal(f->c[0].nq, 0);
}

/* ---- lifetime ---- */

static void test_requests_while_user_lingers(void **state) {
    efx_t *f = *state;
    session_t *a = open_s(f, 1, "alice");
    session_t *b = open_s(f, 2, "bob");
    set_online(f, a, "web", -1);
    /* b stays open; a closes and lingers. Requests on b still work. */
    close_s(f, a, ENGINE_END_DISCONNECT);
    pd_str_t id = S("alice");
    assert_int_equal(engine_subscribe(b, &id, 1, on_presences, f), 0);
    assert_true(snap_has(&f->snap, "alice", PD_ONLINE));
}

static void test_free_after_everything(void **state) {
    efx_t *f = *state;
    /* A bit of everything, then close all and free: ASan reports any leak. */
    session_t *w = open_s(f, 0, "watcher");
    session_t *a = open_s(f, 1, "alice");
    session_t *a2 = open_s(f, 2, "alice");
    session_t *b = open_s(f, 3, "bob");
    const char *ids[] = {"alice", "bob", "carol"};
    subscribe(f, w, ids, 3);
    subscribe1(f, a, "bob");
    engine_update_t u = upd(-1, "web");
    u.auto_away = 1;
    u.fields.custom_status = (store_text_t){STORE_SET, "lunch", 5};
    u.fields.custom_status_expires = f->wall + 3600;
    assert_int_equal(engine_update(a, &u, on_done, f), 0);
    set_online(f, a2, "mobile", PD_BUSY);
    engine_heartbeat(b, S("desktop"));
    close_s(f, a2, ENGINE_END_DISCONNECT);
    close_s(f, b, ENGINE_END_DISCONNECT); /* lingers */
    close_s(f, w, ENGINE_END_TIMEOUT);    /* with unsent slotted updates */
    close_s(f, a, ENGINE_END_DISCONNECT); /* lingers, watching bob */
    engine_free(f->e);
    f->e = NULL;
    /* The store still holds the lingering sessions; teardown destroys it. */
}

static void test_free_with_open_watchers(void **state) {
    efx_t *f = *state;
    /* engine_free also drops subscriptions of sessions closed before it, in any order. */
    for (int i = 0; i < 4; i++) {
        session_t *w = open_s(f, i, "w");
        const char *ids[] = {"x", "y"};
        subscribe(f, w, ids, 2);
    }
    session_t *x = open_s(f, 5, "x");
    set_online(f, x, "web", -1);
    for (size_t i = 0; i < f->nsess; i++)
        if (f->open[i])
            close_s(f, f->sess[i], ENGINE_END_DISCONNECT);
    assert_int_equal(gauge(f, "presenced_subscriptions"), 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_open_is_not_present),
        T(test_present_by_update),
        T(test_present_without_device_is_unknown),
        T(test_present_by_heartbeat),
        T(test_heartbeat_without_device),
        T(test_set_offline_is_immediate_and_sticky),
        T(test_set_offline_then_online),
        T(test_set_offline_before_present),
        T(test_disconnect_lingers_for_grace),
        T(test_reconnect_inside_grace_publishes_nothing),
        T(test_reconnect_other_device_inside_grace),
        T(test_timeout_is_immediate),
        T(test_flush_lingering),
        T(test_two_devices),
        T(test_session_limit),
        T(test_subscribe_snapshot),
        T(test_subscribe_limit),
        T(test_unsubscribe),
        T(test_unsubscribe_with_pending_update),
        T(test_fanout_encodes_once),
        T(test_coalescing),
        T(test_closing_watcher_removes_subscriptions),
        T(test_get_presence),
        T(test_auto_away),
        T(test_auto_away_heartbeats_are_not_activity),
        T(test_no_auto_away_without_opt_in),
        T(test_auto_away_with_closing),
        T(test_requests_while_user_lingers),
        T(test_free_after_everything),
        T(test_free_with_open_watchers),
    };
    /* TEST_FILTER / TEST_SKIP: glob patterns of test names to run or skip. */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (getenv("TEST_SKIP"))
        cmocka_set_skip_filter(getenv("TEST_SKIP"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
