/* Durable state of the embedded store, in SQLite: each user's privacy settings (visibility,
 * contacts, blocked users), user-level fields (custom_status with its expiry, activity) and
 * last_seen with the last device.
 *
 * The database is <data-dir>/presenced.db in WAL mode with synchronous=FULL. Opening refuses a
 * database that fails SQLite's quick_check, was written by a newer schema, or cannot be
 * written, with a message saying which: the daemon never runs on an empty state in place of
 * one it could not read.
 *
 * Threads: open, load and the synchronous writes run on the caller's thread, before
 * persist_start. From persist_start on, one writer thread owns the connection and the loop
 * thread only queues writes (persist_submit), never waiting for a disk: the writer takes
 * everything queued when it wakes and commits it in one transaction (group commit: one fsync
 * per group, however many writes queued up during the previous one), then hands the results
 * back to the loop (uv_async_t). A write's callback runs on the loop once its group is
 * committed, so an acknowledgement still means durable. The queue is bounded in writes and in
 * bytes (everything queued, being committed or awaiting its callback); a write that does not
 * fit is refused with PD_EUNAVAIL and nothing of it is queued.
 *
 * Cost: one allocation per queued write (its strings copied into it); one mutex and two
 * condition variables, held only to link and unlink lists, never across SQLite calls.
 */
#ifndef PD_STORE_PERSIST_H
#define PD_STORE_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "log.h"
#include "presence/presence.h"

typedef struct persist persist_t;

/* User-level fields; expiries in epoch seconds, 0 = never. */
typedef struct persist_fields {
    const char *custom_status; /* NULL when unset */
    double custom_status_expires;
    const char *activity;
    double activity_expires;
    uint8_t server_status; /* a backend's claim (enum pd_status), 0 when none */
    double server_status_expires;
} persist_fields_t;

typedef struct persist_user {
    pd_str_t id;
    uint8_t visibility;
    persist_fields_t f;
    double last_seen;
    const char *device; /* last device, NULL when unknown */
} persist_user_t;

/* Called for every stored row at load; a non-zero return stops the load with that error. */
typedef struct persist_loader {
    void *ctx;
    int (*user)(void *ctx, const persist_user_t *u);
    int (*entry)(void *ctx, pd_str_t user, pd_str_t other, bool blocked);
} persist_loader_t;

/* Opens (creating when needed) the database under dir, checks it and prepares statements.
 * Returns 0, or -1 with a one-line explanation in err. */
int persist_open(const char *dir, pd_log_t *log, persist_t **out, char *err, size_t err_size);
/* Drains the queue (every callback runs), stops and joins the writer, closes the database. The
 * loop must still exist (not uv_loop_close'd). */
void persist_close(persist_t *p);

/* Reads every stored user, then every contact and block. 0 or PD_EIO. */
int persist_load(persist_t *p, const persist_loader_t *l);

/* Synchronous writes, committed before they return: 0 or PD_EIO (logged). Only before
 * persist_start (the writer thread uses them itself). */
int persist_save_fields(persist_t *p, pd_str_t user, const persist_fields_t *f);
int persist_save_visibility(persist_t *p, pd_str_t user, uint8_t visibility);
int persist_save_entry(persist_t *p, pd_str_t user, pd_str_t other, bool blocked, bool add);
/* Replaces all contacts and blocks of user, and the visibility, in one transaction. */
int persist_replace_privacy(persist_t *p, pd_str_t user, uint8_t visibility,
                            const pd_str_t *contacts, size_t ncontacts, const pd_str_t *blocked,
                            size_t nblocked);

/* Write-behind of last_seen: begin, any number of saves, commit. */
int persist_begin(persist_t *p);
int persist_save_last_seen(persist_t *p, pd_str_t user, double last_seen, const char *device);
int persist_commit(persist_t *p);

/* --- The writer thread --- */

enum persist_write_kind {
    PERSIST_W_NONE,       /* nothing: called back once every write queued before it is */
    PERSIST_W_FIELDS,     /* user, fields */
    PERSIST_W_VISIBILITY, /* user, visibility */
    PERSIST_W_ENTRY,      /* user, other, blocked, add */
    PERSIST_W_REPLACE,    /* user, visibility, contacts, blocks */
    PERSIST_W_LAST_SEEN   /* seen: any number of users */
};

typedef struct persist_seen {
    pd_str_t user;
    double last_seen;   /* epoch seconds */
    const char *device; /* NULL when unknown */
} persist_seen_t;

/* One write, as the caller describes it; persist_submit copies all of it. */
typedef struct persist_write {
    uint8_t kind; /* enum persist_write_kind */
    uint8_t visibility;
    bool blocked, add;
    pd_str_t user;
    persist_fields_t fields;
    pd_str_t other;
    const pd_str_t *contacts;
    size_t ncontacts;
    const pd_str_t *blocks;
    size_t nblocks;
    const persist_seen_t *seen;
    size_t nseen;
} persist_write_t;

/* err: 0 once committed; PD_EIO when its group could not be committed (logged, nothing of the
 * group is in the file); PD_ECLOSED never (persist_close drains first). */
typedef void (*persist_done_cb)(void *arg, int err);

typedef struct persist_limits {
    size_t max_writes; /* writes queued, being committed or awaiting their callback */
    size_t max_bytes;  /* their copies, in bytes */
} persist_limits_t;

#define PERSIST_MAX_WRITES 65536
#define PERSIST_MAX_BYTES  (32u << 20)

/* Starts the writer thread; from now on only persist_submit, persist_drain, persist_pending
 * and persist_close may be called, all on the loop's thread. Borrows loop until
 * persist_close; lim NULL: the defaults above. 0, PD_ENOMEM or PD_EIO (logged). */
int persist_start(persist_t *p, uv_loop_t *loop, const persist_limits_t *lim);

/* Replaces the limits (tests). */
void persist_set_limits(persist_t *p, const persist_limits_t *lim);

/* Queues w (copied) for the next group; cb (on the loop, never from inside this call) gets
 * its result. 0, PD_EUNAVAIL when the queue is full (nothing queued, cb never called),
 * PD_ENOMEM. */
int persist_submit(persist_t *p, const persist_write_t *w, persist_done_cb cb, void *arg);

/* Blocks the calling (loop) thread until every write queued so far is committed and its
 * callback has run: for shutdown and tests, never while serving. */
void persist_drain(persist_t *p);

/* Writes queued and not yet called back. */
size_t persist_pending(const persist_t *p);

#endif
