/* Connection identity from JSON Web Tokens (RFC 7519), verified with libjwt.
 *
 * One algorithm is configured, with its key: HS256 with a shared secret, or RS256 / ES256
 * with a public key (PEM). A token must use exactly that algorithm (so "none", and an HS256
 * token "signed" with a public key, are refused before libjwt sees them), carry a valid
 * user id in "sub" and a numeric "exp" in the future; "nbf" and "iat" are checked when
 * present, "iss" and "aud" when configured. Times past AUTH_TIME_MAX are refused, so an
 * accepted exp can be turned into a timer without overflow. An optional "channels" claim is a list
 * of glob patterns (fnmatch) naming the rooms the connection may join; without it, any room.
 *
 * Failures carry a short reason for the log and metrics only; what the client is told
 * (401) says nothing.
 */
#ifndef PD_AUTH_TOKEN_H
#define PD_AUTH_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "presence/presence.h"

#define AUTH_TOKEN_MAX    4096 /* bytes; larger tokens are refused unparsed */
#define AUTH_CHANNELS_MAX 64   /* patterns in the channels claim */
#define AUTH_PATTERN_MAX  200  /* bytes of one pattern */
#define AUTH_LEEWAY       30.0 /* seconds of clock skew allowed on nbf and iat */
/* The latest time a token may name (9999-12-31T23:59:59Z): an exp after it (or not finite) is
 * refused "bad_exp", an nbf or iat outside [0, AUTH_TIME_MAX] "bad_nbf" / "bad_iat". */
#define AUTH_TIME_MAX 253402300799.0

enum auth_alg { AUTH_ALG_NONE = 0, AUTH_ALG_HS256, AUTH_ALG_RS256, AUTH_ALG_ES256 };

typedef struct auth_config {
    int alg;            /* enum auth_alg; AUTH_ALG_NONE: tokens not accepted */
    unsigned char *key; /* the secret, or the PEM public key (owned) */
    size_t key_len;
    char issuer[256];   /* required "iss" when not empty */
    char audience[256]; /* required in "aud" when not empty */
} auth_config_t;

/* Reads the HS256 secret (trailing newlines dropped; at least 32 bytes) or the public key
 * (RSA: RS256; EC P-256: ES256) into cfg. Returns 0, or -1 after writing why to err. */
int auth_load_secret(auth_config_t *cfg, const char *path, FILE *err);
int auth_load_public_key(auth_config_t *cfg, const char *path, FILE *err);
void auth_config_free(auth_config_t *cfg);

typedef struct auth_claims {
    char sub[PD_USER_ID_MAX + 1];
    size_t sub_len;
    double exp;      /* epoch seconds; once verified: finite, now < exp <= AUTH_TIME_MAX */
    char **channels; /* owned patterns; NULL when the claim is absent */
    uint32_t nchannels;
} auth_claims_t;

/* Verifies token[0..len) at time now (epoch seconds). Returns 0 with *out filled (free it
 * with auth_claims_free), or PD_EAUTH with *why set to a static reason ("expired",
 * "bad_signature", "wrong_alg", "bad_exp" (a number past AUTH_TIME_MAX; a negative exp is
 * "expired"), "bad_nbf" and "bad_iat" (not a number, or outside [0, AUTH_TIME_MAX]), ...). On
 * success, out->exp - now lies in (0, AUTH_TIME_MAX - now]: in milliseconds below 2.6e14, exact in
 * a double and far inside a uint64_t. */
int auth_verify(const auth_config_t *cfg, const char *token, size_t len, double now,
                auth_claims_t *out, const char **why);

void auth_claims_free(auth_claims_t *c);

/* True when the claims allow joining channel (always, without a channels claim). */
bool auth_channel_allowed(const auth_claims_t *c, const char *channel, size_t len);

#endif
