/* Fuzzes proto_decode with small limits. A decoded message must hold only what validation
 * promises (known type, labels and ids within their limits, UTF-8 without controls), must
 * re-encode into frames that parse as JSON, and must free cleanly; a refused one must leave
 * nothing behind and yield an error frame that parses. The canonical-heartbeat fast path must
 * agree with the full decoder. Any violation aborts.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "presence/presence.h"
#include "proto/proto.h"
#include "util/error.h"
#include "util/obuf.h"
#include "util/utf8.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_proto: check failed: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A sealed text frame whose payload is one JSON object (and UTF-8 when utf8 is asked). */
static void check_frame(pd_obuf_t *b, bool utf8) {
    CHECK(b != NULL);
    const uint8_t *f = pd_obuf_bytes(b);
    CHECK(f[0] == 0x81);
    const char *p = (const char *)pd_obuf_payload(b);
    size_t n = pd_obuf_payload_len(b);
    if (utf8)
        CHECK(utf8_is_valid((const uint8_t *)p, n));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(p, n, &end, 0);
    CHECK(j != NULL && cJSON_IsObject(j));
    CHECK(end == p + n);
    cJSON_Delete(j);
    pd_obuf_release(b);
}

static void check_opt(const proto_opt_t *o, size_t max, bool allow_empty) {
    CHECK(o->state <= PROTO_SET);
    if (o->state == PROTO_SET) {
        CHECK(o->v.s != NULL && strlen(o->v.s) == o->v.len);
        CHECK(pd_label_valid(o->v.s, o->v.len, max, allow_empty));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The decoder may modify its input: give it a copy of exactly size bytes. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    bool input_utf8 = utf8_is_valid(data, size);
    proto_id_t id_web, id_none;
    bool canon_web = proto_is_canonical_heartbeat(data, size, "web", 3, &id_web);
    bool canon_none = proto_is_canonical_heartbeat(data, size, NULL, 0, &id_none);
    /* Without room for an id, only the id-less forms pass. */
    CHECK(!proto_is_canonical_heartbeat(data, size, "web", 3, NULL) ||
          (canon_web && id_web.kind == PROTO_ID_NONE));

    proto_limits_t lim = {.max_ids = 4};
    proto_msg_t m;
    proto_error_t err;
    int rc = proto_decode(buf, size, &lim, &m, &err);

    if (canon_web || canon_none) {
        CHECK(rc == 0 && m.type == PROTO_HEARTBEAT);
        CHECK(m.device.state == PROTO_ABSENT ||
              (m.device.state == PROTO_SET && canon_web && strcmp(m.device.v.s, "web") == 0));
        /* The fast path reads the same id as the decoder. */
        const proto_id_t *fid = canon_web ? &id_web : &id_none;
        CHECK(fid->kind == m.id.kind);
        CHECK(fid->kind != PROTO_ID_INT || fid->i == m.id.i);
        CHECK(fid->kind != PROTO_ID_STR || strcmp(fid->s, m.id.s) == 0);
    }

    if (rc == 0) {
        /* One JSON text (RFC 8259): no BOM, no control byte anywhere but the whitespace ones
         * between tokens (strings hold none raw). */
        CHECK(size < 3 || memcmp(data, "\xef\xbb\xbf", 3) != 0);
        for (size_t i = 0; i < size; i++)
            CHECK(data[i] >= 0x20 || data[i] == '\t' || data[i] == '\n' || data[i] == '\r');
        CHECK(m.type < PROTO_TYPE_COUNT);
        CHECK(m.status >= -1 && m.status <= PD_BUSY);
        CHECK(m.auto_away >= -1 && m.auto_away <= 1);
        CHECK(m.nids <= lim.max_ids);
        CHECK(m.custom_status_expires_in >= 0 && m.custom_status_expires_in <= 31 * 86400.0);
        check_opt(&m.device, PD_DEVICE_MAX, false);
        check_opt(&m.custom_status, PD_CUSTOM_STATUS_MAX, true);
        check_opt(&m.activity, PD_ACTIVITY_MAX, true);
        if (m.id.kind == PROTO_ID_STR)
            CHECK(strlen(m.id.s) <= PROTO_ID_MAX);
        const char *devs[4];
        for (uint32_t i = 0; i < m.nids; i++) {
            CHECK(pd_user_id_valid(m.ids[i].s, m.ids[i].len));
            devs[i] = m.ids[i].s;
        }

        /* Re-encode what was decoded: every string went through validation. */
        pd_presence_t p = {
            .user_id = m.nids ? m.ids[0].s : "u",
            .user_id_len = m.nids ? m.ids[0].len : 1,
            .status = m.status >= 0 ? (uint8_t)m.status : PD_ONLINE,
            .last_seen = 1764316800.123 + m.custom_status_expires_in,
            .device = m.device.state == PROTO_SET ? m.device.v.s : "unknown",
            .devices = devs,
            .ndevices = m.nids,
            .custom_status = m.custom_status.state == PROTO_SET ? m.custom_status.v.s : NULL,
            .activity = m.activity.state == PROTO_SET ? m.activity.v.s : NULL,
        };
        check_frame(proto_encode_presence_update(&p), true);
        pd_presence_t ps[4];
        for (uint32_t i = 0; i < m.nids; i++) {
            ps[i] = p;
            ps[i].user_id = m.ids[i].s;
            ps[i].user_id_len = m.ids[i].len;
        }
        check_frame(proto_encode_presences("presence_result", &m.id, ps, m.nids), true);
        check_frame(proto_encode_ack(&m.id), true);
        check_frame(proto_encode_pong(&m.id), true);
        check_frame(proto_encode_presence_hidden((pd_str_t){p.user_id, p.user_id_len}), true);
        proto_msg_free(&m);
        CHECK(m.root == NULL && m.ids == NULL);
    } else {
        CHECK(rc == PD_EPROTO);
        CHECK(err.code < PROTO_E_COUNT);
        CHECK(m.root == NULL && m.ids == NULL);
        size_t len = strnlen(err.message, sizeof(err.message));
        CHECK(len > 0 && len < sizeof(err.message));
        /* The message quotes client text: valid UTF-8 whenever the input was. */
        if (input_utf8)
            CHECK(utf8_is_valid((const uint8_t *)err.message, len));
        check_frame(proto_encode_error(&m.id, err.code, err.message), input_utf8);
    }
    free(buf);
    return 0;
}
