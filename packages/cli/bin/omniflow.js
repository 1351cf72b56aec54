#!/usr/bin/env node
/* global process, setTimeout */
// The `omniflow` command. Runs the built package (npm run build); from a source checkout without a
// build, use `node --conditions=source --import tsx packages/cli/src/main.ts` instead.
import { main } from '../dist/index.js';

process.exitCode = await main(process.argv.slice(2));
setTimeout(() => process.exit(), 2000).unref();
