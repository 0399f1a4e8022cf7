/* Fuzzes auth_verify with a fixed HS256 secret and a fixed "now". The corpus holds tokens
 * signed with that secret (so the fuzzer starts past the signature check) and near misses.
 *
 * An accepted token must carry a valid user id in sub (its length right, no NUL inside), an
 * exp after now and at most AUTH_TIME_MAX, and a channels claim within its limits; the same token
 * must then also pass every configuration that checks no more, and a configuration that adds an
 * issuer and an audience may only refuse it with bad_issuer / bad_audience. A refused one must name
 * one of the documented reasons and leave nothing to free. Any violation aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/token.h"
#include "presence/presence.h"
#include "util/error.h"

#define NOW    1764316800.0
#define SECRET "fuzz-secret-0123456789abcdef-0123456789" /* the corpus is signed with it */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_token: check failed: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const char *const reasons[] = {
    "tokens_disabled",  "empty",         "too_large",     "malformed",     "wrong_alg",
    "unsupported_crit", "bad_signature", "no_sub",        "bad_sub",       "no_exp",
    "expired",          "bad_nbf",       "not_yet_valid", "bad_iat",       "issued_in_future",
    "bad_issuer",       "bad_audience",  "bad_channels",  "out_of_memory", "bad_exp",
};

static bool known_reason(const char *why) {
    if (!why)
        return false;
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (strcmp(why, reasons[i]) == 0)
            return true;
    return false;
}

static auth_config_t plain, strict;

static void init(void) {
    static bool done;
    if (done)
        return;
    done = true;
    plain.alg = strict.alg = AUTH_ALG_HS256;
    plain.key = (unsigned char *)strdup(SECRET);
    strict.key = (unsigned char *)strdup(SECRET);
    CHECK(plain.key && strict.key);
    plain.key_len = strict.key_len = strlen(SECRET);
    snprintf(strict.issuer, sizeof(strict.issuer), "https://issuer.example");
    snprintf(strict.audience, sizeof(strict.audience), "presenced");
}

static void check_claims(const auth_claims_t *cl, size_t size) {
    CHECK(size > 0 && size <= AUTH_TOKEN_MAX);
    CHECK(cl->sub_len >= 1 && cl->sub_len <= PD_USER_ID_MAX);
    CHECK(strlen(cl->sub) == cl->sub_len);
    CHECK(pd_user_id_valid(cl->sub, cl->sub_len));
    CHECK(isfinite(cl->exp) && cl->exp > NOW && cl->exp <= AUTH_TIME_MAX);
    /* What the expiry timer does with it (dispatch.c arm_expiry): in range for a uint64_t. */
    CHECK((cl->exp - NOW) * 1000.0 < 18446744073709551615.0);
    CHECK(cl->nchannels <= AUTH_CHANNELS_MAX);
    if (!cl->channels)
        CHECK(cl->nchannels == 0);
    for (uint32_t i = 0; i < cl->nchannels; i++) {
        size_t n = strlen(cl->channels[i]);
        CHECK(n >= 1 && n <= AUTH_PATTERN_MAX);
        /* Every pattern matches something or nothing, without crashing: try a few names, and
         * the pattern itself as a name (a pattern without magic matches itself). */
        (void)auth_channel_allowed(cl, "doc:42", 6);
        (void)auth_channel_allowed(cl, cl->channels[i], n);
        if (!strpbrk(cl->channels[i], "*?[\\"))
            CHECK(auth_channel_allowed(cl, cl->channels[i], n));
    }
    if (!cl->channels)
        CHECK(auth_channel_allowed(cl, "any/thing", 9));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init();
    /* An exact-size copy: reading past the token's length is caught by ASan. */
    char *tok = malloc(size ? size : 1);
    if (!tok)
        return 0;
    if (size)
        memcpy(tok, data, size);

    auth_claims_t cl;
    const char *why = NULL;
    int rc = auth_verify(&plain, tok, size, NOW, &cl, &why);
    if (rc == 0) {
        check_claims(&cl, size);
        /* Stricter checks refuse only for what they add. */
        auth_claims_t c2;
        const char *why2 = NULL;
        int rc2 = auth_verify(&strict, tok, size, NOW, &c2, &why2);
        if (rc2 == 0) {
            check_claims(&c2, size);
            CHECK(c2.sub_len == cl.sub_len && memcmp(c2.sub, cl.sub, cl.sub_len) == 0);
            CHECK(c2.exp == cl.exp && c2.nchannels == cl.nchannels);
            auth_claims_free(&c2);
        } else {
            CHECK(rc2 == PD_EAUTH);
            CHECK(strcmp(why2, "bad_issuer") == 0 || strcmp(why2, "bad_audience") == 0);
            CHECK(c2.channels == NULL && c2.nchannels == 0);
        }
        /* A later now can only expire it; an earlier one can only add nbf/iat refusals. */
        rc2 = auth_verify(&plain, tok, size, cl.exp, &c2, &why2);
        CHECK(rc2 == PD_EAUTH && strcmp(why2, "expired") == 0);
        auth_claims_free(&cl);
        CHECK(cl.channels == NULL && cl.nchannels == 0);
    } else {
        CHECK(rc == PD_EAUTH);
        if (!known_reason(why)) {
            fprintf(stderr, "fuzz_token: unknown reason \"%s\"\n", why ? why : "(null)");
            abort();
        }
        CHECK(cl.channels == NULL && cl.nchannels == 0);
        if (size > AUTH_TOKEN_MAX)
            CHECK(strcmp(why, "too_large") == 0);
        if (size == 0)
            CHECK(strcmp(why, "empty") == 0);
    }
    /* Tokens disabled: always refused, for that reason. */
    auth_config_t off = {0};
    rc = auth_verify(&off, tok, size, NOW, &cl, &why);
    CHECK(rc == PD_EAUTH && strcmp(why, "tokens_disabled") == 0);
    free(tok);
    return 0;
}
