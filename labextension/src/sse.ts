/**
 * An incremental parser for server-sent events (the WHATWG `text/event-stream` format),
 * for streams read with `fetch` (POST bodies, which `EventSource` cannot send).
 *
 * Feed it decoded text in chunks of any size; it returns the events completed so far.
 * Comments (`: keepalive`) are skipped, multi-line `data:` fields are joined with "\n".
 */

export interface ISSEEvent {
  /** `event:` field; "message" when absent. */
  event: string;
  data: string;
  id?: string;
}

export class SSEParser {
  /** Parse the next chunk of text; returns the events it completed. */
  feed(chunk: string): ISSEEvent[] {
    this._buffer += chunk;
    const events: ISSEEvent[] = [];
    // A trailing "\r" may be the first half of "\r\n": wait for the next chunk.
    let start = 0;
    for (;;) {
      const match = /\r\n|\r|\n/g;
      match.lastIndex = start;
      const found = match.exec(this._buffer);
      if (!found) {
        break;
      }
      if (found[0] === '\r' && found.index === this._buffer.length - 1) {
        break;
      }
      const line = this._buffer.slice(start, found.index);
      start = found.index + found[0].length;
      const event = this._line(line);
      if (event) {
        events.push(event);
      }
    }
    this._buffer = this._buffer.slice(start);
    return events;
  }

  /** End of stream: an event without its closing blank line is dropped, as browsers do. */
  end(): ISSEEvent[] {
    const rest = this._buffer;
    this._buffer = '';
    if (rest) {
      this._line(rest);
    }
    this._reset();
    return [];
  }

  private _line(line: string): ISSEEvent | null {
    if (line === '') {
      if (!this._hasData) {
        this._reset();
        return null;
      }
      const event: ISSEEvent = {
        event: this._event || 'message',
        data: this._data.join('\n')
      };
      if (this._id !== undefined) {
        event.id = this._id;
      }
      this._reset();
      return event;
    }
    if (line.startsWith(':')) {
      return null;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    switch (field) {
      case 'data':
        this._data.push(value);
        this._hasData = true;
        break;
      case 'event':
        this._event = value;
        break;
      case 'id':
        this._id = value;
        break;
      default:
        break; // "retry" and unknown fields do not matter here
    }
    return null;
  }

  private _reset(): void {
    this._data = [];
    this._hasData = false;
    this._event = '';
    this._id = undefined;
  }

  private _buffer = '';
  private _data: string[] = [];
  private _hasData = false;
  private _event = '';
  private _id: string | undefined = undefined;
}
