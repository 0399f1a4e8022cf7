/* Connection tokens (auth/token.h): auth_verify against HS256, RS256 and ES256 keys at a fixed
 * "now", every refusal with its exact reason; the channels claim and auth_channel_allowed; and
 * the key loaders (auth_load_secret, auth_load_public_key) on temporary files, with their
 * exact messages.
 *
 * Tokens are built here byte by byte with OpenSSL (HMAC-SHA256, RSA PKCS#1 v1.5, ECDSA P-256
 * with the JWS raw r||s signature), so headers and claims can be anything, including what no
 * JWT library would produce. Keys are generated once per run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "auth/token.h"
#include "util/error.h"

#define NOW    1764316800.0 /* the fixed "now" of every verification */
#define SECRET "0123456789abcdef0123456789abcdef-test-secret" /* 44 bytes */
#define HS_HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define RS_HDR "{\"alg\":\"RS256\",\"typ\":\"JWT\"}"
#define ES_HDR "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"
#define CLAIMS "{\"sub\":\"alice\",\"exp\":1764320400}" /* exp = NOW + 3600 */

/* ---- keys and files, made once ---- */

static char tmpdir[64];
static EVP_PKEY *rsa_key, *rsa2_key, *ec_key, *ec2_key;
static char rsa_pem_path[128], ec_pem_path[128];

static char *path_in_tmp(const char *name) {
    static char p[4][160];
    static int i;
    char *out = p[i++ % 4];
    snprintf(out, 160, "%s/%s", tmpdir, name);
    return out;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_pubkey(EVP_PKEY *k, const char *path) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, k), 1);
    assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pd-token-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    rsa_key = EVP_RSA_gen(2048);
    rsa2_key = EVP_RSA_gen(2048);
    ec_key = EVP_EC_gen("P-256");
    ec2_key = EVP_EC_gen("P-256");
    if (!rsa_key || !rsa2_key || !ec_key || !ec2_key)
        return -1;
    snprintf(rsa_pem_path, sizeof(rsa_pem_path), "%s/rsa.pem", tmpdir);
    snprintf(ec_pem_path, sizeof(ec_pem_path), "%s/ec.pem", tmpdir);
    write_pubkey(rsa_key, rsa_pem_path);
    write_pubkey(ec_key, ec_pem_path);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(rsa2_key);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ec2_key);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- token building ---- */

static char *b64url(const void *data, size_t len) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const uint8_t *d = data;
    char *out = malloc(len / 3 * 4 + 5);
    assert_non_null(out);
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = tab[v >> 6 & 63];
        out[o++] = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)d[i] << 16;
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8;
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = tab[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

enum sig_kind { SIG_HS, SIG_RS, SIG_ES, SIG_ES_DER, SIG_NONE };

/* The signature of input by kind: HS with (hkey, hlen); RS and ES with pkey. */
static size_t sign(enum sig_kind kind, const void *hkey, size_t hlen, EVP_PKEY *pkey,
                   const char *input, uint8_t *out) {
    if (kind == SIG_NONE)
        return 0;
    if (kind == SIG_HS) {
        unsigned int n = 0;
        assert_non_null(
            HMAC(EVP_sha256(), hkey, (int)hlen, (const uint8_t *)input, strlen(input), out, &n));
        return n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey), 1);
    uint8_t der[512];
    size_t n = sizeof(der);
    assert_int_equal(EVP_DigestSign(ctx, der, &n, (const uint8_t *)input, strlen(input)), 1);
    EVP_MD_CTX_free(ctx);
    if (kind == SIG_RS || kind == SIG_ES_DER) {
        memcpy(out, der, n);
        return n;
    }
    /* JWS ES256: r and s as 32-byte big-endian numbers, not DER. */
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
    assert_non_null(es);
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(es, &r, &s);
    assert_int_equal(BN_bn2binpad(r, out, 32), 32);
    assert_int_equal(BN_bn2binpad(s, out + 32, 32), 32);
    ECDSA_SIG_free(es);
    return 64;
}

/* header.payload.signature for JSON texts header and claims. Caller frees. */
static char *make_with(enum sig_kind kind, const void *hkey, size_t hlen, EVP_PKEY *pkey,
                       const char *header, const char *claims) {
    char *h = b64url(header, strlen(header));
    char *p = b64url(claims, strlen(claims));
    size_t in_len = strlen(h) + 1 + strlen(p);
    char *input = malloc(in_len + 1);
    assert_non_null(input);
    snprintf(input, in_len + 1, "%s.%s", h, p);
    uint8_t sig[512];
    size_t n = sign(kind, hkey, hlen, pkey, input, sig);
    char *s = b64url(sig, n);
    char *tok = malloc(in_len + 1 + strlen(s) + 1);
    assert_non_null(tok);
    sprintf(tok, "%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return tok;
}

static char *hs(const char *header, const char *claims) {
    return make_with(SIG_HS, SECRET, strlen(SECRET), NULL, header, claims);
}
static char *rs(const char *header, const char *claims) {
    return make_with(SIG_RS, NULL, 0, rsa_key, header, claims);
}
static char *es(const char *header, const char *claims) {
    return make_with(SIG_ES, NULL, 0, ec_key, header, claims);
}

/* ---- configs ---- */

static auth_config_t hs_cfg(void) {
    auth_config_t c = {.alg = AUTH_ALG_HS256};
    c.key = (unsigned char *)strdup(SECRET);
    c.key_len = strlen(SECRET);
    return c;
}

static auth_config_t pem_cfg(const char *path, int want_alg) {
    auth_config_t c = {0};
    char *buf = NULL;
    size_t sz = 0;
    FILE *err = open_memstream(&buf, &sz);
    assert_int_equal(auth_load_public_key(&c, path, err), 0);
    fclose(err);
    assert_int_equal(sz, 0); /* nothing said on success */
    free(buf);
    assert_int_equal(c.alg, want_alg);
    return c;
}

/* ---- checks ---- */

static void expect_ok(const auth_config_t *c, const char *tok, const char *sub, double exp) {
    auth_claims_t cl;
    const char *why = "(unset)";
    int rc = auth_verify(c, tok, strlen(tok), NOW, &cl, &why);
    if (rc != 0)
        fail_msg("token refused (%s), expected accepted: %s", why, tok);
    assert_string_equal(cl.sub, sub);
    assert_int_equal(cl.sub_len, strlen(sub));
    assert_true(cl.exp == exp);
    auth_claims_free(&cl);
}

static void expect_why_len(const auth_config_t *c, const char *tok, size_t len, const char *want) {
    auth_claims_t cl;
    memset(&cl, 0xA5, sizeof(cl));
    const char *why = "(unset)";
    int rc = auth_verify(c, tok, len, NOW, &cl, &why);
    if (rc == 0) {
        auth_claims_free(&cl);
        fail_msg("token accepted, expected refused with %s: %.300s", want, tok);
    }
    assert_int_equal(rc, PD_EAUTH);
    if (strcmp(why, want) != 0)
        fail_msg("token refused with \"%s\", expected \"%s\": %.300s", why, want, tok);
    /* A refusal leaves nothing to free: the claims are empty. */
    assert_null(cl.channels);
    assert_int_equal(cl.nchannels, 0);
    auth_claims_free(&cl);
}

static void expect_why(const auth_config_t *c, const char *tok, const char *want) {
    expect_why_len(c, tok, strlen(tok), want);
}

/* Builds an HS256 token with claims and checks the reason (NULL: accepted as alice). */
static void hs_claims(const auth_config_t *c, const char *claims, const char *want) {
    char *t = hs(HS_HDR, claims);
    if (want)
        expect_why(c, t, want);
    else
        expect_ok(c, t, "alice", NOW + 3600);
    free(t);
}

/* ---- valid tokens ---- */

static void test_valid_hs256(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    char *t = hs(HS_HDR, CLAIMS);
    auth_claims_t cl;
    const char *why = NULL;
    assert_int_equal(auth_verify(&c, t, strlen(t), NOW, &cl, &why), 0);
    assert_string_equal(cl.sub, "alice");
    assert_int_equal(cl.sub_len, 5);
    assert_true(cl.exp == NOW + 3600);
    assert_null(cl.channels); /* no claim: any room */
    assert_int_equal(cl.nchannels, 0);
    assert_true(auth_channel_allowed(&cl, "doc:42", 6));
    auth_claims_free(&cl);
    free(t);
    /* No typ, extra header fields, fractional exp, nbf/iat in the past, extra claims. */
    t = hs("{\"alg\":\"HS256\",\"kid\":\"k1\"}",
           "{\"sub\":\"b\\u00e9a\",\"exp\":1764316800.5,\"nbf\":1764316000,\"iat\":1764316000,"
           "\"name\":\"x\",\"admin\":true}");
    expect_ok(&c, t,
              "b\xc3\xa9"
              "a",
              NOW + 0.5);
    free(t);
    /* A header whose base64url text holds '-' and '_' (the characters it does not share with
     * standard base64): decoded as base64url. */
    t = hs("{\"alg\":\"HS256\",\"kid\":\"~~~???\"}", CLAIMS);
    size_t hlen = (size_t)(strchr(t, '.') - t);
    assert_non_null(memchr(t, '-', hlen));
    assert_non_null(memchr(t, '_', hlen));
    expect_ok(&c, t, "alice", NOW + 3600);
    free(t);
    /* The same header in standard base64 ('+', '/'): not base64url, refused. */
    t = hs("{\"alg\":\"HS256\",\"kid\":\"~~~???\"}", CLAIMS);
    for (char *x = t; *x != '.'; x++)
        *x = *x == '-' ? '+' : *x == '_' ? '/' : *x;
    expect_why(&c, t, "malformed");
    free(t);
    /* A sub of exactly 128 bytes. */
    char claims[256];
    snprintf(claims, sizeof(claims), "{\"sub\":\"%0128d\",\"exp\":1764320400}", 7);
    char sub[129];
    snprintf(sub, sizeof(sub), "%0128d", 7);
    t = hs(HS_HDR, claims);
    expect_ok(&c, t, sub, NOW + 3600);
    free(t);
    auth_config_free(&c);
    assert_null(c.key);
    assert_int_equal(c.alg, AUTH_ALG_NONE);
}

static void test_valid_rs256(void **state) {
    (void)state;
    auth_config_t c = pem_cfg(rsa_pem_path, AUTH_ALG_RS256);
    char *t = rs(RS_HDR, CLAIMS);
    expect_ok(&c, t, "alice", NOW + 3600);
    free(t);
    /* Signed by another RSA key: not ours. */
    t = make_with(SIG_RS, NULL, 0, rsa2_key, RS_HDR, CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    auth_config_free(&c);
}

static void test_valid_es256(void **state) {
    (void)state;
    auth_config_t c = pem_cfg(ec_pem_path, AUTH_ALG_ES256);
    /* ECDSA signatures are randomised: several, each must verify. */
    for (int i = 0; i < 8; i++) {
        char *t = es(ES_HDR, CLAIMS);
        expect_ok(&c, t, "alice", NOW + 3600);
        free(t);
    }
    char *t = make_with(SIG_ES, NULL, 0, ec2_key, ES_HDR, CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    /* The DER form is not JWS's: refused. */
    t = make_with(SIG_ES_DER, NULL, 0, ec_key, ES_HDR, CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    auth_config_free(&c);
}

/* ---- time claims ---- */

static void test_exp(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764316799}", "expired");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764316800}", "expired"); /* exp == now */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764316799.999}", "expired");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":0}", "expired");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":-5}", "expired");
    /* No leeway on exp: one millisecond left is still valid. */
    char *t = hs(HS_HDR, "{\"sub\":\"alice\",\"exp\":1764316800.001}");
    expect_ok(&c, t, "alice", 1764316800.001);
    free(t);
    /* Missing or not a number. */
    hs_claims(&c, "{\"sub\":\"alice\"}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":\"1764320400\"}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":null}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":true}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":[1764320400]}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":{\"v\":1764320400}}", "no_exp");
    hs_claims(&c, "{\"sub\":\"alice\",\"EXP\":1764320400}", "no_exp"); /* case-sensitive */
    auth_config_free(&c);
}

/* exp past AUTH_TIME_MAX, nbf and iat outside [0, AUTH_TIME_MAX]: an exp of 1e300 was accepted
 * and its delay, turned into milliseconds for the expiry timer, overflowed (undefined
 * behaviour, UBSan aborts); a hugely negative nbf or iat passed. Each is refused, naming its
 * claim. */
static void test_time_range(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    static const char *const bad_exp[] = {
        "1e300",        "1.7976931348623157e308", "1e19", "9223372036854775807",
        "253402300800", "253402300799.5",
    };
    for (size_t i = 0; i < sizeof(bad_exp) / sizeof(bad_exp[0]); i++) {
        char claims[128];
        snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%s}", bad_exp[i]);
        char *t = hs(HS_HDR, claims);
        expect_why(&c, t, "bad_exp");
        free(t);
    }
    static const char *const bad_time[] = {"1e300", "-1", "-1e300", "253402300800", "1e19"};
    for (size_t i = 0; i < sizeof(bad_time) / sizeof(bad_time[0]); i++) {
        char claims[128];
        snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":%s}",
                 bad_time[i]);
        char *t = hs(HS_HDR, claims);
        expect_why(&c, t, "bad_nbf");
        free(t);
        snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":%s}",
                 bad_time[i]);
        t = hs(HS_HDR, claims);
        expect_why(&c, t, "bad_iat");
        free(t);
    }
    /* Numbers libjwt cannot hold (past a double, past an int64) are refused too, whatever the
     * reason. */
    static const char *const unholdable[] = {"1e999", "18446744073709551616", "-1e999"};
    for (size_t i = 0; i < sizeof(unholdable) / sizeof(unholdable[0]); i++) {
        char claims[128];
        snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%s}", unholdable[i]);
        char *t = hs(HS_HDR, claims);
        auth_claims_t cl;
        const char *why;
        assert_int_equal(auth_verify(&c, t, strlen(t), NOW, &cl, &why), PD_EAUTH);
        free(t);
    }
    /* Negative exps are in the past: expired, however far. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":-1e300}", "expired");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":-9223372036854775808}", "expired");
    char *t;
    /* The bounds themselves are fine: the last second of year 9999, and 0 for nbf and iat. */
    t = hs(HS_HDR, "{\"sub\":\"alice\",\"exp\":253402300799}");
    expect_ok(&c, t, "alice", AUTH_TIME_MAX);
    free(t);
    t = hs(HS_HDR, "{\"sub\":\"alice\",\"exp\":253402300798.25,\"nbf\":0,\"iat\":0}");
    expect_ok(&c, t, "alice", 253402300798.25);
    free(t);
    /* An exp of 0 is in range, and long past. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":0}", "expired");
    /* What the contract promises the expiry timer: the delay fits in milliseconds. */
    assert_true((AUTH_TIME_MAX - NOW) * 1000.0 < 2.6e14);
    auth_config_free(&c);
}

static void test_nbf_iat(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    /* nbf: 30 s of skew allowed, not 31. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764316831}", "not_yet_valid");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764316830.5}", "not_yet_valid");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764317800}", "not_yet_valid");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764316830}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764316829}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":1764316800}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":0}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":\"soon\"}", "bad_nbf");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":null}", "bad_nbf");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"nbf\":false}", "bad_nbf");
    /* iat: the same leeway. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":1764316831}", "issued_in_future");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":1764400000}", "issued_in_future");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":1764316830}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":1764316820}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":1}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":\"now\"}", "bad_iat");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iat\":[]}", "bad_iat");
    /* Order of checks: expiry before nbf. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1,\"nbf\":1764400000}", "expired");
    auth_config_free(&c);
}

/* ---- signatures and algorithms ---- */

/* Replaces the character at i of a token by another base64url character. */
static char flip_char(char ch) {
    return ch == 'A' ? 'B' : 'A';
}

static void test_bad_signature_each_segment(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    /* The header carries a kid whose bytes start at a multiple of 3, so its base64 text can
     * be changed without breaking the JSON: "QUFB" is "AAA", "QkFB" is "BAA". */
    const char *hdr = "{\"alg\":\"HS256\",\"kid\":\"xxAAAAAA\"}";
    size_t off = (size_t)(strstr(hdr, "AAAAAA") - hdr);
    assert_int_equal(off % 3, 0);
    char *t = hs(hdr, CLAIMS);
    expect_ok(&c, t, "alice", NOW + 3600);
    size_t len = strlen(t);
    char *dot1 = strchr(t, '.'), *dot2 = strchr(dot1 + 1, '.');

    /* Header: a byte of the header changed (still JSON with alg HS256). */
    char *h = strdup(t);
    size_t hi = off / 3 * 4;
    assert_memory_equal(h + hi, "QUFB", 4);
    h[hi + 1] = 'k';
    expect_why(&c, h, "bad_signature");
    free(h);

    /* Payload and signature: every character, each changed in turn. */
    for (size_t i = (size_t)(dot1 - t) + 1; i < len; i++) {
        if (t + i == dot2)
            continue;
        char *m = strdup(t);
        m[i] = flip_char(m[i]);
        expect_why(&c, m, "bad_signature");
        free(m);
    }
    /* The signature cut short, extended, emptied. */
    char *m = strdup(t);
    m[len - 1] = '\0';
    expect_why(&c, m, "bad_signature");
    free(m);
    m = malloc(len + 2);
    sprintf(m, "%sA", t);
    expect_why(&c, m, "bad_signature");
    free(m);
    m = strndup(t, (size_t)(dot2 - t) + 1);
    expect_why(&c, m, "bad_signature");
    free(m);
    /* Signed with another secret. */
    char *o = make_with(SIG_HS, "another secret of at least 32 bytes!", 36, NULL, HS_HDR, CLAIMS);
    expect_why(&c, o, "bad_signature");
    free(o);
    free(t);

    /* The same for RS256 and ES256 (a middle character of each of payload and signature). */
    auth_config_t r = pem_cfg(rsa_pem_path, AUTH_ALG_RS256);
    auth_config_t e = pem_cfg(ec_pem_path, AUTH_ALG_ES256);
    char *toks[2] = {rs(RS_HDR, CLAIMS), es(ES_HDR, CLAIMS)};
    auth_config_t *cfgs[2] = {&r, &e};
    for (int k = 0; k < 2; k++) {
        char *x = toks[k];
        expect_ok(cfgs[k], x, "alice", NOW + 3600);
        char *d1 = strchr(x, '.'), *d2 = strchr(d1 + 1, '.');
        size_t mid_p = (size_t)(d1 - x) + (size_t)(d2 - d1) / 2;
        size_t mid_s = (size_t)(d2 - x) + strlen(d2) / 2;
        for (int which = 0; which < 2; which++) {
            char *y = strdup(x);
            size_t i = which ? mid_s : mid_p;
            y[i] = flip_char(y[i]);
            expect_why(cfgs[k], y, "bad_signature");
            free(y);
        }
        free(x);
    }
    auth_config_free(&r);
    auth_config_free(&e);
    auth_config_free(&c);
}

static void test_alg_none(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    char *t = make_with(SIG_NONE, NULL, 0, NULL, "{\"alg\":\"none\",\"typ\":\"JWT\"}", CLAIMS);
    assert_int_equal(t[strlen(t) - 1], '.'); /* header.payload. */
    expect_why(&c, t, "wrong_alg");
    free(t);
    /* Any spelling, and with a signature attached. */
    const char *hdrs[] = {"{\"alg\":\"None\"}",  "{\"alg\":\"NONE\"}",  "{\"alg\":\"nOnE\"}",
                          "{\"alg\":\"\"}",      "{\"alg\":\"hs256\"}", "{\"alg\":\"HS512\"}",
                          "{\"alg\":\"HS384\"}", "{\"alg\":\"RS256\"}", "{\"alg\":\"ES256\"}",
                          "{\"alg\":\"PS256\"}", "{\"alg\":\"EdDSA\"}", "{\"alg\":\"HS256 \"}"};
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        t = hs(hdrs[i], CLAIMS);
        expect_why(&c, t, "wrong_alg");
        free(t);
        t = make_with(SIG_NONE, NULL, 0, NULL, hdrs[i], CLAIMS);
        expect_why(&c, t, "wrong_alg");
        free(t);
    }
    /* With RS256 configured, none is refused the same way. */
    auth_config_t r = pem_cfg(rsa_pem_path, AUTH_ALG_RS256);
    t = make_with(SIG_NONE, NULL, 0, NULL, "{\"alg\":\"none\"}", CLAIMS);
    expect_why(&r, t, "wrong_alg");
    free(t);
    auth_config_free(&r);
    /* A duplicate alg key: the header check reads the first, libjwt the last; either way
     * the token is refused. */
    t = hs("{\"alg\":\"none\",\"alg\":\"HS256\"}", CLAIMS);
    expect_why(&c, t, "wrong_alg");
    free(t);
    t = hs("{\"alg\":\"HS256\",\"alg\":\"none\"}", CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    t = make_with(SIG_NONE, NULL, 0, NULL, "{\"alg\":\"HS256\",\"alg\":\"none\"}", CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    auth_config_free(&c);
}

static void test_wrong_alg_for_key(void **state) {
    (void)state;
    auth_config_t r = pem_cfg(rsa_pem_path, AUTH_ALG_RS256);
    auth_config_t e = pem_cfg(ec_pem_path, AUTH_ALG_ES256);
    auth_config_t h = hs_cfg();

    /* The classic attack: HS256 "signed" with the public key PEM (as the server holds it,
     * byte for byte) as the HMAC secret. */
    char *t = make_with(SIG_HS, r.key, r.key_len, NULL, HS_HDR, CLAIMS);
    expect_why(&r, t, "wrong_alg");
    free(t);
    t = make_with(SIG_HS, e.key, e.key_len, NULL, HS_HDR, CLAIMS);
    expect_why(&e, t, "wrong_alg");
    free(t);
    /* An RS256 header on that HMAC: the header passes, the signature does not. */
    t = make_with(SIG_HS, r.key, r.key_len, NULL, RS_HDR, CLAIMS);
    expect_why(&r, t, "bad_signature");
    free(t);
    /* Any ordinary HS256 token with RS256 or ES256 configured. */
    t = hs(HS_HDR, CLAIMS);
    expect_why(&r, t, "wrong_alg");
    expect_why(&e, t, "wrong_alg");
    free(t);
    /* RS256 token when HS256 (or ES256) is configured. */
    t = rs(RS_HDR, CLAIMS);
    expect_why(&h, t, "wrong_alg");
    expect_why(&e, t, "wrong_alg");
    free(t);
    /* ES256 token when HS256 or RS256 is configured. */
    t = es(ES_HDR, CLAIMS);
    expect_why(&h, t, "wrong_alg");
    expect_why(&r, t, "wrong_alg");
    free(t);
    /* An ES256 signature under an RS256 header (and the reverse). */
    t = make_with(SIG_ES, NULL, 0, ec_key, RS_HDR, CLAIMS);
    expect_why(&r, t, "bad_signature");
    free(t);
    t = make_with(SIG_RS, NULL, 0, rsa_key, ES_HDR, CLAIMS);
    expect_why(&e, t, "bad_signature");
    free(t);
    /* Tokens disabled. */
    auth_config_t none = {0};
    t = hs(HS_HDR, CLAIMS);
    expect_why(&none, t, "tokens_disabled");
    free(t);
    auth_config_free(&r);
    auth_config_free(&e);
    auth_config_free(&h);
}

/* ---- shape ---- */

static void test_malformed(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    char *good = hs(HS_HDR, CLAIMS);
    char *d1 = strchr(good, '.'), *d2 = strchr(d1 + 1, '.');
    char *hdr = strndup(good, (size_t)(d1 - good));
    char *pay = strndup(d1 + 1, (size_t)(d2 - d1 - 1));
    char *sig = strdup(d2 + 1);
    char buf[2048];

    expect_why_len(&c, "", 0, "empty");
    /* 1, 2 and 4 parts. */
    expect_why(&c, hdr, "malformed");
    snprintf(buf, sizeof(buf), "%s.%s", hdr, pay);
    expect_why(&c, buf, "malformed");
    snprintf(buf, sizeof(buf), "%s.%s.%s.%s", hdr, pay, sig, sig);
    expect_why(&c, buf, "malformed");
    snprintf(buf, sizeof(buf), "%s.%s.%s.", hdr, pay, sig);
    expect_why(&c, buf, "malformed");
    expect_why(&c, ".", "malformed");
    expect_why(&c, "..", "malformed");
    expect_why(&c, "...", "malformed");
    snprintf(buf, sizeof(buf), ".%s.%s", pay, sig);
    expect_why(&c, buf, "malformed"); /* empty header */

    /* Bad base64url in the header: padding, the standard alphabet, spaces, a length that
     * no encoding has. */
    const char *bad_hdr[] = {"eyJhbGciOiJIUzI1NiJ9=",
                             "eyJhbGciOiJIUzI1NiJ9+",
                             "eyJh/GciOiJIUzI1NiJ9",
                             "eyJhbGciOi JIUzI1NiJ9",
                             "eyJhbGciOiJIUzI1NiJ9A",
                             "eyJhbGciOiJIUzI1NiJ9*",
                             "e"};
    for (size_t i = 0; i < sizeof(bad_hdr) / sizeof(bad_hdr[0]); i++) {
        snprintf(buf, sizeof(buf), "%s.%s.%s", bad_hdr[i], pay, sig);
        expect_why(&c, buf, "malformed");
    }
    /* The header text is not JSON, not an object, or has no string alg. */
    const char *not_obj[] = {"alg=HS256",
                             "{\"alg\":\"HS256\"",
                             "[\"HS256\"]",
                             "\"HS256\"",
                             "256",
                             "null",
                             "{}",
                             "{\"alg\":256}",
                             "{\"alg\":null}",
                             "{\"alg\":[\"HS256\"]}",
                             "{\"ALG\":\"HS256\"}"};
    for (size_t i = 0; i < sizeof(not_obj) / sizeof(not_obj[0]); i++) {
        char *t = hs(not_obj[i], CLAIMS);
        expect_why(&c, t, "malformed");
        free(t);
    }
    /* Data after the header object: refused (the header check stops at the object's end,
     * libjwt then refuses the text as a whole). */
    char *tx = hs("{\"alg\":\"HS256\"}x", CLAIMS);
    expect_why(&c, tx, "bad_signature");
    free(tx);
    /* A critical header extension is never understood (RFC 7515 4.1.11). */
    char *t = hs("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", CLAIMS);
    expect_why(&c, t, "unsupported_crit");
    free(t);
    t = hs("{\"alg\":\"HS256\",\"crit\":[]}", CLAIMS);
    expect_why(&c, t, "unsupported_crit");
    free(t);
    t = hs("{\"crit\":[\"x\"],\"alg\":\"HS256\",\"x\":1}", CLAIMS);
    expect_why(&c, t, "unsupported_crit");
    free(t);
    /* Claims that are not a JSON object: refused, whatever the signature says. */
    const char *bad_claims[] = {"[\"alice\"]", "\"alice\"", "not json", "{\"sub\":\"alice\""};
    for (size_t i = 0; i < sizeof(bad_claims) / sizeof(bad_claims[0]); i++) {
        t = hs(HS_HDR, bad_claims[i]);
        auth_claims_t cl;
        const char *why = NULL;
        assert_int_equal(auth_verify(&c, t, strlen(t), NOW, &cl, &why), PD_EAUTH);
        if (strcmp(why, "malformed") != 0 && strcmp(why, "bad_signature") != 0)
            fail_msg("claims %s refused with %s", bad_claims[i], why);
        free(t);
    }
    /* A NUL byte inside the token (the length says more). */
    snprintf(buf, sizeof(buf), "%s", good);
    size_t len = strlen(buf);
    buf[(size_t)(d1 - good) + 3] = '\0';
    expect_why_len(&c, buf, len, "malformed");
    /* The length given is what counts: the good token cut short is not the good token. */
    expect_why_len(&c, good, strlen(good) - 1, "bad_signature");
    expect_why_len(&c, good, (size_t)(d2 - good), "malformed");
    free(hdr);
    free(pay);
    free(sig);
    free(good);
    auth_config_free(&c);
}

static void test_size_limit(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    /* Find a pad that makes the token exactly AUTH_TOKEN_MAX bytes: accepted; one more
     * byte of pad: too_large (unparsed). */
    char *claims = malloc(8192);
    char *pad = malloc(8192);
    assert_non_null(claims);
    assert_non_null(pad);
    char *exact = NULL;
    for (size_t n = 2900; n < 3200 && !exact; n++) {
        for (size_t k = 0; k < 3 && !exact; k++) {
            memset(pad, 'p', n);
            pad[n] = '\0';
            char hdr[64];
            snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"kid\":\"%.*s\"}", (int)(k + 1), "kkk");
            snprintf(claims, 8192, "{\"sub\":\"alice\",\"exp\":1764320400,\"pad\":\"%s\"}", pad);
            char *t = hs(hdr, claims);
            if (strlen(t) == AUTH_TOKEN_MAX)
                exact = t;
            else
                free(t);
        }
    }
    assert_non_null(exact);
    expect_ok(&c, exact, "alice", NOW + 3600);
    free(exact);
    for (size_t n = 2900; n < 3300; n++) {
        memset(pad, 'p', n);
        pad[n] = '\0';
        snprintf(claims, 8192, "{\"sub\":\"alice\",\"exp\":1764320400,\"pad\":\"%s\"}", pad);
        char *t = hs(HS_HDR, claims);
        size_t len = strlen(t);
        if (len > AUTH_TOKEN_MAX)
            expect_why(&c, t, "too_large");
        free(t);
    }
    /* Huge: far over the limit, and garbage of that size (never parsed). */
    size_t big = 1 << 20;
    char *g = malloc(big);
    assert_non_null(g);
    memset(g, 'A', big);
    expect_why_len(&c, g, big, "too_large");
    expect_why_len(&c, g, AUTH_TOKEN_MAX + 1, "too_large");
    /* At the limit, garbage is judged on its shape. */
    expect_why_len(&c, g, AUTH_TOKEN_MAX, "malformed");
    free(g);
    free(claims);
    free(pad);
    auth_config_free(&c);
}

/* ---- the subject ---- */

static void test_sub(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    hs_claims(&c, "{\"exp\":1764320400}", "no_sub");
    hs_claims(&c, "{\"sub\":42,\"exp\":1764320400}", "no_sub");
    hs_claims(&c, "{\"sub\":null,\"exp\":1764320400}", "no_sub");
    hs_claims(&c, "{\"sub\":[\"alice\"],\"exp\":1764320400}", "no_sub");
    hs_claims(&c, "{\"SUB\":\"alice\",\"exp\":1764320400}", "no_sub");
    hs_claims(&c, "{\"sub\":\"\",\"exp\":1764320400}", "bad_sub");
    char claims[512];
    snprintf(claims, sizeof(claims), "{\"sub\":\"%0129d\",\"exp\":1764320400}", 1);
    hs_claims(&c, claims, "bad_sub");
    /* 128 bytes made of 2-byte characters: 64 x "é" is fine, 65 is too long. */
    char sub[400] = "";
    for (int i = 0; i < 65; i++)
        strcat(sub, "\\u00e9");
    snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":1764320400}", sub);
    hs_claims(&c, claims, "bad_sub");
    sub[64 * 6] = '\0';
    snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":1764320400}", sub);
    char *t = hs(HS_HDR, claims);
    char want[200] = "";
    for (int i = 0; i < 64; i++)
        strcat(want, "\xc3\xa9");
    expect_ok(&c, t, want, NOW + 3600);
    free(t);
    /* Control characters: C0, DEL, C1. */
    const char *ctl[] = {"al\\nice",     "al\\u0001ice", "\\u001f", "al\\u007fice",
                         "al\\u0085ice", "\\u009f",      "tab\\t",  "cr\\r"};
    for (size_t i = 0; i < sizeof(ctl) / sizeof(ctl[0]); i++) {
        snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":1764320400}", ctl[i]);
        hs_claims(&c, claims, "bad_sub");
    }
    /* An escaped NUL never becomes a shorter user id. */
    t = hs(HS_HDR, "{\"sub\":\"alice\\u0000admin\",\"exp\":1764320400}");
    auth_claims_t cl;
    const char *why = NULL;
    int rc = auth_verify(&c, t, strlen(t), NOW, &cl, &why);
    if (rc == 0) {
        auth_claims_free(&cl);
        fail_msg("a sub with an escaped NUL was accepted as \"%s\"", cl.sub);
    }
    free(t);
    /* Spaces and non-ASCII are ordinary user-id characters. */
    t = hs(HS_HDR, "{\"sub\":\"w\\u00e9l \\u00fc/\\u2603?&=\",\"exp\":1764320400}");
    expect_ok(&c, t, "w\xc3\xa9l \xc3\xbc/\xe2\x98\x83?&=", NOW + 3600);
    free(t);
    auth_config_free(&c);
}

/* ---- issuer and audience ---- */

static void test_iss_aud(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    /* Not configured: not checked. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"any\",\"aud\":7}", NULL);

    snprintf(c.issuer, sizeof(c.issuer), "https://issuer.example");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"https://issuer.example\"}",
              NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400}", "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"https://evil.example\"}",
              "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"https://issuer.example/\"}",
              "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"https://issuer.exampl\"}",
              "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":\"HTTPS://ISSUER.EXAMPLE\"}",
              "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":[\"https://issuer.example\"]}",
              "bad_issuer");
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"iss\":null}", "bad_issuer");

    snprintf(c.audience, sizeof(c.audience), "presenced");
    const char *iss = "\"iss\":\"https://issuer.example\"";
    char claims[512];
    struct {
        const char *aud; /* NULL: absent */
        const char *want;
    } cases[] = {
        {"\"presenced\"", NULL},
        {"[\"presenced\"]", NULL},
        {"[\"other\",\"presenced\"]", NULL},
        {"[1,null,{},\"presenced\"]", NULL},
        {NULL, "bad_audience"},
        {"\"other\"", "bad_audience"},
        {"\"presenced2\"", "bad_audience"},
        {"\"Presenced\"", "bad_audience"},
        {"\"\"", "bad_audience"},
        {"[]", "bad_audience"},
        {"[\"other\",\"x\"]", "bad_audience"},
        {"[[\"presenced\"]]", "bad_audience"},
        {"{\"presenced\":true}", "bad_audience"},
        {"42", "bad_audience"},
        {"null", "bad_audience"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (cases[i].aud)
            snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":1764320400,%s,\"aud\":%s}",
                     iss, cases[i].aud);
        else
            snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":1764320400,%s}", iss);
        hs_claims(&c, claims, cases[i].want);
    }
    /* The issuer is checked before the audience. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"aud\":\"x\"}", "bad_issuer");
    /* Audience alone. */
    c.issuer[0] = '\0';
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"aud\":\"presenced\"}", NULL);
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400}", "bad_audience");
    auth_config_free(&c);
}

/* ---- channels ---- */

static void verify_claims(const auth_config_t *c, const char *claims, auth_claims_t *cl) {
    char *t = hs(HS_HDR, claims);
    const char *why = "(unset)";
    int rc = auth_verify(c, t, strlen(t), NOW, cl, &why);
    if (rc)
        fail_msg("refused (%s): %s", why, claims);
    free(t);
}

static bool allowed(const auth_claims_t *cl, const char *ch) {
    return auth_channel_allowed(cl, ch, strlen(ch));
}

static void test_channels_claim(void **state) {
    (void)state;
    auth_config_t c = hs_cfg();
    auth_claims_t cl;
    verify_claims(&c,
                  "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[\"doc:*\",\"team/?\","
                  "\"[ab]*\"]}",
                  &cl);
    assert_int_equal(cl.nchannels, 3);
    assert_string_equal(cl.channels[0], "doc:*");
    assert_string_equal(cl.channels[1], "team/?");
    assert_string_equal(cl.channels[2], "[ab]*");

    /* doc:* : "*" also matches "/" and the empty string. */
    assert_true(allowed(&cl, "doc:42"));
    assert_true(allowed(&cl, "doc:"));
    assert_true(allowed(&cl, "doc:a/b/c"));
    assert_true(allowed(&cl, "doc:.hidden"));
    assert_false(allowed(&cl, "docs:1"));
    assert_false(allowed(&cl, "xdoc:1"));
    assert_false(allowed(&cl, "DOC:1"));
    /* team/? : exactly one character. */
    assert_true(allowed(&cl, "team/a"));
    assert_true(allowed(&cl, "team/7"));
    assert_false(allowed(&cl, "team/"));
    assert_false(allowed(&cl, "team/ab"));
    assert_false(allowed(&cl, "team"));
    /* [ab]* : starts with a or b. */
    assert_true(allowed(&cl, "a"));
    assert_true(allowed(&cl, "b1"));
    assert_true(allowed(&cl, "abc/d"));
    assert_false(allowed(&cl, "c"));
    assert_false(allowed(&cl, "A"));
    assert_false(allowed(&cl, "call:7@eu"));
    /* The length given is what counts (no NUL needed after it). */
    assert_true(auth_channel_allowed(&cl, "team/abc", 6));
    assert_false(auth_channel_allowed(&cl, "zz-doc:1", 2));
    assert_true(auth_channel_allowed(&cl, "doc:1zzz", 5));
    /* Longer than any channel: refused (not truncated into a match). */
    char longch[300];
    memset(longch, 'a', sizeof(longch) - 1);
    longch[sizeof(longch) - 1] = '\0';
    assert_true(auth_channel_allowed(&cl, longch, AUTH_PATTERN_MAX));
    assert_false(auth_channel_allowed(&cl, longch, AUTH_PATTERN_MAX + 1));
    assert_false(allowed(&cl, longch));
    auth_claims_free(&cl);
    assert_null(cl.channels);
    assert_int_equal(cl.nchannels, 0);
    auth_claims_free(&cl); /* twice is harmless */

    /* An empty list allows nothing (not everything). */
    verify_claims(&c, "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[]}", &cl);
    assert_non_null(cl.channels);
    assert_int_equal(cl.nchannels, 0);
    assert_false(allowed(&cl, "doc:1"));
    assert_false(allowed(&cl, "a"));
    auth_claims_free(&cl);

    /* Exactly 64 patterns of exactly 200 bytes: fine. */
    char *claims = malloc(64 * 210 + 200);
    assert_non_null(claims);
    char pat[AUTH_PATTERN_MAX + 1];
    memset(pat, 'q', AUTH_PATTERN_MAX);
    pat[AUTH_PATTERN_MAX] = '\0';
    pat[AUTH_PATTERN_MAX - 1] = '*';
    strcpy(claims, "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[");
    for (int i = 0; i < AUTH_CHANNELS_MAX; i++) {
        pat[0] = (char)('A' + i % 26);
        strcat(claims, i ? ",\"" : "\"");
        strcat(claims, pat);
        strcat(claims, "\"");
    }
    strcat(claims, "]}");
    char *t = hs(HS_HDR, claims);
    /* 64 x 200 bytes do not fit in a 4096-byte token: over the size limit first. */
    expect_why(&c, t, "too_large");
    free(t);
    free(claims);

    /* 64 short patterns: fine; 65: refused. */
    char small[2048];
    strcpy(small, "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[");
    for (int i = 0; i < AUTH_CHANNELS_MAX; i++) {
        char one[16];
        snprintf(one, sizeof(one), "%s\"r%d\"", i ? "," : "", i);
        strcat(small, one);
    }
    char at_max[2048];
    snprintf(at_max, sizeof(at_max), "%s]}", small);
    verify_claims(&c, at_max, &cl);
    assert_int_equal(cl.nchannels, AUTH_CHANNELS_MAX);
    assert_string_equal(cl.channels[63], "r63");
    assert_true(allowed(&cl, "r63"));
    assert_false(allowed(&cl, "r64"));
    auth_claims_free(&cl);
    strcat(small, ",\"r64\"]}");
    hs_claims(&c, small, "bad_channels");

    /* One pattern of 200 bytes: fine; 201: refused. */
    char one[400];
    snprintf(one, sizeof(one), "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[\"%s\"]}", pat);
    verify_claims(&c, one, &cl);
    assert_int_equal(cl.nchannels, 1);
    assert_int_equal(strlen(cl.channels[0]), AUTH_PATTERN_MAX);
    auth_claims_free(&cl);
    snprintf(one, sizeof(one), "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":[\"%sq\"]}",
             pat);
    hs_claims(&c, one, "bad_channels");

    /* Not an array, or entries that are not non-empty strings (also after good ones). */
    const char *bad[] = {
        "\"doc:*\"",        "{\"doc:*\":true}", "null",          "true",   "42",           "[42]",
        "[\"doc:*\",7]",    "[null]",           "[[\"doc:*\"]]", "[\"\"]", "[\"a\",\"\"]", "[{}]",
        "[\"doc:*\",false]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(one, sizeof(one), "{\"sub\":\"alice\",\"exp\":1764320400,\"channels\":%s}",
                 bad[i]);
        hs_claims(&c, one, "bad_channels");
    }
    /* A refused claim after an earlier failure reason: expiry is reported first. */
    hs_claims(&c, "{\"sub\":\"alice\",\"exp\":1,\"channels\":42}", "expired");
    auth_config_free(&c);
}

static void test_channel_allowed_without_claim(void **state) {
    (void)state;
    auth_claims_t cl = {0};
    assert_true(allowed(&cl, "doc:1"));
    assert_true(allowed(&cl, "anything/at:all"));
    assert_true(auth_channel_allowed(&cl, "x", 0));
}

/* ---- key files ---- */

/* Runs a loader on path; returns its return code and what it wrote (caller frees). */
static int load(int (*fn)(auth_config_t *, const char *, FILE *), auth_config_t *c,
                const char *path, char **msg) {
    size_t sz = 0;
    *msg = NULL;
    FILE *err = open_memstream(msg, &sz);
    assert_non_null(err);
    int rc = fn(c, path, err);
    fclose(err);
    return rc;
}

static void expect_msg(char *msg, const char *want) {
    if (strcmp(msg, want) != 0)
        fail_msg("message:\n  got  \"%s\"\n  want \"%s\"", msg, want);
    free(msg);
}

static void test_load_secret(void **state) {
    (void)state;
    auth_config_t c = {0};
    char *msg, want[512];
    char *p = path_in_tmp("secret");

    /* 31 bytes: refused. */
    write_file(p, "0123456789012345678901234567890", 31);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: the secret in '%s' is 31 bytes; HS256 needs at least 32\n", p);
    expect_msg(msg, want);
    assert_int_equal(c.alg, AUTH_ALG_NONE);
    assert_null(c.key);
    /* 31 bytes and newlines: still 31. */
    write_file(p, "0123456789012345678901234567890\r\n\n", 34);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    expect_msg(msg, want);
    /* Only newlines: empty once stripped. */
    write_file(p, "\n\n", 2);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: the secret in '%s' is 0 bytes; HS256 needs at least 32\n", p);
    expect_msg(msg, want);
    /* Empty file, missing file. */
    write_file(p, "", 0);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    snprintf(want, sizeof(want), "presenced: key file '%s' is empty or larger than 65536 bytes\n",
             p);
    expect_msg(msg, want);
    char *missing = path_in_tmp("no-such-secret");
    assert_int_equal(load(auth_load_secret, &c, missing, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: cannot open key file '%s': No such file or directory\n", missing);
    expect_msg(msg, want);
    /* Too large. */
    size_t big = 64 * 1024 + 1;
    char *blob = malloc(big);
    assert_non_null(blob);
    memset(blob, 's', big);
    write_file(p, blob, big);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    snprintf(want, sizeof(want), "presenced: key file '%s' is empty or larger than 65536 bytes\n",
             p);
    expect_msg(msg, want);
    free(blob);
    assert_int_equal(c.alg, AUTH_ALG_NONE);

    /* SECRET and a trailing newline (as `echo` writes it): the newline is not part of it. */
    char content[128];
    snprintf(content, sizeof(content), "%s\n", SECRET);
    write_file(p, content, strlen(content));
    assert_int_equal(load(auth_load_secret, &c, p, &msg), 0);
    expect_msg(msg, "");
    assert_int_equal(c.alg, AUTH_ALG_HS256);
    assert_int_equal(c.key_len, strlen(SECRET));
    assert_memory_equal(c.key, SECRET, strlen(SECRET));
    char *t = hs(HS_HDR, CLAIMS);
    expect_ok(&c, t, "alice", NOW + 3600);
    free(t);
    /* A token signed with the newline included does not verify. */
    t = make_with(SIG_HS, content, strlen(content), NULL, HS_HDR, CLAIMS);
    expect_why(&c, t, "bad_signature");
    free(t);
    /* CRLF and several newlines are stripped too; exactly 32 bytes is enough. */
    write_file(p, "0123456789abcdef0123456789abcdef\r\n\r\n", 36);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), 0);
    expect_msg(msg, "");
    assert_int_equal(c.key_len, 32);
    t = make_with(SIG_HS, "0123456789abcdef0123456789abcdef", 32, NULL, HS_HDR, CLAIMS);
    expect_ok(&c, t, "alice", NOW + 3600);
    free(t);
    /* Other trailing whitespace is part of the secret. */
    write_file(p, "0123456789abcdef0123456789abcdef \n", 34);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), 0);
    expect_msg(msg, "");
    assert_int_equal(c.key_len, 33);
    /* A failed load keeps the key loaded before. */
    write_file(p, "short\n", 6);
    assert_int_equal(load(auth_load_secret, &c, p, &msg), -1);
    free(msg);
    assert_int_equal(c.alg, AUTH_ALG_HS256);
    assert_int_equal(c.key_len, 33);
    auth_config_free(&c);
}

static void test_load_public_key(void **state) {
    (void)state;
    auth_config_t c = {0};
    char *msg, want[512];

    /* RSA 2048 and EC P-256: accepted, with their algorithm. */
    assert_int_equal(load(auth_load_public_key, &c, rsa_pem_path, &msg), 0);
    expect_msg(msg, "");
    assert_int_equal(c.alg, AUTH_ALG_RS256);
    assert_non_null(c.key);
    assert_int_equal(load(auth_load_public_key, &c, ec_pem_path, &msg), 0);
    expect_msg(msg, "");
    assert_int_equal(c.alg, AUTH_ALG_ES256);

    /* RSA 1024: refused. */
    EVP_PKEY *small = EVP_RSA_gen(1024);
    assert_non_null(small);
    char *p = path_in_tmp("rsa1024.pem");
    write_pubkey(small, p);
    EVP_PKEY_free(small);
    assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: the RSA key in '%s' has 1024 bits; at least 2048 needed\n", p);
    expect_msg(msg, want);
    assert_int_equal(c.alg, AUTH_ALG_ES256); /* unchanged */

    /* EC keys on other curves: refused. */
    const char *curves[][2] = {{"P-384", "secp384r1"}, {"secp256k1", "secp256k1"}};
    for (size_t i = 0; i < 2; i++) {
        EVP_PKEY *k = EVP_EC_gen(curves[i][0]);
        assert_non_null(k);
        p = path_in_tmp("ec-other.pem");
        write_pubkey(k, p);
        EVP_PKEY_free(k);
        assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
        snprintf(want, sizeof(want), "presenced: the EC key in '%s' is on %s; ES256 needs P-256\n",
                 p, curves[i][1]);
        expect_msg(msg, want);
    }
    /* An Ed25519 key, garbage, a private key, a truncated PEM, an HS256 secret: refused. */
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    p = path_in_tmp("ed.pem");
    write_pubkey(ed, p);
    assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: '%s' holds no PEM public key (RSA or EC P-256) that OpenSSL can read\n",
             p);
    expect_msg(msg, want);
    EVP_PKEY_free(ed);

    p = path_in_tmp("garbage.pem");
    const char *garbage[] = {
        "not a key at all\n", SECRET "\n",
        ("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n"
         "-----END PUBLIC KEY-----\n"),
        "-----BEGIN PUBLIC KEY-----\n"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        write_file(p, garbage[i], strlen(garbage[i]));
        assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
        snprintf(want, sizeof(want),
                 "presenced: '%s' holds no PEM public key (RSA or EC P-256) that OpenSSL can "
                 "read\n",
                 p);
        expect_msg(msg, want);
    }
    /* A private key file is not a public key. */
    p = path_in_tmp("private.pem");
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, ec_key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: '%s' holds no PEM public key (RSA or EC P-256) that OpenSSL can read\n",
             p);
    expect_msg(msg, want);
    /* Missing and empty files. */
    char *missing = path_in_tmp("no-such.pem");
    assert_int_equal(load(auth_load_public_key, &c, missing, &msg), -1);
    snprintf(want, sizeof(want),
             "presenced: cannot open key file '%s': No such file or directory\n", missing);
    expect_msg(msg, want);
    p = path_in_tmp("empty.pem");
    write_file(p, "", 0);
    assert_int_equal(load(auth_load_public_key, &c, p, &msg), -1);
    snprintf(want, sizeof(want), "presenced: key file '%s' is empty or larger than 65536 bytes\n",
             p);
    expect_msg(msg, want);
    /* After every refusal the P-256 key loaded first is still the one in force. */
    assert_int_equal(c.alg, AUTH_ALG_ES256);
    char *t = es(ES_HDR, CLAIMS);
    expect_ok(&c, t, "alice", NOW + 3600);
    free(t);
    auth_config_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_hs256),
        cmocka_unit_test(test_valid_rs256),
        cmocka_unit_test(test_valid_es256),
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_time_range),
        cmocka_unit_test(test_nbf_iat),
        cmocka_unit_test(test_bad_signature_each_segment),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_wrong_alg_for_key),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_sub),
        cmocka_unit_test(test_iss_aud),
        cmocka_unit_test(test_channels_claim),
        cmocka_unit_test(test_channel_allowed_without_claim),
        cmocka_unit_test(test_load_secret),
        cmocka_unit_test(test_load_public_key),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
