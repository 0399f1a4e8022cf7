/* A JSON writer that appends straight into an output buffer, after its WebSocket headroom.
 *
 * Outgoing messages are built with this instead of a cJSON tree: no allocation per value and
 * no second copy (a tree is built, then printed, then copied into the frame), which matters
 * on the fan-out path where one presence change becomes one frame for thousands of watchers.
 * Commas are placed automatically; strings are escaped (quote, backslash, control
 * characters); inputs are already-validated UTF-8. Errors (out of memory, nesting deeper
 * than 32) are sticky and reported by jw_finish.
 */
#ifndef PD_UTIL_JSONW_H
#define PD_UTIL_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/obuf.h"

typedef struct jsonw {
    pd_obuf_t *b;
    int err;
    uint8_t depth;
    bool after_key;
    uint32_t first; /* bit d: the next value at depth d is the first of its container */
} jsonw_t;

/* Starts writing into a new buffer with room for about size_hint bytes. */
void jw_init(jsonw_t *w, size_t size_hint);

void jw_obj(jsonw_t *w);
void jw_obj_end(jsonw_t *w);
void jw_arr(jsonw_t *w);
void jw_arr_end(jsonw_t *w);

/* An object key; k is written as given, escaped. */
void jw_key(jsonw_t *w, const char *k);
void jw_keyn(jsonw_t *w, const char *k, size_t len);

void jw_str(jsonw_t *w, const char *s, size_t len);
void jw_cstr(jsonw_t *w, const char *s); /* NULL writes null */
void jw_null(jsonw_t *w);
void jw_bool(jsonw_t *w, bool v);
void jw_int(jsonw_t *w, int64_t v);
/* Seconds with millisecond precision ("1764300000.123"). */
void jw_time(jsonw_t *w, double seconds);
/* A value that is already JSON text (trusted: produced by us or re-printed by cJSON). */
void jw_raw(jsonw_t *w, const char *json, size_t len);

/* The finished buffer (payload = the JSON text, refs = 1), or NULL after any error. */
pd_obuf_t *jw_finish(jsonw_t *w);

#endif
