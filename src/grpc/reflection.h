/* reflection.h: gRPC server reflection (grpc.reflection.v1alpha) over the
 * FileDescriptorSet the build makes from proto/ (protoc --descriptor_set_out,
 * embedded as build/gen/descriptors.c): list_services, file_by_filename and
 * file_containing_symbol, so grpcurl-like tools work without local protos.
 * Pure: bytes in, bytes out. */
#ifndef GW_GRPC_REFLECTION_H
#define GW_GRPC_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

/* Indexes the embedded set (once, at start). GW_OK or GW_ERR. */
int gw_reflection_init(void);
/* One ServerReflectionRequest (n bytes) -> its ServerReflectionResponse,
 * packed into a gw_malloc'ed buffer (*out, *outn). GW_ERR when the request
 * cannot be decoded. */
int gw_reflection_answer(const uint8_t *req, size_t n, uint8_t **out, size_t *outn);

#endif
