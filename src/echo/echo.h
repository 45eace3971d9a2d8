/* echo.h: the echo route kind (/probe/ws): every message comes back. */
#ifndef GW_ECHO_H
#define GW_ECHO_H

#include "server/kind.h"

extern const gw_kind gw_kind_echo;

#endif
