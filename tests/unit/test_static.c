/* Static files (http/static.h): static_safe_path, the pure decoder that turns a URL path into
 * a relative file path or refuses it (percent-decoding once; NUL, backslash, "." and ".."
 * segments, empty inner segments, malformed escapes, no room); static_content_type by file
 * extension; static_mount refusing what is not a readable directory and past its limit.
 * Every input is placed at the end of a guarded page: reading one byte past its length faults.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <sys/stat.h>

#include "testutil.h"

#include "http/static.h"

/* static_safe_path on path (not NUL-terminated: guarded) with an out buffer of out_size. */
static int safe(const char *path, char *out, size_t out_size) {
    tu_guard_t g;
    size_t len = strlen(path);
    tu_guard_init(&g, len + 1);
    const char *p = (const char *)tu_guard_place(&g, path, len);
    int rc = static_safe_path(p, len, out, out_size);
    tu_guard_destroy(&g);
    return rc;
}

static void expect_ok(const char *path, const char *want) {
    char out[256];
    memset(out, 'Z', sizeof(out));
    if (safe(path, out, sizeof(out)) != 0)
        fail_msg("\"%s\": refused, expected \"%s\"", path, want);
    if (strcmp(out, want) != 0)
        fail_msg("\"%s\": got \"%s\", expected \"%s\"", path, out, want);
}

static void expect_refused(const char *path) {
    char out[256];
    if (safe(path, out, sizeof(out)) == 0)
        fail_msg("\"%s\": accepted as \"%s\"", path, out);
}

static void test_plain_paths(void **state) {
    (void)state;
    expect_ok("index.html", "index.html");
    expect_ok("/index.html", "index.html");
    expect_ok("/a/b/c.js", "a/b/c.js");
    expect_ok("", "");
    expect_ok("/", "");
    expect_ok("///a", "a");     /* leading slashes: relative to the mount, never absolute */
    expect_ok("/sub/", "sub/"); /* a trailing slash (a directory) is kept */
    /* Dots that are not whole "." or ".." segments are ordinary names. */
    expect_ok(".hidden", ".hidden");
    expect_ok("...", "...");
    expect_ok("a..b/c.d", "a..b/c.d");
    expect_ok("..a/b..", "..a/b..");
    expect_ok("a/.../b", "a/.../b");
}

static void test_percent_decoding(void **state) {
    (void)state;
    expect_ok("%41%62c", "Abc");
    expect_ok("a%20b.txt", "a b.txt");
    expect_ok("a%2fb", "a/b"); /* an encoded slash is a slash */
    expect_ok("a%2Fb", "a/b");
    expect_ok("%2fetc%2fpasswd", "etc/passwd"); /* an encoded absolute path stays relative */
    /* Decoded once only: a double-encoded dot-dot is the literal name "%2e%2e". */
    expect_ok("%252e%252e/x", "%2e%2e/x");
    expect_ok("%25", "%");
    /* UTF-8 passes through; overlong forms of '.' are not dots. */
    expect_ok("caf%C3%A9.html", "caf\xC3\xA9.html");
    expect_ok("%c0%ae%c0%ae/x", "\xC0\xAE\xC0\xAE/x");
    /* Malformed escapes. */
    expect_refused("%");
    expect_refused("a%");
    expect_refused("a%4");
    expect_refused("%zz");
    expect_refused("%4g");
    expect_refused("%g4");
    expect_refused("% 1");
}

static void test_traversal_refused(void **state) {
    (void)state;
    expect_refused("..");
    expect_refused("/..");
    expect_refused("/../etc/passwd");
    expect_refused("a/../b");
    expect_refused("a/b/..");
    expect_refused("a/b/../");
    expect_refused(".");
    expect_refused("./a");
    expect_refused("a/./b");
    expect_refused("a/.");
    /* Encoded dots and slashes: decoded first, then checked. */
    expect_refused("%2e%2e");
    expect_refused("%2E%2E/x");
    expect_refused("%2e./x");
    expect_refused(".%2e/x");
    expect_refused("..%2fx");
    expect_refused("%2e%2e%2fetc%2fpasswd");
    expect_refused("a%2f..%2fb");
    expect_refused("a/%2e/b");
    /* Empty inner segments. */
    expect_refused("a//b");
    expect_refused("a%2f%2fb");
    /* Backslashes, raw or encoded. */
    expect_refused("a\\b");
    expect_refused("..\\x");
    expect_refused("\\etc\\passwd");
    expect_refused("a%5cb");
    expect_refused("..%5Cx");
    /* NUL, encoded (a raw NUL byte inside the length too). */
    expect_refused("a%00b");
    expect_refused("index.html%00.txt");
    char out[64];
    static const char with_nul[] = {'a', '\0', 'b'};
    tu_guard_t g;
    tu_guard_init(&g, sizeof(with_nul));
    const char *p = (const char *)tu_guard_place(&g, with_nul, sizeof(with_nul));
    assert_int_equal(static_safe_path(p, sizeof(with_nul), out, sizeof(out)), -1);
    tu_guard_destroy(&g);
}

/* Hidden names: a segment starting with '.' anywhere in the path (after decoding, so
 * "%2eenv" is ".env"); dots elsewhere in a name are ordinary. */
static void test_hidden_paths(void **state) {
    (void)state;
    static const char *const hidden[] = {
        ".env",     "/.env", ".git/config", "a/.git/config", "a/b/.htpasswd", ".well-known/x",
        ".hidden/", "a/.b",  "...",         "..a/b",         "a/.../b",       ".",
    };
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
        if (!static_path_hidden(hidden[i]))
            fail_msg("\"%s\" not hidden", hidden[i]);
    static const char *const visible[] = {
        "", "/", "index.html", "a/b/c.js", "a.b/c", "a./b", "sub/", "a/b.", "env.", "caf\xc3\xa9",
    };
    for (size_t i = 0; i < sizeof(visible) / sizeof(visible[0]); i++)
        if (static_path_hidden(visible[i]))
            fail_msg("\"%s\" hidden", visible[i]);
    /* Through the decoder, as the handler uses it. */
    char out[64];
    assert_int_equal(safe("/%2eenv", out, sizeof(out)), 0);
    assert_true(static_path_hidden(out));
    assert_int_equal(safe("/sub/%2Egit/config", out, sizeof(out)), 0);
    assert_true(static_path_hidden(out));
}

static void test_output_size(void **state) {
    (void)state;
    char out[8];
    /* "abc" needs 4 bytes with its NUL. */
    memset(out, 'Z', sizeof(out));
    assert_int_equal(safe("abc", out, 4), 0);
    assert_string_equal(out, "abc");
    memset(out, 'Z', sizeof(out));
    assert_int_equal(safe("abc", out, 3), -1);
    for (size_t i = 3; i < sizeof(out); i++)
        assert_int_equal(out[i], 'Z'); /* nothing written past the buffer */
    /* Escapes count decoded: "%41%42%43" is 3 bytes. */
    assert_int_equal(safe("%41%42%43", out, 4), 0);
    assert_string_equal(out, "ABC");
    /* A long path fits exactly, or not at all. */
    char big[300];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char o2[300];
    assert_int_equal(safe(big, o2, sizeof(o2)), 0);
    assert_int_equal(strlen(o2), sizeof(big) - 1);
    assert_int_equal(safe(big, o2, sizeof(o2) - 1), -1);
}

static void test_content_types(void **state) {
    (void)state;
    static const struct {
        const char *name, *type;
    } cases[] = {
        {"index.html", "text/html; charset=utf-8"},
        {"/srv/web/a.b.html", "text/html; charset=utf-8"},
        {"style.css", "text/css; charset=utf-8"},
        {"app.js", "text/javascript; charset=utf-8"},
        {"mod.mjs", "text/javascript; charset=utf-8"},
        {"data.json", "application/json"},
        {"app.js.map", "application/json"},
        {"logo.svg", "image/svg+xml"},
        {"demo.png", "image/png"},
        {"photo.jpg", "image/jpeg"},
        {"favicon.ico", "image/x-icon"},
        {"pic.webp", "image/webp"},
        {"font.woff2", "font/woff2"},
        {"notes.txt", "text/plain; charset=utf-8"},
        {"README.md", "text/markdown; charset=utf-8"},
        {"presenced-client.d.ts", "text/plain; charset=utf-8"},
        /* Unknown, none, or only an extension: bytes. */
        {"archive.tar.gz", "application/octet-stream"},
        {"Makefile", "application/octet-stream"},
        {"", "application/octet-stream"},
        {".html", "application/octet-stream"},
        {"index.html.bak", "application/octet-stream"},
        {"dir.js/file", "application/octet-stream"},
        {"x.jsx", "application/octet-stream"},
        {"page.HTML", "application/octet-stream"}, /* case-sensitive */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = static_content_type(cases[i].name);
        if (strcmp(got, cases[i].type) != 0)
            fail_msg("\"%s\": \"%s\", expected \"%s\"", cases[i].name, got, cases[i].type);
    }
}

static void test_mounts(void **state) {
    (void)state;
    char dir[] = "/tmp/pd-static-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[64];
    snprintf(file, sizeof(file), "%s/f.txt", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);

    static_files_t sf;
    memset(&sf, 0, sizeof(sf));
    assert_int_equal(static_mount(&sf, "/", "/nonexistent/pd-static"), -1);
    assert_int_equal(static_mount(&sf, "/", file), -1); /* not a directory */
    assert_int_equal(sf.count, 0);
    for (size_t i = 0; i < STATIC_MOUNTS_MAX; i++)
        assert_int_equal(static_mount(&sf, "/x/", dir), 0);
    assert_int_equal(static_mount(&sf, "/y/", dir), -1); /* full */
    assert_int_equal(sf.count, STATIC_MOUNTS_MAX);
    /* The root is stored resolved. */
    char real[4096];
    assert_non_null(realpath(dir, real));
    assert_string_equal(sf.mounts[0].root, real);
    assert_string_equal(sf.mounts[0].prefix, "/x/");

    remove(file);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_paths),       cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_traversal_refused), cmocka_unit_test(test_output_size),
        cmocka_unit_test(test_content_types),     cmocka_unit_test(test_mounts),
        cmocka_unit_test(test_hidden_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
