/* libFuzzer target: http_reqparser (http/request.h).
 *
 * Input: byte 0 picks where to cut the rest in two, byte 1 picks the limits (bit 0: small
 * ones, so every limit is within reach), the rest is what a client sends. It is fed as the
 * server feeds it, once whole and once in the two pieces, each piece in a buffer of its exact
 * size (so ASan sees any over-read), pipelined requests taken one at a time. Checked: the
 * contract's invariants for every request and status (100 Continue is never due beside an
 * answer, and due once; what ws_handshake_check accepts is unambiguous), and that both runs see
 * exactly the same requests and the same outcome. The one allowed difference: a request that is
 * both malformed and over a limit may be refused 400 at one cut and with the limit's status at
 * another (http_parser hands over a token such as the target only when it ends or the input does,
 * so the limit is seen only if the input ends inside it first).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "http/request.h"
#include "util/error.h"
#include "ws/handshake.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v) {
    return fnv(h, &v, sizeof(v));
}

/* Checks one request against the contract and folds it into h. */
static uint64_t check_request(uint64_t h, const http_request_t *r, const http_limits_t *lim) {
    CHECK(r->version_major == 1);
    if (r->version_minor >= 1)
        CHECK(http_request_header(r, "Host") != NULL);
    CHECK(r->target_len <= lim->uri_max);
    bool inside = r->path >= r->target && r->path + r->path_len <= r->target + r->target_len;
    CHECK(inside || (r->path_len == 1 && r->path[0] == '/'));
    if (r->path != r->target) /* only an absolute-form target's path starts later */
        CHECK(r->target[0] != '/' && memchr(r->target, ':', r->target_len) != NULL);
    if (r->query) {
        CHECK(r->query > r->target && r->query[-1] == '?');
        CHECK(r->query + r->query_len <= r->target + r->target_len);
    } else {
        CHECK(r->query_len == 0);
    }
    CHECK(r->nheaders <= lim->headers_max && r->nheaders <= HTTP_HEADERS_MAX);
    /* An Expect accepted asks for 100-continue. */
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const http_header_t *hd = &r->headers[i];
        if (hd->name_len == 6 && strncasecmp(hd->name, "Expect", 6) == 0)
            CHECK(hd->value_len >= 12 &&
                  http_header_has_token(hd->value, hd->value_len, "100-continue"));
    }
    CHECK(r->body_len <= lim->body_max);
    CHECK((r->body == NULL) == (r->body_len == 0));
    size_t stored = r->target_len;
    h = fnv_u64(h, r->method);
    h = fnv_u64(h, r->version_minor);
    h = fnv_u64(h, (uint64_t)r->keep_alive << 1 | r->upgrade);
    h = fnv(h, r->target, r->target_len); /* reads every byte: ASan checks the pointers */
    h = fnv_u64(h, r->path_len);
    h = fnv_u64(h, r->query ? r->query_len + 1 : 0);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const http_header_t *hd = &r->headers[i];
        CHECK(hd->name_len > 0);
        if (hd->value_len) {
            CHECK(hd->value[0] != ' ' && hd->value[0] != '\t');
            CHECK(hd->value[hd->value_len - 1] != ' ' && hd->value[hd->value_len - 1] != '\t');
        }
        h = fnv(h, hd->name, hd->name_len);
        h = fnv(h, ":", 1);
        h = fnv(h, hd->value, hd->value_len);
        stored += hd->name_len + hd->value_len;
        /* The lookup finds a header with this name (the first one). */
        char name[128];
        if (hd->name_len < sizeof(name) && !memchr(hd->name, '\0', hd->name_len)) {
            memcpy(name, hd->name, hd->name_len);
            name[hd->name_len] = '\0';
            const http_header_t *found = http_request_header(r, name);
            CHECK(found != NULL && found <= hd);
        }
    }
    CHECK(stored <= lim->head_max);
    /* The handshake check copes with any request; one it accepts is unambiguous: a GET with
     * exactly one key and one version, and at most one Origin, which the policy allows. */
    static const char *const allowed[] = {"https://app.example"};
    const ws_origin_list_t origins = {allowed, 1};
    const char *why = NULL;
    int hs = ws_handshake_check(r, &origins, &why);
    CHECK(hs == 0 || hs == 400 || hs == 403 || hs == 405 || hs == 426);
    CHECK((hs == 0) == (why == NULL));
    if (hs == 0) {
        unsigned keys = 0, versions = 0, origin_count = 0;
        for (uint32_t i = 0; i < r->nheaders; i++) {
            const http_header_t *hd = &r->headers[i];
            keys += hd->name_len == 17 && strncasecmp(hd->name, "Sec-WebSocket-Key", 17) == 0;
            versions +=
                hd->name_len == 21 && strncasecmp(hd->name, "Sec-WebSocket-Version", 21) == 0;
            origin_count += hd->name_len == 6 && strncasecmp(hd->name, "Origin", 6) == 0;
        }
        CHECK(r->method == HTTP_GET && keys == 1 && versions == 1 && origin_count <= 1);
        const http_header_t *key = http_request_header(r, "Sec-WebSocket-Key");
        char accept[WS_ACCEPT_LEN + 1];
        ws_accept_key(key->value, key->value_len, accept);
        CHECK(strlen(accept) == WS_ACCEPT_LEN);
    }
    h = fnv_u64(h, (uint64_t)hs);
    h = fnv(h, r->body ? r->body : "", r->body_len);
    /* The helpers must cope with whatever the query holds. */
    if (r->query) {
        char out[64];
        int rc = http_query_get(r->query, r->query_len, "user", out, sizeof(out));
        CHECK(rc == PD_ENOTFOUND || rc == PD_EINVAL || rc == PD_ETOOBIG ||
              (rc >= 0 && rc < (int)sizeof(out) && out[rc] == '\0' && strlen(out) == (size_t)rc));
        h = fnv_u64(h, (uint64_t)(int64_t)rc);
    }
    return h;
}

/* Feeds data[0..size) in the pieces [0, cut) and [cut, size); returns a digest of what came
 * out (an error counted as such) and sets *status to the final status (0: none). */
static uint64_t run(const uint8_t *data, size_t size, size_t cut, const http_limits_t *lim,
                    int *final_status) {
    *final_status = 0;
    uint64_t h = 14695981039346656037ULL;
    http_reqparser_t *p = http_reqparser_new(lim);
    if (!p)
        abort();
    size_t bounds[3] = {0, cut, size};
    for (int k = 0; k < 2; k++) {
        size_t len = bounds[k + 1] - bounds[k];
        if (len == 0)
            continue;
        char *piece = malloc(len);
        if (!piece)
            abort();
        memcpy(piece, data + bounds[k], len);
        size_t off = 0;
        while (off < len) {
            const http_request_t *r;
            int status;
            size_t n = http_reqparser_feed(p, piece + off, len - off, &r, &status);
            CHECK(n <= len - off);
            off += n;
            /* 100 Continue: never with an answer, once. Whether it is due depends on the cut
             * (head and body in one piece need none), so it is not in the digest. */
            if (http_reqparser_take_continue(p)) {
                CHECK(status == 0 && r == NULL);
                CHECK(!http_reqparser_take_continue(p));
            }
            if (status) {
                CHECK(r == NULL);
                CHECK(status == 400 || status == 413 || status == 414 || status == 417 ||
                      status == 431 || status == 505);
                h = fnv_u64(h, 999);
                *final_status = status;
                free(piece);
                goto done;
            }
            if (r) {
                h = check_request(h, r, lim);
                if (r->upgrade) {
                    /* The rest belongs to another protocol. */
                    h = fnv_u64(h, size - (bounds[k] + off));
                    free(piece);
                    goto done;
                }
            } else {
                CHECK(n > 0); /* no request, no error: progress */
            }
        }
        free(piece);
    }
    h = fnv_u64(h, 1000 + http_reqparser_busy(p));
done:
    http_reqparser_free(p);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    uint8_t cut_sel = data[0], flags = data[1];
    data += 2;
    size -= 2;
    http_limits_t lim;
    http_limits_default(&lim);
    if (flags & 1) {
        lim.head_max = 256;
        lim.uri_max = 64;
        lim.headers_max = 4;
        lim.body_max = 32;
    }
    size_t cut = size * cut_sel / 255;
    int whole_status, split_status;
    uint64_t whole = run(data, size, size, &lim, &whole_status);
    uint64_t split = run(data, size, cut, &lim, &split_status);
    CHECK(whole == split);
    CHECK(whole_status == split_status || whole_status == 400 || split_status == 400);
    return 0;
}
