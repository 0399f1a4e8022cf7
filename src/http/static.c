#include "http/static.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http/exchange.h"
#include "util/error.h"

static const struct {
    const char *ext, *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".json", "application/json"},
    {".map", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".jpg", "image/jpeg"},
    {".ico", "image/x-icon"},
    {".webp", "image/webp"},
    {".woff2", "font/woff2"},
    {".txt", "text/plain; charset=utf-8"},
    {".md", "text/markdown; charset=utf-8"},
    {".ts", "text/plain; charset=utf-8"},
};

const char *static_content_type(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        size_t e = strlen(types[i].ext);
        if (n > e && strcmp(name + n - e, types[i].ext) == 0)
            return types[i].type;
    }
    return "application/octet-stream";
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int static_safe_path(const char *path, size_t len, char *out, size_t out_size) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)path[i];
        if (c == '%') {
            int hi = i + 2 < len ? hexval(path[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(path[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || c == '\\')
            return -1;
        if (o + 1 >= out_size)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    /* Segment by segment: no "." or "..", no empty segment but a trailing one. */
    const char *seg = out;
    while (*seg == '/')
        seg++;
    memmove(out, seg, strlen(seg) + 1);
    for (char *s = out; *s;) {
        char *slash = strchr(s, '/');
        size_t sl = slash ? (size_t)(slash - s) : strlen(s);
        if ((sl == 1 && s[0] == '.') || (sl == 2 && s[0] == '.' && s[1] == '.'))
            return -1;
        if (sl == 0 && slash && slash[1] != '\0')
            return -1; /* "a//b" */
        if (!slash)
            break;
        s = slash + 1;
    }
    return 0;
}

bool static_path_hidden(const char *rel) {
    for (const char *s = rel; *s;) {
        if (*s == '.')
            return true;
        const char *slash = strchr(s, '/');
        if (!slash)
            break;
        s = slash + 1;
    }
    return false;
}

int static_mount(static_files_t *sf, const char *prefix, const char *dir) {
    if (sf->count == STATIC_MOUNTS_MAX)
        return -1;
    static_mount_t *m = &sf->mounts[sf->count];
    struct stat st;
    if (!realpath(dir, m->root) || stat(m->root, &st) != 0 || !S_ISDIR(st.st_mode))
        return -1;
    snprintf(m->prefix, sizeof(m->prefix), "%s", prefix);
    sf->count++;
    return 0;
}

static void not_found(http_exchange_t *ex) {
    http_exchange_respond(ex, 404, "text/plain; charset=utf-8", NULL, "404 Not Found\n", 14);
}

/* Resolves rel inside m: the real path, and it must stay under the mount's root. *is_dir
 * tells that rel named a directory (its index.html is what real names). */
static int resolve(const static_mount_t *m, const char *rel, char *real, struct stat *st,
                   bool *is_dir) {
    *is_dir = false;
    char joined[PATH_MAX];
    int n = snprintf(joined, sizeof(joined), "%s/%s", m->root, rel);
    if (n < 0 || (size_t)n >= sizeof(joined))
        return -1;
    if (!realpath(joined, real) || stat(real, st) != 0)
        return -1;
    size_t rl = strlen(m->root);
    if (strncmp(real, m->root, rl) != 0 || (real[rl] != '/' && real[rl] != '\0'))
        return -1; /* a symlink (or anything) leading out of the directory */
    if (S_ISDIR(st->st_mode)) {
        *is_dir = true;
        char index[PATH_MAX];
        n = snprintf(index, sizeof(index), "%s/index.html", real);
        if (n < 0 || (size_t)n >= sizeof(index) || !realpath(index, real) || stat(real, st) != 0 ||
            strncmp(real, m->root, rl) != 0 || real[rl] != '/')
            return -1;
    }
    return S_ISREG(st->st_mode) ? 0 : -1;
}

/* "/docs" names a directory: its page is answered at "/docs/", or its relative links would
 * resolve against the parent. The Location is rebuilt from the mount and the checked path,
 * percent-encoded, never copied from the request (no "//host" open redirect). */
static void redirect_to_dir(http_exchange_t *ex, const static_mount_t *m, const char *rel) {
    static const char hex[] = "0123456789ABCDEF";
    char loc[PATH_MAX * 3 + 64];
    size_t o = (size_t)snprintf(loc, sizeof(loc), "Location: %s", m->prefix);
    if (o && loc[o - 1] != '/')
        loc[o++] = '/';
    for (const unsigned char *c = (const unsigned char *)rel; *c && o + 8 < sizeof(loc); c++) {
        if (isalnum(*c) || strchr("-._~/", *c)) {
            loc[o++] = (char)*c;
        } else {
            loc[o++] = '%';
            loc[o++] = hex[*c >> 4];
            loc[o++] = hex[*c & 15];
        }
    }
    memcpy(loc + o, "/\r\n", 4);
    http_exchange_respond(ex, 301, "text/plain; charset=utf-8", loc, "moved\n", 6);
}

/* If-None-Match (RFC 9110 section 13.1.2): "*", or a list of tags compared weakly. */
static bool etag_matches(const http_header_t *h, const char *etag) {
    if (!h)
        return false;
    size_t el = strlen(etag);
    const char *s = h->value, *end = h->value + h->value_len;
    while (s < end) {
        while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
            s++;
        const char *e = s;
        while (e < end && *e != ',')
            e++;
        const char *t = s, *te = e;
        while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if (te - t == 1 && *t == '*')
            return true;
        if (te - t > 2 && t[0] == 'W' && t[1] == '/')
            t += 2;
        if ((size_t)(te - t) == el && memcmp(t, etag, el) == 0)
            return true;
        s = e;
    }
    return false;
}

static void handle(void *ctx, http_exchange_t *ex, const http_request_t *req) {
    static_files_t *sf = ctx;
    const static_mount_t *best = NULL;
    for (size_t i = 0; i < sf->count; i++) {
        const static_mount_t *m = &sf->mounts[i];
        size_t pl = strlen(m->prefix);
        if (req->path_len >= pl && memcmp(req->path, m->prefix, pl) == 0 &&
            (!best || pl > strlen(best->prefix)))
            best = m;
    }
    char rel[PATH_MAX], real[PATH_MAX];
    struct stat st;
    bool is_dir;
    size_t pl = best ? strlen(best->prefix) : 0;
    /* Hidden names (.env, .git/, .htpasswd) are deployment files, not the site: not served
     * unless asked for, neither by their name nor through a visible name linking to them. */
    if (!best || static_safe_path(req->path + pl, req->path_len - pl, rel, sizeof(rel)) != 0 ||
        (!sf->allow_dotfiles && static_path_hidden(rel)) ||
        resolve(best, rel, real, &st, &is_dir) != 0 ||
        (!sf->allow_dotfiles && static_path_hidden(real + strlen(best->root))) ||
        st.st_size > STATIC_FILE_MAX) {
        not_found(ex);
        return;
    }
    if (is_dir && rel[0] && rel[strlen(rel) - 1] != '/') {
        redirect_to_dir(ex, best, rel);
        return;
    }
    char etag[64];
    snprintf(etag, sizeof(etag), "\"%llx-%llx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtime);
    char modified[64];
    struct tm tm;
    gmtime_r(&st.st_mtime, &tm);
    strftime(modified, sizeof(modified), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    const char *type = static_content_type(real);
    char headers[512];
    /* The demo page runs only its own scripts and talks only to its own origin. */
    const char *policy = strncmp(type, "text/html", 9) == 0
                             ? "Content-Security-Policy: default-src 'self'; connect-src 'self' "
                               "ws: wss:; img-src 'self' data:; frame-ancestors 'none'\r\n"
                               "Referrer-Policy: no-referrer\r\n"
                             : "";
    snprintf(headers, sizeof(headers),
             "ETag: %s\r\nLast-Modified: %s\r\nCache-Control: no-cache\r\n%s", etag, modified,
             policy);
    if (etag_matches(http_request_header(req, "If-None-Match"), etag)) {
        http_exchange_respond(ex, 304, NULL, headers, NULL, 0);
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    char *body = fd >= 0 ? malloc((size_t)st.st_size + 1) : NULL;
    ssize_t got = body ? read(fd, body, (size_t)st.st_size) : -1;
    if (fd >= 0)
        close(fd);
    if (got != st.st_size) {
        free(body);
        http_exchange_respond(ex, 500, "text/plain; charset=utf-8", NULL, "read failed\n", 12);
        return;
    }
    http_exchange_respond(ex, 200, type, headers, body, (size_t)got);
    free(body);
}

int static_register(static_files_t *sf, http_router_t *router) {
    for (size_t i = 0; i < sf->count; i++)
        if (http_router_add(router, HTTP_M(HTTP_GET), sf->mounts[i].prefix, true, handle, sf))
            return PD_ELIMIT;
    return 0;
}
