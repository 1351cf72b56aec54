/**
 * OpenTelemetry spans for sessions, turns and nodes, through `@opentelemetry/api`. With no tracer
 * provider registered the API hands out no-op spans, so this costs next to nothing; register a provider
 * (and an exporter) to see them.
 *
 * Spans: `omniflow.session` (whole session) → `omniflow.turn` (one per turn epoch, with time to first
 * output per kind) and `omniflow.node` (open to close of each stage, with packet counts). Interrupts are
 * span events on the session span.
 */
import { context as otelContext, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';

export class SessionTelemetry {
  private readonly tracer: Tracer;
  private session: Span | undefined;
  private turn: Span | undefined;
  private readonly nodes = new Map<string, Span>();

  constructor(tracer?: Tracer) {
    this.tracer = tracer ?? trace.getTracer('omniflow');
  }

  start(session: string, graph: string, mode: string): void {
    this.session = this.tracer.startSpan('omniflow.session', { attributes: { 'omniflow.session': session, 'omniflow.graph': graph, 'omniflow.mode': mode } });
  }

  private child(name: string, attributes: Record<string, string | number | boolean>): Span {
    const ctx = this.session ? trace.setSpan(otelContext.active(), this.session) : otelContext.active();
    return this.tracer.startSpan(name, { attributes }, ctx);
  }

  turnStart(turn: number): void {
    this.turn = this.child('omniflow.turn', { 'omniflow.turn': turn });
  }

  firstOutput(kind: string, micros: number): void {
    this.turn?.setAttribute(`omniflow.ttfo.${kind}_us`, micros);
  }

  turnEnd(endedBy: 'interrupt' | 'end'): void {
    this.turn?.setAttribute('omniflow.turn.ended_by', endedBy);
    this.turn?.end();
    this.turn = undefined;
  }

  interrupt(turn: number, fenced: number, reason?: string): void {
    this.session?.addEvent('interrupt', { 'omniflow.turn': turn, 'omniflow.fenced': fenced, ...(reason ? { 'omniflow.reason': reason } : {}) });
  }

  nodeOpen(id: string, type: string): void {
    this.nodes.set(id, this.child('omniflow.node', { 'omniflow.node': id, 'omniflow.node_type': type }));
  }

  nodeClose(id: string, packetsIn: number, packetsOut: number, error?: unknown): void {
    const span = this.nodes.get(id);
    if (!span) return;
    span.setAttributes({ 'omniflow.packets_in': packetsIn, 'omniflow.packets_out': packetsOut });
    if (error) {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: String((error as Error)?.message ?? error) });
    }
    span.end();
    this.nodes.delete(id);
  }

  end(attributes: Record<string, number>, error?: unknown): void {
    for (const id of [...this.nodes.keys()]) this.nodeClose(id, 0, 0);
    this.turnEnd('end');
    if (!this.session) return;
    this.session.setAttributes(attributes);
    if (error) {
      this.session.recordException(error instanceof Error ? error : String(error));
      this.session.setStatus({ code: SpanStatusCode.ERROR, message: String((error as Error)?.message ?? error) });
    }
    this.session.end();
    this.session = undefined;
  }
}
