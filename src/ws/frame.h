/* RFC 6455 framing: a pure, incremental decoder and an encoder. No I/O, no allocation.
 *
 * The decoder takes bytes as they arrive and yields one event per complete frame: a data frame
 * (a whole message or one fragment of it), ping, pong or close. It enforces everything section
 * 5 requires of a server: client frames masked, reserved bits clear, known opcodes, control
 * frames unfragmented and at most 125 bytes, minimal length encoding, continuation only inside
 * a message, text valid UTF-8 across fragments, close codes and reasons valid, and the message
 * size cap. Payloads are unmasked in place in the caller's buffer.
 *
 * Cost: ws_decoder_t is 12 bytes; decoding touches each payload byte twice (unmask, UTF-8).
 */
#ifndef PD_WS_FRAME_H
#define PD_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/obuf.h"

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA
};

/* Close codes (RFC 6455 section 7.4.1 and the IANA registry) used by presenced. */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005, /* never sent: "the peer's close frame had no code" */
    WS_CLOSE_ABNORMAL = 1006,  /* never sent: "the connection ended without a close frame" */
    WS_CLOSE_BAD_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_RESTART = 1012
};

#define WS_CONTROL_MAX    125 /* payload bytes of a control frame */
#define WS_CLIENT_HDR_MAX 14  /* 2 + 8 length + 4 mask */

enum ws_event_type {
    WS_EV_DATA, /* a text/binary frame: the whole message when first && fin */
    WS_EV_PING,
    WS_EV_PONG,
    WS_EV_CLOSE
};

typedef struct ws_event {
    uint8_t type;        /* enum ws_event_type */
    uint8_t opcode;      /* WS_OP_TEXT or WS_OP_BINARY for data: the message's opcode */
    bool first;          /* data: first fragment of its message */
    bool fin;            /* data: last fragment of its message */
    uint16_t close_code; /* close: the peer's code, WS_CLOSE_NO_STATUS when it sent none */
    uint8_t *payload;    /* unmasked in place; for close, the reason (after the code) */
    size_t len;          /* bytes at payload */
} ws_event_t;

typedef struct ws_decoder {
    uint32_t max_message; /* bytes a message may have over all its fragments */
    uint32_t msg_len;     /* bytes of the message in progress */
    uint8_t msg_opcode;   /* opcode of the message in progress, 0 when none */
    uint8_t utf8_state;   /* UTF-8 validation state of the text message in progress */
} ws_decoder_t;

/* Initialises a decoder for messages of at most max_message bytes. */
void ws_decoder_init(ws_decoder_t *d, uint32_t max_message);

/* Decodes one frame from buf[0..len), unmasking its payload in place.
 * Returns the bytes consumed (> 0) with *ev filled in; ev->payload points into buf.
 * Returns PD_EAGAIN when the frame is incomplete: *need is then the total bytes the frame
 * needs (header and payload) once the header is complete, or 0 while even the header is not.
 * Returns PD_EPROTO (or PD_ETOOBIG, PD_EUTF8) on a violation, with *close_code set to the close
 * code to send (1002, 1009 or 1007); the decoder must not be used again after an error. */
int ws_decode(ws_decoder_t *d, uint8_t *buf, size_t len, ws_event_t *ev, size_t *need,
              uint16_t *close_code);

/* True when code may appear in a close frame on the wire (1000-1003, 1007-1014, 3000-4999). */
bool ws_close_code_valid(uint16_t code);

/* Writes a frame header for a payload of len bytes into out (at least WS_CLIENT_HDR_MAX bytes).
 * mask NULL makes a server frame (unmasked); otherwise the header carries the mask key and the
 * caller masks the payload with ws_mask(). Returns the header length. */
size_t ws_header_encode(uint8_t *out, uint8_t opcode, bool fin, uint64_t len,
                        const uint8_t mask[4]);

/* XORs len bytes with the mask key, starting at key position offset % 4. */
void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], size_t offset);

/* Turns b's payload into a complete server frame by writing the header into its headroom.
 * Call once per buffer, before sharing it. */
void ws_frame_seal(pd_obuf_t *b, uint8_t opcode);

/* New sealed frame with a copy of payload; refs = 1; NULL when out of memory. */
pd_obuf_t *ws_frame_new(uint8_t opcode, const void *payload, size_t len);

/* New sealed close frame with code and reason (truncated to fit 125 bytes on a UTF-8
 * boundary). Code 0 makes a close frame with no body. NULL when out of memory. */
pd_obuf_t *ws_close_frame_new(uint16_t code, const char *reason);

#endif
