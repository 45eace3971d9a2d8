// Starts a real wsgate for the Node tests: free loopback ports, stderr
// captured to a temp file, stopped by PID (SIGTERM, then SIGKILL).
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { mkdtempSync, openSync, readFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');

export function wsgateBin() {
  let bin = process.env.WSGATE_BIN || resolve(here, '../../build/wsgate');
  if (!isAbsolute(bin)) bin = resolve(root, bin);
  return bin;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
}

// A self-signed certificate for localhost / 127.0.0.1, made by the openssl CLI.
export function makeCert() {
  const dir = mkdtempSync(join(tmpdir(), 'wsgate-node-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
  { stdio: 'ignore' });
  return { cert, key, ca: readFileSync(cert) };
}

export async function startGateway({ env: extra = {}, tls = null } = {}) {
  const port = await freePort();
  const adminPort = await freePort();
  const stderrPath = join(mkdtempSync(join(tmpdir(), 'wsgate-node-')), 'stderr.log');
  const errFd = openSync(stderrPath, 'a');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GATEWAY_')));
  Object.assign(env, {
    GATEWAY_PUBLIC_HTTP_ADDR: `127.0.0.1:${port}`,
    GATEWAY_ADMIN_HTTP_ADDR: `127.0.0.1:${adminPort}`,
    GATEWAY_AUTHENTICATED_GRPC_ADDR: '',
    GATEWAY_SHUTDOWN_TIMEOUT: '3s',
    GATEWAY_DRAIN_DELAY: '0s',
    GATEWAY_LOG_FORMAT: 'json',
  }, extra);
  if (tls) Object.assign(env, { GATEWAY_TLS_CERT_PATH: tls.cert, GATEWAY_TLS_KEY_PATH: tls.key });
  const proc = spawn(wsgateBin(), ['serve'], { env, stdio: ['ignore', 'ignore', errFd] });
  closeSync(errFd);
  const scheme = tls ? 'wss' : 'ws';
  const g = {
    proc,
    port,
    adminPort,
    stderrPath,
    url: `${scheme}://${tls ? 'localhost' : '127.0.0.1'}:${port}/probe/ws`,
    stderr: () => readFileSync(stderrPath, 'utf8'),
    logs: () => g.stderr().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)),
    get: (path, p = port) => new Promise((res, rej) => {
      const opts = { host: tls && p === port ? 'localhost' : '127.0.0.1', port: p, path, timeout: 2000 };
      const mk = tls && p === port ? httpsRequest : httpRequest;
      if (tls && p === port) opts.ca = tls.ca;
      const req = mk(opts, (r) => {
        let body = '';
        r.on('data', (d) => { body += d; });
        r.on('end', () => res({ status: r.statusCode, headers: r.headers, body }));
      });
      req.on('error', rej);
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.end();
    }),
    // SIGTERM; resolves with {code, sig}. Throws on a hang (still running
    // 30 s after SIGTERM: killed, a shutdown budget of 3 s makes that a hang
    // by a wide margin) and on sanitizer reports in stderr.
    stop: async () => {
      let res;
      if (proc.exitCode !== null || proc.signalCode !== null) {
        res = { code: proc.exitCode, sig: proc.signalCode };
      } else {
        const exited = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
        proc.kill('SIGTERM');
        let hung = false;
        const timer = setTimeout(() => { hung = true; proc.kill('SIGKILL'); }, 30000);
        res = await exited;
        clearTimeout(timer);
        if (hung) throw new Error(`wsgate hung: still running 30 s after SIGTERM:\n${g.stderr().slice(-3000)}`);
      }
      const err = g.stderr();
      if (/ERROR: (Address|Leak)Sanitizer|runtime error:/.test(err)) {
        throw new Error(`sanitizer report:\n${err.slice(-4000)}`);
      }
      return res;
    },
  };
  const deadline = Date.now() + 15000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`wsgate exited ${proc.exitCode}: ${g.stderr()}`);
    try {
      const r = await g.get('/readyz');
      if (r.status === 200) break;
    } catch { /* not yet listening */ }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`wsgate not ready: ${g.stderr()}`);
    }
    await sleep(50);
  }
  return g;
}
