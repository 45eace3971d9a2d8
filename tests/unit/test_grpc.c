/* Unit tests for grpc/grpc_wire (message framing at every split point,
 * limits, grpc-timeout, grpc-message) and grpc/signer (canonical string,
 * a signature OpenSSL verifies with the public key, key id). */
#include <stdlib.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "core/common.h"
#include "core/alloc.h"
#include "grpc/grpc_wire.h"
#include "grpc/reflection.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "grpc/signer.h"
#include "test.h"

static size_t frame(uint8_t *out, const char *msg, size_t n)
{
    gw_grpc_prefix(out, n);
    memcpy(out + GW_GRPC_PREFIX, msg, n);
    return n + GW_GRPC_PREFIX;
}

static void test_framing_splits(void)
{
    uint8_t in[64];
    size_t n = frame(in, "hello", 5);
    n += frame(in + n, "", 0);
    n += frame(in + n, "xyz", 3);
    int bad = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        gw_grpc_reader r = {.max = 100};
        char got[3][8];
        size_t ngot = 0;
        const uint8_t *parts[2] = {in, in + cut};
        size_t lens[2] = {cut, n - cut};
        for (int k = 0; k < 2; k++) {
            const uint8_t *p = parts[k];
            size_t left = lens[k];
            while (left) {
                size_t used;
                const uint8_t *m;
                size_t ml;
                int rc = gw_grpc_reader_feed(&r, p, left, &used, &m, &ml);
                if (rc == GW_GRPC_MSG_READY && ngot < 3) {
                    memcpy(got[ngot], m, ml);
                    got[ngot][ml] = '\0';
                    ngot++;
                } else if (rc < 0) {
                    bad++;
                }
                p += used;
                left -= used;
            }
        }
        bad += ngot != 3 || strcmp(got[0], "hello") || strcmp(got[1], "") || strcmp(got[2], "xyz");
        bad += gw_grpc_reader_partial(&r) != 0 && gw_grpc_reader_partial(&r) != GW_GRPC_PREFIX + 3;
        gw_grpc_reader_free(&r);
    }
    is_int(bad, 0, "three messages (one empty) at every split point");
}

static void test_framing_limits(void)
{
    gw_grpc_reader r = {.max = 10};
    uint8_t in[32];
    size_t used, ml;
    const uint8_t *m;
    gw_grpc_prefix(in, 11);
    is_int(gw_grpc_reader_feed(&r, in, 5, &used, &m, &ml), GW_GRPC_MSG_TOO_BIG, "prefix over max refused");
    gw_grpc_reader_free(&r);
    gw_grpc_reader r2 = {.max = 10};
    size_t n = frame(in, "0123456789", 10);
    is_int(gw_grpc_reader_feed(&r2, in, n, &used, &m, &ml), GW_GRPC_MSG_READY, "exactly max accepted");
    is_int(ml, 10, "its length");
    gw_grpc_reader_free(&r2);
    gw_grpc_reader r3 = {.max = 10};
    frame(in, "ab", 2);
    in[0] = 1;
    is_int(gw_grpc_reader_feed(&r3, in, 7, &used, &m, &ml), GW_GRPC_MSG_COMPRESSED, "compressed flag refused");
    gw_grpc_reader_free(&r3);
    gw_grpc_reader r4 = {.max = 10};
    frame(in, "ab", 2);
    is_int(gw_grpc_reader_feed(&r4, in, 3, &used, &m, &ml), GW_GRPC_MSG_MORE, "a partial prefix waits");
    is_int(used, 3, "all of it taken");
    is_int(gw_grpc_reader_partial(&r4), 3, "and held");
    gw_grpc_reader_free(&r4);
}

static void test_timeout(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t ms;
    } cases[] = {
        {"1H", GW_OK, 3600000},  {"2M", GW_OK, 120000}, {"3S", GW_OK, 3000},   {"250m", GW_OK, 250},
        {"1500u", GW_OK, 2},     {"1n", GW_OK, 1},      {"0m", GW_OK, 1},      {"99999999S", GW_OK, 99999999000ull},
        {"100000000S", GW_ERR, 0}, {"S", GW_ERR, 0},    {"10", GW_ERR, 0},     {"10x", GW_ERR, 0},
        {"-1S", GW_ERR, 0},      {"1 S", GW_ERR, 0},    {"", GW_ERR, 0},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        uint64_t ms = 0;
        int rc = gw_grpc_timeout_parse(cases[i].s, strlen(cases[i].s), &ms);
        ok(rc == cases[i].rc && (rc != GW_OK || ms == cases[i].ms), "grpc-timeout \"%s\" -> %d %llu", cases[i].s,
           rc, (unsigned long long)ms);
    }
}

static void test_message(void)
{
    char out[64];
    gw_grpc_message_encode("plain text", out, sizeof out);
    is_str(out, "plain text", "printable ASCII as is");
    gw_grpc_message_encode("100% caf\xc3\xa9\n", out, sizeof out);
    is_str(out, "100%25 caf%C3%A9%0A", "percent, UTF-8 and controls escaped");
    gw_grpc_message_encode("%%%%", out, 8);
    is_str(out, "%25%25", "truncated on a whole escape");
    is_str(gw_grpc_status_name(8), "RESOURCE_EXHAUSTED", "status name");
}

static void test_signer(void)
{
    char dir[] = "/tmp/wsgate-signer-XXXXXX";
    ok(mkdtemp(dir) != NULL, "temp dir");
    char prefix[64], kpath[80];
    snprintf(prefix, sizeof prefix, "%s/k", dir);
    snprintf(kpath, sizeof kpath, "%s.key", prefix);
    char *argv[] = {"wsgate", "keygen", "--out", prefix, NULL};
    is_int(gw_keygen_main(4, argv), 0, "keygen");
    char err[256];
    gw_signer *s = gw_signer_load(kpath, err, sizeof err);
    ok(s != NULL, "the key loads: %.150s", s ? "" : err);
    if (!s)
        return;
    uint8_t msg[512];
    size_t n = gw_signer_canonical(gw_signer_key_id(s), "r1", "cmd", 1700000000123ull, (const uint8_t *)"abc", 3, msg,
                                   sizeof msg);
    char want[512];
    snprintf(want, sizeof want,
             "wsgate.v1.ExecuteCommand\nr1\ncmd\n1700000000123\n"
             "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n%s",
             gw_signer_key_id(s));
    is_mem(msg, n, want, strlen(want), "canonical string");
    uint8_t small[20];
    ok(gw_signer_canonical("k", "r", "c", 1, NULL, 0, small, sizeof small) == 0, "a string that does not fit is refused");
    uint8_t sig[GW_SIG_LEN];
    is_int(gw_signer_sign(s, "r1", "cmd", 1700000000123ull, (const uint8_t *)"abc", 3, sig), GW_OK, "sign");
    /* Verify with the public PEM alone, as a client would. */
    const char *pem = gw_signer_public_pem(s);
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pub = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    ok(pub != NULL, "public PEM parses");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int v = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub) == 1 && EVP_DigestVerify(ctx, sig, sizeof sig, msg, n) == 1;
    ok(v, "the signature verifies over the canonical string");
    msg[30] ^= 1;
    EVP_MD_CTX_free(ctx);
    ctx = EVP_MD_CTX_new();
    v = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pub) == 1 && EVP_DigestVerify(ctx, sig, sizeof sig, msg, n) == 1;
    ok(!v, "a changed string does not verify");
    EVP_MD_CTX_free(ctx);
    uint8_t raw[32], d[32];
    size_t rl = sizeof raw;
    EVP_PKEY_get_raw_public_key(pub, raw, &rl);
    SHA256(raw, rl, d);
    char kid[17];
    for (int i = 0; i < 8; i++)
        snprintf(kid + 2 * i, 3, "%02x", d[i]);
    is_str(gw_signer_key_id(s), kid, "key id: first 8 bytes of SHA-256(raw public key), hex");
    EVP_PKEY_free(pub);
    gw_signer_free(s);
    ok(gw_signer_load("/nonexistent/key.pem", err, sizeof err) == NULL && strstr(err, "cannot read"),
       "a missing key is refused, naming why");
    char ppath[80];
    snprintf(ppath, sizeof ppath, "%s.pub", prefix);
    ok(gw_signer_load(ppath, err, sizeof err) == NULL && strstr(err, "not a PEM private key"), "a public key is not a signer key");
    unlink(kpath);
    unlink(ppath);
    rmdir(dir);
}

static void test_reflection(void)
{
    is_int(gw_reflection_init(), GW_OK, "the embedded descriptor set indexes");
    Grpc__Reflection__V1alpha__ServerReflectionRequest rq = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    rq.list_services = (char *)"";
    uint8_t in[64], *out;
    size_t n = grpc__reflection__v1alpha__server_reflection_request__pack(&rq, in), on;
    is_int(gw_reflection_answer(in, n, &out, &on), GW_OK, "list_services answered");
    Grpc__Reflection__V1alpha__ServerReflectionResponse *rs =
        grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, on, out);
    ok(rs && rs->list_services_response && rs->list_services_response->n_service == 3, "three services listed");
    if (rs)
        grpc__reflection__v1alpha__server_reflection_response__free_unpacked(rs, NULL);
    gw_free(out);
    rq.message_request_case = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    rq.file_containing_symbol = (char *)"wsgate.v1.EdgeGateway.ExecuteCommand";
    n = grpc__reflection__v1alpha__server_reflection_request__pack(&rq, in);
    is_int(gw_reflection_answer(in, n, &out, &on), GW_OK, "file_containing_symbol answered");
    rs = grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, on, out);
    ok(rs && rs->file_descriptor_response && rs->file_descriptor_response->n_file_descriptor_proto == 1,
       "one file for a method symbol");
    if (rs)
        grpc__reflection__v1alpha__server_reflection_response__free_unpacked(rs, NULL);
    gw_free(out);
    is_int(gw_reflection_answer((const uint8_t *)"\xff\xff", 2, &out, &on), GW_ERR, "garbage is refused");
}

int main(void)
{
    TEST_RUN(test_reflection);
    TEST_RUN(test_framing_splits);
    TEST_RUN(test_framing_limits);
    TEST_RUN(test_timeout);
    TEST_RUN(test_message);
    TEST_RUN(test_signer);
    return test_done();
}
