#include "util/error.h"

const char *pd_strerror(int err) {
    switch (err) {
#define PD_ERR_MSG(name, val, msg)                                                                 \
    case PD_##name:                                                                                \
        return msg;
        PD_ERRNO_MAP(PD_ERR_MSG)
#undef PD_ERR_MSG
    }
    return "unknown error";
}

const char *pd_err_name(int err) {
    switch (err) {
#define PD_ERR_NAME(name, val, msg)                                                                \
    case PD_##name:                                                                                \
        return #name;
        PD_ERRNO_MAP(PD_ERR_NAME)
#undef PD_ERR_NAME
    }
    return "UNKNOWN";
}
