#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void pd_log_init(pd_log_t *log) {
    log->out = stderr;
    log->level = PD_LOG_INFO;
    log->format = PD_LOG_TEXT;
}

int pd_log_level_parse(const char *s) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

int pd_log_format_parse(const char *s) {
    if (strcmp(s, "text") == 0)
        return PD_LOG_TEXT;
    if (strcmp(s, "json") == 0)
        return PD_LOG_JSON;
    return -1;
}

/* Appends s to out with control characters escaped (and quotes too when json), so a line
 * stays one line whatever a client managed to put into a logged value. */
static size_t put_escaped(char *out, size_t pos, size_t cap, const char *s, bool json) {
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') {
            out[pos++] = '\\';
            out[pos++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
        } else if (json && (c == '"' || c == '\\')) {
            out[pos++] = '\\';
            out[pos++] = (char)c;
        } else {
            out[pos++] = (char)c;
        }
    }
    return pos;
}

void pd_log_write(const pd_log_t *log, int level, const char *module, const char *fmt, ...) {
    if (!pd_log_enabled(log, level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t wl = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof(when) - wl, ".%03ldZ", ts.tv_nsec / 1000000);

    char line[4096];
    size_t pos;
    if (log->format == PD_LOG_JSON) {
        pos = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":\"",
                               when, level_names[level]);
        pos = put_escaped(line, pos, sizeof(line), module, true);
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\",\"msg\":\"");
        pos = put_escaped(line, pos, sizeof(line) - 3, msg, true);
        line[pos++] = '"';
        line[pos++] = '}';
    } else {
        pos =
            (size_t)snprintf(line, sizeof(line), "%s %-5s %s: ", when, level_names[level], module);
        pos = put_escaped(line, pos, sizeof(line) - 1, msg, false);
    }
    line[pos++] = '\n';
    fwrite(line, 1, pos, log->out);
    fflush(log->out);
}
