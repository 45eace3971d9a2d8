/* common.h: project-wide return codes and small macros.
 *
 * Every internal call that can fail speaks this vocabulary (nginx's NGX_OK /
 * NGX_AGAIN shape): a byte count or GW_OK on success, GW_AGAIN when more input
 * (or more room) is needed, GW_ERR when the input is malformed or the call
 * failed. GW_DONE marks "finished, nothing more to do" (for example a peer
 * that completed its close handshake). */
#ifndef GW_COMMON_H
#define GW_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define GW_OK 0
#define GW_ERR (-1)
#define GW_AGAIN (-2)
#define GW_DONE (-3)

#define GW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define gw_likely(x) __builtin_expect(!!(x), 1)
#define gw_unlikely(x) __builtin_expect(!!(x), 0)
#define gw_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define GW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GW_MAX(a, b) ((a) > (b) ? (a) : (b))
#define GW_UNUSED(x) ((void)(x))

#endif
