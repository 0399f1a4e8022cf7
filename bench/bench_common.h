/* Helpers shared by the network-core benchmarks: loopback-only client sockets, the client side
 * of the WebSocket handshake, the figures of the server process read from /proc, and time.
 *
 * Everything here is blocking-free except bench_http_get (bounded by its timeout). Addresses
 * are IPv4 loopback only (127.0.0.0/8): the benchmarks refuse anything else.
 */
#ifndef PD_BENCH_COMMON_H
#define PD_BENCH_COMMON_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The fixed key of RFC 6455 section 1.3 and the Sec-WebSocket-Accept it must produce. */
#define BENCH_WS_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define BENCH_WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

#define BENCH_HANDSHAKE_MAX 512 /* bytes of our request, and of a 101 response head we accept */

/* Monotonic time. */
uint64_t bench_now_ns(void);
void bench_sleep_ms(unsigned ms);

/* Parses dotted IPv4 text into *out (port in host order); fails unless it is in 127.0.0.0/8.
 * 0 or -1. */
int bench_loopback_addr(const char *ip, int port, struct sockaddr_in *out);

/* A non-blocking TCP socket (TCP_NODELAY) bound to src (port chosen at connect time, so one source
 * address is not limited to one connection per port), connecting to dst. Returns the fd (the
 * connect may be in progress: wait for writability, then check bench_connect_result) or -errno. */
int bench_connect_start(const struct sockaddr_in *dst, const struct sockaddr_in *src);

/* 0 once a non-blocking connect succeeded, else the positive errno. */
int bench_connect_result(int fd);

/* Writes the upgrade request for path?user=user into buf. Returns its length, or -1 when it
 * does not fit. */
int bench_handshake_request(char *buf, size_t size, int port, const char *path, const char *user);

/* Checks a response head in buf[0..len). Returns the bytes of the head (> 0) once it is
 * complete and is a 101 with the expected accept key, 0 while it is incomplete, -1 when it is
 * anything else. */
int bench_handshake_response(const char *buf, size_t len);

/* The server process, from /proc. Each returns 0 or -1 (process gone, field missing). */
int bench_proc_status_kb(pid_t pid, const char *field, long *kb); /* "VmRSS", "RssAnon" */
int bench_proc_heap_kb(pid_t pid, long *kb);          /* Rss of the [heap] mapping (malloc's brk) */
int bench_proc_cpu_ticks(pid_t pid, uint64_t *ticks); /* utime + stime, all threads */
bool bench_proc_alive(pid_t pid);

/* GET path from 127.0.0.1:port with a deadline; the body (NUL-terminated, truncated to fit)
 * goes to out. Returns the HTTP status or -1. */
int bench_http_get(int port, const char *path, char *out, size_t size, unsigned timeout_ms);

/* The value of an unlabelled metric in Prometheus text, or -1 when absent. */
double bench_metric(const char *text, const char *name);

/* Parses "1000,5000,19k" into up to max unsigned values; returns the count or -1. */
int bench_parse_list(const char *s, uint32_t *out, int max);

#endif
