/* The SQLite persistence of the embedded store (store/persist.h), on temporary directories:
 *
 *  - persist_open creates the data directory and the database (schema version 2, WAL) and
 *    migrates a version-1 file, keeping every row;
 *  - every write reads back after a close and a fresh open: users with visibility, fields
 *    (custom_status and its expiry, activity), last_seen with the last device; contacts and
 *    blocks; replace; writes of one column leave the others alone;
 *  - a file that is not a healthy database (garbage, a damaged page), a database of a newer
 *    schema, and a directory or file that cannot be written are refused with a message naming
 *    the file, and the file is left as it was (never run empty in its place);
 *  - through the store: privacy settings, fields and last_seen written by one store_local are
 *    what a new store loads from the same database, and the privacy rule still holds there.
 *
 * When the tests run as root (who may write anywhere), the "cannot write" cases run in a child
 * process that has given up root for nobody.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "log.h"
#include "privacy/privacy.h"
#include "store/persist.h"
#include "store/store.h"
#include "store/store_local.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/hashmap.h"
#include "util/wheel.h"

#define T0_MS    1000000u
#define T0_WALL  1764316800.0
#define TICK_MS  10
#define MAX_ROWS 64

static pd_str_t S(const char *s) {
    return (pd_str_t){s, strlen(s)};
}

/* ---- the fixture: a fresh directory per test, a logger into a buffer ---- */

typedef struct fx {
    char dir[128];  /* the test's temporary directory */
    char data[160]; /* dir/data: the data directory */
    char dbpath[192];
    pd_log_t log;
    char *logbuf;
    size_t loglen;
} fx_t;

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/pd-persist-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    chmod(f->dir, 0755); /* so a child that gave up root can reach what is inside */
    snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
    snprintf(f->dbpath, sizeof(f->dbpath), "%s/presenced.db", f->data);
    pd_log_init(&f->log);
    f->log.out = open_memstream(&f->logbuf, &f->loglen);
    if (!f->log.out)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx_t *f = *state;
    fclose(f->log.out);
    free(f->logbuf);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "chmod -R u+rwx '%s' 2>/dev/null; rm -rf '%s'", f->dir, f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static persist_t *open_ok(fx_t *f, const char *dir) {
    persist_t *p = NULL;
    char err[512] = "";
    int rc = persist_open(dir, &f->log, &p, err, sizeof(err));
    if (rc != 0)
        fail_msg("persist_open(%s) failed: %s", dir, err);
    assert_non_null(p);
    assert_string_equal(err, "");
    return p;
}

/* Opening must fail; returns the message (static). */
static const char *open_fails(fx_t *f, const char *dir) {
    static char err[512];
    persist_t *p = (persist_t *)1;
    memset(err, 0, sizeof(err));
    int rc = persist_open(dir, &f->log, &p, err, sizeof(err));
    if (rc == 0) {
        persist_close(p);
        fail_msg("persist_open(%s) succeeded; expected a refusal", dir);
    }
    assert_int_equal(rc, -1);
    assert_null(p);
    assert_true(strlen(err) > 0);
    return err;
}

/* ---- a loader that records every row ---- */

typedef struct row {
    char id[PD_USER_ID_MAX + 1];
    int visibility;
    char custom[PD_CUSTOM_STATUS_MAX + 1];
    bool has_custom, has_activity, has_device;
    double expires, activity_expires, server_status_expires;
    int server_status;
    char activity[PD_ACTIVITY_MAX + 1];
    double last_seen;
    char device[PD_DEVICE_MAX + 1];
} row_t;

typedef struct entry {
    char user[PD_USER_ID_MAX + 1], other[PD_USER_ID_MAX + 1];
    bool blocked;
} entry_t;

typedef struct rec {
    row_t users[MAX_ROWS];
    size_t nusers;
    entry_t entries[MAX_ROWS];
    size_t nentries;
    int stop_after; /* users: return PD_ENOMEM after this many (0: never) */
} rec_t;

static void copy(char *dst, size_t cap, const char *s, size_t len) {
    assert_true(len < cap);
    memcpy(dst, s, len);
    dst[len] = '\0';
}

static int rec_user(void *ctx, const persist_user_t *u) {
    rec_t *r = ctx;
    assert_true(r->nusers < MAX_ROWS);
    row_t *w = &r->users[r->nusers++];
    memset(w, 0, sizeof(*w));
    copy(w->id, sizeof(w->id), u->id.s, u->id.len);
    w->visibility = u->visibility;
    w->has_custom = u->f.custom_status != NULL;
    if (u->f.custom_status)
        copy(w->custom, sizeof(w->custom), u->f.custom_status, strlen(u->f.custom_status));
    w->expires = u->f.custom_status_expires;
    w->has_activity = u->f.activity != NULL;
    if (u->f.activity)
        copy(w->activity, sizeof(w->activity), u->f.activity, strlen(u->f.activity));
    w->activity_expires = u->f.activity_expires;
    w->server_status = u->f.server_status;
    w->server_status_expires = u->f.server_status_expires;
    w->last_seen = u->last_seen;
    w->has_device = u->device != NULL;
    if (u->device)
        copy(w->device, sizeof(w->device), u->device, strlen(u->device));
    if (r->stop_after && (int)r->nusers >= r->stop_after)
        return PD_ENOMEM;
    return 0;
}

static int rec_entry(void *ctx, pd_str_t user, pd_str_t other, bool blocked) {
    rec_t *r = ctx;
    assert_true(r->nentries < MAX_ROWS);
    entry_t *e = &r->entries[r->nentries++];
    copy(e->user, sizeof(e->user), user.s, user.len);
    copy(e->other, sizeof(e->other), other.s, other.len);
    e->blocked = blocked;
    return 0;
}

static const row_t *find_row(const rec_t *r, const char *id) {
    for (size_t i = 0; i < r->nusers; i++)
        if (strcmp(r->users[i].id, id) == 0)
            return &r->users[i];
    return NULL;
}

/* The entries as sorted "user>other" (contact) / "user!other" (block) lines. */
static int cmp_line(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *entries_text(const rec_t *r) {
    static char out[MAX_ROWS * 300];
    char *lines[MAX_ROWS];
    char buf[MAX_ROWS][300];
    for (size_t i = 0; i < r->nentries; i++) {
        snprintf(buf[i], sizeof(buf[i]), "%s%c%s", r->entries[i].user,
                 r->entries[i].blocked ? '!' : '>', r->entries[i].other);
        lines[i] = buf[i];
    }
    qsort(lines, r->nentries, sizeof(lines[0]), cmp_line);
    out[0] = '\0';
    for (size_t i = 0; i < r->nentries; i++) {
        strcat(out, lines[i]);
        strcat(out, " ");
    }
    return out;
}

static void load_all(persist_t *p, rec_t *r) {
    memset(r, 0, sizeof(*r));
    persist_loader_t l = {.ctx = r, .user = rec_user, .entry = rec_entry};
    assert_int_equal(persist_load(p, &l), 0);
}

/* Saves the user-level fields: custom_status and activity, no expiry of the activity, no
 * backend status. */
static int save_fields(persist_t *p, const char *user, const char *cs, double cs_exp,
                       const char *act) {
    persist_fields_t f = {.custom_status = cs, .custom_status_expires = cs_exp, .activity = act};
    return persist_save_fields(p, S(user), &f);
}

/* ---- opening ---- */

static void test_open_creates(void **state) {
    fx_t *f = *state;
    struct stat sb;
    assert_int_equal(stat(f->data, &sb), -1); /* not there yet */
    persist_t *p = open_ok(f, f->data);
    assert_int_equal(stat(f->data, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(sb.st_mode & 0777, 0700); /* settings are personal data */
    assert_int_equal(stat(f->dbpath, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    rec_t *r = calloc(1, sizeof(*r));
    load_all(p, r);
    assert_int_equal(r->nusers, 0);
    assert_int_equal(r->nentries, 0);
    persist_close(p);

    /* What a fresh database holds: schema version 2 in WAL mode, the two tables. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 2);
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT group_concat(name, ',') FROM (SELECT name FROM "
                                        "sqlite_master WHERE type = 'table' ORDER BY name)",
                                        -1, &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "privacy_entries,users");
    sqlite3_finalize(s);
    sqlite3_close(db);

    /* Opening again: the same (existing directory, existing file). */
    p = open_ok(f, f->data);
    load_all(p, r);
    assert_int_equal(r->nusers, 0);
    persist_close(p);
    persist_close(NULL); /* harmless */
    free(r);
}

/* ---- writes read back ---- */

static void write_sample(persist_t *p) {
    /* alice: contacts-only, two contacts (one added twice, one removed), one block, a
     * custom status with expiry, an activity, last_seen. */
    assert_int_equal(persist_save_visibility(p, S("alice"), PD_VIS_CONTACTS), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("bob"), false, true), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("bob"), false, true), 0); /* again */
    assert_int_equal(persist_save_entry(p, S("alice"), S("carol"), false, true), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("zed"), false, true), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("zed"), false, false), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("nobody-there"), false, false), 0);
    assert_int_equal(persist_save_entry(p, S("alice"), S("mallory"), true, true), 0);
    /* The same id in both lists is two rows. */
    assert_int_equal(persist_save_entry(p, S("alice"), S("carol"), true, true), 0);
    assert_int_equal(save_fields(p, "alice", "in a meeting", T0_WALL + 3600, "meeting"), 0);
    assert_int_equal(persist_begin(p), 0);
    assert_int_equal(persist_save_last_seen(p, S("alice"), T0_WALL + 0.125, "web"), 0);
    assert_int_equal(persist_save_last_seen(p, S("bob"), T0_WALL - 60.5, "mobile"), 0);
    assert_int_equal(persist_commit(p), 0);
    /* The fields and last_seen writes left visibility alone, and the reverse. */
    assert_int_equal(persist_save_visibility(p, S("bob"), PD_VIS_NOBODY), 0);
    /* carol: only fields, a cleared one (NULL), every expiry and a backend's status. */
    persist_fields_t cf = {.activity = "focus",
                           .activity_expires = T0_WALL + 600,
                           .server_status = PD_BUSY,
                           .server_status_expires = T0_WALL + 900.25};
    assert_int_equal(persist_save_fields(p, S("carol"), &cf), 0);
    /* dave: everything replaced at once (the old lists are gone). */
    assert_int_equal(persist_save_entry(p, S("dave"), S("old-contact"), false, true), 0);
    assert_int_equal(persist_save_entry(p, S("dave"), S("old-block"), true, true), 0);
    pd_str_t dc[] = {S("erin"), S("bob")};
    pd_str_t db[] = {S("mallory")};
    assert_int_equal(persist_replace_privacy(p, S("dave"), PD_VIS_EVERYONE, dc, 2, db, 1), 0);
    /* Non-ASCII ids and texts. */
    assert_int_equal(save_fields(p, "w\xc3\xa9l \xe2\x98\x83", "caf\xc3\xa9 \xe2\x98\x95", 0, NULL),
                     0);
    assert_int_equal(persist_save_entry(p, S("w\xc3\xa9l \xe2\x98\x83"), S("\xc3\xbc"), true, true),
                     0);
}

static void check_sample(persist_t *p) {
    rec_t *r = calloc(1, sizeof(*r));
    load_all(p, r);
    assert_int_equal(r->nusers, 5);

    const row_t *a = find_row(r, "alice");
    assert_non_null(a);
    assert_int_equal(a->visibility, PD_VIS_CONTACTS);
    assert_true(a->has_custom);
    assert_string_equal(a->custom, "in a meeting");
    assert_true(a->expires == T0_WALL + 3600);
    assert_true(a->has_activity);
    assert_string_equal(a->activity, "meeting");
    assert_true(a->last_seen == T0_WALL + 0.125);
    assert_true(a->has_device);
    assert_string_equal(a->device, "web");

    const row_t *b = find_row(r, "bob");
    assert_non_null(b);
    assert_int_equal(b->visibility, PD_VIS_NOBODY);
    assert_false(b->has_custom);
    assert_false(b->has_activity);
    assert_true(b->expires == 0);
    assert_int_equal(b->server_status, 0);
    assert_true(b->activity_expires == 0 && b->server_status_expires == 0);
    assert_true(b->last_seen == T0_WALL - 60.5);
    assert_string_equal(b->device, "mobile");

    const row_t *c = find_row(r, "carol");
    assert_non_null(c);
    assert_int_equal(c->visibility, PD_VIS_EVERYONE);
    assert_false(c->has_custom);
    assert_true(c->has_activity);
    assert_string_equal(c->activity, "focus");
    assert_true(c->activity_expires == T0_WALL + 600);
    assert_int_equal(c->server_status, PD_BUSY);
    assert_true(c->server_status_expires == T0_WALL + 900.25);
    assert_true(c->last_seen == 0);
    assert_false(c->has_device);

    const row_t *d = find_row(r, "dave");
    assert_non_null(d);
    assert_int_equal(d->visibility, PD_VIS_EVERYONE);

    const row_t *w = find_row(r, "w\xc3\xa9l \xe2\x98\x83");
    assert_non_null(w);
    assert_string_equal(w->custom, "caf\xc3\xa9 \xe2\x98\x95");
    assert_false(w->has_activity);

    assert_string_equal(entries_text(r), "alice!carol alice!mallory alice>bob alice>carol "
                                         "dave!mallory dave>bob dave>erin "
                                         "w\xc3\xa9l \xe2\x98\x83!\xc3\xbc ");
    free(r);
}

static void test_round_trip(void **state) {
    fx_t *f = *state;
    persist_t *p = open_ok(f, f->data);
    write_sample(p);
    /* Visible on the same handle at once (committed) ... */
    check_sample(p);
    persist_close(p);
    /* ... and after a close and a new open. */
    p = open_ok(f, f->data);
    check_sample(p);

    /* Later writes replace: fields cleared, visibility back, last_seen moved. */
    assert_int_equal(save_fields(p, "alice", NULL, 0, NULL), 0);
    assert_int_equal(persist_save_visibility(p, S("alice"), PD_VIS_EVERYONE), 0);
    assert_int_equal(persist_begin(p), 0);
    assert_int_equal(persist_save_last_seen(p, S("alice"), T0_WALL + 99.5, NULL), 0);
    assert_int_equal(persist_commit(p), 0);
    assert_int_equal(persist_replace_privacy(p, S("alice"), PD_VIS_NOBODY, NULL, 0, NULL, 0), 0);
    persist_close(p);
    p = open_ok(f, f->data);
    rec_t *r = calloc(1, sizeof(*r));
    load_all(p, r);
    const row_t *a = find_row(r, "alice");
    assert_non_null(a);
    assert_int_equal(a->visibility, PD_VIS_NOBODY);
    assert_false(a->has_custom);
    assert_false(a->has_activity);
    assert_true(a->expires == 0);
    assert_true(a->last_seen == T0_WALL + 99.5);
    assert_false(a->has_device);
    assert_string_equal(entries_text(r), "dave!mallory dave>bob dave>erin "
                                         "w\xc3\xa9l \xe2\x98\x83!\xc3\xbc ");

    /* A loader that stops: the load stops with its error. */
    memset(r, 0, sizeof(*r));
    r->stop_after = 2;
    persist_loader_t l = {.ctx = r, .user = rec_user, .entry = rec_entry};
    assert_int_equal(persist_load(p, &l), PD_ENOMEM);
    assert_int_equal(r->nusers, 2);
    assert_int_equal(r->nentries, 0);
    free(r);
    persist_close(p);
}

static void test_last_seen_batch_rolls_back(void **state) {
    fx_t *f = *state;
    persist_t *p = open_ok(f, f->data);
    /* A batch is one transaction: nothing of it is visible until the commit. */
    assert_int_equal(persist_begin(p), 0);
    assert_int_equal(persist_save_last_seen(p, S("u1"), T0_WALL + 1, "web"), 0);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM users", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 0);
    sqlite3_reset(s);
    assert_int_equal(persist_commit(p), 0);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 1);
    sqlite3_finalize(s);
    sqlite3_close(db);
    persist_close(p);
}

/* ---- refusals ---- */

static void read_whole(const char *path, uint8_t **buf, size_t *len) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    assert_true(n >= 0);
    fseek(fp, 0, SEEK_SET);
    *buf = malloc((size_t)n + 1);
    assert_non_null(*buf);
    assert_int_equal(fread(*buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The copy at path is refused as unhealthy, and left byte for byte as it was. */
static void expect_unhealthy(fx_t *f, const char *dir, const char *path) {
    uint8_t *before, *after;
    size_t nb, na;
    read_whole(path, &before, &nb);
    const char *err = open_fails(f, dir);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "'%s' is not a healthy SQLite database (", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0 ||
        !ends_with(err, "); restore it from a backup or move it away"))
        fail_msg("unexpected message: %s", err);
    /* Something between the parentheses: SQLite's own words. */
    assert_true(strlen(err) >
                strlen(prefix) + strlen("); restore it from a backup or move it away"));
    read_whole(path, &after, &na);
    assert_int_equal(na, nb);
    assert_memory_equal(after, before, nb);
    free(before);
    free(after);
}

static void test_corrupt_refused(void **state) {
    fx_t *f = *state;
    /* A real database with enough rows to span several pages. */
    persist_t *p = open_ok(f, f->data);
    char id[64];
    assert_int_equal(persist_begin(p), 0);
    for (int i = 0; i < 400; i++) {
        snprintf(id, sizeof(id), "user-%04d-with-a-longer-id-to-fill-pages", i);
        assert_int_equal(persist_save_last_seen(p, S(id), T0_WALL + i, "web"), 0);
    }
    assert_int_equal(persist_commit(p), 0);
    persist_close(p);
    uint8_t *orig;
    size_t len;
    read_whole(f->dbpath, &orig, &len);
    assert_true(len >= 4 * 4096);

    /* 1. A copy whose pages after the first are overwritten with garbage. */
    char dir1[200], path1[240];
    snprintf(dir1, sizeof(dir1), "%s/damaged", f->dir);
    snprintf(path1, sizeof(path1), "%s/presenced.db", dir1);
    assert_int_equal(mkdir(dir1, 0700), 0);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    memcpy(bad, orig, len);
    uint64_t seed = 42;
    for (size_t i = 4096; i < len; i++)
        bad[i] = (uint8_t)tu_rand(&seed);
    FILE *fp = fopen(path1, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bad, 1, len, fp), len);
    fclose(fp);
    expect_unhealthy(f, dir1, path1);

    /* 2. A copy that is garbage from its first byte. */
    char dir2[200], path2[240];
    snprintf(dir2, sizeof(dir2), "%s/garbage", f->dir);
    snprintf(path2, sizeof(path2), "%s/presenced.db", dir2);
    assert_int_equal(mkdir(dir2, 0700), 0);
    for (size_t i = 0; i < len; i++)
        bad[i] = (uint8_t)tu_rand(&seed);
    fp = fopen(path2, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bad, 1, len, fp), len);
    fclose(fp);
    expect_unhealthy(f, dir2, path2);

    /* 3. Text where a database should be (a short file). */
    char dir3[200], path3[240];
    snprintf(dir3, sizeof(dir3), "%s/text", f->dir);
    snprintf(path3, sizeof(path3), "%s/presenced.db", dir3);
    assert_int_equal(mkdir(dir3, 0700), 0);
    fp = fopen(path3, "wb");
    assert_non_null(fp);
    fputs("this is not a database, it is a grocery list: eggs, milk, bread\n", fp);
    fclose(fp);
    expect_unhealthy(f, dir3, path3);
    free(bad);

    /* The original is still fine: it opens, and holds its 400 users. */
    p = open_ok(f, f->data);
    persist_close(p);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM users", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 400);
    sqlite3_finalize(s);
    sqlite3_close(db);
    free(orig);
}

static void test_newer_schema_refused(void **state) {
    fx_t *f = *state;
    persist_t *p = open_ok(f, f->data);
    assert_int_equal(persist_save_visibility(p, S("alice"), PD_VIS_NOBODY), 0);
    persist_close(p);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=3", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    const char *err = open_fails(f, f->data);
    char want[400];
    snprintf(want, sizeof(want), "'%s' has schema version 3, newer than this presenced (2)",
             f->dbpath);
    assert_string_equal(err, want);
    /* Not downgraded behind the operator's back. */
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 3);
    sqlite3_finalize(s);
    sqlite3_close(db);
    /* A much newer one too. */
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=4000", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    err = open_fails(f, f->data);
    snprintf(want, sizeof(want), "'%s' has schema version 4000, newer than this presenced (2)",
             f->dbpath);
    assert_string_equal(err, want);
}

/* A database written by the first schema (version 1 as committed in c35a1fe: users without the
 * expiry and backend-status columns, privacy_entries' columns out of key order, which SQLite
 * 3.40's quick_check misreports) is migrated to version 2, not refused: a restart after an
 * upgrade loses nothing. */
static void test_first_schema_opens(void **state) {
    fx_t *f = *state;
    assert_int_equal(mkdir(f->data, 0700), 0);
    sqlite3 *db;
    assert_int_equal(
        sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
        SQLITE_OK);
    const char *v1 =
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE users (id TEXT PRIMARY KEY, visibility INTEGER NOT NULL DEFAULT 0,"
        "  custom_status TEXT, custom_status_expires REAL NOT NULL DEFAULT 0, activity TEXT,"
        "  last_seen REAL NOT NULL DEFAULT 0, device TEXT) WITHOUT ROWID;"
        "CREATE TABLE privacy_entries (user TEXT NOT NULL, other TEXT NOT NULL,"
        "  blocked INTEGER NOT NULL, PRIMARY KEY (user, blocked, other)) WITHOUT ROWID;"
        "INSERT INTO users VALUES ('alice', 2, 'in a meeting', 0, 'meeting', 1764316800.5, 'web');"
        "INSERT INTO privacy_entries VALUES ('alice', 'bob', 0), ('alice', 'carol', 1);"
        "PRAGMA user_version=1;";
    char *msg = NULL;
    assert_int_equal(sqlite3_exec(db, v1, NULL, NULL, &msg), SQLITE_OK);
    sqlite3_close(db);

    persist_t *p = open_ok(f, f->data);
    rec_t *r = calloc(1, sizeof(*r));
    load_all(p, r);
    assert_int_equal(r->nusers, 1);
    assert_int_equal(r->nentries, 2);
    const row_t *a = find_row(r, "alice");
    assert_non_null(a);
    assert_int_equal(a->visibility, PD_VIS_NOBODY);
    assert_string_equal(a->custom, "in a meeting");
    assert_string_equal(a->activity, "meeting");
    assert_true(a->last_seen == 1764316800.5);
    assert_string_equal(a->device, "web");
    /* And it can be written with today's statements. */
    assert_int_equal(save_fields(p, "alice", "back", 0, NULL), 0);
    persist_close(p);

    /* Now version 2, and healthy by quick_check alone. */
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 2);
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
    sqlite3_finalize(s);
    sqlite3_close(db);
    /* Opening the migrated file again changes nothing. */
    p = open_ok(f, f->data);
    memset(r, 0, sizeof(*r));
    load_all(p, r);
    assert_int_equal(r->nusers, 1);
    assert_int_equal(r->nentries, 2);
    free(r);
    persist_close(p);
}

/* Runs persist_open(dir) as nobody when root (forked), as is otherwise; the message of the
 * refusal into msg (empty when it opened). Returns persist_open's result. */
static int open_unprivileged(fx_t *f, const char *dir, char *msg, size_t cap) {
    if (geteuid() != 0) {
        persist_t *p = NULL;
        int rc = persist_open(dir, &f->log, &p, msg, cap);
        if (rc == 0) {
            msg[0] = '\0';
            persist_close(p);
        }
        return rc;
    }
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(99);
        char err[512] = "";
        persist_t *p = NULL;
        int rc = persist_open(dir, &f->log, &p, err, sizeof(err));
        if (rc == 0)
            persist_close(p);
        ssize_t w = write(fds[1], err, strlen(err));
        (void)w;
        close(fds[1]);
        _exit(rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < cap && (got = read(fds[0], msg + n, cap - 1 - n)) > 0)
        n += (size_t)got;
    msg[n] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_not_equal(WEXITSTATUS(status), 99);
    return WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void test_unwritable_refused(void **state) {
    fx_t *f = *state;
    char msg[512], want[512];

    /* 1. A data directory that cannot be created (its parent is read-only). */
    char ro[200], sub[240];
    snprintf(ro, sizeof(ro), "%s/ro", f->dir);
    snprintf(sub, sizeof(sub), "%s/data", ro);
    assert_int_equal(mkdir(ro, 0555), 0);
    assert_int_equal(chmod(ro, 0555), 0);
    assert_int_equal(open_unprivileged(f, sub, msg, sizeof(msg)), -1);
    snprintf(want, sizeof(want), "cannot create data directory '%s': Permission denied", sub);
    assert_string_equal(msg, want);

    /* 2. A data directory that exists but cannot be written (no database in it yet). */
    assert_int_equal(open_unprivileged(f, ro, msg, sizeof(msg)), -1);
    snprintf(want, sizeof(want), "cannot open '%s/presenced.db': unable to open database file", ro);
    assert_string_equal(msg, want);

    /* 3. A database file that cannot be written, in a directory that can. */
    char rw[200], rwdb[240];
    snprintf(rw, sizeof(rw), "%s/rw", f->dir);
    snprintf(rwdb, sizeof(rwdb), "%s/presenced.db", rw);
    persist_t *p = open_ok(f, rw);
    assert_int_equal(persist_save_visibility(p, S("alice"), PD_VIS_NOBODY), 0);
    persist_close(p);
    assert_int_equal(chmod(rw, 0777), 0);
    assert_int_equal(chmod(rwdb, 0444), 0);
    assert_int_equal(open_unprivileged(f, rw, msg, sizeof(msg)), -1);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "cannot write '%s': ", rwdb);
    if (strncmp(msg, prefix, strlen(prefix)) != 0)
        fail_msg("unexpected message: %s", msg);

    /* 4. A data directory path that is a file. */
    char file[200];
    snprintf(file, sizeof(file), "%s/plainfile", f->dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    const char *err = open_fails(f, file);
    snprintf(want, sizeof(want), "cannot open '%s/presenced.db': unable to open database file",
             file);
    assert_string_equal(err, want);
}

/* ---- through the store ---- */

typedef struct sfx {
    uint64_t ms;
    double wall;
    pd_clock_t clock;
    wheel_t wheel;
    pd_hashkey_t key;
    store_t *st;
    persist_t *p;
    uv_loop_t loop; /* where the writer's results arrive */
    int privacy_events;
} sfx_t;

static uint64_t sfx_mono(void *ctx) {
    return ((sfx_t *)ctx)->ms;
}
static double sfx_wall(void *ctx) {
    return ((sfx_t *)ctx)->wall;
}
static void sfx_presence(void *ctx, const pd_presence_t *p) {
    (void)ctx;
    (void)p;
}
static void sfx_privacy(void *ctx, pd_str_t user) {
    (void)user;
    ((sfx_t *)ctx)->privacy_events++;
}

static void store_up(fx_t *f, sfx_t *s, double wall) {
    memset(s, 0, sizeof(*s));
    s->ms = T0_MS;
    s->wall = wall;
    s->clock = (pd_clock_t){.mono_ms = sfx_mono, .wall = sfx_wall, .ctx = s};
    for (int i = 0; i < 16; i++)
        s->key.k[i] = (uint8_t)(i * 13 + 5);
    assert_int_equal(wheel_init(&s->wheel, 1024, TICK_MS, s->ms), 0);
    s->st = store_local_new(&s->key, &s->wheel, &s->clock);
    assert_non_null(s->st);
    store_listen_presence(s->st, s, sfx_presence, NULL, sfx_privacy, NULL);
    s->p = open_ok(f, f->data);
    assert_int_equal(uv_loop_init(&s->loop), 0);
    assert_int_equal(store_local_load(s->st, s->p, &f->log, &s->loop), 0);
}

static void store_down(sfx_t *s) {
    store_shutdown(s->st);
    store_destroy(s->st);
    assert_int_equal(s->wheel.count, 0);
    wheel_destroy(&s->wheel);
    persist_close(s->p);
    assert_int_equal(uv_loop_close(&s->loop), 0);
}

/* Runs the loop until every queued write is committed and called back. */
static void settle(sfx_t *s) {
    uv_run(&s->loop, UV_RUN_DEFAULT);
    assert_int_equal(persist_pending(s->p), 0);
}

static void advance(sfx_t *s, uint64_t ms) {
    s->ms += ms;
    s->wall += (double)ms / 1000.0;
    wheel_advance(&s->wheel, s->ms);
    settle(s); /* a flush of last_seen is written by the writer thread */
}

static int done_err;
static int done_calls;
static void on_done(void *arg, int err) {
    (void)arg;
    done_calls++;
    done_err = err;
}

/* A change: answered only once committed, never from inside the call. */
static void change(sfx_t *s, const char *user, int op, uint8_t vis, const char *other) {
    int before = done_calls;
    assert_int_equal(store_privacy_change(s->st, S(user), op, vis, other ? S(other) : S(""), 5000,
                                          on_done, NULL),
                     0);
    assert_int_equal(done_calls, before);
    settle(s);
    assert_int_equal(done_calls, before + 1);
    assert_int_equal(done_err, 0);
}

/* privacy_get as "vis|c1,c2|b1,b2". */
static char priv_text[2048];
static void on_priv(void *arg, int err, const store_privacy_t *p) {
    (void)arg;
    assert_int_equal(err, 0);
    snprintf(priv_text, sizeof(priv_text), "%s|", privacy_visibility_name(p->visibility));
    for (uint32_t i = 0; i < p->ncontacts; i++) {
        strncat(priv_text, p->contacts[i].s, p->contacts[i].len);
        if (i + 1 < p->ncontacts)
            strcat(priv_text, ",");
    }
    strcat(priv_text, "|");
    for (uint32_t i = 0; i < p->nblocked; i++) {
        strncat(priv_text, p->blocked[i].s, p->blocked[i].len);
        if (i + 1 < p->nblocked)
            strcat(priv_text, ",");
    }
}

static const char *privacy_of(sfx_t *s, const char *user) {
    priv_text[0] = '\0';
    assert_int_equal(store_privacy_get(s->st, S(user), on_priv, NULL), 0);
    return priv_text;
}

/* presence_get for requester (NULL: unfiltered) of one user: "" when left out, else
 * "status|custom|activity|device|last_seen". */
static char pres_text[512];
static void on_bulk(void *arg, int err, const pd_presence_t *ps, size_t n, const pd_str_t *hidden,
                    size_t nhidden) {
    (void)arg;
    (void)hidden;
    (void)nhidden;
    assert_int_equal(err, 0);
    pres_text[0] = '\0';
    if (n == 1)
        snprintf(pres_text, sizeof(pres_text), "%s|%s|%s|%s|%.3f", pd_status_name(ps[0].status),
                 ps[0].custom_status ? ps[0].custom_status : "null",
                 ps[0].activity ? ps[0].activity : "null", ps[0].device, ps[0].last_seen);
}

static const char *presence_for(sfx_t *s, const char *requester, const char *user) {
    pd_str_t u = S(user);
    pd_str_t r = requester ? S(requester) : (pd_str_t){NULL, 0};
    assert_int_equal(store_presence_get(s->st, r, &u, 1, on_bulk, NULL), 0);
    return pres_text;
}

/* Reads last_seen of user straight from the database file ("absent" when no row). */
static const char *db_last_seen(fx_t *f, const char *user) {
    static char out[64];
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT last_seen, device FROM users WHERE id = ?1", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, sizeof(out), "%.3f %s", sqlite3_column_double(st, 0),
                 sqlite3_column_text(st, 1) ? (const char *)sqlite3_column_text(st, 1) : "null");
    else
        snprintf(out, sizeof(out), "absent");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

static void on_presence_cb(void *arg, int err, const pd_presence_t *p) {
    (void)arg;
    (void)p;
    assert_int_equal(err, 0);
}
static void on_removed(void *arg, int err, bool lingering) {
    (void)arg;
    (void)lingering;
    assert_int_equal(err, 0);
}

static void test_store_survives_reload(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);

    /* alice: contacts-only with bob and carol as contacts, mallory and carol blocked. */
    change(s, "alice", STORE_PRIV_VISIBILITY, PD_VIS_CONTACTS, NULL);
    change(s, "alice", STORE_PRIV_ADD_CONTACT, 0, "carol");
    change(s, "alice", STORE_PRIV_ADD_CONTACT, 0, "bob");
    change(s, "alice", STORE_PRIV_ADD_CONTACT, 0, "zed");
    change(s, "alice", STORE_PRIV_REMOVE_CONTACT, 0, "zed");
    change(s, "alice", STORE_PRIV_BLOCK, 0, "mallory");
    change(s, "alice", STORE_PRIV_BLOCK, 0, "carol");
    change(s, "alice", STORE_PRIV_BLOCK, 0, "trent");
    change(s, "alice", STORE_PRIV_UNBLOCK, 0, "trent");
    /* nina: invisible. */
    change(s, "nina", STORE_PRIV_VISIBILITY, PD_VIS_NOBODY, NULL);
    assert_int_equal(s->privacy_events, 10);

    /* alice online on web with a custom status (expiring later) and an activity. */
    store_session_t sess = {.sid = 1, .device = "web", .device_len = 3, .status = PD_BUSY};
    store_user_fields_t fields = {
        .custom_status = {.op = STORE_SET, .s = "in a meeting", .len = 12},
        .custom_status_expires = T0_WALL + 7200,
        .activity = {.op = STORE_SET, .s = "meeting", .len = 7}};
    assert_int_equal(store_session_upsert(s->st, S("alice"), &sess, &fields, on_presence_cb, NULL),
                     0);
    /* nina: a custom status that will have expired by the reload; an activity that stays. */
    store_session_t ns = {.sid = 2, .device = "mobile", .device_len = 6, .status = PD_ONLINE};
    store_user_fields_t nf = {.custom_status = {.op = STORE_SET, .s = "brb", .len = 3},
                              .custom_status_expires = T0_WALL + 60,
                              .activity = {.op = STORE_SET, .s = "focus", .len = 5}};
    assert_int_equal(store_session_upsert(s->st, S("nina"), &ns, &nf, on_presence_cb, NULL), 0);
    settle(s);

    /* last_seen is written behind: not in the file before the flush, there after 1 s. */
    assert_string_equal(db_last_seen(f, "alice"), "0.000 null");
    advance(s, 500);
    assert_string_equal(db_last_seen(f, "alice"), "0.000 null");
    advance(s, 520);
    assert_string_equal(db_last_seen(f, "alice"), "1764316800.000 web");
    assert_string_equal(db_last_seen(f, "nina"), "1764316800.000 mobile");

    /* alice's session ends at T0 + 5 s (written at the next flush or at destroy). */
    advance(s, 3980);
    assert_int_equal(store_session_remove(s->st, S("alice"), 1, STORE_REMOVE_NOW, on_removed, NULL),
                     0);
    assert_string_equal(db_last_seen(f, "alice"), "1764316800.000 web");
    /* The process goes away with nina still connected: her last_seen is "now". */
    advance(s, 1020);
    assert_string_equal(db_last_seen(f, "alice"), "1764316805.000 web");
    advance(s, 980); /* T0 + 7 s */
    store_down(s);
    assert_string_equal(db_last_seen(f, "nina"), "1764316807.000 mobile");

    /* A new store on the same database, two minutes later. */
    store_up(f, s, T0_WALL + 120);
    assert_string_equal(privacy_of(s, "alice"), "contacts|bob,carol|carol,mallory");
    assert_string_equal(privacy_of(s, "nina"), "nobody||");
    assert_string_equal(privacy_of(s, "bob"), "everyone||");
    /* The rule, as before: bob (a contact) sees alice; carol (a contact, but blocked),
     * mallory (blocked) and dave (a stranger) do not; alice sees herself. */
    assert_string_equal(presence_for(s, NULL, "alice"),
                        "offline|in a meeting|meeting|web|1764316805.000");
    assert_string_equal(presence_for(s, "bob", "alice"),
                        "offline|in a meeting|meeting|web|1764316805.000");
    assert_string_equal(presence_for(s, "alice", "alice"),
                        "offline|in a meeting|meeting|web|1764316805.000");
    assert_string_equal(presence_for(s, "carol", "alice"), "");
    assert_string_equal(presence_for(s, "mallory", "alice"), "");
    assert_string_equal(presence_for(s, "dave", "alice"), "");
    /* nina: invisible to all but herself; her expired custom status is gone, her activity not. */
    assert_string_equal(presence_for(s, "bob", "nina"), "");
    assert_string_equal(presence_for(s, "nina", "nina"),
                        "offline|null|focus|mobile|1764316807.000");
    /* Changes on the reloaded store are written through as well. */
    change(s, "alice", STORE_PRIV_REMOVE_CONTACT, 0, "carol");
    change(s, "alice", STORE_PRIV_UNBLOCK, 0, "mallory");
    change(s, "alice", STORE_PRIV_VISIBILITY, PD_VIS_EVERYONE, NULL);
    pd_str_t rc[] = {S("erin")};
    pd_str_t rb[] = {S("frank")};
    store_privacy_t np = {.visibility = PD_VIS_CONTACTS,
                          .contacts = rc,
                          .ncontacts = 1,
                          .blocked = rb,
                          .nblocked = 1};
    done_calls = 0;
    assert_int_equal(store_privacy_replace(s->st, S("nina"), &np, 5000, on_done, NULL), 0);
    settle(s);
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_err, 0);
    store_down(s);

    store_up(f, s, T0_WALL + 240);
    assert_string_equal(privacy_of(s, "alice"), "everyone|bob|carol");
    assert_string_equal(privacy_of(s, "nina"), "contacts|erin|frank");
    assert_string_equal(presence_for(s, "mallory", "alice"),
                        "offline|in a meeting|meeting|web|1764316805.000");
    assert_string_equal(presence_for(s, "carol", "alice"), "");
    assert_string_equal(presence_for(s, "erin", "nina"),
                        "offline|null|focus|mobile|1764316807.000");
    assert_string_equal(presence_for(s, "frank", "nina"), "");
    assert_string_equal(presence_for(s, "bob", "nina"), "");
    store_down(s);
    free(s);
}

static void test_store_refuses_limit_and_keeps_file(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    /* A full list refuses (PD_ELIMIT) and nothing of the refused entry reaches the file. */
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c%d", i);
        done_calls = 0;
        assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S(id),
                                              2, on_done, NULL),
                         0);
        settle(s);
        assert_int_equal(done_calls, 1);
        assert_int_equal(done_err, i < 2 ? 0 : PD_ELIMIT);
    }
    store_down(s);
    store_up(f, s, T0_WALL);
    assert_string_equal(privacy_of(s, "alice"), "everyone|c0,c1|");
    store_down(s);
    free(s);
}

/* ---- the writer thread: the loop never waits for the disk ---- */

/* user's contacts ("c") and blocks ("b") straight from the file: "c:bob,c:carol,b:mallory"
 * in key order ("" when none). */
static const char *db_entries(fx_t *f, const char *user) {
    static char out[4096];
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT blocked, other FROM privacy_entries WHERE user = "
                                        "?1 ORDER BY blocked, other",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, user, -1, SQLITE_STATIC);
    out[0] = '\0';
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (out[0])
            strcat(out, ",");
        strcat(out, sqlite3_column_int(st, 0) ? "b:" : "c:");
        strncat(out, (const char *)sqlite3_column_text(st, 1), 200);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

/* Answers in the order given, each checking that its change is in the file by then. */
typedef struct ack {
    fx_t *f;
    const char *user;
    const char *want_file; /* in db_entries(user) when the answer comes */
    int *order;            /* where the answer writes its rank */
} ack_t;
static int ack_rank;
static int ack_err;
static void on_ack(void *arg, int err) {
    ack_t *a = arg;
    ack_err = err;
    *a->order = ++ack_rank;
    if (a->want_file)
        assert_non_null(strstr(db_entries(a->f, a->user), a->want_file));
}

static void test_store_answers_after_commit_memory_at_once(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    int r1 = 0, r2 = 0, r3 = 0;
    ack_t a1 = {f, "alice", "c:bob", &r1}, a2 = {f, "alice", "b:mallory", &r2},
          a3 = {f, "alice", "b:mallory", &r3};
    ack_rank = 0;
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("bob"),
                                          5000, on_ack, &a1),
                     0);
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_BLOCK, 0, S("mallory"),
                                          5000, on_ack, &a2),
                     0);
    /* In memory at once, for every reader (mallory is hidden from now on); answered later. */
    assert_string_equal(privacy_of(s, "alice"), "everyone|bob|mallory");
    assert_string_equal(presence_for(s, "mallory", "alice"), "");
    assert_int_equal(s->privacy_events, 2);
    assert_int_equal(ack_rank, 0);
    settle(s);
    assert_int_equal(r1, 1);
    assert_int_equal(r2, 2);
    /* A change of nothing while a write of the user is in flight waits for that write: its
     * answer, too, means "on disk". */
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_REMOVE_CONTACT, 0, S("bob"),
                                          5000, on_ack, &a3),
                     0);
    int r4 = 0;
    ack_t a4 = {f, "alice", "b:mallory", &r4};
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_REMOVE_CONTACT, 0, S("bob"),
                                          5000, on_ack, &a4),
                     0);
    assert_int_equal(ack_rank, 2);
    settle(s);
    assert_int_equal(r3, 3);
    assert_int_equal(r4, 4);
    assert_string_equal(db_entries(f, "alice"), "b:mallory");
    /* Nothing in flight: a change of nothing is answered at once. */
    int r5 = 0;
    ack_t a5 = {f, "alice", NULL, &r5};
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_REMOVE_CONTACT, 0, S("bob"),
                                          5000, on_ack, &a5),
                     0);
    assert_int_equal(r5, 5);
    store_down(s);
    free(s);
}

static void test_store_group_commit_many(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    /* A flood of changes is queued without waiting for any disk; all of it is answered, in
     * order, and all of it is in the file. */
    done_calls = 0;
    for (int i = 0; i < 2000; i++) {
        char id[16];
        snprintf(id, sizeof(id), "u%04d", i / 2);
        int op = i % 2 ? STORE_PRIV_REMOVE_CONTACT : STORE_PRIV_ADD_CONTACT;
        if (i >= 1990)
            op = STORE_PRIV_ADD_CONTACT;
        assert_int_equal(store_privacy_change(s->st, S("alice"), op, 0, S(id), 5000, on_done, NULL),
                         0);
    }
    assert_true(done_calls < 2000); /* nothing waited for the disk inside the calls */
    settle(s);
    assert_int_equal(done_calls, 2000);
    assert_int_equal(done_err, 0);
    assert_string_equal(db_entries(f, "alice"), "c:u0995,c:u0996,c:u0997,c:u0998,c:u0999");
    store_down(s);
    store_up(f, s, T0_WALL);
    assert_string_equal(privacy_of(s, "alice"), "everyone|u0995,u0996,u0997,u0998,u0999|");
    store_down(s);
    free(s);
}

static void test_store_queue_full_refuses(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    persist_set_limits(s->p, &(persist_limits_t){.max_writes = 3, .max_bytes = 1u << 20});
    done_calls = 0;
    const char *ids[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0,
                                              S(ids[i]), 5000, on_done, NULL),
                         0);
    /* Full: refused at once (retryable), no callback, and nothing changed. */
    int events = s->privacy_events;
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("d"),
                                          5000, on_done, NULL),
                     PD_EUNAVAIL);
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_VISIBILITY, PD_VIS_NOBODY,
                                          S(""), 5000, on_done, NULL),
                     PD_EUNAVAIL);
    store_user_fields_t fields = {.custom_status = {.op = STORE_SET, .s = "x", .len = 1}};
    assert_int_equal(store_user_update(s->st, S("alice"), &fields, on_presence_cb, NULL),
                     PD_EUNAVAIL);
    assert_int_equal(s->privacy_events, events);
    assert_string_equal(privacy_of(s, "alice"), "everyone|a,b,c|");
    assert_string_equal(presence_for(s, NULL, "alice"), "offline|null|null||0.000");
    /* A bound in bytes as well. */
    settle(s);
    assert_int_equal(done_calls, 3);
    persist_set_limits(s->p, &(persist_limits_t){.max_writes = 100, .max_bytes = 64});
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("d"),
                                          5000, on_done, NULL),
                     PD_EUNAVAIL);
    /* Room again: accepted. */
    persist_set_limits(s->p, &(persist_limits_t){.max_writes = 3, .max_bytes = 1u << 20});
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("d"),
                                          5000, on_done, NULL),
                     0);
    settle(s);
    assert_int_equal(done_calls, 4);
    assert_string_equal(db_entries(f, "alice"), "c:a,c:b,c:c,c:d");
    store_down(s);
    free(s);
}

static void exec_sql(fx_t *f, const char *sql) {
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(f->dbpath, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static void test_store_write_error_surfaced_and_repaired(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    change(s, "alice", STORE_PRIV_ADD_CONTACT, 0, "bob");
    /* The disk refuses the next group (a trigger stands in for a failing disk). */
    exec_sql(f, "CREATE TRIGGER poison BEFORE INSERT ON privacy_entries WHEN NEW.other = "
                "'poison' BEGIN SELECT RAISE(ABORT, 'the disk said no'); END;");
    done_calls = 0;
    done_err = 0;
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("poison"),
                                          5000, on_done, NULL),
                     0);
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_BLOCK, 0, S("mallory"),
                                          5000, on_done, NULL),
                     0);
    settle(s);
    /* Both writes were in the failed group or the next: the first surely failed, and said so. */
    assert_int_equal(done_calls, 2);
    assert_non_null(strstr(f->logbuf ? f->logbuf : "", "was not committed"));
    fflush(f->log.out);
    assert_non_null(strstr(f->logbuf, "the disk said no"));
    /* Memory keeps the settings in effect (privacy holds); the file lacks the failed ones. */
    assert_string_equal(privacy_of(s, "alice"), "everyone|bob,poison|mallory");
    exec_sql(f, "DROP TRIGGER poison");
    /* The user's next change writes all of their settings: the file catches up. */
    change(s, "alice", STORE_PRIV_ADD_CONTACT, 0, "carol");
    assert_string_equal(db_entries(f, "alice"), "c:bob,c:carol,c:poison,b:mallory");
    store_down(s);
    free(s);
}

static void test_store_shutdown_answers_everything(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    done_calls = 0;
    for (int i = 0; i < 50; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c%02d", i);
        assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S(id),
                                              5000, on_done, NULL),
                         0);
    }
    /* Without running the loop: shutdown waits for the writer and answers every call. */
    store_shutdown(s->st);
    assert_int_equal(done_calls, 50);
    assert_int_equal(done_err, 0);
    /* Later durable calls are refused; reads still answer. */
    assert_int_equal(store_privacy_change(s->st, S("alice"), STORE_PRIV_ADD_CONTACT, 0, S("z"),
                                          5000, on_done, NULL),
                     PD_ECLOSED);
    assert_int_equal(done_calls, 50);
    store_destroy(s->st);
    wheel_destroy(&s->wheel);
    persist_close(s->p);
    assert_int_equal(uv_loop_close(&s->loop), 0);
    store_up(f, s, T0_WALL);
    assert_int_equal(strlen(db_entries(f, "alice")), 50 * 6 - 1);
    store_down(s);
    free(s);
}

static void test_store_evicts_blank_users_persistent(void **state) {
    fx_t *f = *state;
    sfx_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    store_up(f, s, T0_WALL);
    /* Settings given and taken back: while the writes fly, the user reads as unknown; once
     * called back, the record is gone; the file holds nothing of them either way. */
    change(s, "ghost", STORE_PRIV_VISIBILITY, PD_VIS_NOBODY, NULL);
    assert_int_equal(store_privacy_change(s->st, S("ghost"), STORE_PRIV_VISIBILITY, PD_VIS_EVERYONE,
                                          S(""), 5000, on_done, NULL),
                     0);
    assert_string_equal(presence_for(s, NULL, "ghost"), "");
    settle(s);
    store_stats_t st;
    assert_int_equal(s->st->ops->stats(s->st, &st), 0);
    assert_int_equal(st.users[PD_OFFLINE], 0);
    store_down(s);
    store_up(f, s, T0_WALL);
    assert_int_equal(s->st->ops->stats(s->st, &st), 0);
    assert_int_equal(st.users[PD_OFFLINE], 0); /* its row (visibility 0) is not loaded */
    store_down(s);
    free(s);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_open_creates),
        T(test_round_trip),
        T(test_last_seen_batch_rolls_back),
        T(test_corrupt_refused),
        T(test_newer_schema_refused),
        T(test_first_schema_opens),
        T(test_unwritable_refused),
        T(test_store_survives_reload),
        T(test_store_refuses_limit_and_keeps_file),
        T(test_store_answers_after_commit_memory_at_once),
        T(test_store_group_commit_many),
        T(test_store_queue_full_refuses),
        T(test_store_write_error_surfaced_and_repaired),
        T(test_store_shutdown_answers_everything),
        T(test_store_evicts_blank_users_persistent),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
