/**
 * Entry point of the `omniflow` command when run from source:
 * `node --conditions=source --import tsx packages/cli/src/main.ts caption talks/`.
 * The published bin (bin/omniflow.js) does the same from dist.
 */
import { main } from './program.js';

process.exitCode = await main(process.argv.slice(2));
// Everything is closed by now; should a library still hold a handle open, do not hang the shell on it.
setTimeout(() => process.exit(), 2000).unref();
