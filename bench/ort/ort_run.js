#!/usr/bin/env node
// ort_run.js: runs one ONNX model in ONNX Runtime (onnxruntime-node, CPU) on inputs read from a
// safetensors file, as attn_run does for attn's modules. bench/compare.py calls it twice per
// workload: once with --output to check ORT's numbers, then with --repeat to time it.
//
//   node ort_run.js --model M.onnx --inputs X.safetensors [--output Y.safetensors]
//                   [--threads T] [--repeat R] [--warmup W]
//
// Session: intraOpNumThreads = T (default 1), interOpNumThreads = 1, all graph optimisations,
// sequential execution. The inputs file holds one F32 tensor per model input, by name. The first
// run's outputs go to --output (F32, by output name). With --repeat R > 0: W more warm-up runs
// (default 2), then R timed runs of `await session.run(feeds)` (performance.now(): includes the
// binding's per-call work, about 0.3 ms). Prints one JSON line on stdout:
//   {"threads", "first_ms", "median_ms", "min_ms", "runs", "warmup", "ort"}   (times null if R = 0)
// Exit status: 0 ok, 2 command-line error, 1 anything else (message on stderr).
//
// onnxruntime-node is looked up as usual (NODE_PATH: compare.py points it at --ort-dir).
'use strict';
const fs = require('fs');
const { performance } = require('perf_hooks');

const USAGE = 'usage: node ort_run.js --model M.onnx --inputs X.safetensors [--output Y.safetensors] ' +
              '[--threads T] [--repeat R] [--warmup W]';

class UsageError extends Error {}

function parseArgs(argv) {
  const a = { threads: 1, repeat: 0, warmup: 2 };
  const numbers = new Set(['threads', 'repeat', 'warmup']);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (!argv[i].startsWith('--') || !['model', 'inputs', 'output', ...numbers].includes(name) || value === undefined) {
      throw new UsageError(`bad argument '${argv[i]}'`);
    }
    a[name] = numbers.has(name) ? Number(value) : value;
    if (numbers.has(name) && !(Number.isInteger(a[name]) && a[name] >= (name === 'threads' ? 1 : 0))) {
      throw new UsageError(`--${name} expects a non-negative integer (threads >= 1), got '${value}'`);
    }
  }
  if (!a.model || !a.inputs) throw new UsageError('--model and --inputs are required');
  return a;
}

// safetensors: u64 little-endian header size, JSON header, then the data. F32 only.
function readSafetensors(file, ort) {
  const raw = fs.readFileSync(file);
  const n = Number(raw.readBigUInt64LE(0));
  const header = JSON.parse(raw.toString('utf8', 8, 8 + n));
  const base = 8 + n;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`${file}: tensor '${name}' is ${info.dtype}; ort_run.js reads F32 only`);
    const [b, e] = info.data_offsets;
    const data = new Float32Array(raw.buffer.slice(raw.byteOffset + base + b, raw.byteOffset + base + e));
    tensors[name] = new ort.Tensor('float32', data, info.shape);
  }
  return tensors;
}

function writeSafetensors(file, tensors) {
  const header = {};
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (t.type !== 'float32') throw new Error(`output '${name}' is ${t.type}; ort_run.js writes float32 only`);
    const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: 'F32', shape: t.dims, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);  // data 8-byte aligned, as the format recommends
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([size, Buffer.from(json), ...parts]));
}

// The feeds for the session's inputs, by name; the file must hold exactly those.
function feedsFor(session, tensors, file) {
  const want = [...session.inputNames].sort(), have = Object.keys(tensors).sort();
  if (JSON.stringify(want) !== JSON.stringify(have)) {
    throw new Error(`${file} holds [${have}], the model takes [${want}]`);
  }
  return tensors;
}

const median = (xs) => {
  const s = [...xs].sort((x, y) => x - y), m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
};

async function timedRun(session, feeds) {
  const t0 = performance.now();
  const out = await session.run(feeds);
  return [performance.now() - t0, out];
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const ort = require('onnxruntime-node');
  const session = await ort.InferenceSession.create(a.model, {
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    logSeverityLevel: 3,
  });
  const feeds = feedsFor(session, readSafetensors(a.inputs, ort), a.inputs);
  const [first, outputs] = await timedRun(session, feeds);
  if (a.output) writeSafetensors(a.output, outputs);
  for (let i = 0; i < (a.repeat ? a.warmup : 0); i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < a.repeat; i++) times.push((await timedRun(session, feeds))[0]);
  await session.release();
  console.log(JSON.stringify({
    threads: a.threads, first_ms: first,
    median_ms: times.length ? median(times) : null, min_ms: times.length ? Math.min(...times) : null,
    runs: a.repeat, warmup: a.repeat ? a.warmup : 0, ort: ort.env.versions.node,
  }));
}

main().catch((e) => {
  console.error(`ort_run.js: ${e.message || e}`);
  if (e instanceof UsageError) console.error(USAGE);
  process.exit(e instanceof UsageError ? 2 : 1);
});
