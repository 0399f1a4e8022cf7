#include "privacy/privacy.h"

#include <string.h>

static const char *const names[] = {"everyone", "contacts", "nobody"};

const char *privacy_visibility_name(uint8_t v) {
    return v <= PD_VIS_NOBODY ? names[v] : "everyone";
}

int privacy_visibility_parse(const char *s, size_t len) {
    for (int i = 0; i <= PD_VIS_NOBODY; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return i;
    return -1;
}

static bool same_user(pd_str_t a, pd_str_t b) {
    return a.len == b.len && memcmp(a.s, b.s, a.len) == 0;
}

bool privacy_can_see(pd_str_t requester, pd_str_t target, uint8_t visibility, bool in_contacts,
                     bool blocked) {
    if (same_user(requester, target))
        return true; /* a user always sees themselves, invisible or not */
    if (blocked)
        return false;
    if (visibility == PD_VIS_EVERYONE)
        return true;
    return visibility == PD_VIS_CONTACTS && in_contacts;
}

bool privacy_entry_allowed(pd_str_t owner, pd_str_t other) {
    return !same_user(owner, other);
}
