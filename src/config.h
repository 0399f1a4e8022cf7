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

typedef struct pd_config {
    char listen[128]; /* ADDR:PORT */
    char ws_path[128];
    char *allow_origin[PD_CONFIG_LIST_MAX];
    uint32_t allow_origin_count;
    uint32_t max_message; /* bytes */
    uint32_t out_max;     /* bytes */
    uint32_t max_connections;
    uint32_t request_timeout;   /* ms */
    uint32_t keepalive_timeout; /* ms */
    uint32_t close_timeout;     /* ms */
    uint32_t heartbeat_ttl;     /* ms */
    uint32_t offline_grace;     /* ms */
    uint32_t away_after;        /* ms */
    uint32_t max_subscriptions;
    uint32_t max_ids; /* user ids per request */
    uint32_t room_announce_max;
    uint32_t room_interval; /* ms */
    uint32_t cursor_hz;
    uint32_t max_rooms_per_connection;
    uint32_t max_room_members;
    uint32_t max_contacts;
    char token_secret_file[1024];
    char token_public_key[1024];
    char token_issuer[256];
    char token_audience[256];
    char data_dir[1024];
    bool ephemeral;
    char static_dir[1024];
    char client_dir[1024];
    char log_level[16];
    char log_format[16];
    bool dev_auth;
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

/* Writes the usage text with every flag, its default and its meaning. */
void pd_config_usage(FILE *out, const char *prog);

/* Parses "HOST:PORT" ("[v6]:PORT" for IPv6) into addr. 0 or PD_EINVAL. */
struct sockaddr_storage;
int pd_config_parse_addr(const char *s, struct sockaddr_storage *addr);

#endif
