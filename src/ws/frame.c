#include "ws/frame.h"

#include <string.h>

#include "util/error.h"
#include "util/utf8.h"

void ws_decoder_init(ws_decoder_t *d, uint32_t max_message) {
    memset(d, 0, sizeof(*d));
    d->max_message = max_message;
}

bool ws_close_code_valid(uint16_t code) {
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], size_t offset) {
    size_t i = 0;
    /* Align the key to the offset, then XOR eight bytes at a time. */
    uint8_t k[8];
    for (int j = 0; j < 8; j++)
        k[j] = mask[(offset + (size_t)j) & 3];
    uint64_t k64;
    memcpy(&k64, k, 8);
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= k64;
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] ^= k[i & 7];
}

static int fail(uint16_t *close_code, uint16_t code, int err) {
    *close_code = code;
    return err;
}

int ws_decode(ws_decoder_t *d, uint8_t *buf, size_t len, ws_event_t *ev, size_t *need,
              uint16_t *close_code) {
    *need = 0;
    if (len < 2)
        return PD_EAGAIN;

    uint8_t b0 = buf[0], b1 = buf[1];
    bool fin = b0 & 0x80;
    uint8_t opcode = b0 & 0x0F;
    bool masked = b1 & 0x80;
    uint64_t plen = b1 & 0x7F;

    /* No extension is ever negotiated, so reserved bits must be zero. */
    if (b0 & 0x70)
        return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
    bool control = opcode & 0x08;
    if (control) {
        if (opcode != WS_OP_CLOSE && opcode != WS_OP_PING && opcode != WS_OP_PONG)
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
        if (!fin || plen > WS_CONTROL_MAX)
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
    } else if (opcode != WS_OP_CONT && opcode != WS_OP_TEXT && opcode != WS_OP_BINARY) {
        return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
    }
    /* Section 5.1: a server closes on any unmasked client frame. */
    if (!masked)
        return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);

    size_t hlen = 2;
    if (plen == 126) {
        if (len < 4)
            return PD_EAGAIN;
        plen = ((uint64_t)buf[2] << 8) | buf[3];
        if (plen < 126) /* section 5.2: the minimal number of bytes MUST be used */
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
        hlen = 4;
    } else if (plen == 127) {
        if (len < 10)
            return PD_EAGAIN;
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = (plen << 8) | buf[2 + i];
        if (plen >> 63 || plen <= 0xFFFF)
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
        hlen = 10;
    }

    /* Sequence rules and the size cap are checked from the header alone, before any payload
     * is buffered, so an oversized message costs nothing to refuse. */
    if (!control) {
        if (opcode == WS_OP_CONT && d->msg_opcode == 0)
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
        if (opcode != WS_OP_CONT && d->msg_opcode != 0)
            return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
        if (plen > (uint64_t)d->max_message - d->msg_len)
            return fail(close_code, WS_CLOSE_TOO_BIG, PD_ETOOBIG);
    }

    uint8_t mask[4];
    if (len < hlen + 4)
        return PD_EAGAIN;
    memcpy(mask, buf + hlen, 4);
    hlen += 4;

    if (len - hlen < plen) {
        *need = hlen + (size_t)plen;
        return PD_EAGAIN;
    }

    uint8_t *payload = buf + hlen;
    ws_mask(payload, (size_t)plen, mask, 0);
    memset(ev, 0, sizeof(*ev));

    if (control) {
        ev->payload = payload;
        ev->len = (size_t)plen;
        if (opcode == WS_OP_PING) {
            ev->type = WS_EV_PING;
        } else if (opcode == WS_OP_PONG) {
            ev->type = WS_EV_PONG;
        } else {
            ev->type = WS_EV_CLOSE;
            ev->close_code = WS_CLOSE_NO_STATUS;
            if (plen == 1)
                return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
            if (plen >= 2) {
                uint16_t code = (uint16_t)((payload[0] << 8) | payload[1]);
                if (!ws_close_code_valid(code))
                    return fail(close_code, WS_CLOSE_PROTOCOL, PD_EPROTO);
                if (!utf8_is_valid(payload + 2, (size_t)plen - 2))
                    return fail(close_code, WS_CLOSE_BAD_DATA, PD_EUTF8);
                ev->close_code = code;
                ev->payload = payload + 2;
                ev->len = (size_t)plen - 2;
            }
        }
        return (int)(hlen + plen);
    }

    ev->type = WS_EV_DATA;
    ev->first = opcode != WS_OP_CONT;
    if (ev->first) {
        d->msg_opcode = opcode;
        d->msg_len = 0;
        d->utf8_state = UTF8_ACCEPT;
    }
    ev->opcode = d->msg_opcode;
    ev->fin = fin;
    ev->payload = payload;
    ev->len = (size_t)plen;
    d->msg_len += (uint32_t)plen;

    if (d->msg_opcode == WS_OP_TEXT) {
        d->utf8_state = utf8_validate(d->utf8_state, payload, (size_t)plen);
        /* Fail fast inside a message; at its end the text must also close its last char. */
        if (d->utf8_state == UTF8_REJECT || (fin && d->utf8_state != UTF8_ACCEPT))
            return fail(close_code, WS_CLOSE_BAD_DATA, PD_EUTF8);
    }
    if (fin) {
        d->msg_opcode = 0;
        d->msg_len = 0;
    }
    return (int)(hlen + plen);
}

size_t ws_header_encode(uint8_t *out, uint8_t opcode, bool fin, uint64_t len,
                        const uint8_t mask[4]) {
    size_t n = 0;
    uint8_t mbit = mask ? 0x80 : 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[n++] = (uint8_t)(mbit | len);
    } else if (len <= 0xFFFF) {
        out[n++] = mbit | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            out[n++] = (uint8_t)(len >> (8 * i));
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

void ws_frame_seal(pd_obuf_t *b, uint8_t opcode) {
    uint8_t hdr[WS_CLIENT_HDR_MAX];
    size_t hlen = ws_header_encode(hdr, opcode, true, pd_obuf_payload_len(b), NULL);
    b->head = (uint32_t)(PD_OBUF_HEADROOM - hlen);
    memcpy(b->data + b->head, hdr, hlen);
}

pd_obuf_t *ws_frame_new(uint8_t opcode, const void *payload, size_t len) {
    pd_obuf_t *b = pd_obuf_from(payload, len);
    if (b)
        ws_frame_seal(b, opcode);
    return b;
}

pd_obuf_t *ws_close_frame_new(uint16_t code, const char *reason) {
    uint8_t body[WS_CONTROL_MAX];
    size_t n = 0;
    if (code) {
        body[0] = (uint8_t)(code >> 8);
        body[1] = (uint8_t)code;
        n = 2;
        if (reason) {
            size_t rlen = strlen(reason);
            if (rlen > WS_CONTROL_MAX - 2) {
                rlen = WS_CONTROL_MAX - 2;
                /* Back off to a character boundary so the reason stays valid UTF-8. */
                while (rlen > 0 && ((uint8_t)reason[rlen] & 0xC0) == 0x80)
                    rlen--;
            }
            memcpy(body + 2, reason, rlen);
            n += rlen;
        }
    }
    return ws_frame_new(WS_OP_CLOSE, body, n);
}
