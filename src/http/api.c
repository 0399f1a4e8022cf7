/* The /v1/ API: routing, authentication, request bodies, answers, and the event streams. */
#include "http/api.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <http_parser.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/exchange.h"
#include "privacy/privacy.h"
#include "proto/proto.h"
#include "util/error.h"
#include "util/jsonw.h"

#define SEGMENTS_MAX       4
#define SEGMENT_MAX        512 /* bytes of one decoded path segment */
#define STREAM_FILTERS_MAX 64

/* One /v1/events stream. */
struct sse {
    events_sub_t sub;
    api_t *api;
    http_stream_t *st;
    struct sse *next, *prev;
    wheel_timer_t keepalive;
    uint64_t seq;                       /* event ids */
    char as[PD_USER_ID_MAX + 1];        /* the requester whose view is streamed; "" for all */
    char prefix[PROTO_CHANNEL_MAX + 1]; /* rooms: channel prefix filter; "" for all */
    char *users[STREAM_FILTERS_MAX];    /* presence: only these users, when any */
    uint32_t nusers;
    bool rooms_only, presence_only;
};

struct api_counters {
    uint64_t *auth_failures, *sse_events, *sse_dropped;
    int64_t *sse_streams;
};

struct api {
    api_config_t cfg;
    engine_t *engine;
    rooms_t *rooms;
    events_t *events;
    wheel_t *wheel;
    pd_clock_t clock;
    pd_log_t *log;
    unsigned char keys[API_KEYS_MAX][32]; /* SHA-256 of each key */
    size_t nkeys;
    struct sse *streams;
    struct sse_check *checks; /* visibility checks in flight (streams opened "as" a user) */
    struct api_counters n;
};

/* A request waiting for an engine callback. The exchange stays valid until answered, even if
 * its client goes away meanwhile (http/exchange.h): every callback answers it exactly once. */
struct areq {
    api_t *a;
    http_exchange_t *ex;
    char user[PD_USER_ID_MAX + 1];
    size_t user_len;
    char channel[PROTO_CHANNEL_MAX + 1];
    size_t channel_len;
    bool single; /* GET /v1/presence/{user}: answer the one presence, 404 when none */
};

static uint64_t dummy_counter;
static int64_t dummy_gauge;

/* --- Answers --- */

static void respond_json(http_exchange_t *ex, int status, jsonw_t *w) {
    pd_obuf_t *b = jw_finish(w);
    if (!b) {
        http_exchange_respond(ex, 500, "application/json", NULL,
                              "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}",
                              56);
        return;
    }
    http_exchange_respond(ex, status, "application/json", "Cache-Control: no-store\r\n",
                          pd_obuf_payload(b), pd_obuf_payload_len(b));
    pd_obuf_release(b);
}

static void respond_error(http_exchange_t *ex, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void respond_error(http_exchange_t *ex, int status, const char *code, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    jsonw_t w;
    jw_init(&w, 128 + strlen(msg));
    jw_obj(&w);
    jw_key(&w, "error");
    jw_obj(&w);
    jw_key(&w, "code");
    jw_cstr(&w, code);
    jw_key(&w, "message");
    jw_cstr(&w, msg);
    jw_obj_end(&w);
    jw_obj_end(&w);
    pd_obuf_t *b = jw_finish(&w);
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL;
    if (b) {
        http_exchange_respond(ex, status, "application/json", extra, pd_obuf_payload(b),
                              pd_obuf_payload_len(b));
        pd_obuf_release(b);
    } else {
        http_exchange_respond(ex, status, "text/plain", extra, "error\n", 6);
    }
}

static void engine_failed(http_exchange_t *ex, int err) {
    if (err == PD_EUNAVAIL)
        respond_error(ex, 503, "unavailable", "the store is unavailable; retry");
    else if (err == PD_ELIMIT)
        respond_error(ex, 400, "list_full", "more contacts or blocked users than allowed");
    else if (err == PD_ENOTFOUND)
        respond_error(ex, 404, "not_found", "no such user");
    else
        respond_error(ex, 500, "internal", "%s", pd_strerror(err));
}

/* --- Requests --- */

/* Percent-decodes a path segment; -1 on a bad escape or a NUL. */
static int decode_segment(const char *s, size_t len, char *out, size_t out_size) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return -1;
            char hex[3] = {s[i + 1], s[i + 2], 0};
            c = (int)strtol(hex, NULL, 16);
            i += 2;
        }
        if (c == 0 || o + 1 >= out_size)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

static bool authorized(api_t *a, const http_request_t *req) {
    const http_header_t *h = http_request_header(req, "Authorization");
    if (!h || h->value_len <= 7 || strncasecmp(h->value, "Bearer ", 7) != 0)
        return false;
    unsigned char digest[32];
    unsigned int dl = 0;
    EVP_Digest(h->value + 7, h->value_len - 7, digest, &dl, EVP_sha256(), NULL);
    /* Every key is compared, in constant time: no early exit tells which one came close. */
    int ok = 0;
    for (size_t i = 0; i < a->nkeys; i++)
        ok |= CRYPTO_memcmp(digest, a->keys[i], 32) == 0;
    return ok;
}

/* Parses a request body that must be a JSON object. NULL after answering 400/415. */
static cJSON *body_json(http_exchange_t *ex, const http_request_t *req) {
    const http_header_t *ct = http_request_header(req, "Content-Type");
    if (!ct || ct->value_len < 16 || strncasecmp(ct->value, "application/json", 16) != 0 ||
        (ct->value_len > 16 && ct->value[16] != ';' && ct->value[16] != ' ')) {
        respond_error(ex, 415, "unsupported_media_type", "the body must be application/json");
        return NULL;
    }
    void *root = NULL;
    proto_error_t err;
    if (!req->body || proto_json_parse((const uint8_t *)req->body, req->body_len, &root, &err)) {
        respond_error(ex, 400, req->body ? proto_error_name(err.code) : "bad_json", "%s",
                      req->body ? err.message : "a JSON object body is required");
        return NULL;
    }
    return root;
}

/* Rejects keys outside allowed (NULL-terminated); answers 400 and returns false then. */
static bool only_keys(http_exchange_t *ex, const cJSON *obj, const char *const *allowed) {
    for (const cJSON *c = obj->child; c; c = c->next) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(c->string, allowed[i]) == 0;
        if (!ok) {
            respond_error(ex, 400, "unknown_field", "unknown field \"%.64s\"", c->string);
            return false;
        }
    }
    return true;
}

static struct areq *areq_new(api_t *a, http_exchange_t *ex) {
    struct areq *r = calloc(1, sizeof(*r));
    if (!r)
        respond_error(ex, 500, "internal", "out of memory");
    else {
        r->a = a;
        r->ex = ex;
    }
    return r;
}

/* --- Presence --- */

static void presences_done(void *arg, int err, const pd_presence_t *ps, size_t n) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
    } else if (r->single) {
        if (n == 0) {
            respond_error(r->ex, 404, "not_found", "unknown user, or hidden from the requester");
        } else {
            jsonw_t w;
            jw_init(&w, 256);
            proto_put_presence(&w, &ps[0]);
            respond_json(r->ex, 200, &w);
        }
    } else {
        jsonw_t w;
        jw_init(&w, 64 + n * 200);
        jw_obj(&w);
        jw_key(&w, "presences");
        jw_obj(&w);
        for (size_t i = 0; i < n; i++) {
            jw_keyn(&w, ps[i].user_id, ps[i].user_id_len);
            proto_put_presence(&w, &ps[i]);
        }
        jw_obj_end(&w);
        jw_obj_end(&w);
        respond_json(r->ex, 200, &w);
    }
    free(r);
}

/* ?as= or "as": whose view (privacy rule); .s NULL for the backend's own, unfiltered. */
static int requester_from_query(http_exchange_t *ex, const http_request_t *req, char *buf,
                                pd_str_t *as) {
    int n = http_query_get(req->query, req->query_len, "as", buf, PD_USER_ID_MAX + 1);
    *as = (pd_str_t){0};
    if (n == PD_ENOTFOUND)
        return 0;
    if (n < 0 || !pd_user_id_valid(buf, (size_t)n)) {
        respond_error(ex, 400, "bad_user_id", "\"as\" must be a valid user id");
        return -1;
    }
    *as = (pd_str_t){buf, (size_t)n};
    return 0;
}

static void get_presence(api_t *a, http_exchange_t *ex, const http_request_t *req, pd_str_t user) {
    char asbuf[PD_USER_ID_MAX + 1];
    pd_str_t as;
    if (requester_from_query(ex, req, asbuf, &as))
        return;
    struct areq *r = areq_new(a, ex);
    if (!r)
        return;
    r->single = true;
    int rc = engine_query(a->engine, as, &user, 1, presences_done, r);
    if (rc) {
        engine_failed(ex, rc);
        free(r);
    }
}

static void post_bulk(api_t *a, http_exchange_t *ex, const http_request_t *req) {
    cJSON *body = body_json(ex, req);
    if (!body)
        return;
    static const char *const keys[] = {"user_ids", "as", NULL};
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(body, "user_ids");
    const cJSON *as = cJSON_GetObjectItemCaseSensitive(body, "as");
    pd_str_t *list = NULL;
    if (!only_keys(ex, body, keys))
        goto out;
    if (!cJSON_IsArray(ids)) {
        respond_error(ex, 400, "bad_field", "\"user_ids\" must be an array of user ids");
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(ids);
    if (n > a->cfg.max_ids) {
        respond_error(ex, 400, "too_many_ids", "at most %u user ids per request", a->cfg.max_ids);
        goto out;
    }
    pd_str_t requester = {0};
    if (as && !cJSON_IsNull(as)) {
        if (!cJSON_IsString(as) || !pd_user_id_valid(as->valuestring, strlen(as->valuestring))) {
            respond_error(ex, 400, "bad_user_id", "\"as\" must be a valid user id");
            goto out;
        }
        requester = (pd_str_t){as->valuestring, strlen(as->valuestring)};
    }
    list = malloc(sizeof(*list) * (n ? n : 1));
    if (!list) {
        respond_error(ex, 500, "internal", "out of memory");
        goto out;
    }
    size_t i = 0;
    for (const cJSON *c = ids->child; c; c = c->next, i++) {
        if (!cJSON_IsString(c) || !pd_user_id_valid(c->valuestring, strlen(c->valuestring))) {
            respond_error(ex, 400, "bad_user_id", "\"user_ids\"[%zu] is not a valid user id", i);
            goto out;
        }
        list[i] = (pd_str_t){c->valuestring, strlen(c->valuestring)};
    }
    struct areq *r = areq_new(a, ex);
    if (r) {
        int rc = engine_query(a->engine, requester, list, n, presences_done, r);
        if (rc) {
            engine_failed(ex, rc);
            free(r);
        }
    }
out:
    free(list);
    cJSON_Delete(body);
}

/* Between the two store calls of a write answered with a read: a client already gone is not
 * worth the read. Answers (the answer is dropped) and frees r then; true when it did. */
static bool client_gone(struct areq *r) {
    if (http_exchange_alive(r->ex))
        return false;
    respond_error(r->ex, 503, "unavailable", "the client went away");
    free(r);
    return true;
}

static void updated_then_show(void *arg, int err) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
        free(r);
        return;
    }
    if (client_gone(r))
        return;
    r->single = true;
    pd_str_t user = {r->user, r->user_len};
    int rc = engine_query(r->a->engine, (pd_str_t){0}, &user, 1, presences_done, r);
    if (rc) {
        engine_failed(r->ex, rc);
        free(r);
    }
}

/* A nullable text field of a PUT body: absent keeps, null clears, a string sets. */
static bool text_field(http_exchange_t *ex, const cJSON *body, const char *name, size_t max,
                       store_text_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, name);
    *out = (store_text_t){.op = STORE_KEEP};
    if (!v)
        return true;
    if (cJSON_IsNull(v)) {
        out->op = STORE_CLEAR;
        return true;
    }
    size_t n = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
    if (!cJSON_IsString(v) || !pd_label_valid(v->valuestring, n, max, true)) {
        respond_error(ex, 400, "bad_field",
                      "\"%s\" must be null or text of at most %zu bytes "
                      "without control characters",
                      name, max);
        return false;
    }
    *out = (store_text_t){.op = STORE_SET, .s = v->valuestring, .len = n};
    return true;
}

static void put_presence(api_t *a, http_exchange_t *ex, const http_request_t *req, pd_str_t user) {
    cJSON *body = body_json(ex, req);
    if (!body)
        return;
    static const char *const keys[] = {"status", "custom_status", "activity", "expires_in", NULL};
    store_user_fields_t f = {0};
    if (!only_keys(ex, body, keys) ||
        !text_field(ex, body, "custom_status", PD_CUSTOM_STATUS_MAX, &f.custom_status) ||
        !text_field(ex, body, "activity", PD_ACTIVITY_MAX, &f.activity))
        goto out;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "status");
    if (st && cJSON_IsNull(st)) {
        f.server_status_op = STORE_CLEAR;
    } else if (st) {
        int s = cJSON_IsString(st) ? pd_status_parse(st->valuestring, strlen(st->valuestring)) : -1;
        if (s < PD_AWAY) {
            respond_error(ex, 400, "bad_status", "\"status\" must be online, away, busy or null");
            goto out;
        }
        f.server_status_op = STORE_SET;
        f.server_status = (uint8_t)s;
    }
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(body, "expires_in");
    if (exp && !cJSON_IsNull(exp)) {
        if (!cJSON_IsNumber(exp) || !(exp->valuedouble > 0) || exp->valuedouble > 31 * 86400.0) {
            respond_error(ex, 400, "bad_field", "\"expires_in\" must be seconds in (0, 2678400]");
            goto out;
        }
        /* One deadline for everything this request sets. */
        double at = pd_clock_wall(&a->clock) + exp->valuedouble;
        if (f.custom_status.op == STORE_SET)
            f.custom_status_expires = at;
        if (f.activity.op == STORE_SET)
            f.activity_expires = at;
        if (f.server_status_op == STORE_SET)
            f.server_status_expires = at;
    }
    struct areq *r = areq_new(a, ex);
    if (!r)
        goto out;
    memcpy(r->user, user.s, user.len);
    r->user_len = user.len;
    int rc = engine_server_update(a->engine, user, &f, updated_then_show, r);
    if (rc) {
        engine_failed(ex, rc);
        free(r);
    }
out:
    cJSON_Delete(body);
}

/* --- Rooms --- */

static void members_done(void *arg, int err, const pd_member_t *ms, size_t n, uint32_t count,
                         bool more) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
    } else {
        jsonw_t w;
        jw_init(&w, 128 + n * 200);
        jw_obj(&w);
        jw_key(&w, "channel");
        jw_str(&w, r->channel, r->channel_len);
        jw_key(&w, "count");
        jw_int(&w, count);
        jw_key(&w, "members");
        jw_arr(&w);
        for (size_t i = 0; i < n; i++)
            proto_put_member(&w, &ms[i]);
        jw_arr_end(&w);
        jw_key(&w, "next_cursor");
        if (more && n)
            jw_str(&w, ms[n - 1].user_id, ms[n - 1].user_id_len);
        else
            jw_null(&w);
        jw_obj_end(&w);
        respond_json(r->ex, 200, &w);
    }
    free(r);
}

static void count_done(void *arg, int err, uint32_t count) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
    } else {
        jsonw_t w;
        jw_init(&w, 64 + r->channel_len);
        jw_obj(&w);
        jw_key(&w, "channel");
        jw_str(&w, r->channel, r->channel_len);
        jw_key(&w, "count");
        jw_int(&w, count);
        jw_obj_end(&w);
        respond_json(r->ex, 200, &w);
    }
    free(r);
}

static void get_channel(api_t *a, http_exchange_t *ex, const http_request_t *req, pd_str_t channel,
                        bool members) {
    if (!proto_channel_valid(channel.s, channel.len)) {
        respond_error(ex, 400, "bad_channel",
                      "a channel is 1..%d bytes of A-Z a-z 0-9 _ : . @ / - (percent-encode '/')",
                      PROTO_CHANNEL_MAX);
        return;
    }
    char cursor[PD_USER_ID_MAX + 1], limit_s[16];
    pd_str_t after = {0};
    uint32_t limit = PROTO_PAGE_DEFAULT;
    if (members) {
        int n = http_query_get(req->query, req->query_len, "cursor", cursor, sizeof(cursor));
        if (n > 0)
            after = (pd_str_t){cursor, (size_t)n};
        else if (n != PD_ENOTFOUND && n != 0) {
            respond_error(ex, 400, "bad_field", "\"cursor\" is malformed or too long");
            return;
        }
        n = http_query_get(req->query, req->query_len, "limit", limit_s, sizeof(limit_s));
        if (n != PD_ENOTFOUND) {
            char *end;
            long l = n > 0 ? strtol(limit_s, &end, 10) : 0;
            if (n <= 0 || *end || l < 1 || l > PROTO_PAGE_MAX) {
                respond_error(ex, 400, "bad_field", "\"limit\" must be an integer in [1, %d]",
                              PROTO_PAGE_MAX);
                return;
            }
            limit = (uint32_t)l;
        }
    }
    struct areq *r = areq_new(a, ex);
    if (!r)
        return;
    memcpy(r->channel, channel.s, channel.len);
    r->channel_len = channel.len;
    int rc = members ? rooms_members(a->rooms, channel, after, limit, members_done, r)
                     : rooms_count(a->rooms, channel, count_done, r);
    if (rc) {
        engine_failed(ex, rc);
        free(r);
    }
}

/* --- Users --- */

static void put_list(jsonw_t *w, const char *key, const pd_str_t *items, size_t n) {
    jw_key(w, key);
    jw_arr(w);
    for (size_t i = 0; i < n; i++)
        jw_str(w, items[i].s, items[i].len);
    jw_arr_end(w);
}

static void privacy_done(void *arg, int err, const store_privacy_t *p) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
    } else {
        jsonw_t w;
        jw_init(&w, 128 + (p->ncontacts + p->nblocked) * 32);
        jw_obj(&w);
        jw_key(&w, "user_id");
        jw_str(&w, r->user, r->user_len);
        jw_key(&w, "visibility");
        jw_cstr(&w, privacy_visibility_name(p->visibility));
        put_list(&w, "contacts", p->contacts, p->ncontacts);
        put_list(&w, "blocked", p->blocked, p->nblocked);
        jw_obj_end(&w);
        respond_json(r->ex, 200, &w);
    }
    free(r);
}

static void privacy_set_done(void *arg, int err) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
        free(r);
        return;
    }
    if (client_gone(r))
        return;
    pd_str_t user = {r->user, r->user_len};
    int rc = engine_privacy_of(r->a->engine, user, privacy_done, r);
    if (rc) {
        engine_failed(r->ex, rc);
        free(r);
    }
}

/* Reads a list of user ids (absent: empty); answers 400 and returns -1 when bad. */
static int id_list(http_exchange_t *ex, const cJSON *v, const char *name, pd_str_t **out,
                   uint32_t *n, uint32_t max) {
    *out = NULL;
    *n = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v)) {
        respond_error(ex, 400, "bad_field", "\"%s\" must be an array of user ids", name);
        return -1;
    }
    uint32_t count = (uint32_t)cJSON_GetArraySize(v);
    if (count > max) {
        respond_error(ex, 400, "list_full", "\"%s\" may hold at most %u users", name, max);
        return -1;
    }
    *out = malloc(sizeof(**out) * (count + 1));
    if (!*out) {
        respond_error(ex, 500, "internal", "out of memory");
        return -1;
    }
    for (const cJSON *c = v->child; c; c = c->next) {
        if (!cJSON_IsString(c) || !pd_user_id_valid(c->valuestring, strlen(c->valuestring))) {
            respond_error(ex, 400, "bad_user_id", "\"%s\"[%u] is not a valid user id", name, *n);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[(*n)++] = (pd_str_t){c->valuestring, strlen(c->valuestring)};
    }
    return 0;
}

static void put_privacy(api_t *a, http_exchange_t *ex, const http_request_t *req, pd_str_t user) {
    cJSON *body = body_json(ex, req);
    if (!body)
        return;
    static const char *const keys[] = {"visibility", "contacts", "blocked", NULL};
    pd_str_t *contacts = NULL, *blocked = NULL;
    store_privacy_t p = {.visibility = PD_VIS_EVERYONE};
    if (!only_keys(ex, body, keys))
        goto out;
    const cJSON *vis = cJSON_GetObjectItemCaseSensitive(body, "visibility");
    if (vis) {
        int v = cJSON_IsString(vis)
                    ? privacy_visibility_parse(vis->valuestring, strlen(vis->valuestring))
                    : -1;
        if (v < 0) {
            respond_error(ex, 400, "bad_visibility",
                          "\"visibility\" must be everyone, contacts or nobody");
            goto out;
        }
        p.visibility = (uint8_t)v;
    }
    uint32_t max = a->cfg.max_contacts;
    if (id_list(ex, cJSON_GetObjectItemCaseSensitive(body, "contacts"), "contacts", &contacts,
                &p.ncontacts, max) ||
        id_list(ex, cJSON_GetObjectItemCaseSensitive(body, "blocked"), "blocked", &blocked,
                &p.nblocked, max))
        goto out;
    for (uint32_t i = 0; i < p.ncontacts + p.nblocked; i++) {
        if (!privacy_entry_allowed(user,
                                   i < p.ncontacts ? contacts[i] : blocked[i - p.ncontacts])) {
            respond_error(ex, 400, "bad_user_id", PRIVACY_SELF_ENTRY_MESSAGE);
            goto out;
        }
    }
    p.contacts = contacts;
    p.blocked = blocked;
    struct areq *r = areq_new(a, ex);
    if (!r)
        goto out;
    memcpy(r->user, user.s, user.len);
    r->user_len = user.len;
    int rc = engine_privacy_set(a->engine, user, &p, privacy_set_done, r);
    if (rc) {
        engine_failed(ex, rc);
        free(r);
    }
out:
    free(contacts);
    free(blocked);
    cJSON_Delete(body);
}

static const char *explain_rule(const store_explain_t *x, char *buf, size_t size) {
    size_t lingering = 0;
    bool session_claims = false;
    uint8_t st = x->presence->status;
    for (size_t i = 0; i < x->nsessions; i++) {
        lingering += x->sessions[i].lingering;
        session_claims |= x->sessions[i].status == st;
    }
    if (x->nsessions == 0) {
        snprintf(buf, size, "offline: no live session%s",
                 x->server_status ? " (the backend's status counts only beside one)" : "");
        return buf;
    }
    char grace[64] = "";
    if (lingering)
        snprintf(grace, sizeof(grace), ", %zu of them in their grace window", lingering);
    snprintf(buf, size,
             "%s: the highest claim (busy > online > away) of %zu session(s)%s%s; it comes "
             "from %s",
             pd_status_name(st), x->nsessions, grace,
             x->server_status ? " and the backend's status" : "",
             session_claims ? "a session's claim" : "the backend's status");
    return buf;
}

static void explain_done(void *arg, int err, const store_explain_t *x, const double *liveness) {
    struct areq *r = arg;
    if (err) {
        engine_failed(r->ex, err);
        free(r);
        return;
    }
    char rule[256];
    jsonw_t w;
    jw_init(&w, 512 + x->nsessions * 160);
    jw_obj(&w);
    jw_key(&w, "user_id");
    jw_str(&w, r->user, r->user_len);
    jw_key(&w, "presence");
    proto_put_presence(&w, x->presence);
    jw_key(&w, "rule");
    jw_cstr(&w, explain_rule(x, rule, sizeof(rule)));
    jw_key(&w, "visibility");
    jw_cstr(&w, privacy_visibility_name(x->visibility));
    jw_key(&w, "server_status");
    if (x->server_status) {
        jw_obj(&w);
        jw_key(&w, "status");
        jw_cstr(&w, pd_status_name(x->server_status));
        jw_key(&w, "expires_at");
        if (x->server_status_expires > 0)
            jw_time(&w, x->server_status_expires);
        else
            jw_null(&w);
        jw_key(&w, "counted");
        jw_bool(&w, x->nsessions > 0);
        jw_obj_end(&w);
    } else {
        jw_null(&w);
    }
    jw_key(&w, "custom_status_expires_at");
    if (x->custom_status_expires > 0)
        jw_time(&w, x->custom_status_expires);
    else
        jw_null(&w);
    jw_key(&w, "activity_expires_at");
    if (x->activity_expires > 0)
        jw_time(&w, x->activity_expires);
    else
        jw_null(&w);
    jw_key(&w, "sessions");
    jw_arr(&w);
    for (size_t i = 0; i < x->nsessions; i++) {
        const store_session_view_t *s = &x->sessions[i];
        jw_obj(&w);
        jw_key(&w, "session_id");
        jw_int(&w, (int64_t)s->sid);
        jw_key(&w, "node");
        jw_cstr(&w, s->node);
        jw_key(&w, "device");
        jw_cstr(&w, s->device);
        jw_key(&w, "claim");
        jw_cstr(&w, pd_status_name(s->status));
        jw_key(&w, "lingering");
        jw_bool(&w, s->lingering);
        jw_key(&w, "last_liveness");
        if (i < PD_SESSIONS_PER_USER_MAX && liveness[i] > 0)
            jw_time(&w, liveness[i]);
        else
            jw_null(&w);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    respond_json(r->ex, 200, &w);
    free(r);
}

static void user_call(api_t *a, http_exchange_t *ex, const http_request_t *req, pd_str_t user,
                      const char *what) {
    struct areq *r;
    int rc;
    if (strcmp(what, "privacy") == 0 && req->method == HTTP_PUT) {
        put_privacy(a, ex, req, user);
        return;
    }
    if (strcmp(what, "disconnect") == 0) {
        uint32_t n = engine_kick(a->engine, user, a->cfg.kick_code, "disconnected by the server");
        jsonw_t w;
        jw_init(&w, 64);
        jw_obj(&w);
        jw_key(&w, "disconnected");
        jw_int(&w, n);
        jw_obj_end(&w);
        respond_json(ex, 200, &w);
        return;
    }
    if (!(r = areq_new(a, ex)))
        return;
    memcpy(r->user, user.s, user.len);
    r->user_len = user.len;
    rc = strcmp(what, "privacy") == 0 ? engine_privacy_of(a->engine, user, privacy_done, r)
                                      : engine_explain(a->engine, user, explain_done, r);
    if (rc) {
        engine_failed(ex, rc);
        free(r);
    }
}

/* --- The event stream --- */

static void sse_end(void *arg);

/* The frame of one event around its JSON data (released). The id is taken here, when the
 * event is sure to be sent: a stream opened "as" a user must not show gaps where events it
 * may not see were left out. */
static pd_obuf_t *sse_frame(struct sse *s, const char *event, pd_obuf_t *data) {
    if (!data)
        return NULL;
    char head[96];
    int n = snprintf(head, sizeof(head),
                     "id: %llu\nevent: %s\ndata: ", (unsigned long long)++s->seq, event);
    pd_obuf_t *b = pd_obuf_new((size_t)n + pd_obuf_payload_len(data) + 2);
    /* One data line: our JSON never holds a raw newline (jsonw escapes them). */
    if (b && (pd_obuf_append(&b, head, (size_t)n) ||
              pd_obuf_append(&b, pd_obuf_payload(data), pd_obuf_payload_len(data)) ||
              pd_obuf_append(&b, "\n\n", 2))) {
        pd_obuf_release(b);
        b = NULL;
    }
    pd_obuf_release(data);
    return b;
}

static void sse_send(struct sse *s, pd_obuf_t *b) {
    if (!b)
        return;
    int rc = http_stream_send(s->st, b);
    pd_obuf_release(b);
    if (rc == 0)
        (*s->api->n.sse_events)++;
    else if (rc == PD_ELIMIT)
        (*s->api->n.sse_dropped)++; /* too slow: the stream ends, sse_end follows */
}

/* A presence event waiting for the privacy check of a stream opened "as" a user. The check
 * may answer later (the Redis store): the stream can end meanwhile, so every check is listed
 * in the API, and a stream that ends detaches its checks (s = NULL) instead of leaving them
 * pointing at freed memory. */
struct sse_check {
    api_t *api;
    struct sse *s;   /* NULL once the stream is over */
    pd_obuf_t *data; /* the event's JSON */
    struct sse_check *next, *prev;
};

static void check_unlink(struct sse_check *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        c->api->checks = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

static void sse_visible(void *arg, int err, const uint8_t *bits) {
    struct sse_check *c = arg;
    check_unlink(c);
    if (!err && bits[0] && c->s)
        sse_send(c->s, sse_frame(c->s, "presence", c->data));
    else
        pd_obuf_release(c->data);
    free(c);
}

static bool wants_user(const struct sse *s, pd_str_t user) {
    if (s->nusers == 0)
        return true;
    for (uint32_t i = 0; i < s->nusers; i++)
        if (strlen(s->users[i]) == user.len && memcmp(s->users[i], user.s, user.len) == 0)
            return true;
    return false;
}

static void on_event(void *ctx, const pd_event_t *ev) {
    struct sse *s = ctx;
    jsonw_t w;
    if (ev->kind == PD_EV_PRESENCE) {
        if (s->rooms_only || !wants_user(s, ev->user))
            return;
        jw_init(&w, 320);
        jw_obj(&w);
        jw_key(&w, "prev_status");
        jw_cstr(&w, pd_status_name(ev->prev_status));
        jw_key(&w, "presence");
        proto_put_presence(&w, ev->presence);
        jw_obj_end(&w);
        pd_obuf_t *data = jw_finish(&w);
        if (!s->as[0]) {
            sse_send(s, sse_frame(s, "presence", data));
            return;
        }
        /* A stream opened "as" a user shows only what that user may see. */
        struct sse_check *c = data ? malloc(sizeof(*c)) : NULL;
        if (!c) {
            pd_obuf_release(data);
            return;
        }
        api_t *a = s->api;
        *c = (struct sse_check){.api = a, .s = s, .data = data, .next = a->checks};
        if (a->checks)
            a->checks->prev = c;
        a->checks = c;
        pd_str_t as = {s->as, strlen(s->as)};
        if (engine_can_see(a->engine, as, ev->user, sse_visible, c) != 0) {
            check_unlink(c);
            pd_obuf_release(data);
            free(c);
        }
        return;
    }
    if (s->presence_only)
        return;
    size_t pl = strlen(s->prefix);
    if (pl && (ev->room.len < pl || memcmp(ev->room.s, s->prefix, pl) != 0))
        return;
    static const char *const names[] = {[PD_EV_MEMBER_JOINED] = "member_joined",
                                        [PD_EV_MEMBER_LEFT] = "member_left",
                                        [PD_EV_MEMBER_UPDATED] = "member_updated"};
    jw_init(&w, 320);
    jw_obj(&w);
    jw_key(&w, "channel");
    jw_str(&w, ev->room.s, ev->room.len);
    if (ev->kind == PD_EV_MEMBER_LEFT) {
        jw_key(&w, "user_id");
        jw_str(&w, ev->user.s, ev->user.len);
        jw_key(&w, "reason");
        jw_cstr(&w, events_reason_name(ev->reason));
    } else {
        jw_key(&w, "member");
        proto_put_member(&w, ev->member);
    }
    jw_key(&w, "count");
    jw_int(&w, ev->count);
    jw_obj_end(&w);
    sse_send(s, sse_frame(s, names[ev->kind], jw_finish(&w)));
}

static void sse_keepalive(wheel_timer_t *t, uint64_t now) {
    struct sse *s = (struct sse *)((char *)t - offsetof(struct sse, keepalive));
    pd_obuf_t *b = pd_obuf_from(": keepalive\n\n", 13);
    if (b) {
        if (http_stream_send(s->st, b) == PD_ELIMIT)
            (*s->api->n.sse_dropped)++;
        pd_obuf_release(b);
    }
    wheel_schedule(s->api->wheel, t, now + s->api->cfg.sse_keepalive_ms);
}

static void sse_free(struct sse *s) {
    for (uint32_t i = 0; i < s->nusers; i++)
        free(s->users[i]);
    free(s);
}

/* The stream is over (client gone, too slow, or shutdown): forget it. */
static void sse_end(void *arg) {
    struct sse *s = arg;
    api_t *a = s->api;
    events_unsubscribe(a->events, &s->sub);
    wheel_cancel(a->wheel, &s->keepalive);
    if (s->prev)
        s->prev->next = s->next;
    else
        a->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    for (struct sse_check *c = a->checks; c; c = c->next)
        if (c->s == s)
            c->s = NULL;
    (*a->n.sse_streams)--;
    sse_free(s);
}

static void open_stream(api_t *a, http_exchange_t *ex, const http_request_t *req) {
    struct sse *s = calloc(1, sizeof(*s));
    if (!s) {
        respond_error(ex, 500, "internal", "out of memory");
        return;
    }
    char buf[2048];
    int n = http_query_get(req->query, req->query_len, "as", buf, sizeof(buf));
    if (n != PD_ENOTFOUND) {
        if (n <= 0 || !pd_user_id_valid(buf, (size_t)n)) {
            respond_error(ex, 400, "bad_user_id", "\"as\" must be a valid user id");
            goto err_free;
        }
        memcpy(s->as, buf, (size_t)n + 1);
    }
    n = http_query_get(req->query, req->query_len, "channel_prefix", buf, sizeof(buf));
    if (n != PD_ENOTFOUND) {
        if (n < 0 || n > PROTO_CHANNEL_MAX) {
            respond_error(ex, 400, "bad_channel", "\"channel_prefix\" is too long or malformed");
            goto err_free;
        }
        memcpy(s->prefix, buf, (size_t)n + 1);
    }
    n = http_query_get(req->query, req->query_len, "users", buf, sizeof(buf));
    if (n != PD_ENOTFOUND) {
        if (n < 0) {
            respond_error(ex, 400, "bad_field", "\"users\" is too long or malformed");
            goto err_free;
        }
        for (char *save = NULL, *u = strtok_r(buf, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
            if (s->nusers == STREAM_FILTERS_MAX || !pd_user_id_valid(u, strlen(u))) {
                respond_error(ex, 400, "bad_user_id",
                              "\"users\" is a comma-separated list of up to %d user ids",
                              STREAM_FILTERS_MAX);
                goto err_free;
            }
            if (!(s->users[s->nusers++] = strdup(u))) {
                respond_error(ex, 500, "internal", "out of memory");
                goto err_free;
            }
        }
    }
    /* Each filter narrows its own kind of event and, alone, leaves out the other kind; given
     * both, both kinds come, each filtered (a prefix used to drop every presence event, so
     * users= was silently ignored beside it). */
    s->rooms_only = s->prefix[0] && s->nusers == 0;
    s->presence_only = s->nusers > 0 && !s->prefix[0];
    s->api = a;
    s->st =
        http_exchange_stream(ex, 200, "text/event-stream", "X-Accel-Buffering: no\r\n", sse_end, s);
    if (!s->st)
        goto err_free; /* answered all the same (the client is gone, or 503) */
    s->next = a->streams;
    if (a->streams)
        a->streams->prev = s;
    a->streams = s;
    (*a->n.sse_streams)++;
    events_subscribe(a->events, &s->sub, on_event, s);
    wheel_timer_init(&s->keepalive, sse_keepalive);
    wheel_schedule(a->wheel, &s->keepalive, pd_clock_ms(&a->clock) + a->cfg.sse_keepalive_ms);
    /* Starts the stream at once, so the client (and any proxy) sees it is open. */
    pd_obuf_t *hello = pd_obuf_from(": presenced event stream\n\n", 26);
    if (hello) {
        http_stream_send(s->st, hello);
        pd_obuf_release(hello);
    }
    return;
err_free:
    sse_free(s);
}

static double gauge_backlog(void *ctx) {
    api_t *a = ctx;
    double total = 0;
    for (struct sse *s = a->streams; s; s = s->next)
        total += http_stream_backlog(s->st);
    return total;
}

/* --- Routing --- */

static void handle(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    api_t *a = ctx;
    if (!authorized(a, req)) {
        (*a->n.auth_failures)++;
        respond_error(ex, 401, "unauthorized", "a valid API key is required");
        return;
    }
    /* Segments after /v1/, each percent-decoded on its own ("%2F" stays inside one). */
    char seg[SEGMENTS_MAX][SEGMENT_MAX];
    size_t seglen[SEGMENTS_MAX];
    size_t nseg = 0;
    const char *p = req->path + 4, *end = req->path + req->path_len;
    while (p < end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash ? slash : end;
        int n = nseg < SEGMENTS_MAX ? decode_segment(p, (size_t)(stop - p), seg[nseg], SEGMENT_MAX)
                                    : -1;
        if (n <= 0) {
            respond_error(ex, 404, "not_found", "no such endpoint");
            return;
        }
        seglen[nseg++] = (size_t)n;
        p = slash ? slash + 1 : end;
    }
    int m = req->method;
    const char *allow = NULL;
#define IS(i, s) (strcmp(seg[i], (s)) == 0)
    if (nseg == 1 && IS(0, "events")) {
        if (m == HTTP_GET)
            return open_stream(a, ex, req);
        allow = "GET";
    } else if (nseg == 2 && IS(0, "presence") && IS(1, "bulk") && m == HTTP_POST) {
        return post_bulk(a, ex, req);
    } else if (nseg == 2 && IS(0, "presence")) {
        pd_str_t user = {seg[1], seglen[1]};
        if (!pd_user_id_valid(user.s, user.len)) {
            respond_error(ex, 400, "bad_user_id", "not a valid user id");
            return;
        }
        if (m == HTTP_GET || m == HTTP_HEAD)
            return get_presence(a, ex, req, user);
        if (m == HTTP_PUT)
            return put_presence(a, ex, req, user);
        allow = strcmp(seg[1], "bulk") == 0 ? "GET, HEAD, PUT, POST" : "GET, HEAD, PUT";
    } else if (nseg == 3 && IS(0, "channels") && (IS(2, "members") || IS(2, "count"))) {
        if (m == HTTP_GET || m == HTTP_HEAD)
            return get_channel(a, ex, req, (pd_str_t){seg[1], seglen[1]}, IS(2, "members"));
        allow = "GET, HEAD";
    } else if (nseg == 3 && IS(0, "users") &&
               (IS(2, "privacy") || IS(2, "disconnect") || IS(2, "explain"))) {
        pd_str_t user = {seg[1], seglen[1]};
        if (!pd_user_id_valid(user.s, user.len)) {
            respond_error(ex, 400, "bad_user_id", "not a valid user id");
            return;
        }
        bool ok = IS(2, "privacy")      ? m == HTTP_GET || m == HTTP_HEAD || m == HTTP_PUT
                  : IS(2, "disconnect") ? m == HTTP_POST
                                        : m == HTTP_GET || m == HTTP_HEAD;
        if (ok)
            return user_call(a, ex, req, user, seg[2]);
        allow = IS(2, "privacy") ? "GET, HEAD, PUT" : IS(2, "disconnect") ? "POST" : "GET, HEAD";
    }
#undef IS
    if (allow) {
        char extra[64];
        snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
        char body[128];
        int n = snprintf(
            body, sizeof(body),
            "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"allowed: %s\"}}", allow);
        http_exchange_respond(ex, 405, "application/json", extra, body, (size_t)n);
        return;
    }
    respond_error(ex, 404, "not_found", "no such endpoint");
}

/* --- Life cycle --- */

static int load_keys(api_t *a, const char *path, FILE *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(err, "presenced: cannot open API keys file '%s': %m\n", path);
        return -1;
    }
    char line[1024];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
                     line[n - 1] == '\t'))
            line[--n] = '\0';
        const char *k = line;
        while (*k == ' ' || *k == '\t')
            k++;
        if (!*k || *k == '#')
            continue;
        n = strlen(k);
        if (n < API_KEY_MIN || strpbrk(k, " \t")) {
            fprintf(err,
                    "presenced: API keys file '%s' line %d: a key is one word of at least "
                    "%d characters\n",
                    path, lineno, API_KEY_MIN);
            rc = -1;
        } else if (a->nkeys == API_KEYS_MAX) {
            fprintf(err, "presenced: API keys file '%s': more than %d keys\n", path, API_KEYS_MAX);
            rc = -1;
        } else {
            unsigned int dl = 0;
            EVP_Digest(k, n, a->keys[a->nkeys++], &dl, EVP_sha256(), NULL);
        }
    }
    fclose(f);
    if (rc == 0 && a->nkeys == 0) {
        fprintf(err, "presenced: API keys file '%s' holds no key\n", path);
        rc = -1;
    }
    OPENSSL_cleanse(line, sizeof(line));
    return rc;
}

int api_check_keys_file(const char *path, FILE *err) {
    api_t *a = calloc(1, sizeof(*a));
    if (!a) {
        fprintf(err, "presenced: out of memory\n");
        return -1;
    }
    int rc = load_keys(a, path, err);
    OPENSSL_cleanse(a->keys, sizeof(a->keys));
    free(a);
    return rc;
}

api_t *api_new(const api_config_t *cfg, engine_t *engine, rooms_t *rooms, events_t *events,
               wheel_t *wheel, const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics,
               FILE *err) {
    api_t *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->cfg = *cfg;
    a->engine = engine;
    a->rooms = rooms;
    a->events = events;
    a->wheel = wheel;
    a->clock = *clock;
    a->log = log;
    if (load_keys(a, cfg->keys_file, err)) {
        free(a);
        return NULL;
    }
#define COUNTER(field, name, help)                                                                 \
    do {                                                                                           \
        a->n.field = metrics ? pd_metrics_counter(metrics, name, help, NULL, NULL) : NULL;         \
        if (!a->n.field)                                                                           \
            a->n.field = &dummy_counter;                                                           \
    } while (0)
    COUNTER(auth_failures, "presenced_api_auth_failures_total",
            "HTTP API requests refused for a missing or wrong API key");
    COUNTER(sse_events, "presenced_sse_events_total", "Events sent on /v1/events streams");
    COUNTER(sse_dropped, "presenced_sse_dropped_total",
            "/v1/events streams dropped because their reader was too slow");
#undef COUNTER
    a->n.sse_streams = metrics ? pd_metrics_gauge(metrics, "presenced_sse_streams",
                                                  "Open /v1/events streams", NULL, NULL)
                               : NULL;
    if (!a->n.sse_streams)
        a->n.sse_streams = &dummy_gauge;
    if (metrics)
        pd_metrics_gauge_fn(metrics, "presenced_sse_queue_bytes",
                            "Bytes queued on /v1/events streams and not yet written", NULL, NULL,
                            gauge_backlog, a);
    return a;
}

int api_register(api_t *a, http_router_t *router) {
    uint32_t all = HTTP_M(HTTP_GET) | HTTP_M(HTTP_PUT) | HTTP_M(HTTP_POST) | HTTP_M(HTTP_DELETE) |
                   HTTP_M(HTTP_PATCH) | HTTP_M(HTTP_OPTIONS);
    return http_router_add(router, all, "/v1/", true, handle, a);
}

void api_close_streams(api_t *a) {
    for (struct sse *s = a->streams; s; s = s->next)
        http_stream_end(s->st);
}

void api_free(api_t *a) {
    if (!a)
        return;
    /* Streams still open are ended by the server's close; forget them here. */
    while (a->streams) {
        struct sse *s = a->streams;
        a->streams = s->next;
        events_unsubscribe(a->events, &s->sub);
        wheel_cancel(a->wheel, &s->keepalive);
        sse_free(s);
    }
    /* Checks still in flight are never answered now: the store is destroyed after the API,
     * and a store being destroyed does not call back into its callers. */
    while (a->checks) {
        struct sse_check *c = a->checks;
        a->checks = c->next;
        pd_obuf_release(c->data);
        free(c);
    }
    OPENSSL_cleanse(a->keys, sizeof(a->keys));
    free(a);
}
