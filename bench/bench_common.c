#include "bench_common.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_ms(unsigned ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int bench_loopback_addr(const char *ip, int port, struct sockaddr_in *out) {
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &out->sin_addr) != 1)
        return -1;
    /* Loopback only: these programs open tens of thousands of connections. */
    if ((ntohl(out->sin_addr.s_addr) >> 24) != 127)
        return -1;
    return 0;
}

int bench_connect_start(const struct sockaddr_in *dst, const struct sockaddr_in *src) {
    int err;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* As browsers and ws do: without it, Nagle's algorithm holds a small frame until the
     * previous one is acknowledged, and delayed ACKs turn that into 40 ms stalls. */
    int nodelay = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof(nodelay));
    if (src) {
        int one = 1;
#ifdef IP_BIND_ADDRESS_NO_PORT
        /* Defer the port choice to connect(): ports are then unique per 4-tuple, not per
         * source address. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
        struct sockaddr_in s = *src;
        s.sin_port = 0;
        if (bind(fd, (const struct sockaddr *)&s, sizeof(s)) != 0)
            goto err_close;
    }
    if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) != 0 && errno != EINPROGRESS)
        goto err_close;
    return fd;

err_close:
    err = -errno;
    close(fd);
    return err;
}

int bench_connect_result(int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

int bench_handshake_request(char *buf, size_t size, int port, const char *path, const char *user) {
    int n = snprintf(buf, size,
                     "GET %s?user=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " BENCH_WS_KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, user, port);
    return n > 0 && (size_t)n < size ? n : -1;
}

int bench_handshake_response(const char *buf, size_t len) {
    const char *end = NULL;
    for (size_t i = 3; i < len; i++)
        if (buf[i - 3] == '\r' && buf[i - 2] == '\n' && buf[i - 1] == '\r' && buf[i] == '\n') {
            end = buf + i + 1;
            break;
        }
    if (!end)
        return len >= BENCH_HANDSHAKE_MAX ? -1 : 0;
    size_t head = (size_t)(end - buf);
    if (head < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0)
        return -1;
    static const char accept[] = "Sec-WebSocket-Accept: " BENCH_WS_ACCEPT "\r\n";
    size_t alen = sizeof(accept) - 1;
    for (size_t i = 0; i + alen <= head; i++)
        if (strncasecmp(buf + i, accept, alen) == 0)
            return (int)head;
    return -1;
}

/* Reads a small /proc file whole into buf (NUL-terminated). */
static int read_proc(pid_t pid, const char *name, char *buf, size_t size) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == size - 1)
            break;
    }
    close(fd);
    buf[len] = '\0';
    return len ? 0 : -1;
}

int bench_proc_status_kb(pid_t pid, const char *field, long *kb) {
    char buf[4096];
    if (read_proc(pid, "status", buf, sizeof(buf)))
        return -1;
    size_t flen = strlen(field);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            *kb = strtol(line + flen + 1, NULL, 10);
            return 0;
        }
    return -1;
}

int bench_proc_heap_kb(pid_t pid, long *kb) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    char line[512];
    bool in_heap = false;
    int rc = -1;
    while (fgets(line, sizeof(line), f)) {
        /* Mapping lines start with a lowercase hex address; field lines ("Rss:") with a
         * capital letter. */
        bool mapping = (line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f');
        if (mapping) {
            in_heap = strstr(line, "[heap]") != NULL;
            continue;
        }
        if (in_heap && strncmp(line, "Rss:", 4) == 0) {
            *kb = strtol(line + 4, NULL, 10);
            rc = 0;
            break;
        }
    }
    fclose(f);
    return rc;
}

int bench_proc_cpu_ticks(pid_t pid, uint64_t *ticks) {
    char buf[2048];
    if (read_proc(pid, "stat", buf, sizeof(buf)))
        return -1;
    /* The command name may hold spaces and parentheses: fields count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p++;
    /* After ')': field 3 (state) ... field 14 utime, 15 stime. */
    unsigned long long utime = 0, stime = 0;
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 14)
            utime = strtoull(tok, NULL, 10);
        else if (field == 15) {
            stime = strtoull(tok, NULL, 10);
            *ticks = utime + stime;
            return 0;
        }
    }
    return -1;
}

bool bench_proc_alive(pid_t pid) {
    char buf[512];
    if (read_proc(pid, "stat", buf, sizeof(buf)))
        return false;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

int bench_http_get(int port, const char *path, char *out, size_t size, unsigned timeout_ms) {
    struct sockaddr_in dst;
    if (bench_loopback_addr("127.0.0.1", port, &dst))
        return -1;
    int fd = bench_connect_start(&dst, NULL);
    if (fd < 0)
        return -1;
    uint64_t deadline = bench_now_ns() + (uint64_t)timeout_ms * 1000000u;
    char req[256];
    int reqlen =
        snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path, port);
    size_t sent = 0, got = 0;
    int status = -1;
    char *buf = malloc(256 * 1024);
    if (!buf)
        goto out_close;
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= deadline)
            goto out_free;
        struct pollfd pfd = {.fd = fd, .events = sent < (size_t)reqlen ? POLLOUT : POLLIN};
        int pr = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            goto out_free;
        if (sent < (size_t)reqlen) {
            if (bench_connect_result(fd) != 0)
                goto out_free;
            ssize_t w = write(fd, req + sent, (size_t)reqlen - sent);
            if (w < 0 && errno != EAGAIN)
                goto out_free;
            if (w > 0)
                sent += (size_t)w;
            continue;
        }
        ssize_t r = read(fd, buf + got, 256 * 1024 - 1 - got);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r < 0)
            goto out_free;
        if (r == 0 || got + (size_t)r == 256 * 1024 - 1) {
            got += (size_t)(r > 0 ? r : 0);
            break;
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
    if (got > 12 && strncmp(buf, "HTTP/1.1 ", 9) == 0)
        status = atoi(buf + 9);
    const char *body = strstr(buf, "\r\n\r\n");
    body = body ? body + 4 : buf + got;
    snprintf(out, size, "%s", body);
out_free:
    free(buf);
out_close:
    close(fd);
    return status;
}

double bench_metric(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, name, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return -1;
}

int bench_parse_list(const char *s, uint32_t *out, int max) {
    int count = 0;
    while (*s) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || v < 0)
            return -1;
        if (*end == 'k' || *end == 'K') {
            v *= 1000;
            end++;
        }
        if (count == max || v > 4e9)
            return -1;
        out[count++] = (uint32_t)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return count;
}
