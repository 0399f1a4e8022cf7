/* Error codes shared by every module.
 *
 * Actions return int: 0 on success, a negative PD_E* code on failure. Incremental decoders
 * return the number of bytes consumed, PD_EAGAIN when they need more input, or another code.
 * One X-macro generates the enum, pd_strerror() and pd_err_name(), as libuv's UV_ERRNO_MAP does.
 */
#ifndef PD_UTIL_ERROR_H
#define PD_UTIL_ERROR_H

#define PD_ERRNO_MAP(XX)                                                                           \
    XX(EAGAIN, -1, "need more input")                                                              \
    XX(ENOMEM, -2, "out of memory")                                                                \
    XX(EINVAL, -3, "invalid argument")                                                             \
    XX(EPROTO, -4, "protocol error")                                                               \
    XX(ETOOBIG, -5, "too large")                                                                   \
    XX(EUTF8, -6, "invalid UTF-8")                                                                 \
    XX(ELIMIT, -7, "limit reached")                                                                \
    XX(ENOTFOUND, -8, "not found")                                                                 \
    XX(EEXIST, -9, "already exists")                                                               \
    XX(ECLOSED, -10, "closed")                                                                     \
    XX(EIO, -11, "input/output error")                                                             \
    XX(EPERM, -12, "not permitted")                                                                \
    XX(ETIMEDOUT, -13, "timed out")                                                                \
    XX(EAUTH, -14, "authentication failed")                                                        \
    XX(EUNAVAIL, -15, "service unavailable")                                                       \
    XX(EFULL, -16, "full")

typedef enum {
#define PD_ERR_ENUM(name, val, msg) PD_##name = (val),
    PD_ERRNO_MAP(PD_ERR_ENUM)
#undef PD_ERR_ENUM
} pd_errno_t;

/* Human-readable message for a PD_E* code; "unknown error" for anything else. Static storage. */
const char *pd_strerror(int err);

/* Symbolic name of a PD_E* code ("EAGAIN"); "UNKNOWN" for anything else. Static storage. */
const char *pd_err_name(int err);

#endif
