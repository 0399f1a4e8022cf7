/* libFuzzer target: the WebSocket frame decoder (ws/frame.h).
 *
 * Input: byte 0 picks where to cut the rest in two, byte 1 picks a small message cap, the
 * rest is what a client sends. ws_decode runs over it as the server runs it (pending bytes
 * kept, decoded after each read), once whole and once in the two pieces, each call on an
 * exact-size copy of the pending bytes (so ASan sees any over-read). Checked: lengths never
 * exceed the input; every frame matches an independent reading of its header and its
 * unmasked payload; the event sequence obeys RFC 6455 (fragments, opcodes, the cap, UTF-8 of
 * whole text messages, close codes); errors carry the matching close code; both runs agree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/utf8.h"
#include "ws/frame.h"

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

/* What the events so far say about the message in progress. */
struct model {
    uint32_t max;
    uint8_t opcode; /* of the message in progress, 0 when none */
    uint8_t *msg;   /* its bytes so far (at most max) */
    size_t len;
};

/* Checks one decoded frame against an independent reading of the original bytes. */
static void check_frame(const uint8_t *orig, size_t rc, const ws_event_t *ev, const uint8_t *buf) {
    CHECK(rc >= 6);
    uint8_t l7 = orig[1] & 0x7F;
    CHECK(orig[1] & 0x80); /* masked */
    CHECK((orig[0] & 0x70) == 0);
    size_t hlen = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
    uint64_t plen = l7;
    if (l7 == 126)
        plen = (uint64_t)orig[2] << 8 | orig[3];
    else if (l7 == 127)
        for (int i = 0; i < 8; i++)
            plen = plen << 8 | orig[2 + i];
    const uint8_t *key = orig + hlen;
    hlen += 4;
    CHECK(hlen + plen == rc);
    /* The whole payload, unmasked, lies in the frame; the event's bytes are part of it. */
    for (size_t i = 0; i < plen; i++)
        CHECK(buf[hlen + i] == (orig[hlen + i] ^ key[i % 4]));
    CHECK(ev->payload >= buf + hlen && ev->payload + ev->len <= buf + rc);
    uint8_t op = orig[0] & 0x0F;
    bool fin = orig[0] & 0x80;
    switch (ev->type) {
    case WS_EV_DATA:
        CHECK(op <= WS_OP_BINARY);
        CHECK(ev->payload == buf + hlen && ev->len == plen);
        CHECK(ev->fin == fin);
        CHECK(ev->first == (op != WS_OP_CONT));
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        CHECK(op == (ev->type == WS_EV_PING ? WS_OP_PING : WS_OP_PONG));
        CHECK(fin && plen <= WS_CONTROL_MAX && ev->len == plen);
        break;
    case WS_EV_CLOSE:
        CHECK(op == WS_OP_CLOSE && fin && plen <= WS_CONTROL_MAX);
        if (plen == 0) {
            CHECK(ev->close_code == WS_CLOSE_NO_STATUS && ev->len == 0);
        } else {
            CHECK(plen >= 2);
            CHECK(ev->close_code == (buf[hlen] << 8 | buf[hlen + 1]));
            CHECK(ws_close_code_valid(ev->close_code));
            CHECK(ev->len == plen - 2);
            CHECK(utf8_is_valid(ev->payload, ev->len));
        }
        break;
    default:
        CHECK(0);
    }
}

/* Checks a data event against the message model. */
static void check_data(struct model *m, const ws_event_t *ev) {
    CHECK(ev->opcode == WS_OP_TEXT || ev->opcode == WS_OP_BINARY);
    if (ev->first) {
        CHECK(m->opcode == 0);
        m->opcode = ev->opcode;
        m->len = 0;
    } else {
        CHECK(m->opcode == ev->opcode);
    }
    CHECK(ev->len <= m->max - m->len);
    if (ev->len)
        memcpy(m->msg + m->len, ev->payload, ev->len);
    m->len += ev->len;
    if (m->opcode == WS_OP_TEXT)
        CHECK(utf8_validate(UTF8_ACCEPT, m->msg, m->len) != UTF8_REJECT);
    if (ev->fin) {
        if (m->opcode == WS_OP_TEXT)
            CHECK(utf8_is_valid(m->msg, m->len));
        m->opcode = 0;
    }
}

static uint64_t run(const uint8_t *data, size_t size, size_t cut, uint32_t max) {
    uint64_t h = 14695981039346656037ULL;
    ws_decoder_t d;
    ws_decoder_init(&d, max);
    struct model m = {.max = max};
    m.msg = malloc(max ? max : 1);
    uint8_t *pending = malloc(size ? size : 1);
    uint8_t *orig = malloc(size ? size : 1);
    if (!m.msg || !pending || !orig)
        abort();
    size_t have = 0;
    size_t bounds[3] = {0, cut, size};
    for (int k = 0; k < 2; k++) {
        memcpy(pending + have, data + bounds[k], bounds[k + 1] - bounds[k]);
        have += bounds[k + 1] - bounds[k];
        size_t off = 0;
        for (;;) {
            size_t avail = have - off;
            /* An exact-size copy: reading past what has arrived is a heap overflow. */
            uint8_t *buf = malloc(avail ? avail : 1);
            if (!buf)
                abort();
            memcpy(buf, pending + off, avail);
            memcpy(orig, buf, avail);
            ws_event_t ev;
            size_t need = 12345;
            uint16_t code = 0;
            int rc = ws_decode(&d, buf, avail, &ev, &need, &code);
            if (rc == PD_EAGAIN) {
                CHECK(memcmp(buf, orig, avail) == 0); /* nothing touched */
                CHECK(need == 0 ||
                      (need > avail && need <= WS_CLIENT_HDR_MAX + (size_t)max + WS_CONTROL_MAX));
                free(buf);
                break;
            }
            if (rc < 0) {
                CHECK((rc == PD_EPROTO && code == WS_CLOSE_PROTOCOL) ||
                      (rc == PD_ETOOBIG && code == WS_CLOSE_TOO_BIG) ||
                      (rc == PD_EUTF8 && code == WS_CLOSE_BAD_DATA));
                h = fnv_u64(h, (uint64_t)code);
                free(buf);
                goto done;
            }
            CHECK((size_t)rc <= avail);
            check_frame(orig, (size_t)rc, &ev, buf);
            if (ev.type == WS_EV_DATA)
                check_data(&m, &ev);
            h = fnv_u64(h, (uint64_t)ev.type << 24 | (uint64_t)ev.opcode << 16 |
                               (uint64_t)ev.first << 9 | (uint64_t)ev.fin << 8);
            h = fnv_u64(h, ev.close_code);
            h = fnv(h, ev.payload, ev.len);
            h = fnv_u64(h, ev.len);
            /* Unmasked in place, as the server keeps it. */
            memcpy(pending + off, buf, (size_t)rc);
            off += (size_t)rc;
            free(buf);
        }
        memmove(pending, pending + off, have - off);
        have -= off;
    }
    h = fnv_u64(h, 100000 + have);
done:
    free(m.msg);
    free(pending);
    free(orig);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    static const uint32_t caps[8] = {0, 1, 16, 125, 126, 1000, 4096, 65536};
    uint8_t cut_sel = data[0];
    uint32_t max = caps[data[1] & 7];
    data += 2;
    size -= 2;
    size_t cut = size * cut_sel / 255;
    uint64_t whole = run(data, size, size, max);
    uint64_t split = run(data, size, cut, max);
    CHECK(whole == split);
    return 0;
}
