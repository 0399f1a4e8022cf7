/* One-line logs on stderr (or any stream): readable text by default, JSON lines on request.
 *
 * The logger is a plain value owned by main and lent to every module that logs, so nothing
 * here is process-wide. Lines are written with a single fwrite so concurrent writers (other
 * processes sharing the stream) never interleave inside a line.
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdbool.h>
#include <stdio.h>

enum pd_log_level { PD_LOG_DEBUG, PD_LOG_INFO, PD_LOG_WARN, PD_LOG_ERROR };
enum pd_log_format { PD_LOG_TEXT, PD_LOG_JSON };

typedef struct pd_log {
    FILE *out;  /* borrowed; stderr by default */
    int level;  /* enum pd_log_level: lines below it are dropped */
    int format; /* enum pd_log_format */
} pd_log_t;

/* A logger writing text lines at INFO and above to stderr. */
void pd_log_init(pd_log_t *log);

/* Parses "debug", "info", "warn", "error" (-1 when unknown). */
int pd_log_level_parse(const char *s);
/* Parses "text", "json" (-1 when unknown). */
int pd_log_format_parse(const char *s);

static inline bool pd_log_enabled(const pd_log_t *log, int level) {
    return log && level >= log->level;
}

/* Writes one line: time, level, module and the message (newlines in it are escaped). */
void pd_log_write(const pd_log_t *log, int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define PD_DEBUG(log, mod, ...)                                                                    \
    do {                                                                                           \
        if (pd_log_enabled((log), PD_LOG_DEBUG))                                                   \
            pd_log_write((log), PD_LOG_DEBUG, (mod), __VA_ARGS__);                                 \
    } while (0)
#define PD_INFO(log, mod, ...)  pd_log_write((log), PD_LOG_INFO, (mod), __VA_ARGS__)
#define PD_WARN(log, mod, ...)  pd_log_write((log), PD_LOG_WARN, (mod), __VA_ARGS__)
#define PD_ERROR(log, mod, ...) pd_log_write((log), PD_LOG_ERROR, (mod), __VA_ARGS__)

#endif
