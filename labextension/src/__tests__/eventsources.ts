/**
 * A stand-in for `EventSource` that the downloads and jobs models open through their
 * factory: it records its URL, and a test emits events or an error on it.
 */
import { IEventSourceLike } from '../eventstreams';

export class FakeEventSource implements IEventSourceLike {
  static all: FakeEventSource[] = [];
  onmessage: ((ev: { data: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;
  listeners: Record<string, ((ev: { data: string }) => void)[]> = {};
  constructor(readonly url: string) {
    FakeEventSource.all.push(this);
  }
  addEventListener(
    type: string,
    listener: (ev: { data: string }) => void
  ): void {
    (this.listeners[type] ??= []).push(listener);
  }
  close(): void {
    this.closed = true;
  }
  emit(data: unknown, type = 'message'): void {
    const ev = { data: JSON.stringify(data) };
    if (type === 'message') {
      this.onmessage?.(ev);
    } else {
      (this.listeners[type] ?? []).forEach(l => l(ev));
    }
  }
}

/** Let pending promise callbacks (a ticket, a listing) run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) {
    await Promise.resolve();
  }
}
