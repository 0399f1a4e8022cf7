/* Durable state of the embedded store, in SQLite: each user's privacy settings (visibility,
 * contacts, blocked users), user-level fields (custom_status with its expiry, activity) and
 * last_seen with the last device.
 *
 * The database is <data-dir>/presenced.db in WAL mode with synchronous=FULL: a setting is
 * acknowledged only after its transaction is committed to disk. last_seen is written behind,
 * in one transaction per batch. Opening refuses a database that fails SQLite's quick_check,
 * was written by a newer schema, or cannot be written, with a message saying which: the
 * daemon never runs on an empty state in place of one it could not read.
 *
 * Statements are prepared once. All calls run on the loop thread; each write is one fsync.
 */
#ifndef PD_STORE_PERSIST_H
#define PD_STORE_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
void persist_close(persist_t *p);

/* Reads every stored user, then every contact and block. 0 or PD_EIO. */
int persist_load(persist_t *p, const persist_loader_t *l);

/* Durable writes, committed before they return: 0 or PD_EIO (logged). */
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

#endif
