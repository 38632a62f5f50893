// Limits as the openai SDK sees them: x-ratelimit-* headers on every answer, RateLimitError (429)
// with code rate_limit_exceeded and Retry-After once the key's requests-per-minute window is
// full, insufficient_quota when an estimate cannot fit the monthly token quota.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openaiClient, startSuite } from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'hello' }];
const RPM = 3;

describe('rate limits and quotas through the openai SDK', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;

  before(async () => {
    suite = await startSuite({
      env: {
        TOLLGATE_QUOTA__DEFAULT_KEY_RPM: String(RPM),
        TOLLGATE_QUOTA__DEFAULT_KEY_TPM: '100000',
        TOLLGATE_QUOTA__DEFAULT_KEY_MONTHLY_TOKENS: '5000',
      },
    });
    client = await openaiClient(suite);
    ({ default: OpenAI } = await import('openai'));
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  // First: a refused request takes nothing from the minute's window.
  it('an estimate over the monthly quota is insufficient_quota (429)', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 6000 }),
      (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `got ${err?.constructor?.name}: ${err?.message}`);
        assert.equal(err.status, 429);
        assert.equal(err.code, 'insufficient_quota');
        assert.equal(err.error?.type, 'insufficient_quota');
        assert.ok(Number(err.headers.get('retry-after')) > 0, 'retry-after');
        return true;
      });
  });

  it('x-ratelimit-* headers count down, then RateLimitError with Retry-After', async () => {
    for (let i = 0; i < RPM; i++) {
      const { data, response } = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 16 })
        .withResponse();
      assert.ok(data.choices.length > 0);
      const h = response.headers;
      assert.equal(h.get('x-ratelimit-limit-requests'), String(RPM));
      assert.equal(h.get('x-ratelimit-remaining-requests'), String(RPM - 1 - i));
      assert.match(h.get('x-ratelimit-reset-requests'), /^(\d+m)?\d+(\.\d+)?s$|^\d+ms$/);
      assert.equal(h.get('x-ratelimit-limit-tokens'), '100000');
      assert.ok(Number(h.get('x-ratelimit-remaining-tokens')) < 100000);
      assert.match(h.get('x-ratelimit-reset-tokens'), /^(\d+m)?\d+(\.\d+)?s$|^\d+ms$/);
    }
    await assert.rejects(
      client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 16 }),
      (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `got ${err?.constructor?.name}: ${err?.message}`);
        assert.equal(err.status, 429);
        assert.equal(err.code, 'rate_limit_exceeded');
        const retry = Number(err.headers.get('retry-after'));
        assert.ok(retry > 0 && retry <= 60, `retry-after ${retry}`);
        assert.equal(err.headers.get('x-ratelimit-limit-requests'), String(RPM));
        assert.equal(err.headers.get('x-ratelimit-remaining-requests'), '0');
        assert.ok(err.headers.get('x-ratelimit-reset-requests'));
        return true;
      });
  });
});
