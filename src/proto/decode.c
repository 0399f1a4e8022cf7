/* Strict decoding of client messages on top of cJSON. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "privacy/privacy.h"
#include "proto/proto.h"
#include "util/error.h"

#define DUP_SORT_MIN 12 /* objects with more keys are checked by sorting, not pairwise */

static const char *const type_names[] = {
#define PROTO_TYPE_STR(name, str) str,
    PROTO_TYPE_MAP(PROTO_TYPE_STR)
#undef PROTO_TYPE_STR
};

static const char *const error_names[] = {
#define PROTO_ERR_STR(name, str, doc) str,
    PROTO_ERROR_MAP(PROTO_ERR_STR)
#undef PROTO_ERR_STR
};

const char *proto_type_name(int type) {
    return type >= 0 && type < PROTO_TYPE_COUNT ? type_names[type] : "unknown";
}

const char *proto_error_name(int code) {
    return code >= 0 && code < PROTO_E_COUNT ? error_names[code] : "internal";
}

/* Which fields each type may carry (besides "type" and "id"). */
enum {
    F_DEVICE = 1 << 0,
    F_STATUS = 1 << 1,
    F_CUSTOM = 1 << 2,
    F_ACTIVITY = 1 << 3,
    F_EXPIRES = 1 << 4,
    F_AUTO_AWAY = 1 << 5,
    F_USER_IDS = 1 << 6,
    F_CHANNEL = 1 << 7,
    F_METADATA = 1 << 8,
    F_CURSOR = 1 << 9,
    F_TYPING = 1 << 10,
    F_LIMIT = 1 << 11,
    F_VISIBILITY = 1 << 12,
    F_USER_ID = 1 << 13,
    F_TOKEN = 1 << 14,
};

/* Fields a type cannot do without. */
static const uint32_t required_fields[PROTO_TYPE_COUNT] = {
    [PROTO_SUBSCRIBE] = F_USER_IDS,
    [PROTO_UNSUBSCRIBE] = F_USER_IDS,
    [PROTO_GET_PRESENCE] = F_USER_IDS,
    [PROTO_JOIN] = F_CHANNEL,
    [PROTO_LEAVE] = F_CHANNEL,
    [PROTO_UPDATE] = F_CHANNEL | F_METADATA,
    [PROTO_CURSOR] = F_CHANNEL | F_CURSOR,
    [PROTO_TYPING] = F_CHANNEL | F_TYPING,
    [PROTO_CHANNEL_MEMBERS] = F_CHANNEL,
    [PROTO_CHANNEL_COUNT] = F_CHANNEL,
    [PROTO_SET_VISIBILITY] = F_VISIBILITY,
    [PROTO_ADD_CONTACT] = F_USER_ID,
    [PROTO_REMOVE_CONTACT] = F_USER_ID,
    [PROTO_BLOCK] = F_USER_ID,
    [PROTO_UNBLOCK] = F_USER_ID,
    [PROTO_GET_PRIVACY] = 0,
    [PROTO_REFRESH] = F_TOKEN,
};

static const uint32_t allowed_fields[PROTO_TYPE_COUNT] = {
    [PROTO_PING] = 0,
    [PROTO_SET_ONLINE] = F_DEVICE | F_STATUS | F_CUSTOM | F_ACTIVITY | F_EXPIRES | F_AUTO_AWAY,
    [PROTO_HEARTBEAT] = F_DEVICE,
    [PROTO_SET_STATUS] = F_STATUS | F_CUSTOM | F_ACTIVITY | F_EXPIRES | F_AUTO_AWAY,
    [PROTO_SET_OFFLINE] = 0,
    [PROTO_ACTIVITY] = 0,
    [PROTO_SUBSCRIBE] = F_USER_IDS,
    [PROTO_UNSUBSCRIBE] = F_USER_IDS,
    [PROTO_GET_PRESENCE] = F_USER_IDS,
    [PROTO_JOIN] = F_CHANNEL | F_METADATA,
    [PROTO_LEAVE] = F_CHANNEL,
    [PROTO_UPDATE] = F_CHANNEL | F_METADATA,
    [PROTO_CURSOR] = F_CHANNEL | F_CURSOR,
    [PROTO_TYPING] = F_CHANNEL | F_TYPING,
    [PROTO_CHANNEL_MEMBERS] = F_CHANNEL | F_CURSOR | F_LIMIT,
    [PROTO_CHANNEL_COUNT] = F_CHANNEL,
    [PROTO_SET_VISIBILITY] = F_VISIBILITY,
    [PROTO_ADD_CONTACT] = F_USER_ID,
    [PROTO_REMOVE_CONTACT] = F_USER_ID,
    [PROTO_BLOCK] = F_USER_ID,
    [PROTO_UNBLOCK] = F_USER_ID,
    [PROTO_GET_PRIVACY] = 0,
    [PROTO_REFRESH] = F_TOKEN,
};

static const struct {
    const char *name;
    uint32_t bit;
} field_names[] = {
    {"device", F_DEVICE},
    {"status", F_STATUS},
    {"custom_status", F_CUSTOM},
    {"activity", F_ACTIVITY},
    {"custom_status_expires_in", F_EXPIRES},
    {"auto_away", F_AUTO_AWAY},
    {"user_ids", F_USER_IDS},
    {"channel", F_CHANNEL},
    {"metadata", F_METADATA},
    {"cursor", F_CURSOR},
    {"typing", F_TYPING},
    {"limit", F_LIMIT},
    {"visibility", F_VISIBILITY},
    {"user_id", F_USER_ID},
    {"token", F_TOKEN},
};

static int fail(proto_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(proto_error_t *err, int code, const char *fmt, ...) {
    err->code = (uint8_t)code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return PD_EPROTO;
}

/* What cJSON would let through but RFC 8259 forbids, in one pass over the bytes before cJSON
 * sees them; returns why, or NULL.
 * - The escape \u0000 would be silently cut short by cJSON's NUL-terminated strings. So would
 *   a \u escape with a digit that is not hex (cJSON decodes it as U+0000), and a raw NUL byte,
 *   which cJSON keeps inside a string ("we<NUL>b" became "we"), as it keeps every raw control
 *   character JSON forbids there (section 7): refused.
 * - Between tokens cJSON 1.7 skips every byte up to 0x20 as whitespace (buffer_skip_whitespace)
 *   and a UTF-8 byte order mark at the start (skip_utf8_bom), so {"type":<0x01>"ping"} was
 *   answered. Only space, tab, LF and CR are whitespace (section 2), and a networked JSON
 *   text must not start with a BOM (section 8.1 lets a parser ignore one; PROTOCOL.md takes
 *   one JSON text and nothing else): refused.
 * Cost: a compare per byte; the canonical heartbeat never gets here (its fast path matches
 * exact bytes). */
static bool is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

static const char *forbidden_bytes(const uint8_t *d, size_t len) {
    if (len >= 3 && d[0] == 0xEF && d[1] == 0xBB && d[2] == 0xBF)
        return "a byte order mark before the JSON value";
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = d[i];
        if (c == '"') {
            in_string = !in_string;
            continue;
        }
        if (c < 0x20) {
            if (c == 0 || in_string)
                return "strings may not contain \\u0000 or raw control bytes";
            if (c != '\t' && c != '\n' && c != '\r')
                return "a control byte between JSON tokens (only space, tab, CR and LF)";
            continue;
        }
        if (c != '\\')
            continue;
        if (i + 1 < len && d[i + 1] == 'u') {
            /* cJSON reads a \u escape whose digits are not all hex as U+0000 (parse_hex4
             * answers 0), which cuts the string short too: "bob\uzzzzx" became "bob". */
            if (i + 5 >= len || !is_hex(d[i + 2]) || !is_hex(d[i + 3]) || !is_hex(d[i + 4]) ||
                !is_hex(d[i + 5]))
                return "a \\u escape needs four hex digits";
            if (d[i + 2] == '0' && d[i + 3] == '0' && d[i + 4] == '0' && d[i + 5] == '0')
                return "strings may not contain \\u0000 or raw control bytes";
            i += 5;
            continue;
        }
        /* Skip the escaped character, so "\\u0000" (a backslash, then text) passes; a raw
         * control byte is no escape (cJSON refuses it too, but it is not skipped unseen). */
        if (i + 1 < len && d[i + 1] < 0x20)
            return "strings may not contain \\u0000 or raw control bytes";
        i++;
    }
    return NULL;
}

/* How many bytes of s (at most max) to quote in an error message without cutting a UTF-8
 * character: the message goes out in a text frame, which must be valid UTF-8. */
static int quote_len(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((uint8_t)s[n] & 0xC0) == 0x80)
            n--;
    }
    return (int)n;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* True when some object in the tree has a key twice. */
static bool has_dup_keys(const cJSON *item) {
    for (; item; item = item->next) {
        if (cJSON_IsObject(item)) {
            size_t n = 0;
            for (const cJSON *c = item->child; c; c = c->next)
                n++;
            if (n >= 2 && n < DUP_SORT_MIN) {
                for (const cJSON *a = item->child; a; a = a->next)
                    for (const cJSON *b = a->next; b; b = b->next)
                        if (strcmp(a->string, b->string) == 0)
                            return true;
            } else if (n >= DUP_SORT_MIN) {
                const char **names = malloc(n * sizeof(*names));
                if (!names)
                    return true; /* refuse what cannot be checked */
                size_t i = 0;
                for (const cJSON *c = item->child; c; c = c->next)
                    names[i++] = c->string;
                qsort(names, n, sizeof(*names), cmp_names);
                bool dup = false;
                for (i = 1; i < n && !dup; i++)
                    dup = strcmp(names[i - 1], names[i]) == 0;
                free(names);
                if (dup)
                    return true;
            }
        }
        if ((cJSON_IsObject(item) || cJSON_IsArray(item)) && has_dup_keys(item->child))
            return true;
    }
    return false;
}

static int read_id(const cJSON *v, proto_id_t *id, proto_error_t *err) {
    if (cJSON_IsString(v)) {
        size_t n = strlen(v->valuestring);
        if (n > PROTO_ID_MAX || !pd_label_valid(v->valuestring, n, PROTO_ID_MAX, true))
            return fail(err, PROTO_E_BAD_ID, "\"id\" must be at most %d bytes, no controls",
                        PROTO_ID_MAX);
        id->kind = PROTO_ID_STR;
        memcpy(id->s, v->valuestring, n + 1);
        return 0;
    }
    if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
        fabs(v->valuedouble) <= 9007199254740991.0) {
        id->kind = PROTO_ID_INT;
        id->i = (int64_t)v->valuedouble;
        return 0;
    }
    return fail(err, PROTO_E_BAD_ID, "\"id\" must be a string or an integer");
}

/* A nullable string field with its limit. */
static int read_opt(const cJSON *v, const char *name, size_t max, bool allow_empty,
                    proto_opt_t *out, proto_error_t *err) {
    if (cJSON_IsNull(v)) {
        out->state = PROTO_NULL;
        return 0;
    }
    if (!cJSON_IsString(v))
        return fail(err, PROTO_E_BAD_FIELD, "\"%s\" must be a string or null", name);
    size_t n = strlen(v->valuestring);
    if (n > max)
        return fail(err, PROTO_E_TOO_LONG, "\"%s\" is longer than %zu bytes", name, max);
    if (!pd_label_valid(v->valuestring, n, max, allow_empty))
        return fail(err, PROTO_E_BAD_VALUE, "\"%s\" must be %stext without control characters",
                    name, allow_empty ? "" : "non-empty ");
    out->state = PROTO_SET;
    out->v.s = v->valuestring;
    out->v.len = n;
    return 0;
}

static int read_ids(const cJSON *v, const proto_limits_t *lim, proto_msg_t *m, proto_error_t *err) {
    if (!cJSON_IsArray(v))
        return fail(err, PROTO_E_BAD_FIELD, "\"user_ids\" must be an array of strings");
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (n > lim->max_ids)
        return fail(err, PROTO_E_TOO_MANY_IDS, "at most %u user ids per request (got %zu)",
                    lim->max_ids, n);
    m->ids = malloc(sizeof(*m->ids) * (n ? n : 1));
    if (!m->ids)
        return fail(err, PROTO_E_INTERNAL, "out of memory");
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        if (!cJSON_IsString(c))
            return fail(err, PROTO_E_BAD_FIELD, "\"user_ids\"[%zu] is not a string", i);
        size_t len = strlen(c->valuestring);
        if (len > PD_USER_ID_MAX)
            return fail(err, PROTO_E_TOO_LONG, "\"user_ids\"[%zu] is longer than %d bytes", i,
                        PD_USER_ID_MAX);
        if (!pd_user_id_valid(c->valuestring, len))
            return fail(err, PROTO_E_BAD_USER_ID,
                        "\"user_ids\"[%zu] must be non-empty, without control characters", i);
        m->ids[i].s = c->valuestring;
        m->ids[i].len = len;
    }
    m->nids = (uint32_t)n;
    return 0;
}

bool proto_channel_valid(const char *name, size_t len) {
    if (len == 0 || len > PROTO_CHANNEL_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == ':' || c == '.' || c == '@' || c == '/' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Re-encodes a JSON value compactly (what is stored and relayed is our own canonical text,
 * never the client's bytes) and checks its size. */
static int read_json(const cJSON *v, const char *name, size_t max, pd_str_t *out,
                     proto_error_t *err) {
    char *text = cJSON_PrintUnformatted(v);
    if (!text)
        return fail(err, PROTO_E_INTERNAL, "out of memory");
    size_t n = strlen(text);
    if (n > max) {
        free(text);
        return fail(err, PROTO_E_TOO_LONG, "\"%s\" is %zu bytes encoded; the limit is %zu", name, n,
                    max);
    }
    out->s = text;
    out->len = n;
    return 0;
}

static int decode_fields(const cJSON *root, const proto_limits_t *lim, proto_msg_t *m,
                         proto_error_t *err) {
    uint32_t allowed = allowed_fields[m->type];
    uint32_t seen = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        const char *k = c->string;
        if (strcmp(k, "type") == 0 || strcmp(k, "id") == 0)
            continue;
        uint32_t bit = 0;
        for (size_t i = 0; i < sizeof(field_names) / sizeof(field_names[0]) && !bit; i++)
            if (strcmp(k, field_names[i].name) == 0)
                bit = field_names[i].bit;
        if (!(bit & allowed))
            return fail(err, PROTO_E_UNKNOWN_FIELD, "%s has no field \"%.*s\"",
                        proto_type_name(m->type), quote_len(k, 64), k);
        seen |= bit;
        int rc = 0;
        switch (bit) {
        case F_DEVICE:
            /* Null means "no label" in the seed's vocabulary; absent keeps the current one. */
            rc = read_opt(c, "device", PD_DEVICE_MAX, false, &m->device, err);
            break;
        case F_STATUS: {
            if (!cJSON_IsString(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"status\" must be a string");
            int st = pd_status_parse(c->valuestring, strlen(c->valuestring));
            if (st < 0)
                return fail(err, PROTO_E_BAD_STATUS,
                            "\"status\" must be online, away, busy or offline");
            m->status = (int8_t)st;
            break;
        }
        case F_CUSTOM:
            rc = read_opt(c, "custom_status", PD_CUSTOM_STATUS_MAX, true, &m->custom_status, err);
            break;
        case F_ACTIVITY:
            rc = read_opt(c, "activity", PD_ACTIVITY_MAX, true, &m->activity, err);
            break;
        case F_EXPIRES:
            if (cJSON_IsNull(c))
                break;
            if (!cJSON_IsNumber(c) || !(c->valuedouble > 0) || c->valuedouble > 31 * 86400.0)
                return fail(err, PROTO_E_BAD_FIELD,
                            "\"custom_status_expires_in\" must be seconds in (0, 2678400]");
            m->custom_status_expires_in = c->valuedouble;
            break;
        case F_AUTO_AWAY:
            if (!cJSON_IsBool(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"auto_away\" must be true or false");
            m->auto_away = cJSON_IsTrue(c) ? 1 : 0;
            break;
        case F_USER_IDS:
            rc = read_ids(c, lim, m, err);
            break;
        case F_CHANNEL:
            if (!cJSON_IsString(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"channel\" must be a string");
            m->channel.s = c->valuestring;
            m->channel.len = strlen(c->valuestring);
            if (!proto_channel_valid(m->channel.s, m->channel.len))
                return fail(err, PROTO_E_BAD_CHANNEL,
                            "\"channel\" must be 1..%d bytes of A-Z a-z 0-9 _ : . @ / -",
                            PROTO_CHANNEL_MAX);
            break;
        case F_METADATA:
            if (!cJSON_IsObject(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"metadata\" must be an object");
            rc = read_json(c, "metadata", PROTO_METADATA_MAX, &m->metadata, err);
            break;
        case F_CURSOR:
            if (m->type == PROTO_CHANNEL_MEMBERS) {
                /* Here "cursor" is the pagination token: the last user id of a page. */
                if (cJSON_IsNull(c))
                    break;
                if (!cJSON_IsString(c))
                    return fail(err, PROTO_E_BAD_FIELD, "\"cursor\" must be a string or null");
                m->after.s = c->valuestring;
                m->after.len = strlen(c->valuestring);
                if (m->after.len > PD_USER_ID_MAX)
                    return fail(err, PROTO_E_TOO_LONG, "\"cursor\" is longer than %d bytes",
                                PD_USER_ID_MAX);
                break;
            }
            rc = read_json(c, "cursor", PROTO_CURSOR_MAX, &m->payload, err);
            break;
        case F_TYPING:
            if (!cJSON_IsBool(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"typing\" must be true or false");
            m->typing = cJSON_IsTrue(c) ? 1 : 0;
            break;
        case F_VISIBILITY: {
            int v = cJSON_IsString(c)
                        ? privacy_visibility_parse(c->valuestring, strlen(c->valuestring))
                        : -2;
            if (v == -2)
                return fail(err, PROTO_E_BAD_FIELD, "\"visibility\" must be a string");
            if (v < 0)
                return fail(err, PROTO_E_BAD_VISIBILITY,
                            "\"visibility\" must be everyone, contacts or nobody");
            m->visibility = (int8_t)v;
            break;
        }
        case F_USER_ID:
            if (!cJSON_IsString(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"user_id\" must be a string");
            m->user_id.s = c->valuestring;
            m->user_id.len = strlen(c->valuestring);
            if (m->user_id.len > PD_USER_ID_MAX)
                return fail(err, PROTO_E_TOO_LONG, "\"user_id\" is longer than %d bytes",
                            PD_USER_ID_MAX);
            if (!pd_user_id_valid(m->user_id.s, m->user_id.len))
                return fail(err, PROTO_E_BAD_USER_ID,
                            "\"user_id\" must be non-empty, without control characters");
            break;
        case F_TOKEN:
            if (!cJSON_IsString(c))
                return fail(err, PROTO_E_BAD_FIELD, "\"token\" must be a string");
            m->token.s = c->valuestring;
            m->token.len = strlen(c->valuestring);
            break;
        case F_LIMIT:
            if (!cJSON_IsNumber(c) || c->valuedouble != floor(c->valuedouble) ||
                c->valuedouble < 1 || c->valuedouble > PROTO_PAGE_MAX)
                return fail(err, PROTO_E_BAD_FIELD, "\"limit\" must be an integer in [1, %d]",
                            PROTO_PAGE_MAX);
            m->limit = (uint32_t)c->valuedouble;
            break;
        }
        if (rc)
            return rc;
    }
    uint32_t missing = required_fields[m->type] & ~seen;
    for (size_t i = 0; missing && i < sizeof(field_names) / sizeof(field_names[0]); i++)
        if (missing & field_names[i].bit)
            return fail(err, PROTO_E_BAD_FIELD, "%s needs \"%s\"", proto_type_name(m->type),
                        field_names[i].name);
    if (m->type == PROTO_CHANNEL_MEMBERS && m->limit == 0)
        m->limit = PROTO_PAGE_DEFAULT;
    if (m->custom_status_expires_in > 0 && m->custom_status.state != PROTO_SET)
        return fail(err, PROTO_E_BAD_FIELD,
                    "\"custom_status_expires_in\" needs a \"custom_status\" string");
    return 0;
}

int proto_json_parse(const uint8_t *data, size_t len, void **out, proto_error_t *err) {
    *out = NULL;
    const char *why = forbidden_bytes(data, len);
    if (why)
        return fail(err, PROTO_E_BAD_JSON, "%s", why);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)data, len, &end, 0);
    if (!root)
        return fail(err, PROTO_E_BAD_JSON, "not valid JSON");
    while (end && (size_t)(end - (const char *)data) < len &&
           (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    int rc;
    if (!end || (size_t)(end - (const char *)data) != len) {
        rc = fail(err, PROTO_E_BAD_JSON, "unexpected data after the JSON value");
        goto err_free;
    }
    if (!cJSON_IsObject(root)) {
        rc = fail(err, PROTO_E_BAD_MESSAGE, "a message is a JSON object");
        goto err_free;
    }
    if (has_dup_keys(root)) {
        rc = fail(err, PROTO_E_BAD_JSON, "duplicate key in an object");
        goto err_free;
    }
    *out = root;
    return 0;
err_free:
    cJSON_Delete(root);
    return rc;
}

int proto_decode(const uint8_t *data, size_t len, const proto_limits_t *lim, proto_msg_t *m,
                 proto_error_t *err) {
    memset(m, 0, sizeof(*m));
    m->status = -1;
    m->auto_away = -1;
    void *parsed;
    int rc = proto_json_parse(data, len, &parsed, err);
    if (rc)
        return rc;
    cJSON *root = parsed;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (id && (rc = read_id(id, &m->id, err)) != 0)
        goto err_free;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (!cJSON_IsString(type)) {
        rc = fail(err, PROTO_E_MISSING_TYPE, "a message needs a string \"type\"");
        goto err_free;
    }
    m->type = PROTO_TYPE_COUNT;
    for (int i = 0; i < PROTO_TYPE_COUNT && m->type == PROTO_TYPE_COUNT; i++)
        if (strcmp(type->valuestring, type_names[i]) == 0)
            m->type = (uint8_t)i;
    if (m->type == PROTO_TYPE_COUNT) {
        rc = fail(err, PROTO_E_UNKNOWN_TYPE, "unknown message type \"%.*s\"",
                  quote_len(type->valuestring, 64), type->valuestring);
        goto err_free;
    }
    m->root = root;
    if ((rc = decode_fields(root, lim, m, err)) != 0) {
        proto_id_t keep = m->id;
        proto_msg_free(m);
        m->id = keep;
        return rc;
    }
    return 0;
err_free:
    cJSON_Delete(root);
    return rc;
}

void proto_msg_free(proto_msg_t *m) {
    free(m->ids);
    free((char *)m->metadata.s);
    free((char *)m->payload.s);
    cJSON_Delete(m->root);
    memset(m, 0, sizeof(*m));
    m->status = -1;
    m->auto_away = -1;
}

/* Reads a trailing ,"id":"<safe>"} or ,"id":<int>} of a heartbeat: returns how many bytes it
 * takes from the end of data[0..len), 0 when there is none. */
static size_t heartbeat_id_tail(const uint8_t *data, size_t len, proto_id_t *id) {
    if (len < 2 || data[len - 1] != '}')
        return 0;
    size_t end = len - 1; /* the '}' */
    if (data[end - 1] == '"') {
        size_t i = end - 1; /* the closing quote */
        while (i > 0 && i + PROTO_ID_MAX + 1 > end - 1 &&
               (isalnum(data[i - 1]) || data[i - 1] == '_' || data[i - 1] == '-' ||
                data[i - 1] == '.' || data[i - 1] == ':'))
            i--;
        size_t n = end - 1 - i; /* id bytes */
        static const char key[] = ",\"id\":\"";
        if (n == 0 || n > PROTO_ID_MAX || i < sizeof(key) - 1 ||
            memcmp(data + i - (sizeof(key) - 1), key, sizeof(key) - 1) != 0)
            return 0;
        id->kind = PROTO_ID_STR;
        memcpy(id->s, data + i, n);
        id->s[n] = '\0';
        return len - (i - (sizeof(key) - 1));
    }
    size_t i = end;
    while (i > 0 && end - i < 16 && isdigit(data[i - 1]))
        i--;
    size_t n = end - i;
    static const char key[] = ",\"id\":";
    if (n == 0 || n > 15 || (n > 1 && data[i] == '0') || (i > 0 && isdigit(data[i - 1])) ||
        i < sizeof(key) - 1 || memcmp(data + i - (sizeof(key) - 1), key, sizeof(key) - 1) != 0)
        return 0;
    int64_t v = 0;
    for (size_t k = i; k < end; k++)
        v = v * 10 + (data[k] - '0');
    id->kind = PROTO_ID_INT;
    id->i = v;
    return len - (i - (sizeof(key) - 1));
}

bool proto_is_canonical_heartbeat(const uint8_t *data, size_t len, const char *device,
                                  size_t device_len, proto_id_t *id) {
    static const char bare[] = "{\"type\":\"heartbeat\"}";
    static const char head[] = "{\"type\":\"heartbeat\",\"device\":\"";
    if (id)
        id->kind = PROTO_ID_NONE;
    if (len >= sizeof(bare) - 1 && memcmp(data, bare, sizeof(bare) - 2) == 0) {
        if (len == sizeof(bare) - 1)
            return data[len - 1] == '}';
        if (id && len > sizeof(bare) && data[sizeof(bare) - 2] == ',' &&
            data[sizeof(bare) - 1] == '"' && data[sizeof(bare)] == 'i') {
            /* {"type":"heartbeat","id":...}: the id must be all that follows the type. */
            size_t tail = heartbeat_id_tail(data, len, id);
            if (tail && tail == len - (sizeof(bare) - 2))
                return true;
            id->kind = PROTO_ID_NONE;
        }
    }
    if (!device || len < sizeof(head) - 1 + device_len + 2)
        return false;
    /* The device was validated when set, but may hold characters JSON escapes: the canonical
     * bytes are only these when the label needs no escaping. */
    if (memchr(device, '"', device_len) || memchr(device, '\\', device_len))
        return false;
    size_t body = sizeof(head) - 1 + device_len + 1; /* up to the device's closing quote */
    if (memcmp(data, head, sizeof(head) - 1) != 0 ||
        memcmp(data + sizeof(head) - 1, device, device_len) != 0 || data[body - 1] != '"')
        return false;
    if (len == body + 1)
        return data[len - 1] == '}';
    if (!id)
        return false;
    size_t tail = heartbeat_id_tail(data, len, id);
    if (tail && tail == len - body)
        return true;
    id->kind = PROTO_ID_NONE;
    return false;
}
