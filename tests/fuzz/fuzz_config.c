/* libFuzzer target: command-line parsing (config.h).
 *
 * Input: arguments separated by NUL bytes (at most 64), parsed after the defaults with errors
 * going to a memory stream. Checked: success leaves every setting within its documented
 * range, with nothing written; failure returns -1 after one error line ("presenced: ...");
 * every address the parser accepted parses again; nothing leaks (pd_config_free).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "util/error.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_ARGS 64

static void check_terminated(const char *field, size_t size) {
    CHECK(memchr(field, '\0', size) != NULL);
}

static void check_config(const pd_config_t *c) {
    check_terminated(c->listen, sizeof(c->listen));
    check_terminated(c->ws_path, sizeof(c->ws_path));
    check_terminated(c->log_level, sizeof(c->log_level));
    check_terminated(c->log_format, sizeof(c->log_format));
    struct sockaddr_storage ss;
    CHECK(pd_config_parse_addr(c->listen, &ss) == 0);
    CHECK(c->ws_path[0] == '/');
    CHECK(c->allow_origin_count <= PD_CONFIG_LIST_MAX);
    for (uint32_t i = 0; i < c->allow_origin_count; i++)
        CHECK(c->allow_origin[i] && c->allow_origin[i][0] != '\0');
    CHECK(c->max_message >= 128 && c->max_message <= 16u * 1024 * 1024);
    CHECK(c->out_max >= 4096 && c->out_max <= 1024u * 1024 * 1024);
    CHECK(c->max_connections >= 1 && c->max_connections <= 100000000);
    CHECK(c->request_timeout >= 50 && c->request_timeout <= 3600u * 1000);
    CHECK(c->keepalive_timeout >= 50 && c->keepalive_timeout <= 86400u * 1000);
    CHECK(c->close_timeout >= 50 && c->close_timeout <= 600u * 1000);
    CHECK(c->heartbeat_ttl >= 100 && c->heartbeat_ttl <= 86400u * 1000);
    CHECK(!strcmp(c->log_format, "text") || !strcmp(c->log_format, "json"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "presenced";
    size_t start = 0;
    for (size_t i = 0; i <= size && argc <= MAX_ARGS; i++) {
        if (i == size || data[i] == '\0') {
            char *a = malloc(i - start + 1);
            if (!a)
                abort();
            memcpy(a, data + start, i - start);
            a[i - start] = '\0';
            argv[argc++] = a;
            start = i + 1;
        }
    }
    argv[argc] = NULL;

    pd_config_t cfg;
    pd_config_defaults(&cfg);
    char *err = NULL;
    size_t err_len = 0;
    FILE *f = open_memstream(&err, &err_len);
    if (!f)
        abort();
    int rc = pd_config_parse_args(&cfg, argc, argv, f);
    fclose(f);
    if (rc == 0) {
        CHECK(err_len == 0);
        check_config(&cfg);
    } else {
        CHECK(rc == -1);
        CHECK(err_len > 11 && strncmp(err, "presenced: ", 11) == 0);
        CHECK(err[err_len - 1] == '\n');
    }
    /* The address parser on its own, on the first argument. */
    if (argc > 1) {
        struct sockaddr_storage ss;
        int arc = pd_config_parse_addr(argv[1], &ss);
        CHECK(arc == 0 || arc == PD_EINVAL);
        if (arc == 0)
            CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
    }
    pd_config_free(&cfg);
    CHECK(cfg.allow_origin_count == 0);
    free(err);
    for (int i = 1; i < argc; i++)
        free(argv[i]);
    return 0;
}
