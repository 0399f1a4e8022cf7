/* Webhooks (webhooks.h): per URL a bounded ring of queued events and at most one batch in
 * flight, so a receiver sees its events in the order they happened; HTTP through libcurl's
 * multi-socket API on the libuv loop.
 *
 * Invariants:
 *   - An event is encoded once, as its JSON object, into a refcounted buffer; every URL's queue
 *     holds a reference. A batch copies the objects into one body when it is formed, signs it
 *     once and keeps body, signature and delivery id for all its attempts.
 *   - A target is IDLE (its timer, when running, ends the batch window), SENDING (its easy
 *     handle is in the multi handle) or BACKOFF (its timer starts the next attempt).
 *   - Nothing here calls libcurl from inside a libcurl callback: the socket and timer callbacks
 *     only (re)arm uv handles. Events from the hub never start a request on the publisher's
 *     stack either: a full batch arms a 0 ms timer.
 *   - Handles may be closed by the owner's uv_walk at shutdown (main does); after that nothing
 *     is armed again and webhooks_free only frees their memory.
 * Cost: about 600 bytes and one easy handle per URL; 16 bytes per queued event per URL plus the
 * event's shared buffer (about 100-200 bytes); one uv_poll_t (about 150 bytes) per socket libcurl
 * has open. Each event costs O(number of URLs); a batch O(its bytes).
 */
#include "webhooks/webhooks.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/jsonw.h"

#define WH_MODULE          "webhooks"
#define WH_SECRET_MIN      16   /* bytes */
#define WH_SECRET_MAX      4096 /* bytes */
#define WH_CONNECT_MAX_MS  3000 /* connect timeout cap: the rest of timeout_ms is for the answer */
#define WH_LOG_INTERVAL_MS 1000 /* at most one failure line per URL per interval */
#define WH_ID_BYTES        16   /* random bytes of a delivery id (hex in the header) */
#define WH_RING_KEEP       64   /* slots an empty queue keeps; a larger ring is freed */

enum wh_type { WH_USER_ONLINE, WH_USER_OFFLINE, WH_ROOM_OCCUPIED, WH_ROOM_VACATED, WH_NTYPES };
static const char *const wh_type_names[WH_NTYPES] = {"user.online", "user.offline", "room.occupied",
                                                     "room.vacated"};

enum wh_state { WH_IDLE, WH_SENDING, WH_BACKOFF };

/* One queued event of one URL. */
struct wh_item {
    pd_obuf_t *json; /* the event's object, shared with the other URLs' queues */
    uint64_t at;     /* loop ms when it was queued */
};

/* The batch taken off a queue: the same bytes, signature and id on every attempt. */
struct wh_batch {
    pd_obuf_t *body;
    struct curl_slist *headers;
    uint32_t nevents;
    uint32_t attempts; /* made so far, the one in flight included */
    char id[WH_ID_BYTES * 2 + 1];
};

struct wh_target {
    webhooks_t *w;
    CURL *easy;
    char *url;
    char *label;          /* the URL without credentials, query or fragment: for logs */
    struct wh_item *ring; /* cap slots; len events from head */
    uint32_t cap, head, len;
    struct wh_batch batch; /* valid unless state == WH_IDLE */
    uv_timer_t timer;
    uint64_t logged_at;   /* loop ms of the last failure line */
    uint32_t log_skipped; /* failures not logged since that line */
    uint32_t failed_run;  /* failed attempts since the last delivery */
    uint8_t state;        /* enum wh_state */
    bool full_warned;     /* "queue full" logged for the current overflow */
    char errbuf[CURL_ERROR_SIZE];
};

/* A socket libcurl asked us to watch. */
struct wh_sock {
    struct wh_sock *next, *prev;
    webhooks_t *w;
    curl_socket_t fd;
    uv_poll_t poll;
};

struct webhooks {
    webhooks_config_t cfg; /* urls and secret_file cleared: not kept */
    uv_loop_t *loop;
    events_t *hub;
    const pd_clock_t *clock;
    pd_log_t *log;
    CURLM *multi;
    struct wh_sock *socks; /* every socket being watched */
    events_sub_t sub;
    uv_timer_t curl_timer;  /* libcurl's timeout */
    uv_timer_t drain_timer; /* the drain's deadline, or 0 ms once everything went out */
    void (*drain_done)(void *arg);
    void *drain_arg;
    unsigned char *secret;
    size_t secret_len;
    uint64_t *n_events[WH_NTYPES];
    uint64_t *n_deliveries, *n_failures, *n_drop_full, *n_drop_attempts;
    int64_t *g_queued;     /* events waiting or in a batch, all URLs */
    uint64_t dummy;        /* counts whatever the registry could not register */
    int64_t dummy_gauge;   /* likewise */
    uint32_t open_handles; /* uv handles webhooks_free closed and still closing */
    uint32_t ntargets;
    bool curl_inited; /* curl_global_init succeeded: cleanup owed */
    bool draining;
    bool freeing;
    struct wh_target targets[];
};

static void target_kick(struct wh_target *t);
static void on_target_timer(uv_timer_t *h);
static void on_drain_timer(uv_timer_t *h);

/* --- Small helpers --- */

/* False once the handles are closing (the owner's shutdown walk, or webhooks_free). */
static bool wh_running(const webhooks_t *w) {
    return !w->freeing && !uv_is_closing((const uv_handle_t *)&w->curl_timer);
}

static void timer_arm(uv_timer_t *h, uv_timer_cb cb, uint64_t ms) {
    if (!uv_is_closing((uv_handle_t *)h))
        uv_timer_start(h, cb, ms, 0);
}

static uint64_t wh_now(const webhooks_t *w) {
    return pd_clock_ms(w->clock);
}

static void queued_add(webhooks_t *w, int64_t n) {
    *w->g_queued += n;
}

/* --- Queue --- */

static int ring_push(struct wh_target *t, pd_obuf_t *json, uint64_t at) {
    if (t->len == t->cap) {
        uint32_t max = t->w->cfg.queue_max;
        uint32_t ncap = t->cap ? (t->cap > max / 2 ? max : t->cap * 2) : 16;
        if (ncap > max)
            ncap = max;
        struct wh_item *n = malloc(sizeof(*n) * ncap);
        if (!n)
            return -1;
        for (uint32_t i = 0; i < t->len; i++)
            n[i] = t->ring[(t->head + i) % t->cap];
        free(t->ring);
        t->ring = n;
        t->cap = ncap;
        t->head = 0;
    }
    t->ring[(t->head + t->len) % t->cap] = (struct wh_item){pd_obuf_retain(json), at};
    t->len++;
    return 0;
}

static void ring_pop(struct wh_target *t, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        pd_obuf_release(t->ring[t->head].json);
        t->head = (t->head + 1) % t->cap;
    }
    t->len -= n;
    if (t->len == 0) {
        t->head = 0;
        if (t->cap > WH_RING_KEEP) {
            free(t->ring);
            t->ring = NULL;
            t->cap = 0;
        }
    }
}

/* --- Batches --- */

static void batch_clear(struct wh_target *t) {
    pd_obuf_release(t->batch.body);
    curl_slist_free_all(t->batch.headers);
    queued_add(t->w, -(int64_t)t->batch.nevents);
    memset(&t->batch, 0, sizeof(t->batch));
    t->state = WH_IDLE;
}

/* {"events":[...]} of the first n queued events. NULL when out of memory. */
static pd_obuf_t *batch_body(const struct wh_target *t, uint32_t n) {
    size_t size = 16;
    for (uint32_t i = 0; i < n; i++)
        size += pd_obuf_payload_len(t->ring[(t->head + i) % t->cap].json) + 1;
    jsonw_t j;
    jw_init(&j, size);
    jw_obj(&j);
    jw_key(&j, "events");
    jw_arr(&j);
    for (uint32_t i = 0; i < n; i++) {
        const pd_obuf_t *e = t->ring[(t->head + i) % t->cap].json;
        jw_raw(&j, (const char *)pd_obuf_payload(e), pd_obuf_payload_len(e));
    }
    jw_arr_end(&j);
    jw_obj_end(&j);
    return jw_finish(&j);
}

/* The headers that carry the batch: type, signature over the exact body, delivery id. */
static struct curl_slist *batch_headers(const webhooks_t *w, const pd_obuf_t *body,
                                        const char *id) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), w->secret, (int)w->secret_len, pd_obuf_payload(body),
              pd_obuf_payload_len(body), mac, &maclen))
        return NULL;
    char sig[sizeof("X-Presenced-Signature: sha256=") + EVP_MAX_MD_SIZE * 2];
    int n = snprintf(sig, sizeof(sig), "X-Presenced-Signature: sha256=");
    sodium_bin2hex(sig + n, sizeof(sig) - (size_t)n, mac, maclen);
    char did[sizeof("X-Presenced-Delivery: ") + WH_ID_BYTES * 2];
    snprintf(did, sizeof(did), "X-Presenced-Delivery: %s", id);
    /* "Expect:" stops libcurl from waiting for a 100 Continue before larger bodies. */
    const char *lines[] = {"Content-Type: application/json", sig, did, "Expect:"};
    struct curl_slist *h = NULL;
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct curl_slist *next = curl_slist_append(h, lines[i]);
        if (!next) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = next;
    }
    return h;
}

static void attempt_done(struct wh_target *t, CURLcode res, long status);

/* Starts one attempt of the target's batch. */
static void batch_attempt(struct wh_target *t) {
    webhooks_t *w = t->w;
    t->batch.attempts++;
    t->state = WH_SENDING;
    t->errbuf[0] = '\0';
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)pd_obuf_payload_len(t->batch.body));
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, (const char *)pd_obuf_payload(t->batch.body));
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->batch.headers);
    CURLMcode mc = curl_multi_add_handle(w->multi, t->easy);
    if (mc != CURLM_OK) {
        snprintf(t->errbuf, sizeof(t->errbuf), "%s", curl_multi_strerror(mc));
        attempt_done(t, CURLE_FAILED_INIT, 0);
    }
}

/* Takes up to max_batch events off the queue into a new batch and starts its first attempt. */
static void batch_start(struct wh_target *t) {
    webhooks_t *w = t->w;
    uint32_t n = t->len < w->cfg.max_batch ? t->len : w->cfg.max_batch;
    struct wh_batch b = {.nevents = n};
    unsigned char raw[WH_ID_BYTES];
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2hex(b.id, sizeof(b.id), raw, sizeof(raw));
    b.body = batch_body(t, n);
    b.headers = b.body ? batch_headers(w, b.body, b.id) : NULL;
    if (!b.headers) {
        /* Out of memory: the events stay queued and the window is tried again later. */
        pd_obuf_release(b.body);
        PD_WARN(w->log, WH_MODULE, "webhook %s: out of memory building a batch", t->label);
        timer_arm(&t->timer, on_target_timer, w->cfg.retry_base_ms);
        return;
    }
    ring_pop(t, n); /* the batch now holds these events: still counted as queued */
    t->batch = b;
    batch_attempt(t);
}

/* Jittered exponential backoff before attempt number attempts + 1: the nominal delay is
 * retry_base_ms doubled per failed attempt, capped at retry_max_ms; the wait is drawn
 * uniformly from its upper half so receivers that come back are not hit in lockstep. */
static uint64_t backoff_ms(const webhooks_t *w, uint32_t attempts) {
    uint64_t d = w->cfg.retry_base_ms;
    for (uint32_t i = 1; i < attempts && d < w->cfg.retry_max_ms; i++)
        d *= 2;
    if (d > w->cfg.retry_max_ms)
        d = w->cfg.retry_max_ms;
    return d - d / 2 + randombytes_uniform((uint32_t)(d / 2) + 1);
}

static void log_failure(struct wh_target *t, const char *why, bool dropping) {
    webhooks_t *w = t->w;
    uint64_t now = wh_now(w);
    if (t->logged_at && now - t->logged_at < WH_LOG_INTERVAL_MS && !dropping) {
        t->log_skipped++;
        return;
    }
    char more[64] = "";
    if (t->log_skipped)
        snprintf(more, sizeof(more), " (%u more failed attempts not logged)", t->log_skipped);
    if (dropping)
        PD_WARN(w->log, WH_MODULE,
                "webhook %s: delivery %s failed (%s); dropping %u event(s) after %u "
                "attempts%s",
                t->label, t->batch.id, why, t->batch.nevents, t->batch.attempts, more);
    else
        PD_WARN(w->log, WH_MODULE, "webhook %s: delivery %s attempt %u of %u failed: %s%s",
                t->label, t->batch.id, t->batch.attempts, w->cfg.max_attempts, why, more);
    t->logged_at = now;
    t->log_skipped = 0;
}

/* Every target idle with nothing queued: the drain is over (done is called from the loop). */
static void drain_check(webhooks_t *w) {
    if (!w->draining || !w->drain_done)
        return;
    for (uint32_t i = 0; i < w->ntargets; i++)
        if (w->targets[i].state != WH_IDLE || w->targets[i].len)
            return;
    timer_arm(&w->drain_timer, on_drain_timer, 0);
}

static void attempt_done(struct wh_target *t, CURLcode res, long status) {
    webhooks_t *w = t->w;
    if (res == CURLE_OK && status >= 200 && status <= 299) {
        (*w->n_deliveries)++;
        if (t->failed_run)
            PD_INFO(w->log, WH_MODULE, "webhook %s: delivering again after %u failed attempts",
                    t->label, t->failed_run);
        t->failed_run = 0;
        t->log_skipped = 0;
        t->full_warned = false;
        batch_clear(t);
        target_kick(t);
        return;
    }
    (*w->n_failures)++;
    t->failed_run++;
    char why[CURL_ERROR_SIZE + 32];
    if (res == CURLE_OK)
        snprintf(why, sizeof(why), "HTTP status %ld", status);
    else
        snprintf(why, sizeof(why), "%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(res));
    if (t->batch.attempts >= w->cfg.max_attempts) {
        log_failure(t, why, true);
        *w->n_drop_attempts += t->batch.nevents;
        batch_clear(t);
        target_kick(t);
        return;
    }
    log_failure(t, why, false);
    t->state = WH_BACKOFF;
    /* A drain sends what it can before its deadline: no waiting out a long backoff. */
    timer_arm(&t->timer, on_target_timer, backoff_ms(w, w->draining ? 1 : t->batch.attempts));
}

/* Decides what an idle target does next: send now, wait for the window, or nothing. */
static void target_kick(struct wh_target *t) {
    webhooks_t *w = t->w;
    if (t->state != WH_IDLE || !wh_running(w))
        return;
    if (t->len == 0) {
        uv_timer_stop(&t->timer);
        return;
    }
    uint64_t now = wh_now(w);
    uint64_t due = t->ring[t->head].at + w->cfg.batch_ms;
    if (w->draining || t->len >= w->cfg.max_batch || now >= due)
        batch_start(t);
    else
        timer_arm(&t->timer, on_target_timer, due - now);
}

static void on_target_timer(uv_timer_t *h) {
    struct wh_target *t = h->data;
    if (t->state == WH_BACKOFF)
        batch_attempt(t);
    else
        target_kick(t);
    drain_check(t->w);
}

/* --- libcurl on the loop --- */

/* Hands finished transfers to their targets. */
static void read_finished(webhooks_t *w) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(w->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result; /* msg is gone after the handle is removed */
        char *priv = NULL;
        long status = 0;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(w->multi, easy);
        attempt_done((struct wh_target *)priv, res, status);
    }
    drain_check(w);
}

static void on_curl_timeout(uv_timer_t *h) {
    webhooks_t *w = h->data;
    int running;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    read_finished(w);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
    webhooks_t *w = userp;
    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&w->curl_timer);
    else if (wh_running(w))
        timer_arm(&w->curl_timer, on_curl_timeout, (uint64_t)timeout_ms);
    return 0;
}

static void on_poll(uv_poll_t *h, int status, int events) {
    struct wh_sock *s = h->data;
    webhooks_t *w = s->w;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(w->multi, s->fd, flags, &running); /* may release s */
    read_finished(w);
}

static void on_sock_closed(uv_handle_t *h) {
    free(h->data);
}

/* Stops watching s and frees it (in its close callback unless someone else closed it). */
static void sock_release(webhooks_t *w, struct wh_sock *s) {
    if (s->prev)
        s->prev->next = s->next;
    else
        w->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (uv_is_closing((uv_handle_t *)&s->poll)) {
        /* Closed by the owner's shutdown walk, which the loop has run (webhooks.h). Only
         * webhooks_free gets here: a running loop never sees this state. */
        free(s);
        return;
    }
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
    webhooks_t *w = userp;
    struct wh_sock *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(w->multi, fd, NULL);
            sock_release(w, s);
        }
        return 0;
    }
    if (!wh_running(w))
        return 0;
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        if (uv_poll_init_socket(w->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->w = w;
        s->fd = fd;
        s->poll.data = s;
        s->next = w->socks;
        if (w->socks)
            w->socks->prev = s;
        w->socks = s;
        curl_multi_assign(w->multi, fd, s);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    return uv_poll_start(&s->poll, ev, on_poll) == 0 ? 0 : -1;
}

/* --- Events --- */

static pd_obuf_t *event_json(const webhooks_t *w, int type, const pd_event_t *ev) {
    jsonw_t j;
    jw_init(&j, 96 + ev->user.len + ev->room.len);
    jw_obj(&j);
    jw_key(&j, "type");
    jw_cstr(&j, wh_type_names[type]);
    if (type == WH_USER_ONLINE || type == WH_USER_OFFLINE) {
        jw_key(&j, "user_id");
        jw_str(&j, ev->user.s, ev->user.len);
        jw_key(&j, "status");
        jw_cstr(&j, pd_status_name(ev->presence->status));
        jw_key(&j, "prev_status");
        jw_cstr(&j, pd_status_name(ev->prev_status));
    } else {
        jw_key(&j, "channel");
        jw_str(&j, ev->room.s, ev->room.len);
        jw_key(&j, "user_id"); /* the member whose join or leave changed the occupancy */
        jw_str(&j, ev->user.s, ev->user.len);
        jw_key(&j, "count");
        jw_int(&j, ev->count);
    }
    jw_key(&j, "at");
    jw_time(&j, pd_clock_wall(w->clock));
    jw_obj_end(&j);
    return jw_finish(&j);
}

static int event_type(const pd_event_t *ev) {
    switch (ev->kind) {
    case PD_EV_PRESENCE:
        if (!ev->presence)
            return -1;
        if (ev->prev_status == PD_OFFLINE && ev->presence->status != PD_OFFLINE)
            return WH_USER_ONLINE;
        if (ev->prev_status != PD_OFFLINE && ev->presence->status == PD_OFFLINE)
            return WH_USER_OFFLINE;
        return -1;
    case PD_EV_MEMBER_JOINED:
        return ev->count == 1 ? WH_ROOM_OCCUPIED : -1;
    case PD_EV_MEMBER_LEFT:
        return ev->count == 0 ? WH_ROOM_VACATED : -1;
    default:
        return -1;
    }
}

static void on_event(void *ctx, const pd_event_t *ev) {
    webhooks_t *w = ctx;
    int type = event_type(ev);
    if (type < 0 || w->draining || !wh_running(w))
        return;
    (*w->n_events[type])++;
    pd_obuf_t *json = event_json(w, type, ev);
    uint64_t now = wh_now(w);
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct wh_target *t = &w->targets[i];
        if (!json || t->len >= w->cfg.queue_max || ring_push(t, json, now) != 0) {
            (*w->n_drop_full)++;
            if (!t->full_warned)
                PD_WARN(w->log, WH_MODULE,
                        "webhook %s: queue full (%u events waiting): new events are dropped",
                        t->label, t->len);
            t->full_warned = true;
            continue;
        }
        queued_add(w, 1);
        if (t->state != WH_IDLE)
            continue; /* the batch in flight decides what follows it */
        if (t->len >= w->cfg.max_batch)
            timer_arm(&t->timer, on_target_timer, 0); /* full: sent from the loop, not here */
        else if (t->len == 1)
            timer_arm(&t->timer, on_target_timer, w->cfg.batch_ms);
    }
    pd_obuf_release(json);
}

/* --- Life cycle --- */

void webhooks_config_default(webhooks_config_t *cfg) {
    *cfg = (webhooks_config_t){.batch_ms = 250,
                               .max_batch = 100,
                               .queue_max = 10000,
                               .timeout_ms = 5000,
                               .retry_base_ms = 500,
                               .retry_max_ms = 30000,
                               .max_attempts = 8};
}

static unsigned char *read_secret(const char *path, size_t *len, FILE *err) {
    if (!path || !path[0]) {
        fprintf(err, "presenced: webhook-url needs webhook-secret-file (the key that signs "
                     "webhook bodies)\n");
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(err, "presenced: cannot open webhook secret file '%s': %m\n", path);
        return NULL;
    }
    unsigned char *buf = malloc(WH_SECRET_MAX + 1);
    size_t n = buf ? fread(buf, 1, WH_SECRET_MAX + 1, f) : 0;
    fclose(f);
    while (n > 0 && n <= WH_SECRET_MAX && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (!buf || n < WH_SECRET_MIN || n > WH_SECRET_MAX) {
        fprintf(err,
                "presenced: the webhook secret in '%s' must be %d to %d bytes (trailing "
                "newlines aside)\n",
                path, WH_SECRET_MIN, WH_SECRET_MAX);
        if (buf)
            sodium_memzero(buf, WH_SECRET_MAX + 1);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* Checks that url is http(s) with a host; returns it without credentials, query or fragment
 * (for logs, curl_free'd by the caller), or NULL. */
static char *url_label(const char *url) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *label = NULL;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0])
        goto out;
    if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        goto out;
    curl_url_set(u, CURLUPART_USER, NULL, 0);
    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
    curl_url_set(u, CURLUPART_QUERY, NULL, 0);
    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
    curl_url_get(u, CURLUPART_URL, &label, 0);
out:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return label;
}

static size_t discard_body(char *p, size_t size, size_t n, void *userp) {
    (void)p;
    (void)userp;
    return size * n;
}

static int easy_setup(struct wh_target *t, const webhooks_config_t *cfg) {
    CURL *e = t->easy;
    long connect_ms = cfg->timeout_ms < WH_CONNECT_MAX_MS ? cfg->timeout_ms : WH_CONNECT_MAX_MS;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, t->url);
    SET(CURLOPT_PRIVATE, (void *)t);
    SET(CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0: the bitmask form is deprecated */
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    /* A redirect is an answer like any other non-2xx: retried, never followed. */
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    /* The URLs are the operator's: no proxy from the environment is slipped in between. */
    SET(CURLOPT_PROXY, "");
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    SET(CURLOPT_WRITEFUNCTION, discard_body);
    SET(CURLOPT_ERRORBUFFER, t->errbuf);
    SET(CURLOPT_USERAGENT, "presenced-webhooks");
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

static bool config_valid(const webhooks_config_t *c, FILE *err) {
    if (c->nurls == 0 || c->nurls > WEBHOOKS_URLS_MAX) {
        fprintf(err, "presenced: 1 to %d webhook URLs, not %u\n", WEBHOOKS_URLS_MAX, c->nurls);
        return false;
    }
    if (!c->max_batch || !c->queue_max || !c->timeout_ms || !c->retry_base_ms ||
        c->retry_max_ms < c->retry_base_ms || !c->max_attempts) {
        fprintf(err, "presenced: webhook limits must be positive (retry_max >= retry_base)\n");
        return false;
    }
    return true;
}

/* Frees everything libcurl and the queues hold; the uv handles are not touched. */
static void release_transfers(webhooks_t *w) {
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct wh_target *t = &w->targets[i];
        if (t->state == WH_SENDING)
            curl_multi_remove_handle(w->multi, t->easy);
    }
    /* Closing its connections may report their sockets removed (on_curl_socket). */
    curl_multi_cleanup(w->multi);
    w->multi = NULL;
    while (w->socks)
        sock_release(w, w->socks);
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct wh_target *t = &w->targets[i];
        curl_easy_cleanup(t->easy);
        if (t->state != WH_IDLE)
            batch_clear(t);
        if (t->len)
            ring_pop(t, t->len);
        free(t->ring);
        free(t->url);
        curl_free(t->label);
    }
    if (w->secret) {
        sodium_memzero(w->secret, WH_SECRET_MAX + 1);
        free(w->secret);
    }
    if (w->curl_inited)
        curl_global_cleanup();
}

webhooks_t *webhooks_new(uv_loop_t *loop, const webhooks_config_t *cfg, events_t *hub,
                         const pd_clock_t *clock, pd_log_t *log, pd_metrics_t *metrics, FILE *err) {
    if (!config_valid(cfg, err))
        return NULL;
    webhooks_t *w = calloc(1, sizeof(*w) + cfg->nurls * sizeof(struct wh_target));
    if (!w) {
        fprintf(err, "presenced: out of memory\n");
        return NULL;
    }
    w->cfg = *cfg;
    w->cfg.urls = NULL;
    w->cfg.secret_file = NULL;
    w->loop = loop;
    w->hub = hub;
    w->clock = clock;
    w->log = log;
    w->g_queued = &w->dummy_gauge;
    w->secret = read_secret(cfg->secret_file, &w->secret_len, err);
    if (!w->secret)
        goto err_free;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(err, "presenced: libcurl failed to initialise\n");
        goto err_free;
    }
    w->curl_inited = true;
    w->multi = curl_multi_init();
    if (!w->multi) {
        fprintf(err, "presenced: libcurl failed to initialise\n");
        goto err_free;
    }
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    for (uint32_t i = 0; i < cfg->nurls; i++, w->ntargets++) {
        struct wh_target *t = &w->targets[i];
        t->w = w;
        t->label = url_label(cfg->urls[i]);
        if (!t->label) {
            fprintf(err, "presenced: webhook URL '%s' is not an http:// or https:// URL\n",
                    cfg->urls[i]);
            goto err_free;
        }
        t->url = strdup(cfg->urls[i]);
        t->easy = t->url ? curl_easy_init() : NULL;
        if (!t->easy || easy_setup(t, cfg) != 0) {
            fprintf(err, "presenced: libcurl cannot send to '%s' (http and https needed)\n",
                    t->label);
            w->ntargets++;
            goto err_free;
        }
    }
    for (int i = 0; i < WH_NTYPES; i++) {
        w->n_events[i] = metrics ? pd_metrics_counter(metrics, "presenced_webhook_events_total",
                                                      "Events queued for webhooks, by type", "type",
                                                      wh_type_names[i])
                                 : NULL;
        if (!w->n_events[i])
            w->n_events[i] = &w->dummy;
    }
#define COUNTER(field, name, help, label, value)                                                   \
    do {                                                                                           \
        w->field = metrics ? pd_metrics_counter(metrics, name, help, label, value) : NULL;         \
        if (!w->field)                                                                             \
            w->field = &w->dummy;                                                                  \
    } while (0)
    COUNTER(n_deliveries, "presenced_webhook_deliveries_total",
            "Webhook batches delivered (answered 2xx)", NULL, NULL);
    COUNTER(n_failures, "presenced_webhook_failures_total",
            "Webhook attempts that failed (status, connection error or timeout)", NULL, NULL);
    COUNTER(n_drop_full, "presenced_webhook_dropped_total",
            "Webhook events dropped: queue full, or attempts exhausted", "reason", "queue_full");
    COUNTER(n_drop_attempts, "presenced_webhook_dropped_total",
            "Webhook events dropped: queue full, or attempts exhausted", "reason", "attempts");
#undef COUNTER
    if (metrics)
        w->g_queued =
            pd_metrics_gauge(metrics, "presenced_webhook_queue_events",
                             "Webhook events waiting or being delivered, all URLs", NULL, NULL);
    if (!w->g_queued)
        w->g_queued = &w->dummy_gauge;
    *w->g_queued = 0;

    uv_timer_init(loop, &w->curl_timer);
    w->curl_timer.data = w;
    uv_timer_init(loop, &w->drain_timer);
    w->drain_timer.data = w;
    for (uint32_t i = 0; i < w->ntargets; i++) {
        uv_timer_init(loop, &w->targets[i].timer);
        w->targets[i].timer.data = &w->targets[i];
    }
    events_subscribe(hub, &w->sub, on_event, w);
    for (uint32_t i = 0; i < w->ntargets; i++)
        PD_INFO(log, WH_MODULE, "webhook events go to %s", w->targets[i].label);
    return w;

err_free:
    release_transfers(w);
    free(w);
    return NULL;
}

static void on_drain_timer(uv_timer_t *h) {
    webhooks_t *w = h->data;
    void (*done)(void *) = w->drain_done;
    w->drain_done = NULL;
    if (!done)
        return;
    if (*w->g_queued > 0)
        PD_WARN(w->log, WH_MODULE, "shutting down with %lld webhook events not delivered",
                (long long)*w->g_queued);
    done(w->drain_arg);
}

void webhooks_drain(webhooks_t *w, void (*done)(void *arg), void *arg) {
    events_unsubscribe(w->hub, &w->sub);
    w->draining = true;
    w->drain_done = done;
    w->drain_arg = arg;
    /* The deadline first: drain_check below may bring it forward to the next iteration. */
    timer_arm(&w->drain_timer, on_drain_timer, w->cfg.timeout_ms);
    for (uint32_t i = 0; i < w->ntargets; i++) {
        struct wh_target *t = &w->targets[i];
        if (t->state == WH_BACKOFF || (t->state == WH_IDLE && t->len))
            timer_arm(&t->timer, on_target_timer, 0);
    }
    drain_check(w);
}

static void on_handle_closed(uv_handle_t *h) {
    webhooks_t *w = h->data;
    if (--w->open_handles == 0)
        free(w);
}

static void close_handle(webhooks_t *w, uv_handle_t *h) {
    if (uv_is_closing(h))
        return;
    h->data = w;
    w->open_handles++;
    uv_close(h, on_handle_closed);
}

void webhooks_free(webhooks_t *w) {
    if (!w)
        return;
    events_unsubscribe(w->hub, &w->sub);
    w->freeing = true;
    release_transfers(w);
    close_handle(w, (uv_handle_t *)&w->curl_timer);
    close_handle(w, (uv_handle_t *)&w->drain_timer);
    for (uint32_t i = 0; i < w->ntargets; i++)
        close_handle(w, (uv_handle_t *)&w->targets[i].timer);
    /* Handles already closed by the owner's walk are done: free now unless some close here. */
    if (w->open_handles == 0)
        free(w);
}
