const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import * as React from 'react';

import { BudgetCard, UsageChart } from '../sections/UsageBudgets';
import {
  budgetLines,
  budgetsToShow,
  firstDay,
  getUsageByDay,
  IBudgetStatus,
  usageDays
} from '../usage';

const { renderToStaticMarkup } = jest.requireActual<{
  renderToStaticMarkup: (element: React.ReactElement) => string;
}>('react-dom/server');

const NOW = Date.parse('2026-12-06T18:00:00Z');

const status = (
  user: string,
  over: Partial<IBudgetStatus['windows']> = {}
) => ({
  user,
  groups: [],
  windows: {
    tokens_per_minute: {
      limit: null,
      used: 26,
      remaining: null,
      resets_at: '2026-12-06T18:01:00Z'
    },
    tokens_per_day: {
      limit: 100000,
      used: 26,
      remaining: 99974,
      resets_at: '2026-12-07T00:00:00Z'
    },
    tokens_per_month: {
      limit: null,
      used: 26,
      remaining: null,
      resets_at: '2027-01-01T00:00:00Z'
    },
    ...over
  }
});

describe('usage per day', () => {
  it('asks for days since the first of the shown ones', async () => {
    mockMakeRequest.mockResolvedValue(
      new Response(JSON.stringify({ rows: [] }))
    );
    expect(firstDay(NOW, 14)).toBe('2026-11-23');
    await getUsageByDay('2026-11-23', mockSettings as any);
    expect(mockMakeRequest.mock.calls[0][0]).toBe(
      'http://h/base/mlx/api/usage?group_by=day&since=2026-11-23'
    );
  });

  it('fills the days without requests with zeros, oldest first', () => {
    const days = usageDays(
      [
        {
          key: '2026-12-04',
          requests: 2,
          prompt_tokens: 30,
          completion_tokens: 12
        },
        {
          key: '2026-12-06',
          requests: 1,
          prompt_tokens: 9,
          completion_tokens: 8
        },
        { key: null, requests: 5, prompt_tokens: 1, completion_tokens: 1 }
      ],
      NOW,
      3
    );
    expect(days).toEqual([
      { day: '2026-12-04', requests: 2, prompt: 30, completion: 12 },
      { day: '2026-12-05', requests: 0, prompt: 0, completion: 0 },
      { day: '2026-12-06', requests: 1, prompt: 9, completion: 8 }
    ]);
  });

  it('draws tokens per day with a value axis, day labels, legend and unit', () => {
    const days = usageDays(
      [
        {
          key: '2026-12-06',
          requests: 3,
          prompt_tokens: 1200,
          completion_tokens: 340
        }
      ],
      NOW
    );
    const html = renderToStaticMarkup(
      React.createElement(UsageChart, { days })
    );
    expect(html).toContain('tokens per day (UTC)');
    expect(html).toContain('1.5k tokens, 3 requests in 14 days');
    expect(html).toContain('1,200 prompt, 340 completion tokens (3 requests)');
    expect(html).toContain('>0<'); // the value axis starts at 0
    expect((html.match(/<text/g) ?? []).length).toBeGreaterThanOrEqual(5);
  });
});

describe('budgets', () => {
  it('words each window: exact tokens left, or unlimited', () => {
    const lines = budgetLines(status('alice'));
    expect(lines.map(l => [l.label, l.text])).toEqual([
      ['this minute', 'unlimited (26 used)'],
      ['today', '99,974 of 100,000 tokens left'],
      ['this month', 'unlimited (26 used)']
    ]);
    expect(lines[1].fraction).toBeCloseTo(0.00026);
    expect(lines[0].fraction).toBeNull();
  });

  it('shows a spent window as nothing left', () => {
    const spent = budgetLines(
      status('bob', {
        tokens_per_day: {
          limit: 100,
          used: 140,
          remaining: 0,
          resets_at: '2026-12-07T00:00:00Z'
        }
      })
    )[1];
    expect(spent.text).toBe('0 of 100 tokens left');
    expect(spent.fraction).toBe(1);
  });

  it('shows admins everyone (themselves first), users themselves', () => {
    const admin = {
      ...status('root'),
      users: [status('zoe'), status('root'), status('carol')]
    };
    expect(budgetsToShow(admin).map(s => s.user)).toEqual([
      'root',
      'carol',
      'zoe'
    ]);
    expect(budgetsToShow(status('carol')).map(s => s.user)).toEqual(['carol']);
  });

  it('renders a card with a meter for limited windows only', () => {
    const html = renderToStaticMarkup(
      React.createElement(BudgetCard, { status: status('carol'), own: true })
    );
    expect(html).toContain('carol (you)');
    expect((html.match(/role="meter"/g) ?? []).length).toBe(1);
    expect(html).toContain('aria-label="carol&#x27;s tokens used today"');
  });
});
