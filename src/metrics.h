/* Prometheus metrics: a registry of counters and gauges rendered in the text exposition
 * format (version 0.0.4).
 *
 * A module registers its series once at start-up and keeps the returned pointer; the hot path
 * then costs one increment of a plain uint64_t (one loop thread, no atomics). Gauges that are
 * cheaper to compute than to maintain are registered as callbacks read at scrape time.
 * Cost: one small allocation per series, made at registration only.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stdint.h>

#include "util/obuf.h"

typedef struct pd_metrics pd_metrics_t;

/* Reads a gauge at scrape time. */
typedef double (*pd_gauge_fn)(void *ctx);

pd_metrics_t *pd_metrics_new(void);
void pd_metrics_free(pd_metrics_t *m);

/* Registers (or finds) the series name{label_name="label_value"} of a counter family and
 * returns its value, owned by the registry and valid until pd_metrics_free. label_name NULL
 * makes an unlabelled series. All series of one family must share type and label name.
 * name and help must be string literals or outlive the registry; label_value is copied.
 * Returns NULL only when out of memory; callers may then count into a dummy. */
uint64_t *pd_metrics_counter(pd_metrics_t *m, const char *name, const char *help,
                             const char *label_name, const char *label_value);

/* As pd_metrics_counter, for a gauge the caller sets (as a signed value). */
int64_t *pd_metrics_gauge(pd_metrics_t *m, const char *name, const char *help,
                          const char *label_name, const char *label_value);

/* Registers a gauge computed by fn(ctx) at each scrape. 0 or PD_ENOMEM. */
int pd_metrics_gauge_fn(pd_metrics_t *m, const char *name, const char *help, const char *label_name,
                        const char *label_value, pd_gauge_fn fn, void *ctx);

/* Renders every family into a new buffer (payload only, refs = 1). NULL when out of memory. */
pd_obuf_t *pd_metrics_render(const pd_metrics_t *m);

#endif
