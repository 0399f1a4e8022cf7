#include "ws/handshake.h"

#include <http_parser.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>
#include <strings.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static int b64val(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Section 4.1: the key is the base64 of 16 bytes: 22 characters, "==", and the last
 * character carrying no stray bits. */
static bool key_valid(const char *k, size_t len) {
    if (len != 24 || k[22] != '=' || k[23] != '=')
        return false;
    for (int i = 0; i < 22; i++)
        if (b64val(k[i]) < 0)
            return false;
    return (b64val(k[21]) & 0x0F) == 0;
}

/* True when req carries the header name more than once. */
static bool header_repeated(const http_request_t *req, const char *name) {
    size_t nl = strlen(name);
    unsigned seen = 0;
    for (uint32_t i = 0; i < req->nheaders && seen < 2; i++)
        seen += req->headers[i].name_len == nl && strncasecmp(req->headers[i].name, name, nl) == 0;
    return seen > 1;
}

int ws_handshake_check(const http_request_t *req, const ws_origin_list_t *origins,
                       const char **why) {
    if (req->method != HTTP_GET) {
        *why = "method is not GET";
        return 405;
    }
    const http_header_t *up = http_request_header(req, "Upgrade");
    if (!up || !http_header_has_token(up->value, up->value_len, "websocket")) {
        *why = "no websocket upgrade requested";
        return 426;
    }
    if (req->version_major != 1 || req->version_minor < 1) {
        *why = "HTTP version below 1.1";
        return 400;
    }
    const http_header_t *conn = http_request_header(req, "Connection");
    if (!conn || !http_header_has_token(conn->value, conn->value_len, "upgrade")) {
        *why = "Connection header lacks the upgrade token";
        return 400;
    }
    /* One of each (RFC 6455 section 4.1 sends each once; RFC 6454 section 7.3 one Origin).
     * Two are ambiguous: a proxy in front may check the one we ignore, and which key the
     * Accept answers, or which Origin was let in, would depend on the reader. */
    static const char *const once[] = {"Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin"};
    for (size_t i = 0; i < sizeof(once) / sizeof(once[0]); i++) {
        if (header_repeated(req, once[i])) {
            *why = "a header that must appear once is repeated";
            return 400;
        }
    }
    const http_header_t *ver = http_request_header(req, "Sec-WebSocket-Version");
    if (!ver || ver->value_len != 2 || memcmp(ver->value, "13", 2) != 0) {
        *why = "unsupported Sec-WebSocket-Version";
        return 426;
    }
    const http_header_t *key = http_request_header(req, "Sec-WebSocket-Key");
    if (!key || !key_valid(key->value, key->value_len)) {
        *why = "missing or malformed Sec-WebSocket-Key";
        return 400;
    }
    if (req->body_len > 0) {
        *why = "handshake with a body";
        return 400;
    }
    if (origins && origins->count > 0) {
        const http_header_t *o = http_request_header(req, "Origin");
        if (o) {
            bool ok = false;
            for (size_t i = 0; i < origins->count && !ok; i++) {
                size_t n = strlen(origins->origins[i]);
                ok = n == o->value_len && memcmp(origins->origins[i], o->value, n) == 0;
            }
            if (!ok) {
                *why = "Origin not allowed";
                return 403;
            }
        }
    }
    *why = NULL;
    return 0;
}

void ws_accept_key(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1]) {
    /* Keys that passed ws_handshake_check are 24 bytes; anything longer is cut, not trusted. */
    char in[64 + sizeof(WS_GUID)];
    if (key_len > 64)
        key_len = 64;
    memcpy(in, key, key_len);
    memcpy(in + key_len, WS_GUID, sizeof(WS_GUID) - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    unsigned int dlen = 0;
    EVP_Digest(in, key_len + sizeof(WS_GUID) - 1, digest, &dlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
    out[WS_ACCEPT_LEN] = '\0';
}
