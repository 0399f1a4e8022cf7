#include <errno.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "store/persist.h"
#include "util/error.h"

/* Version 1 lacked the expiry and server-status columns (early builds) and kept
 * privacy_entries' columns in another order than its key; version 2 migrates both. */
#define SCHEMA_VERSION 2

/* privacy_entries lists its columns in primary-key order: SQLite 3.40's quick_check misreads
 * WITHOUT ROWID tables whose key order differs from the column order ("NULL value in ..."). */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS users ("
    "  id TEXT PRIMARY KEY,"
    "  visibility INTEGER NOT NULL DEFAULT 0,"
    "  custom_status TEXT,"
    "  custom_status_expires REAL NOT NULL DEFAULT 0,"
    "  activity TEXT,"
    "  activity_expires REAL NOT NULL DEFAULT 0,"
    "  server_status INTEGER NOT NULL DEFAULT 0,"
    "  server_status_expires REAL NOT NULL DEFAULT 0,"
    "  last_seen REAL NOT NULL DEFAULT 0,"
    "  device TEXT"
    ") WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS privacy_entries ("
    "  user TEXT NOT NULL,"
    "  blocked INTEGER NOT NULL," /* 0: a contact of user; 1: blocked by user */
    "  other TEXT NOT NULL,"
    "  PRIMARY KEY (user, blocked, other)"
    ") WITHOUT ROWID;";

/* Version 1 to 2, in one transaction with the version bump. */
static const char *const migrate_v1_columns[] = {
    "activity_expires REAL NOT NULL DEFAULT 0",
    "server_status INTEGER NOT NULL DEFAULT 0",
    "server_status_expires REAL NOT NULL DEFAULT 0",
};
static const char migrate_v1_entries[] =
    "CREATE TABLE privacy_entries_v2 ("
    "  user TEXT NOT NULL,"
    "  blocked INTEGER NOT NULL,"
    "  other TEXT NOT NULL,"
    "  PRIMARY KEY (user, blocked, other)"
    ") WITHOUT ROWID;"
    "INSERT INTO privacy_entries_v2 (user, blocked, other) "
    "  SELECT user, blocked, other FROM privacy_entries;"
    "DROP TABLE privacy_entries;"
    "ALTER TABLE privacy_entries_v2 RENAME TO privacy_entries;";

enum stmt {
    S_FIELDS,
    S_VISIBILITY,
    S_ADD_ENTRY,
    S_DEL_ENTRY,
    S_DEL_ALL_ENTRIES,
    S_LAST_SEEN,
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_FIELDS] = "INSERT INTO users (id, custom_status, custom_status_expires, activity, "
                 "activity_expires, server_status, server_status_expires) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET "
                 "custom_status = excluded.custom_status, "
                 "custom_status_expires = excluded.custom_status_expires, "
                 "activity = excluded.activity, activity_expires = excluded.activity_expires, "
                 "server_status = excluded.server_status, "
                 "server_status_expires = excluded.server_status_expires",
    [S_VISIBILITY] = "INSERT INTO users (id, visibility) VALUES (?1, ?2) "
                     "ON CONFLICT (id) DO UPDATE SET visibility = excluded.visibility",
    [S_ADD_ENTRY] =
        "INSERT OR IGNORE INTO privacy_entries (user, other, blocked) VALUES (?1, ?2, ?3)",
    [S_DEL_ENTRY] = "DELETE FROM privacy_entries WHERE user = ?1 AND other = ?2 AND blocked = ?3",
    [S_DEL_ALL_ENTRIES] = "DELETE FROM privacy_entries WHERE user = ?1",
    [S_LAST_SEEN] = "INSERT INTO users (id, last_seen, device) VALUES (?1, ?2, ?3) "
                    "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, "
                    "device = excluded.device",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
};

/* A queued write: the caller's description with every string and array copied behind it. */
struct pw {
    struct pw *next;
    persist_done_cb cb;
    void *arg;
    size_t bytes; /* this allocation, counted against max_bytes */
    int err;
    persist_write_t w;
    char data[];
};

struct persist {
    sqlite3 *db;
    pd_log_t *log;
    sqlite3_stmt *st[S_COUNT];
    /* The writer. mu guards queue, done, busy, stop; the counters below it are the loop's. */
    uv_loop_t *loop;
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t wake_writer; /* something queued, or stop */
    uv_cond_t idle;        /* a group is done */
    uv_async_t wake_loop;  /* results are waiting in done */
    struct pw *queue, **queue_tail;
    struct pw *done, **done_tail;
    persist_limits_t lim;
    size_t nwrites, nbytes; /* queued and not yet called back (loop thread only) */
    bool started, busy, stop;
    char path[4096];
};

static int exec_text(sqlite3 *db, const char *sql, char *out, size_t out_size);

static bool has_column(sqlite3 *db, const char *table, const char *column) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM pragma_table_info('%s') WHERE name = '%s'", table,
             column);
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return false;
    bool found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_finalize(s);
    return found;
}

/* Brings a version-1 file to version 2; builds between the two already had some columns. */
static int migrate_v1(sqlite3 *db, char **msg) {
    for (size_t i = 0; i < sizeof(migrate_v1_columns) / sizeof(migrate_v1_columns[0]); i++) {
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)strcspn(migrate_v1_columns[i], " "),
                 migrate_v1_columns[i]);
        if (has_column(db, "users", name))
            continue;
        char sql[160];
        snprintf(sql, sizeof(sql), "ALTER TABLE users ADD COLUMN %s", migrate_v1_columns[i]);
        if (sqlite3_exec(db, sql, NULL, NULL, msg) != SQLITE_OK)
            return -1;
    }
    return sqlite3_exec(db, migrate_v1_entries, NULL, NULL, msg) == SQLITE_OK ? 0 : -1;
}

static int exec_text(sqlite3 *db, const char *sql, char *out, size_t out_size) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && out) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        snprintf(out, out_size, "%s", t ? (const char *)t : "");
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

int persist_open(const char *dir, pd_log_t *log, persist_t **out, char *err, size_t err_size) {
    *out = NULL;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, err_size, "cannot create data directory '%s': %s", dir, strerror(errno));
        return -1;
    }
    persist_t *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    p->log = log;
    snprintf(p->path, sizeof(p->path), "%s/presenced.db", dir);
    char text[256] = "";
    if (sqlite3_open_v2(p->path, &p->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(err, err_size, "cannot open '%s': %s", p->path,
                 p->db ? sqlite3_errmsg(p->db) : "out of memory");
        goto err_close;
    }
    sqlite3_busy_timeout(p->db, 5000);
    /* quick_check reads every page: a damaged file is refused here, never run on empty. A
     * complaint is confirmed by the full integrity_check, which a version-1 file needs (see
     * schema). */
    if (exec_text(p->db, "PRAGMA quick_check", text, sizeof(text)) != 0 ||
        (strcmp(text, "ok") &&
         (exec_text(p->db, "PRAGMA integrity_check", text, sizeof(text)) != 0 ||
          strcmp(text, "ok")))) {
        snprintf(err, err_size,
                 "'%s' is not a healthy SQLite database (%s); restore it from a "
                 "backup or move it away",
                 p->path, text[0] ? text : sqlite3_errmsg(p->db));
        goto err_close;
    }
    if (exec_text(p->db, "PRAGMA journal_mode=WAL", text, sizeof(text)) != 0 ||
        strcmp(text, "wal") != 0) {
        snprintf(err, err_size, "cannot put '%s' in WAL mode (%s)", p->path,
                 text[0] ? text : sqlite3_errmsg(p->db));
        goto err_close;
    }
    if (exec_text(p->db, "PRAGMA synchronous=FULL", NULL, 0) != 0 ||
        exec_text(p->db, "PRAGMA user_version", text, sizeof(text)) != 0) {
        snprintf(err, err_size, "cannot configure '%s': %s", p->path, sqlite3_errmsg(p->db));
        goto err_close;
    }
    int version = atoi(text);
    if (version > SCHEMA_VERSION) {
        snprintf(err, err_size, "'%s' has schema version %d, newer than this presenced (%d)",
                 p->path, version, SCHEMA_VERSION);
        goto err_close;
    }
    /* Creating or migrating the schema doubles as the write check: an unwritable file fails
     * here. */
    char *msg = NULL;
    char set_version[64];
    snprintf(set_version, sizeof(set_version), "PRAGMA user_version=%d", SCHEMA_VERSION);
    if (sqlite3_exec(p->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK ||
        (version == 1 && migrate_v1(p->db, &msg) != 0) ||
        sqlite3_exec(p->db, schema, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(p->db, set_version, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(p->db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_exec(p->db, "ROLLBACK", NULL, NULL, NULL);
        snprintf(err, err_size, "cannot write '%s': %s", p->path, msg ? msg : "unknown error");
        sqlite3_free(msg);
        goto err_close;
    }
    if (version == 1)
        PD_INFO(log, "persist", "migrated '%s' from schema version 1 to %d", p->path,
                SCHEMA_VERSION);
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v2(p->db, stmt_sql[i], -1, &p->st[i], NULL) != SQLITE_OK) {
            snprintf(err, err_size, "cannot prepare statements on '%s': %s", p->path,
                     sqlite3_errmsg(p->db));
            goto err_close;
        }
    }
    *out = p;
    return 0;
err_close:
    persist_close(p);
    return -1;
}

static void writer_stop(persist_t *p);

void persist_close(persist_t *p) {
    if (!p)
        return;
    writer_stop(p);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(p->st[i]);
    sqlite3_close(p->db);
    free(p);
}

static int fail_io(persist_t *p, const char *what) {
    PD_ERROR(p->log, "persist", "%s failed on %s: %s", what, p->path, sqlite3_errmsg(p->db));
    return PD_EIO;
}

/* Runs a prepared statement whose parameters are bound; resets it either way. */
static int run(persist_t *p, enum stmt which, const char *what) {
    sqlite3_stmt *s = p->st[which];
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : fail_io(p, what);
}

static void bind_str(sqlite3_stmt *s, int i, pd_str_t v) {
    sqlite3_bind_text(s, i, v.s, (int)v.len, SQLITE_STATIC);
}

static void bind_opt(sqlite3_stmt *s, int i, const char *v) {
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

int persist_load(persist_t *p, const persist_loader_t *l) {
    sqlite3_stmt *s;
    int rc = 0;
    if (sqlite3_prepare_v2(p->db,
                           "SELECT id, visibility, custom_status, custom_status_expires, "
                           "activity, activity_expires, server_status, server_status_expires, "
                           "last_seen, device FROM users",
                           -1, &s, NULL) != SQLITE_OK)
        return fail_io(p, "loading users");
    int step;
    while (rc == 0 && (step = sqlite3_step(s)) == SQLITE_ROW) {
        persist_user_t u = {
            .id = {(const char *)sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0)},
            .visibility = (uint8_t)sqlite3_column_int(s, 1),
            .f = {.custom_status = (const char *)sqlite3_column_text(s, 2),
                  .custom_status_expires = sqlite3_column_double(s, 3),
                  .activity = (const char *)sqlite3_column_text(s, 4),
                  .activity_expires = sqlite3_column_double(s, 5),
                  .server_status = (uint8_t)sqlite3_column_int(s, 6),
                  .server_status_expires = sqlite3_column_double(s, 7)},
            .last_seen = sqlite3_column_double(s, 8),
            .device = (const char *)sqlite3_column_text(s, 9)};
        if (u.id.s)
            rc = l->user(l->ctx, &u);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = fail_io(p, "loading users");
    sqlite3_finalize(s);
    if (rc)
        return rc;
    if (sqlite3_prepare_v2(p->db, "SELECT user, other, blocked FROM privacy_entries", -1, &s,
                           NULL) != SQLITE_OK)
        return fail_io(p, "loading contacts");
    while (rc == 0 && (step = sqlite3_step(s)) == SQLITE_ROW) {
        pd_str_t user = {(const char *)sqlite3_column_text(s, 0),
                         (size_t)sqlite3_column_bytes(s, 0)};
        pd_str_t other = {(const char *)sqlite3_column_text(s, 1),
                          (size_t)sqlite3_column_bytes(s, 1)};
        if (user.s && other.s)
            rc = l->entry(l->ctx, user, other, sqlite3_column_int(s, 2) != 0);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = fail_io(p, "loading contacts");
    sqlite3_finalize(s);
    return rc;
}

int persist_save_fields(persist_t *p, pd_str_t user, const persist_fields_t *f) {
    sqlite3_stmt *s = p->st[S_FIELDS];
    bind_str(s, 1, user);
    bind_opt(s, 2, f->custom_status);
    sqlite3_bind_double(s, 3, f->custom_status_expires);
    bind_opt(s, 4, f->activity);
    sqlite3_bind_double(s, 5, f->activity_expires);
    sqlite3_bind_int(s, 6, f->server_status);
    sqlite3_bind_double(s, 7, f->server_status_expires);
    return run(p, S_FIELDS, "saving a custom status");
}

int persist_save_visibility(persist_t *p, pd_str_t user, uint8_t visibility) {
    sqlite3_stmt *s = p->st[S_VISIBILITY];
    bind_str(s, 1, user);
    sqlite3_bind_int(s, 2, visibility);
    return run(p, S_VISIBILITY, "saving a visibility");
}

int persist_save_entry(persist_t *p, pd_str_t user, pd_str_t other, bool blocked, bool add) {
    enum stmt which = add ? S_ADD_ENTRY : S_DEL_ENTRY;
    sqlite3_stmt *s = p->st[which];
    bind_str(s, 1, user);
    bind_str(s, 2, other);
    sqlite3_bind_int(s, 3, blocked ? 1 : 0);
    return run(p, which, add ? "saving a contact or block" : "removing a contact or block");
}

int persist_begin(persist_t *p) {
    return run(p, S_BEGIN, "beginning a transaction");
}

int persist_commit(persist_t *p) {
    int rc = run(p, S_COMMIT, "committing");
    if (rc)
        run(p, S_ROLLBACK, "rolling back");
    return rc;
}

/* The rows of a replace, inside the caller's transaction. */
static int replace_rows(persist_t *p, pd_str_t user, uint8_t visibility, const pd_str_t *contacts,
                        size_t ncontacts, const pd_str_t *blocked, size_t nblocked) {
    sqlite3_stmt *s = p->st[S_DEL_ALL_ENTRIES];
    bind_str(s, 1, user);
    int rc = run(p, S_DEL_ALL_ENTRIES, "replacing privacy settings");
    if (rc == 0) {
        s = p->st[S_VISIBILITY];
        bind_str(s, 1, user);
        sqlite3_bind_int(s, 2, visibility);
        rc = run(p, S_VISIBILITY, "replacing privacy settings");
    }
    for (size_t i = 0; rc == 0 && i < ncontacts; i++)
        rc = persist_save_entry(p, user, contacts[i], false, true);
    for (size_t i = 0; rc == 0 && i < nblocked; i++)
        rc = persist_save_entry(p, user, blocked[i], true, true);
    return rc;
}

int persist_replace_privacy(persist_t *p, pd_str_t user, uint8_t visibility,
                            const pd_str_t *contacts, size_t ncontacts, const pd_str_t *blocked,
                            size_t nblocked) {
    if (persist_begin(p))
        return PD_EIO;
    int rc = replace_rows(p, user, visibility, contacts, ncontacts, blocked, nblocked);
    if (rc) {
        run(p, S_ROLLBACK, "rolling back");
        return rc;
    }
    return persist_commit(p);
}

int persist_save_last_seen(persist_t *p, pd_str_t user, double last_seen, const char *device) {
    sqlite3_stmt *s = p->st[S_LAST_SEEN];
    bind_str(s, 1, user);
    sqlite3_bind_double(s, 2, last_seen);
    bind_opt(s, 3, device);
    return run(p, S_LAST_SEEN, "saving last_seen");
}

/* --- The writer thread --- */

static int apply(persist_t *p, const persist_write_t *w) {
    switch (w->kind) {
    case PERSIST_W_NONE:
        return 0;
    case PERSIST_W_FIELDS:
        return persist_save_fields(p, w->user, &w->fields);
    case PERSIST_W_VISIBILITY:
        return persist_save_visibility(p, w->user, w->visibility);
    case PERSIST_W_ENTRY:
        return persist_save_entry(p, w->user, w->other, w->blocked, w->add);
    case PERSIST_W_REPLACE:
        return replace_rows(p, w->user, w->visibility, w->contacts, w->ncontacts, w->blocks,
                            w->nblocks);
    case PERSIST_W_LAST_SEEN:
        for (size_t i = 0; i < w->nseen; i++) {
            int rc =
                persist_save_last_seen(p, w->seen[i].user, w->seen[i].last_seen, w->seen[i].device);
            if (rc)
                return rc;
        }
        return 0;
    default:
        return PD_EINVAL;
    }
}

/* One transaction for the whole group: all of it reaches the file, or none. */
static int commit_group(persist_t *p, struct pw *group) {
    size_t n = 0;
    int rc = persist_begin(p);
    for (struct pw *w = group; w; w = w->next, n++)
        if (rc == 0)
            rc = apply(p, &w->w);
    if (rc == 0)
        rc = persist_commit(p);
    else
        run(p, S_ROLLBACK, "rolling back");
    if (rc)
        PD_ERROR(p->log, "persist",
                 "a group of %zu writes was not committed to %s: each of their callers got an "
                 "error; the settings stay in effect in memory until a restart",
                 n, p->path);
    return rc ? PD_EIO : 0;
}

static void writer_main(void *arg) {
    persist_t *p = arg;
    uv_mutex_lock(&p->mu);
    for (;;) {
        while (!p->queue && !p->stop)
            uv_cond_wait(&p->wake_writer, &p->mu);
        if (!p->queue)
            break; /* stopping, nothing left */
        struct pw *group = p->queue;
        struct pw **group_tail = p->queue_tail;
        p->queue = NULL;
        p->queue_tail = &p->queue;
        p->busy = true;
        uv_mutex_unlock(&p->mu);
        int rc = commit_group(p, group);
        for (struct pw *w = group; w; w = w->next)
            w->err = rc;
        uv_mutex_lock(&p->mu);
        *p->done_tail = group;
        p->done_tail = group_tail;
        p->busy = false;
        uv_cond_broadcast(&p->idle);
        uv_async_send(&p->wake_loop);
    }
    uv_mutex_unlock(&p->mu);
}

/* Callbacks per wake of the loop: a big group's answers are spread over loop iterations, so
 * other connections' I/O runs in between. */
#define DELIVER_MAX 512

/* On the loop: up to max finished writes' callbacks, in the order they were queued. */
static void deliver(persist_t *p, size_t max) {
    uv_mutex_lock(&p->mu);
    struct pw *w = p->done, *last = NULL, *rest = p->done;
    for (size_t n = 0; rest && n < max; n++) {
        last = rest;
        rest = rest->next;
    }
    if (last)
        last->next = NULL;
    p->done = rest;
    if (!rest)
        p->done_tail = &p->done;
    uv_mutex_unlock(&p->mu);
    if (rest && !uv_is_closing((uv_handle_t *)&p->wake_loop))
        uv_async_send(&p->wake_loop); /* the rest at the next iteration */
    while (w) {
        struct pw *next = w->next;
        p->nwrites--;
        p->nbytes -= w->bytes;
        if (w->cb)
            w->cb(w->arg, w->err);
        free(w);
        w = next;
    }
    /* The loop stays alive while writes are owed an answer, not longer. */
    if (!uv_is_closing((uv_handle_t *)&p->wake_loop)) {
        if (p->nwrites)
            uv_ref((uv_handle_t *)&p->wake_loop);
        else
            uv_unref((uv_handle_t *)&p->wake_loop);
    }
}

static void on_wake_loop(uv_async_t *h) {
    deliver(h->data, DELIVER_MAX);
}

int persist_start(persist_t *p, uv_loop_t *loop, const persist_limits_t *lim) {
    p->loop = loop;
    p->lim = lim ? *lim : (persist_limits_t){PERSIST_MAX_WRITES, PERSIST_MAX_BYTES};
    p->queue_tail = &p->queue;
    p->done_tail = &p->done;
    if (uv_mutex_init(&p->mu))
        return PD_ENOMEM;
    if (uv_cond_init(&p->wake_writer))
        goto err_mutex;
    if (uv_cond_init(&p->idle))
        goto err_cond;
    if (uv_async_init(loop, &p->wake_loop, on_wake_loop))
        goto err_idle;
    p->wake_loop.data = p;
    uv_unref((uv_handle_t *)&p->wake_loop);
    if (uv_thread_create(&p->thread, writer_main, p)) {
        PD_ERROR(p->log, "persist", "cannot start the writer thread for %s", p->path);
        uv_close((uv_handle_t *)&p->wake_loop, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        goto err_idle;
    }
    p->started = true;
    return 0;
err_idle:
    uv_cond_destroy(&p->idle);
err_cond:
    uv_cond_destroy(&p->wake_writer);
err_mutex:
    uv_mutex_destroy(&p->mu);
    return PD_EIO;
}

static size_t str_bytes(pd_str_t s) {
    return s.s ? s.len + 1 : 0;
}
static size_t opt_bytes(const char *s) {
    return s ? strlen(s) + 1 : 0;
}

/* Copies into the allocation's data, bumping *at. */
static pd_str_t copy_str(char **at, pd_str_t s) {
    if (!s.s)
        return s;
    char *d = *at;
    memcpy(d, s.s, s.len);
    d[s.len] = '\0';
    *at += s.len + 1;
    return (pd_str_t){d, s.len};
}
static const char *copy_opt(char **at, const char *s) {
    if (!s)
        return NULL;
    return copy_str(at, (pd_str_t){s, strlen(s)}).s;
}

int persist_submit(persist_t *p, const persist_write_t *in, persist_done_cb cb, void *arg) {
    /* Sizes first: the arrays (aligned, at the front of data), then the strings. */
    size_t arrays =
        (in->ncontacts + in->nblocks) * sizeof(pd_str_t) + in->nseen * sizeof(persist_seen_t);
    size_t strings = str_bytes(in->user) + str_bytes(in->other) +
                     opt_bytes(in->fields.custom_status) + opt_bytes(in->fields.activity);
    for (size_t i = 0; i < in->ncontacts; i++)
        strings += str_bytes(in->contacts[i]);
    for (size_t i = 0; i < in->nblocks; i++)
        strings += str_bytes(in->blocks[i]);
    for (size_t i = 0; i < in->nseen; i++)
        strings += str_bytes(in->seen[i].user) + opt_bytes(in->seen[i].device);
    size_t bytes = sizeof(struct pw) + arrays + strings;
    if (p->nwrites + 1 > p->lim.max_writes || p->nbytes + bytes > p->lim.max_bytes)
        return PD_EUNAVAIL;
    struct pw *w = malloc(bytes);
    if (!w)
        return PD_ENOMEM;
    w->next = NULL;
    w->cb = cb;
    w->arg = arg;
    w->bytes = bytes;
    w->err = 0;
    w->w = *in;
    pd_str_t *contacts = (pd_str_t *)(void *)w->data;
    pd_str_t *blocks = contacts + in->ncontacts;
    persist_seen_t *seen = (persist_seen_t *)(void *)(blocks + in->nblocks);
    char *at = w->data + arrays;
    w->w.user = copy_str(&at, in->user);
    w->w.other = copy_str(&at, in->other);
    w->w.fields.custom_status = copy_opt(&at, in->fields.custom_status);
    w->w.fields.activity = copy_opt(&at, in->fields.activity);
    for (size_t i = 0; i < in->ncontacts; i++)
        contacts[i] = copy_str(&at, in->contacts[i]);
    for (size_t i = 0; i < in->nblocks; i++)
        blocks[i] = copy_str(&at, in->blocks[i]);
    for (size_t i = 0; i < in->nseen; i++)
        seen[i] = (persist_seen_t){.user = copy_str(&at, in->seen[i].user),
                                   .last_seen = in->seen[i].last_seen,
                                   .device = copy_opt(&at, in->seen[i].device)};
    w->w.contacts = contacts;
    w->w.blocks = blocks;
    w->w.seen = seen;
    p->nwrites++;
    p->nbytes += bytes;
    uv_ref((uv_handle_t *)&p->wake_loop);
    uv_mutex_lock(&p->mu);
    *p->queue_tail = w;
    p->queue_tail = &w->next;
    uv_cond_signal(&p->wake_writer);
    uv_mutex_unlock(&p->mu);
    return 0;
}

void persist_drain(persist_t *p) {
    if (!p || !p->started)
        return;
    /* A callback may queue more (a retry, a flush): until nothing is owed. */
    while (p->nwrites) {
        uv_mutex_lock(&p->mu);
        while (p->queue || p->busy)
            uv_cond_wait(&p->idle, &p->mu);
        uv_mutex_unlock(&p->mu);
        deliver(p, SIZE_MAX);
    }
}

void persist_set_limits(persist_t *p, const persist_limits_t *lim) {
    p->lim = *lim;
}

size_t persist_pending(const persist_t *p) {
    return p && p->started ? p->nwrites : 0;
}

static void writer_stop(persist_t *p) {
    if (!p->started)
        return;
    persist_drain(p);
    uv_mutex_lock(&p->mu);
    p->stop = true;
    uv_cond_signal(&p->wake_writer);
    uv_mutex_unlock(&p->mu);
    uv_thread_join(&p->thread);
    /* main closes every handle (uv_walk) and runs the loop before this; a test may not. */
    if (!uv_is_closing((uv_handle_t *)&p->wake_loop)) {
        uv_close((uv_handle_t *)&p->wake_loop, NULL);
        uv_run(p->loop, UV_RUN_NOWAIT);
    }
    uv_cond_destroy(&p->idle);
    uv_cond_destroy(&p->wake_writer);
    uv_mutex_destroy(&p->mu);
    p->started = false;
}
