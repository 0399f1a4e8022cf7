/* presenced: flags, wiring and the loop. The only place with process-wide state. */
#include <http_parser.h>
#include <errno.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "auth/token.h"
#include "config.h"
#include "dispatch/dispatch.h"
#include "engine/engine.h"
#include "rooms/rooms.h"
#include "events/events.h"
#include "http/api.h"
#include "http/exchange.h"
#include "http/static.h"
#include "log.h"
#include "metrics.h"
#include "server/server.h"
#include "store/persist.h"
#include "store/store_redis.h"
#include "store/store_local.h"
#include "util/clock.h"
#include "util/hashmap.h"
#include "util/wheel.h"
#include "webhooks/webhooks.h"
#include "ws/frame.h"

#ifndef PD_VERSION
#define PD_VERSION "0.0.0"
#endif

#define WHEEL_SLOTS   4096 /* x 10 ms: a 41 s revolution covers the default heartbeat TTL */
#define WHEEL_TICK_MS 10

struct app {
    uv_loop_t *loop;
    pd_config_t cfg;
    pd_log_t log;
    pd_metrics_t *metrics;
    wheel_t wheel;
    uv_timer_t wheel_timer;
    uv_signal_t sigint, sigterm;
    http_router_t router;
    static_files_t statics;
    pd_hashkey_t hashkey;
    pd_clock_t clock;
    auth_config_t auth;
    persist_t *persist;
    store_t *store;
    engine_t *engine;
    rooms_t *rooms;
    events_t events;
    api_t *api;
    webhooks_t *webhooks;
    uv_timer_t drain_timer;
    bool draining;       /* SIGTERM: connections closed with 1012, waiting out the grace window */
    bool stopping;       /* any shutdown begun: /readyz says 503 */
    bool signals_forced; /* a second signal: nothing more is waited for */
    uint64_t last_tick, lag_window_start; /* ms, for the loop-lag gauge */
    int64_t lag_cur, lag_prev;            /* ms: worst lag of this and the last window */
    dispatch_t *dispatch;
    server_t *server;
    const char *origins[PD_CONFIG_LIST_MAX];
    int signals;
};

static int build_server_config(struct app *a, server_config_t *sc);
static int setup_auth(struct app *a);
static int setup_redis(struct app *a);
static int setup_static(struct app *a);

static uint64_t clock_mono(void *ctx) {
    return uv_now(ctx);
}

static double clock_wall(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The wheel's tick doubles as the loop-lag probe: how much later than 10 ms after the
 * previous one it runs is how long the loop was busy. Reported as the worst lag of the
 * last 10 s window (the previous window's until the current one exceeds it). */
#define LAG_WINDOW_MS 10000

static void on_wheel_tick(uv_timer_t *t) {
    struct app *a = t->data;
    uint64_t now = uv_hrtime() / 1000000;
    if (a->last_tick) {
        int64_t lag = (int64_t)(now - a->last_tick) - WHEEL_TICK_MS;
        if (lag > a->lag_cur)
            a->lag_cur = lag;
    }
    a->last_tick = now;
    if (now - a->lag_window_start >= LAG_WINDOW_MS) {
        a->lag_prev = a->lag_cur;
        a->lag_cur = 0;
        a->lag_window_start = now;
    }
    wheel_advance(&a->wheel, uv_now(a->loop));
}

static double gauge_loop_lag(void *ctx) {
    struct app *a = ctx;
    int64_t worst = a->lag_cur > a->lag_prev ? a->lag_cur : a->lag_prev;
    return (double)worst / 1000.0;
}

static void handle_healthz(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    (void)ctx;
    (void)req;
    http_exchange_respond(ex, 200, "text/plain; charset=utf-8", "Cache-Control: no-store\r\n",
                          "ok\n", 3);
}

static void handle_metrics(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    struct app *a = ctx;
    (void)req;
    pd_obuf_t *b = pd_metrics_render(a->metrics);
    if (!b) {
        http_exchange_respond(ex, 503, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    http_exchange_respond(ex, 200, "text/plain; version=0.0.4; charset=utf-8",
                          "Cache-Control: no-store\r\n", pd_obuf_payload(b),
                          pd_obuf_payload_len(b));
    pd_obuf_release(b);
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void exit_now(struct app *a);

static void on_webhooks_drained(void *arg) {
    struct app *a = arg;
    uv_timer_stop(&a->wheel_timer);
    uv_timer_stop(&a->drain_timer);
    server_close(a->server);
    uv_walk(a->loop, close_walk, NULL);
}

static void exit_now(struct app *a) {
    /* Grace windows still open end now: the users they keep go offline (and last_seen is
     * written) before the process goes. */
    rooms_flush_lingering(a->rooms);
    engine_flush_lingering(a->engine);
    if (a->webhooks && !a->signals_forced) {
        /* The offlines just published still go out, within the webhook timeout. */
        webhooks_drain(a->webhooks, on_webhooks_drained, a);
        return;
    }
    on_webhooks_drained(a);
}

static void on_drained(uv_timer_t *t) {
    struct app *a = t->data;
    PD_INFO(&a->log, "main", "grace window over; exiting");
    exit_now(a);
}

static void on_shutdown_done(void *arg) {
    struct app *a = arg;
    /* Nothing in a grace window (no session, no room link left): no reason to wait. */
    bool lingering = (a->engine && engine_session_count(a->engine) > 0) ||
                     (a->rooms && rooms_local_count(a->rooms) > 0);
    if (a->draining && a->cfg.offline_grace > 0 && lingering) {
        /* Clients were told to reconnect (1012), maybe to another node: their presence is
         * kept through the grace window, as for any disconnect, and only then ends. */
        PD_INFO(&a->log, "main",
                "all connections closed; keeping presence for the %.1f s grace "
                "window",
                a->cfg.offline_grace / 1000.0);
        uv_timer_start(&a->drain_timer, on_drained, a->cfg.offline_grace + WHEEL_TICK_MS * 3, 0);
        return;
    }
    PD_INFO(&a->log, "main", "all connections closed; exiting");
    exit_now(a);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct app *a = h->data;
    if (++a->signals > 1) {
        PD_WARN(&a->log, "main", "second signal: closing everything now");
        a->signals_forced = true;
        exit_now(a);
        return;
    }
    a->stopping = true;
    if (a->api)
        api_close_streams(a->api);
    if (signum == SIGTERM) {
        /* A drain (deploys, restarts): clients reconnect elsewhere without a flap. */
        a->draining = true;
        PD_INFO(&a->log, "main", "SIGTERM received: draining (clients asked to reconnect, 1012)");
        server_shutdown(a->server, WS_CLOSE_RESTART, "server restarting: reconnect",
                        on_shutdown_done, a);
        return;
    }
    PD_INFO(&a->log, "main", "SIGINT received: shutting down");
    server_shutdown(a->server, WS_CLOSE_GOING_AWAY, "server shutting down", on_shutdown_done, a);
}

static void handle_readyz(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    struct app *a = ctx;
    (void)req;
    if (a->store && a->store->ops->ready && !a->store->ops->ready(a->store))
        http_exchange_respond(ex, 503, "text/plain; charset=utf-8", "Cache-Control: no-store\r\n",
                              "store unavailable\n", 18);
    else if (a->stopping)
        http_exchange_respond(ex, 503, "text/plain; charset=utf-8", "Cache-Control: no-store\r\n",
                              "draining\n", 9);
    else
        http_exchange_respond(ex, 200, "text/plain; charset=utf-8", "Cache-Control: no-store\r\n",
                              "ready\n", 6);
}

/* The modules that load what a setting names (a key file, a URL) say what is wrong with it
 * but not which setting named it. Their messages are caught here and printed with the key in
 * front, like every other bad value: "presenced: invalid value for '--KEY': ...". */
struct keyed_err {
    FILE *f;
    char *text;
    size_t len;
};

static FILE *keyed_open(struct keyed_err *k) {
    k->text = NULL;
    k->len = 0;
    k->f = open_memstream(&k->text, &k->len);
    return k->f ? k->f : stderr;
}

/* Stops catching; returns what was written ("" when nothing or it could not be caught). */
static const char *keyed_text(struct keyed_err *k) {
    if (k->f) {
        fclose(k->f);
        k->f = NULL;
    }
    return k->text ? k->text : "";
}

/* Prints what was caught, each line naming key (NULL: as written), and frees it. */
static void keyed_print(struct keyed_err *k, const char *key) {
    char *text = (char *)keyed_text(k);
    for (char *line = text, *next; *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        else
            next = line + strlen(line);
        const char *m = strncmp(line, "presenced: ", 11) == 0 ? line + 11 : line;
        if (key)
            fprintf(stderr, "presenced: invalid value for '--%s': %s\n", key, m);
        else
            fprintf(stderr, "%s\n", line);
    }
    free(k->text);
    k->text = NULL;
}

/* Mounts the demo page at / and the JavaScript client at /client/. A directory given by flag
 * must exist; the source-tree defaults are used only when they do. */
static int mount_one(struct app *a, const char *prefix, const char *key, const char *flag_dir,
                     const char *default_dir) {
    const char *dir = flag_dir[0] ? flag_dir : default_dir;
    if (!dir || !dir[0])
        return 0;
    if (static_mount(&a->statics, prefix, dir) != 0) {
        if (!flag_dir[0])
            return 0; /* not run from the source tree: nothing to serve there */
        fprintf(stderr, "presenced: invalid value for '--%s': '%s' is not a readable directory\n",
                key, dir);
        return -1;
    }
    PD_INFO(&a->log, "main", "serving %s at %s", a->statics.mounts[a->statics.count - 1].root,
            prefix);
    return 0;
}

static int setup_static(struct app *a) {
#ifdef PD_SOURCE_DIR
    const char *web = PD_SOURCE_DIR "/web", *client = PD_SOURCE_DIR "/clients/js/src";
#else
    const char *web = NULL, *client = NULL;
#endif
    a->statics.allow_dotfiles = a->cfg.static_dotfiles;
    if (mount_one(a, "/client/", "client-dir", a->cfg.client_dir, client) ||
        mount_one(a, "/", "static-dir", a->cfg.static_dir, web))
        return -1;
    return static_register(&a->statics, &a->router);
}

/* HOST:PORT as the Redis client takes it (the host non-empty, the port 1..65535). The store
 * checks it only when it starts connecting; checked here so --check-config refuses what the
 * start would ("--redis http://h:6379" passed the URL parser as the address "http:"). */
static bool redis_seed_valid(const char *s) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return false;
    size_t nd = strspn(colon + 1, "0123456789");
    if (nd == 0 || nd > 5 || colon[1 + nd] != '\0')
        return false;
    long port = strtol(colon + 1, NULL, 10);
    return port >= 1 && port <= 65535;
}

/* The Redis settings, checked, and the seeds parsed into seeds (static storage): 0, or -1
 * after printing why. Shared by --check-config and the start, which used to be the only one
 * to look at them (--check-config passed "--redis http://x"). */
static int redis_settings(const pd_config_t *c, const char ***seeds_out, size_t *nseeds) {
    if (c->redis[0] && c->redis_cluster[0]) {
        fprintf(stderr, "presenced: give --redis or --redis-cluster, not both\n");
        return -1;
    }
    static char seeds_buf[PD_CONFIG_LIST_MAX][256];
    static const char *seeds[PD_CONFIG_LIST_MAX];
    size_t n = 0;
    if (c->redis[0]) {
        if (store_redis_parse_url(c->redis, seeds_buf[0], sizeof(seeds_buf[0])) ||
            !redis_seed_valid(seeds_buf[0])) {
            fprintf(stderr,
                    "presenced: invalid value for '--redis': '%s' is not "
                    "redis://HOST:PORT\n",
                    c->redis);
            return -1;
        }
        seeds[n] = seeds_buf[n];
        n++;
    } else {
        char list[1024];
        snprintf(list, sizeof(list), "%s", c->redis_cluster);
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n < PD_CONFIG_LIST_MAX;
             t = strtok_r(NULL, ",", &save)) {
            if (store_redis_parse_url(t, seeds_buf[n], sizeof(seeds_buf[n])) ||
                !redis_seed_valid(seeds_buf[n])) {
                fprintf(stderr,
                        "presenced: invalid value for '--redis-cluster': '%s' is not "
                        "HOST:PORT\n",
                        t);
                return -1;
            }
            seeds[n] = seeds_buf[n];
            n++;
        }
    }
    for (const char *p = c->node_id; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_')) {
            fprintf(stderr, "presenced: invalid value for '--node-id': letters, digits, - and _ "
                            "only\n");
            return -1;
        }
    }
    *seeds_out = seeds;
    *nseeds = n;
    return 0;
}

/* The Redis store: one server (--redis) or a cluster (--redis-cluster). 0 or -1 (printed). */
static int setup_redis(struct app *a) {
    pd_config_t *c = &a->cfg;
    const char **seeds;
    size_t n;
    if (redis_settings(c, &seeds, &n))
        return -1;
    if (!c->node_id[0]) {
        unsigned char rnd[8];
        randombytes_buf(rnd, sizeof(rnd));
        for (int i = 0; i < 8; i++)
            snprintf(c->node_id + 2 * i, 3, "%02x", rnd[i]);
    }
    store_redis_config_t rc = {.cluster = c->redis_cluster[0] != 0,
                               .seeds = seeds,
                               .nseeds = n,
                               .node_id = c->node_id,
                               .lease_ttl_ms = c->node_lease_ttl,
                               .timeout_ms = c->redis_timeout,
                               .seed_compat = c->redis_seed_compat,
                               .heartbeat_ttl_ms = c->heartbeat_ttl};
    a->store = store_redis_new(a->loop, &a->wheel, &a->clock, &rc, &a->log, a->metrics, stderr);
    return a->store ? 0 : -1;
}

/* Webhooks on loop, fed by events: NULL after printing why, naming the key. */
static webhooks_t *make_webhooks(struct app *a, uv_loop_t *loop, events_t *events,
                                 pd_metrics_t *metrics) {
    if (!a->cfg.webhook_secret_file[0]) {
        fprintf(stderr, "presenced: --webhook-url needs --webhook-secret-file (the key that "
                        "signs webhook bodies)\n");
        return NULL;
    }
    webhooks_config_t wc;
    webhooks_config_default(&wc);
    wc.urls = (const char *const *)a->cfg.webhook_url;
    wc.nurls = a->cfg.webhook_url_count;
    wc.secret_file = a->cfg.webhook_secret_file;
    struct keyed_err k;
    webhooks_t *w = webhooks_new(loop, &wc, events, &a->clock, &a->log, metrics, keyed_open(&k));
    /* Its messages speak of "the webhook secret" or of a "webhook URL". */
    const char *text = keyed_text(&k);
    keyed_print(&k, !w ? (strstr(text, "secret") ? "webhook-secret-file" : "webhook-url") : NULL);
    return w;
}

/* Loads the token key named by the flags. 0, or -1 after printing why. */
static int setup_auth(struct app *a) {
    const pd_config_t *c = &a->cfg;
    if (c->token_secret_file[0] && c->token_public_key[0]) {
        fprintf(stderr, "presenced: give --token-secret-file or --token-public-key, not both\n");
        return -1;
    }
    if (c->token_secret_file[0]) {
        struct keyed_err k;
        int rc = auth_load_secret(&a->auth, c->token_secret_file, keyed_open(&k));
        keyed_print(&k, rc ? "token-secret-file" : NULL);
        if (rc)
            return -1;
    }
    if (c->token_public_key[0]) {
        struct keyed_err k;
        int rc = auth_load_public_key(&a->auth, c->token_public_key, keyed_open(&k));
        keyed_print(&k, rc ? "token-public-key" : NULL);
        if (rc)
            return -1;
    }
    if ((c->token_issuer[0] || c->token_audience[0]) && a->auth.alg == AUTH_ALG_NONE) {
        fprintf(stderr, "presenced: --token-issuer and --token-audience need a token key\n");
        return -1;
    }
    snprintf(a->auth.issuer, sizeof(a->auth.issuer), "%s", c->token_issuer);
    snprintf(a->auth.audience, sizeof(a->auth.audience), "%s", c->token_audience);
    if (a->auth.alg != AUTH_ALG_NONE)
        PD_INFO(&a->log, "main", "tokens: %s%s%s%s%s",
                a->auth.alg == AUTH_ALG_HS256   ? "HS256"
                : a->auth.alg == AUTH_ALG_RS256 ? "RS256"
                                                : "ES256",
                a->auth.issuer[0] ? ", issuer " : "", a->auth.issuer,
                a->auth.audience[0] ? ", audience " : "", a->auth.audience);
    return 0;
}

/* For --check-config: whether the data directory can be used (it, or the directory it would
 * be created in, must be writable); prints why not. At start the database says so itself when
 * it cannot be opened (exit 1, "refusing to start"). */
static bool data_dir_usable(struct app *a) {
    char parent[1024];
    snprintf(parent, sizeof(parent), "%s", a->cfg.data_dir);
    char *slash = strrchr(parent, '/');
    const char *probe = access(a->cfg.data_dir, F_OK) == 0 ? a->cfg.data_dir
                        : slash && slash != parent         ? (*slash = '\0', parent)
                        : slash                            ? "/"
                                                           : ".";
    if (access(probe, W_OK | X_OK) != 0) {
        fprintf(stderr,
                "presenced: invalid value for '--data-dir': the data directory '%s' is not "
                "writable (%s: %s)\n",
                a->cfg.data_dir, probe, strerror(errno));
        return false;
    }
    return true;
}

/* --check-config: everything start-up would check, short of listening, connecting to Redis
 * and opening the database: values (already parsed), the token key, the API keys file, the
 * webhook URLs and secret, the Redis addresses and node id, static directories, the data
 * directory's access. A configuration it passes must not be refused at start. */
static int check_config(struct app *a) {
    a->log.level = PD_LOG_WARN;
    server_config_t sc;
    const char **seeds;
    size_t nseeds;
    if (build_server_config(a, &sc) || setup_auth(a) != 0 || setup_static(a) != 0 ||
        ((a->cfg.redis[0] || a->cfg.redis_cluster[0]) &&
         redis_settings(&a->cfg, &seeds, &nseeds))) {
        auth_config_free(&a->auth);
        return 2;
    }
    auth_config_free(&a->auth);
    if (a->cfg.api_keys_file[0]) {
        struct keyed_err k;
        int rc = api_check_keys_file(a->cfg.api_keys_file, keyed_open(&k));
        keyed_print(&k, rc ? "api-keys-file" : NULL);
        if (rc)
            return 2;
    }
    if (a->cfg.webhook_url_count) {
        /* Built for real on a loop of its own, so every check start-up makes is made. */
        uv_loop_t loop;
        events_t events;
        events_init(&events);
        if (uv_loop_init(&loop) != 0)
            return 2;
        webhooks_t *w = make_webhooks(a, &loop, &events, NULL);
        webhooks_free(w);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        if (!w)
            return 2;
    }
    if (!a->cfg.ephemeral && !data_dir_usable(a))
        return 2;
    if (a->cfg.config[0])
        printf("presenced: configuration OK (%s)\n", a->cfg.config);
    else
        printf("presenced: configuration OK\n");
    return 0;
}

/* Files the process needs besides client sockets: listener, database, Redis, webhooks, logs. */
#define FD_RESERVE 64

/* Connections past the open-file limit would fail in accept() (and libuv would drop them at
 * random); so the soft limit is raised to the hard one, and max-connections capped below it. */
static uint32_t connections_allowed(struct app *a, uint32_t wanted) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return wanted;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit raised = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
            rl = raised;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= (rlim_t)wanted + FD_RESERVE)
        return wanted;
    uint32_t cap = rl.rlim_cur > FD_RESERVE * 2 ? (uint32_t)(rl.rlim_cur - FD_RESERVE) : FD_RESERVE;
    PD_INFO(&a->log, "main",
            "max-connections %u capped at %u by the open-file limit (%llu); raise it (ulimit -n, "
            "LimitNOFILE=) for more",
            wanted, cap, (unsigned long long)rl.rlim_cur);
    return cap;
}

static int build_server_config(struct app *a, server_config_t *sc) {
    server_config_default(sc);
    if (pd_config_parse_addr(a->cfg.listen, &sc->listen_addr))
        return -1;
    sc->ws_path = a->cfg.ws_path;
    for (uint32_t i = 0; i < a->cfg.allow_origin_count; i++)
        a->origins[i] = a->cfg.allow_origin[i];
    sc->origins.origins = a->origins;
    sc->origins.count = a->cfg.allow_origin_count;
    sc->max_message = a->cfg.max_message;
    sc->out_max = a->cfg.out_max;
    sc->max_connections = connections_allowed(a, a->cfg.max_connections);
    sc->max_per_ip = a->cfg.max_connections_per_ip;
    sc->request_timeout_ms = a->cfg.request_timeout;
    sc->keepalive_timeout_ms = a->cfg.keepalive_timeout;
    sc->close_timeout_ms = a->cfg.close_timeout;
    sc->ws_idle_timeout_ms = a->cfg.heartbeat_ttl;
    return 0;
}

int main(int argc, char **argv) {
    static struct app app;
    struct app *a = &app;
    int exit_code = 1;

    if (pd_config_load(&a->cfg, argc, argv, environ, stderr))
        return 2;
    if (a->cfg.help) {
        pd_config_usage(stdout, "presenced");
        return 0;
    }
    if (a->cfg.version) {
        printf("presenced %s\n", PD_VERSION);
        return 0;
    }
    pd_log_init(&a->log);
    a->log.level = pd_log_level_parse(a->cfg.log_level);
    a->log.format = pd_log_format_parse(a->cfg.log_format);
    if (a->cfg.check_config)
        return check_config(a);

    signal(SIGPIPE, SIG_IGN);
    a->loop = uv_default_loop();
    a->metrics = pd_metrics_new();
    if (!a->metrics || wheel_init(&a->wheel, WHEEL_SLOTS, WHEEL_TICK_MS, uv_now(a->loop))) {
        PD_ERROR(&a->log, "main", "out of memory");
        return 1;
    }
    uv_timer_init(a->loop, &a->wheel_timer);
    a->wheel_timer.data = a;
    pd_metrics_gauge_fn(a->metrics, "presenced_loop_lag_seconds",
                        "Worst lateness of the event loop's 10 ms tick over the last 10 s", NULL,
                        NULL, gauge_loop_lag, a);
    uv_timer_init(a->loop, &a->drain_timer);
    a->drain_timer.data = a;
    uv_timer_start(&a->wheel_timer, on_wheel_tick, WHEEL_TICK_MS, WHEEL_TICK_MS);

    http_router_init(&a->router);
    http_router_add(&a->router, HTTP_M(HTTP_GET), "/healthz", false, handle_healthz, a);
    http_router_add(&a->router, HTTP_M(HTTP_GET), "/metrics", false, handle_metrics, a);
    http_router_add(&a->router, HTTP_M(HTTP_GET), "/readyz", false, handle_readyz, a);

    if (sodium_init() < 0) {
        PD_ERROR(&a->log, "main", "libsodium failed to initialise");
        goto out;
    }
    pd_hashkey_generate(&a->hashkey);
    a->clock = (pd_clock_t){.mono_ms = clock_mono, .wall = clock_wall, .ctx = a->loop};
    if (setup_auth(a) != 0) {
        exit_code = 2;
        goto out;
    }
    if (a->cfg.redis[0] || a->cfg.redis_cluster[0]) {
        if (setup_redis(a) != 0) {
            exit_code = 2;
            goto out;
        }
    } else {
        a->store = store_local_new(&a->hashkey, &a->wheel, &a->clock);
    }
    if (a->store && !a->cfg.ephemeral && a->store->ops != NULL &&
        strcmp(a->store->ops->name, "local") == 0) {
        char err[512];
        if (persist_open(a->cfg.data_dir, &a->log, &a->persist, err, sizeof(err)) != 0) {
            PD_ERROR(&a->log, "main", "refusing to start: %s", err);
            goto out;
        }
        if (store_local_load(a->store, a->persist, &a->log, a->loop) != 0) {
            PD_ERROR(&a->log, "main",
                     "refusing to start: the database in '%s' could not be "
                     "loaded (see above)",
                     a->cfg.data_dir);
            goto out;
        }
        PD_INFO(&a->log, "main", "settings are kept in %s/presenced.db", a->cfg.data_dir);
    } else if (a->store && strcmp(a->store->ops->name, "local") == 0) {
        PD_WARN(&a->log, "main",
                "--ephemeral: settings, contacts and last_seen are kept in "
                "memory only and lost at exit");
    }
    engine_config_t ec;
    engine_config_default(&ec);
    ec.heartbeat_ttl_ms = a->cfg.heartbeat_ttl;
    ec.offline_grace_ms = a->cfg.offline_grace;
    ec.checkpoint_ms = a->cfg.last_seen_checkpoint;
    ec.away_after_ms = a->cfg.away_after;
    ec.max_subscriptions = a->cfg.max_subscriptions;
    ec.max_contacts = a->cfg.max_contacts;
    if (a->store)
        a->engine = engine_new(&ec, a->store, &a->wheel, &a->clock, &a->hashkey,
                               &dispatch_client_ops, &dispatch_codec, &a->log, a->metrics);
    dispatch_config_t dc = {.dev_auth = a->cfg.dev_auth,
                            .auth = &a->auth,
                            .wheel = &a->wheel,
                            .heartbeat_ttl_ms = a->cfg.heartbeat_ttl,
                            .max_ids = a->cfg.max_ids,
                            .max_conns_per_user = a->cfg.max_connections_per_user,
                            .rate_per_sec = a->cfg.rate_limit,
                            .rate_burst = a->cfg.rate_limit_burst,
                            .rate_change_cost = a->cfg.rate_limit_change_cost};
    rooms_config_t rc;
    rooms_config_default(&rc);
    rc.announce_max = a->cfg.room_announce_max;
    rc.interval_ms = a->cfg.room_interval;
    rc.cursor_hz = a->cfg.cursor_hz;
    rc.max_per_conn = a->cfg.max_rooms_per_connection;
    rc.max_members = a->cfg.max_room_members;
    rc.offline_grace_ms = a->cfg.offline_grace;
    if (a->engine)
        a->rooms = rooms_new(&rc, a->engine, a->store, &a->wheel, &a->clock, &a->hashkey,
                             &dispatch_rooms_codec, &a->log, a->metrics);
    if (a->rooms)
        a->dispatch = dispatch_new(&dc, a->engine, a->rooms, &a->clock, &a->log, a->metrics);
    if (!a->dispatch) {
        PD_ERROR(&a->log, "main", "out of memory");
        goto out;
    }
    events_init(&a->events);
    engine_set_events(a->engine, &a->events);
    rooms_set_events(a->rooms, &a->events);
    if (a->cfg.api_keys_file[0]) {
        api_config_t ac = {.keys_file = a->cfg.api_keys_file,
                           .max_ids = a->cfg.max_ids,
                           .max_contacts = a->cfg.max_contacts,
                           .sse_keepalive_ms = a->cfg.sse_keepalive,
                           .kick_code = 4002};
        struct keyed_err k;
        a->api = api_new(&ac, a->engine, a->rooms, &a->events, &a->wheel, &a->clock, &a->log,
                         a->metrics, keyed_open(&k));
        keyed_print(&k, a->api ? NULL : "api-keys-file");
        if (!a->api) {
            exit_code = 2;
            goto out;
        }
        api_register(a->api, &a->router);
        PD_INFO(&a->log, "main", "HTTP API at /v1/ (keys from %s)", a->cfg.api_keys_file);
    }
    if (a->cfg.webhook_url_count) {
        a->webhooks = make_webhooks(a, a->loop, &a->events, a->metrics);
        if (!a->webhooks) {
            exit_code = 2;
            goto out;
        }
    }
    /* Last: the demo page's mount at / takes whatever the routes above do not. A directory
     * that cannot be served is a bad value, refused with 2 like the others (it was 1). */
    if (setup_static(a) != 0) {
        exit_code = 2;
        goto out;
    }
    if (a->cfg.dev_auth)
        PD_WARN(&a->log, "main",
                "DEVELOPMENT AUTH IS ON: anyone can connect as any user with ?user=ID. "
                "Never use --dev-auth in production.");
    else if (a->auth.alg == AUTH_ALG_NONE)
        PD_WARN(&a->log, "main",
                "no authentication is configured: every WebSocket upgrade will be refused "
                "(401); use --token-secret-file or --token-public-key (or --dev-auth to try it)");
    server_ws_handlers_t wsh;
    dispatch_ws_handlers(a->dispatch, &wsh);

    server_config_t sc;
    if (build_server_config(a, &sc)) {
        PD_ERROR(&a->log, "main", "bad listen address '%s'", a->cfg.listen);
        goto out;
    }
    a->server = server_new(a->loop, &sc, &a->log, a->metrics, &a->wheel, &a->router, &wsh);
    if (!a->server)
        goto out;
    PD_INFO(&a->log, "main", "presenced %s starting", PD_VERSION);
    if (server_listen(a->server))
        goto out_close;

    uv_signal_init(a->loop, &a->sigint);
    uv_signal_init(a->loop, &a->sigterm);
    a->sigint.data = a->sigterm.data = a;
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);

    uv_run(a->loop, UV_RUN_DEFAULT);
    exit_code = 0;
    goto out_free;

out_close:
    server_close(a->server);
    uv_walk(a->loop, close_walk, NULL);
out_free:
    uv_run(a->loop, UV_RUN_DEFAULT); /* let every close callback finish */
    server_free(a->server);
out:
    if (exit_code != 0) {
        uv_walk(a->loop, close_walk, NULL);
        uv_run(a->loop, UV_RUN_DEFAULT);
    }
    /* Store calls still in flight (Redis) complete now, while the API, engine and rooms that
     * wait for them exist; then those are freed. */
    store_shutdown(a->store);
    webhooks_free(a->webhooks);
    api_free(a->api);
    dispatch_free(a->dispatch);
    rooms_free(a->rooms);
    engine_free(a->engine);
    store_destroy(a->store);
    persist_close(a->persist);
    auth_config_free(&a->auth);
    wheel_destroy(&a->wheel);
    pd_metrics_free(a->metrics);
    uv_loop_close(a->loop);
    pd_config_free(&a->cfg);
    return exit_code;
}
