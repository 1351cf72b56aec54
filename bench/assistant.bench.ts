/**
 * `npm run bench -- assistant`: the assistant server on loopback with the fixture checkpoint, clients speaking like
 * microphones (20 ms PCM16 appends paced in real time, silence between utterances), at 1 and at 20 concurrent sessions.
 *
 * Each client speaks, waits for the first audio of the answer, lets it play 100 ms, then speaks over it (barge-in);
 * that utterance is the next turn. Measured at the client:
 *  - end of user speech → first audio byte: from sending the chunk holding the last speech sample to receiving the
 *    first response.output_audio.delta (±20 ms: the chunk size). It includes the VAD's hangover (silence_duration_ms,
 *    a setting: the time the server must hear silence before the turn is over), reported apart;
 *  - barge-in → silence: from sending the chunk where the speech over the answer starts to receiving
 *    input_audio_buffer.speech_started (the page stops playback on it; goal ≤ 100 ms). It includes the VAD's attack
 *    (min speech, 60 ms) and the 20 ms chunking. Also: to the cancelled response's response.done, and to its last audio
 *    delta (audio in flight when the server interrupted);
 *  - the SDK's share of end of speech → first audio: everything but model compute (audio encoder, thinker prefill, the
 *    talker's first frame and Code2Wav's first packet, timed by the server per turn) and the VAD hangover.
 * The first turn of each client warms up and is not counted.
 */
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni } from '@omniflow/nodes';
import { startAssistantServer } from '@omniflow/server';
import { float32ToPcm16Base64 } from '../packages/server/src/protocol.js';
import { RealtimeTestClient, speechLike } from '../packages/server/src/testing/client.js';

const CHUNK = 480; // 20 ms at 24 kHz
const SILENCE_MS = 400; // turn_detection.silence_duration_ms
const TURNS = 4; // per client, the first one warms up

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A client's microphone: real-time 20 ms chunks of whatever is queued, silence otherwise. */
class Microphone {
  private queue: Float32Array[] = [];
  private sent = 0;
  private t0 = performance.now();
  private stopped = false;
  /** Send time of the chunk that holds each queued utterance's first and last speech sample. */
  readonly marks: { onsetSentAt?: number; endSentAt?: number }[] = [];
  private pending: { onsetChunk: number; endChunk: number; mark: { onsetSentAt?: number; endSentAt?: number } }[] = [];

  constructor(private readonly c: RealtimeTestClient) {
    void this.loop();
  }

  /** Queues speech (`speechLike`, no leading silence) to go out from the next chunk on. */
  say(seconds: number, seed: number): { onsetSentAt?: number; endSentAt?: number } {
    const pcm = speechLike(seconds, { silenceBefore: 0, silenceAfter: 0, seed });
    const first = this.sent + this.queue.length;
    for (let i = 0; i < pcm.length; i += CHUNK) {
      const chunk = new Float32Array(CHUNK);
      chunk.set(pcm.subarray(i, i + CHUNK));
      this.queue.push(chunk);
    }
    const mark = {};
    this.marks.push(mark);
    this.pending.push({ onsetChunk: first, endChunk: first + Math.ceil(pcm.length / CHUNK) - 1, mark });
    return mark;
  }

  get speaking(): boolean {
    return this.queue.length > 0;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const chunk = this.queue.shift() ?? new Float32Array(CHUNK);
      this.c.send({ type: 'input_audio_buffer.append', audio: float32ToPcm16Base64(chunk) });
      const now = performance.now();
      for (const p of this.pending) {
        if (p.onsetChunk === this.sent) p.mark.onsetSentAt = now;
        if (p.endChunk === this.sent) p.mark.endSentAt = now;
      }
      this.pending = this.pending.filter((p) => p.endChunk > this.sent);
      this.sent++;
      const wait = this.t0 + this.sent * 20 - performance.now();
      if (wait > 0) await sleep(wait);
    }
  }

  stop(): void {
    this.stopped = true;
  }
}

interface TurnSample {
  endToFirstAudioMs: number;
  serverFirstAudioMs?: number;
  vadMs?: number;
  modelMs?: number;
  sdkMs?: number;
}
interface BargeSample {
  toSpeechStartedMs: number;
  /** The server's own measure: arrival of the onset audio → answer interrupted. */
  serverBargeInMs?: number;
  toResponseDoneMs?: number;
  toLastAudioMs?: number;
  audioAfterStartedDeltas: number;
}

async function runClient(url: string, k: number): Promise<{ turns: TurnSample[]; barges: BargeSample[]; endedBeforeBarge: number }> {
  const c = await RealtimeTestClient.connect(url);
  c.send({ type: 'session.update', session: { type: 'realtime', audio: { input: { turn_detection: { type: 'server_vad', silence_duration_ms: SILENCE_MS } } } } });
  await c.waitFor('session.updated');
  const mic = new Microphone(c);
  const turns: TurnSample[] = [];
  const barges: BargeSample[] = [];
  let endedBeforeBarge = 0;
  let mark = mic.say(0.8, k + 1);
  try {
    for (let t = 0; t < TURNS; t++) {
      const from = c.events.length;
      const first = await c.waitFor('response.output_audio.delta', () => true, { from, timeoutMs: 30_000 });
      const responseId = first.response_id;
      if (t > 0 && mark.endSentAt !== undefined) {
        const report = await c.waitFor('omniflow.metrics', (e) => e.response_id === responseId, { from, timeoutMs: 30_000 }).catch(() => undefined);
        const l = report?.latency ?? {};
        const e2e = first.at - mark.endSentAt;
        turns.push({
          endToFirstAudioMs: e2e, serverFirstAudioMs: l.first_audio_ms, vadMs: l.vad_ms, modelMs: l.model_ms,
          ...(l.model_ms !== undefined && l.vad_ms !== undefined ? { sdkMs: e2e - l.model_ms - l.vad_ms } : {}),
        });
      }
      // Let the answer play a little, then talk over it.
      await sleep(100);
      const stillGoing = !c.events.slice(from).some((e) => e.type === 'response.done' && e.response.id === responseId);
      const bargeFrom = c.events.length;
      mark = mic.say(0.8, k + t + 2);
      if (!stillGoing) {
        endedBeforeBarge++;
        continue;
      }
      const started = await c.waitFor('input_audio_buffer.speech_started', () => true, { from: bargeFrom, timeoutMs: 10_000 });
      const done = await c.waitFor('response.done', (e) => e.response.id === responseId, { from, timeoutMs: 10_000 }).catch(() => undefined);
      const deltas = c.events.slice(from).filter((e) => e.type === 'response.output_audio.delta' && e.response_id === responseId);
      const onset = mark.onsetSentAt ?? started.at;
      if (done?.response.status === 'cancelled') {
        const report = await c.waitFor('omniflow.metrics', (e) => e.response_id === responseId, { from, timeoutMs: 5_000 }).catch(() => undefined);
        barges.push({
          serverBargeInMs: report?.latency.barge_in_ms,
          toSpeechStartedMs: started.at - onset,
          toResponseDoneMs: done.at - onset,
          toLastAudioMs: Math.max(0, deltas.at(-1)!.at - onset),
          audioAfterStartedDeltas: deltas.filter((d) => d.at > started.at).length,
        });
      } else endedBeforeBarge++;
    }
  } finally {
    mic.stop();
    await c.close();
  }
  return { turns, barges, endedBeforeBarge };
}

const pct = (xs: number[], q: number) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return +s[Math.min(s.length - 1, Math.floor(q * s.length))].toFixed(1);
};
const summary = (xs: (number | undefined)[]) => {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return { n: v.length, p50: pct(v, 0.5), p90: pct(v, 0.9), max: v.length ? +Math.max(...v).toFixed(1) : null };
};

export async function run(): Promise<object> {
  const model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'talker', 'code2wav'] });
  const sessionCounts = (process.env.OMNIFLOW_BENCH_SESSIONS ?? '1,20').split(',').map(Number);
  const server = await startAssistantServer({
    model, port: 0, maxConnections: 64, maxOutputTokens: 16, respond: { seed: 0, maxFrames: 60 },
    // OMNIFLOW_BENCH_LOG=1 prints the server's per-turn latency reports to stderr.
    ...(process.env.OMNIFLOW_BENCH_LOG ? { log: (line: string) => console.error(line) } : {}),
  });
  const out: Record<string, unknown> = {
    setup: {
      checkpoint: 'qwen3-omni-tiny fixture (random weights)', transport: 'ws on loopback', audio: 'PCM16 24 kHz, 20 ms appends paced in real time',
      vad: { silence_duration_ms: SILENCE_MS, min_speech_ms: 60 }, pacing: 'talker ≤ 4 frames (320 ms) ahead of real time', turnsPerClient: TURNS - 1,
    },
  };
  try {
    for (const sessions of sessionCounts) {
      const results = await Promise.all(Array.from({ length: sessions }, (_, k) => runClient(server.url, k)));
      const turns = results.flatMap((r) => r.turns);
      const barges = results.flatMap((r) => r.barges);
      out[`sessions_${sessions}`] = {
        endOfSpeechToFirstAudioMs: summary(turns.map((t) => t.endToFirstAudioMs)),
        endOfSpeechToFirstAudioWithoutHangoverMs: summary(turns.map((t) => (t.vadMs !== undefined ? t.endToFirstAudioMs - t.vadMs : undefined))),
        vadHangoverMs: summary(turns.map((t) => t.vadMs)),
        serverFirstAudioMs: summary(turns.map((t) => t.serverFirstAudioMs)),
        modelComputeMs: summary(turns.map((t) => t.modelMs)),
        sdkShareMs: summary(turns.map((t) => t.sdkMs)),
        bargeInToSilenceMs: summary(barges.map((b) => b.toSpeechStartedMs)),
        bargeInToResponseDoneMs: summary(barges.map((b) => b.toResponseDoneMs)),
        serverBargeInMs: summary(barges.map((b) => b.serverBargeInMs)),
        bargeInToLastAudioDeltaMs: summary(barges.map((b) => b.toLastAudioMs)),
        audioDeltasAfterSpeechStarted: barges.reduce((n, b) => n + b.audioAfterStartedDeltas, 0),
        bargeInGoalMs: 100,
        answersEndedBeforeBargeIn: results.reduce((n, r) => n + r.endedBeforeBarge, 0),
      };
    }
  } finally {
    await server.close();
    model.dispose();
  }
  return out;
}
