#include "auth/token.h"

#include <cjson/cJSON.h>
#include <fnmatch.h>
#include <jwt.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

#define KEY_FILE_MAX (64 * 1024)
#define SECRET_MIN   32 /* bytes: HS256 keys shorter than the hash are guessable */

static const char *const alg_names[] = {"none", "HS256", "RS256", "ES256"};

static unsigned char *read_file(const char *path, size_t *len, FILE *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(err, "presenced: cannot open key file '%s': %m\n", path);
        return NULL;
    }
    unsigned char *buf = malloc(KEY_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, KEY_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n == 0 || n > KEY_FILE_MAX) {
        fprintf(err, "presenced: key file '%s' is empty or larger than %d bytes\n", path,
                KEY_FILE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int auth_load_secret(auth_config_t *cfg, const char *path, FILE *err) {
    size_t n;
    unsigned char *k = read_file(path, &n, err);
    if (!k)
        return -1;
    while (n > 0 && (k[n - 1] == '\n' || k[n - 1] == '\r'))
        n--;
    if (n < SECRET_MIN) {
        fprintf(err, "presenced: the secret in '%s' is %zu bytes; HS256 needs at least %d\n", path,
                n, SECRET_MIN);
        free(k);
        return -1;
    }
    k[n] = '\0';
    free(cfg->key);
    cfg->key = k;
    cfg->key_len = n;
    cfg->alg = AUTH_ALG_HS256;
    return 0;
}

int auth_load_public_key(auth_config_t *cfg, const char *path, FILE *err) {
    size_t n;
    unsigned char *k = read_file(path, &n, err);
    if (!k)
        return -1;
    BIO *bio = BIO_new_mem_buf(k, (int)n);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    int alg = AUTH_ALG_NONE;
    if (pkey && EVP_PKEY_base_id(pkey) == EVP_PKEY_RSA) {
        if (EVP_PKEY_bits(pkey) >= 2048)
            alg = AUTH_ALG_RS256;
        else
            fprintf(err, "presenced: the RSA key in '%s' has %d bits; at least 2048 needed\n", path,
                    EVP_PKEY_bits(pkey));
    } else if (pkey && EVP_PKEY_base_id(pkey) == EVP_PKEY_EC) {
        char group[64] = "";
        size_t glen = 0;
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &glen);
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            alg = AUTH_ALG_ES256;
        else
            fprintf(err, "presenced: the EC key in '%s' is on %s; ES256 needs P-256\n", path,
                    group[0] ? group : "an unknown curve");
    } else {
        fprintf(err,
                "presenced: '%s' holds no PEM public key (RSA or EC P-256) that OpenSSL "
                "can read\n",
                path);
    }
    EVP_PKEY_free(pkey);
    if (alg == AUTH_ALG_NONE) {
        free(k);
        return -1;
    }
    free(cfg->key);
    cfg->key = k;
    cfg->key_len = n;
    cfg->alg = alg;
    return 0;
}

void auth_config_free(auth_config_t *cfg) {
    free(cfg->key);
    cfg->key = NULL;
    cfg->key_len = 0;
    cfg->alg = AUTH_ALG_NONE;
}

void auth_claims_free(auth_claims_t *c) {
    for (uint32_t i = 0; i < c->nchannels; i++)
        free(c->channels[i]);
    free(c->channels);
    c->channels = NULL;
    c->nchannels = 0;
}

/* base64url (no padding) to bytes; returns the length or -1. */
static int b64url_decode(const char *in, size_t len, unsigned char *out, size_t out_size) {
    if (len % 4 == 1 || len + 3 > out_size)
        return -1;
    char tmp[AUTH_TOKEN_MAX + 4];
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return -1;
        tmp[i] = c;
    }
    size_t pad = (4 - len % 4) % 4;
    for (size_t i = 0; i < pad; i++)
        tmp[len + i] = '=';
    int n = EVP_DecodeBlock(out, (const unsigned char *)tmp, (int)(len + pad));
    if (n < 0)
        return -1;
    return n - (int)pad; /* EVP_DecodeBlock counts the padding as zero bytes */
}

static int fail(const char **why, const char *reason) {
    *why = reason;
    return PD_EAUTH;
}

/* Checks the header before any signature work: the configured algorithm, nothing critical. */
static int check_header(const auth_config_t *cfg, const char *token, size_t len, const char **why) {
    const char *dot = memchr(token, '.', len);
    if (!dot)
        return fail(why, "malformed");
    const char *dot2 = memchr(dot + 1, '.', len - (size_t)(dot + 1 - token));
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return fail(why, "malformed");
    unsigned char hdr[AUTH_TOKEN_MAX];
    int n = b64url_decode(token, (size_t)(dot - token), hdr, sizeof(hdr));
    if (n <= 0)
        return fail(why, "malformed");
    cJSON *h = cJSON_ParseWithLength((const char *)hdr, (size_t)n);
    const cJSON *alg = h ? cJSON_GetObjectItemCaseSensitive(h, "alg") : NULL;
    int rc = 0;
    if (!cJSON_IsObject(h) || !cJSON_IsString(alg))
        rc = fail(why, "malformed");
    else if (strcmp(alg->valuestring, alg_names[cfg->alg]) != 0)
        rc = fail(why, "wrong_alg");
    else if (cJSON_GetObjectItemCaseSensitive(h, "crit"))
        rc = fail(why, "unsupported_crit"); /* RFC 7515 4.1.11: no extension is understood */
    cJSON_Delete(h);
    return rc;
}

static bool number_claim(const cJSON *claims, const char *name, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(claims, name);
    if (!cJSON_IsNumber(v))
        return false;
    *out = v->valuedouble;
    return true;
}

/* A NumericDate we can compute with (RFC 7519 section 2 sets no range): an exp of 1e300 was
 * accepted and overflowed the conversion of its delay to milliseconds (undefined behaviour).
 * False for NaN and infinities too. */
static bool time_in_range(double t) {
    return t >= 0 && t <= AUTH_TIME_MAX;
}

static bool audience_ok(const cJSON *aud, const char *want) {
    if (cJSON_IsString(aud))
        return strcmp(aud->valuestring, want) == 0;
    if (!cJSON_IsArray(aud))
        return false;
    for (const cJSON *a = aud->child; a; a = a->next)
        if (cJSON_IsString(a) && strcmp(a->valuestring, want) == 0)
            return true;
    return false;
}

static int read_channels(const cJSON *v, auth_claims_t *out, const char **why) {
    if (!cJSON_IsArray(v))
        return fail(why, "bad_channels");
    int n = cJSON_GetArraySize(v);
    if (n > AUTH_CHANNELS_MAX)
        return fail(why, "bad_channels");
    out->channels = calloc((size_t)n + 1, sizeof(char *));
    if (!out->channels)
        return fail(why, "out_of_memory");
    for (const cJSON *c = v->child; c; c = c->next) {
        if (!cJSON_IsString(c) || strlen(c->valuestring) == 0 ||
            strlen(c->valuestring) > AUTH_PATTERN_MAX)
            return fail(why, "bad_channels");
        out->channels[out->nchannels] = strdup(c->valuestring);
        if (!out->channels[out->nchannels])
            return fail(why, "out_of_memory");
        out->nchannels++;
    }
    return 0;
}

static int check_claims(const auth_config_t *cfg, const cJSON *claims, double now,
                        auth_claims_t *out, const char **why) {
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(claims, "sub");
    if (!cJSON_IsString(sub))
        return fail(why, "no_sub");
    size_t sl = strlen(sub->valuestring);
    if (!pd_user_id_valid(sub->valuestring, sl))
        return fail(why, "bad_sub");
    double exp, nbf, iat;
    if (!number_claim(claims, "exp", &exp))
        return fail(why, "no_exp");
    /* An exp in the past, negative ones too, has simply expired; one past the range (or NaN,
     * which no comparison passes) cannot be computed with. */
    if (!(exp <= AUTH_TIME_MAX))
        return fail(why, "bad_exp");
    if (exp <= now)
        return fail(why, "expired");
    if (cJSON_GetObjectItemCaseSensitive(claims, "nbf")) {
        if (!number_claim(claims, "nbf", &nbf) || !time_in_range(nbf))
            return fail(why, "bad_nbf");
        if (nbf > now + AUTH_LEEWAY)
            return fail(why, "not_yet_valid");
    }
    if (cJSON_GetObjectItemCaseSensitive(claims, "iat")) {
        if (!number_claim(claims, "iat", &iat) || !time_in_range(iat))
            return fail(why, "bad_iat");
        if (iat > now + AUTH_LEEWAY)
            return fail(why, "issued_in_future");
    }
    if (cfg->issuer[0]) {
        const cJSON *iss = cJSON_GetObjectItemCaseSensitive(claims, "iss");
        if (!cJSON_IsString(iss) || strcmp(iss->valuestring, cfg->issuer) != 0)
            return fail(why, "bad_issuer");
    }
    if (cfg->audience[0] &&
        !audience_ok(cJSON_GetObjectItemCaseSensitive(claims, "aud"), cfg->audience))
        return fail(why, "bad_audience");
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(claims, "channels");
    if (ch && read_channels(ch, out, why) != 0)
        return PD_EAUTH;
    memcpy(out->sub, sub->valuestring, sl + 1);
    out->sub_len = sl;
    out->exp = exp;
    return 0;
}

int auth_verify(const auth_config_t *cfg, const char *token, size_t len, double now,
                auth_claims_t *out, const char **why) {
    memset(out, 0, sizeof(*out));
    if (cfg->alg == AUTH_ALG_NONE)
        return fail(why, "tokens_disabled");
    if (len == 0)
        return fail(why, "empty");
    if (len > AUTH_TOKEN_MAX)
        return fail(why, "too_large");
    int rc = check_header(cfg, token, len, why);
    if (rc)
        return rc;
    char buf[AUTH_TOKEN_MAX + 1];
    memcpy(buf, token, len);
    buf[len] = '\0';
    if (memchr(buf, '\0', len))
        return fail(why, "malformed");
    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, buf, cfg->key, (int)cfg->key_len) != 0 || !jwt)
        return fail(why, "bad_signature");
    /* Belt and braces: the algorithm libjwt verified with is the configured one. */
    static const jwt_alg_t libjwt_alg[] = {JWT_ALG_NONE, JWT_ALG_HS256, JWT_ALG_RS256,
                                           JWT_ALG_ES256};
    if (jwt_get_alg(jwt) != libjwt_alg[cfg->alg]) {
        jwt_free(jwt);
        return fail(why, "wrong_alg");
    }
    char *json = jwt_get_grants_json(jwt, NULL);
    jwt_free(jwt);
    cJSON *claims = json ? cJSON_Parse(json) : NULL;
    free(json);
    if (!cJSON_IsObject(claims)) {
        cJSON_Delete(claims);
        return fail(why, "malformed");
    }
    rc = check_claims(cfg, claims, now, out, why);
    cJSON_Delete(claims);
    if (rc)
        auth_claims_free(out);
    return rc;
}

bool auth_channel_allowed(const auth_claims_t *c, const char *channel, size_t len) {
    if (!c->channels)
        return true;
    char name[AUTH_PATTERN_MAX + 1];
    if (len > AUTH_PATTERN_MAX)
        return false;
    memcpy(name, channel, len);
    name[len] = '\0';
    for (uint32_t i = 0; i < c->nchannels; i++)
        if (fnmatch(c->channels[i], name, 0) == 0)
            return true;
    return false;
}
