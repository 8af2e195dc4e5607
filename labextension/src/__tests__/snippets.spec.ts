import { exchangeCode, kindCode, pyString } from '../snippets';

describe('exchangeCode', () => {
  it('asks the same model again through connect(), with the reply as a comment', () => {
    const code = exchangeCode({
      model: 'local/tiny-demo',
      system: 'Be brief.',
      turns: [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello!' },
        { role: 'user', content: 'Say "x"\nthen stop' }
      ],
      reply: 'x\n\nDone.',
      maxTokens: 64,
      temperature: 0
    });
    expect(code).toBe(
      [
        '# From the MLX chat panel: ask local/tiny-demo again from this notebook.',
        'from jupyter_mlx_manager import connect',
        '',
        'client = connect()',
        'messages = [',
        '    {"role": "system", "content": "Be brief."},',
        '    {"role": "user", "content": "Hi"},',
        '    {"role": "assistant", "content": "Hello!"},',
        '    {"role": "user", "content": "Say \\"x\\"\\nthen stop"},',
        ']',
        'reply = client.chat("local/tiny-demo", messages, max_tokens=64, temperature=0)',
        'reply',
        '',
        '# The reply in the chat panel was:',
        '# x',
        '#',
        '# Done.'
      ].join('\n')
    );
  });

  it('says which images were left out and cuts long replies', () => {
    const code = exchangeCode({
      model: 'm',
      system: '',
      turns: [
        { role: 'user', content: 'What is it?', images: ['data:a', 'data:b'] }
      ],
      reply: Array.from({ length: 25 }, (_, i) => `line ${i}`).join('\n')
    });
    expect(code).toContain('# 2 images were left out');
    expect(code).not.toContain('data:a');
    expect(code).toContain('reply = client.chat("m", messages)\nreply');
    expect(code).toContain('# line 19\n# … (5 more lines)');
    expect(code).not.toContain('line 20');
  });
});

describe('pyString', () => {
  it('is a Python literal of any text', () => {
    expect(pyString('a "b" \\ c\n\u00e9\t')).toBe(
      '"a \\"b\\" \\\\ c\\n\u00e9\\t"'
    );
  });
});

describe('kindCode', () => {
  it("is a first cell for what a model's kind does", () => {
    expect(kindCode('local/tiny-embedding', 'embedding')).toBe(
      [
        '# local/tiny-embedding (an embedding model) from this notebook.',
        'from jupyter_mlx_manager import connect',
        '',
        'client = connect()',
        'vectors = client.embed("local/tiny-embedding", ["first text", "second text"])',
        'vectors.shape  # one row per text'
      ].join('\n')
    );
    expect(kindCode('m', 'speech')).toContain('(a speech model)');
    expect(kindCode('m', 'transcription')).toContain(
      'text = client.transcribe("m", "recording.wav")'
    );
    expect(kindCode('m', 'speech')).toContain(
      'audio = client.speak("m", "Hello from MLX")'
    );
    expect(kindCode('m', 'text')).toBeNull();
  });
});
