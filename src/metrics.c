#include "metrics.h"

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

/* Label values are escaped as the exposition format requires: backslash, quote, newline. */
static int append_label_value(pd_obuf_t **b, const char *v) {
    for (; *v; v++) {
        const char *esc = NULL;
        if (*v == '\\')
            esc = "\\\\";
        else if (*v == '"')
            esc = "\\\"";
        else if (*v == '\n')
            esc = "\\n";
        int rc = esc ? pd_obuf_append(b, esc, 2) : pd_obuf_append(b, v, 1);
        if (rc)
            return rc;
    }
    return 0;
}

pd_obuf_t *pd_metrics_render(const pd_metrics_t *m) {
    pd_obuf_t *b = pd_obuf_new(16384);
    if (!b)
        return NULL;
    char line[512];
    for (const struct family *f = m->first; f; f = f->next) {
        int n = snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help,
                         f->name, f->kind == KIND_COUNTER ? "counter" : "gauge");
        if (pd_obuf_append(&b, line, (size_t)n))
            goto err_free;
        for (const struct series *s = f->first; s; s = s->next) {
            if (pd_obuf_append(&b, f->name, strlen(f->name)))
                goto err_free;
            if (s->label_value) {
                n = snprintf(line, sizeof(line), "{%s=\"", f->label_name);
                if (pd_obuf_append(&b, line, (size_t)n) || append_label_value(&b, s->label_value) ||
                    pd_obuf_append(&b, "\"}", 2))
                    goto err_free;
            }
            if (s->fn)
                n = snprintf(line, sizeof(line), " %.17g\n", s->fn(s->ctx));
            else if (f->kind == KIND_COUNTER)
                n = snprintf(line, sizeof(line), " %llu\n", (unsigned long long)s->v.counter);
            else
                n = snprintf(line, sizeof(line), " %lld\n", (long long)s->v.gauge);
            if (pd_obuf_append(&b, line, (size_t)n))
                goto err_free;
        }
    }
    return b;
err_free:
    pd_obuf_release(b);
    return NULL;
}
