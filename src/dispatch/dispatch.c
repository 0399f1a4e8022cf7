#include "dispatch/dispatch.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "ws/frame.h"

struct dispatch {
    pd_log_t *log;
    pd_metrics_t *metrics;
};

dispatch_t *dispatch_new(pd_log_t *log, pd_metrics_t *metrics) {
    dispatch_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->log = log;
    d->metrics = metrics;
    return d;
}

void dispatch_free(dispatch_t *d) {
    free(d);
}

static int on_upgrade(void *ctx, conn_t *c, const http_request_t *req, void **app) {
    (void)ctx;
    (void)c;
    (void)req;
    *app = NULL;
    return 0;
}

static void send_text(conn_t *c, const char *s) {
    pd_obuf_t *f = ws_frame_new(WS_OP_TEXT, s, strlen(s));
    if (f) {
        conn_send(c, f);
        pd_obuf_release(f);
    }
}

static void on_message(void *ctx, conn_t *c, void *app, uint8_t *data, size_t len) {
    (void)ctx;
    (void)app;
    cJSON *msg = cJSON_ParseWithLength((const char *)data, len);
    const cJSON *type = msg ? cJSON_GetObjectItemCaseSensitive(msg, "type") : NULL;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "ping") == 0)
        send_text(c, "{\"type\":\"pong\"}");
    else if (!msg)
        send_text(c, "{\"type\":\"error\",\"code\":\"bad_json\",\"message\":\"not valid JSON\"}");
    else
        send_text(c, "{\"type\":\"error\",\"code\":\"unknown_type\","
                     "\"message\":\"unknown message type\"}");
    cJSON_Delete(msg);
}

static void on_close(void *ctx, conn_t *c, void *app, enum conn_end why) {
    (void)ctx;
    (void)c;
    (void)app;
    (void)why;
}

void dispatch_ws_handlers(dispatch_t *d, server_ws_handlers_t *h) {
    memset(h, 0, sizeof(*h));
    h->ctx = d;
    h->on_upgrade = on_upgrade;
    h->on_message = on_message;
    h->on_close = on_close;
}
