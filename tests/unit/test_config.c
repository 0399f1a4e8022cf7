/* Settings from the command line (config.h): every value type in both --key=value and
 * --key value forms, the errors (each one line naming the flag, captured with
 * open_memstream), and address parsing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "testutil.h"

#include "config.h"
#include "util/error.h"

/* Parses the NULL-terminated arguments (argv[0] is supplied) into *cfg, starting from the
 * defaults. Returns the result; *err is what was written to the error stream (free it). */
static int parse_v(pd_config_t *cfg, char **err, va_list ap) {
    char *argv[64] = {"presenced"};
    int argc = 1;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < 63);
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
    size_t len = 0;
    FILE *f = open_memstream(err, &len);
    assert_non_null(f);
    pd_config_defaults(cfg);
    int rc = pd_config_parse_args(cfg, argc, argv, f);
    fclose(f);
    return rc;
}

static int parse(pd_config_t *cfg, char **err, ...) {
    va_list ap;
    va_start(ap, err);
    int rc = parse_v(cfg, err, ap);
    va_end(ap);
    return rc;
}

/* Parses, expecting success and silence. The caller calls pd_config_free. */
static void parse_ok(pd_config_t *cfg, ...) {
    char *err;
    va_list ap;
    va_start(ap, cfg);
    int rc = parse_v(cfg, &err, ap);
    va_end(ap);
    if (rc != 0)
        fail_msg("parse failed: %s", err);
    assert_string_equal(err, "");
    free(err);
}

/* Parses, expecting failure with one line that contains each of the given fragments (the
 * list ends at the first NULL; the arguments follow it, NULL-terminated). */
static void parse_fails(const char *want1, const char *want2, ...) {
    pd_config_t cfg;
    char *err;
    va_list ap;
    va_start(ap, want2);
    int rc = parse_v(&cfg, &err, ap);
    va_end(ap);
    assert_int_equal(rc, -1);
    /* One line: ends in a newline and has no other. */
    size_t n = strlen(err);
    if (n == 0 || err[n - 1] != '\n' || strchr(err, '\n') != err + n - 1)
        fail_msg("not one line: '%s'", err);
    if (strstr(err, want1) == NULL || (want2 && strstr(err, want2) == NULL))
        fail_msg("error '%s' lacks '%s' / '%s'", err, want1, want2 ? want2 : "");
    free(err);
    pd_config_free(&cfg);
}

static void test_defaults(void **state) {
    (void)state;
    pd_config_t cfg;
    memset(&cfg, 0xA5, sizeof(cfg));
    pd_config_defaults(&cfg);
    assert_string_equal(cfg.listen, "127.0.0.1:7070");
    assert_string_equal(cfg.ws_path, "/presence");
    assert_int_equal(cfg.allow_origin_count, 0);
    assert_int_equal(cfg.max_message, 64 * 1024);
    assert_int_equal(cfg.out_max, 1024 * 1024);
    assert_int_equal(cfg.max_connections, 1000000);
    assert_int_equal(cfg.request_timeout, 10000);
    assert_int_equal(cfg.keepalive_timeout, 60000);
    assert_int_equal(cfg.close_timeout, 5000);
    assert_int_equal(cfg.heartbeat_ttl, 30000);
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.log_format, "text");
    assert_false(cfg.dev_auth);
    assert_false(cfg.help);
    assert_false(cfg.version);
    pd_config_free(&cfg);
    /* No arguments: the defaults, no error. */
    parse_ok(&cfg, NULL);
    assert_int_equal(cfg.max_message, 64 * 1024);
    pd_config_free(&cfg);
}

static void test_both_forms(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--max-message=1000", "--out-max", "8192", "--ws-path=/ws", "--listen",
             "0.0.0.0:80", NULL);
    assert_int_equal(cfg.max_message, 1000);
    assert_int_equal(cfg.out_max, 8192);
    assert_string_equal(cfg.ws_path, "/ws");
    assert_string_equal(cfg.listen, "0.0.0.0:80");
    pd_config_free(&cfg);
    /* The value after '=' may itself contain '='; a separate value may start with "--". */
    parse_ok(&cfg, "--allow-origin=https://a.example/?x=y", NULL);
    assert_string_equal(cfg.allow_origin[0], "https://a.example/?x=y");
    pd_config_free(&cfg);
    parse_fails("'--ws-path'", "--dev-auth", "--ws-path", "--dev-auth", NULL);
    /* A repeated scalar flag: the last one wins. */
    parse_ok(&cfg, "--max-connections", "5", "--max-connections=7", NULL);
    assert_int_equal(cfg.max_connections, 7);
    pd_config_free(&cfg);
}

static void test_strings_and_paths(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--ws-path", "/", NULL);
    assert_string_equal(cfg.ws_path, "/");
    pd_config_free(&cfg);
    parse_fails("'--ws-path'", "must start with '/'", "--ws-path", "ws", NULL);
    parse_fails("'--ws-path'", NULL, "--ws-path=", NULL);
    /* 127 bytes fit the 128-byte field; 128 do not. */
    char path[130];
    path[0] = '/';
    memset(path + 1, 'p', 126);
    path[127] = '\0';
    parse_ok(&cfg, "--ws-path", path, NULL);
    assert_int_equal(strlen(cfg.ws_path), 127);
    pd_config_free(&cfg);
    path[127] = 'p';
    path[128] = '\0';
    parse_fails("'--ws-path'", "longer than 127 bytes", "--ws-path", path, NULL);
}

static void test_addresses(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--listen", "[::1]:8080", NULL);
    assert_string_equal(cfg.listen, "[::1]:8080");
    pd_config_free(&cfg);
    parse_ok(&cfg, "--listen=127.0.0.1:0", NULL);
    pd_config_free(&cfg);
    parse_fails("'--listen'", "HOST:PORT", "--listen", "localhost", NULL);
    parse_fails("'--listen'", NULL, "--listen", "1.2.3.4:65536", NULL);
    parse_fails("'--listen'", NULL, "--listen=example.com:80", NULL);
}

static void test_lists(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--allow-origin", "https://a.example", "--allow-origin=http://b:8080", NULL);
    assert_int_equal(cfg.allow_origin_count, 2);
    assert_string_equal(cfg.allow_origin[0], "https://a.example");
    assert_string_equal(cfg.allow_origin[1], "http://b:8080");
    pd_config_free(&cfg);
    assert_int_equal(cfg.allow_origin_count, 0);
    parse_fails("'--allow-origin'", "empty", "--allow-origin=", NULL);
    /* At most PD_CONFIG_LIST_MAX values. */
    char *argv[2 * PD_CONFIG_LIST_MAX + 4] = {"presenced"};
    int argc = 1;
    for (int i = 0; i <= PD_CONFIG_LIST_MAX; i++) {
        argv[argc++] = "--allow-origin";
        argv[argc++] = "https://x.example";
    }
    char *err;
    size_t len;
    FILE *f = open_memstream(&err, &len);
    pd_config_defaults(&cfg);
    assert_int_equal(pd_config_parse_args(&cfg, argc - 2, argv, f), 0);
    assert_int_equal(cfg.allow_origin_count, PD_CONFIG_LIST_MAX);
    pd_config_free(&cfg);
    pd_config_defaults(&cfg);
    assert_int_equal(pd_config_parse_args(&cfg, argc, argv, f), -1);
    fclose(f);
    assert_non_null(strstr(err, "'--allow-origin'"));
    assert_non_null(strstr(err, "more than 32"));
    free(err);
    pd_config_free(&cfg); /* what was parsed before the error is freed too */
}

static void test_unsigned(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--max-connections", "1", NULL);
    assert_int_equal(cfg.max_connections, 1);
    pd_config_free(&cfg);
    parse_ok(&cfg, "--max-connections=100000000", NULL);
    assert_int_equal(cfg.max_connections, 100000000);
    pd_config_free(&cfg);
    parse_fails("'--max-connections'", "out of range", "--max-connections", "0", NULL);
    parse_fails("'--max-connections'", "out of range", "--max-connections", "100000001", NULL);
    /* Plain decimals only: no sign, exponent or hex (strtod would take them). */
    parse_fails("'--max-connections'", "not a number", "--max-connections", "-1", NULL);
    parse_fails("'--max-connections'", "suffix", "--max-connections", "0x10", NULL);
    parse_fails("'--max-connections'", "suffix", "--max-connections", "1e3", NULL);
    parse_fails("'--max-connections'", "not a number", "--max-connections", " 5", NULL);
    parse_fails("'--max-connections'", "out of range", "--max-connections", "99999999999999999999",
                NULL);
    parse_fails("'--max-connections'", "whole number", "--max-connections", "1.5", NULL);
    parse_fails("'--max-connections'", "suffix", "--max-connections", "1K", NULL);
    parse_fails("'--max-connections'", "not a number", "--max-connections", "many", NULL);
    parse_fails("'--max-connections'", "not a number", "--max-connections=", NULL);
    parse_fails("'--max-connections'", "not a number", "--max-connections", "nan", NULL);
    parse_fails("'--max-connections'", "not a number", "--max-connections", "inf", NULL);
    parse_fails("'--max-connections'", "suffix", "--max-connections", "5 ", NULL);
}

static void test_bytes(void **state) {
    (void)state;
    static const struct {
        const char *v;
        uint32_t want;
    } ok[] = {
        {"128", 128},   {"1000", 1000},    {"64K", 65536},
        {"1.5K", 1536}, {"16M", 16777216}, {"0.5K", 512},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        pd_config_t cfg;
        parse_ok(&cfg, "--max-message", ok[i].v, NULL);
        assert_int_equal(cfg.max_message, ok[i].want);
        pd_config_free(&cfg);
    }
    pd_config_t cfg;
    parse_ok(&cfg, "--out-max=1G", NULL);
    assert_int_equal(cfg.out_max, 1024u * 1024 * 1024);
    pd_config_free(&cfg);
    parse_ok(&cfg, "--out-max=4K", NULL);
    assert_int_equal(cfg.out_max, 4096);
    pd_config_free(&cfg);
    parse_fails("'--max-message'", "out of range", "--max-message", "127", NULL);
    parse_fails("'--max-message'", "out of range", "--max-message", "17M", NULL);
    parse_fails("'--max-message'", "out of range", "--max-message", "1G", NULL);
    parse_fails("'--out-max'", "out of range", "--out-max", "2G", NULL);
    parse_fails("'--max-message'", "suffix", "--max-message", "64k", NULL); /* K, M, G only */
    parse_fails("'--max-message'", "suffix", "--max-message", "64KB", NULL);
    parse_fails("'--max-message'", "suffix", "--max-message", "64T", NULL);
    parse_fails("'--max-message'", "suffix", "--max-message", "1 K", NULL);
    parse_fails("'--max-message'", "whole number", "--max-message", "1000.5", NULL);
    parse_fails("'--max-message'", "whole number", "--max-message", "0.1K", NULL);
    parse_fails("'--max-message'", "not a number", "--max-message", "K", NULL);
}

static void test_seconds(void **state) {
    (void)state;
    static const struct {
        const char *flag, *v;
        uint32_t want_ms;
    } ok[] = {
        {"--request-timeout", "0.5", 500},
        {"--request-timeout", "2", 2000},
        {"--request-timeout", "0.05", 50},
        {"--request-timeout", "3600", 3600000},
        {"--keepalive-timeout", "86400", 86400000},
        {"--close-timeout", "0.125", 125},
        {"--heartbeat-ttl", "0.1", 100},
        {"--heartbeat-ttl", "10", 10000},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        pd_config_t cfg;
        parse_ok(&cfg, ok[i].flag, ok[i].v, NULL);
        uint32_t got = strcmp(ok[i].flag, "--request-timeout") == 0     ? cfg.request_timeout
                       : strcmp(ok[i].flag, "--keepalive-timeout") == 0 ? cfg.keepalive_timeout
                       : strcmp(ok[i].flag, "--close-timeout") == 0     ? cfg.close_timeout
                                                                        : cfg.heartbeat_ttl;
        if (got != ok[i].want_ms)
            fail_msg("%s %s: %u ms", ok[i].flag, ok[i].v, got);
        pd_config_free(&cfg);
    }
    parse_fails("'--request-timeout'", "out of range", "--request-timeout", "0.01", NULL);
    parse_fails("'--request-timeout'", "out of range", "--request-timeout", "3601", NULL);
    parse_fails("'--request-timeout'", "not a number", "--request-timeout", "-1", NULL);
    parse_fails("'--heartbeat-ttl'", "suffix", "--heartbeat-ttl", "30s", NULL);
    parse_fails("'--close-timeout'", "suffix", "--close-timeout=1K", NULL);
    parse_fails("'--close-timeout'", "not a number", "--close-timeout", "soon", NULL);
}

static void test_bools(void **state) {
    (void)state;
    pd_config_t cfg;
    parse_ok(&cfg, "--dev-auth", NULL);
    assert_true(cfg.dev_auth);
    pd_config_free(&cfg);
    const char *yes[] = {"true", "1", "yes", "on"}, *no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        char arg[32];
        snprintf(arg, sizeof(arg), "--dev-auth=%s", yes[i]);
        parse_ok(&cfg, arg, NULL);
        assert_true(cfg.dev_auth);
        pd_config_free(&cfg);
        snprintf(arg, sizeof(arg), "--dev-auth=%s", no[i]);
        parse_ok(&cfg, "--dev-auth", arg, NULL);
        assert_false(cfg.dev_auth);
        pd_config_free(&cfg);
    }
    parse_fails("'--dev-auth'", "maybe", "--dev-auth=maybe", NULL);
    parse_fails("'--dev-auth'", NULL, "--dev-auth=", NULL);
    /* A flag takes no separate value: "false" is a stray argument. */
    parse_fails("'false'", NULL, "--dev-auth", "false", NULL);
    parse_ok(&cfg, "--help", "--version", NULL);
    assert_true(cfg.help);
    assert_true(cfg.version);
    pd_config_free(&cfg);
}

static void test_log_settings(void **state) {
    (void)state;
    const char *levels[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        pd_config_t cfg;
        parse_ok(&cfg, "--log-level", levels[i], NULL);
        assert_string_equal(cfg.log_level, levels[i]);
        pd_config_free(&cfg);
    }
    pd_config_t cfg;
    parse_ok(&cfg, "--log-format=json", NULL);
    assert_string_equal(cfg.log_format, "json");
    pd_config_free(&cfg);
    parse_fails("'--log-level'", "verbose", "--log-level", "verbose", NULL);
    parse_fails("'--log-format'", "xml", "--log-format=xml", NULL);
    parse_fails("'--log-level'", NULL, "--log-level", "a-very-long-level-name-indeed", NULL);
}

static void test_bad_flags(void **state) {
    (void)state;
    parse_fails("'--nope'", "unknown", "--nope", NULL);
    parse_fails("'--nope'", "unknown", "--nope=3", NULL);
    parse_fails("'--'", "unknown", "--", NULL);
    parse_fails("'--max'", "unknown", "--max=1", NULL); /* no prefix matching */
    parse_fails("'--Max-Message'", "unknown", "--Max-Message=1000", NULL);
    parse_fails("'foo'", "unexpected", "foo", NULL);
    parse_fails("'-h'", "unexpected", "-h", NULL);
    parse_fails("''", "unexpected", "", NULL);
    /* Missing value: the flag is the last argument. */
    parse_fails("'--listen'", "needs a value", "--listen", NULL);
    parse_fails("'--max-message'", "needs a value", "--dev-auth", "--max-message", NULL);
    /* The first error stops parsing: later flags are not applied. */
    pd_config_t cfg;
    char *err;
    assert_int_equal(parse(&cfg, &err, "--max-message=1000", "--bogus", "--out-max=8192", NULL),
                     -1);
    assert_int_equal(cfg.max_message, 1000);
    assert_int_equal(cfg.out_max, 1024 * 1024);
    free(err);
    pd_config_free(&cfg);
}

static void test_usage(void **state) {
    (void)state;
    char *text;
    size_t len;
    FILE *f = open_memstream(&text, &len);
    pd_config_usage(f, "presenced");
    fclose(f);
    const char *flags[] = {"--listen ADDR:PORT",
                           "--ws-path PATH",
                           "--allow-origin",
                           "--max-message BYTES",
                           "--out-max BYTES",
                           "--max-connections N",
                           "--request-timeout SECONDS",
                           "--heartbeat-ttl SECONDS",
                           "--log-level",
                           "--log-format",
                           "--dev-auth",
                           "--help",
                           "--version"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (!strstr(text, flags[i]))
            fail_msg("usage lacks %s", flags[i]);
    assert_non_null(strstr(text, "Usage: presenced"));
    assert_non_null(strstr(text, "(default 64K)"));
    assert_non_null(strstr(text, "(default 127.0.0.1:7070)"));
    free(text);
}

/* ---- pd_config_parse_addr ---- */

static void test_parse_addr(void **state) {
    (void)state;
    struct sockaddr_storage ss;
    assert_int_equal(pd_config_parse_addr("127.0.0.1:7070", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)&ss;
    assert_int_equal(ntohs(in4->sin_port), 7070);
    assert_int_equal(ntohl(in4->sin_addr.s_addr), 0x7F000001);

    assert_int_equal(pd_config_parse_addr("0.0.0.0:0", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(pd_config_parse_addr("255.255.255.255:65535", &ss), 0);
    assert_int_equal(ntohs(((const struct sockaddr_in *)&ss)->sin_port), 65535);

    assert_int_equal(pd_config_parse_addr("[::1]:8080", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
    assert_int_equal(ntohs(in6->sin6_port), 8080);
    struct in6_addr lo = IN6ADDR_LOOPBACK_INIT;
    assert_memory_equal(&in6->sin6_addr, &lo, sizeof(lo));
    assert_int_equal(pd_config_parse_addr("[::]:443", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(pd_config_parse_addr("[2001:db8::1]:1", &ss), 0);

    const char *bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        ":80",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:80x",
        "127.0.0.1:0x50",
        "1.2.3:80",
        "256.0.0.1:80",
        "localhost:80",
        "[::1]80",
        "[::1]",
        "[::1:80",
        "[]:80",
        "[not-ip]:80",
        "::1]:80",
        "127.0.0.1:99999999999999999999",
        "[::1]:",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (pd_config_parse_addr(bad[i], &ss) != PD_EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    /* A host too long for the parser's buffer is refused, not overflowed. */
    char big[400];
    memset(big, '1', sizeof(big));
    memcpy(big + 380, ":80", 4);
    assert_int_equal(pd_config_parse_addr(big, &ss), PD_EINVAL);
    big[0] = '[';
    memcpy(big + 370, "]:80", 5);
    assert_int_equal(pd_config_parse_addr(big, &ss), PD_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_both_forms),
        cmocka_unit_test(test_strings_and_paths),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_unsigned),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_seconds),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_log_settings),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_parse_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
