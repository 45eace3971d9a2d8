/* agent.h: `wsgate agent`, the terminal agent (DESIGN.md section 4).
 *
 * A small single-threaded WebSocket server (its own gw_loop) that serves
 * PTYs to the gateway. Binary frames carry bytes both ways; text frames
 * carry JSON control messages ({"type":"resize","cols":N,"rows":N}). When
 * the shell exits the agent closes with 1000 and "exit N" (or "signal N").
 *
 * Only the gateway may connect: Authorization: Bearer GATEWAY_AGENT_SECRET,
 * compared in constant time (401 without it, 403 with another). Without a
 * configured secret the agent listens on loopback or a unix socket only.
 *
 * Sessions are keyed by X-Wsgate-Session-Id. When the WebSocket drops the
 * PTY is kept for the grace period; a connection with the same session id
 * re-attaches and first receives the scrollback (a ring of recent output),
 * then live output. After the grace period the shell gets SIGHUP, then
 * SIGKILL, and is reaped. */
#ifndef GW_AGENT_H
#define GW_AGENT_H

/* Runs the agent; returns the exit status. argv[0] is "agent". */
int gw_agent_main(int argc, char **argv);

#endif
