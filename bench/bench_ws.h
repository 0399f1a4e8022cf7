/* The client side shared by the presence and rooms benchmarks (bench_heartbeat, bench_fanout,
 * bench_get_presence, bench_rooms): many upgraded WebSocket connections in one epoll set, and
 * the plumbing of generators that spread their connections over several processes.
 *
 * Connections: a bws_set_t holds n client connections from one loopback source address. They
 * are read through one buffer per set; a connection keeps only the bytes of an incomplete
 * server frame between reads (so 10,000 idle connections cost little). Server frames are
 * parsed in place and handed to a callback with the time of the read that completed them.
 * Client frames are masked text frames built once (bws_frame) and written as often as needed.
 *
 * Processes: a bws_fleet_t forks workers that die with their parent (PR_SET_PDEATHSIG) and are
 * steered over one pipe each way (a uint32_t command down, an int32_t status up); figures
 * travel through shared memory mapped before the fork (bws_shared). All on one machine, so
 * CLOCK_MONOTONIC (bench_now_ns) readings compare across processes.
 *
 * Loopback only (bench_loopback_addr refuses anything else). Nothing here blocks without a
 * deadline.
 */
#ifndef PD_BENCH_WS_H
#define PD_BENCH_WS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define BWS_WORKERS_MAX 16
#define BWS_FRAME_HDR   14 /* a client frame header at most: 2 + 8 length + 4 mask */

enum bws_state { BWS_FREE, BWS_CONNECTING, BWS_HANDSHAKE, BWS_OPEN, BWS_DEAD };

#define BWS_HEAD 256 /* bytes kept of the start of a streamed (large) frame */
#define BWS_TAIL 256 /* bytes kept of its end */

/* A large frame being passed over: only its head and tail are kept. */
struct bws_big {
    uint64_t total, left; /* payload bytes in all, and still to come */
    uint32_t tail_len;
    uint8_t opcode;
    uint8_t keep[BWS_HEAD + BWS_TAIL]; /* the head, then the tail */
};

typedef struct bws_conn {
    struct bws_big *big; /* a large frame in progress, NULL when none */
    uint8_t *in;         /* the bytes of an incomplete frame (or of the 101 head), NULL when none */
    uint8_t *out;        /* unsent output, NULL when none */
    uint32_t in_len, in_cap;
    uint32_t out_off, out_len, out_cap;
    int fd;
    uint16_t close_code; /* the code of the server's close frame, 0 when none came */
    uint8_t state;       /* enum bws_state */
    uint8_t want_out;    /* EPOLLOUT is armed */
} bws_conn_t;

typedef struct bws_set {
    bws_conn_t *c;
    uint32_t n;
    uint32_t open, dead;
    int ep;
    int port;
    int ctl; /* a control fd watched with the connections, -1 when none */
    const char *path;
    struct sockaddr_in dst, src;
    uint8_t *buf; /* the read buffer shared by the set's connections */
    size_t buf_cap;
    uint64_t stream_over; /* text frames with more payload bytes are streamed; 0: never */
    uint64_t frame_len;   /* during a bws_frame_fn call: the frame's whole payload length */
    char err[160];        /* why the first connection died */
} bws_set_t;

/* Called for each complete server frame of connection i, in order. payload is valid only
 * during the call; now is the time the read that completed the frame returned. A text frame
 * of more than s->stream_over payload bytes (when set) is not kept whole: payload then holds
 * its first BWS_HEAD bytes followed by its last bytes (up to BWS_TAIL), and s->frame_len its
 * real length (always set). A non-zero return ends the connection (it is counted as dead). */
typedef int (*bws_frame_fn)(void *ctx, bws_set_t *s, uint32_t i, uint8_t opcode,
                            const uint8_t *payload, size_t len, uint64_t now);

/* Writes the user id of connection i (NUL-terminated) into user. */
typedef void (*bws_user_fn)(void *ctx, uint32_t i, char *user, size_t size);

/* Prepares n connections to 127.0.0.1:port from src_ip (127.0.0.0/8), upgrading on path.
 * ctl, when >= 0, is watched by bws_poll too (borrowed). 0, or -1 (bad address, no memory). */
int bws_set_init(bws_set_t *s, uint32_t n, int port, const char *src_ip, const char *path, int ctl);

/* Closes every connection and frees the set. */
void bws_set_free(bws_set_t *s);

/* Connects and upgrades every connection, concurrency at a time, before deadline (ns). Bytes
 * the server sent after its 101 stay queued for the first bws_poll. 0 once all are open, -1
 * otherwise (s->err says why). */
int bws_set_open(bws_set_t *s, bws_user_fn user, void *ctx, unsigned concurrency,
                 uint64_t deadline);

/* Queues len bytes on connection i and writes what the socket takes now; the rest goes out as
 * the socket drains (bws_poll). 0, or -1 when the connection is dead. */
int bws_send(bws_set_t *s, uint32_t i, const void *data, size_t len);

/* True while connection i has unsent output. */
bool bws_pending(const bws_set_t *s, uint32_t i);

/* Reads and parses whatever arrived on connection i (frames already queued first). 0, or -1
 * when it died. */
int bws_read(bws_set_t *s, uint32_t i, bws_frame_fn fn, void *ctx);

/* One epoll_wait of at most timeout_ms: flushes writable connections and reads readable ones.
 * Returns 1 when the control fd is readable (not read), else 0; -1 on an epoll failure. */
int bws_poll(bws_set_t *s, int timeout_ms, bws_frame_fn fn, void *ctx);

/* Ends connection i (counted as dead; the first reason is kept in s->err). */
void bws_kill(bws_set_t *s, uint32_t i, const char *why);

/* Builds a masked text frame of text[0..len) into out (room for len + BWS_FRAME_HDR); the mask
 * key derives from seed. Returns the frame's length. */
size_t bws_frame(uint8_t *out, const char *text, size_t len, uint32_t seed);

/* True when p[0..len) starts with the NUL-terminated prefix. */
bool bws_starts(const uint8_t *p, size_t len, const char *prefix);

/* The first occurrence of needle in p[0..len), or NULL. */
const uint8_t *bws_find(const uint8_t *p, size_t len, const char *needle);

/* How many times needle occurs in p[0..len) (not overlapping). */
size_t bws_count(const uint8_t *p, size_t len, const char *needle);

/* --- Worker processes --- */

typedef struct bws_fleet {
    unsigned n;
    pid_t pid[BWS_WORKERS_MAX];
    int cmd[BWS_WORKERS_MAX]; /* parent -> worker */
    int rep[BWS_WORKERS_MAX]; /* worker -> parent */
} bws_fleet_t;

/* A worker's body: reads commands from cmd (bws_cmd_read), answers on rep (bws_reply).
 * Its return value is the worker's exit status. */
typedef int (*bws_worker_fn)(void *ctx, unsigned idx, int cmd, int rep);

/* Forks n workers running fn(ctx, idx, ...). Each dies with the parent, and after
 * timeout_s + 30 s at the latest. 0, or -1 (then none is left running). */
int bws_fleet_start(bws_fleet_t *f, unsigned n, bws_worker_fn fn, void *ctx, unsigned timeout_s);

/* Sends op to every worker. 0 or -1. */
int bws_fleet_send(bws_fleet_t *f, uint32_t op);

/* Collects one status from every worker before deadline (ns) into st (room for f->n, may be
 * NULL). 0 when all answered with a status >= 0, -1 otherwise (timeout, a worker died, or a
 * negative status). */
int bws_fleet_collect(bws_fleet_t *f, int32_t *st, uint64_t deadline);

/* Ends every worker (SIGKILL) and reaps it. */
void bws_fleet_stop(bws_fleet_t *f);

/* In a worker: reads one command (blocking). 0, or -1 when the parent is gone. */
int bws_cmd_read(int cmd, uint32_t *op);

/* In a worker: sends a status up. */
void bws_reply(int rep, int32_t status);

/* size bytes of zeroed memory shared with the workers forked afterwards, or NULL. */
void *bws_shared(size_t size);

/* --- Figures --- */

void bws_sort_u64(uint64_t *v, size_t n);

/* The p-quantile (0 < p <= 1, nearest rank) of sorted[0..n), 0 when n is 0. */
uint64_t bws_pct(const uint64_t *sorted, size_t n, double p);

/* Waits until the server process uses no more CPU: utime + stime read every 50 ms must stay
 * the same for quiet_ms, within max_ms. *ticks gets the last reading. 0 when it went quiet,
 * 1 when max_ms passed first, -1 when the process is gone. */
int bws_wait_idle(pid_t pid, unsigned quiet_ms, unsigned max_ms, uint64_t *ticks);

/* CPU seconds (user + system) of this process, and of its reaped children when children. */
double bws_self_cpu_s(bool children);

/* A counter of the server's /metrics (the exact name, labels included), or -1. */
double bws_metric(int port, const char *name);

#endif
