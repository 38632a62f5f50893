// Images, audio and moderations through the edge with the openai SDK (issue #12): every answer
// validated against the OpenAI spec, and each request's usage record carrying the units it is
// billed by (images with size and quality, audio milliseconds, characters, or reported tokens)
// at the prices set here with tollgatectl's unit-price flags. The mock upstream answers each
// endpoint as OpenAI does (tools/mock_upstream/media.cpp). Transcriptions and translations are
// streamed uploads (services/edge/src/upload.h): a 24 MB WAV passes with the edge's peak memory
// (VmHWM) growing far less than the file, whether the SDK sends the file before the model (held
// in an unnamed spill file) or after it (streamed straight through).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { addAnthropicProvider, addMockModel, addRoutedModel, loadSpec, openaiClient, specPath, startSuite, waitFor } from './harness.mjs';

/** A 16-bit mono PCM WAV of `ms` milliseconds at 8 kHz (16,000 bytes a second). */
function wav(ms) {
  const data = ms * 16;
  const b = Buffer.alloc(44 + data);
  b.write('RIFF', 0); b.writeUInt32LE(36 + data, 4); b.write('WAVEfmt ', 8);
  b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22);
  b.writeUInt32LE(8000, 24); b.writeUInt32LE(16000, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34);
  b.write('data', 36); b.writeUInt32LE(data, 40);
  for (let i = 0; i < data / 2; i++) b.writeInt16LE(Math.round(3000 * Math.sin(i / 4)), 44 + 2 * i);
  return b;
}

/** A 16-bit mono PCM WAV header followed by `data` bytes of a cheap pattern (big files, fast). */
function bigWav(data) {
  const b = Buffer.alloc(44 + data, 0x11);
  wav(0).copy(b, 0, 0, 44);
  b.writeUInt32LE(36 + data, 4);
  b.writeUInt32LE(data, 40);
  return b;
}

const MB = 1024 * 1024;

/** VmHWM and VmRSS of a process, in bytes. */
function memoryOf(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm'))[1]) * 1024;
  return { hwm: kb('VmHWM'), rss: kb('VmRSS') };
}

/** The events of an SSE body (data lines parsed as JSON). */
function sseEvents(text) {
  return text.split(/\r?\n\r?\n/).filter((e) => e.trim()).map((e) =>
    JSON.parse(e.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n')));
}

/** A valid 1x1 RGBA PNG. */
const PNG = Buffer.from(
  '89504e470d0a1a0a0000000d494844520000000100000001080600' +
  '00001f15c4890000000d49444154789c63f8cfc0f01f00050001ff89993d1d0000000049454e44ae426082', 'hex');

describe('images, audio and moderations through the edge', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let toFile;
  let spec;
  let keyId;

  before(async () => {
    suite = await startSuite();
    ({ toFile } = await import('openai'));
    spec = await loadSpec();
    for (const m of ['dall-e-3', 'dall-e-2', 'gpt-image-1', 'whisper-1', 'gpt-4o-transcribe', 'tts-1', 'gpt-4o-mini-tts',
      'omni-moderation-latest'])
      await addMockModel(suite, m);
    const ctl = (args) => suite.ctl(['billing', 'set-price', ...args]);
    await ctl(['--model=dall-e-3', '--image-prices=1024x1024=40000,1024x1024/hd=80000,*/*=120000']);
    await ctl(['--model=gpt-image-1', '--input-micros-per-mtok=5000000', '--output-micros-per-mtok=40000000',
      '--image-prices=*/*=250000']);
    await ctl(['--model=whisper-1', '--audio-micros-per-minute=6000']);
    await ctl(['--model=gpt-4o-transcribe', '--input-micros-per-mtok=2500000', '--output-micros-per-mtok=10000000']);
    await ctl(['--model=tts-1', '--micros-per-mchar=15000000']);
    await ctl(['--model=dall-e-2', '--image-prices=256x256=16000,512x512=18000,1024x1024=20000']);
    await ctl(['--model=gpt-4o-mini-tts', '--input-micros-per-mtok=600000', '--output-micros-per-mtok=12000000',
      '--micros-per-mchar=15000000']);
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    const demo = users.find((u) => u.name === 'demo').id;
    const { api_key: key, key: made } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${demo}`, '--name=media',
      '--store-bodies=true']);
    keyId = made.id;
    client = await openaiClient(suite, { apiKey: key });
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  function conforms(t, name, value) {
    if (!spec) { t.diagnostic(`spec validation skipped: ${specPath} not found`); return; }
    assert.deepEqual(spec.validate(name, value), [],
      `${name} does not match the OpenAI spec:\n${JSON.stringify(value).slice(0, 2000)}`);
  }

  /** The media key's usage records (it stores bodies) of `model` (newest first), once there are `n`. */
  async function records(model, n = 1) {
    return waitFor(async () => {
      const r = await suite.ctlJson(['billing', 'list-usage-records', `--api-key-id=${keyId}`, '--include-bodies=true']);
      const mine = (r.records ?? []).filter((x) => x.record.model === model);
      return mine.length >= n ? mine : null;
    }, { timeoutMs: 10_000, what: `${n} usage record(s) of ${model}` });
  }
  const num = (v) => Number(v ?? 0);

  it('images.generate (dall-e-3, url): one image billed at its size and quality', { timeout: 30_000 }, async (t) => {
    const r = await client.images.generate({ model: 'dall-e-3', prompt: 'an otter', size: '1024x1024', quality: 'hd' });
    conforms(t, 'ImagesResponse', r);
    assert.equal(r.data.length, 1);
    assert.match(r.data[0].url, /^https:\/\//);
    assert.equal(r.data[0].revised_prompt, 'an otter');
    const [{ record, cost_micros: cost }] = await records('dall-e-3');
    assert.equal(record.endpoint_kind, 'images_generations');
    assert.equal(num(record.images), 1);
    assert.equal(record.image_size, '1024x1024');
    assert.equal(record.image_quality, 'hd');
    assert.equal(num(cost), 80000);
  });

  it('images.generate (gpt-image-1, b64_json): the reported tokens win over the image price', { timeout: 30_000 }, async (t) => {
    const r = await client.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse', n: 2, quality: 'low' });
    conforms(t, 'ImagesResponse', r);
    assert.equal(r.data.length, 2);
    assert.deepEqual(Buffer.from(r.data[0].b64_json, 'base64').subarray(0, 8), PNG.subarray(0, 8));
    assert.ok(r.usage.output_tokens > 0);
    const [{ record, cost_micros: cost }] = await records('gpt-image-1');
    assert.equal(num(record.prompt_tokens), r.usage.input_tokens);
    assert.equal(num(record.completion_tokens), r.usage.output_tokens);
    assert.equal(num(record.images), 2);
    assert.equal(num(cost), Math.ceil((r.usage.input_tokens * 5_000_000 + r.usage.output_tokens * 40_000_000) / 1e6));
  });

  it('images.edit (multipart with a PNG): relayed as sent, only the model routed', { timeout: 30_000 }, async (t) => {
    const r = await client.images.edit({
      model: 'gpt-image-1', prompt: 'add a hat', image: await toFile(PNG, 'otter.png', { type: 'image/png' }),
    });
    conforms(t, 'ImagesResponse', r);
    assert.equal(r.data.length, 1);
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/images/edits');
    assert.match(last.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(last.body, /name="prompt"\r\n\r\nadd a hat\r\n/);
    const all = await records('gpt-image-1', 2);
    assert.equal(all[0].record.endpoint_kind, 'images_edits');
    assert.equal(num(all[0].record.prompt_tokens), r.usage.input_tokens);
  });

  it('audio.transcriptions.create (whisper-1, verbose_json): billed by the WAV duration', { timeout: 30_000 }, async (t) => {
    const r = await client.audio.transcriptions.create({
      model: 'whisper-1', file: await toFile(wav(2500), 'speech.wav', { type: 'audio/wav' }), response_format: 'verbose_json',
    });
    conforms(t, 'CreateTranscriptionResponseVerboseJson', r);
    assert.equal(r.duration, 2.5);
    assert.ok(r.text.length > 0);
    const [{ record, cost_micros: cost }] = await records('whisper-1');
    assert.equal(record.endpoint_kind, 'audio_transcriptions');
    assert.equal(num(record.audio_milliseconds), 2500);
    assert.equal(num(cost), 250); // 6000 per minute x 2.5 s
    assert.match(record.request_body, /^\[multipart\/form-data body of \d+ bytes, not stored\]$/);
    assert.match(record.response_body, /"duration":2\.5/);
  });

  it('audio.transcriptions.create (gpt-4o-transcribe): tokens as reported, also streamed', { timeout: 30_000 }, async (t) => {
    const file = await toFile(wav(1000), 'speech.wav', { type: 'audio/wav' });
    const r = await client.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file });
    conforms(t, 'CreateTranscriptionResponseJson', r);
    assert.equal(r.usage.type, 'tokens');
    const [{ record, cost_micros: cost }] = await records('gpt-4o-transcribe');
    assert.equal(num(record.prompt_tokens), r.usage.input_tokens);
    assert.equal(num(record.completion_tokens), r.usage.output_tokens);
    assert.equal(num(cost), Math.ceil((r.usage.input_tokens * 2_500_000 + r.usage.output_tokens * 10_000_000) / 1e6));

    const stream = await client.audio.transcriptions.create({
      model: 'gpt-4o-transcribe', file: await toFile(wav(1000), 'speech.wav', { type: 'audio/wav' }), stream: true,
    });
    let text = '';
    let done;
    for await (const event of stream) {
      if (event.type === 'transcript.text.delta') { conforms(t, 'TranscriptTextDeltaEvent', event); text += event.delta; }
      if (event.type === 'transcript.text.done') { conforms(t, 'TranscriptTextDoneEvent', event); done = event; }
    }
    assert.ok(done, 'no transcript.text.done event');
    assert.equal(text, done.text);
    const [streamed] = await records('gpt-4o-transcribe', 2);
    assert.equal(streamed.record.streamed, true);
    assert.equal(num(streamed.record.prompt_tokens), done.usage.input_tokens);
    assert.equal(num(streamed.record.completion_tokens), done.usage.output_tokens);
    assert.match(streamed.record.response_body, /"type":"transcript\.text\.done"/); // events kept as sent
  });

  it('audio.speech.create (tts-1, wav): the audio bytes arrive, billed by characters', { timeout: 30_000 }, async () => {
    const input = 'Tollgate speaks: héllo.';
    const response = await client.audio.speech.create({ model: 'tts-1', voice: 'alloy', input, response_format: 'wav' });
    assert.equal(response.headers.get('content-type'), 'audio/wav');
    const audio = Buffer.from(await response.arrayBuffer());
    assert.equal(audio.subarray(0, 4).toString(), 'RIFF');
    assert.equal(audio.subarray(8, 12).toString(), 'WAVE');
    assert.equal(audio.readUInt32LE(40), audio.length - 44); // the whole file, nothing lost
    const [{ record, cost_micros: cost }] = await records('tts-1');
    assert.equal(record.endpoint_kind, 'audio_speech');
    assert.equal(num(record.characters), [...input].length);
    assert.equal(num(cost), Math.ceil([...input].length * 15_000_000 / 1e6));
    // The key stores bodies, but not binary ones: a note of what the audio was.
    assert.match(record.response_body, /^\[audio\/wav body of \d+ bytes, not stored\]$/);
    assert.match(record.request_body, /"input":"Tollgate speaks/);
  });

  /** A 24 MB WAV (1,500 s) transcribed through the SDK, fields in `order`; the edge's memory measured. */
  async function bigTranscription(t, order) {
    const pid = suite.pidOf('edge');
    assert.ok(pid, 'the edge process');
    const seconds = 1500;
    const audio = bigWav(seconds * 16000);
    const file = await toFile(audio, 'long.wav', { type: 'audio/wav' });
    const params = order === 'file first'
      ? { file, model: 'whisper-1', response_format: 'verbose_json' }
      : { model: 'whisper-1', response_format: 'verbose_json', file };
    const m0 = memoryOf(pid);
    let maxRss = m0.rss;
    const sampler = setInterval(() => { maxRss = Math.max(maxRss, memoryOf(pid).rss); }, 10);
    let r;
    try {
      r = await client.audio.transcriptions.create(params);
    } finally {
      clearInterval(sampler);
    }
    const m1 = memoryOf(pid);
    maxRss = Math.max(maxRss, m1.rss);
    t.diagnostic(`${order}: edge VmHWM ${(m0.hwm / MB).toFixed(1)} -> ${(m1.hwm / MB).toFixed(1)} MB, VmRSS ` +
      `${(m0.rss / MB).toFixed(1)} -> max ${(maxRss / MB).toFixed(1)} MB for a ${(audio.length / MB).toFixed(1)} MB file`);
    conforms(t, 'CreateTranscriptionResponseVerboseJson', r);
    assert.equal(r.duration, seconds, 'the upstream got the whole file');
    // The edge holds a few pieces of 64 KiB and the file's head, never the file.
    assert.ok(m1.hwm - m0.hwm < 8 * MB, `the edge's peak memory grew by ${((m1.hwm - m0.hwm) / MB).toFixed(1)} MB`);
    assert.ok(maxRss - m0.rss < 8 * MB, `the edge's memory grew by ${((maxRss - m0.rss) / MB).toFixed(1)} MB`);
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/audio/transcriptions');
    return r;
  }

  it('a 24 MB WAV sent file first (as the SDK does) is spilled, not held in memory, and billed by its duration', { timeout: 120_000 }, async (t) => {
    await bigTranscription(t, 'file first');
    const [{ record, cost_micros: cost }] = await waitFor(async () => {
      const all = await records('whisper-1');
      return num(all[0].record.audio_milliseconds) === 1_500_000 ? all : null;
    }, { timeoutMs: 10_000, what: 'the long transcription\'s record' });
    assert.equal(record.endpoint_kind, 'audio_transcriptions');
    assert.equal(num(cost), 150_000); // 6000 per minute x 25 minutes
    assert.match(record.request_body, /^\[multipart\/form-data body of \d+ bytes, not stored\]$/);
    assert.ok(Number(record.request_body.match(/of (\d+) bytes/)[1]) > 24_000_000, record.request_body);
    // The spill file never had a name: nothing is left in the edge's spill directory.
    const spill = path.join(suite.stateDir, 'spool', 'uploads');
    assert.ok(fs.existsSync(spill), 'the upload was spilled');
    assert.deepEqual(fs.readdirSync(spill), []);
  });

  it('a 24 MB WAV sent after the model is streamed straight through', { timeout: 120_000 }, async (t) => {
    const before = (await records('whisper-1')).length;
    await bigTranscription(t, 'model first');
    const [{ record, cost_micros: cost }] = await records('whisper-1', before + 1);
    assert.equal(num(record.audio_milliseconds), 1_500_000);
    assert.equal(num(cost), 150_000);
  });

  it('audio.translations.create (whisper-1): English text, billed by the WAV duration', { timeout: 30_000 }, async (t) => {
    const before = (await records('whisper-1')).length;
    const r = await client.audio.translations.create({
      file: await toFile(wav(3000), 'spanish.wav', { type: 'audio/wav' }), model: 'whisper-1',
    });
    conforms(t, 'CreateTranslationResponseJson', r);
    assert.ok(r.text.length > 0);
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/audio/translations');
    const [{ record, cost_micros: cost }] = await records('whisper-1', before + 1);
    assert.equal(record.endpoint_kind, 'audio_translations');
    assert.equal(num(record.audio_milliseconds), 3000);
    assert.equal(num(cost), 300); // 6000 per minute x 3 s
  });

  it('images.createVariation (dall-e-2): one image per n, billed at its size', { timeout: 30_000 }, async (t) => {
    const r = await client.images.createVariation({
      image: await toFile(PNG, 'otter.png', { type: 'image/png' }), model: 'dall-e-2', n: 2, size: '512x512',
    });
    conforms(t, 'ImagesResponse', r);
    assert.equal(r.data.length, 2);
    assert.match(r.data[0].url, /^https:\/\//);
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/images/variations');
    const [{ record, cost_micros: cost }] = await records('dall-e-2');
    assert.equal(record.endpoint_kind, 'images_variations');
    assert.equal(num(record.images), 2);
    assert.equal(record.image_size, '512x512');
    assert.equal(num(cost), 36000);
  });

  it('audio.transcriptions.create with stream: true and the file first: SSE relayed, usage recorded', { timeout: 30_000 }, async (t) => {
    const before = (await records('gpt-4o-transcribe')).length;
    // The SDK sends the fields in the order given: here `stream` comes after the file.
    const stream = await client.audio.transcriptions.create({
      file: await toFile(wav(2000), 'speech.wav', { type: 'audio/wav' }), model: 'gpt-4o-transcribe', stream: true,
    });
    let text = '';
    let done;
    let deltas = 0;
    for await (const event of stream) {
      conforms(t, 'CreateTranscriptionResponseStreamEvent', event);
      if (event.type === 'transcript.text.delta') { deltas++; text += event.delta; }
      if (event.type === 'transcript.text.done') done = event;
    }
    assert.ok(deltas > 1, 'several delta events');
    assert.ok(done, 'no transcript.text.done event');
    assert.equal(text, done.text);
    const [{ record, cost_micros: cost }] = await records('gpt-4o-transcribe', before + 1);
    assert.equal(record.streamed, true);
    assert.equal(num(record.prompt_tokens), done.usage.input_tokens);
    assert.equal(num(record.completion_tokens), done.usage.output_tokens);
    assert.equal(num(cost), Math.ceil((done.usage.input_tokens * 2_500_000 + done.usage.output_tokens * 10_000_000) / 1e6));
  });

  it('audio.speech.create with stream_format "sse": speech.audio events relayed, the tokens reported billed', { timeout: 30_000 }, async (t) => {
    const input = 'Streamed speech, in events.';
    const response = await client.audio.speech.create({
      model: 'gpt-4o-mini-tts', voice: 'alloy', input, response_format: 'wav', stream_format: 'sse',
    });
    assert.match(response.headers.get('content-type'), /^text\/event-stream/);
    const events = sseEvents(await response.text());
    assert.ok(events.length >= 2);
    let audio = Buffer.alloc(0);
    for (const event of events) {
      conforms(t, 'CreateSpeechResponseStreamEvent', event);
      if (event.type === 'speech.audio.delta') audio = Buffer.concat([audio, Buffer.from(event.audio, 'base64')]);
    }
    const done = events.at(-1);
    assert.equal(done.type, 'speech.audio.done');
    conforms(t, 'SpeechAudioDoneEvent', done);
    assert.equal(audio.subarray(0, 4).toString(), 'RIFF');
    assert.equal(audio.readUInt32LE(40), audio.length - 44); // every delta arrived
    const [{ record, cost_micros: cost }] = await records('gpt-4o-mini-tts');
    assert.equal(record.endpoint_kind, 'audio_speech');
    assert.equal(record.streamed, true);
    assert.equal(num(record.prompt_tokens), done.usage.input_tokens);
    assert.equal(num(record.completion_tokens), done.usage.output_tokens);
    assert.equal(num(record.characters), [...input].length);
    assert.equal(num(cost), Math.ceil((done.usage.input_tokens * 600_000 + done.usage.output_tokens * 12_000_000) / 1e6));
  });

  it('failover: an upload held whole is replayed to the next key; one streamed straight through is not', { timeout: 60_000 }, async (t) => {
    // A model of its own on two keys; the first key answers 500.
    const { provider } = await suite.ctlJson(['router', 'create-provider', '--name=mock-audio-failover',
      '--type=openai-compatible', `--base-url=http://127.0.0.1:${suite.mockPort}/v1`]);
    for (const secret of ['sk-audio-fail', 'sk-audio-good'])
      await suite.ctl(['router', 'create-upstream-key', `--provider-id=${provider.id}`, `--name=${secret}`, `--secret=${secret}`]);
    await suite.ctl(['router', 'create-model', '--name=whisper-failover', '--owned-by=mock']);
    await suite.ctl(['router', 'set-model-route', '--model=whisper-failover', `--provider-id=${provider.id}`,
      '--upstream-model=whisper-1']);
    await suite.ctl(['billing', 'set-price', '--model=whisper-failover', '--audio-micros-per-minute=6000']);
    await suite.setKeyBehavior('sk-audio-fail', { status: 500 });
    const byKey = async () => (await suite.stats()).by_key;
    // 40 s of audio (640 KB): over the 256 KiB the edge keeps in memory, so a file-first upload
    // is held in the spill file. Round robin puts each key first once in two requests.
    const audio = wav(40_000);
    const k0 = await byKey();
    for (let i = 0; i < 2; i++) {
      const r = await client.audio.transcriptions.create({
        file: await toFile(audio, 'a.wav', { type: 'audio/wav' }), model: 'whisper-failover', response_format: 'verbose_json',
      });
      assert.equal(r.duration, 40, 'the whole file reached the key that answered');
    }
    const k1 = await byKey();
    const tried = (k) => (k1[k] ?? 0) - (k0[k] ?? 0);
    t.diagnostic(`file first: failing key tried ${tried('sk-audio-fail')}, good key ${tried('sk-audio-good')}`);
    assert.ok(tried('sk-audio-fail') >= 1, 'the failing key was never first');
    assert.equal(tried('sk-audio-good'), 2);
    // Model first: the file streams straight through, so once the failing key has read it there is
    // nothing to send again: that request gets the upstream's failure.
    const statuses = [];
    for (let i = 0; i < 2; i++) {
      try {
        await client.audio.transcriptions.create({
          model: 'whisper-failover', response_format: 'verbose_json', file: await toFile(audio, 'a.wav', { type: 'audio/wav' }),
        });
        statuses.push(200);
      } catch (err) {
        statuses.push(err.status);
      }
    }
    const k2 = await byKey();
    const tried2 = (k) => (k2[k] ?? 0) - (k1[k] ?? 0);
    t.diagnostic(`model first: statuses ${statuses}; failing key tried ${tried2('sk-audio-fail')}, good key ${tried2('sk-audio-good')}`);
    assert.equal(tried2('sk-audio-fail') + tried2('sk-audio-good'), 2, 'each upload went to one key only');
    for (const [i, status] of statuses.entries()) assert.ok(status === 200 || status === 502, `request ${i}: ${status}`);
    assert.equal(statuses.filter((s) => s === 502).length, tried2('sk-audio-fail'));
    await suite.setKeyBehavior('sk-audio-fail', {});
  });

  it('moderations.create: the default model when none is named', { timeout: 30_000 }, async (t) => {
    const r = await client.moderations.create({ input: ['first text', 'second text'] });
    conforms(t, 'CreateModerationResponse', r);
    assert.equal(r.results.length, 2);
    assert.equal(r.model, 'omni-moderation-latest');
    const [{ record }] = await records('omni-moderation-latest');
    assert.equal(record.endpoint_kind, 'moderations');
    assert.equal(record.status, 200);
  });

  it('a hold covers n images at the highest price: a user who cannot pay is refused before the upstream', { timeout: 30_000 }, async () => {
    const user = (await suite.ctlJson(['auth', 'create-user', '--name=poor-painter'])).user.id;
    await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${user}`, '--amount-micros=200000']);
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=poor']);
    const poor = await openaiClient(suite, { apiKey: key });
    const calls = (await suite.stats()).total;
    // 2 x 120,000 (the highest dall-e-3 price) > 200,000, whatever size the answer has.
    await assert.rejects(poor.images.generate({ model: 'dall-e-3', prompt: 'p', n: 2, size: '1024x1024' }),
      (err) => err.status === 429 && err.code === 'insufficient_quota');
    assert.equal((await suite.stats()).total, calls, 'the upstream was called');
    // One image at most 120,000 fits, and is charged at its own price (1024x1024 standard).
    const r = await poor.images.generate({ model: 'dall-e-3', prompt: 'p', n: 1, size: '1024x1024' });
    assert.equal(r.data.length, 1);
    const account = await waitFor(async () => {
      const a = (await suite.ctlJson(['billing', 'get-balance', `--user-id=${user}`])).account;
      return Number(a.total_cost_micros) > 0 ? a : null;
    }, { what: 'the charge' });
    assert.equal(Number(account.total_cost_micros), 40000);
  });

  it('a model served only by an Anthropic upstream cannot take media requests: 400 before any call', { timeout: 30_000 }, async () => {
    const provider = await addAnthropicProvider(suite, 'anthropic-media', ['sk-ant-media-test-1']);
    await addRoutedModel(suite, 'claude-painter', provider, 'claude-3-5-haiku-latest');
    const calls = (await suite.stats()).total;
    await assert.rejects(client.images.generate({ model: 'claude-painter', prompt: 'p' }),
      (err) => err.status === 400 && err.error?.type === 'invalid_request_error' &&
        /Anthropic upstream/.test(err.message));
    await assert.rejects(client.moderations.create({ model: 'claude-painter', input: 'x' }),
      (err) => err.status === 400);
    assert.equal((await suite.stats()).total, calls, 'the upstream was called');
  });

  it('bad media requests are 400s in the OpenAI format', { timeout: 30_000 }, async () => {
    await assert.rejects(client.images.generate({ model: 'dall-e-3', prompt: 'p', n: 11 }),
      (err) => err.status === 400 && err.param === 'n');
    const res = await fetch(`${suite.baseURL}/audio/transcriptions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${client.apiKey}`, 'content-type': 'multipart/form-data; boundary=xyz' },
      body: '--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n', // never closed
    });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.error.type, 'invalid_request_error');
    assert.match(body.error.message, /multipart/);
  });
});
