/**
 * The assistant server: `npm run assistant [-- --model DIR] [--port 8080] [--host 127.0.0.1] [--voice NAME]
 * [--tls-cert FILE --tls-key FILE]`. Without --model it runs the tiny fixture checkpoint (random weights: the answers
 * are noise, every step is real). Open the printed URL for the browser page; point Realtime API clients at the ws URL.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni } from '@omniflow/nodes';
import { startAssistantServer } from './server.js';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', short: 'm' },
    tokenizer: { type: 'string' },
    port: { type: 'string', short: 'p', default: '8080' },
    host: { type: 'string', default: '127.0.0.1' },
    voice: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'max-tokens': { type: 'string' },
    'max-frames': { type: 'string' },
    static: { type: 'string', default: fileURLToPath(new URL('../../../examples/assistant', import.meta.url)) },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: npm run assistant -- [--model DIR] [--tokenizer DIR] [--port N] [--host ADDR] [--voice NAME] [--tls-cert PEM --tls-key PEM] [--max-tokens N] [--max-frames N] [--static DIR]');
  process.exit(0);
}
if (!!args['tls-cert'] !== !!args['tls-key']) {
  console.error('--tls-cert and --tls-key go together');
  process.exit(2);
}
const onFixture = !args.model;
const modules = ['thinker', 'audio_tower', 'visual', 'talker', 'code2wav'] as const;
const model = onFixture
  ? await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules })
  : await loadQwen3Omni(args.model!, { ...(args.tokenizer ? { tokenizer: args.tokenizer } : {}), modules });
console.error(model.describe());
if (onFixture) console.error('\nNOTE: tiny fixture checkpoint with RANDOM weights — answers are noise. Pass --model <dir> for a real one.');

const server = await startAssistantServer({
  model,
  port: Number(args.port),
  host: args.host!,
  staticDir: args.static!,
  ...(args.voice ? { voice: args.voice } : {}),
  ...(args['tls-cert'] ? { tls: { cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']!) } } : {}),
  maxOutputTokens: Number(args['max-tokens'] || (onFixture ? 24 : 512)),
  respond: { maxFrames: Number(args['max-frames'] || (onFixture ? 120 : 4096)), seed: 3 },
  log: (line) => console.log(line),
});
console.error(`\nassistant page: ${server.httpUrl}\nrealtime endpoint: ${server.url}`);
const stop = async () => {
  await server.close();
  model.dispose();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
