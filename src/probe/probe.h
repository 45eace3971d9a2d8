/* probe.h: `wsgate probe`, the synthetic monitor (DESIGN.md section 9).
 *
 * Holds one permanent WebSocket per leg (through gw_wsc), sends
 * "ping <monotonic ns>" every interval to an echo endpoint (the gateway's
 * /probe/ws), measures the round trip from the echoed timestamp, counts a
 * drop with a precise reason, reconnects with back-off, and serves
 * Prometheus metrics on its own small listener. Legs may also be plain HTTP
 * checks (http:// or https:// URL: a GET each interval, 2xx = up). It runs
 * its own single gw_loop, independent of the gateway's server. */
#ifndef GW_PROBE_H
#define GW_PROBE_H

/* The help text of `wsgate probe --help`. */
extern const char gw_probe_usage[];

/* Runs the probe with the arguments after "probe" (argv[0] is "probe").
 * Settings come from the environment (PROBE_*) and then the flags. Returns
 * the process exit code: 0 after SIGTERM/SIGINT, 2 on bad usage, 1 when
 * the metrics listener cannot start. */
int gw_probe_main(int argc, char **argv);

#endif
