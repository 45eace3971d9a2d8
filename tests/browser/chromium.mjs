// Debian's chromium (never a downloaded one) for the browser tests, through
// playwright-core: one persistent context on a throw-away profile.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const skip = !existsSync(CHROMIUM) ? `no browser at ${CHROMIUM}` : false;

// Resolves with { ctx, close }: close() ends the browser and removes the profile.
export async function launchChromium(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'wsgate-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ...options,
  });
  return {
    ctx,
    close: async () => {
      await ctx.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
