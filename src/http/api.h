/* The HTTP API for backends under /v1/: presence reads (optionally as a requester, under the
 * privacy rule), server-side status, room members and counts, privacy settings, kicking a
 * user's connections, explaining a user's presence, and /v1/events, a server-sent event
 * stream of presence changes and room joins and leaves.
 *
 * Every request needs "Authorization: Bearer <key>" with one of the keys of the API keys
 * file (compared in constant time, as SHA-256 digests, so neither content nor length leaks
 * through timing). Bodies are JSON objects (Content-Type application/json), parsed with the
 * protocol's strict rules; answers are JSON, errors {"error":{"code","message"}} with the
 * matching status. The API is off (every /v1/ request 404) without a keys file.
 */
#ifndef PD_HTTP_API_H
#define PD_HTTP_API_H

#include <stdio.h>

#include "engine/engine.h"
#include "events/events.h"
#include "http/router.h"
#include "log.h"
#include "metrics.h"
#include "rooms/rooms.h"
#include "util/clock.h"
#include "util/wheel.h"

#define API_KEYS_MAX 64
#define API_KEY_MIN  16 /* bytes: shorter keys are refused when the file is read */

typedef struct api api_t;

typedef struct api_config {
    const char *keys_file;     /* one key a line; '#' comments and blank lines ignored */
    uint32_t max_ids;          /* user ids in a bulk request */
    uint32_t max_contacts;     /* contacts, and blocked users, in a PUT .../privacy */
    uint32_t sse_keepalive_ms; /* comment lines that keep proxies from closing streams */
    uint16_t kick_code;        /* close code of POST .../disconnect */
} api_config_t;

/* New API over the engine, rooms and events. Reads the keys file: returns NULL and writes
 * why to err when it cannot be read or holds a key shorter than API_KEY_MIN. */
api_t *api_new(const api_config_t *cfg, engine_t *engine, rooms_t *rooms, events_t *events,
               wheel_t *wheel, const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics,
               FILE *err);

/* Reads the API keys file as api_new does, for --check-config: 0, or -1 after writing why to
 * err. */
int api_check_keys_file(const char *path, FILE *err);

/* Routes /v1/ to the API. */
int api_register(api_t *a, http_router_t *router);

/* Ends every event stream (shutdown). */
void api_close_streams(api_t *a);

void api_free(api_t *a);

#endif
