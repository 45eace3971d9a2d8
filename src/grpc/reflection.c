/* reflection.c: see reflection.h. The set is walked once with a minimal
 * protobuf wire reader: FileDescriptorSet.file (1) -> FileDescriptorProto
 * name (1), package (2), service (6) -> ServiceDescriptorProto name (1). */
#include "grpc/reflection.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

extern const uint8_t gw_proto_descriptors[];
extern const size_t gw_proto_descriptors_len;

#define MAX_FILES 16
#define MAX_SERVICES 16

typedef struct fileinfo {
    const uint8_t *p; /* the FileDescriptorProto bytes */
    size_t n;
    char name[128];
    char package[128];
} fileinfo;

static fileinfo F[MAX_FILES];
static size_t nF;
static char S[MAX_SERVICES][160];
static size_t nS;

/* One field at *p: its number, wire type, and for length-delimited fields
 * the bytes; for varints the value. 0 at the end or on malformed input. */
static int next_field(const uint8_t **p, const uint8_t *end, uint32_t *num, int *wt, const uint8_t **v, size_t *vn)
{
    uint64_t key = 0, len = 0;
    int sh = 0;
    while (*p < end && sh < 64) {
        uint8_t b = *(*p)++;
        key |= (uint64_t)(b & 0x7f) << sh;
        sh += 7;
        if (!(b & 0x80))
            goto have_key;
    }
    return 0;
have_key:
    *num = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0:
        while (*p < end && (*(*p)++ & 0x80))
            ;
        return 1;
    case 1:
        if (end - *p < 8)
            return 0;
        *p += 8;
        return 1;
    case 5:
        if (end - *p < 4)
            return 0;
        *p += 4;
        return 1;
    case 2:
        sh = 0;
        while (*p < end && sh < 64) {
            uint8_t b = *(*p)++;
            len |= (uint64_t)(b & 0x7f) << sh;
            sh += 7;
            if (!(b & 0x80)) {
                if (len > (uint64_t)(end - *p))
                    return 0;
                *v = *p;
                *vn = (size_t)len;
                *p += len;
                return 1;
            }
        }
        return 0;
    default:
        return 0;
    }
}

static void copy_str(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    n = GW_MIN(n, cap - 1);
    memcpy(dst, v, n);
    dst[n] = '\0';
}

int gw_reflection_init(void)
{
    nF = nS = 0;
    const uint8_t *p = gw_proto_descriptors, *end = p + gw_proto_descriptors_len;
    uint32_t num;
    int wt;
    const uint8_t *v;
    size_t vn;
    while (p < end) {
        if (!next_field(&p, end, &num, &wt, &v, &vn))
            return GW_ERR;
        if (num != 1 || wt != 2 || nF == MAX_FILES)
            continue;
        fileinfo *f = &F[nF++];
        memset(f, 0, sizeof *f);
        f->p = v;
        f->n = vn;
        const uint8_t *q = v, *qe = v + vn;
        while (q < qe) {
            const uint8_t *fv;
            size_t fn;
            if (!next_field(&q, qe, &num, &wt, &fv, &fn))
                return GW_ERR;
            if (wt != 2)
                continue;
            if (num == 1)
                copy_str(f->name, sizeof f->name, fv, fn);
            else if (num == 2)
                copy_str(f->package, sizeof f->package, fv, fn);
            else if (num == 6 && nS < MAX_SERVICES) {
                const uint8_t *r = fv, *re = fv + fn;
                while (r < re) {
                    const uint8_t *sv;
                    size_t sn;
                    if (!next_field(&r, re, &num, &wt, &sv, &sn))
                        return GW_ERR;
                    if (num == 1 && wt == 2) {
                        char nm[128];
                        copy_str(nm, sizeof nm, sv, sn);
                        snprintf(S[nS++], sizeof S[0], "%s%s%s", f->package, f->package[0] ? "." : "", nm);
                    }
                }
            }
        }
    }
    return nF ? GW_OK : GW_ERR;
}

static const fileinfo *by_name(const char *name)
{
    for (size_t i = 0; i < nF; i++)
        if (strcmp(F[i].name, name) == 0)
            return &F[i];
    return NULL;
}

/* The file defining symbol: its package is the longest prefix of the
 * symbol (a service, a method, a message of that package; each package of
 * proto/ is one file). */
static const fileinfo *by_symbol(const char *sym)
{
    const fileinfo *best = NULL;
    for (size_t i = 0; i < nF; i++) {
        size_t pl = strlen(F[i].package);
        if (pl && strncmp(sym, F[i].package, pl) == 0 && sym[pl] == '.' && sym[pl + 1])
            if (!best || pl > strlen(best->package))
                best = &F[i];
    }
    return best;
}

int gw_reflection_answer(const uint8_t *req, size_t n, uint8_t **out, size_t *outn)
{
    Grpc__Reflection__V1alpha__ServerReflectionRequest *rq =
        grpc__reflection__v1alpha__server_reflection_request__unpack(NULL, n, req);
    if (!rq)
        return GW_ERR;
    Grpc__Reflection__V1alpha__ServerReflectionResponse rs = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__FileDescriptorResponse fd = GRPC__REFLECTION__V1ALPHA__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ListServiceResponse ls = GRPC__REFLECTION__V1ALPHA__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ErrorResponse er = GRPC__REFLECTION__V1ALPHA__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ServiceResponse svc[MAX_SERVICES];
    Grpc__Reflection__V1alpha__ServiceResponse *svcp[MAX_SERVICES];
    ProtobufCBinaryData file;
    rs.valid_host = rq->host;
    rs.original_request = rq;
    const fileinfo *f = NULL;
    switch (rq->message_request_case) {
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (size_t i = 0; i < nS; i++) {
            grpc__reflection__v1alpha__service_response__init(&svc[i]);
            svc[i].name = S[i];
            svcp[i] = &svc[i];
        }
        ls.n_service = nS;
        ls.service = svcp;
        rs.message_response_case = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        rs.list_services_response = &ls;
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        f = by_name(rq->file_by_filename);
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        f = by_symbol(rq->file_containing_symbol);
        break;
    default:
        break;
    }
    if (f) {
        file.data = (uint8_t *)f->p;
        file.len = f->n;
        fd.n_file_descriptor_proto = 1;
        fd.file_descriptor_proto = &file;
        rs.message_response_case = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        rs.file_descriptor_response = &fd;
    } else if (rs.message_response_case == GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        int known = rq->message_request_case == GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME ||
                    rq->message_request_case == GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
        er.error_code = known ? 5 : 12; /* NOT_FOUND, UNIMPLEMENTED */
        er.error_message = (char *)(known ? "not found" : "not supported");
        rs.message_response_case = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        rs.error_response = &er;
    }
    size_t len = grpc__reflection__v1alpha__server_reflection_response__get_packed_size(&rs);
    *out = gw_malloc(len ? len : 1);
    *outn = grpc__reflection__v1alpha__server_reflection_response__pack(&rs, *out);
    grpc__reflection__v1alpha__server_reflection_request__free_unpacked(rq, NULL);
    return GW_OK;
}
