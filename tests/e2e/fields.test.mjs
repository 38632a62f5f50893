// What a client may ask of the operator's upstream account, through the real suite with the openai
// SDK: `store: true` never reaches the upstream (edge.strip_fields defaults to store),
// `service_tier: "priority"` is refused by default (edge.allowed_service_tiers: auto,default),
// and once the edge allows priority (restarted with TOLLGATE_EDGE__ALLOWED_SERVICE_TIERS) and
// billing prices it at x2 (tollgatectl billing set-service-tier-multiplier), a priority request
// costs exactly twice a default one for the same tokens, streamed or not.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openaiClient, startSuite, waitFor } from './harness.mjs';

// 80 characters: 20 prompt tokens at the mock's ceil(chars / 4), 10 completion tokens (its
// default reply), so the default cost is a whole number: (20 * 150000 + 10 * 600000) / 1e6 = 9.
const CONTENT = 'Priority or default: the same tokens, the operator decides what each one costs..';
const MESSAGES = [{ role: 'user', content: CONTENT }];

describe('request fields the operator controls', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let demoUser;

  before(async () => {
    // Split: the edge alone is restarted with another field policy half-way.
    suite = await startSuite({ split: true });
    ({ default: OpenAI } = await import('openai'));
    client = await openaiClient(suite);
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  it('store: true does not reach the upstream; every other field does', { timeout: 30_000 }, async () => {
    assert.equal(CONTENT.length, 80);
    const r = await client.chat.completions.create({
      model: 'gpt-4o-mini', messages: MESSAGES, store: true, metadata: { ticket: 'T-1' }, temperature: 0.2,
    });
    assert.equal(r.object, 'chat.completion');
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/chat/completions');
    assert.equal('store' in last.body, false, JSON.stringify(last.body));
    // (The mock lists fields sorted; that the order is kept is field_policy_test's.)
    // (max_tokens: the budget the edge admitted and held for, since the client set none.)
    assert.deepEqual(Object.keys(last.body).sort(), ['max_tokens', 'messages', 'metadata', 'model', 'temperature']);
    assert.deepEqual(last.body.metadata, { ticket: 'T-1' });
    // Legacy completions go through the same policy.
    await client.completions.create({ model: 'gpt-4o-mini', prompt: 'hi', store: true });
    const legacy = await suite.mockLast();
    assert.equal(legacy.target, '/v1/completions');
    assert.equal('store' in legacy.body, false, JSON.stringify(legacy.body));
  });

  it('service_tier priority is refused by default, before any upstream call', { timeout: 30_000 }, async () => {
    const before = (await suite.stats()).total;
    for (const call of [
      () => client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, service_tier: 'priority' }),
      () => client.embeddings.create({ model: 'text-embedding-3-small', input: 'x', service_tier: 'priority' }),
    ]) {
      await assert.rejects(call(), (err) => {
        assert.ok(err instanceof OpenAI.BadRequestError, String(err));
        assert.equal(err.status, 400);
        assert.equal(err.type, 'invalid_request_error');
        assert.equal(err.param, 'service_tier');
        assert.match(err.message, /'auto', 'default'/);
        return true;
      });
    }
    assert.equal((await suite.stats()).total, before, 'the upstream was not called');
    // An allowed tier goes through as sent.
    const auto = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, service_tier: 'auto' });
    assert.equal(auto.service_tier, 'default');
    assert.equal((await suite.mockLast()).body.service_tier, 'auto');
  });

  it('with priority allowed and priced at x2, a priority request costs twice the default', { timeout: 120_000 }, async () => {
    await suite.ctl(['billing', 'set-service-tier-multiplier', '--tier=priority', '--multiplier-ppm=2000000']);
    const { multipliers } = await suite.ctlJson(['billing', 'list-service-tier-multipliers']);
    assert.deepEqual(multipliers.map((m) => [m.tier, Number(m.multiplier_ppm)]), [['priority', 2000000]]);
    const audit = await suite.ctlJson(['billing', 'list-audit-log']);
    assert.equal(audit.entries[0].action, 'set_service_tier_multiplier');
    assert.equal(audit.entries[0].target, 'service_tier:priority');

    await suite.restart('edge', { env: { TOLLGATE_EDGE__ALLOWED_SERVICE_TIERS: 'auto,default,priority' } });
    // A key of its own, so its records are exactly the requests made here.
    const { api_key: key, key: made } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${demoUser}`, '--name=tiers']);
    const tiers = await openaiClient(suite, { apiKey: key });

    const plain = await tiers.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
    assert.equal(plain.service_tier, 'default');
    const priority = await tiers.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, service_tier: 'priority' });
    assert.equal(priority.service_tier, 'priority');
    assert.equal((await suite.mockLast()).body.service_tier, 'priority');
    assert.deepEqual(
      [priority.usage.prompt_tokens, priority.usage.completion_tokens],
      [plain.usage.prompt_tokens, plain.usage.completion_tokens]);
    let streamedTier = null;
    for await (const chunk of await tiers.chat.completions.create(
      { model: 'gpt-4o-mini', messages: MESSAGES, service_tier: 'priority', stream: true })) streamedTier = chunk.service_tier;
    assert.equal(streamedTier, 'priority');

    const records = await waitFor(async () => {
      const r = await suite.ctlJson(['billing', 'list-usage-records', `--api-key-id=${made.id}`]);
      return (r.records ?? []).length >= 3 ? r.records : null;
    }, { timeoutMs: 15_000, what: 'the three usage records' });
    assert.equal(records.length, 3);
    const of = (streamed, tier) => records.filter((r) => r.record.streamed === streamed && (r.record.service_tier || '') === tier);
    const [defaultRecord] = of(false, 'default'); // the tier the upstream reported
    const [priorityRecord] = of(false, 'priority');
    const [streamedRecord] = of(true, 'priority');
    assert.ok(defaultRecord && priorityRecord && streamedRecord, JSON.stringify(records));
    const { prompt_tokens: p, completion_tokens: o } = plain.usage;
    const defaultCost = Number(defaultRecord.cost_micros);
    assert.equal(defaultCost, Math.ceil((p * 150000 + o * 600000) / 1e6));
    assert.equal(defaultCost, 9);
    for (const r of [priorityRecord, streamedRecord]) {
      assert.equal(Number(r.record.prompt_tokens), p);
      assert.equal(Number(r.record.completion_tokens), o);
      assert.equal(Number(r.cost_micros), 2 * defaultCost, JSON.stringify(r));
    }
  });
});
