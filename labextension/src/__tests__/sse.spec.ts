import { SSEParser } from '../sse';

describe('SSEParser', () => {
  it('parses complete events and skips comments', () => {
    const p = new SSEParser();
    expect(p.feed(': keepalive\n\ndata: {"a":1}\n\ndata: [DONE]\n\n')).toEqual([
      { event: 'message', data: '{"a":1}' },
      { event: 'message', data: '[DONE]' }
    ]);
  });

  it('handles events split at any byte', () => {
    const text = 'event: progress\ndata: {"x": 1}\nid: 7\n\ndata: second\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SSEParser();
      const events = [
        ...p.feed(text.slice(0, cut)),
        ...p.feed(text.slice(cut))
      ];
      expect(events).toEqual([
        { event: 'progress', data: '{"x": 1}', id: '7' },
        { event: 'message', data: 'second' }
      ]);
    }
  });

  it('accepts CRLF and CR line endings, even split between chunks', () => {
    const p = new SSEParser();
    expect(p.feed('data: a\r')).toEqual([]);
    expect(p.feed('\n\r\n')).toEqual([{ event: 'message', data: 'a' }]);
    expect(p.feed('data: b\r\rdata: c\n\n')).toEqual([
      { event: 'message', data: 'b' },
      { event: 'message', data: 'c' }
    ]);
  });

  it('joins multi-line data and keeps spaces after the first', () => {
    const p = new SSEParser();
    expect(p.feed('data: line 1\ndata:  line 2\ndata\n\n')).toEqual([
      { event: 'message', data: 'line 1\n line 2\n' }
    ]);
  });

  it('ignores blank lines without data and drops an unterminated event at the end', () => {
    const p = new SSEParser();
    expect(p.feed('\n\nevent: x\n\n')).toEqual([]);
    expect(p.feed('data: partial')).toEqual([]);
    expect(p.end()).toEqual([]);
    expect(p.feed('data: next\n\n')).toEqual([
      { event: 'message', data: 'next' }
    ]);
  });
});
