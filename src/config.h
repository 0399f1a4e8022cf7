/* presenced's settings: one table names every key once, with its type, default, limits and
 * help; the command line (--key VALUE or --key=VALUE) is parsed against it, and --help is
 * generated from it, so the two cannot drift apart.
 *
 * Durations are seconds with a fraction allowed ("0.5"), stored as milliseconds. Sizes take
 * an optional K, M or G suffix (powers of 1024).
 */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define PD_CONFIG_LIST_MAX 32 /* values of a repeatable key */
#define PD_CONFIG_LISTS    4  /* repeatable keys (tracked by the source that set them) */

/* Where a value came from, lowest precedence first. */
enum pd_config_source { PD_CONFIG_DEFAULT, PD_CONFIG_FILE, PD_CONFIG_ENV, PD_CONFIG_FLAG };

typedef struct pd_config {
    char listen[128]; /* ADDR:PORT */
    char ws_path[128];
    char *allow_origin[PD_CONFIG_LIST_MAX];
    uint32_t allow_origin_count;
    uint32_t max_message; /* bytes */
    uint32_t out_max;     /* bytes */
    uint32_t max_connections;
    uint32_t request_timeout;      /* ms */
    uint32_t keepalive_timeout;    /* ms */
    uint32_t close_timeout;        /* ms */
    uint32_t heartbeat_ttl;        /* ms */
    uint32_t offline_grace;        /* ms */
    uint32_t last_seen_checkpoint; /* ms */
    uint32_t away_after;           /* ms */
    uint32_t max_subscriptions;
    uint32_t max_ids; /* user ids per request */
    uint32_t room_announce_max;
    uint32_t room_interval; /* ms */
    uint32_t cursor_hz;
    uint32_t max_rooms_per_connection;
    uint32_t max_room_members;
    uint32_t max_contacts;
    uint32_t max_connections_per_user; /* on this node; 0: no limit */
    uint32_t max_connections_per_ip;   /* per client address (IPv6: /64); 0: no limit */
    uint32_t rate_limit;               /* messages per second per connection; 0: no limit */
    uint32_t rate_limit_burst;         /* messages */
    uint32_t rate_limit_change_cost;   /* tokens a store change or read takes */
    char token_secret_file[1024];
    char token_public_key[1024];
    char token_issuer[256];
    char token_audience[256];
    char data_dir[1024];
    bool ephemeral;
    char static_dir[1024];
    bool static_dotfiles; /* serve hidden names (a segment starting with '.') from static dirs */
    char client_dir[1024];
    char api_keys_file[1024];
    uint32_t sse_keepalive; /* ms */
    char *webhook_url[PD_CONFIG_LIST_MAX];
    uint32_t webhook_url_count;
    char webhook_secret_file[1024];
    char redis[256];          /* redis://host:port */
    char redis_cluster[1024]; /* host:port,host:port */
    char node_id[64];
    uint32_t node_lease_ttl; /* ms */
    uint32_t redis_timeout;  /* ms */
    bool redis_seed_compat;
    char log_level[16];
    char log_format[16];
    bool dev_auth;
    char config[1024]; /* the config file read, when one was given */
    bool check_config;
    uint8_t list_source[PD_CONFIG_LISTS]; /* enum pd_config_source of each list's values */
    bool help;
    bool version;
} pd_config_t;

/* Sets every key to its default. */
void pd_config_defaults(pd_config_t *cfg);

/* Frees the strings of repeatable keys. */
void pd_config_free(pd_config_t *cfg);

/* Parses argv (argv[0] is skipped). Returns 0, or -1 after writing a one-line error that
 * names the flag to err. */
int pd_config_parse_args(pd_config_t *cfg, int argc, char **argv, FILE *err);

/* The --config file named in argv, or NULL. */
const char *pd_config_file(int argc, char **argv);

/* Reads an INI file of key = value lines (keys are the flags' names; no section, or
 * [presenced]). Unknown keys and bad values are errors naming the file, line and key.
 * 0, or -1 after writing the error to err. */
int pd_config_parse_file(pd_config_t *cfg, const char *path, FILE *err);

/* Applies PRESENCED_* environment variables (PRESENCED_HEARTBEAT_TTL for heartbeat-ttl;
 * repeatable keys as comma-separated lists). A bad value is an error naming the variable; a
 * PRESENCED_ variable that names no setting is reported as a warning and ignored. */
int pd_config_parse_env(pd_config_t *cfg, char **envp, FILE *err);

/* Everything, in order of precedence: defaults, the --config file (or, without the flag, the
 * file PRESENCED_CONFIG names), the environment, the command line. 0, or -1 after writing the
 * error to err. */
int pd_config_load(pd_config_t *cfg, int argc, char **argv, char **envp, FILE *err);

/* Writes the usage text with every flag, its default and its meaning. */
void pd_config_usage(FILE *out, const char *prog);

/* Parses "HOST:PORT" ("[v6]:PORT" for IPv6) into addr. 0 or PD_EINVAL. */
struct sockaddr_storage;
int pd_config_parse_addr(const char *s, struct sockaddr_storage *addr);

#endif
