/* status.h: the status page on the admin listener.
 *
 * GET /status (HTML, its script and style under /status/, all compiled into
 * the binary from web/status/, with a Content-Security-Policy that allows
 * nothing from another origin) and GET /status.json: version, uptime, the
 * configuration (secrets redacted), live connections by route, handshakes,
 * closes by cause and relayed messages per second over the last 15 minutes
 * (per-second rings kept in the process), push, backend health, TLS, and the
 * workers' load. /status.json needs Authorization: Bearer
 * GATEWAY_ADMIN_TOKEN when that is set (the page asks for it once). */
#ifndef GW_STATUS_H
#define GW_STATUS_H

#define GW_STATUS_RING 900 /* seconds kept: 15 minutes */

/* Registers the endpoints (gw_server_start, before the workers run). */
void gw_status_init(void);
/* Takes one per-second sample into the rings (worker 0, once a second: the
 * admin listener is served on that worker too, so the rings take no lock). */
void gw_status_sample(void);

#endif
