/* The embedded store, driven only through the store.h interface, with a clock and a timing
 * wheel moved by hand.
 *
 * Every presence the store hands out (to the listener, to a callback, in a bulk answer) is
 * copied into a snapshot at once, since its pointers are valid only during the call; the
 * listener and the callbacks also stamp a shared sequence number, so "the listener runs
 * before the callback" is checked, not assumed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "presence/presence.h"
#include "privacy/privacy.h"
#include "store/store.h"
#include "store/store_local.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/hashmap.h"
#include "util/wheel.h"

#define T0_MS   1000000u     /* monotonic start */
#define T0_WALL 1764316800.0 /* wall clock start, epoch seconds */
#define TICK_MS 10
#define MAX_EV  512

/* ---- snapshots of handed-out presences ---- */

typedef struct snap {
    char user[PD_USER_ID_MAX + 1];
    uint8_t status;
    double last_seen;
    char device[PD_DEVICE_MAX + 1];
    char devices[PD_SESSIONS_PER_USER_MAX][PD_DEVICE_MAX + 1];
    uint32_t ndevices;
    bool has_custom, has_activity;
    char custom[PD_CUSTOM_STATUS_MAX + 1];
    char activity[PD_ACTIVITY_MAX + 1];
    uint64_t version;
    int seq; /* order stamp */
} snap_t;

static void copy_str(char *dst, size_t cap, const char *s, size_t len) {
    assert_true(len < cap);
    memcpy(dst, s, len);
    dst[len] = '\0';
}

static void take(snap_t *d, const pd_presence_t *p, int seq) {
    memset(d, 0, sizeof(*d));
    copy_str(d->user, sizeof(d->user), p->user_id, p->user_id_len);
    d->status = p->status;
    d->last_seen = p->last_seen;
    assert_non_null(p->device);
    copy_str(d->device, sizeof(d->device), p->device, strlen(p->device));
    assert_true(p->ndevices <= PD_SESSIONS_PER_USER_MAX);
    d->ndevices = p->ndevices;
    for (uint32_t i = 0; i < p->ndevices; i++)
        copy_str(d->devices[i], sizeof(d->devices[i]), p->devices[i], strlen(p->devices[i]));
    d->has_custom = p->custom_status != NULL;
    if (p->custom_status)
        copy_str(d->custom, sizeof(d->custom), p->custom_status, strlen(p->custom_status));
    d->has_activity = p->activity != NULL;
    if (p->activity)
        copy_str(d->activity, sizeof(d->activity), p->activity, strlen(p->activity));
    d->version = p->version;
    d->seq = seq;
}

/* "a,b,c" for the device list, to compare in one assertion. */
static const char *devlist(const snap_t *s) {
    static char out[PD_SESSIONS_PER_USER_MAX * (PD_DEVICE_MAX + 1) + 1];
    out[0] = '\0';
    for (uint32_t i = 0; i < s->ndevices; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, s->devices[i]);
    }
    return out;
}

/* ---- the fixture ---- */

typedef struct fx {
    uint64_t ms;
    double wall;
    pd_clock_t clock;
    wheel_t wheel;
    pd_hashkey_t key;
    store_t *st;
    int seq;
    /* listener */
    snap_t *ev;
    size_t nev;
    /* last presence callback */
    snap_t cb;
    int cb_calls, cb_err;
    /* last remove callback */
    int rm_calls, rm_err;
    bool rm_lingering;
    /* last bulk answer */
    snap_t *got;
    size_t ngot;
    int bulk_calls;
} fx_t;

static uint64_t fx_mono(void *ctx) {
    return ((fx_t *)ctx)->ms;
}

static double fx_wall(void *ctx) {
    return ((fx_t *)ctx)->wall;
}

static void on_changed(void *ctx, const pd_presence_t *p) {
    fx_t *f = ctx;
    assert_true(f->nev < MAX_EV);
    take(&f->ev[f->nev++], p, ++f->seq);
}

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ev = calloc(MAX_EV, sizeof(*f->ev));
    f->got = calloc(16, sizeof(*f->got));
    assert_non_null(f->ev);
    assert_non_null(f->got);
    f->ms = T0_MS;
    f->wall = T0_WALL;
    f->clock = (pd_clock_t){.mono_ms = fx_mono, .wall = fx_wall, .ctx = f};
    for (int i = 0; i < 16; i++)
        f->key.k[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(wheel_init(&f->wheel, 1024, TICK_MS, f->ms), 0);
    f->st = store_local_new(&f->key, &f->wheel, &f->clock);
    assert_non_null(f->st);
    assert_string_equal(f->st->ops->name, "local");
    store_listen_presence(f->st, f, on_changed, NULL, NULL, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx_t *f = *state;
    store_destroy(f->st);
    /* The store cancelled every timer it armed. */
    assert_int_equal(f->wheel.count, 0);
    wheel_destroy(&f->wheel);
    free(f->ev);
    free(f->got);
    free(f);
    return 0;
}

/* Moves both clocks and the wheel forward. */
static void advance(fx_t *f, uint64_t ms) {
    f->ms += ms;
    f->wall += (double)ms / 1000.0;
    wheel_advance(&f->wheel, f->ms);
}

/* No requester: presence reads unfiltered by the privacy rule. */
static const pd_str_t NOBODY = {NULL, 0};

static pd_str_t S(const char *s) {
    return (pd_str_t){s, strlen(s)};
}

static void cb_presence(void *arg, int err, const pd_presence_t *p) {
    fx_t *f = arg;
    f->cb_calls++;
    f->cb_err = err;
    take(&f->cb, p, ++f->seq);
}

static void cb_removed(void *arg, int err, bool lingering) {
    fx_t *f = arg;
    f->rm_calls++;
    f->rm_err = err;
    f->rm_lingering = lingering;
}

static void cb_bulk(void *arg, int err, const pd_presence_t *ps, size_t n, const pd_str_t *hidden,
                    size_t nhidden) {
    fx_t *f = arg;
    (void)hidden;
    f->bulk_calls++;
    assert_int_equal(err, 0);
    assert_int_equal(nhidden, 0); /* no requester: nothing is filtered */
    assert_true(n <= 16);
    f->ngot = n;
    for (size_t i = 0; i < n; i++)
        take(&f->got[i], &ps[i], ++f->seq);
}

static int upsert_f(fx_t *f, const char *user, uint64_t sid, const char *device, uint8_t status,
                    const store_user_fields_t *fields) {
    store_session_t s = {
        .sid = sid, .device = device, .device_len = strlen(device), .status = status};
    return store_session_upsert(f->st, S(user), &s, fields, cb_presence, f);
}

static int upsert(fx_t *f, const char *user, uint64_t sid, const char *device, uint8_t status) {
    return upsert_f(f, user, sid, device, status, NULL);
}

static int rm(fx_t *f, const char *user, uint64_t sid, int mode) {
    return store_session_remove(f->st, S(user), sid, mode, cb_removed, f);
}

static int user_update(fx_t *f, const char *user, const store_user_fields_t *fields) {
    return store_user_update(f->st, S(user), fields, cb_presence, f);
}

/* The presence of one user, or NULL when the store does not know them. */
static const snap_t *get1(fx_t *f, const char *user) {
    pd_str_t u = S(user);
    int before = f->bulk_calls;
    assert_int_equal(store_presence_get(f->st, NOBODY, &u, 1, cb_bulk, f), 0);
    assert_int_equal(f->bulk_calls, before + 1);
    return f->ngot ? &f->got[0] : NULL;
}

static store_text_t SET(const char *s) {
    return (store_text_t){.op = STORE_SET, .s = s, .len = strlen(s)};
}

static const store_text_t KEEP = {.op = STORE_KEEP};
static const store_text_t CLEAR = {.op = STORE_CLEAR};

/* ---- sessions and aggregation ---- */

static void test_first_upsert(void **state) {
    fx_t *f = *state;
    assert_null(get1(f, "alice"));
    f->wall = T0_WALL + 0.25;
    assert_int_equal(upsert(f, "alice", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->cb_calls, 1);
    assert_int_equal(f->cb_err, 0);
    const snap_t *e = &f->ev[0];
    assert_string_equal(e->user, "alice");
    assert_int_equal(e->status, PD_ONLINE);
    assert_string_equal(e->device, "web");
    assert_string_equal(devlist(e), "web");
    assert_false(e->has_custom);
    assert_false(e->has_activity);
    assert_true(e->last_seen == T0_WALL + 0.25);
    assert_true(e->version > 0);
    /* The listener saw it first; the callback got the same view. */
    assert_true(e->seq < f->cb.seq);
    assert_int_equal(f->cb.status, PD_ONLINE);
    assert_int_equal(f->cb.version, e->version);
    assert_string_equal(devlist(&f->cb), "web");

    const snap_t *g = get1(f, "alice");
    assert_non_null(g);
    assert_int_equal(g->status, PD_ONLINE);
    assert_int_equal(g->version, e->version);
}

static void test_repeat_upsert_is_silent(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "alice", 1, "web", PD_ONLINE), 0);
    uint64_t v = f->cb.version;
    f->wall += 12.5;
    assert_int_equal(upsert(f, "alice", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, 1); /* nothing visible changed */
    assert_int_equal(f->cb_calls, 2);
    assert_int_equal(f->cb.version, v);
    /* last_seen still follows the wall clock. */
    assert_true(f->cb.last_seen == T0_WALL + 12.5);
    assert_true(get1(f, "alice")->last_seen == T0_WALL + 12.5);
}

static void test_aggregation_across_sessions(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_AWAY), 0);
    assert_int_equal(f->cb.status, PD_AWAY);
    assert_int_equal(upsert(f, "u", 2, "web", PD_ONLINE), 0);
    assert_int_equal(f->cb.status, PD_ONLINE);
    assert_int_equal(upsert(f, "u", 3, "web", PD_BUSY), 0);
    assert_int_equal(f->cb.status, PD_BUSY);
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->cb.status, PD_BUSY); /* busy still wins */
    assert_int_equal(upsert(f, "u", 3, "web", PD_AWAY), 0);
    assert_int_equal(f->cb.status, PD_ONLINE);
    assert_int_equal(upsert(f, "u", 1, "web", PD_AWAY), 0);
    assert_int_equal(upsert(f, "u", 2, "web", PD_AWAY), 0);
    assert_int_equal(f->cb.status, PD_AWAY);
    /* Events: away, online, busy, (busy kept: none), online, (online kept by 2: none), away. */
    assert_int_equal(f->nev, 5);
    const uint8_t want[] = {PD_AWAY, PD_ONLINE, PD_BUSY, PD_ONLINE, PD_AWAY};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(f->ev[i].status, want[i]);
    for (size_t i = 1; i < 5; i++)
        assert_true(f->ev[i].version > f->ev[i - 1].version);
}

static void test_devices_sorted_and_deduplicated(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 2, "mobile", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 3, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 4, "desktop", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 5, "Mobile", PD_ONLINE), 0);
    /* Byte order: uppercase first; each label once. */
    assert_string_equal(devlist(&f->cb), "Mobile,desktop,mobile,web");
    /* Session 3 duplicated "web": adding it changed nothing visible. */
    assert_int_equal(f->nev, 4);
    assert_string_equal(devlist(&f->ev[0]), "web");
    assert_string_equal(devlist(&f->ev[1]), "mobile,web");
    assert_string_equal(devlist(&f->ev[2]), "desktop,mobile,web");
    assert_string_equal(devlist(get1(f, "u")), "Mobile,desktop,mobile,web");

    /* Removing one of two "web" sessions keeps the label; removing the other drops it. */
    size_t n = f->nev;
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->nev, n);
    assert_int_equal(rm(f, "u", 3, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->nev, n + 1);
    assert_string_equal(devlist(&f->ev[n]), "Mobile,desktop,mobile");
}

static void test_device_is_most_recently_updated(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_string_equal(f->cb.device, "web");
    assert_int_equal(upsert(f, "u", 2, "mobile", PD_ONLINE), 0);
    assert_string_equal(f->cb.device, "mobile");
    assert_string_equal(f->ev[f->nev - 1].device, "mobile");
    size_t n = f->nev;
    /* Session 1 updated again: its device is the latest, though nothing visible changed. */
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, n);
    assert_string_equal(f->cb.device, "web");
    assert_string_equal(get1(f, "u")->device, "web");
    /* A session changing its label. */
    assert_int_equal(upsert(f, "u", 2, "tablet", PD_ONLINE), 0);
    assert_string_equal(f->cb.device, "tablet");
    assert_string_equal(devlist(&f->cb), "tablet,web");
    assert_int_equal(f->nev, n + 1);
    /* Removing the latest session: the device falls back to the remaining one. */
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_NOW), 0);
    assert_string_equal(get1(f, "u")->device, "web");
    /* Offline: the last one used. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    const snap_t *g = get1(f, "u");
    assert_int_equal(g->status, PD_OFFLINE);
    assert_int_equal(g->ndevices, 0);
    assert_string_equal(g->device, "web");
}

static void test_never_seen_device_is_empty(void **state) {
    fx_t *f = *state;
    store_user_fields_t fl = {.activity = SET("focus")};
    assert_int_equal(user_update(f, "ghost", &fl), 0);
    const snap_t *g = get1(f, "ghost");
    assert_non_null(g);
    assert_int_equal(g->status, PD_OFFLINE);
    assert_string_equal(g->device, "");
    assert_int_equal(g->ndevices, 0);
    assert_string_equal(g->activity, "focus");
}

static void test_version_grows_only_on_visible_changes(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    uint64_t v = f->cb.version;
    /* Not visible: the same claim again, a second session with the same label and claim, the
     * device of the latest session, last_seen. */
    f->wall += 1;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 2, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->cb.version, v);
    store_user_fields_t keep = {.custom_status = KEEP, .activity = KEEP};
    assert_int_equal(upsert_f(f, "u", 1, "web", PD_ONLINE, &keep), 0);
    assert_int_equal(f->cb.version, v);
    store_user_fields_t clear = {.custom_status = CLEAR, .activity = CLEAR};
    assert_int_equal(user_update(f, "u", &clear), 0); /* already unset */
    assert_int_equal(f->cb.version, v);
    assert_int_equal(f->nev, 1);

    /* Visible: each grows the version by one and is announced once. */
    assert_int_equal(upsert(f, "u", 2, "web", PD_BUSY), 0); /* status */
    assert_int_equal(f->cb.version, v + 1);
    store_user_fields_t cs = {.custom_status = SET("lunch")};
    assert_int_equal(user_update(f, "u", &cs), 0); /* custom_status */
    assert_int_equal(f->cb.version, v + 2);
    store_user_fields_t act = {.activity = SET("meeting")};
    assert_int_equal(user_update(f, "u", &act), 0); /* activity */
    assert_int_equal(f->cb.version, v + 3);
    assert_int_equal(upsert(f, "u", 3, "mobile", PD_AWAY), 0); /* devices */
    assert_int_equal(f->cb.version, v + 4);
    assert_int_equal(f->nev, 5);
    for (size_t i = 1; i < f->nev; i++)
        assert_int_equal(f->ev[i].version, f->ev[i - 1].version + 1);
}

static void test_listener_runs_before_callback(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_true(f->ev[0].seq < f->cb.seq);
    store_user_fields_t act = {.activity = SET("in_call")};
    assert_int_equal(user_update(f, "u", &act), 0);
    assert_int_equal(f->nev, 2);
    assert_true(f->ev[1].seq < f->cb.seq);
    assert_int_equal(f->ev[1].seq + 1, f->cb.seq);
    assert_string_equal(f->cb.activity, "in_call");
    /* A removal: the listener, then the remove callback. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->nev, 3);
    assert_int_equal(f->rm_calls, 1);
    assert_false(f->rm_lingering);
    assert_int_equal(f->ev[2].status, PD_OFFLINE);
}

static void test_no_listener_is_fine(void **state) {
    fx_t *f = *state;
    store_listen_presence(f->st, NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->cb_calls, 1);
    assert_int_equal(f->nev, 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->nev, 0);
}

static void test_remove_now(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_BUSY), 0);
    f->wall = T0_WALL + 30;
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->rm_calls, 1);
    assert_int_equal(f->rm_err, 0);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 2);
    const snap_t *e = &f->ev[1];
    assert_int_equal(e->status, PD_OFFLINE);
    assert_int_equal(e->ndevices, 0);
    assert_string_equal(e->device, "web");
    assert_true(e->last_seen == T0_WALL + 30); /* when the last session ended */
    /* Removing again, or a session or user never seen: succeeds, changes nothing. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(rm(f, "u", 99, STORE_REMOVE_GRACE), 0);
    assert_int_equal(rm(f, "nobody", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(f->rm_calls, 4);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 2);
    assert_null(get1(f, "nobody"));
    assert_int_equal(get1(f, "u")->version, e->version);
}

/* ---- grace ---- */

static void test_grace_last_session_lingers(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_BUSY), 0);
    uint64_t v = f->cb.version;
    f->wall = T0_WALL + 10;
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_int_equal(f->rm_calls, 1);
    assert_true(f->rm_lingering);
    assert_int_equal(f->nev, 1); /* nothing visible changed */
    const snap_t *g = get1(f, "u");
    assert_int_equal(g->status, PD_BUSY);
    assert_string_equal(devlist(g), "web");
    assert_int_equal(g->version, v);
    assert_true(g->last_seen == T0_WALL + 10);

    /* The grace window ends: offline now. */
    f->wall = T0_WALL + 15;
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->rm_calls, 2);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[1].status, PD_OFFLINE);
    assert_int_equal(f->ev[1].ndevices, 0);
    assert_int_equal(f->ev[1].version, v + 1);
    /* last_seen: the end of the session, between the disconnect and the end of grace. */
    assert_true(f->ev[1].last_seen >= T0_WALL + 10 && f->ev[1].last_seen <= T0_WALL + 15);
    /* Once more: gone, a no-op. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, 2);
}

static void test_grace_non_last_session_goes_at_once(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 2, "mobile", PD_BUSY), 0);
    assert_int_equal(f->nev, 2);
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_GRACE), 0);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 3);
    assert_int_equal(f->ev[2].status, PD_ONLINE);
    assert_string_equal(devlist(&f->ev[2]), "web");
    /* It is gone for good: FINAL finds nothing. */
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, 3);

    /* Same label, same claim: removed at once and nothing visible changes. */
    assert_int_equal(upsert(f, "u", 3, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, 3);
    assert_int_equal(rm(f, "u", 3, STORE_REMOVE_GRACE), 0);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 3);
    /* Then the last one lingers. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_true(f->rm_lingering);
    assert_int_equal(f->nev, 3);
    assert_int_equal(get1(f, "u")->status, PD_ONLINE);
}

static void test_final_ignores_revived_session(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_true(f->rm_lingering);
    /* The same session comes back (upserted again) before the window ends. */
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 1);
    assert_int_equal(get1(f, "u")->status, PD_ONLINE);
    /* A live session is not removed by FINAL either. */
    assert_int_equal(upsert(f, "u", 2, "web", PD_ONLINE), 0);
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_FINAL), 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, 1);
    /* Missing session, missing user. */
    assert_int_equal(rm(f, "u", 77, STORE_REMOVE_FINAL), 0);
    assert_int_equal(rm(f, "zed", 1, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->rm_calls, 6);
    assert_int_equal(get1(f, "u")->status, PD_ONLINE);
}

static void test_new_session_ends_lingering_silently(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_true(f->rm_lingering);
    /* A reload: a new session, same label, same claim. Nothing is published. */
    assert_int_equal(upsert(f, "u", 2, "web", PD_ONLINE), 0);
    assert_int_equal(f->nev, 1);
    assert_string_equal(devlist(&f->cb), "web");
    /* The lingering session is gone: FINAL of it changes nothing. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_false(f->rm_lingering);
    assert_int_equal(f->nev, 1);
    assert_int_equal(get1(f, "u")->status, PD_ONLINE);
    assert_string_equal(devlist(get1(f, "u")), "web");
}

static void test_new_session_other_device_replaces_lingering(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_true(f->rm_lingering);
    /* The user is back on another device: one event, never an offline one in between. */
    assert_int_equal(upsert(f, "u", 2, "mobile", PD_ONLINE), 0);
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[1].status, PD_ONLINE);
    assert_string_equal(devlist(&f->ev[1]), "mobile");
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, 2);
}

static void test_grace_with_lingering_sibling(void **state) {
    fx_t *f = *state;
    /* Both sessions of the user disconnect; the second is the last live one and lingers too;
     * each FINAL then removes its own. */
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "u", 2, "mobile", PD_ONLINE), 0);
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_GRACE), 0);
    assert_false(f->rm_lingering);
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_GRACE), 0);
    assert_true(f->rm_lingering);
    size_t n = f->nev;
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_FINAL), 0);
    assert_int_equal(f->nev, n + 1);
    assert_int_equal(f->ev[n].status, PD_OFFLINE);
}

/* ---- user fields ---- */

static void test_user_fields_keep_clear_set(void **state) {
    fx_t *f = *state;
    store_user_fields_t fl = {.custom_status = SET("in a meeting"), .activity = SET("meeting")};
    assert_int_equal(upsert_f(f, "u", 1, "web", PD_BUSY, &fl), 0);
    assert_int_equal(f->nev, 1);
    assert_string_equal(f->ev[0].custom, "in a meeting");
    assert_string_equal(f->ev[0].activity, "meeting");

    /* KEEP both. */
    fl = (store_user_fields_t){.custom_status = KEEP, .activity = KEEP};
    assert_int_equal(upsert_f(f, "u", 1, "web", PD_BUSY, &fl), 0);
    assert_int_equal(f->nev, 1);
    assert_string_equal(f->cb.custom, "in a meeting");
    assert_string_equal(f->cb.activity, "meeting");

    /* CLEAR one, KEEP the other. */
    fl = (store_user_fields_t){.custom_status = CLEAR, .activity = KEEP};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 2);
    assert_false(f->ev[1].has_custom);
    assert_string_equal(f->ev[1].activity, "meeting");

    /* SET to an empty text is a value, not a clear. */
    fl = (store_user_fields_t){.custom_status = SET("")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 3);
    assert_true(f->ev[2].has_custom);
    assert_string_equal(f->ev[2].custom, "");

    /* Replacing a value with another. */
    fl = (store_user_fields_t){.activity = SET("focus")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 4);
    assert_string_equal(f->ev[3].activity, "focus");

    /* The fields are the user's: a second session's update wins, a KEEP leaves them. */
    fl = (store_user_fields_t){.activity = SET("presenting")};
    assert_int_equal(upsert_f(f, "u", 2, "mobile", PD_ONLINE, &fl), 0);
    assert_string_equal(f->cb.activity, "presenting");
    assert_int_equal(upsert(f, "u", 1, "web", PD_BUSY), 0);
    assert_string_equal(f->cb.activity, "presenting");

    /* They outlive the sessions. */
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_NOW), 0);
    const snap_t *g = get1(f, "u");
    assert_int_equal(g->status, PD_OFFLINE);
    assert_string_equal(g->custom, "");
    assert_string_equal(g->activity, "presenting");
}

static void test_user_fields_same_value_is_silent(void **state) {
    fx_t *f = *state;
    store_user_fields_t fl = {.custom_status = SET("lunch"), .activity = SET("focus")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 1);
    uint64_t v = f->cb.version;
    /* The same texts again (new copies of equal strings): nothing visible changes. */
    char cs[] = "lunch", act[] = "focus";
    fl =
        (store_user_fields_t){.custom_status = {STORE_SET, cs, 5}, .activity = {STORE_SET, act, 5}};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->cb.version, v);
    assert_string_equal(f->cb.custom, "lunch");
}

/* ---- custom status expiry ---- */

static void test_custom_status_expiry(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    store_user_fields_t fl = {.custom_status = SET("back at 3"),
                              .custom_status_expires = f->wall + 60};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 2);
    assert_string_equal(f->ev[1].custom, "back at 3");
    uint64_t v = f->ev[1].version;

    advance(f, 59000);
    assert_int_equal(f->nev, 2);
    assert_string_equal(get1(f, "u")->custom, "back at 3");
    advance(f, 2000);
    assert_int_equal(f->nev, 3);
    assert_false(f->ev[2].has_custom);
    assert_int_equal(f->ev[2].status, PD_ONLINE);
    assert_int_equal(f->ev[2].version, v + 1);
    assert_false(get1(f, "u")->has_custom);
    assert_int_equal(f->wheel.count, 0);
    /* Nothing more fires. */
    advance(f, 600000);
    assert_int_equal(f->nev, 3);
}

static void test_custom_status_expiry_for_offline_user(void **state) {
    fx_t *f = *state;
    store_user_fields_t fl = {.custom_status = SET("vacation"),
                              .activity = SET("focus"),
                              .custom_status_expires = f->wall + 3600};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->ev[0].status, PD_OFFLINE);
    advance(f, 3601000);
    assert_int_equal(f->nev, 2);
    assert_false(f->ev[1].has_custom);
    assert_string_equal(f->ev[1].activity, "focus"); /* only the custom status expires */
    assert_int_equal(f->ev[1].status, PD_OFFLINE);
}

static void test_custom_status_expiry_replaced_or_cleared(void **state) {
    fx_t *f = *state;
    store_user_fields_t fl = {.custom_status = SET("a"), .custom_status_expires = f->wall + 10};
    assert_int_equal(user_update(f, "u", &fl), 0);
    /* A new text with a later expiry replaces the first timer. */
    fl = (store_user_fields_t){.custom_status = SET("b"), .custom_status_expires = f->wall + 100};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->wheel.count, 1);
    assert_int_equal(f->nev, 2);
    advance(f, 20000);
    assert_int_equal(f->nev, 2);
    assert_string_equal(get1(f, "u")->custom, "b");
    advance(f, 81000);
    assert_int_equal(f->nev, 3);
    assert_false(f->ev[2].has_custom);

    /* A text without expiry replaces one with: the timer goes. */
    fl = (store_user_fields_t){.custom_status = SET("c"), .custom_status_expires = f->wall + 10};
    assert_int_equal(user_update(f, "u", &fl), 0);
    fl = (store_user_fields_t){.custom_status = SET("d")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->wheel.count, 0);
    advance(f, 60000);
    assert_string_equal(get1(f, "u")->custom, "d");

    /* A clear cancels it; a KEEP leaves it armed. */
    fl = (store_user_fields_t){.custom_status = SET("e"), .custom_status_expires = f->wall + 10};
    assert_int_equal(user_update(f, "u", &fl), 0);
    fl = (store_user_fields_t){.custom_status = KEEP, .activity = SET("x")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->wheel.count, 1);
    fl = (store_user_fields_t){.custom_status = CLEAR};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->wheel.count, 0);
    size_t n = f->nev;
    advance(f, 60000);
    assert_int_equal(f->nev, n);

    /* An expiry already past fires at the next advance. */
    fl = (store_user_fields_t){.custom_status = SET("f"), .custom_status_expires = f->wall - 5};
    assert_int_equal(user_update(f, "u", &fl), 0);
    n = f->nev;
    advance(f, TICK_MS * 2);
    assert_int_equal(f->nev, n + 1);
    assert_false(f->ev[n].has_custom);

    /* Left armed at destroy: the store cancels it (checked in teardown). */
    fl = (store_user_fields_t){.custom_status = SET("g"), .custom_status_expires = f->wall + 10};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_int_equal(f->wheel.count, 1);
}

/* ---- limits and bulk reads ---- */

static void test_session_limit(void **state) {
    fx_t *f = *state;
    char dev[16];
    for (uint64_t i = 1; i <= PD_SESSIONS_PER_USER_MAX; i++) {
        snprintf(dev, sizeof(dev), "d%02u", (unsigned)i);
        assert_int_equal(upsert(f, "u", i, dev, PD_ONLINE), 0);
    }
    assert_int_equal(f->cb.ndevices, PD_SESSIONS_PER_USER_MAX);
    int calls = f->cb_calls;
    size_t n = f->nev;
    uint64_t v = f->cb.version;
    store_user_fields_t fl = {.activity = SET("meeting")};
    assert_int_equal(upsert_f(f, "u", 1000, "extra", PD_BUSY, &fl), PD_ELIMIT);
    assert_int_equal(f->cb_calls, calls); /* never called on failure */
    assert_int_equal(f->nev, n);
    const snap_t *g = get1(f, "u");
    assert_int_equal(g->status, PD_ONLINE);
    assert_int_equal(g->ndevices, PD_SESSIONS_PER_USER_MAX);
    assert_int_equal(g->version, v);
    assert_false(g->has_activity); /* the refused call applied nothing */

    /* Existing sessions may still update. */
    assert_int_equal(upsert(f, "u", 5, "d05", PD_BUSY), 0);
    assert_int_equal(f->cb.status, PD_BUSY);
    /* After one leaves, a new one fits. */
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_NOW), 0);
    assert_int_equal(upsert(f, "u", 1000, "extra", PD_ONLINE), 0);
    assert_int_equal(f->cb.ndevices, PD_SESSIONS_PER_USER_MAX);
    assert_int_equal(upsert(f, "u", 1001, "extra", PD_ONLINE), PD_ELIMIT);
    /* Other users are not affected. */
    assert_int_equal(upsert(f, "v", 1, "web", PD_ONLINE), 0);
}

static void test_presence_get_order_and_unknown(void **state) {
    fx_t *f = *state;
    assert_int_equal(upsert(f, "alice", 1, "web", PD_ONLINE), 0);
    assert_int_equal(upsert(f, "alice", 2, "mobile", PD_AWAY), 0);
    assert_int_equal(upsert(f, "bob", 3, "desktop", PD_BUSY), 0);
    assert_int_equal(upsert(f, "carol", 4, "web", PD_AWAY), 0);
    assert_int_equal(rm(f, "carol", 4, STORE_REMOVE_NOW), 0);

    pd_str_t ask[] = {S("carol"), S("nobody"), S("bob"), S("alice"), S("x"), S("alice")};
    assert_int_equal(store_presence_get(f->st, NOBODY, ask, 6, cb_bulk, f), 0);
    assert_int_equal(f->ngot, 4);
    assert_string_equal(f->got[0].user, "carol");
    assert_int_equal(f->got[0].status, PD_OFFLINE);
    assert_int_equal(f->got[0].ndevices, 0);
    assert_string_equal(f->got[1].user, "bob");
    assert_int_equal(f->got[1].status, PD_BUSY);
    assert_string_equal(devlist(&f->got[1]), "desktop");
    assert_string_equal(f->got[2].user, "alice");
    assert_int_equal(f->got[2].status, PD_ONLINE);
    assert_string_equal(devlist(&f->got[2]), "mobile,web");
    assert_string_equal(f->got[2].device, "mobile");
    assert_string_equal(f->got[3].user, "alice"); /* asked twice, answered twice */
    assert_string_equal(devlist(&f->got[3]), "mobile,web");

    /* None known, none asked. */
    pd_str_t none[] = {S("p"), S("q")};
    assert_int_equal(store_presence_get(f->st, NOBODY, none, 2, cb_bulk, f), 0);
    assert_int_equal(f->ngot, 0);
    assert_int_equal(store_presence_get(f->st, NOBODY, NULL, 0, cb_bulk, f), 0);
    assert_int_equal(f->ngot, 0);
    assert_int_equal(f->bulk_calls, 3);
    /* Reads announce nothing. */
    assert_int_equal(f->nev, 5);
}

static void test_user_ids_are_exact(void **state) {
    fx_t *f = *state;
    /* Ids differ by case, by a prefix, by an embedded byte: distinct users. */
    assert_int_equal(upsert(f, "Alice", 1, "web", PD_BUSY), 0);
    assert_int_equal(upsert(f, "alice", 2, "web", PD_AWAY), 0);
    assert_int_equal(upsert(f, "alic", 3, "web", PD_ONLINE), 0);
    assert_int_equal(get1(f, "Alice")->status, PD_BUSY);
    assert_int_equal(get1(f, "alice")->status, PD_AWAY);
    assert_int_equal(get1(f, "alic")->status, PD_ONLINE);
    assert_null(get1(f, "ALICE"));
    /* Removing a session under another user's id does nothing. */
    assert_int_equal(rm(f, "alice", 1, STORE_REMOVE_NOW), 0);
    assert_int_equal(get1(f, "Alice")->status, PD_BUSY);
}

static void test_last_seen_follows_wall_clock(void **state) {
    fx_t *f = *state;
    f->wall = 1700000000.5;
    assert_int_equal(upsert(f, "u", 1, "web", PD_ONLINE), 0);
    assert_true(f->cb.last_seen == 1700000000.5);
    f->wall = 1700000100.125;
    assert_int_equal(upsert(f, "u", 2, "web", PD_ONLINE), 0);
    assert_true(get1(f, "u")->last_seen == 1700000100.125);
    /* A field-only update is no sign of a session's life. */
    f->wall = 1700000200.0;
    store_user_fields_t fl = {.activity = SET("focus")};
    assert_int_equal(user_update(f, "u", &fl), 0);
    assert_true(get1(f, "u")->last_seen == 1700000100.125);
    f->wall = 1700000300.0;
    assert_int_equal(rm(f, "u", 2, STORE_REMOVE_NOW), 0);
    assert_true(get1(f, "u")->last_seen == 1700000300.0);
    f->wall = 1700000400.0;
    assert_int_equal(rm(f, "u", 1, STORE_REMOVE_NOW), 0);
    assert_true(get1(f, "u")->last_seen == 1700000400.0);
    /* Offline: it stays put. */
    f->wall = 1700009999.0;
    assert_true(get1(f, "u")->last_seen == 1700000400.0);
}

static void test_many_users(void **state) {
    fx_t *f = *state;
    store_listen_presence(f->st, NULL, NULL, NULL, NULL,
                          NULL); /* thousands of events: not recorded */
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "user-%d", i);
        assert_int_equal(
            upsert(f, id, (uint64_t)i + 1, i % 2 ? "web" : "mobile", (uint8_t)(PD_AWAY + i % 3)),
            0);
    }
    for (int i = 0; i < 5000; i += 7) {
        snprintf(id, sizeof(id), "user-%d", i);
        const snap_t *g = get1(f, id);
        assert_non_null(g);
        assert_string_equal(g->user, id);
        assert_int_equal(g->status, PD_AWAY + i % 3);
    }
    for (int i = 0; i < 5000; i += 2) {
        snprintf(id, sizeof(id), "user-%d", i);
        assert_int_equal(rm(f, id, (uint64_t)i + 1, i % 4 ? STORE_REMOVE_NOW : STORE_REMOVE_GRACE),
                         0);
    }
}

/* ---- memory: ids that were only asked about cost nothing ---- */

static int cb_done_calls, cb_done_err;
static void cb_done(void *arg, int err) {
    (void)arg;
    cb_done_calls++;
    cb_done_err = err;
}
static int explain_err;
static void cb_explain(void *arg, int err, const store_explain_t *x) {
    (void)arg;
    (void)x;
    explain_err = err;
}
static uint8_t seen_bit;
static void cb_bits(void *arg, int err, const uint8_t *visible) {
    (void)arg;
    assert_int_equal(err, 0);
    seen_bit = visible[0];
}
static char priv_answer[64];
static void cb_privacy(void *arg, int err, const store_privacy_t *p) {
    (void)arg;
    assert_int_equal(err, 0);
    snprintf(priv_answer, sizeof(priv_answer), "%d|%u|%u", p->visibility, p->ncontacts,
             p->nblocked);
}
static size_t bulk_n, bulk_hidden;
static void cb_bulk_count(void *arg, int err, const pd_presence_t *ps, size_t n,
                          const pd_str_t *hidden, size_t nhidden) {
    (void)arg;
    (void)ps;
    (void)hidden;
    assert_int_equal(err, 0);
    bulk_n = n;
    bulk_hidden = nhidden;
}

static uint64_t records(fx_t *f) {
    store_stats_t s;
    assert_int_equal(f->st->ops->stats(f->st, &s), 0);
    return s.users[PD_OFFLINE] + s.users[PD_AWAY] + s.users[PD_ONLINE] + s.users[PD_BUSY];
}

/* What every reader gets about id: "<presence: n,hidden>|<privacy>|<explain>|<can_see>". */
static const char *answers(fx_t *f, pd_str_t id) {
    static char out[160];
    pd_str_t asker = S("alice");
    assert_int_equal(store_presence_get(f->st, NOBODY, &id, 1, cb_bulk_count, f), 0);
    size_t n_any = bulk_n;
    assert_int_equal(store_presence_get(f->st, asker, &id, 1, cb_bulk_count, f), 0);
    assert_int_equal(store_privacy_get(f->st, id, cb_privacy, f), 0);
    assert_int_equal(store_explain(f->st, id, cb_explain, f), 0);
    assert_int_equal(store_can_see(f->st, id, &asker, 1, cb_bits, f), 0);
    snprintf(out, sizeof(out), "%zu,%zu,%zu|%s|%d|%u", n_any, bulk_n, bulk_hidden, priv_answer,
             explain_err, seen_bit);
    return out;
}

/* Every call a client can make about (or as) an id that never connects. */
static void touch_never_seen(fx_t *f, pd_str_t id) {
    pd_str_t alice = S("alice");
    pd_str_t z = S("zed");
    assert_int_equal(store_presence_get(f->st, alice, &id, 1, cb_bulk_count, f), 0);
    assert_int_equal(store_can_see(f->st, id, &alice, 1, cb_bits, f), 0);
    assert_int_equal(store_privacy_get(f->st, id, cb_privacy, f), 0);
    assert_int_equal(store_explain(f->st, id, cb_explain, f), 0);
    assert_int_equal(store_watch(f->st, id), 0);
    store_unwatch(f->st, id);
    /* As someone's contact or blocked user: the referrer's list holds the id. */
    assert_int_equal(
        store_privacy_change(f->st, alice, STORE_PRIV_ADD_CONTACT, 0, id, 5000, cb_done, f), 0);
    assert_int_equal(
        store_privacy_change(f->st, alice, STORE_PRIV_REMOVE_CONTACT, 0, id, 5000, cb_done, f), 0);
    /* As the user: changes of nothing, and settings given and taken back. */
    assert_int_equal(
        store_privacy_change(f->st, id, STORE_PRIV_REMOVE_CONTACT, 0, z, 5000, cb_done, f), 0);
    assert_int_equal(store_privacy_change(f->st, id, STORE_PRIV_VISIBILITY, PD_VIS_EVERYONE, z,
                                          5000, cb_done, f),
                     0);
    assert_int_equal(store_privacy_change(f->st, id, STORE_PRIV_BLOCK, 0, z, 5000, cb_done, f), 0);
    assert_int_equal(store_privacy_change(f->st, id, STORE_PRIV_UNBLOCK, 0, z, 5000, cb_done, f),
                     0);
    store_privacy_t none = {.visibility = PD_VIS_EVERYONE};
    assert_int_equal(store_privacy_replace(f->st, id, &none, 5000, cb_done, f), 0);
    store_user_fields_t clear = {.custom_status = CLEAR, .activity = CLEAR};
    assert_int_equal(store_user_update(f->st, id, &clear, cb_presence, f), 0);
    store_user_fields_t set = {.activity = SET("focus")};
    assert_int_equal(store_user_update(f->st, id, &set, cb_presence, f), 0);
    assert_int_equal(store_user_update(f->st, id, &clear, cb_presence, f), 0);
    store_user_fields_t server = {.server_status_op = STORE_SET, .server_status = PD_BUSY};
    store_user_fields_t server_off = {.server_status_op = STORE_CLEAR};
    assert_int_equal(store_user_update(f->st, id, &server, cb_presence, f), 0);
    assert_int_equal(store_user_update(f->st, id, &server_off, cb_presence, f), 0);
}

static void test_never_seen_ids_cost_nothing(void **state) {
    fx_t *f = *state;
    store_listen_presence(f->st, NULL, NULL, NULL, NULL, NULL);
    /* What must be kept: a live user, one with settings, one once connected (last_seen), one
     * with a field set by a backend. */
    assert_int_equal(upsert(f, "alice", 1, "web", PD_ONLINE), 0);
    pd_str_t b = S("bob"), m = S("mallory");
    assert_int_equal(store_privacy_change(f->st, b, STORE_PRIV_BLOCK, 0, m, 5000, cb_done, f), 0);
    assert_int_equal(upsert(f, "carol", 2, "mobile", PD_AWAY), 0);
    assert_int_equal(rm(f, "carol", 2, STORE_REMOVE_NOW), 0);
    store_user_fields_t cs = {.custom_status = SET("on leave")};
    assert_int_equal(user_update(f, "dave", &cs), 0);
    const uint64_t kept = records(f);
    assert_int_equal(kept, 4);
    const char *carol_before = answers(f, S("carol"));
    char carol[160];
    snprintf(carol, sizeof(carol), "%s", carol_before);

    /* Long ids, as --dev-auth lets a client pick: 100,000 of them, a dozen calls each. */
    char id[PD_USER_ID_MAX + 1];
    char untouched[160];
    snprintf(untouched, sizeof(untouched), "%s", answers(f, S("never-touched")));
    for (int i = 0; i < 100000; i++) {
        int len = snprintf(id, sizeof(id), "never-seen-%06d-", i);
        memset(id + len, 'x', PD_USER_ID_MAX - (size_t)len);
        id[PD_USER_ID_MAX] = '\0';
        pd_str_t sid = {id, PD_USER_ID_MAX};
        touch_never_seen(f, sid);
        assert_int_equal(cb_done_err, 0);
        if (i % 10000 == 0) {
            assert_int_equal(records(f), kept);
            /* An id that went through all of it reads exactly as one nobody mentioned. */
            assert_string_equal(answers(f, sid), untouched);
        }
    }
    assert_int_equal(records(f), kept);
    assert_string_equal(untouched, "0,0,0|0|0|0|-8|1");
    /* The kept ones answer as before. */
    assert_string_equal(answers(f, S("carol")), carol);
    assert_non_null(get1(f, "carol"));
    assert_string_equal(get1(f, "dave")->custom, "on leave");
    assert_string_equal(answers(f, S("bob")), "1,1,0|0|0|1|0|1");
    /* Settings taken back, fields cleared: those records go too. */
    assert_int_equal(store_privacy_change(f->st, b, STORE_PRIV_UNBLOCK, 0, m, 5000, cb_done, f), 0);
    store_user_fields_t uncs = {.custom_status = CLEAR};
    assert_int_equal(user_update(f, "dave", &uncs), 0);
    assert_int_equal(records(f), 2);
    assert_string_equal(answers(f, S("bob")), untouched);
    assert_string_equal(answers(f, S("dave")), untouched);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_first_upsert),
        T(test_repeat_upsert_is_silent),
        T(test_aggregation_across_sessions),
        T(test_devices_sorted_and_deduplicated),
        T(test_device_is_most_recently_updated),
        T(test_never_seen_device_is_empty),
        T(test_version_grows_only_on_visible_changes),
        T(test_listener_runs_before_callback),
        T(test_no_listener_is_fine),
        T(test_remove_now),
        T(test_grace_last_session_lingers),
        T(test_grace_non_last_session_goes_at_once),
        T(test_final_ignores_revived_session),
        T(test_new_session_ends_lingering_silently),
        T(test_new_session_other_device_replaces_lingering),
        T(test_grace_with_lingering_sibling),
        T(test_user_fields_keep_clear_set),
        T(test_user_fields_same_value_is_silent),
        T(test_custom_status_expiry),
        T(test_custom_status_expiry_for_offline_user),
        T(test_custom_status_expiry_replaced_or_cleared),
        T(test_session_limit),
        T(test_presence_get_order_and_unknown),
        T(test_user_ids_are_exact),
        T(test_last_seen_follows_wall_clock),
        T(test_many_users),
        T(test_never_seen_ids_cost_nothing),
    };
    /* TEST_FILTER / TEST_SKIP: glob patterns of test names to run or skip. */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (getenv("TEST_SKIP"))
        cmocka_set_skip_filter(getenv("TEST_SKIP"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
