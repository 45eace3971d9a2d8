/* browser.h: the browser route kind (DESIGN.md section 7): direct-to-VM
 * routing of browser sessions with control-plane fallback. */
#ifndef GW_BROWSER_H
#define GW_BROWSER_H

#include "server/kind.h"

extern const gw_kind gw_kind_browser;

#endif
