/* The rooms module over the embedded store and the engine, with a hand-driven clock and
 * timing wheel, fake clients and the real protocol encoders (dispatch_rooms_codec).
 *
 * Fake clients keep every frame queued to them, stamped with the fake clock. What a client
 * received is read back by parsing the frames' JSON into one line per frame ("doc:1 joined
 * bob 2 [web] {}"), so a test compares one transcript with one exact string. A client can
 * also track a room's member count: every member_joined / member_left / member_updated /
 * channel_delta it receives must carry the count that follows from the previous one and the
 * changes it lists (PROTOCOL.md section 4: "count is always the member count after the
 * changes").
 *
 * Time: the wheel ticks every TICK_MS; a timer fires at the first advance after the end of
 * the tick holding its deadline, so tests advance one tick past a deadline to see it fire.
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

#include "dispatch/dispatch.h"
#include "engine/engine.h"
#include "log.h"
#include "metrics.h"
#include "privacy/privacy.h"
#include "proto/proto.h"
#include "rooms/rooms.h"
#include "store/store.h"
#include "store/store_local.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/obuf.h"
#include "util/wheel.h"

#include "testutil.h"

#define T0_MS    1000000u
#define T0_WALL  1764316800.0
#define TICK_MS  10
#define GRACE    5000u
#define INTERVAL 2000u
#define ANNOUNCE 10u /* interval mode above 10 members, announce again below 8 */
#define RHZ      25u /* divides 1000: a period of exactly 40 ms */
#define PERIOD   (1000u / RHZ)
#define MAXCONN  640

/* ---- fake clients ---- */

typedef struct fclient {
    pd_obuf_t **frames; /* every frame queued, in order */
    uint64_t *at;       /* fake ms at which each was queued */
    size_t n, cap;
    size_t read; /* frames already described */
    const uint64_t *now;
    bool gone;
    /* count tracking (see the file head) */
    bool track;
    uint32_t count;
    pd_str_t room;
} fclient_t;

static int fc_send(void *client, pd_obuf_t *frame) {
    fclient_t *c = client;
    if (c->gone)
        return PD_ECLOSED;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        c->frames = realloc(c->frames, cap * sizeof(*c->frames));
        c->at = realloc(c->at, cap * sizeof(*c->at));
        assert_non_null(c->frames);
        assert_non_null(c->at);
        c->cap = cap;
    }
    c->frames[c->n] = pd_obuf_retain(frame);
    c->at[c->n++] = *c->now;
    return 0;
}

/* Rooms never coalesce; the engine would only for presence updates, which no test asks for. */
static int fc_send_coalesced(void *client, pd_obuf_t *frame, void **slot) {
    (void)slot;
    return fc_send(client, frame);
}

static void fc_unslot(void **slot) {
    *slot = NULL;
}

static void fc_close(void *client, uint16_t code, const char *reason) {
    (void)client;
    (void)code;
    (void)reason;
}

static uint64_t fc_last_rx(void *client) {
    return *((fclient_t *)client)->now;
}

static void fc_free(fclient_t *c) {
    for (size_t i = 0; i < c->n; i++)
        pd_obuf_release(c->frames[i]);
    free(c->frames);
    free(c->at);
    memset(c, 0, sizeof(*c));
}

static const engine_client_ops_t fc_ops = {
    .send = fc_send,
    .send_coalesced = fc_send_coalesced,
    .unslot = fc_unslot,
    .close = fc_close,
    .last_rx_ms = fc_last_rx,
};

static const engine_codec_t presence_codec = {
    .presence_update = proto_encode_presence_update,
    .presence_hidden = proto_encode_presence_hidden,
};

/* ---- the fixture ---- */

typedef struct conn {
    fclient_t fc;
    session_t *s;
    bool open;
    char user[PD_USER_ID_MAX + 1];
} conn_t;

/* The answer to the last join (or members page), copied out of the callback. */
typedef struct state {
    int calls, err;
    char mode[16];
    uint32_t count;
    bool more;
    size_t n;
    tu_str_t ids;     /* "alice,bob" */
    tu_str_t detail;  /* "alice[web]{...} bob[mobile,web]{}" */
    double joined_at; /* of the first member */
} state_t;

typedef struct rfx {
    uint64_t ms;
    double wall;
    pd_clock_t clock;
    wheel_t wheel;
    pd_hashkey_t key;
    store_t *store;
    engine_config_t ecfg;
    engine_t *e;
    rooms_config_t rcfg;
    rooms_t *r;
    pd_log_t log;
    pd_metrics_t *metrics;
    conn_t *conns[MAXCONN];
    size_t nconns;
    state_t st;
    int done_calls, done_err;
    int count_calls;
    uint32_t counted;
} rfx_t;

static uint64_t fx_mono(void *ctx) {
    return ((rfx_t *)ctx)->ms;
}

static double fx_wall(void *ctx) {
    return ((rfx_t *)ctx)->wall;
}

static pd_str_t S(const char *s) {
    return (pd_str_t){s, strlen(s)};
}

static void make_rooms(rfx_t *f) {
    f->r = rooms_new(&f->rcfg, f->e, f->store, &f->wheel, &f->clock, &f->key, &dispatch_rooms_codec,
                     &f->log, f->metrics);
    assert_non_null(f->r);
}

/* Replaces the rooms module with one on cfg (before any connection joins). */
static void remake_rooms(rfx_t *f) {
    rooms_free(f->r);
    make_rooms(f);
}

static int setup(void **state) {
    rfx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ms = T0_MS;
    f->wall = T0_WALL;
    f->clock = (pd_clock_t){.mono_ms = fx_mono, .wall = fx_wall, .ctx = f};
    for (int i = 0; i < 16; i++)
        f->key.k[i] = (uint8_t)(0x5A ^ (i * 7));
    assert_int_equal(wheel_init(&f->wheel, 4096, TICK_MS, f->ms), 0);
    f->store = store_local_new(&f->key, &f->wheel, &f->clock);
    assert_non_null(f->store);
    engine_config_default(&f->ecfg);
    f->ecfg.offline_grace_ms = GRACE;
    pd_log_init(&f->log);
    f->log.level = PD_LOG_ERROR;
    f->metrics = pd_metrics_new();
    assert_non_null(f->metrics);
    f->e = engine_new(&f->ecfg, f->store, &f->wheel, &f->clock, &f->key, &fc_ops, &presence_codec,
                      &f->log, f->metrics);
    assert_non_null(f->e);
    rooms_config_default(&f->rcfg);
    f->rcfg.announce_max = ANNOUNCE;
    f->rcfg.interval_ms = INTERVAL;
    f->rcfg.cursor_hz = RHZ;
    f->rcfg.max_per_conn = 100;
    f->rcfg.max_members = 1000;
    f->rcfg.offline_grace_ms = GRACE;
    make_rooms(f);
    *state = f;
    return 0;
}

static void close_conn(rfx_t *f, conn_t *c, int how) {
    assert_true(c->open);
    rooms_session_close(f->r, c->s, how);
    engine_session_close(c->s, how);
    c->open = false;
    c->fc.gone = true;
}

static int teardown(void **state) {
    rfx_t *f = *state;
    for (size_t i = 0; i < f->nconns; i++)
        if (f->conns[i]->open)
            close_conn(f, f->conns[i], ENGINE_END_DISCONNECT);
    rooms_free(f->r);
    engine_free(f->e);
    store_destroy(f->store);
    /* Everyone cancelled what they armed. */
    assert_int_equal(f->wheel.count, 0);
    wheel_destroy(&f->wheel);
    for (size_t i = 0; i < f->nconns; i++) {
        fc_free(&f->conns[i]->fc);
        free(f->conns[i]);
    }
    tu_str_free(&f->st.ids);
    tu_str_free(&f->st.detail);
    pd_metrics_free(f->metrics);
    free(f);
    return 0;
}

/* Moves both clocks and the wheel forward. */
static void advance(rfx_t *f, uint64_t ms) {
    f->ms += ms;
    f->wall += (double)ms / 1000.0;
    wheel_advance(&f->wheel, f->ms);
}

static uint64_t counter(rfx_t *f, const char *name) {
    uint64_t *v = pd_metrics_counter(f->metrics, name, "", NULL, NULL);
    assert_non_null(v);
    return *v;
}

static int64_t gauge(rfx_t *f, const char *name) {
    int64_t *v = pd_metrics_gauge(f->metrics, name, "", NULL, NULL);
    assert_non_null(v);
    return *v;
}

/* A new connection of user, announced with a device label (NULL: none, shown as unknown). */
static conn_t *open_conn(rfx_t *f, const char *user, const char *device) {
    assert_true(f->nconns < MAXCONN);
    conn_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fc.now = &f->ms;
    snprintf(c->user, sizeof(c->user), "%s", user);
    c->s = engine_session_open(f->e, &c->fc, S(user));
    assert_non_null(c->s);
    if (device)
        engine_heartbeat(c->s, S(device));
    c->open = true;
    f->conns[f->nconns++] = c;
    return c;
}

/* ---- requests ---- */

static void put_member(tu_str_t *detail, const pd_member_t *m) {
    tu_str_printf(detail, "%s%.*s[", detail->len ? " " : "", (int)m->user_id_len, m->user_id);
    for (uint32_t d = 0; d < m->ndevices; d++)
        tu_str_printf(detail, "%s%s", d ? "," : "", m->devices[d]);
    tu_str_printf(detail, "]%.*s", (int)m->metadata_len, m->metadata);
}

static void take_members(state_t *st, const pd_member_t *ms, size_t n) {
    tu_str_free(&st->ids);
    tu_str_free(&st->detail);
    tu_str_get(&st->ids);
    tu_str_get(&st->detail);
    st->n = n;
    st->joined_at = n ? ms[0].joined_at : 0;
    for (size_t i = 0; i < n; i++) {
        tu_str_printf(&st->ids, "%s%.*s", i ? "," : "", (int)ms[i].user_id_len, ms[i].user_id);
        put_member(&st->detail, &ms[i]);
    }
}

static void on_state(void *arg, int err, const char *mode, const pd_member_t *ms, size_t n,
                     uint32_t count, bool more) {
    rfx_t *f = arg;
    state_t *st = &f->st;
    st->calls++;
    st->err = err;
    snprintf(st->mode, sizeof(st->mode), "%s", mode ? mode : "");
    st->count = count;
    st->more = more;
    take_members(st, ms, n);
}

static void on_members(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                       bool more) {
    on_state(arg, err, NULL, ms, n, count, more);
}

static void on_done(void *arg, int err) {
    rfx_t *f = arg;
    f->done_calls++;
    f->done_err = err;
}

static void on_count(void *arg, int err, uint32_t count) {
    rfx_t *f = arg;
    assert_int_equal(err, 0);
    f->count_calls++;
    f->counted = count;
}

/* rooms_join; returns its error (returned, or through the callback, which must come once
 * and at once with the local store). md NULL: no metadata given. */
static int join(rfx_t *f, conn_t *c, const char *ch, const char *md) {
    int calls = f->st.calls;
    int rc = rooms_join(f->r, c->s, S(ch), md ? S(md) : (pd_str_t){0}, on_state, f);
    if (rc) {
        assert_int_equal(f->st.calls, calls); /* a call that fails never calls back */
        return rc;
    }
    assert_int_equal(f->st.calls, calls + 1);
    return f->st.err;
}

static void join_ok(rfx_t *f, conn_t *c, const char *ch, const char *md) {
    assert_int_equal(join(f, c, ch, md), 0);
}

static int leave(rfx_t *f, conn_t *c, const char *ch) {
    int calls = f->done_calls;
    int rc = rooms_leave(f->r, c->s, S(ch), on_done, f);
    if (rc) {
        assert_int_equal(f->done_calls, calls);
        return rc;
    }
    assert_int_equal(f->done_calls, calls + 1);
    return f->done_err;
}

static int update(rfx_t *f, conn_t *c, const char *ch, const char *md) {
    int calls = f->done_calls;
    int rc = rooms_update(f->r, c->s, S(ch), S(md), on_done, f);
    if (rc) {
        assert_int_equal(f->done_calls, calls);
        return rc;
    }
    assert_int_equal(f->done_calls, calls + 1);
    return f->done_err;
}

static int cursor(rfx_t *f, conn_t *c, const char *ch, const char *json) {
    return rooms_signal(f->r, c->s, S(ch), STORE_SIGNAL_CURSOR, S(json));
}

static int typing(rfx_t *f, conn_t *c, const char *ch, bool on) {
    return rooms_signal(f->r, c->s, S(ch), STORE_SIGNAL_TYPING, S(on ? "true" : "false"));
}

static uint32_t count_of(rfx_t *f, const char *ch) {
    int calls = f->count_calls;
    assert_int_equal(rooms_count(f->r, S(ch), on_count, f), 0);
    assert_int_equal(f->count_calls, calls + 1);
    return f->counted;
}

/* The members' ids (all of them, one page of up to 1000). */
static const char *member_ids(rfx_t *f, const char *ch) {
    int calls = f->st.calls;
    assert_int_equal(rooms_members(f->r, S(ch), (pd_str_t){0}, 1000, on_members, f), 0);
    assert_int_equal(f->st.calls, calls + 1);
    assert_int_equal(f->st.err, 0);
    return tu_str_get(&f->st.ids);
}

/* ---- reading what a client received ---- */

static const cJSON *item(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v)
        fail_msg("no \"%s\" in %s", key, cJSON_PrintUnformatted(j));
    return v;
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "a,b" of the ids of a delta list (sorted: the order of a batch is not specified). */
static void put_id_list(tu_str_t *out, const cJSON *arr, bool members) {
    const char *ids[1024];
    size_t n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        assert_true(n < 1024);
        const cJSON *id = members ? item(x, "user_id") : x;
        assert_true(cJSON_IsString(id));
        ids[n++] = id->valuestring;
    }
    qsort(ids, n, sizeof(ids[0]), cmp_cstr);
    for (size_t i = 0; i < n; i++)
        tu_str_printf(out, "%s%s", i ? "," : "", ids[i]);
}

/* A member object has exactly the documented fields. */
static void check_member(const cJSON *m) {
    static const char *const keys[] = {"user_id", "joined_at", "last_seen", "metadata", "devices"};
    size_t i = 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, m) {
        assert_true(i < 5);
        assert_string_equal(k->string, keys[i]);
        i++;
    }
    assert_int_equal(i, 5);
    assert_true(cJSON_IsNumber(item(m, "joined_at")));
    assert_true(cJSON_IsNumber(item(m, "last_seen")));
    assert_true(cJSON_IsObject(item(m, "metadata")));
    assert_true(cJSON_IsArray(item(m, "devices")));
}

static void put_member_json(tu_str_t *out, const cJSON *m) {
    check_member(m);
    tu_str_printf(out, "%s [", item(m, "user_id")->valuestring);
    const cJSON *d;
    bool first = true;
    cJSON_ArrayForEach(d, item(m, "devices")) {
        tu_str_printf(out, "%s%s", first ? "" : ",", d->valuestring);
        first = false;
    }
    char *md = cJSON_PrintUnformatted(item(m, "metadata"));
    tu_str_printf(out, "] %s", md);
    free(md);
}

/* Checks a room event's count against the tracked count (file head); false, with why, when
 * it does not follow. */
static bool track(fclient_t *c, const cJSON *j, const char *type, uint32_t count, char *why,
                  size_t cap) {
    if (!c->track)
        return true;
    uint32_t want = c->count;
    if (strcmp(type, "member_joined") == 0)
        want++;
    else if (strcmp(type, "member_left") == 0)
        want--;
    else if (strcmp(type, "channel_delta") == 0) {
        const cJSON *jm = cJSON_GetObjectItemCaseSensitive(j, "joined_more");
        const cJSON *lm = cJSON_GetObjectItemCaseSensitive(j, "left_more");
        want = want + (uint32_t)cJSON_GetArraySize(item(j, "joined")) -
               (uint32_t)cJSON_GetArraySize(item(j, "left")) +
               (jm ? (uint32_t)jm->valuedouble : 0) - (lm ? (uint32_t)lm->valuedouble : 0);
    } else if (strcmp(type, "member_updated") != 0)
        return true;
    if (count != want) {
        snprintf(why, cap, "the last count seen was %u and the changes listed make %u", c->count,
                 want);
        return false;
    }
    c->count = count;
    return true;
}

/* One line per frame received since the last call: "CHANNEL EVENT ..." */
static const char *events(conn_t *cn) {
    static tu_str_t out;
    fclient_t *c = &cn->fc;
    tu_str_free(&out);
    tu_str_get(&out);
    for (; c->read < c->n; c->read++) {
        pd_obuf_t *b = c->frames[c->read];
        const char *raw = (const char *)pd_obuf_payload(b);
        size_t len = pd_obuf_payload_len(b);
        cJSON *j = cJSON_ParseWithLength(raw, len);
        if (!j)
            fail_msg("unparsable frame %.*s", (int)len, raw);
        const char *type = item(j, "type")->valuestring;
        tu_str_printf(&out, "%s ", item(j, "channel")->valuestring);
        uint32_t count = 0;
        if (cJSON_GetObjectItemCaseSensitive(j, "count"))
            count = (uint32_t)item(j, "count")->valuedouble;
        if (strcmp(type, "member_joined") == 0 || strcmp(type, "member_updated") == 0) {
            tu_str_printf(&out, "%s ", type + 7);
            put_member_json(&out, item(j, "member"));
            tu_str_printf(&out, " %u", count);
        } else if (strcmp(type, "member_left") == 0) {
            tu_str_printf(&out, "left %s %s %u", item(j, "user_id")->valuestring,
                          item(j, "reason")->valuestring, count);
        } else if (strcmp(type, "channel_delta") == 0) {
            const cJSON *m;
            cJSON_ArrayForEach(m, item(j, "joined")) check_member(m);
            cJSON_ArrayForEach(m, item(j, "updated")) check_member(m);
            tu_str_printf(&out, "delta j=");
            put_id_list(&out, item(j, "joined"), true);
            tu_str_printf(&out, " l=");
            put_id_list(&out, item(j, "left"), false);
            tu_str_printf(&out, " u=");
            put_id_list(&out, item(j, "updated"), true);
            tu_str_printf(&out, " %u", count);
        } else if (strcmp(type, "cursor") == 0 || strcmp(type, "typing") == 0) {
            char *v = cJSON_PrintUnformatted(item(j, type));
            tu_str_printf(&out, "%s %s %s", type, item(j, "user_id")->valuestring, v);
            free(v);
        } else {
            tu_str_printf(&out, "%.*s", (int)len, raw);
        }
        tu_str_printf(&out, "\n");
        char why[128];
        bool ok = track(c, j, type, count, why, sizeof(why));
        cJSON_Delete(j);
        if (!ok)
            fail_msg("count %u in %.*s: %s", count, (int)len, raw, why);
    }
    return tu_str_get(&out);
}

/* Starts checking c's room events against count (file head). */
static void track_from(conn_t *c, uint32_t count) {
    c->fc.track = true;
    c->fc.count = count;
}

static void expect_nothing(conn_t *c) {
    assert_string_equal(events(c), "");
}

/* ---- membership ---- */

static void test_two_connections_are_one_member(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a1 = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", "{\"mode\":\"viewing\"}");
    assert_string_equal(f->st.mode, "announce");
    assert_int_equal(f->st.count, 1);
    assert_false(f->st.more);
    assert_string_equal(tu_str_get(&f->st.detail), "bob[web]{\"mode\":\"viewing\"}");

    join_ok(f, a1, "doc:1", NULL);
    assert_int_equal(f->st.count, 2);
    assert_string_equal(tu_str_get(&f->st.detail), "alice[web]{} bob[web]{\"mode\":\"viewing\"}");
    assert_string_equal(events(b), "doc:1 joined alice [web] {} 2\n");
    expect_nothing(a1); /* never the actor's own event */

    /* The second connection of alice: the same member, nothing to tell anyone. */
    join_ok(f, a2, "doc:1", NULL);
    assert_int_equal(f->st.count, 2);
    assert_string_equal(f->st.ids.s, "alice,bob");
    expect_nothing(b);
    expect_nothing(a1);
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_int_equal(gauge(f, "presenced_room_connections"), 3);
    assert_int_equal(gauge(f, "presenced_rooms_local"), 1);

    /* Leaving from one connection is not leaving the room. */
    assert_int_equal(leave(f, a1, "doc:1"), 0);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_int_equal(leave(f, a2, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 left alice left 1\n");
    expect_nothing(a1);
    expect_nothing(a2);
    assert_string_equal(member_ids(f, "doc:1"), "bob");
    assert_int_equal(gauge(f, "presenced_room_connections"), 1);
    /* Leaving twice: the connection is not in the room any more. */
    assert_int_equal(leave(f, a2, "doc:1"), PD_ENOTFOUND);
}

static void test_devices_of_a_member(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *aw = open_conn(f, "alice", "web");
    conn_t *am = open_conn(f, "alice", "mobile");
    conn_t *an = open_conn(f, "alice", NULL);
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, aw, "doc:1", NULL);
    assert_string_equal(events(b), "doc:1 joined alice [web] {} 2\n");
    join_ok(f, am, "doc:1", NULL);
    assert_string_equal(tu_str_get(&f->st.detail), "alice[mobile,web]{} bob[web]{}");
    assert_string_equal(events(b), "doc:1 updated alice [mobile,web] {} 2\n");
    expect_nothing(aw);
    /* A connection without a device label shows as unknown. */
    join_ok(f, an, "doc:1", NULL);
    assert_string_equal(events(b), "doc:1 updated alice [mobile,unknown,web] {} 2\n");
    /* A connection that is not the member's last goes at once, even on a disconnect. */
    close_conn(f, aw, ENGINE_END_DISCONNECT);
    assert_string_equal(events(b), "doc:1 updated alice [mobile,unknown] {} 2\n");
    close_conn(f, an, ENGINE_END_TIMEOUT);
    assert_string_equal(events(b), "doc:1 updated alice [mobile] {} 2\n");
    expect_nothing(am);
    assert_int_equal(leave(f, am, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 left alice left 1\n");
    advance(f, GRACE + TICK_MS);
    expect_nothing(b);
}

static void test_metadata_join_again_and_update(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", "{\"mode\":\"viewing\"}");
    assert_string_equal(events(b), "doc:1 joined alice [web] {\"mode\":\"viewing\"} 2\n");
    /* Joining again: the metadata is replaced when given, kept when not. */
    join_ok(f, a, "doc:1", "{\"mode\":\"editing\"}");
    assert_int_equal(f->st.count, 2);
    assert_string_equal(events(b), "doc:1 updated alice [web] {\"mode\":\"editing\"} 2\n");
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, a, "doc:1", "{\"mode\":\"editing\"}");
    expect_nothing(b);
    assert_int_equal(gauge(f, "presenced_room_connections"), 2);
    /* update */
    assert_int_equal(update(f, a, "doc:1", "{\"mode\":\"viewing\",\"line\":3}"), 0);
    assert_string_equal(events(b),
                        "doc:1 updated alice [web] {\"mode\":\"viewing\",\"line\":3} 2\n");
    expect_nothing(a);
    /* The same metadata again: acknowledged, nothing to tell. */
    assert_int_equal(update(f, a, "doc:1", "{\"mode\":\"viewing\",\"line\":3}"), 0);
    expect_nothing(b);
    member_ids(f, "doc:1");
    assert_string_equal(tu_str_get(&f->st.detail),
                        "alice[web]{\"mode\":\"viewing\",\"line\":3} bob[web]{}");
}

/* ---- leaving: grace, timeout, explicit ---- */

static void test_disconnect_lingers_then_disconnected(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    events(b);
    close_conn(f, a, ENGINE_END_DISCONNECT);
    expect_nothing(b);
    /* Lingering: still a member, still counted. */
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_string_equal(member_ids(f, "doc:1"), "alice,bob");
    advance(f, GRACE - 1);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 2);
    advance(f, TICK_MS + 1);
    assert_string_equal(events(b), "doc:1 left alice disconnected 1\n");
    assert_int_equal(count_of(f, "doc:1"), 1);
    advance(f, GRACE * 2);
    expect_nothing(b);
    assert_int_equal(gauge(f, "presenced_room_connections"), 1);
}

static void test_two_tabs_closed_one_member_left(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a1 = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a1, "doc:1", NULL);
    join_ok(f, a2, "doc:1", NULL);
    events(b);
    close_conn(f, a1, ENGINE_END_DISCONNECT);
    advance(f, 1000);
    close_conn(f, a2, ENGINE_END_DISCONNECT);
    expect_nothing(b);
    /* Grace runs from the last connection's end. */
    advance(f, GRACE - 1);
    expect_nothing(b);
    advance(f, TICK_MS + 1);
    assert_string_equal(events(b), "doc:1 left alice disconnected 1\n");
    advance(f, GRACE * 2);
    expect_nothing(b);
}

static void test_rejoin_inside_grace_is_silent(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", "{\"mode\":\"editing\"}");
    double joined_at = f->st.joined_at; /* alice sorts first */
    events(b);
    close_conn(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE / 2);
    /* The reload: a new connection of alice joins again with the same metadata. */
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, a2, "doc:1", "{\"mode\":\"editing\"}");
    assert_int_equal(f->st.count, 2);
    assert_string_equal(tu_str_get(&f->st.detail), "alice[web]{\"mode\":\"editing\"} bob[web]{}");
    assert_true(f->st.joined_at == joined_at); /* the same membership, not a new one */
    expect_nothing(b);
    /* The old connection's grace window ends: nothing, alice is still here. */
    advance(f, GRACE * 2);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_int_equal(gauge(f, "presenced_room_connections"), 2);
    assert_int_equal(leave(f, a2, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 left alice left 1\n");
}

static void test_rejoin_inside_grace_other_device(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    events(b);
    close_conn(f, a, ENGINE_END_DISCONNECT);
    advance(f, 1000);
    conn_t *a2 = open_conn(f, "alice", "mobile");
    join_ok(f, a2, "doc:1", NULL);
    /* No leave, no join: only the member's devices changed. */
    assert_string_equal(events(b), "doc:1 updated alice [mobile] {} 2\n");
    advance(f, GRACE * 2);
    expect_nothing(b);
}

/* Two reloads in a row: the first connection's grace window ends while the second one's
 * runs; only the last window decides. */
static void test_reload_twice(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    events(b);
    close_conn(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE / 2);
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, a2, "doc:1", NULL);
    advance(f, 1000);
    close_conn(f, a2, ENGINE_END_DISCONNECT);
    /* The first window ends: alice is still lingering by her second connection. */
    advance(f, GRACE - GRACE / 2 - 1000 + TICK_MS);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 2);
    /* The second window runs from the second close. */
    advance(f, GRACE - (GRACE - GRACE / 2 - 1000 + TICK_MS) - 1);
    expect_nothing(b);
    advance(f, TICK_MS + 1);
    assert_string_equal(events(b), "doc:1 left alice disconnected 1\n");
    assert_int_equal(gauge(f, "presenced_room_connections"), 1);
}

/* A member's connections in one room are capped like a user's sessions: the 65th is refused
 * (PD_ETOOBIG, told apart from the connection's own room cap PD_ELIMIT) and nothing changes. */
static void test_connections_per_member_cap(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    join_ok(f, b, "doc:1", NULL);
    for (int i = 0; i < PD_SESSIONS_PER_USER_MAX; i++)
        join_ok(f, open_conn(f, "alice", NULL), "doc:1", NULL);
    assert_string_equal(events(b), "doc:1 joined alice [unknown] {} 2\n");
    conn_t *extra = open_conn(f, "alice", NULL);
    assert_int_equal(join(f, extra, "doc:1", NULL), PD_ETOOBIG);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_int_equal(gauge(f, "presenced_room_connections"), 1 + PD_SESSIONS_PER_USER_MAX);
    assert_int_equal(cursor(f, extra, "doc:1", "1"), PD_ENOTFOUND);
}

static void test_timeout_leaves_at_once(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    events(b);
    close_conn(f, a, ENGINE_END_TIMEOUT);
    assert_string_equal(events(b), "doc:1 left alice timeout 1\n");
    assert_int_equal(count_of(f, "doc:1"), 1);
    advance(f, GRACE * 2);
    expect_nothing(b);
    /* A timeout of one connection of two is not a leave. */
    conn_t *c1 = open_conn(f, "carol", "web");
    conn_t *c2 = open_conn(f, "carol", "web");
    join_ok(f, c1, "doc:1", NULL);
    join_ok(f, c2, "doc:1", NULL);
    assert_string_equal(events(b), "doc:1 joined carol [web] {} 2\n");
    close_conn(f, c1, ENGINE_END_TIMEOUT);
    expect_nothing(b);
    close_conn(f, c2, ENGINE_END_TIMEOUT);
    assert_string_equal(events(b), "doc:1 left carol timeout 1\n");
}

static void test_leave_rooms_independently(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, b, "doc:2", NULL);
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, a, "doc:2", NULL);
    assert_string_equal(events(b),
                        "doc:1 joined alice [web] {} 2\ndoc:2 joined alice [web] {} 2\n");
    assert_int_equal(leave(f, a, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 left alice left 1\n");
    assert_int_equal(count_of(f, "doc:2"), 2);
    /* Closing a connection leaves all its rooms (after grace). */
    close_conn(f, a, ENGINE_END_DISCONNECT);
    advance(f, GRACE + TICK_MS);
    assert_string_equal(events(b), "doc:2 left alice disconnected 1\n");
    /* An unknown room has no members. */
    assert_int_equal(count_of(f, "nowhere"), 0);
    assert_string_equal(member_ids(f, "nowhere"), "");
    assert_false(f->st.more);
}

static void test_not_member(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    events(b);
    uint64_t in = counter(f, "presenced_room_signals_in_total");
    /* a2 is a connection of a member, but not in the room itself. */
    assert_int_equal(cursor(f, a2, "doc:1", "{\"x\":1}"), PD_ENOTFOUND);
    assert_int_equal(typing(f, a2, "doc:1", true), PD_ENOTFOUND);
    assert_int_equal(update(f, a2, "doc:1", "{\"m\":1}"), PD_ENOTFOUND);
    assert_int_equal(leave(f, a2, "doc:1"), PD_ENOTFOUND);
    /* A room nobody joined. */
    assert_int_equal(cursor(f, a, "doc:2", "{\"x\":1}"), PD_ENOTFOUND);
    assert_int_equal(update(f, a, "doc:2", "{}"), PD_ENOTFOUND);
    assert_int_equal(leave(f, a, "doc:2"), PD_ENOTFOUND);
    /* After leaving. */
    assert_int_equal(leave(f, a, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 left alice left 1\n");
    assert_int_equal(cursor(f, a, "doc:1", "{\"x\":1}"), PD_ENOTFOUND);
    assert_int_equal(typing(f, a, "doc:1", false), PD_ENOTFOUND);
    assert_int_equal(update(f, a, "doc:1", "{}"), PD_ENOTFOUND);
    assert_int_equal(leave(f, a, "doc:1"), PD_ENOTFOUND);
    /* Nothing changed, nothing was relayed or counted. */
    advance(f, 1000);
    expect_nothing(b);
    assert_int_equal(counter(f, "presenced_room_signals_in_total"), in);
    assert_int_equal(count_of(f, "doc:1"), 1);
    assert_int_equal(count_of(f, "doc:2"), 0);
}

/* ---- limits ---- */

static void test_room_limit_per_connection(void **state) {
    rfx_t *f = *state;
    f->rcfg.max_per_conn = 3;
    remake_rooms(f);
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "web");
    join_ok(f, a, "r1", NULL);
    join_ok(f, a, "r2", NULL);
    join_ok(f, a, "r3", NULL);
    int calls = f->st.calls;
    assert_int_equal(join(f, a, "r4", NULL), PD_ELIMIT);
    assert_int_equal(f->st.calls, calls);
    assert_int_equal(count_of(f, "r4"), 0);
    assert_int_equal(gauge(f, "presenced_room_connections"), 3);
    assert_int_equal(gauge(f, "presenced_rooms_local"), 3);
    assert_int_equal(rooms_local_count(f->r), 3);
    /* Joining a room it is in is not a new room. */
    join_ok(f, a, "r2", "{\"again\":true}");
    /* The limit is per connection. */
    join_ok(f, a2, "r4", NULL);
    assert_int_equal(count_of(f, "r4"), 1);
    assert_int_equal(leave(f, a, "r1"), 0);
    join_ok(f, a, "r4", NULL);
    assert_int_equal(join(f, a, "r1", NULL), PD_ELIMIT);
    assert_int_equal(count_of(f, "r1"), 0);
}

static void test_room_full(void **state) {
    rfx_t *f = *state;
    f->rcfg.max_members = 2;
    remake_rooms(f);
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *c = open_conn(f, "carol", "web");
    conn_t *a2 = open_conn(f, "alice", "mobile");
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, b, "doc:1", NULL);
    events(a);
    assert_int_equal(join(f, c, "doc:1", NULL), PD_EFULL);
    assert_int_equal(count_of(f, "doc:1"), 2);
    assert_string_equal(member_ids(f, "doc:1"), "alice,bob");
    expect_nothing(a);
    expect_nothing(b);
    assert_int_equal(gauge(f, "presenced_room_connections"), 2);
    assert_int_equal(cursor(f, c, "doc:1", "1"), PD_ENOTFOUND);
    /* Another connection of a member is not another member. */
    join_ok(f, a2, "doc:1", NULL);
    assert_int_equal(f->st.count, 2);
    assert_string_equal(events(b), "doc:1 updated alice [mobile,web] {} 2\n");
    /* A room of one's own is fine, and once someone leaves there is room. */
    join_ok(f, c, "doc:2", NULL);
    assert_int_equal(leave(f, b, "doc:1"), 0);
    join_ok(f, c, "doc:1", NULL);
    assert_int_equal(f->st.count, 2);
    assert_string_equal(events(a), "doc:1 left bob left 1\ndoc:1 joined carol [web] {} 2\n");
    /* A lingering member still holds their place. */
    close_conn(f, c, ENGINE_END_DISCONNECT);
    assert_int_equal(join(f, b, "doc:1", NULL), PD_EFULL);
    advance(f, GRACE + TICK_MS);
    join_ok(f, b, "doc:1", NULL);
}

/* ---- large rooms: interval mode ---- */

/* n users "u01".."uNN" joined to doc:1, one connection each (conns[first..]). */
static void join_users(rfx_t *f, conn_t **us, int from, int to) {
    for (int i = from; i <= to; i++) {
        char id[16];
        snprintf(id, sizeof(id), "u%02d", i);
        us[i] = open_conn(f, id, "web");
        join_ok(f, us[i], "doc:1", NULL);
    }
}

/* The one channel_delta queued to c since the last look: its lists' lengths, the counts left
 * out, the count, and the frame's size. */
typedef struct {
    int joined, left, updated, joined_more, left_more, updated_more, count;
    size_t bytes;
} delta_t;

static delta_t one_delta(conn_t *cn) {
    fclient_t *c = &cn->fc;
    assert_int_equal(c->n - c->read, 1);
    pd_obuf_t *b = c->frames[c->read];
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(b), pd_obuf_payload_len(b));
    assert_non_null(j);
    assert_string_equal(item(j, "type")->valuestring, "channel_delta");
    delta_t d = {.joined = cJSON_GetArraySize(item(j, "joined")),
                 .left = cJSON_GetArraySize(item(j, "left")),
                 .updated = cJSON_GetArraySize(item(j, "updated")),
                 .count = (int)item(j, "count")->valuedouble,
                 .bytes = pd_obuf_payload_len(b)};
    const char *more[] = {"joined_more", "left_more", "updated_more"};
    int *to[] = {&d.joined_more, &d.left_more, &d.updated_more};
    for (int i = 0; i < 3; i++) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, more[i]);
        if (m) {
            assert_true(m->valuedouble >= 1); /* present only when something was left out */
            *to[i] = (int)m->valuedouble;
        }
    }
    cJSON_Delete(j);
    events(cn); /* checks the count against the tracked one, marks it read */
    return d;
}

/* A storm of changes in one interval makes one bounded delta per member: the lists hold what
 * fits (64 KiB of members, 32 KiB of left ids), the rest is counted, the count stays exact,
 * and nobody is cut off as a slow reader. */
static void test_delta_storm_is_bounded(void **state) {
    rfx_t *f = *state;
    enum { STORM = 300 };
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0}, *s[STORM];
    join_ok(f, o, "doc:1", NULL);
    join_users(f, u, 1, 11); /* interval mode */
    advance(f, INTERVAL + TICK_MS);
    events(o);
    track_from(o, 12);

    char md[320];
    snprintf(md, sizeof(md), "{\"note\":\"%0290d\"}", 7); /* about 300 bytes of metadata */
    for (int i = 0; i < STORM; i++) {
        char id[PD_USER_ID_MAX + 1];
        snprintf(id, sizeof(id), "storm%03d-%0*d", i, PD_USER_ID_MAX - 9, 0); /* 128 bytes */
        s[i] = open_conn(f, id, "web");
        join_ok(f, s[i], "doc:1", md);
    }
    advance(f, INTERVAL + TICK_MS);
    delta_t d = one_delta(o);
    assert_int_equal(d.count, 12 + STORM);
    assert_int_equal(d.joined + d.joined_more, STORM);
    assert_true(d.joined > 0 && d.joined_more > 0);
    assert_true(d.bytes <= 64 * 1024 + 1024);
    assert_int_equal(d.left + d.left_more + d.updated + d.updated_more, 0);

    for (int i = 0; i < STORM; i++)
        assert_int_equal(leave(f, s[i], "doc:1"), 0);
    advance(f, INTERVAL + TICK_MS);
    d = one_delta(o);
    assert_int_equal(d.count, 12);
    assert_int_equal(d.left + d.left_more, STORM);
    assert_true(d.left > 0 && d.left_more > 0);
    assert_true(d.bytes <= 32 * 1024 + 1024);
    assert_int_equal(d.joined + d.joined_more + d.updated + d.updated_more, 0);
    assert_int_equal(counter(f, "presenced_room_deltas_total"), 3);
    assert_false(o->fc.gone);
}

static void test_interval_mode_switch(void **state) {
    rfx_t *f = *state;
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0};
    join_ok(f, o, "doc:1", NULL);
    track_from(o, 1);
    join_users(f, u, 1, 9); /* 10 members: the limit, still announced */
    assert_string_equal(f->st.mode, "announce");
    assert_string_equal(events(o), "doc:1 joined u01 [web] {} 2\n"
                                   "doc:1 joined u02 [web] {} 3\n"
                                   "doc:1 joined u03 [web] {} 4\n"
                                   "doc:1 joined u04 [web] {} 5\n"
                                   "doc:1 joined u05 [web] {} 6\n"
                                   "doc:1 joined u06 [web] {} 7\n"
                                   "doc:1 joined u07 [web] {} 8\n"
                                   "doc:1 joined u08 [web] {} 9\n"
                                   "doc:1 joined u09 [web] {} 10\n");
    /* The 11th member: above announce_max, changes are batched from now on. */
    join_users(f, u, 10, 10);
    assert_string_equal(f->st.mode, "interval");
    assert_int_equal(f->st.count, 11);
    expect_nothing(o);
    for (int i = 1; i <= 10; i++)
        events(u[i]); /* the joins announced before the switch */
    expect_nothing(u[10]);
    advance(f, INTERVAL - 1);
    expect_nothing(o);
    advance(f, TICK_MS + 1);
    assert_string_equal(events(o), "doc:1 delta j=u10 l= u= 11\n");
    /* Every member gets the same batch. */
    assert_string_equal(events(u[3]), "doc:1 delta j=u10 l= u= 11\n");
    assert_string_equal(events(u[10]), "doc:1 delta j=u10 l= u= 11\n");
    assert_int_equal(counter(f, "presenced_room_deltas_total"), 1);

    /* Several changes in one interval: one delta with the net changes. */
    join_users(f, u, 11, 12);
    assert_string_equal(f->st.mode, "interval");
    assert_int_equal(leave(f, u[1], "doc:1"), 0);
    assert_int_equal(update(f, u[2], "doc:1", "{\"mode\":\"editing\"}"), 0);
    expect_nothing(o);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j=u11,u12 l=u01 u=u02 12\n");
    /* The batch carries the members' current state. */
    {
        fclient_t *c = &o->fc;
        cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(c->frames[c->n - 1]),
                                         pd_obuf_payload_len(c->frames[c->n - 1]));
        assert_non_null(j);
        tu_str_t s = {0};
        put_member_json(&s, cJSON_GetArrayItem(item(j, "updated"), 0));
        assert_string_equal(tu_str_get(&s), "u02 [web] {\"mode\":\"editing\"}");
        tu_str_free(&s);
        cJSON_Delete(j);
    }

    /* A join and a leave inside one interval cancel out: no delta at all. */
    uint64_t deltas = counter(f, "presenced_room_deltas_total");
    join_users(f, u, 13, 13);
    assert_int_equal(leave(f, u[13], "doc:1"), 0);
    advance(f, INTERVAL + TICK_MS);
    expect_nothing(o);
    assert_int_equal(counter(f, "presenced_room_deltas_total"), deltas);
    /* A leave and a join again inside one interval: still a member, shown as updated. */
    assert_int_equal(leave(f, u[3], "doc:1"), 0);
    join_ok(f, u[3], "doc:1", NULL);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j= l= u=u03 12\n");
    /* A quiet interval sends nothing. */
    advance(f, INTERVAL * 3);
    expect_nothing(o);
    /* Cursors are not batched. */
    events(u[4]);
    assert_int_equal(cursor(f, u[4], "doc:1", "[1,2]"), 0);
    assert_string_equal(events(o), "doc:1 cursor u04 [1,2]\n");
    expect_nothing(u[4]);
}

static void test_interval_hysteresis(void **state) {
    rfx_t *f = *state;
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0};
    join_ok(f, o, "doc:1", NULL);
    join_users(f, u, 1, 10); /* 11 members */
    advance(f, INTERVAL + TICK_MS);
    events(o);
    track_from(o, 11);
    /* Down to 8 (80%, not below it): still batched. */
    assert_int_equal(leave(f, u[10], "doc:1"), 0);
    assert_int_equal(leave(f, u[9], "doc:1"), 0);
    assert_int_equal(leave(f, u[8], "doc:1"), 0);
    expect_nothing(o);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j= l=u08,u09,u10 u= 8\n");
    /* Hovering between 80% and 100%: no flapping, every change batched. */
    join_ok(f, u[8], "doc:1", NULL);
    assert_string_equal(f->st.mode, "interval");
    join_ok(f, u[9], "doc:1", NULL);
    assert_int_equal(leave(f, u[9], "doc:1"), 0);
    assert_int_equal(leave(f, u[8], "doc:1"), 0);
    join_ok(f, u[10], "doc:1", NULL);
    expect_nothing(o);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j=u10 l= u= 9\n");
    assert_int_equal(leave(f, u[10], "doc:1"), 0);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j= l=u10 u= 8\n");
    /* Below 80%: each change is announced again, at once. */
    assert_int_equal(leave(f, u[7], "doc:1"), 0);
    assert_string_equal(events(o), "doc:1 left u07 left 7\n");
    conn_t *n = open_conn(f, "new", "web");
    join_ok(f, n, "doc:1", NULL);
    assert_string_equal(f->st.mode, "announce");
    assert_string_equal(events(o), "doc:1 joined new [web] {} 8\n");
    /* And up to the limit itself, still announced. */
    join_ok(f, u[7], "doc:1", NULL);
    join_ok(f, u[8], "doc:1", NULL);
    assert_string_equal(f->st.mode, "announce");
    assert_string_equal(events(o), "doc:1 joined u07 [web] {} 9\ndoc:1 joined u08 [web] {} 10\n");
    advance(f, INTERVAL * 2);
    expect_nothing(o);
    /* Above it again: batched again. */
    join_ok(f, u[9], "doc:1", NULL);
    assert_string_equal(f->st.mode, "interval");
    expect_nothing(o);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j=u09 l= u= 11\n");
}

/* PROTOCOL.md section 4: "count is always the member count after the changes". When a room in
 * interval mode drops below 80% while changes are waiting for the next delta, those changes
 * must be sent with the count they lead to, before the change that crossed the line is
 * announced on its own (or together with it in one consistent delta). */
static void test_switch_back_flushes_consistent_count(void **state) {
    rfx_t *f = *state;
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0};
    join_ok(f, o, "doc:1", NULL);
    join_users(f, u, 1, 10); /* 11 */
    assert_int_equal(leave(f, u[10], "doc:1"), 0);
    assert_int_equal(leave(f, u[9], "doc:1"), 0); /* 9 */
    advance(f, INTERVAL + TICK_MS);
    events(o);
    track_from(o, 9);
    /* 9 -> 8 waits for the next delta; 8 -> 7 crosses below 80%. */
    assert_int_equal(leave(f, u[8], "doc:1"), 0);
    assert_int_equal(leave(f, u[7], "doc:1"), 0);
    advance(f, INTERVAL + TICK_MS);
    /* Each frame's count is checked against the changes it carries (track). */
    const char *got = events(o);
    assert_true(strcmp(got, "doc:1 delta j= l=u08 u= 8\ndoc:1 left u07 left 7\n") == 0 ||
                strcmp(got, "doc:1 delta j= l=u07,u08 u= 7\n") == 0);
}

/* ---- cursor and typing ---- */

static void test_signal_throttle_one_period(void **state) {
    rfx_t *f = *state;
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "mobile");
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *c = open_conn(f, "carol", "web");
    conn_t *x = open_conn(f, "xavier", "web"); /* not in the room */
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, a2, "doc:1", NULL);
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, c, "doc:1", NULL);
    join_ok(f, x, "doc:2", NULL);
    events(a);
    events(a2);
    events(b);
    /* The first signal goes at once. */
    assert_int_equal(cursor(f, a, "doc:1", "{\"line\":0}"), 0);
    assert_string_equal(events(b), "doc:1 cursor alice {\"line\":0}\n");
    assert_string_equal(events(c), "doc:1 cursor alice {\"line\":0}\n");
    /* Nine more within the period: held, the latest replacing the others. */
    for (int i = 1; i <= 9; i++) {
        char v[32];
        snprintf(v, sizeof(v), "{\"line\":%d}", i);
        advance(f, 3);
        assert_int_equal(cursor(f, a, "doc:1", v), 0);
    }
    expect_nothing(b);
    /* At the period's end the latest value goes, once. */
    advance(f, PERIOD - 27 - 1);
    expect_nothing(b);
    advance(f, TICK_MS + 1);
    assert_string_equal(events(b), "doc:1 cursor alice {\"line\":9}\n");
    assert_string_equal(events(c), "doc:1 cursor alice {\"line\":9}\n");
    advance(f, PERIOD * 5);
    expect_nothing(b);
    /* Never to the sender's own connections, never outside the room. */
    expect_nothing(a);
    expect_nothing(a2);
    expect_nothing(x);
    assert_int_equal(counter(f, "presenced_room_signals_in_total"), 10);
    assert_int_equal(counter(f, "presenced_room_signals_coalesced_total"), 8);
    assert_int_equal(counter(f, "presenced_room_signals_delivered_total"), 4);

    /* typing: the same, with its own latest value. */
    assert_int_equal(typing(f, b, "doc:1", true), 0);
    assert_string_equal(events(a), "doc:1 typing bob true\n");
    assert_string_equal(events(a2), "doc:1 typing bob true\n");
    advance(f, 5);
    assert_int_equal(typing(f, b, "doc:1", false), 0);
    advance(f, 5);
    assert_int_equal(typing(f, b, "doc:1", true), 0);
    advance(f, 5);
    assert_int_equal(typing(f, b, "doc:1", false), 0);
    expect_nothing(a);
    advance(f, PERIOD + TICK_MS);
    assert_string_equal(events(a), "doc:1 typing bob false\n");
    assert_string_equal(events(c), "doc:1 typing bob true\ndoc:1 typing bob false\n");
    expect_nothing(b);
    /* Signals never change membership. */
    expect_nothing(x);
    assert_int_equal(count_of(f, "doc:1"), 3);
}

static void test_signal_throttle_per_connection(void **state) {
    rfx_t *f = *state;
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *a2 = open_conn(f, "alice", "mobile");
    conn_t *b = open_conn(f, "bob", "web");
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, a2, "doc:1", NULL);
    join_ok(f, a, "doc:2", NULL);
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, b, "doc:2", NULL);
    events(b);
    /* Each (connection, room) has its own period. */
    assert_int_equal(cursor(f, a, "doc:1", "1"), 0);
    assert_int_equal(cursor(f, a2, "doc:1", "2"), 0);
    assert_int_equal(cursor(f, a, "doc:2", "3"), 0);
    assert_string_equal(events(b),
                        "doc:1 cursor alice 1\ndoc:1 cursor alice 2\ndoc:2 cursor alice 3\n");
    /* A value held at leave time is dropped with the connection's place in the room. */
    assert_int_equal(cursor(f, a, "doc:1", "4"), 0);
    assert_int_equal(leave(f, a, "doc:1"), 0);
    assert_string_equal(events(b), "doc:1 updated alice [mobile] {} 2\n");
    advance(f, PERIOD * 3);
    expect_nothing(b);
    /* And at close time. */
    assert_int_equal(cursor(f, a2, "doc:1", "5"), 0);
    assert_string_equal(events(b), "doc:1 cursor alice 5\n");
    assert_int_equal(cursor(f, a2, "doc:1", "6"), 0);
    close_conn(f, a2, ENGINE_END_DISCONNECT);
    advance(f, PERIOD * 3);
    expect_nothing(b);
    advance(f, GRACE);
    assert_string_equal(events(b), "doc:1 left alice disconnected 1\n");
    /* alice is still in doc:2 with her first connection. */
    assert_int_equal(count_of(f, "doc:2"), 2);
}

/* Consecutive relays of one connection's signals, as fake times; n of them. */
static size_t relay_times(conn_t *c, uint64_t *at, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < c->fc.n; i++) {
        assert_true(n < cap);
        at[n++] = c->fc.at[i];
    }
    return n;
}

/* The most relays inside any half-open window of 1000 ms. */
static size_t max_per_second(const uint64_t *at, size_t n) {
    size_t best = 0, lo = 0;
    for (size_t hi = 0; hi < n; hi++) {
        while (at[hi] - at[lo] >= 1000)
            lo++;
        if (hi - lo + 1 > best)
            best = hi - lo + 1;
    }
    return best;
}

/* A sender that signals every `every` ms for 3 s: at most hz relays per second reach the
 * others (one more is allowed for a period boundary), and the last value sent arrives. */
static void rate_run(rfx_t *f, uint32_t hz, uint64_t every) {
    f->rcfg.cursor_hz = hz;
    remake_rooms(f);
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *b = open_conn(f, "bob", "web");
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, b, "doc:1", NULL);
    uint64_t start = f->ms;
    int last = 0;
    for (int i = 0; f->ms - start < 3000; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        assert_int_equal(cursor(f, a, "doc:1", v), 0);
        last = i;
        advance(f, every);
    }
    advance(f, 1000);
    static uint64_t at[4096];
    size_t n = relay_times(b, at, 4096);
    assert_true(n >= 2);
    size_t peak = max_per_second(at, n);
    if (peak > hz + 1)
        fail_msg("cursor_hz %u, a signal every %llu ms: %zu relays within one second", hz,
                 (unsigned long long)every, peak);
    /* The last relay carries the last value. */
    fclient_t *c = &b->fc;
    char want[16];
    snprintf(want, sizeof(want), "%d", last);
    cJSON *j = cJSON_ParseWithLength((const char *)pd_obuf_payload(c->frames[c->n - 1]),
                                     pd_obuf_payload_len(c->frames[c->n - 1]));
    assert_non_null(j);
    char *v = cJSON_PrintUnformatted(item(j, "cursor"));
    assert_string_equal(v, want);
    free(v);
    cJSON_Delete(j);
}

static void test_signal_rate_default_hz(void **state) {
    rfx_t *f = *state;
    rate_run(f, 30, 1);
}

static void test_signal_rate_at_period(void **state) {
    rfx_t *f = *state;
    rate_run(f, 30, 33);
}

static void test_signal_rate_divisor_hz(void **state) {
    rfx_t *f = *state;
    rate_run(f, RHZ, PERIOD);
}

/* --cursor-hz accepts up to 1000. A rate whose period is not a whole number of milliseconds
 * must still be a bound: 400 per second is one signal every 2.5 ms, not every 2 ms. */
static void test_signal_rate_high_hz(void **state) {
    rfx_t *f = *state;
    rate_run(f, 400, 2);
}

/* ---- pagination ---- */

/* Bytewise order: "B" < "a" < "a0" < "aa" < "ab" < "b" < "é" (c3 a9) < "ｚ" (ef bd 9a) <
 * "😀" (f0 9f 98 80). Not the order of UTF-16 code units, where the emoji sorts before ｚ. */
static const char *const SORTED[] = {
    "B", "a", "a0", "aa", "ab", "b", "\xc3\xa9", "\xef\xbd\x9a", "\xf0\x9f\x98\x80"};
#define NSORTED 9

static void page(rfx_t *f, const char *after, uint32_t limit) {
    int calls = f->st.calls;
    assert_int_equal(
        rooms_members(f->r, S("doc:1"), after ? S(after) : (pd_str_t){0}, limit, on_members, f), 0);
    assert_int_equal(f->st.calls, calls + 1);
    assert_int_equal(f->st.err, 0);
    assert_int_equal(f->st.count, NSORTED);
}

static void test_pagination_order_and_cursors(void **state) {
    rfx_t *f = *state;
    /* Joined in a scrambled order. */
    static const int order[NSORTED] = {5, 8, 0, 3, 7, 1, 6, 4, 2};
    for (int i = 0; i < NSORTED; i++)
        join_ok(f, open_conn(f, SORTED[order[i]], "web"), "doc:1", NULL);
    page(f, NULL, 1000);
    assert_string_equal(f->st.ids.s, "B,a,a0,aa,ab,b,\xc3\xa9,\xef\xbd\x9a,\xf0\x9f\x98\x80");
    assert_false(f->st.more);
    /* Walking pages of 4 with the last id of each page as the next cursor. */
    page(f, NULL, 4);
    assert_string_equal(f->st.ids.s, "B,a,a0,aa");
    assert_true(f->st.more);
    page(f, "aa", 4);
    assert_string_equal(f->st.ids.s, "ab,b,\xc3\xa9,\xef\xbd\x9a");
    assert_true(f->st.more);
    page(f, "\xef\xbd\x9a", 4);
    assert_string_equal(f->st.ids.s, "\xf0\x9f\x98\x80");
    assert_false(f->st.more);
    /* A page that ends exactly at the last member says no more follow. */
    page(f, "ab", 4);
    assert_string_equal(f->st.ids.s, "b,\xc3\xa9,\xef\xbd\x9a,\xf0\x9f\x98\x80");
    assert_false(f->st.more);
    /* `after` is exclusive, and need not be a member: the first id sorting after it. */
    page(f, "a", 2);
    assert_string_equal(f->st.ids.s, "a0,aa");
    page(f, "a1", 2);
    assert_string_equal(f->st.ids.s, "aa,ab");
    page(f, "A", 1);
    assert_string_equal(f->st.ids.s, "B");
    page(f, "C", 1);
    assert_string_equal(f->st.ids.s, "a");
    page(f, "zzz", 10);
    assert_string_equal(f->st.ids.s, "\xc3\xa9,\xef\xbd\x9a,\xf0\x9f\x98\x80");
    page(f, "\xf0\x9f\x98\x80", 10);
    assert_string_equal(f->st.ids.s, "");
    assert_int_equal(f->st.n, 0);
    assert_false(f->st.more);
    page(f, "", 1);
    assert_string_equal(f->st.ids.s, "B");
    assert_true(f->st.more);
}

/* The store itself (store_local through store.h): the same order, and the page the join
 * answer holds (state_members) with more set. */
static void test_pagination_store_and_join_state(void **state) {
    rfx_t *f = *state;
    f->rcfg.state_members = 3;
    f->rcfg.announce_max = 1000;
    remake_rooms(f);
    char ids[150][8];
    for (int i = 0; i < 150; i++) {
        /* 150 users in an order unlike their ids' */
        snprintf(ids[i], sizeof(ids[i]), "m%03d", (i * 37) % 150);
        join_ok(f, open_conn(f, ids[i], "web"), "doc:1", NULL);
    }
    /* The answer to the last join: the first 3 by id, and more follow. */
    assert_int_equal(f->st.count, 150);
    assert_string_equal(f->st.ids.s, "m000,m001,m002");
    assert_true(f->st.more);
    /* Walk the store in pages of 7: every member once, in order. */
    char after[8] = "";
    int seen = 0;
    for (int pages = 0; pages < 100; pages++) {
        int calls = f->st.calls;
        assert_int_equal(
            store_room_members(f->store, S("doc:1"), (pd_str_t){0}, S(after), 7, on_members, f), 0);
        assert_int_equal(f->st.calls, calls + 1);
        assert_int_equal(f->st.count, 150);
        char *list = strdup(f->st.ids.s);
        char *save = NULL;
        for (char *id = strtok_r(list, ",", &save); id; id = strtok_r(NULL, ",", &save)) {
            char want[8];
            snprintf(want, sizeof(want), "m%03d", seen++);
            assert_string_equal(id, want);
            snprintf(after, sizeof(after), "%s", id);
        }
        free(list);
        if (!f->st.more)
            break;
        assert_int_equal(f->st.n, 7);
    }
    assert_int_equal(seen, 150);
    assert_string_equal(after, "m149");
}

/* ---- ending ---- */

static void test_flush_lingering(void **state) {
    rfx_t *f = *state;
    conn_t *b = open_conn(f, "bob", "web");
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *c = open_conn(f, "carol", "web");
    join_ok(f, b, "doc:1", NULL);
    join_ok(f, a, "doc:1", NULL);
    join_ok(f, c, "doc:1", NULL);
    join_ok(f, c, "doc:2", NULL);
    events(b);
    close_conn(f, a, ENGINE_END_DISCONNECT);
    close_conn(f, c, ENGINE_END_DISCONNECT);
    advance(f, 100);
    expect_nothing(b);
    assert_int_equal(count_of(f, "doc:1"), 3);
    rooms_flush_lingering(f->r);
    const char *got = events(b);
    assert_true(
        strcmp(got, "doc:1 left alice disconnected 2\ndoc:1 left carol disconnected 1\n") == 0 ||
        strcmp(got, "doc:1 left carol disconnected 2\ndoc:1 left alice disconnected 1\n") == 0);
    assert_int_equal(count_of(f, "doc:1"), 1);
    assert_int_equal(count_of(f, "doc:2"), 0);
    assert_int_equal(gauge(f, "presenced_room_connections"), 1);
    assert_int_equal(gauge(f, "presenced_rooms_local"), 1);
    advance(f, GRACE * 2);
    expect_nothing(b);
    /* Nothing left to flush. */
    rooms_flush_lingering(f->r);
    expect_nothing(b);
}

static void test_everything_freed(void **state) {
    rfx_t *f = *state;
    /* A bit of everything in flight, then close all: ASan reports any leak. */
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0};
    join_ok(f, o, "doc:1", NULL);
    join_users(f, u, 1, 12); /* interval mode, a delta pending */
    join_ok(f, u[1], "doc:2", "{\"a\":[1,2,3]}");
    join_ok(f, u[2], "doc:2", NULL);
    assert_int_equal(cursor(f, u[1], "doc:2", "{\"x\":1}"), 0);
    assert_int_equal(cursor(f, u[1], "doc:2", "{\"x\":2}"), 0); /* held for the period */
    assert_int_equal(typing(f, u[2], "doc:2", true), 0);
    assert_int_equal(typing(f, u[2], "doc:2", false), 0);
    close_conn(f, u[3], ENGINE_END_DISCONNECT); /* lingering */
    close_conn(f, u[4], ENGINE_END_TIMEOUT);
    assert_int_equal(leave(f, u[5], "doc:1"), 0);
    for (size_t i = 0; i < f->nconns; i++)
        if (f->conns[i]->open)
            close_conn(f, f->conns[i], i % 2 ? ENGINE_END_DISCONNECT : ENGINE_END_TIMEOUT);
    assert_int_equal(gauge(f, "presenced_room_connections") > 0, 1); /* the lingering ones */
    rooms_free(f->r);
    f->r = NULL;
    /* rooms_free ended the grace windows: the store's rooms are empty. */
    assert_int_equal(gauge(f, "presenced_room_connections"), 0);
    assert_int_equal(gauge(f, "presenced_rooms_local"), 0);
    int calls = f->count_calls;
    assert_int_equal(store_room_count(f->store, S("doc:1"), on_count, f), 0);
    assert_int_equal(f->count_calls, calls + 1);
    assert_int_equal(f->counted, 0);
    assert_int_equal(store_room_count(f->store, S("doc:2"), on_count, f), 0);
    assert_int_equal(f->counted, 0);
    /* teardown frees the engine and the store and checks the wheel is empty. */
}

static void test_leave_everything_frees_rooms(void **state) {
    rfx_t *f = *state;
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *b = open_conn(f, "bob", "web");
    char ch[16];
    for (int i = 0; i < 20; i++) {
        snprintf(ch, sizeof(ch), "room-%d", i);
        join_ok(f, a, ch, NULL);
        join_ok(f, b, ch, NULL);
    }
    assert_int_equal(rooms_local_count(f->r), 20);
    assert_int_equal(gauge(f, "presenced_room_connections"), 40);
    for (int i = 0; i < 20; i++) {
        snprintf(ch, sizeof(ch), "room-%d", i);
        assert_int_equal(leave(f, a, ch), 0);
        assert_int_equal(leave(f, b, ch), 0);
    }
    assert_int_equal(rooms_local_count(f->r), 0);
    assert_int_equal(gauge(f, "presenced_room_connections"), 0);
    assert_int_equal(gauge(f, "presenced_rooms_local"), 0);
    assert_int_equal(count_of(f, "room-3"), 0);
}

/* ---- privacy and authorization ---- */

static void privacy(rfx_t *f, conn_t *c, int op, const char *other) {
    int calls = f->done_calls;
    assert_int_equal(engine_privacy_change(c->s, op, PD_VIS_NOBODY,
                                           other ? S(other) : (pd_str_t){0}, on_done, f),
                     0);
    assert_int_equal(f->done_calls, calls + 1);
    assert_int_equal(f->done_err, 0);
}

/* The ids of the members c's connection may see, or the error. */
static const char *session_members(rfx_t *f, conn_t *c, const char *ch, const char *after,
                                   uint32_t limit) {
    int calls = f->st.calls;
    int rc = rooms_session_members(f->r, c->s, S(ch), after ? S(after) : (pd_str_t){0}, limit,
                                   on_members, f);
    if (rc)
        return rc == PD_ENOTFOUND ? "not_member" : "error";
    assert_int_equal(f->st.calls, calls + 1);
    return tu_str_get(&f->st.ids);
}

static int session_count(rfx_t *f, conn_t *c, const char *ch, uint32_t *count) {
    int calls = f->count_calls;
    int rc = rooms_session_count(f->r, c->s, S(ch), on_count, f);
    if (rc == 0) {
        assert_int_equal(f->count_calls, calls + 1);
        *count = f->counted;
    }
    return rc;
}

static void test_members_and_count_for_members_only(void **state) {
    rfx_t *f = *state;
    conn_t *a = open_conn(f, "alice", "web");
    conn_t *b = open_conn(f, "bob", "web");
    uint32_t n = 0;
    join_ok(f, a, "doc:1", NULL);
    assert_string_equal(session_members(f, b, "doc:1", NULL, 10), "not_member");
    assert_int_equal(session_count(f, b, "doc:1", &n), PD_ENOTFOUND);
    assert_int_equal(session_count(f, b, "doc:none", &n), PD_ENOTFOUND);
    join_ok(f, b, "doc:1", NULL);
    assert_string_equal(session_members(f, b, "doc:1", NULL, 10), "alice,bob");
    assert_int_equal(session_count(f, b, "doc:1", &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(leave(f, b, "doc:1"), 0);
    assert_string_equal(session_members(f, b, "doc:1", NULL, 10), "not_member");
    assert_int_equal(session_count(f, b, "doc:1", &n), PD_ENOTFOUND);
    /* The backends' view is not the room's. */
    assert_string_equal(member_ids(f, "doc:1"), "alice");
}

static void test_blocked_user_sees_nothing_of_the_blocker(void **state) {
    rfx_t *f = *state;
    conn_t *t = open_conn(f, "tess", "web");
    conn_t *c = open_conn(f, "carl", "web");
    conn_t *r = open_conn(f, "rob", "web");
    privacy(f, t, STORE_PRIV_VISIBILITY, NULL); /* invisible: rooms still show her */
    join_ok(f, t, "doc:1", NULL);
    join_ok(f, c, "doc:1", NULL);
    join_ok(f, r, "doc:1", NULL);
    assert_string_equal(tu_str_get(&f->st.ids), "carl,rob,tess");
    events(t);
    events(c);
    events(r);

    /* The block: rob sees her leave at once, nobody else sees anything. */
    privacy(f, t, STORE_PRIV_BLOCK, "rob");
    assert_string_equal(events(r), "doc:1 left tess left 3\n");
    expect_nothing(c);
    expect_nothing(t);
    assert_string_equal(session_members(f, r, "doc:1", NULL, 10), "carl,rob");
    assert_string_equal(session_members(f, r, "doc:1", "carl", 1), "rob");
    assert_false(f->st.more);
    assert_string_equal(session_members(f, c, "doc:1", NULL, 10), "carl,rob,tess");
    assert_string_equal(session_members(f, r, "doc:1", NULL, 2), "carl,rob");
    assert_false(f->st.more); /* only tess is left after rob, and rob may not see her */

    /* Her signals and changes reach carl only; rob's still reach her (the rule is one way). */
    assert_int_equal(cursor(f, t, "doc:1", "{\"x\":1}"), 0);
    assert_int_equal(typing(f, t, "doc:1", true), 0);
    assert_int_equal(update(f, t, "doc:1", "{\"m\":1}"), 0);
    assert_int_equal(cursor(f, r, "doc:1", "{\"y\":2}"), 0);
    advance(f, PERIOD + TICK_MS);
    assert_string_equal(events(c), "doc:1 cursor tess {\"x\":1}\n"
                                   "doc:1 updated tess [web] {\"m\":1} 3\n"
                                   "doc:1 cursor rob {\"y\":2}\n"
                                   "doc:1 typing tess true\n"); /* a period after her cursor */
    assert_string_equal(events(t), "doc:1 cursor rob {\"y\":2}\n");
    expect_nothing(r);

    /* Rob's second tab joins: its state leaves her out; her leave and return stay unseen. */
    conn_t *r2 = open_conn(f, "rob", "mobile");
    join_ok(f, r2, "doc:1", NULL);
    assert_string_equal(tu_str_get(&f->st.ids), "carl,rob");
    assert_int_equal(f->st.count, 3); /* the count is every member's (PROTOCOL.md) */
    events(c);
    events(t);
    assert_int_equal(leave(f, t, "doc:1"), 0);
    join_ok(f, t, "doc:1", "{\"back\":1}");
    assert_string_equal(events(c), "doc:1 left tess left 2\n"
                                   "doc:1 joined tess [web] {\"back\":1} 3\n");
    expect_nothing(r);
    expect_nothing(r2);

    /* Unblock: rob's connections see her again at once. */
    privacy(f, t, STORE_PRIV_UNBLOCK, "rob");
    assert_string_equal(events(r), "doc:1 joined tess [web] {\"back\":1} 3\n");
    assert_string_equal(events(r2), "doc:1 joined tess [web] {\"back\":1} 3\n");
    expect_nothing(c);
    advance(f, 1000);
    assert_int_equal(cursor(f, t, "doc:1", "{\"x\":3}"), 0);
    assert_string_equal(events(r), "doc:1 cursor tess {\"x\":3}\n");
    assert_string_equal(session_members(f, r, "doc:1", NULL, 10), "carl,rob,tess");
}

static void test_block_before_join_and_in_batches(void **state) {
    rfx_t *f = *state;
    conn_t *t = open_conn(f, "tess", "web");
    conn_t *r = open_conn(f, "rob", "web");
    conn_t *o = open_conn(f, "obs", "web");
    conn_t *u[32] = {0};
    privacy(f, t, STORE_PRIV_BLOCK, "rob");
    join_ok(f, r, "doc:1", NULL);
    join_ok(f, o, "doc:1", NULL);
    join_ok(f, t, "doc:1", NULL);
    assert_string_equal(tu_str_get(&f->st.ids), "obs,rob,tess");
    assert_string_equal(events(r), "doc:1 joined obs [web] {} 2\n");
    assert_string_equal(events(o), "doc:1 joined tess [web] {} 3\n");
    /* A big room: her changes travel in deltas, which leave her out for rob only. */
    join_users(f, u, 1, 10);
    advance(f, INTERVAL + TICK_MS);
    events(r);
    events(o);
    assert_int_equal(update(f, t, "doc:1", "{\"m\":2}"), 0);
    assert_int_equal(update(f, u[1], "doc:1", "{\"m\":3}"), 0);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j= l= u=tess,u01 13\n");
    assert_string_equal(events(r), "doc:1 delta j= l= u=u01 13\n");
    /* Only her change: rob gets nothing at all. */
    assert_int_equal(leave(f, t, "doc:1"), 0);
    advance(f, INTERVAL + TICK_MS);
    assert_string_equal(events(o), "doc:1 delta j= l=tess u= 12\n");
    expect_nothing(r);
}

static void test_refresh_revokes_rooms(void **state) {
    rfx_t *f = *state;
    conn_t *a = open_conn(f, "ana", "web");
    conn_t *a2 = open_conn(f, "ana", "mobile");
    conn_t *b = open_conn(f, "ben", "web");
    join_ok(f, a, "team/x", NULL);
    join_ok(f, a, "doc/y", NULL);
    join_ok(f, a, "doc/z", NULL);
    join_ok(f, a2, "doc/z", NULL); /* another connection of hers stays in doc/z */
    join_ok(f, b, "doc/y", NULL);
    join_ok(f, b, "doc/z", NULL);
    events(a);
    events(a2);
    events(b);
    char *patterns[] = {"team/*"};
    auth_claims_t cl = {.channels = patterns, .nchannels = 1};
    rooms_revoke(f->r, a->s, &cl);
    /* The connection is told, in no set order; the others see her leave where she is gone. */
    const char *got = events(a);
    assert_non_null(strstr(got,
                           "{\"type\":\"channel_left\",\"channel\":\"doc/y\",\"user_id\":\"ana\","
                           "\"reason\":\"revoked\"}"));
    assert_non_null(strstr(got,
                           "{\"type\":\"channel_left\",\"channel\":\"doc/z\",\"user_id\":\"ana\","
                           "\"reason\":\"revoked\"}"));
    assert_string_equal(events(b), "doc/z updated ana [mobile] {} 2\n"
                                   "doc/y left ana revoked 1\n");
    assert_int_equal(counter(f, "presenced_room_revocations_total"), 2);
    assert_int_equal(cursor(f, a, "doc/y", "{}"), PD_ENOTFOUND);
    assert_int_equal(update(f, a, "doc/z", "{}"), PD_ENOTFOUND);
    assert_int_equal(cursor(f, b, "doc/y", "{\"x\":1}"), 0);
    expect_nothing(a);
    assert_int_equal(cursor(f, a, "team/x", "{}"), 0);
    /* Claims allowing everything it is in: nothing happens. */
    rooms_revoke(f->r, a->s, &cl);
    auth_claims_t any = {0};
    rooms_revoke(f->r, a2->s, &any);
    expect_nothing(a);
    expect_nothing(a2);
    assert_int_equal(counter(f, "presenced_room_revocations_total"), 2);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_two_connections_are_one_member),
        T(test_devices_of_a_member),
        T(test_metadata_join_again_and_update),
        T(test_disconnect_lingers_then_disconnected),
        T(test_two_tabs_closed_one_member_left),
        T(test_rejoin_inside_grace_is_silent),
        T(test_rejoin_inside_grace_other_device),
        T(test_reload_twice),
        T(test_connections_per_member_cap),
        T(test_timeout_leaves_at_once),
        T(test_leave_rooms_independently),
        T(test_not_member),
        T(test_room_limit_per_connection),
        T(test_room_full),
        T(test_interval_mode_switch),
        T(test_delta_storm_is_bounded),
        T(test_interval_hysteresis),
        T(test_switch_back_flushes_consistent_count),
        T(test_signal_throttle_one_period),
        T(test_signal_throttle_per_connection),
        T(test_signal_rate_default_hz),
        T(test_signal_rate_at_period),
        T(test_signal_rate_divisor_hz),
        T(test_signal_rate_high_hz),
        T(test_pagination_order_and_cursors),
        T(test_pagination_store_and_join_state),
        T(test_flush_lingering),
        T(test_everything_freed),
        T(test_leave_everything_frees_rooms),
        T(test_members_and_count_for_members_only),
        T(test_blocked_user_sees_nothing_of_the_blocker),
        T(test_block_before_join_and_in_batches),
        T(test_refresh_revokes_rooms),
    };
    /* TEST_FILTER / TEST_SKIP: glob patterns of test names to run or skip. */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (getenv("TEST_SKIP"))
        cmocka_set_skip_filter(getenv("TEST_SKIP"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
