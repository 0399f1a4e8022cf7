#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "util/error.h"

enum opt_type {
    OPT_STRING,  /* char[] field */
    OPT_ADDR,    /* char[] field, validated as HOST:PORT */
    OPT_PATH,    /* char[] field, must start with '/' */
    OPT_LIST,    /* repeatable: char *[] field + count */
    OPT_UINT,    /* uint32_t */
    OPT_BYTES,   /* uint32_t, K/M/G suffixes */
    OPT_SECONDS, /* uint32_t milliseconds, given in (fractional) seconds */
    OPT_BOOL,    /* flag without value */
    OPT_LEVEL,   /* log level name */
    OPT_FORMAT   /* log format name */
};

struct opt {
    const char *name;
    int type;
    size_t off;
    size_t size;      /* of a char[] field */
    size_t count_off; /* OPT_LIST: offset of the count */
    const char *def;
    double min, max; /* numeric range (seconds for OPT_SECONDS) */
    const char *help;
};

#define F(field) offsetof(pd_config_t, field), sizeof(((pd_config_t *)0)->field)

static const struct opt opts[] = {
    {"listen", OPT_ADDR, F(listen), 0, "127.0.0.1:7070", 0, 0,
     "address and port to listen on; port 0 picks a free port (logged)"},
    {"ws-path", OPT_PATH, F(ws_path), 0, "/presence", 0, 0, "path of the WebSocket endpoint"},
    {"allow-origin", OPT_LIST, F(allow_origin), offsetof(pd_config_t, allow_origin_count), NULL, 0,
     0, "browser Origin allowed to connect (repeatable); none given: any origin"},
    {"max-message", OPT_BYTES, F(max_message), 0, "64K", 128, 16 * 1024 * 1024,
     "largest WebSocket message accepted; larger ones close with 1009"},
    {"out-max", OPT_BYTES, F(out_max), 0, "1M", 4096, 1024.0 * 1024 * 1024,
     "queued output past which a slow client is closed with 1008"},
    {"max-connections", OPT_UINT, F(max_connections), 0, "1000000", 1, 100000000,
     "open connections past which new ones are refused"},
    {"request-timeout", OPT_SECONDS, F(request_timeout), 0, "10", 0.05, 3600,
     "seconds a client has to send a whole HTTP request (then 408)"},
    {"keepalive-timeout", OPT_SECONDS, F(keepalive_timeout), 0, "60", 0.05, 86400,
     "seconds an idle HTTP keep-alive connection is kept"},
    {"close-timeout", OPT_SECONDS, F(close_timeout), 0, "5", 0.05, 600,
     "seconds to wait for a peer's close frame, and for connections at shutdown"},
    {"heartbeat-ttl", OPT_SECONDS, F(heartbeat_ttl), 0, "30", 0.1, 86400,
     "seconds without any inbound frame after which a connection is closed (4000)"},
    {"offline-grace", OPT_SECONDS, F(offline_grace), 0, "5", 0, 3600,
     "seconds a user's last disconnect waits before offline (a reconnect inside is silent)"},
    {"last-seen-checkpoint", OPT_SECONDS, F(last_seen_checkpoint), 0, "15", 0, 86400,
     "seconds between writes of live users' last_seen to the store, bounding what a crash "
     "loses (0: only on changes)"},
    {"away-after", OPT_SECONDS, F(away_after), 0, "300", 1, 86400,
     "seconds without user activity before a session that opted in (auto_away) turns away"},
    {"max-subscriptions", OPT_UINT, F(max_subscriptions), 0, "10000", 1, 10000000,
     "users one connection may watch"},
    {"max-ids-per-request", OPT_UINT, F(max_ids), 0, "1000", 1, 100000,
     "user ids in one subscribe, unsubscribe or get_presence"},
    {"room-announce-max", OPT_UINT, F(room_announce_max), 0, "100", 1, 10000000,
     "members above which a room sends one channel_delta per interval instead of each event"},
    {"room-interval", OPT_SECONDS, F(room_interval), 0, "2", 0.05, 3600,
     "seconds between channel_delta batches of a large room"},
    {"cursor-hz", OPT_UINT, F(cursor_hz), 0, "30", 1, 1000,
     "cursor and typing signals relayed per second per connection and room (latest wins)"},
    {"max-rooms-per-connection", OPT_UINT, F(max_rooms_per_connection), 0, "100", 1, 100000,
     "rooms one connection may be in"},
    {"max-room-members", OPT_UINT, F(max_room_members), 0, "100000", 1, 100000000,
     "members one room may have"},
    {"max-contacts", OPT_UINT, F(max_contacts), 0, "5000", 1, 1000000,
     "contacts, and blocked users, one user may have"},
    {"max-connections-per-user", OPT_UINT, F(max_connections_per_user), 0, "64", 0, 1000000,
     "open WebSocket connections one user may have on this node; more are refused 429 (0: no "
     "limit)"},
    {"max-connections-per-ip", OPT_UINT, F(max_connections_per_ip), 0, "0", 0, 100000000,
     "open connections from one client address (an IPv6 /64) past which new ones get 429 and "
     "are closed (0: no limit; behind a proxy every client has the proxy's address)"},
    {"rate-limit", OPT_UINT, F(rate_limit), 0, "1000", 0, 100000000,
     "messages per second one connection may send on average (0: no limit); past it error "
     "rate_limited, and 1008 for a client that goes on"},
    {"rate-limit-burst", OPT_UINT, F(rate_limit_burst), 0, "2000", 1, 65535,
     "messages one connection may send at once above the rate"},
    {"rate-limit-change-cost", OPT_UINT, F(rate_limit_change_cost), 0, "10", 1, 65535,
     "messages' worth of the rate that one message costing the store takes (status, privacy, "
     "rooms, subscribe; heartbeat, ping, activity, cursor, typing and unsubscribe take one)"},
    {"token-secret-file", OPT_STRING, F(token_secret_file), 0, NULL, 0, 0,
     "file holding the HS256 secret (at least 32 bytes) that signs connection tokens"},
    {"token-public-key", OPT_STRING, F(token_public_key), 0, NULL, 0, 0,
     "PEM public key (RSA: RS256, EC P-256: ES256) that verifies connection tokens"},
    {"token-issuer", OPT_STRING, F(token_issuer), 0, NULL, 0, 0,
     "required \"iss\" claim of tokens (not checked when unset)"},
    {"token-audience", OPT_STRING, F(token_audience), 0, NULL, 0, 0,
     "required \"aud\" claim of tokens (not checked when unset)"},
    {"data-dir", OPT_STRING, F(data_dir), 0, "./data", 0, 0,
     "directory of the embedded database (settings, contacts, blocks, last_seen)"},
    {"ephemeral", OPT_BOOL, F(ephemeral), 0, NULL, 0, 0,
     "keep everything in memory only: nothing survives a restart (tests, benchmarks)"},
    {"static-dir", OPT_STRING, F(static_dir), 0, NULL, 0, 0,
     "directory served at / (the demo page); default: the source tree's web/ when it exists"},
    {"static-dotfiles", OPT_BOOL, F(static_dotfiles), 0, NULL, 0, 0,
     "also serve hidden files and directories (a path segment starting with '.', such as "
     ".env or .git/) from static-dir and client-dir; without it they are 404"},
    {"client-dir", OPT_STRING, F(client_dir), 0, NULL, 0, 0,
     "directory served at /client/ (the JavaScript client); default: the source tree's "
     "clients/js/src/ when it exists"},
    {"api-keys-file", OPT_STRING, F(api_keys_file), 0, NULL, 0, 0,
     "file of HTTP API keys, one a line (at least 16 characters); the /v1/ API is off without"},
    {"sse-keepalive", OPT_SECONDS, F(sse_keepalive), 0, "15", 1, 3600,
     "seconds between keep-alive comments on /v1/events streams"},
    {"webhook-url", OPT_LIST, F(webhook_url), offsetof(pd_config_t, webhook_url_count), NULL, 0, 0,
     "URL to POST user online/offline and room occupied/vacated events to (repeatable)"},
    {"webhook-secret-file", OPT_STRING, F(webhook_secret_file), 0, NULL, 0, 0,
     "file holding the secret that signs webhook bodies (HMAC-SHA256; needed with webhook-url)"},
    {"redis", OPT_STRING, F(redis), 0, NULL, 0, 0,
     "redis://HOST:PORT of a standalone Redis 7 shared by several nodes (instead of the "
     "embedded store)"},
    {"redis-cluster", OPT_STRING, F(redis_cluster), 0, NULL, 0, 0,
     "HOST:PORT[,HOST:PORT...] of some Redis Cluster nodes (instead of the embedded store)"},
    {"node-id", OPT_STRING, F(node_id), 0, NULL, 0, 0,
     "this node's id among the nodes sharing Redis (letters, digits, - _); default random"},
    {"node-lease-ttl", OPT_SECONDS, F(node_lease_ttl), 0, "10", 1, 3600,
     "seconds after its last lease refresh that a silent node's sessions are swept"},
    {"redis-timeout", OPT_SECONDS, F(redis_timeout), 0, "2", 0.1, 60,
     "seconds to connect to Redis and for each of its replies"},
    {"redis-seed-compat", OPT_BOOL, F(redis_seed_compat), 0, NULL, 0, 0,
     "also keep the seed service's keys (presence:ID, presence:heartbeat:ID) and channel "
     "(presence:updates): costs a write per heartbeat"},
    {"log-level", OPT_LEVEL, F(log_level), 0, "info", 0, 0, "debug, info, warn or error"},
    {"log-format", OPT_FORMAT, F(log_format), 0, "text", 0, 0, "text or json (one object a line)"},
    {"dev-auth", OPT_BOOL, F(dev_auth), 0, NULL, 0, 0,
     "development only: trust ?user=ID in the WebSocket URL as the identity"},
    {"config", OPT_STRING, F(config), 0, NULL, 0, 0,
     "INI file of settings (key = value, keys as these flags without --)"},
    {"check-config", OPT_BOOL, F(check_config), 0, NULL, 0, 0,
     "check the configuration (values, key files, data directory) and exit"},
    {"help", OPT_BOOL, F(help), 0, NULL, 0, 0, "print this help and exit"},
    {"version", OPT_BOOL, F(version), 0, NULL, 0, 0, "print the version and exit"},
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static const struct opt *find_opt(const char *name, size_t len) {
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

int pd_config_parse_addr(const char *s, struct sockaddr_storage *addr) {
    char host[128];
    const char *colon;
    bool v6 = s[0] == '[';
    if (v6) {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
            return PD_EINVAL;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        colon = close + 1;
    } else {
        colon = strchr(s, ':');
        /* An IPv6 address needs brackets: "::1:80" is ambiguous, so it is refused. */
        if (!colon || strchr(colon + 1, ':') || (size_t)(colon - s) >= sizeof(host) || colon == s)
            return PD_EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    /* The port: 1 to 5 decimal digits, nothing else (no sign, no spaces). */
    const char *p = colon + 1;
    size_t nd = strspn(p, "0123456789");
    if (nd == 0 || nd > 5 || p[nd] != '\0')
        return PD_EINVAL;
    long port = strtol(p, NULL, 10);
    if (port > 65535)
        return PD_EINVAL;
    memset(addr, 0, sizeof(*addr));
    if (!v6 && uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr) == 0)
        return 0;
    if (v6 && uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)addr) == 0)
        return 0;
    return PD_EINVAL;
}

/* A plain decimal: digits, optionally a '.' and more digits (no sign, exponent, hex or
 * spaces, which strtod would take). Returns 0, the position of a suffix (> 0), or
 * PD_EINVAL. */
static int parse_double(const char *v, double *out) {
    size_t n = strspn(v, "0123456789");
    if (n == 0)
        return PD_EINVAL;
    if (v[n] == '.') {
        size_t f = strspn(v + n + 1, "0123456789");
        if (f == 0)
            return PD_EINVAL;
        n += 1 + f;
    }
    errno = 0;
    double d = strtod(v, NULL);
    if (errno || !isfinite(d))
        return PD_EINVAL;
    *out = d;
    return v[n] ? (int)n : 0;
}

/* Copies v for an error message with control characters shown as '?', so the message stays
 * one line whatever was given. */
static const char *printable(const char *v, char *buf, size_t size) {
    size_t i = 0;
    for (; v[i] && i + 1 < size; i++)
        buf[i] = (unsigned char)v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i];
    buf[i] = '\0';
    return buf;
}

/* Sets one key from its text form, given by source (enum pd_config_source); on error writes
 * why (without the key name) to msg. A repeatable key given by a source replaces the values
 * of lower-precedence sources. */
static int set_value_from(pd_config_t *cfg, const struct opt *o, const char *v, int source,
                          char *msg, size_t msg_size);

static int set_value(pd_config_t *cfg, const struct opt *o, const char *v, char *msg,
                     size_t msg_size) {
    return set_value_from(cfg, o, v, PD_CONFIG_FLAG, msg, msg_size);
}

/* The position of a repeatable key among the repeatable keys of the table. */
static size_t list_index(const struct opt *o) {
    size_t k = 0;
    for (const struct opt *p = opts; p < o; p++)
        k += p->type == OPT_LIST;
    return k < PD_CONFIG_LISTS ? k : PD_CONFIG_LISTS - 1;
}

static int set_value_from(pd_config_t *cfg, const struct opt *o, const char *v, int source,
                          char *msg, size_t msg_size) {
    char *base = (char *)cfg;
    char shown[160];
    const char *pv = printable(v, shown, sizeof(shown));
    for (const char *q = v; *q; q++) {
        if ((unsigned char)*q < 0x20 || *q == 0x7f) {
            snprintf(msg, msg_size, "'%s' contains control characters", pv);
            return PD_EINVAL;
        }
    }
    switch (o->type) {
    case OPT_STRING:
    case OPT_ADDR:
    case OPT_PATH:
    case OPT_LEVEL:
    case OPT_FORMAT: {
        if (strlen(v) >= o->size) {
            snprintf(msg, msg_size, "longer than %zu bytes", o->size - 1);
            return PD_EINVAL;
        }
        if (o->type == OPT_ADDR) {
            struct sockaddr_storage ss;
            if (pd_config_parse_addr(v, &ss)) {
                snprintf(msg, msg_size, "'%s' is not HOST:PORT (e.g. 127.0.0.1:7070)", pv);
                return PD_EINVAL;
            }
        } else if (o->type == OPT_PATH && v[0] != '/') {
            snprintf(msg, msg_size, "'%s' must start with '/'", pv);
            return PD_EINVAL;
        } else if (o->type == OPT_LEVEL && pd_log_level_parse(v) < 0) {
            snprintf(msg, msg_size, "'%s' is not one of debug, info, warn, error", pv);
            return PD_EINVAL;
        } else if (o->type == OPT_FORMAT && pd_log_format_parse(v) < 0) {
            snprintf(msg, msg_size, "'%s' is not one of text, json", pv);
            return PD_EINVAL;
        }
        memcpy(base + o->off, v, strlen(v) + 1);
        return 0;
    }
    case OPT_LIST: {
        uint32_t *count = (uint32_t *)(base + o->count_off);
        char **list = (char **)(base + o->off);
        uint8_t *src = &cfg->list_source[list_index(o)];
        if (*src != source) {
            for (uint32_t i = 0; i < *count; i++)
                free(list[i]);
            *count = 0;
            *src = (uint8_t)source;
        }
        if (*count >= PD_CONFIG_LIST_MAX) {
            snprintf(msg, msg_size, "given more than %d times", PD_CONFIG_LIST_MAX);
            return PD_EINVAL;
        }
        if (!v[0]) {
            snprintf(msg, msg_size, "empty value");
            return PD_EINVAL;
        }
        list[*count] = strdup(v);
        if (!list[*count]) {
            snprintf(msg, msg_size, "out of memory");
            return PD_ENOMEM;
        }
        (*count)++;
        return 0;
    }
    case OPT_BOOL: {
        bool *b = (bool *)(base + o->off);
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *b = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            *b = false;
        else {
            snprintf(msg, msg_size, "'%s' is not true or false", pv);
            return PD_EINVAL;
        }
        return 0;
    }
    case OPT_UINT:
    case OPT_BYTES:
    case OPT_SECONDS: {
        double d;
        int rc = parse_double(v, &d);
        if (rc < 0) {
            snprintf(msg, msg_size, "'%s' is not a number", pv);
            return PD_EINVAL;
        }
        if (rc > 0) {
            const char *suf = v + rc;
            if (o->type != OPT_BYTES || suf[1] != '\0' ||
                (suf[0] != 'K' && suf[0] != 'M' && suf[0] != 'G')) {
                snprintf(msg, msg_size, "'%s' has an unexpected suffix", pv);
                return PD_EINVAL;
            }
            d *= suf[0] == 'K' ? 1024.0 : suf[0] == 'M' ? 1024.0 * 1024 : 1024.0 * 1024 * 1024;
        }
        if (o->type != OPT_SECONDS && d != floor(d)) {
            snprintf(msg, msg_size, "'%s' is not a whole number", pv);
            return PD_EINVAL;
        }
        if (d < o->min || d > o->max) {
            snprintf(msg, msg_size, "%s is out of range [%g, %g]", pv, o->min, o->max);
            return PD_EINVAL;
        }
        uint32_t *u = (uint32_t *)(base + o->off);
        *u = o->type == OPT_SECONDS ? (uint32_t)llround(d * 1000.0) : (uint32_t)d;
        return 0;
    }
    }
    return PD_EINVAL;
}

void pd_config_defaults(pd_config_t *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    char msg[128];
    for (size_t i = 0; i < NOPTS; i++)
        if (opts[i].def)
            set_value(cfg, &opts[i], opts[i].def, msg, sizeof(msg));
}

void pd_config_free(pd_config_t *cfg) {
    for (uint32_t i = 0; i < cfg->allow_origin_count; i++)
        free(cfg->allow_origin[i]);
    cfg->allow_origin_count = 0;
    for (uint32_t i = 0; i < cfg->webhook_url_count; i++)
        free(cfg->webhook_url[i]);
    cfg->webhook_url_count = 0;
}

int pd_config_parse_args(pd_config_t *cfg, int argc, char **argv, FILE *err) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            char shown[160];
            fprintf(err, "presenced: unexpected argument '%s' (flags start with --)\n",
                    printable(a, shown, sizeof(shown)));
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = find_opt(name, nlen);
        if (!o) {
            char shown[160];
            printable(name, shown, sizeof(shown));
            if (nlen < sizeof(shown))
                shown[nlen] = '\0';
            fprintf(err, "presenced: unknown flag '--%s' (see --help)\n", shown);
            return -1;
        }
        const char *v;
        if (eq) {
            v = eq + 1;
        } else if (o->type == OPT_BOOL) {
            v = "true";
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            fprintf(err, "presenced: flag '--%s' needs a value\n", o->name);
            return -1;
        }
        char msg[256];
        if (set_value(cfg, o, v, msg, sizeof(msg))) {
            fprintf(err, "presenced: invalid value for '--%s': %s\n", o->name, msg);
            return -1;
        }
    }
    return 0;
}

const char *pd_config_file(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--config=", 9) == 0)
            return argv[i] + 9;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            return argv[i + 1];
    }
    return NULL;
}

struct file_ctx {
    pd_config_t *cfg;
    char msg[384]; /* the first error */
    /* The reader's side of the file: its own line count, and the first line it could not pass
     * to the parser whole. */
    FILE *f;
    char *line;
    size_t line_cap;
    int lineno;
    int long_line;
    char long_msg[384];
};

static int on_ini(void *user, const char *section, const char *name, const char *value) {
    struct file_ctx *fc = user;
    char shown[160];
    if (section[0] && strcmp(section, "presenced") != 0) {
        if (!fc->msg[0])
            snprintf(fc->msg, sizeof(fc->msg),
                     "unknown section [%s] (keys go before any "
                     "section, or under [presenced])",
                     printable(section, shown, sizeof(shown)));
        return 0;
    }
    const struct opt *o = find_opt(name, strlen(name));
    if (!o || strcmp(name, "config") == 0 || strcmp(name, "help") == 0 ||
        strcmp(name, "version") == 0 || strcmp(name, "check-config") == 0) {
        if (!fc->msg[0])
            snprintf(fc->msg, sizeof(fc->msg), "unknown key '%s'",
                     printable(name, shown, sizeof(shown)));
        return 0;
    }
    char why[256];
    if (set_value_from(fc->cfg, o, value, PD_CONFIG_FILE, why, sizeof(why)) != 0) {
        if (!fc->msg[0])
            snprintf(fc->msg, sizeof(fc->msg), "invalid value for '%s': %s", o->name, why);
        return 0;
    }
    return 1;
}

/* Feeds the INI parser one line at a time, reading whole lines itself. libinih holds a line in
 * a buffer of num bytes fixed when it was built (200 in Debian's): a longer line used to reach
 * it in pieces, the rest of a legal value parsed as a line of its own ("line 2: not a key =
 * value line" for a one-line file). Such a line is now reported as what it is, under its own
 * number, with the key it was for. Leading blanks are dropped: libinih reads an indented line
 * as the continuation of the previous value, so an indented "key = value" silently became part
 * of the key above it; no setting spans lines. */
static char *ini_reader_fn(char *str, int num, void *stream) {
    struct file_ctx *fc = stream;
    ssize_t n = getline(&fc->line, &fc->line_cap, fc->f);
    if (n < 0)
        return NULL;
    fc->lineno++;
    const char *p = fc->line;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t len = strlen(p); /* up to a NUL in the line, which ends it as the parser would */
    if (len + 1 > (size_t)num) {
        if (*p != '#' && *p != ';' && !fc->long_line) {
            /* A comment may be as long as it likes; a setting cannot. */
            char key[72], shown[160];
            size_t k = strcspn(p, "=:");
            while (k && (p[k - 1] == ' ' || p[k - 1] == '\t'))
                k--;
            snprintf(key, sizeof(key), "%.*s", (int)(k < 64 ? k : 64), p);
            printable(key, shown, sizeof(shown));
            fc->long_line = fc->lineno;
            snprintf(fc->long_msg, sizeof(fc->long_msg),
                     "the line of '%s' is longer than %d bytes, the most a config file line "
                     "may hold; give this value as a flag or an environment variable",
                     shown, num - 2);
        }
        p = "\n"; /* keeps the parser's line count in step with ours */
        len = 1;
    }
    memcpy(str, p, len + 1);
    return str;
}

int pd_config_parse_file(pd_config_t *cfg, const char *path, FILE *err) {
    struct file_ctx fc = {.cfg = cfg};
    fc.f = fopen(path, "r");
    if (!fc.f) {
        fprintf(err, "presenced: cannot read config file '%s': %s\n", path, strerror(errno));
        return -1;
    }
    int line = ini_parse_stream(ini_reader_fn, &fc, on_ini, &fc);
    /* A read error looks like the end of the file to the parser: a directory given as the
     * file read as an empty configuration, "OK". */
    int read_err = ferror(fc.f) ? (errno ? errno : EIO) : 0;
    fclose(fc.f);
    free(fc.line);
    if (read_err) {
        fprintf(err, "presenced: cannot read config file '%s': %s\n", path, strerror(read_err));
        return -1;
    }
    if (fc.long_line && (line <= 0 || fc.long_line < line)) {
        fprintf(err, "presenced: config file '%s' line %d: %s\n", path, fc.long_line, fc.long_msg);
        return -1;
    }
    if (line == 0)
        return 0;
    if (line < 0)
        fprintf(err, "presenced: cannot read config file '%s': out of memory\n", path);
    else
        fprintf(err, "presenced: config file '%s' line %d: %s\n", path, line,
                fc.msg[0] ? fc.msg : "not a key = value line");
    return -1;
}

int pd_config_parse_env(pd_config_t *cfg, char **envp, FILE *err) {
    static const char prefix[] = "PRESENCED_";
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, prefix, sizeof(prefix) - 1) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        /* PRESENCED_HEARTBEAT_TTL names the key heartbeat-ttl. */
        char name[64];
        size_t n = (size_t)(eq - *e) - (sizeof(prefix) - 1);
        if (n == 0 || n >= sizeof(name))
            continue;
        for (size_t i = 0; i < n; i++) {
            char c = (*e)[sizeof(prefix) - 1 + i];
            name[i] = c == '_' ? '-' : (char)tolower((unsigned char)c);
        }
        name[n] = '\0';
        const struct opt *o = find_opt(name, n);
        if (!o || strcmp(name, "help") == 0 || strcmp(name, "version") == 0) {
            /* Not an error: the variable may belong to something else (a test harness, a
             * wrapper script); but a typo should not pass unseen. */
            fprintf(err,
                    "presenced: warning: environment variable %.*s is not a setting; "
                    "ignored\n",
                    (int)(eq - *e), *e);
            continue;
        }
        const char *v = eq + 1;
        if (o->type == OPT_LIST) {
            /* Repeatable keys take a comma-separated list here. A copy of any length: a fixed
             * buffer cut a long list short, silently dropping or truncating origins. */
            char *buf = strdup(v);
            if (!buf) {
                fprintf(err, "presenced: out of memory\n");
                return -1;
            }
            for (char *save = NULL, *item = strtok_r(buf, ",", &save); item;
                 item = strtok_r(NULL, ",", &save)) {
                char why[256];
                while (*item == ' ')
                    item++;
                if (set_value_from(cfg, o, item, PD_CONFIG_ENV, why, sizeof(why))) {
                    fprintf(err, "presenced: invalid value in environment %.*s: %s\n",
                            (int)(eq - *e), *e, why);
                    free(buf);
                    return -1;
                }
            }
            free(buf);
            continue;
        }
        char why[256];
        if (set_value_from(cfg, o, v, PD_CONFIG_ENV, why, sizeof(why))) {
            fprintf(err, "presenced: invalid value in environment %.*s: %s\n", (int)(eq - *e), *e,
                    why);
            return -1;
        }
    }
    return 0;
}

/* The value of PRESENCED_CONFIG in envp, or NULL. */
static const char *env_config(char **envp) {
    static const char name[] = "PRESENCED_CONFIG=";
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, sizeof(name) - 1) == 0)
            return *e + sizeof(name) - 1;
    return NULL;
}

int pd_config_load(pd_config_t *cfg, int argc, char **argv, char **envp, FILE *err) {
    pd_config_defaults(cfg);
    const char *file = pd_config_file(argc, argv);
    if (!file) {
        /* PRESENCED_CONFIG names the file as --config does (the flag wins). It used to be
         * taken as a plain setting: the file was never read, yet --check-config said
         * "configuration OK (FILE)". Checked like any value first, so the message names it. */
        const char *v = env_config(envp);
        if (v && v[0]) {
            char why[256];
            if (set_value_from(cfg, find_opt("config", 6), v, PD_CONFIG_ENV, why, sizeof(why))) {
                fprintf(err, "presenced: invalid value in environment PRESENCED_CONFIG: %s\n", why);
                return -1;
            }
            file = cfg->config;
        }
    }
    if (file && pd_config_parse_file(cfg, file, err))
        return -1;
    if (pd_config_parse_env(cfg, envp, err))
        return -1;
    if (pd_config_parse_args(cfg, argc, argv, err))
        return -1;
    if (cfg->rate_limit && cfg->rate_limit_change_cost > cfg->rate_limit_burst) {
        /* Such a message could never pass: refused here rather than at every message. */
        fprintf(err, "presenced: rate-limit-change-cost (%u) is more than rate-limit-burst (%u)\n",
                cfg->rate_limit_change_cost, cfg->rate_limit_burst);
        return -1;
    }
    return 0;
}

void pd_config_usage(FILE *out, const char *prog) {
    fprintf(out,
            "Usage: %s [--flag VALUE]...\n\n"
            "presenced: a real-time presence server (who is online, away, busy, in which room).\n"
            "Durations are in seconds (fractions allowed); sizes take K, M or G.\n"
            "Every flag is also a key of the --config file (key = value) and an environment\n"
            "variable (--heartbeat-ttl: PRESENCED_HEARTBEAT_TTL). Precedence, lowest first:\n"
            "defaults, the config file, the environment, the command line.\n\nFlags:\n",
            prog);
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        char left[64];
        snprintf(left, sizeof(left), "--%s%s", o->name,
                 o->type == OPT_BOOL      ? ""
                 : o->type == OPT_SECONDS ? " SECONDS"
                 : o->type == OPT_BYTES   ? " BYTES"
                 : o->type == OPT_UINT    ? " N"
                 : o->type == OPT_ADDR    ? " ADDR:PORT"
                 : o->type == OPT_PATH    ? " PATH"
                                          : " VALUE");
        fprintf(out, "  %-28s %s", left, o->help);
        if (o->def)
            fprintf(out, " (default %s)", o->def);
        fputc('\n', out);
    }
}
