/* signer.c: see signer.h. */
#include "grpc/signer.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "core/alloc.h"
#include "core/common.h"

struct gw_signer {
    EVP_PKEY *key;
    char key_id[GW_KEY_ID_LEN + 1];
    char *pub_pem;
};

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* key id and public PEM of a loaded key */
static int describe(gw_signer *s)
{
    uint8_t raw[32];
    size_t rn = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(s->key, raw, &rn) != 1 || rn != sizeof raw)
        return GW_ERR;
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256(raw, rn, d);
    hex(d, GW_KEY_ID_LEN / 2, s->key_id);
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || PEM_write_bio_PUBKEY(b, s->key) != 1) {
        BIO_free(b);
        return GW_ERR;
    }
    char *p;
    long n = BIO_get_mem_data(b, &p);
    s->pub_pem = gw_malloc((size_t)n + 1);
    memcpy(s->pub_pem, p, (size_t)n);
    s->pub_pem[n] = '\0';
    BIO_free(b);
    return GW_OK;
}

gw_signer *gw_signer_load(const char *path, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errcap, "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH: cannot read %s: %s", path,
                 strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k) {
        snprintf(err, errcap, "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH: %s is not a PEM private key", path);
        return NULL;
    }
    if (EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(k);
        snprintf(err, errcap, "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH: %s is not an Ed25519 key", path);
        return NULL;
    }
    gw_signer *s = gw_calloc(1, sizeof *s);
    s->key = k;
    if (describe(s) != GW_OK) {
        gw_signer_free(s);
        snprintf(err, errcap, "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH: cannot derive the public key of %s",
                 path);
        return NULL;
    }
    return s;
}

void gw_signer_free(gw_signer *s)
{
    if (!s)
        return;
    EVP_PKEY_free(s->key);
    gw_free(s->pub_pem);
    gw_free(s);
}

const char *gw_signer_key_id(const gw_signer *s) { return s->key_id; }
const char *gw_signer_public_pem(const gw_signer *s) { return s->pub_pem; }

size_t gw_signer_canonical(const char *key_id, const char *request_id, const char *command, uint64_t server_time_ms,
                           const uint8_t *payload, size_t payload_len, uint8_t *out, size_t cap)
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    char dh[2 * SHA256_DIGEST_LENGTH + 1];
    SHA256(payload ? payload : (const uint8_t *)"", payload_len, d);
    hex(d, sizeof d, dh);
    int n = snprintf((char *)out, cap, "wsgate.v1.ExecuteCommand\n%s\n%s\n%llu\n%s\n%s", request_id, command,
                     (unsigned long long)server_time_ms, dh, key_id);
    return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

int gw_signer_sign(const gw_signer *s, const char *request_id, const char *command, uint64_t server_time_ms,
                   const uint8_t *payload, size_t payload_len, uint8_t sig[GW_SIG_LEN])
{
    uint8_t msg[2048];
    size_t n = gw_signer_canonical(s->key_id, request_id, command, server_time_ms, payload, payload_len, msg,
                                   sizeof msg);
    if (!n)
        return GW_ERR;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t sl = GW_SIG_LEN;
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, s->key) == 1 &&
             EVP_DigestSign(ctx, sig, &sl, msg, n) == 1 && sl == GW_SIG_LEN;
    EVP_MD_CTX_free(ctx);
    return ok ? GW_OK : GW_ERR;
}

/* ================================ keygen ==================================== */

static const char keygen_usage[] =
    "usage: wsgate keygen --out PREFIX\n"
    "\n"
    "Makes an Ed25519 key pair for GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH:\n"
    "PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (the public key, PEM).\n"
    "Existing files are never overwritten. The gateway serves the public key at\n"
    "GET /v1/signing-key on the admin listener; docs/response-signing.md says what\n"
    "is signed.\n";

static int write_new(const char *path, mode_t mode, const char *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "wsgate keygen: cannot create %s: %s\n", path, strerror(errno));
        return GW_ERR;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "wsgate keygen: cannot write %s: %s\n", path, strerror(errno));
            close(fd);
            return GW_ERR;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, mode) != 0 || close(fd) != 0) {
        fprintf(stderr, "wsgate keygen: cannot finish %s: %s\n", path, strerror(errno));
        return GW_ERR;
    }
    return GW_OK;
}

static char *pem_of(EVP_PKEY *k, int priv, size_t *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return NULL;
    int ok = priv ? PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) : PEM_write_bio_PUBKEY(b, k);
    char *out = NULL;
    if (ok == 1) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        out = gw_malloc((size_t)len + 1);
        memcpy(out, p, (size_t)len);
        out[len] = '\0';
        *n = (size_t)len;
    }
    BIO_free(b);
    return out;
}

int gw_keygen_main(int argc, char **argv)
{
    const char *prefix = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(keygen_usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            prefix = argv[++i];
            continue;
        }
        fprintf(stderr, "wsgate keygen: unknown argument %s\n%s", argv[i], keygen_usage);
        return 2;
    }
    if (!prefix || !prefix[0]) {
        fputs(keygen_usage, stderr);
        return 2;
    }
    char kpath[4096], ppath[4096];
    if ((size_t)snprintf(kpath, sizeof kpath, "%s.key", prefix) >= sizeof kpath ||
        (size_t)snprintf(ppath, sizeof ppath, "%s.pub", prefix) >= sizeof ppath) {
        fprintf(stderr, "wsgate keygen: --out is too long\n");
        return 2;
    }
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!k) {
        fprintf(stderr, "wsgate keygen: cannot make an Ed25519 key\n");
        return 1;
    }
    size_t kn = 0, pn = 0;
    char *kp = pem_of(k, 1, &kn), *pp = pem_of(k, 0, &pn);
    int rc = 1;
    if (kp && pp && write_new(kpath, 0600, kp, kn) == GW_OK) {
        if (write_new(ppath, 0644, pp, pn) == GW_OK) {
            gw_signer s = {.key = k};
            describe(&s);
            printf("wrote %s (private, 0600) and %s; key id %s\n", kpath, ppath, s.key_id);
            gw_free(s.pub_pem);
            rc = 0;
        } else {
            unlink(kpath);
        }
    }
    if (kp)
        OPENSSL_cleanse(kp, kn);
    gw_free(kp);
    gw_free(pp);
    EVP_PKEY_free(k);
    return rc;
}
