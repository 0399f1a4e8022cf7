/* RFC 6455 framing: the incremental decoder, the encoder, and the output buffers it seals.
 *
 * Every decoder input goes through tu_every_split(): the decoder is driven as the server
 * drives it (pending bytes kept, ws_decode called on them after each read) with the input cut
 * at every point, in three, and byte by byte, and every cut must give the same events. The
 * pending bytes always end at a PROT_NONE page, so reading past what has arrived faults.
 * Frames are built here byte by byte, not with ws_header_encode, so the decoder is not
 * checked against the encoder it shares assumptions with.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "util/error.h"
#include "util/obuf.h"
#include "util/utf8.h"
#include "ws/frame.h"

#define FIN  0x80
#define RSV1 0x40
#define RSV2 0x20
#define RSV3 0x10

static const uint8_t KEY[4] = {0x37, 0xfa, 0x21, 0x3d}; /* the RFC's examples use this key */

/* ---- building client frames by hand ---- */

typedef struct wire {
    uint8_t *b;
    size_t len, cap;
} wire_t;

enum len_form {
    LEN_MIN, /* the minimal encoding, as the RFC requires */
    LEN_7,
    LEN_16,
    LEN_64
};

static void wire_raw(wire_t *w, const void *p, size_t n) {
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap *= 2;
        w->b = realloc(w->b, cap);
        assert_non_null(w->b);
        w->cap = cap;
    }
    if (n)
        memcpy(w->b + w->len, p, n);
    w->len += n;
}

static void wire_byte(wire_t *w, uint8_t c) {
    wire_raw(w, &c, 1);
}

static void wire_free(wire_t *w) {
    free(w->b);
    memset(w, 0, sizeof(*w));
}

/* Appends a frame whose first byte is b0 (FIN, RSV and opcode as given), with the length in
 * the given form and the payload masked with key (or not masked when key is NULL). */
static void wire_frame_ex(wire_t *w, uint8_t b0, enum len_form form, const uint8_t *key,
                          const void *payload, size_t len) {
    uint8_t mbit = key ? 0x80 : 0;
    if (form == LEN_MIN)
        form = len < 126 ? LEN_7 : len <= 0xFFFF ? LEN_16 : LEN_64;
    wire_byte(w, b0);
    switch (form) {
    case LEN_7:
        wire_byte(w, (uint8_t)(mbit | len));
        break;
    case LEN_16:
        wire_byte(w, mbit | 126);
        wire_byte(w, (uint8_t)(len >> 8));
        wire_byte(w, (uint8_t)len);
        break;
    default:
        wire_byte(w, mbit | 127);
        for (int i = 7; i >= 0; i--)
            wire_byte(w, (uint8_t)((uint64_t)len >> (8 * i)));
        break;
    }
    if (key)
        wire_raw(w, key, 4);
    size_t at = w->len;
    wire_raw(w, payload, len);
    if (key)
        for (size_t i = 0; i < len; i++)
            w->b[at + i] ^= key[i % 4];
}

/* A masked frame with a minimal length. */
static void wire_frame(wire_t *w, uint8_t b0, const void *payload, size_t len) {
    wire_frame_ex(w, b0, LEN_MIN, KEY, payload, len);
}

static void wire_text(wire_t *w, uint8_t b0, const char *s) {
    wire_frame(w, b0, s, strlen(s));
}

/* A masked close frame with a code and a reason of rlen bytes. */
static void wire_close(wire_t *w, uint16_t code, const void *reason, size_t rlen) {
    uint8_t body[WS_CONTROL_MAX + 8];
    assert_true(rlen + 2 <= sizeof(body));
    body[0] = (uint8_t)(code >> 8);
    body[1] = (uint8_t)code;
    memcpy(body + 2, reason, rlen);
    wire_frame(w, FIN | WS_OP_CLOSE, body, rlen + 2);
}

/* ---- driving the decoder as the server does ---- */

struct dec_ctx {
    uint32_t max_message;
};

/* Header length of the frame starting at b once its first two bytes are in, else 0. */
static size_t header_len(const uint8_t *b, size_t avail) {
    if (avail < 2)
        return 0;
    uint8_t l = b[1] & 0x7F;
    return 2 + (l == 126 ? 2 : l == 127 ? 8 : 0) + ((b[1] & 0x80) ? 4 : 0);
}

static uint64_t header_payload_len(const uint8_t *b) {
    uint8_t l = b[1] & 0x7F;
    if (l < 126)
        return l;
    if (l == 126)
        return ((uint64_t)b[2] << 8) | b[3];
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n = (n << 8) | b[2 + i];
    return n;
}

static const char *op_name(uint8_t op) {
    switch (op) {
    case WS_OP_TEXT:
        return "text";
    case WS_OP_BINARY:
        return "binary";
    default:
        return "BAD-OPCODE";
    }
}

static void describe(tu_str_t *out, const ws_event_t *ev) {
    switch (ev->type) {
    case WS_EV_DATA:
        tu_str_printf(out, "%s%s%s %zu ", op_name(ev->opcode), ev->first ? " first" : "",
                      ev->fin ? " fin" : "", ev->len);
        break;
    case WS_EV_PING:
        tu_str_printf(out, "ping %zu ", ev->len);
        break;
    case WS_EV_PONG:
        tu_str_printf(out, "pong %zu ", ev->len);
        break;
    case WS_EV_CLOSE:
        tu_str_printf(out, "close %u %zu ", ev->close_code, ev->len);
        break;
    default:
        tu_str_printf(out, "BAD-EVENT %u ", ev->type);
        break;
    }
    tu_str_bytes(out, ev->payload, ev->len);
    tu_str_printf(out, "\n");
}

/* The tu_chunked_fn: pending bytes live at the end of a guarded region; each chunk is
 * appended, then ws_decode runs until it needs more. Checks the EAGAIN / need contract on
 * the way; the transcript lists the events, then the error or the bytes left over. */
static void run_decoder(void *ctx, const uint8_t *in, size_t len, const size_t *ends, size_t n,
                        tu_str_t *out) {
    const struct dec_ctx *c = ctx;
    ws_decoder_t d;
    ws_decoder_init(&d, c->max_message);
    tu_guard_t g;
    tu_guard_init(&g, len);
    size_t pending = 0, fed = 0;
    bool failed = false;
    for (size_t k = 0; k < n && !failed; k++) {
        size_t chunk = ends[k] - fed;
        uint8_t *start = tu_guard_at(&g, pending + chunk);
        memmove(start, start + chunk, pending);
        memcpy(start + pending, in + fed, chunk);
        fed = ends[k];
        pending += chunk;
        for (;;) {
            uint8_t *buf = tu_guard_at(&g, pending);
            ws_event_t ev;
            size_t need = 777;
            uint16_t code = 0;
            int rc = ws_decode(&d, buf, pending, &ev, &need, &code);
            if (rc == PD_EAGAIN) {
                size_t hlen = header_len(buf, pending);
                if (hlen && pending >= hlen) {
                    /* Header complete: need is the whole frame, more than what is here. */
                    assert_int_equal(need, hlen + header_payload_len(buf));
                    assert_true(need > pending);
                } else {
                    assert_int_equal(need, 0);
                }
                break;
            }
            if (rc < 0) {
                tu_str_printf(out, "error %s %u\n", pd_err_name(rc), code);
                failed = true;
                break;
            }
            assert_true(rc >= 6); /* at least a 2-byte header and the mask key */
            assert_true((size_t)rc <= pending);
            assert_true(ev.payload >= buf && ev.payload + ev.len <= buf + rc);
            describe(out, &ev);
            pending -= (size_t)rc;
        }
    }
    if (!failed && pending)
        tu_str_printf(out, "incomplete %zu\n", pending);
    tu_guard_destroy(&g);
}

/* Decodes wire[0..len) cut in every way and checks the transcript. */
static void expect_decode(const void *wire, size_t len, uint32_t max_message,
                          const char *expected) {
    struct dec_ctx c = {max_message};
    char *got = tu_every_split(run_decoder, &c, wire, len);
    assert_string_equal(got, expected);
    free(got);
}

static void expect_wire(wire_t *w, uint32_t max_message, const char *expected) {
    expect_decode(w->b, w->len, max_message, expected);
    wire_free(w);
}

#define BIG (1u << 20)

/* ---- frames and lengths ---- */

static void test_rfc_examples(void **state) {
    (void)state;
    /* RFC 6455 section 5.7: a single-frame masked text message and a masked ping. */
    static const uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58};
    expect_decode(hello, sizeof(hello), BIG, "text first fin 5 \"Hello\"\n");
    static const uint8_t ping[] = {0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                   0x7f, 0x9f, 0x4d, 0x51, 0x58};
    expect_decode(ping, sizeof(ping), BIG, "ping 5 \"Hello\"\n");
}

static void test_small_lengths(void **state) {
    (void)state;
    uint8_t p[125];
    for (size_t i = 0; i < sizeof(p); i++)
        p[i] = (uint8_t)('a' + i % 26);
    size_t lens[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 124, 125};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        wire_t w = {0};
        wire_frame(&w, FIN | WS_OP_BINARY, p, lens[i]);
        assert_int_equal(w.len, 6 + lens[i]); /* the 7-bit length form */
        tu_str_t exp = {0};
        tu_str_printf(&exp, "binary first fin %zu ", lens[i]);
        tu_str_bytes(&exp, p, lens[i]);
        tu_str_printf(&exp, "\n");
        expect_wire(&w, BIG, tu_str_get(&exp));
        tu_str_free(&exp);
    }
}

static void expect_one_binary(size_t len, uint32_t max_message, size_t header_bytes) {
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 7 + (i >> 8));
    wire_t w = {0};
    wire_frame(&w, FIN | WS_OP_BINARY, p, len);
    assert_int_equal(w.len, header_bytes + len);
    tu_str_t exp = {0};
    tu_str_printf(&exp, "binary first fin %zu ", len);
    tu_str_bytes(&exp, p, len);
    tu_str_printf(&exp, "\n");
    expect_wire(&w, max_message, tu_str_get(&exp));
    tu_str_free(&exp);
    free(p);
}

static void test_16bit_lengths(void **state) {
    (void)state;
    expect_one_binary(126, BIG, 8);
    expect_one_binary(127, BIG, 8);
    expect_one_binary(256, BIG, 8);
    expect_one_binary(4000, BIG, 8);
    expect_one_binary(65535, BIG, 8);
}

static void test_64bit_lengths(void **state) {
    (void)state;
    expect_one_binary(65536, BIG, 14);
    expect_one_binary(100000, BIG, 14);
    expect_one_binary(65536, 65536, 14); /* exactly the cap */
}

static void test_several_frames_in_one_read(void **state) {
    (void)state;
    wire_t w = {0};
    wire_text(&w, FIN | WS_OP_TEXT, "one");
    wire_text(&w, FIN | WS_OP_PING, "");
    wire_text(&w, FIN | WS_OP_TEXT, "two");
    wire_text(&w, FIN | WS_OP_PONG, "p");
    wire_frame(&w, FIN | WS_OP_BINARY, "\x00\xff", 2);
    wire_close(&w, 1000, "", 0);
    expect_wire(&w, BIG,
                "text first fin 3 \"one\"\n"
                "ping 0 \"\"\n"
                "text first fin 3 \"two\"\n"
                "pong 1 \"p\"\n"
                "binary first fin 2 \"\\x00\\xff\"\n"
                "close 1000 0 \"\"\n");
}

static void test_incomplete_frame_left_pending(void **state) {
    (void)state;
    wire_t w = {0};
    wire_text(&w, FIN | WS_OP_TEXT, "done");
    wire_text(&w, FIN | WS_OP_TEXT, "not yet");
    w.len -= 3; /* the second frame lacks its last three bytes */
    expect_wire(&w, BIG, "text first fin 4 \"done\"\nincomplete 10\n");
}

/* ---- violations: 1002 ---- */

static void test_unmasked_client_frame(void **state) {
    (void)state;
    wire_t w = {0};
    wire_frame_ex(&w, FIN | WS_OP_TEXT, LEN_MIN, NULL, "Hello", 5);
    expect_wire(&w, BIG, "error EPROTO 1002\n");
    wire_frame_ex(&w, FIN | WS_OP_PING, LEN_MIN, NULL, "", 0);
    expect_wire(&w, BIG, "error EPROTO 1002\n");
    /* Decided from the first two bytes, before any length or payload arrives. */
    static const uint8_t two[] = {0x81, 0x7F};
    expect_decode(two, 2, BIG, "error EPROTO 1002\n");
    /* After a good frame, the bad one fails where it starts. */
    wire_text(&w, FIN | WS_OP_TEXT, "ok");
    wire_frame_ex(&w, FIN | WS_OP_BINARY, LEN_MIN, NULL, "x", 1);
    expect_wire(&w, BIG, "text first fin 2 \"ok\"\nerror EPROTO 1002\n");
}

static void test_rsv_bits(void **state) {
    (void)state;
    uint8_t rsv[] = {RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3};
    uint8_t ops[] = {WS_OP_TEXT, WS_OP_BINARY, WS_OP_PING, WS_OP_CLOSE};
    for (size_t i = 0; i < sizeof(rsv); i++)
        for (size_t j = 0; j < sizeof(ops); j++) {
            wire_t w = {0};
            wire_frame(&w, (uint8_t)(FIN | rsv[i] | ops[j]), "", 0);
            expect_wire(&w, BIG, "error EPROTO 1002\n");
        }
    /* On a continuation too, inside a message. */
    wire_t w = {0};
    wire_text(&w, WS_OP_TEXT, "a");
    wire_text(&w, FIN | RSV1 | WS_OP_CONT, "b");
    expect_wire(&w, BIG, "text first 1 \"a\"\nerror EPROTO 1002\n");
}

static void test_reserved_opcodes(void **state) {
    (void)state;
    for (uint8_t op = 0; op < 16; op++) {
        if (op <= WS_OP_BINARY || (op >= WS_OP_CLOSE && op <= WS_OP_PONG))
            continue;
        for (int fin = 0; fin < 2; fin++) {
            wire_t w = {0};
            wire_frame(&w, (uint8_t)((fin ? FIN : 0) | op), "x", 1);
            expect_wire(&w, BIG, "error EPROTO 1002\n");
            /* Also when only the first two bytes have arrived. */
            static const uint8_t hdr_tail[] = {0x81};
            wire_byte(&w, (uint8_t)((fin ? FIN : 0) | op));
            wire_raw(&w, hdr_tail, 1);
            expect_wire(&w, BIG, "error EPROTO 1002\n");
        }
    }
}

static void test_control_frame_rules(void **state) {
    (void)state;
    uint8_t ctl[] = {WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG};
    uint8_t p[126];
    memset(p, 'x', sizeof(p));
    for (size_t i = 0; i < sizeof(ctl); i++) {
        wire_t w = {0};
        /* Fragmented (FIN clear). */
        wire_frame(&w, ctl[i], "", 0);
        expect_wire(&w, BIG, "error EPROTO 1002\n");
        /* Longer than 125 bytes, in the 16-bit form: refused from the 7-bit field alone. */
        wire_frame(&w, FIN | ctl[i], p, 126);
        w.len = 2;
        expect_wire(&w, BIG, "error EPROTO 1002\n");
        /* And in the 64-bit form (non-minimal as well, but too long first). */
        wire_frame_ex(&w, FIN | ctl[i], LEN_64, KEY, p, 126);
        expect_wire(&w, BIG, "error EPROTO 1002\n");
    }
    /* Exactly 125 bytes is fine. */
    wire_t w = {0};
    wire_frame(&w, FIN | WS_OP_PING, p, 125);
    wire_frame(&w, FIN | WS_OP_PONG, p, 125);
    tu_str_t exp = {0};
    tu_str_printf(&exp, "ping 125 ");
    tu_str_bytes(&exp, p, 125);
    tu_str_printf(&exp, "\npong 125 ");
    tu_str_bytes(&exp, p, 125);
    tu_str_printf(&exp, "\n");
    expect_wire(&w, BIG, tu_str_get(&exp));
    tu_str_free(&exp);
    exp = (tu_str_t){0};
    /* A control frame's size does not count against the message cap. */
    wire_frame(&w, FIN | WS_OP_PING, p, 125);
    tu_str_printf(&exp, "ping 125 ");
    tu_str_bytes(&exp, p, 125);
    tu_str_printf(&exp, "\n");
    expect_wire(&w, 4, tu_str_get(&exp));
    tu_str_free(&exp);
}

static void test_nonminimal_lengths(void **state) {
    (void)state;
    uint8_t p[65535];
    memset(p, 'n', sizeof(p));
    /* The 16-bit form for lengths that fit in 7 bits. */
    size_t small[] = {0, 1, 125};
    for (size_t i = 0; i < 3; i++) {
        wire_t w = {0};
        wire_frame_ex(&w, FIN | WS_OP_BINARY, LEN_16, KEY, p, small[i]);
        expect_wire(&w, BIG, "error EPROTO 1002\n");
        wire_frame_ex(&w, FIN | WS_OP_BINARY, LEN_64, KEY, p, small[i]);
        expect_wire(&w, BIG, "error EPROTO 1002\n");
    }
    /* The 64-bit form for lengths that fit in 16 bits. */
    size_t mid[] = {126, 65535};
    for (size_t i = 0; i < 2; i++) {
        wire_t w = {0};
        wire_frame_ex(&w, FIN | WS_OP_BINARY, LEN_64, KEY, p, mid[i]);
        w.len = 10; /* decided from the header: the payload never needs to arrive */
        expect_wire(&w, BIG, "error EPROTO 1002\n");
    }
    /* The boundaries themselves are minimal. */
    wire_t w = {0};
    wire_frame_ex(&w, FIN | WS_OP_BINARY, LEN_16, KEY, p, 126);
    tu_str_t exp = {0};
    tu_str_printf(&exp, "binary first fin 126 ");
    tu_str_bytes(&exp, p, 126);
    tu_str_printf(&exp, "\n");
    expect_wire(&w, BIG, tu_str_get(&exp));
    tu_str_free(&exp);
    /* Non-minimal on a continuation too. */
    wire_text(&w, WS_OP_TEXT, "a");
    wire_frame_ex(&w, FIN | WS_OP_CONT, LEN_16, KEY, "b", 1);
    expect_wire(&w, BIG, "text first 1 \"a\"\nerror EPROTO 1002\n");
}

static void test_64bit_length_msb(void **state) {
    (void)state;
    /* MSB set: a protocol error, even with the largest cap (so not 1009). */
    uint8_t h[] = {FIN | WS_OP_BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0};
    expect_decode(h, sizeof(h), UINT32_MAX, "error EPROTO 1002\n");
    h[2] = 0xFF;
    memset(h + 3, 0xFF, 7);
    expect_decode(h, sizeof(h), UINT32_MAX, "error EPROTO 1002\n");
    /* Just below: a length the cap refuses instead. */
    h[2] = 0x7F;
    expect_decode(h, sizeof(h), UINT32_MAX, "error ETOOBIG 1009\n");
    /* 2^32 bytes with a cap of UINT32_MAX: one byte over. */
    uint8_t h32[] = {FIN | WS_OP_BINARY, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0};
    expect_decode(h32, sizeof(h32), UINT32_MAX, "error ETOOBIG 1009\n");
    /* Fewer than the 10 header bytes: still waiting. */
    expect_decode(h32, 9, UINT32_MAX, "incomplete 9\n");
}

static void test_continuation_without_message(void **state) {
    (void)state;
    wire_t w = {0};
    wire_text(&w, FIN | WS_OP_CONT, "x");
    expect_wire(&w, BIG, "error EPROTO 1002\n");
    wire_text(&w, WS_OP_CONT, "x");
    expect_wire(&w, BIG, "error EPROTO 1002\n");
    /* After a finished message there is none to continue. */
    wire_text(&w, WS_OP_TEXT, "a");
    wire_text(&w, FIN | WS_OP_CONT, "b");
    wire_text(&w, FIN | WS_OP_CONT, "c");
    expect_wire(&w, BIG, "text first 1 \"a\"\ntext fin 1 \"b\"\nerror EPROTO 1002\n");
    wire_text(&w, FIN | WS_OP_TEXT, "a");
    wire_text(&w, WS_OP_CONT, "b");
    expect_wire(&w, BIG, "text first fin 1 \"a\"\nerror EPROTO 1002\n");
}

static void test_new_message_inside_fragmented(void **state) {
    (void)state;
    uint8_t starts[] = {WS_OP_TEXT, FIN | WS_OP_TEXT, WS_OP_BINARY, FIN | WS_OP_BINARY};
    for (size_t i = 0; i < sizeof(starts); i++) {
        wire_t w = {0};
        wire_text(&w, WS_OP_BINARY, "a");
        wire_text(&w, starts[i], "b");
        expect_wire(&w, BIG, "binary first 1 \"a\"\nerror EPROTO 1002\n");
        wire_text(&w, WS_OP_TEXT, "a");
        wire_text(&w, WS_OP_CONT, "b");
        wire_text(&w, starts[i], "c");
        expect_wire(&w, BIG, "text first 1 \"a\"\ntext 1 \"b\"\nerror EPROTO 1002\n");
    }
}

/* ---- fragmentation ---- */

static void test_control_between_fragments(void **state) {
    (void)state;
    wire_t w = {0};
    wire_text(&w, WS_OP_TEXT, "Hel");
    wire_text(&w, FIN | WS_OP_PING, "p1");
    wire_text(&w, WS_OP_CONT, "lo ");
    wire_text(&w, FIN | WS_OP_PONG, "");
    wire_text(&w, FIN | WS_OP_PING, "p2");
    wire_text(&w, FIN | WS_OP_CONT, "world");
    wire_text(&w, FIN | WS_OP_TEXT, "next");
    expect_wire(&w, BIG,
                "text first 3 \"Hel\"\n"
                "ping 2 \"p1\"\n"
                "text 3 \"lo \"\n"
                "pong 0 \"\"\n"
                "ping 2 \"p2\"\n"
                "text fin 5 \"world\"\n"
                "text first fin 4 \"next\"\n");
    /* A close frame between fragments is reported too (the caller ends the session). */
    wire_frame(&w, WS_OP_BINARY, "\x01", 1);
    wire_close(&w, 1001, "bye", 3);
    expect_wire(&w, BIG, "binary first 1 \"\\x01\"\nclose 1001 3 \"bye\"\n");
}

static void test_empty_fragments(void **state) {
    (void)state;
    wire_t w = {0};
    wire_text(&w, WS_OP_TEXT, "");
    wire_text(&w, WS_OP_CONT, "");
    wire_text(&w, WS_OP_CONT, "x");
    wire_text(&w, FIN | WS_OP_CONT, "");
    wire_text(&w, FIN | WS_OP_TEXT, "");
    wire_frame(&w, FIN | WS_OP_BINARY, "", 0);
    expect_wire(&w, BIG,
                "text first 0 \"\"\n"
                "text 0 \"\"\n"
                "text 1 \"x\"\n"
                "text fin 0 \"\"\n"
                "text first fin 0 \"\"\n"
                "binary first fin 0 \"\"\n");
}

/* ---- UTF-8 in text messages ---- */

static void test_utf8_across_fragments(void **state) {
    (void)state;
    /* a, e-acute (2 bytes), euro sign (3), G clef (4), z: split at every byte. */
    static const char msg[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9ez";
    size_t n = sizeof(msg) - 1;
    for (size_t k = 0; k <= n; k++) {
        wire_t w = {0};
        wire_frame(&w, WS_OP_TEXT, msg, k);
        wire_frame(&w, FIN | WS_OP_CONT, msg + k, n - k);
        tu_str_t exp = {0};
        tu_str_printf(&exp, "text first %zu ", k);
        tu_str_bytes(&exp, msg, k);
        tu_str_printf(&exp, "\ntext fin %zu ", n - k);
        tu_str_bytes(&exp, msg + k, n - k);
        tu_str_printf(&exp, "\n");
        expect_wire(&w, BIG, tu_str_get(&exp));
        tu_str_free(&exp);
    }
    /* One byte per fragment, with a ping in the middle of the 4-byte character. */
    wire_t w = {0};
    tu_str_t exp = {0};
    for (size_t i = 0; i < n; i++) {
        uint8_t b0 = (uint8_t)((i == 0 ? WS_OP_TEXT : WS_OP_CONT) | (i == n - 1 ? FIN : 0));
        wire_frame(&w, b0, msg + i, 1);
        tu_str_printf(&exp, "text%s%s 1 ", i == 0 ? " first" : "", i == n - 1 ? " fin" : "");
        tu_str_bytes(&exp, msg + i, 1);
        tu_str_printf(&exp, "\n");
        if (i == 7) {
            wire_text(&w, FIN | WS_OP_PING, "");
            tu_str_printf(&exp, "ping 0 \"\"\n");
        }
    }
    expect_wire(&w, BIG, tu_str_get(&exp));
    tu_str_free(&exp);
}

static void test_utf8_invalid(void **state) {
    (void)state;
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {"\xc0\xaf", 2},                 /* overlong '/' */
        {"\xc1\xbf", 2},                 /* overlong U+007F */
        {"\xe0\x80\xaf", 3},             /* overlong, 3 bytes */
        {"\xe0\x9f\xbf", 3},             /* overlong U+07FF */
        {"\xf0\x80\x80\xaf", 4},         /* overlong, 4 bytes */
        {"\xf0\x8f\xbf\xbf", 4},         /* overlong U+FFFF */
        {"\xed\xa0\x80", 3},             /* U+D800, a surrogate */
        {"\xed\xbf\xbf", 3},             /* U+DFFF */
        {"\xed\xa0\x80\xed\xb0\x80", 6}, /* a surrogate pair, CESU-8 style */
        {"\xf4\x90\x80\x80", 4},         /* U+110000 */
        {"\xf5\x80\x80\x80", 4},         /* lead byte beyond U+10FFFF */
        {"\xf8\x88\x80\x80\x80", 5},     /* 5-byte form */
        {"\xff", 1},
        {"\xfe", 1},
        {"\x80", 1},         /* lone continuation */
        {"a\xe2\x82", 3},    /* truncated at the end of the message */
        {"\xf0\x9d\x84", 3}, /* truncated 4-byte character */
        {"\xc3", 1},         /* truncated 2-byte character */
        {"\xe2\x28\xa1", 3}, /* continuation replaced by ASCII */
        {"abc\x00\xc3(", 6}, /* NUL is fine, the bad byte after is not */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        wire_t w = {0};
        wire_frame(&w, FIN | WS_OP_TEXT, bad[i].s, bad[i].n);
        expect_wire(&w, BIG, "error EUTF8 1007\n");
        /* The same bytes in a binary message are not inspected. */
        wire_frame(&w, FIN | WS_OP_BINARY, bad[i].s, bad[i].n);
        tu_str_t exp = {0};
        tu_str_printf(&exp, "binary first fin %zu ", bad[i].n);
        tu_str_bytes(&exp, bad[i].s, bad[i].n);
        tu_str_printf(&exp, "\n");
        expect_wire(&w, BIG, tu_str_get(&exp));
        tu_str_free(&exp);
    }
    /* Truncated at the end of a message made of fragments: the fragment that ends a
     * character is fine, the message that ends inside one is not. */
    wire_t w = {0};
    wire_text(&w, WS_OP_TEXT, "a\xe2");
    wire_text(&w, FIN | WS_OP_CONT, "\x82");
    expect_wire(&w, BIG, "text first 2 \"a\\xe2\"\nerror EUTF8 1007\n");
    /* An invalid byte fails at once, before the message ends (fail fast). */
    wire_text(&w, WS_OP_TEXT, "ok\xc0\xaf");
    expect_wire(&w, BIG, "error EUTF8 1007\n");
    wire_text(&w, WS_OP_TEXT, "\xe2\x82");
    wire_text(&w, WS_OP_CONT, "\x28");
    expect_wire(&w, BIG, "text first 2 \"\\xe2\\x82\"\nerror EUTF8 1007\n");
    /* A message's state does not leak into the next: the first ends cleanly, the second
     * starts fresh. */
    wire_text(&w, FIN | WS_OP_TEXT, "\xe2\x82\xac");
    wire_text(&w, FIN | WS_OP_TEXT, "\x82");
    expect_wire(&w, BIG, "text first fin 3 \"\\xe2\\x82\\xac\"\nerror EUTF8 1007\n");
}

/* ---- close frames ---- */

static void test_close_empty_and_short(void **state) {
    (void)state;
    wire_t w = {0};
    wire_frame(&w, FIN | WS_OP_CLOSE, "", 0);
    expect_wire(&w, BIG, "close 1005 0 \"\"\n");
    wire_frame(&w, FIN | WS_OP_CLOSE, "\x03", 1);
    expect_wire(&w, BIG, "error EPROTO 1002\n");
}

static void test_close_codes(void **state) {
    (void)state;
    static const struct {
        uint16_t code;
        bool valid;
    } codes[] = {
        {0, false},    {999, false},  {1000, true},   {1001, true}, {1002, true}, {1003, true},
        {1004, false}, {1005, false}, {1006, false},  {1007, true}, {1008, true}, {1009, true},
        {1010, true},  {1011, true},  {1012, true},   {1013, true}, {1014, true}, {1015, false},
        {1016, false}, {2000, false}, {2999, false},  {3000, true}, {3999, true}, {4000, true},
        {4999, true},  {5000, false}, {65535, false},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_int_equal(ws_close_code_valid(codes[i].code), codes[i].valid);
        wire_t w = {0};
        wire_close(&w, codes[i].code, "", 0);
        char exp[64];
        if (codes[i].valid)
            snprintf(exp, sizeof(exp), "close %u 0 \"\"\n", codes[i].code);
        else
            snprintf(exp, sizeof(exp), "error EPROTO 1002\n");
        expect_wire(&w, BIG, exp);
    }
}

static void test_close_code_valid_exhaustive(void **state) {
    (void)state;
    for (uint32_t c = 0; c <= 0xFFFF; c++) {
        bool want =
            (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
        if (ws_close_code_valid((uint16_t)c) != want)
            fail_msg("ws_close_code_valid(%u) != %d", c, want);
    }
}

static void test_close_reason(void **state) {
    (void)state;
    wire_t w = {0};
    wire_close(&w, 1000, "normal \xe2\x82\xac", 10);
    expect_wire(&w, BIG, "close 1000 10 \"normal \\xe2\\x82\\xac\"\n");
    /* The longest reason: 123 bytes. */
    char r[123];
    memset(r, 'r', sizeof(r));
    wire_close(&w, 4000, r, sizeof(r));
    tu_str_t exp = {0};
    tu_str_printf(&exp, "close 4000 123 ");
    tu_str_bytes(&exp, r, sizeof(r));
    tu_str_printf(&exp, "\n");
    expect_wire(&w, BIG, tu_str_get(&exp));
    tu_str_free(&exp);
    /* Invalid UTF-8 reasons: 1007. */
    wire_close(&w, 1000, "\xc0\xaf", 2);
    expect_wire(&w, BIG, "error EUTF8 1007\n");
    wire_close(&w, 1000, "ok\xe2\x82", 4); /* truncated character */
    expect_wire(&w, BIG, "error EUTF8 1007\n");
    wire_close(&w, 1001, "\xed\xa0\x80", 3);
    expect_wire(&w, BIG, "error EUTF8 1007\n");
    /* An invalid code with an invalid reason: the code is checked first. */
    wire_close(&w, 1005, "\xff", 1);
    expect_wire(&w, BIG, "error EPROTO 1002\n");
}

/* ---- the message size cap ---- */

static void test_size_cap_single_frame(void **state) {
    (void)state;
    uint8_t p[70000];
    memset(p, 's', sizeof(p));
    wire_t w = {0};
    /* 7-bit length: exactly the cap passes, one more fails. */
    wire_frame(&w, FIN | WS_OP_TEXT, p, 10);
    expect_wire(&w, 10, "text first fin 10 \"ssssssssss\"\n");
    wire_frame(&w, FIN | WS_OP_TEXT, p, 11);
    expect_wire(&w, 10, "error ETOOBIG 1009\n");
    /* Decided from the header alone: two bytes, no mask key, no payload. */
    wire_frame(&w, FIN | WS_OP_TEXT, p, 11);
    w.len = 2;
    expect_wire(&w, 10, "error ETOOBIG 1009\n");
    /* 16-bit length: the four header bytes suffice, three do not. */
    wire_frame(&w, FIN | WS_OP_BINARY, p, 300);
    w.len = 4;
    expect_wire(&w, 299, "error ETOOBIG 1009\n");
    wire_frame(&w, FIN | WS_OP_BINARY, p, 300);
    w.len = 3;
    expect_wire(&w, 299, "incomplete 3\n");
    /* 64-bit length: ten header bytes. */
    wire_frame(&w, FIN | WS_OP_BINARY, p, 70000);
    w.len = 10;
    expect_wire(&w, 65536, "error ETOOBIG 1009\n");
    /* A cap of zero allows only empty messages. */
    wire_frame(&w, FIN | WS_OP_BINARY, p, 0);
    wire_frame(&w, FIN | WS_OP_BINARY, p, 1);
    expect_wire(&w, 0, "binary first fin 0 \"\"\nerror ETOOBIG 1009\n");
}

static void test_size_cap_across_fragments(void **state) {
    (void)state;
    wire_t w = {0};
    /* 6 + 4 = the cap of 10: fine; the next message starts counting from zero. */
    wire_text(&w, WS_OP_TEXT, "aaaaaa");
    wire_text(&w, FIN | WS_OP_PING, "not counted, control");
    wire_text(&w, FIN | WS_OP_CONT, "bbbb");
    wire_text(&w, FIN | WS_OP_TEXT, "cccccccccc");
    expect_wire(&w, 10,
                "text first 6 \"aaaaaa\"\n"
                "ping 20 \"not counted, control\"\n"
                "text fin 4 \"bbbb\"\n"
                "text first fin 10 \"cccccccccc\"\n");
    /* 6 + 5 = 11: refused from the second fragment's header, payload absent. */
    wire_text(&w, WS_OP_TEXT, "aaaaaa");
    wire_text(&w, FIN | WS_OP_CONT, "bbbbb");
    w.len -= 5 + 4; /* drop the second fragment's mask key and payload */
    expect_wire(&w, 10, "text first 6 \"aaaaaa\"\nerror ETOOBIG 1009\n");
    /* Many small fragments add up. */
    for (int i = 0; i < 10; i++)
        wire_text(&w, (uint8_t)(i ? WS_OP_CONT : WS_OP_BINARY), "x");
    wire_text(&w, FIN | WS_OP_CONT, "y");
    tu_str_t exp = {0};
    for (int i = 0; i < 10; i++)
        tu_str_printf(&exp, "binary%s 1 \"x\"\n", i ? "" : " first");
    tu_str_printf(&exp, "error ETOOBIG 1009\n");
    expect_wire(&w, 10, tu_str_get(&exp));
    tu_str_free(&exp);
}

/* ---- need and EAGAIN, called directly ---- */

static void test_need_reporting(void **state) {
    (void)state;
    uint8_t p[300];
    memset(p, 'q', sizeof(p));
    wire_t w = {0};
    wire_frame(&w, FIN | WS_OP_BINARY, p, 300); /* 2 + 2 + 4 header bytes */
    ws_decoder_t d;
    ws_decoder_init(&d, BIG);
    ws_event_t ev;
    size_t need;
    uint16_t code;
    for (size_t have = 0; have < w.len; have++) {
        need = 12345;
        assert_int_equal(ws_decode(&d, w.b, have, &ev, &need, &code), PD_EAGAIN);
        assert_int_equal(need, have < 8 ? 0 : 308);
    }
    assert_int_equal(ws_decode(&d, w.b, w.len, &ev, &need, &code), 308);
    assert_int_equal(ev.len, 300);
    assert_memory_equal(ev.payload, p, 300);
    assert_ptr_equal(ev.payload, w.b + 8);
    assert_int_equal(need, 0);
    wire_free(&w);
}

static void test_decoder_init(void **state) {
    (void)state;
    ws_decoder_t d;
    memset(&d, 0xAB, sizeof(d));
    ws_decoder_init(&d, 1234);
    assert_int_equal(d.max_message, 1234);
    assert_int_equal(d.msg_len, 0);
    assert_int_equal(d.msg_opcode, 0);
    assert_int_equal(d.utf8_state, UTF8_ACCEPT);
    assert_true(sizeof(ws_decoder_t) <= 12);
}

/* ---- a property: random valid streams decode to what was sent ---- */

/* Appends a random valid UTF-8 character to buf; returns its length. */
static size_t random_char(uint64_t *rs, uint8_t *buf) {
    uint32_t cp;
    switch (tu_rand(rs) % 4) {
    case 0:
        cp = (uint32_t)(tu_rand(rs) % 0x80);
        break;
    case 1:
        cp = 0x80 + (uint32_t)(tu_rand(rs) % (0x800 - 0x80));
        break;
    case 2:
        do
            cp = 0x800 + (uint32_t)(tu_rand(rs) % (0x10000 - 0x800));
        while (cp >= 0xD800 && cp <= 0xDFFF);
        break;
    default:
        cp = 0x10000 + (uint32_t)(tu_rand(rs) % (0x110000 - 0x10000));
        break;
    }
    if (cp < 0x80) {
        buf[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        buf[0] = (uint8_t)(0xC0 | cp >> 6);
        buf[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        buf[0] = (uint8_t)(0xE0 | cp >> 12);
        buf[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    buf[0] = (uint8_t)(0xF0 | cp >> 18);
    buf[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    buf[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static void test_random_streams(void **state) {
    (void)state;
    uint64_t rs = 0x9E3779B97F4A7C15ULL;
    enum { MSGS = 8, MAXLEN = 700 };
    for (int round = 0; round < 300; round++) {
        wire_t w = {0};
        tu_str_t exp = {0};
        for (int m = 0; m < MSGS; m++) {
            bool text = tu_rand(&rs) & 1;
            uint8_t msg[MAXLEN + 4];
            size_t len = 0, target = tu_rand(&rs) % MAXLEN;
            while (len < target)
                len += text ? random_char(&rs, msg + len) : (msg[len] = (uint8_t)tu_rand(&rs), 1);
            /* Cut into fragments anywhere (even inside characters) with controls between. */
            size_t off = 0;
            bool first = true;
            do {
                size_t left = len - off;
                size_t n = left ? (size_t)(tu_rand(&rs) % (left + 1)) : 0;
                if (tu_rand(&rs) % 3 == 0)
                    n = left;
                bool fin = off + n == len;
                uint8_t key[4];
                uint64_t k = tu_rand(&rs);
                memcpy(key, &k, 4);
                uint8_t op = first ? (text ? WS_OP_TEXT : WS_OP_BINARY) : WS_OP_CONT;
                wire_frame_ex(&w, (uint8_t)(op | (fin ? FIN : 0)), LEN_MIN, key, msg + off, n);
                tu_str_printf(&exp, "%s%s%s %zu ", text ? "text" : "binary", first ? " first" : "",
                              fin ? " fin" : "", n);
                tu_str_bytes(&exp, msg + off, n);
                tu_str_printf(&exp, "\n");
                off += n;
                first = false;
                if (!fin && tu_rand(&rs) % 4 == 0) {
                    wire_frame_ex(&w, FIN | WS_OP_PING, LEN_MIN, key, "hb", 2);
                    tu_str_printf(&exp, "ping 2 \"hb\"\n");
                }
                if (fin)
                    break;
            } while (1);
        }
        /* Random cuts rather than every cut: these streams are long. */
        size_t ends[64], n = 0, at = 0;
        while (at < w.len && n < 63) {
            at += 1 + tu_rand(&rs) % 300;
            if (at > w.len)
                at = w.len;
            ends[n++] = at;
        }
        if (ends[n - 1] != w.len)
            ends[n++] = w.len;
        struct dec_ctx c = {MSGS * MAXLEN};
        tu_str_t got = {0};
        run_decoder(&c, w.b, w.len, ends, n, &got);
        assert_string_equal(tu_str_get(&got), tu_str_get(&exp));
        tu_str_free(&got);
        tu_str_free(&exp);
        wire_free(&w);
    }
}

/* ---- the encoder ---- */

static void test_header_encode_lengths(void **state) {
    (void)state;
    static const struct {
        uint64_t len;
        size_t hlen;
        uint8_t hdr[10];
    } cases[] = {
        {0, 2, {0x81, 0x00}},
        {1, 2, {0x81, 0x01}},
        {125, 2, {0x81, 0x7D}},
        {126, 4, {0x81, 0x7E, 0x00, 0x7E}},
        {65535, 4, {0x81, 0x7E, 0xFF, 0xFF}},
        {65536, 10, {0x81, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}},
        {0x0102030405060708ULL, 10, {0x81, 0x7F, 1, 2, 3, 4, 5, 6, 7, 8}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t out[WS_CLIENT_HDR_MAX + 2];
        memset(out, 0xEE, sizeof(out));
        size_t n = ws_header_encode(out, WS_OP_TEXT, true, cases[i].len, NULL);
        assert_int_equal(n, cases[i].hlen);
        assert_memory_equal(out, cases[i].hdr, n);
        for (size_t j = n; j < sizeof(out); j++)
            assert_int_equal(out[j], 0xEE); /* nothing written past the header */

        /* Masked: the mask bit and the key, four bytes longer. */
        memset(out, 0xEE, sizeof(out));
        n = ws_header_encode(out, WS_OP_TEXT, true, cases[i].len, KEY);
        assert_int_equal(n, cases[i].hlen + 4);
        assert_int_equal(out[0], cases[i].hdr[0]);
        assert_int_equal(out[1], cases[i].hdr[1] | 0x80);
        assert_memory_equal(out + 2, cases[i].hdr + 2, cases[i].hlen - 2);
        assert_memory_equal(out + cases[i].hlen, KEY, 4);
        for (size_t j = n; j < sizeof(out); j++)
            assert_int_equal(out[j], 0xEE);
    }
    /* FIN clear and other opcodes. */
    uint8_t out[WS_CLIENT_HDR_MAX];
    assert_int_equal(ws_header_encode(out, WS_OP_BINARY, false, 3, NULL), 2);
    assert_int_equal(out[0], 0x02);
    assert_int_equal(ws_header_encode(out, WS_OP_CONT, true, 3, NULL), 2);
    assert_int_equal(out[0], 0x80);
    assert_int_equal(ws_header_encode(out, WS_OP_CLOSE, true, 2, NULL), 2);
    assert_int_equal(out[0], 0x88);
    assert_int_equal(ws_header_encode(out, WS_OP_PONG, true, 0, NULL), 2);
    assert_int_equal(out[0], 0x8A);
}

/* Encodes a masked frame with ws_header_encode + ws_mask and checks the decoder gives the
 * payload back. */
static void roundtrip(uint8_t opcode, bool fin, size_t len) {
    uint8_t *p = malloc(len + 1), *frame = malloc(len + WS_CLIENT_HDR_MAX);
    assert_non_null(p);
    assert_non_null(frame);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)('A' + i % 50);
    static const uint8_t key[4] = {0xde, 0xad, 0xbe, 0xef};
    size_t h = ws_header_encode(frame, opcode, fin, len, key);
    memcpy(frame + h, p, len);
    ws_mask(frame + h, len, key, 0);
    if (len >= 4)
        assert_int_not_equal(memcmp(frame + h, p, 4), 0);

    ws_decoder_t d;
    ws_decoder_init(&d, BIG);
    ws_event_t ev;
    size_t need;
    uint16_t code = 0;
    int rc = ws_decode(&d, frame, h + len, &ev, &need, &code);
    assert_int_equal(rc, (int)(h + len));
    assert_int_equal(ev.len, len);
    assert_memory_equal(ev.payload, p, len);
    if (opcode == WS_OP_PING) {
        assert_int_equal(ev.type, WS_EV_PING);
    } else {
        assert_int_equal(ev.type, WS_EV_DATA);
        assert_int_equal(ev.opcode, opcode);
        assert_true(ev.first);
        assert_int_equal(ev.fin, fin);
    }

    /* The unmasked (server) form of the same frame is refused by the server's decoder. */
    h = ws_header_encode(frame, opcode, fin, len, NULL);
    memcpy(frame + h, p, len);
    ws_decoder_init(&d, BIG);
    assert_int_equal(ws_decode(&d, frame, h + len, &ev, &need, &code), PD_EPROTO);
    assert_int_equal(code, WS_CLOSE_PROTOCOL);
    free(p);
    free(frame);
}

static void test_header_encode_roundtrip(void **state) {
    (void)state;
    size_t lens[] = {0, 1, 5, 125, 126, 127, 65535, 65536, 70001};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        roundtrip(WS_OP_TEXT, true, lens[i]);
        roundtrip(WS_OP_TEXT, false, lens[i]);
        roundtrip(WS_OP_BINARY, true, lens[i]);
    }
    roundtrip(WS_OP_PING, true, 0);
    roundtrip(WS_OP_PING, true, 125);
}

static void test_mask_every_offset(void **state) {
    (void)state;
    uint64_t rs = 42;
    for (size_t off = 0; off < 12; off++) {
        for (size_t len = 0; len <= 40; len++) {
            uint8_t key[4], data[48], want[48];
            for (int i = 0; i < 4; i++)
                key[i] = (uint8_t)tu_rand(&rs);
            for (size_t i = 0; i < len; i++)
                data[i] = (uint8_t)tu_rand(&rs);
            for (size_t i = 0; i < len; i++)
                want[i] = data[i] ^ key[(off + i) % 4];
            /* At the end of a guarded page, at every alignment, so over-reads fault. */
            tu_guard_t g;
            tu_guard_init(&g, 64);
            uint8_t *p = tu_guard_place(&g, data, len);
            ws_mask(p, len, key, off);
            assert_memory_equal(p, want, len);
            ws_mask(p, len, key, off); /* an involution */
            assert_memory_equal(p, data, len);
            tu_guard_destroy(&g);
        }
    }
    /* Masking in two pieces, the second continuing at the first's length. */
    uint8_t a[100], b[100];
    for (int i = 0; i < 100; i++)
        a[i] = b[i] = (uint8_t)i;
    for (size_t cut = 0; cut <= 100; cut++) {
        memcpy(b, a, 100);
        ws_mask(b, cut, KEY, 0);
        ws_mask(b + cut, 100 - cut, KEY, cut);
        for (size_t i = 0; i < 100; i++)
            assert_int_equal(b[i], a[i] ^ KEY[i % 4]);
    }
}

/* Parses an unmasked server frame; returns the header length and sets *len. */
static size_t parse_server_frame(const uint8_t *f, size_t flen, uint8_t *b0, uint64_t *len) {
    assert_true(flen >= 2);
    assert_int_equal(f[1] & 0x80, 0); /* servers never mask */
    *b0 = f[0];
    size_t h = 2 + ((f[1] & 0x7F) == 126 ? 2 : (f[1] & 0x7F) == 127 ? 8 : 0);
    *len = header_payload_len(f);
    assert_int_equal(h + *len, flen);
    return h;
}

static void test_frame_seal(void **state) {
    (void)state;
    size_t lens[] = {0, 1, 125, 126, 65535, 65536, 100000};
    size_t hlens[] = {2, 2, 2, 4, 4, 10, 10};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        pd_obuf_t *b = pd_obuf_new(lens[i]);
        assert_non_null(b);
        for (size_t j = 0; j < lens[i]; j++) {
            uint8_t c = (uint8_t)j;
            assert_int_equal(pd_obuf_append(&b, &c, 1), 0);
        }
        ws_frame_seal(b, WS_OP_TEXT);
        assert_int_equal(b->head, PD_OBUF_HEADROOM - hlens[i]);
        assert_int_equal(pd_obuf_len(b), hlens[i] + lens[i]);
        assert_int_equal(pd_obuf_payload_len(b), lens[i]);
        uint8_t b0;
        uint64_t plen;
        size_t h = parse_server_frame(pd_obuf_bytes(b), pd_obuf_len(b), &b0, &plen);
        assert_int_equal(h, hlens[i]);
        assert_int_equal(b0, FIN | WS_OP_TEXT);
        assert_int_equal(plen, lens[i]);
        assert_ptr_equal(pd_obuf_bytes(b) + h, pd_obuf_payload(b)); /* no copy of the payload */
        for (size_t j = 0; j < lens[i]; j++)
            assert_int_equal(pd_obuf_payload(b)[j], (uint8_t)j);
        pd_obuf_release(b);
    }
}

static void test_frame_new(void **state) {
    (void)state;
    char src[] = "presence";
    pd_obuf_t *b = ws_frame_new(WS_OP_PONG, src, 8);
    assert_non_null(b);
    src[0] = 'X'; /* the frame holds a copy */
    assert_int_equal(b->refs, 1);
    static const uint8_t want[] = {0x8A, 0x08, 'p', 'r', 'e', 's', 'e', 'n', 'c', 'e'};
    assert_int_equal(pd_obuf_len(b), sizeof(want));
    assert_memory_equal(pd_obuf_bytes(b), want, sizeof(want));
    pd_obuf_release(b);

    b = ws_frame_new(WS_OP_BINARY, NULL, 0);
    assert_non_null(b);
    assert_int_equal(pd_obuf_len(b), 2);
    assert_memory_equal(pd_obuf_bytes(b), "\x82\x00", 2);
    pd_obuf_release(b);
}

static void check_close_frame(pd_obuf_t *b, const void *want_body, size_t want_len) {
    assert_non_null(b);
    uint8_t b0;
    uint64_t plen;
    size_t h = parse_server_frame(pd_obuf_bytes(b), pd_obuf_len(b), &b0, &plen);
    assert_int_equal(b0, FIN | WS_OP_CLOSE);
    assert_int_equal(plen, want_len);
    assert_memory_equal(pd_obuf_bytes(b) + h, want_body, want_len);
    pd_obuf_release(b);
}

static void test_close_frame_new(void **state) {
    (void)state;
    check_close_frame(ws_close_frame_new(0, NULL), "", 0);
    check_close_frame(ws_close_frame_new(0, "ignored without a code"), "", 0);
    check_close_frame(ws_close_frame_new(1000, NULL), "\x03\xe8", 2);
    check_close_frame(ws_close_frame_new(1001, ""), "\x03\xe9", 2);
    check_close_frame(ws_close_frame_new(4000, "no heartbeat"), "\x0f\xa0no heartbeat", 14);
    /* A long reason is cut to fit 125 bytes. */
    char r[300];
    memset(r, 'x', sizeof(r) - 1);
    r[sizeof(r) - 1] = '\0';
    uint8_t want[125] = {0x03, 0xf0};
    memset(want + 2, 'x', 123);
    check_close_frame(ws_close_frame_new(1008, r), want, 125);
    /* 123 bytes exactly: kept whole. */
    r[123] = '\0';
    check_close_frame(ws_close_frame_new(1008, r), want, 125);
}

static void test_close_frame_truncation_utf8(void **state) {
    (void)state;
    /* A multibyte character placed across the 123-byte limit at every offset: the reason is
     * cut at the last character boundary at or below 123 bytes, so it stays valid UTF-8. */
    static const char *chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e"};
    for (size_t c = 0; c < 3; c++) {
        size_t clen = strlen(chars[c]);
        for (size_t k = 110; k <= 125; k++) {
            char reason[200];
            memset(reason, 'a', k);
            memcpy(reason + k, chars[c], clen);
            memset(reason + k + clen, 'z', 20);
            reason[k + clen + 20] = '\0';
            /* Expected: the longest prefix of at most 123 bytes ending on a boundary. */
            size_t want = 123;
            if (k < 123 && k + clen > 123)
                want = k;
            pd_obuf_t *b = ws_close_frame_new(1000, reason);
            assert_non_null(b);
            uint8_t b0;
            uint64_t plen;
            size_t h = parse_server_frame(pd_obuf_bytes(b), pd_obuf_len(b), &b0, &plen);
            const uint8_t *body = pd_obuf_bytes(b) + h;
            assert_int_equal(plen, 2 + want);
            assert_memory_equal(body + 2, reason, want);
            assert_true(utf8_is_valid(body + 2, want));
            pd_obuf_release(b);
        }
    }
}

/* ---- output buffers (util/obuf.h), which frames are sealed in ---- */

static void test_obuf(void **state) {
    (void)state;
    pd_obuf_t *b = pd_obuf_new(0);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->head, PD_OBUF_HEADROOM);
    assert_int_equal(b->end, PD_OBUF_HEADROOM);
    assert_int_equal(pd_obuf_len(b), 0);
    assert_int_equal(pd_obuf_payload_len(b), 0);
    /* Appending grows it and keeps what was there. */
    char expect[5000];
    for (int i = 0; i < 5000; i++) {
        char c = (char)('a' + i % 26);
        expect[i] = c;
        assert_int_equal(pd_obuf_append(&b, &c, 1), 0);
    }
    assert_int_equal(pd_obuf_payload_len(b), 5000);
    assert_memory_equal(pd_obuf_payload(b), expect, 5000);
    assert_true(b->cap >= b->end);
    /* Reserving room that is there already changes nothing. */
    pd_obuf_t *before = b;
    uint32_t cap = b->cap;
    assert_int_equal(pd_obuf_reserve(&b, b->cap - b->end), 0);
    assert_ptr_equal(b, before);
    assert_int_equal(b->cap, cap);
    /* Too much is refused and the buffer left untouched. */
    assert_int_equal(pd_obuf_reserve(&b, (size_t)UINT32_MAX), PD_ENOMEM);
    assert_int_equal(pd_obuf_payload_len(b), 5000);
    assert_null(pd_obuf_new((size_t)UINT32_MAX));
    /* References: the last release frees (the leak checker holds us to it). */
    assert_ptr_equal(pd_obuf_retain(b), b);
    assert_int_equal(b->refs, 2);
    pd_obuf_release(b);
    assert_int_equal(b->refs, 1);
    pd_obuf_release(b);
    pd_obuf_release(NULL);

    b = pd_obuf_from("abc", 3);
    assert_non_null(b);
    assert_int_equal(pd_obuf_len(b), 3);
    assert_memory_equal(pd_obuf_bytes(b), "abc", 3);
    assert_int_equal(pd_obuf_append(&b, "de", 2), 0);
    assert_memory_equal(pd_obuf_bytes(b), "abcde", 5);
    assert_int_equal(pd_obuf_append(&b, NULL, 0), 0);
    assert_int_equal(pd_obuf_len(b), 5);
    pd_obuf_release(b);
    b = pd_obuf_from(NULL, 0);
    assert_non_null(b);
    assert_int_equal(pd_obuf_len(b), 0);
    pd_obuf_release(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_small_lengths),
        cmocka_unit_test(test_16bit_lengths),
        cmocka_unit_test(test_64bit_lengths),
        cmocka_unit_test(test_several_frames_in_one_read),
        cmocka_unit_test(test_incomplete_frame_left_pending),
        cmocka_unit_test(test_unmasked_client_frame),
        cmocka_unit_test(test_rsv_bits),
        cmocka_unit_test(test_reserved_opcodes),
        cmocka_unit_test(test_control_frame_rules),
        cmocka_unit_test(test_nonminimal_lengths),
        cmocka_unit_test(test_64bit_length_msb),
        cmocka_unit_test(test_continuation_without_message),
        cmocka_unit_test(test_new_message_inside_fragmented),
        cmocka_unit_test(test_control_between_fragments),
        cmocka_unit_test(test_empty_fragments),
        cmocka_unit_test(test_utf8_across_fragments),
        cmocka_unit_test(test_utf8_invalid),
        cmocka_unit_test(test_close_empty_and_short),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_close_code_valid_exhaustive),
        cmocka_unit_test(test_close_reason),
        cmocka_unit_test(test_size_cap_single_frame),
        cmocka_unit_test(test_size_cap_across_fragments),
        cmocka_unit_test(test_need_reporting),
        cmocka_unit_test(test_decoder_init),
        cmocka_unit_test(test_random_streams),
        cmocka_unit_test(test_header_encode_lengths),
        cmocka_unit_test(test_header_encode_roundtrip),
        cmocka_unit_test(test_mask_every_offset),
        cmocka_unit_test(test_frame_seal),
        cmocka_unit_test(test_frame_new),
        cmocka_unit_test(test_close_frame_new),
        cmocka_unit_test(test_close_frame_truncation_utf8),
        cmocka_unit_test(test_obuf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
