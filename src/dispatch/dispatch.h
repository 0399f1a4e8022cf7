/* The WebSocket application: turns messages from connections into protocol actions and
 * their answers. For now it speaks the transport check only: {"type":"ping"} is answered
 * with {"type":"pong"}, anything else with an error message. TODO(#3): the presence protocol.
 */
#ifndef PD_DISPATCH_H
#define PD_DISPATCH_H

#include "log.h"
#include "metrics.h"
#include "server/server.h"

typedef struct dispatch dispatch_t;

dispatch_t *dispatch_new(pd_log_t *log, pd_metrics_t *metrics);
void dispatch_free(dispatch_t *d);

/* Fills in the server's WebSocket callbacks, bound to d. */
void dispatch_ws_handlers(dispatch_t *d, server_ws_handlers_t *h);

#endif
