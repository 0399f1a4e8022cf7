/* Static files (the demo page and the JavaScript client) served from directories mounted at
 * URL prefixes, for GET and HEAD.
 *
 * Safety: the path is percent-decoded once, then refused (404) if it holds a NUL, a
 * backslash, or a "." or ".." segment; the file found is resolved with realpath() and served
 * only if it lies inside the mount's resolved directory, so neither encoded traversal nor a
 * symlink pointing out of the directory reaches anything else. Only regular files are
 * served; a directory serves its index.html. Hidden names (a path segment starting with '.',
 * such as /.env or /.git/config) are 404 unless allow_dotfiles: both the name asked for and
 * the file it resolves to, so a symlink to a hidden file does not expose it either.
 *
 * Caching: every answer carries an ETag (size and mtime) and Last-Modified, and
 * "Cache-Control: no-cache" (always revalidate: the files are not fingerprinted); a matching
 * If-None-Match is answered 304. Files are read per request, up to STATIC_FILE_MAX.
 */
#ifndef PD_HTTP_STATIC_H
#define PD_HTTP_STATIC_H

#include <stdbool.h>
#include <stddef.h>

#include "http/router.h"

#define STATIC_FILE_MAX   (16 * 1024 * 1024)
#define STATIC_MOUNTS_MAX 4

typedef struct static_mount {
    char prefix[64]; /* URL prefix, starting and ending with '/' */
    char root[4096]; /* the directory, resolved (realpath) */
} static_mount_t;

typedef struct static_files {
    static_mount_t mounts[STATIC_MOUNTS_MAX];
    size_t count;
    bool allow_dotfiles; /* serve hidden names (config static-dotfiles); default false: 404 */
} static_files_t;

/* Mounts dir at prefix (longest prefix wins). 0, or -1 when dir is not a readable directory
 * or there is no room. */
int static_mount(static_files_t *sf, const char *prefix, const char *dir);

/* Registers the handler on the router for every mount (GET, HEAD). */
int static_register(static_files_t *sf, http_router_t *router);

/* The Content-Type for a file name ("application/octet-stream" when unknown). */
const char *static_content_type(const char *name);

/* Decodes a URL path into a safe relative file path in out (no leading '/'). 0, or -1 when
 * the path is malformed or tries to leave its directory. Pure; exposed for tests. */
int static_safe_path(const char *path, size_t len, char *out, size_t out_size);

/* True when a segment of the relative path rel (as static_safe_path makes it; a leading '/'
 * is skipped) starts with '.': a hidden file or directory. Pure; exposed for tests. */
bool static_path_hidden(const char *rel);

#endif
