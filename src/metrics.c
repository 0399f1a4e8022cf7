#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

enum series_kind { KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_FN };

struct series {
    struct series *next;
    char *label_value; /* NULL for an unlabelled series */
    union {
        uint64_t counter;
        int64_t gauge;
    } v;
    pd_gauge_fn fn;
    void *ctx;
};

struct family {
    struct family *next;
    const char *name, *help, *label_name;
    int kind;
    struct series *first, *last;
};

struct pd_metrics {
    struct family *first, *last;
};

pd_metrics_t *pd_metrics_new(void) {
    return calloc(1, sizeof(pd_metrics_t));
}

void pd_metrics_free(pd_metrics_t *m) {
    if (!m)
        return;
    for (struct family *f = m->first, *nf; f; f = nf) {
        nf = f->next;
        for (struct series *s = f->first, *ns; s; s = ns) {
            ns = s->next;
            free(s->label_value);
            free(s);
        }
        free(f);
    }
    free(m);
}

static struct series *get_series(pd_metrics_t *m, const char *name, const char *help,
                                 const char *label_name, const char *label_value, int kind) {
    struct family *f = m->first;
    while (f && strcmp(f->name, name) != 0)
        f = f->next;
    if (!f) {
        f = calloc(1, sizeof(*f));
        if (!f)
            return NULL;
        f->name = name;
        f->help = help;
        f->label_name = label_name;
        f->kind = kind == KIND_GAUGE_FN ? KIND_GAUGE : kind;
        if (m->last)
            m->last->next = f;
        else
            m->first = f;
        m->last = f;
    }
    if (kind != KIND_GAUGE_FN) {
        for (struct series *s = f->first; s; s = s->next) {
            if (!s->fn && ((!s->label_value && !label_value) ||
                           (s->label_value && label_value && !strcmp(s->label_value, label_value))))
                return s;
        }
    }
    struct series *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    if (label_value && !(s->label_value = strdup(label_value))) {
        free(s);
        return NULL;
    }
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    return s;
}

uint64_t *pd_metrics_counter(pd_metrics_t *m, const char *name, const char *help,
                             const char *label_name, const char *label_value) {
    struct series *s = get_series(m, name, help, label_name, label_value, KIND_COUNTER);
    return s ? &s->v.counter : NULL;
}

int64_t *pd_metrics_gauge(pd_metrics_t *m, const char *name, const char *help,
                          const char *label_name, const char *label_value) {
    struct series *s = get_series(m, name, help, label_name, label_value, KIND_GAUGE);
    return s ? &s->v.gauge : NULL;
}

int pd_metrics_gauge_fn(pd_metrics_t *m, const char *name, const char *help, const char *label_name,
                        const char *label_value, pd_gauge_fn fn, void *ctx) {
    struct series *s = get_series(m, name, help, label_name, label_value, KIND_GAUGE_FN);
    if (!s)
        return PD_ENOMEM;
    s->fn = fn;
    s->ctx = ctx;
    return 0;
}

/* Escapes as the exposition format requires: backslash and newline, and in label values
 * (quote true) the double quote too. */
static int append_escaped(pd_obuf_t **b, const char *v, bool quote) {
    for (; *v; v++) {
        const char *esc = NULL;
        if (*v == '\\')
            esc = "\\\\";
        else if (*v == '"' && quote)
            esc = "\\\"";
        else if (*v == '\n')
            esc = "\\n";
        int rc = esc ? pd_obuf_append(b, esc, 2) : pd_obuf_append(b, v, 1);
        if (rc)
            return rc;
    }
    return 0;
}

static int append_str(pd_obuf_t **b, const char *s) {
    return pd_obuf_append(b, s, strlen(s));
}

pd_obuf_t *pd_metrics_render(const pd_metrics_t *m) {
    pd_obuf_t *b = pd_obuf_new(16384);
    if (!b)
        return NULL;
    /* Names, help and label names are appended piece by piece: they have no length limit, so
     * they must not go through a fixed-size line buffer. Only numbers are formatted there. */
    char num[64];
    for (const struct family *f = m->first; f; f = f->next) {
        if (append_str(&b, "# HELP ") || append_str(&b, f->name) || append_str(&b, " ") ||
            append_escaped(&b, f->help, false) || append_str(&b, "\n# TYPE ") ||
            append_str(&b, f->name) ||
            append_str(&b, f->kind == KIND_COUNTER ? " counter\n" : " gauge\n"))
            goto err_free;
        for (const struct series *s = f->first; s; s = s->next) {
            if (append_str(&b, f->name))
                goto err_free;
            if (s->label_value) {
                if (append_str(&b, "{") || append_str(&b, f->label_name) || append_str(&b, "=\"") ||
                    append_escaped(&b, s->label_value, true) || append_str(&b, "\"}"))
                    goto err_free;
            }
            int n;
            if (s->fn) {
                double v = s->fn(s->ctx);
                /* The format spells these NaN, +Inf and -Inf; printf would say nan, inf. */
                if (isnan(v))
                    n = snprintf(num, sizeof(num), " NaN\n");
                else if (isinf(v))
                    n = snprintf(num, sizeof(num), v > 0 ? " +Inf\n" : " -Inf\n");
                else
                    n = snprintf(num, sizeof(num), " %.17g\n", v);
            } else if (f->kind == KIND_COUNTER) {
                n = snprintf(num, sizeof(num), " %llu\n", (unsigned long long)s->v.counter);
            } else {
                n = snprintf(num, sizeof(num), " %lld\n", (long long)s->v.gauge);
            }
            if (pd_obuf_append(&b, num, (size_t)n))
                goto err_free;
        }
    }
    return b;
err_free:
    pd_obuf_release(b);
    return NULL;
}
