/* The presence model of ARCHITECTURE.md section 2, shared by the engine and every store:
 * statuses, the limits on ids and labels, and the aggregation rule. Pure.
 */
#ifndef PD_PRESENCE_H
#define PD_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Ordered by precedence: the aggregate of several sessions is the highest claim. */
enum pd_status { PD_OFFLINE = 0, PD_AWAY = 1, PD_ONLINE = 2, PD_BUSY = 3 };

#define PD_USER_ID_MAX           128 /* bytes */
#define PD_DEVICE_MAX            32  /* bytes */
#define PD_CUSTOM_STATUS_MAX     256 /* bytes */
#define PD_ACTIVITY_MAX          64  /* bytes */
#define PD_SESSIONS_PER_USER_MAX 64  /* hard cap of live sessions of one user (all nodes) */

/* A borrowed string slice. */
typedef struct pd_str {
    const char *s;
    size_t len;
} pd_str_t;

/* "offline", "away", "online", "busy". */
const char *pd_status_name(uint8_t status);

/* The status named s[0..len), or -1. */
int pd_status_parse(const char *s, size_t len);

/* A user id: 1..PD_USER_ID_MAX bytes of valid UTF-8 without control characters (C0, DEL, C1).
 * A label (device, custom status, activity): the same rules within max bytes; empty allowed
 * when allow_empty. */
bool pd_user_id_valid(const char *s, size_t len);
bool pd_label_valid(const char *s, size_t len, size_t max, bool allow_empty);

/* The aggregate status of live session claims: busy > online > away; offline when n == 0. */
uint8_t pd_aggregate_status(const uint8_t *claims, size_t n);

/* A user's presence as shown to a watcher; every pointer is borrowed from the store and valid
 * only during the call that hands it out. */
typedef struct pd_presence {
    const char *user_id;
    size_t user_id_len;
    uint8_t status;             /* enum pd_status */
    double last_seen;           /* epoch seconds */
    const char *device;         /* most recently active device ("" when never known) */
    const char *const *devices; /* distinct device labels of live sessions, sorted */
    uint32_t ndevices;
    const char *custom_status; /* NULL when unset */
    const char *activity;      /* NULL when unset */
    uint64_t version;          /* grows with every visible change of this user */
    uint8_t prev_status;       /* in change announcements: the status before the change */
} pd_presence_t;

/* A room member as shown to others; pointers borrowed, valid during the call only. */
typedef struct pd_member {
    const char *user_id;
    size_t user_id_len;
    double joined_at, last_seen; /* epoch seconds */
    const char *metadata;        /* a JSON object's text */
    size_t metadata_len;
    const char *const *devices; /* distinct device labels of its connections, sorted */
    uint32_t ndevices;
} pd_member_t;

#endif
