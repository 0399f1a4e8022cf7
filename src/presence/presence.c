#include "presence/presence.h"

#include <string.h>

#include "util/utf8.h"

static const char *const status_names[] = {"offline", "away", "online", "busy"};

const char *pd_status_name(uint8_t status) {
    return status <= PD_BUSY ? status_names[status] : "offline";
}

int pd_status_parse(const char *s, size_t len) {
    for (int i = 0; i <= PD_BUSY; i++)
        if (strlen(status_names[i]) == len && memcmp(status_names[i], s, len) == 0)
            return i;
    return -1;
}

static bool no_controls(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7F)
            return false;
        /* C1 controls U+0080..U+009F are encoded as C2 80..C2 9F. */
        if (p[i] == 0xC2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9F)
            return false;
    }
    return true;
}

bool pd_label_valid(const char *s, size_t len, size_t max, bool allow_empty) {
    if (len > max || (len == 0 && !allow_empty))
        return false;
    return utf8_is_valid((const uint8_t *)s, len) && no_controls(s, len);
}

bool pd_user_id_valid(const char *s, size_t len) {
    return pd_label_valid(s, len, PD_USER_ID_MAX, false);
}

uint8_t pd_aggregate_status(const uint8_t *claims, size_t n) {
    uint8_t best = PD_OFFLINE;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = claims[i] > PD_BUSY ? PD_OFFLINE : claims[i];
        /* A live session counts at least as away: offline is never a live claim. */
        if (c == PD_OFFLINE)
            c = PD_AWAY;
        if (c > best)
            best = c;
    }
    return best;
}
