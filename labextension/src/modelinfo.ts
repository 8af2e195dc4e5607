/**
 * What the panel says about a model, the same way everywhere: whether it is a demo model
 * (random weights), which context figure to show, and which actions its kind has.
 */
import { isChatKind } from './chat';

/** The label the sidebar and the chat panel put on demo models. */
export const DEMO_LABEL = 'demo · random weights';

/**
 * A demo model with random weights: the server's `demo` flag when it sends one, else told
 * by the id (the demo models are `local/tiny-…` or named "demo").
 */
export function isDemoModel(model: { id: string; demo?: unknown }): boolean {
  if (typeof model.demo === 'boolean') {
    return model.demo;
  }
  return /(^|[/_-])(tiny|demo)([_-]|$)/i.test(model.id);
}

/** Kinds whose models take no tokens of context (audio in or out). */
const AUDIO_KINDS = new Set(['transcription', 'speech']);

/**
 * The one context length shown for a model, in Models and Pool alike: the catalog's figure
 * (from its config, what the runner enforces), else the runner's when positive; none for
 * audio models, whose "context" is not a number of tokens anyone sends.
 */
export function contextFigure(
  kind: string | null | undefined,
  catalog: number | null | undefined,
  runner?: number | null
): number | null {
  if (kind && AUDIO_KINDS.has(kind)) {
    return null;
  }
  if (typeof catalog === 'number' && catalog > 0) {
    return catalog;
  }
  return typeof runner === 'number' && runner > 0 ? runner : null;
}

/**
 * The actions a model's kind offers in the sidebar (load and unload are for every kind): Chat
 * for chat models, "Use in notebook" (a first code cell) for the others.
 */
export function kindActions(kind: string | null | undefined): {
  chat: boolean;
  notebook: boolean;
} {
  const chat = isChatKind(kind);
  return { chat, notebook: !chat };
}
