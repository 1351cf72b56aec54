import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A Redis for tests: the one CI started (OMNIFLOW_TEST_REDIS_URL), or a private redis-server on a free loopback port. */
export interface TestRedis {
  readonly url: string;
  stop(): Promise<void>;
}

/** Whether a redis-server binary is on PATH. */
export function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Gives tests a Redis: `OMNIFLOW_TEST_REDIS_URL` when set (.ci/run starts one), else a fresh redis-server on a free
 * 127.0.0.1 port with persistence off, or undefined when there is no redis-server binary.
 *
 * ```ts
 * const redis = await testRedis();
 * if (redis) { ...; await redis.stop(); }
 * ```
 */
export async function testRedis(): Promise<TestRedis | undefined> {
  const given = process.env.OMNIFLOW_TEST_REDIS_URL;
  if (given) return { url: given, stop: async () => undefined };
  if (!hasRedisServer()) return undefined;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-redis-'));
  const proc: ChildProcess = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  const start = Date.now();
  for (;;) {
    if (spawnSync('redis-cli', ['-p', String(port), 'ping'], { encoding: 'utf8' }).stdout?.trim() === 'PONG') break;
    if (Date.now() - start > 10_000) {
      proc.kill('SIGKILL');
      throw new Error(`redis-server on port ${port} did not answer within 10 s`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    stop: () =>
      new Promise<void>((resolve) => {
        proc.once('close', () => {
          rmSync(dir, { recursive: true, force: true });
          resolve();
        });
        proc.kill('SIGTERM');
      }),
  };
}
