// A Node.js backend calling Taxi Driver's public API through the gateway, the way
// docs/clients.md tells another team to: protos/ loaded at run time by proto-loader,
// nothing generated, nothing copied from the Python side.
//
//   node client.mjs --target 127.0.0.1:50051 --key tdk_... --protos ../../protos
//
// Prints one JSON report of what the server answered; tests/test_node_client.py
// asserts on it. Exits 1 (message on stderr) when a step goes wrong in a way the
// report cannot carry.

import { createHash, randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const { values: args } = parseArgs({
  options: {
    target: { type: "string" },
    key: { type: "string", default: "" },
    protos: { type: "string" },
  },
});
if (!args.target || !args.protos) {
  console.error("usage: node client.mjs --target HOST:PORT [--key API_KEY] --protos PATH/TO/protos");
  process.exit(2);
}

// protos/ and protos/third_party (google/rpc, grpc/health) are the two include dirs.
const INCLUDE_DIRS = [args.protos, path.join(args.protos, "third_party")];
// keepCase: field names as in the .proto (run_id, not runId: a camelCase-d name is
// silently dropped by the server's parser). enums/longs: String, so enums read as
// names and int64 as decimal strings instead of numbers and Long objects.
const LOADER_OPTIONS = {
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
  includeDirs: INCLUDE_DIRS,
};
const definition = protoLoader.loadSync(
  [
    "taxidriver/trainer/v1/trainer_service.proto",
    "taxidriver/registry/v1/registry_service.proto",
    "grpc/health/v1/health.proto",
  ],
  LOADER_OPTIONS,
);
const api = grpc.loadPackageDefinition(definition);

// Error details: google.rpc.Status in the `grpc-status-details-bin` trailer, decoded
// with protobufjs from the same .proto files.
const errorTypes = new protobuf.Root();
errorTypes.resolvePath = (_origin, target) => {
  const found = INCLUDE_DIRS.map((dir) => path.join(dir, target)).find((candidate) => existsSync(candidate));
  return found ?? target; // google/protobuf/*: protobufjs ships them
};
errorTypes.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const RpcStatus = errorTypes.lookupType("google.rpc.Status");

// Deadlines and retries of UNAVAILABLE for the calls that are safe to repeat,
// from the contract's service config (grpc-js refuses a config it cannot parse).
const channelOptions = {
  "grpc.service_config": readFileSync(path.join(args.protos, "taxidriver", "grpc_service_config.json"), "utf8"),
};
const credentials = grpc.credentials.createInsecure();
const trainer = new api.taxidriver.trainer.v1.TrainerService(args.target, credentials, channelOptions);
const registry = new api.taxidriver.registry.v1.RegistryService(args.target, credentials, channelOptions);
const health = new api.grpc.health.v1.Health(args.target, credentials, channelOptions);

const codeName = (code) => Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);

function metadata(requestId) {
  const md = new grpc.Metadata();
  if (args.key) md.set("authorization", `Bearer ${args.key}`);
  md.set("x-request-id", requestId ?? randomUUID());
  return md;
}

function decodeError(error) {
  const decoded = { code: codeName(error.code), message: error.details, reason: "", violations: [] };
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return decoded;
  const status = RpcStatus.decode(raw);
  for (const detail of status.details) {
    const type = errorTypes.lookupType(detail.type_url.slice(detail.type_url.lastIndexOf("/") + 1));
    const value = type.toObject(type.decode(detail.value), { enums: String, longs: String });
    if (type.fullName === ".google.rpc.ErrorInfo") decoded.reason = value.reason;
    if (type.fullName === ".google.rpc.BadRequest") decoded.violations = value.field_violations.map((v) => v.field);
  }
  return decoded;
}

const firstValue = (md, key) => {
  const [value] = md?.get(key) ?? [];
  return value === undefined ? null : String(value);
};

// A unary call as a promise of {reply, error, echoed}; `echoed` is the x-request-id the
// server sent back (headers or trailers).
function unary(client, method, request, { requestId, timeoutMs = 60_000 } = {}) {
  return new Promise((resolve) => {
    const sent = requestId ?? randomUUID();
    let reply = null;
    let error = null;
    let headers = null;
    const call = client[method](
      request,
      metadata(sent),
      { deadline: Date.now() + timeoutMs },
      (err, value) => {
        error = err;
        reply = value ?? null;
      },
    );
    call.on("metadata", (md) => {
      headers = md;
    });
    call.on("status", (status) => {
      const echoed = firstValue(headers, "x-request-id") ?? firstValue(status.metadata, "x-request-id");
      resolve({ reply, error: error ? decodeError(error) : null, sent, echoed });
    });
  });
}

async function ok(client, method, request, options) {
  const result = await unary(client, method, request, options);
  if (result.error) throw new Error(`${method}: ${result.error.code} ${result.error.message}`);
  return result;
}

// A server-streaming call: every message until the end, or until `stopAfter` says to cancel.
function serverStream(client, method, request, { stopAfter, timeoutMs = 120_000 } = {}) {
  return new Promise((resolve) => {
    const messages = [];
    let headers = null;
    const call = client[method](request, metadata(), { deadline: Date.now() + timeoutMs });
    call.on("metadata", (md) => {
      headers = md;
    });
    call.on("data", (message) => {
      messages.push(message);
      if (stopAfter?.(message)) call.cancel();
    });
    call.on("error", () => {}); // the outcome is read from "status"
    call.on("status", (status) =>
      resolve({ messages, code: codeName(status.code), echoed: firstValue(headers, "x-request-id") }),
    );
  });
}

// google.protobuf.Struct <-> plain objects: proto-loader sends a plain object as an
// empty Struct, so every Struct in and out goes through these two. Trap: the
// well-known types come from protobufjs's built-in copies, whose fields stay
// camelCase (numberValue, listValue) even with keepCase: true.
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}
function fromValue(value) {
  switch (value?.kind) {
    case "numberValue":
      return value.numberValue;
    case "stringValue":
      return value.stringValue;
    case "boolValue":
      return value.boolValue;
    case "listValue":
      return (value.listValue.values ?? []).map(fromValue);
    case "structValue":
      return fromStruct(value.structValue);
    default:
      return null;
  }
}
function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

const sha256 = (buffer) => createHash("sha256").update(buffer).digest("hex");

// A short user-mode run; every value given, so the server's answer is predictable.
function startUserRun(alpha, seed, options) {
  return ok(
    trainer,
    "StartRun",
    {
      request_id: randomUUID(), // retries of this call return the same run
      algorithm: "q_learning",
      mode: "TRAINING_MODE_USER",
      seed, // uint64: a number or a decimal string both serialise
      test_episodes: 10,
      hyperparameters: {
        alpha,
        gamma: 0.93,
        epsilon: 1.0,
        epsilon_min: 0.05,
        epsilon_decay: 0.99,
        training_episodes: 230,
        max_steps: 200,
      },
    },
    options,
  );
}

async function main() {
  const report = {};

  const overall = await ok(health, "Check", { service: "" });
  const registryHealth = await ok(health, "Check", { service: "taxidriver.registry.v1.RegistryService" });
  report.health = { overall: overall.reply.status, registry: registryHealth.reply.status };

  const algorithms = await ok(trainer, "ListAlgorithms", {});
  report.algorithms = algorithms.reply.algorithms.map((a) => a.name);
  report.parameter_names = algorithms.reply.parameters.map((p) => p.name);

  // --- two runs, watched to the end (server stream), with a request id of our own
  const requestId = `node-${randomUUID()}`;
  const first = await startUserRun(0.37, "41", { requestId });
  report.request_id = { sent: requestId, echoed: first.echoed };
  const second = await startUserRun(0.73, 42);
  report.started = [first.reply, second.reply].map((r) => ({ run_id: r.run_id, status: r.status, seed: r.seed }));
  const runIds = report.started.map((r) => r.run_id);

  const watched = await serverStream(registry, "WatchRun", { run_id: runIds[0] });
  const episodeChunks = watched.messages.filter((m) => m.event.event === "episodes");
  report.watch = {
    code: watched.code,
    episodes: episodeChunks.reduce((n, m) => n + m.event.episodes.rewards.length, 0),
    first_episode: episodeChunks[0]?.event.episodes.first_episode ?? null,
    last_status: watched.messages.at(-1)?.event.status_change?.status ?? null,
  };
  const second_watch = await serverStream(registry, "WatchRun", { run_id: runIds[1], status_only: true });
  report.watch_second_last_status = second_watch.messages.at(-1)?.event.status_change?.status ?? null;

  // --- queries
  const got = await ok(registry, "GetRun", { run_id: runIds[0], view: "RUN_VIEW_FULL" });
  const params = fromStruct(got.reply.run.params);
  report.get_run = {
    status: got.reply.run.status,
    mode: got.reply.run.mode,
    alpha: params.alpha,
    training_runs: params.training_runs,
    success_rate: fromStruct(got.reply.run.test_metrics).success_rate,
    curve_length: got.reply.run.curves.rewards.length,
    create_time_seconds: got.reply.run.create_time.seconds,
  };
  const listed = await ok(registry, "ListRuns", {
    page_size: 100,
    filter: 'algorithm = "q_learning" AND params.gamma = 0.93 AND params.training_runs = 230',
  });
  report.list_runs = { run_ids: listed.reply.runs.map((r) => r.run_id), total_size: listed.reply.total_size };
  const best = await ok(registry, "ListBestRuns", { algorithm: "q_learning", limit: 1000 });
  report.best_run_ids = best.reply.runs.map((r) => r.run_id);
  const statistics = await ok(registry, "GetStatistics", {});
  report.statistics = {
    total_runs: statistics.reply.total_runs,
    completed_runs: statistics.reply.completed_runs,
    algorithms: statistics.reply.algorithms.map((a) => a.algorithm),
  };
  const searched = await ok(registry, "SearchRunsByParams", {
    params: toStruct({ alpha: 0.73, gamma: 0.93, training_runs: 230 }),
    page_size: 100,
  });
  report.search_run_ids = searched.reply.runs.map((r) => r.run_id);
  const compared = await ok(registry, "CompareRuns", { run_ids: runIds });
  const alphaDifference = compared.reply.param_differences.find((d) => d.key === "alpha");
  report.compare = {
    run_ids: compared.reply.runs.map((r) => r.run_id),
    alpha_values: alphaDifference ? alphaDifference.values.map(fromValue) : null,
    metrics: compared.reply.metrics.map((m) => m.metric),
  };

  // --- annotations
  const annotated = await ok(registry, "CreateAnnotation", {
    run_id: runIds[0],
    annotation: "trained from Node.js",
    tags: ["node", "contract-test"],
    request_id: randomUUID(),
  });
  const annotations = await ok(registry, "ListAnnotations", { run_id: runIds[0] });
  report.annotations = {
    created: annotated.reply.annotation.annotation_id,
    listed: annotations.reply.annotations.map((a) => ({ id: a.annotation_id, text: a.annotation, tags: a.tags })),
  };

  // --- models and artifacts (streams of bytes both ways)
  const models = await ok(registry, "ListModels", { run_id: runIds[0] });
  const model = models.reply.models[0];
  const gotModel = await ok(registry, "GetModel", { model_id: model.model_id });
  const exported = await serverStream(registry, "ExportModel", { model_id: model.model_id });
  const modelBytes = Buffer.concat(exported.messages.map((m) => m.chunk));
  report.model = {
    model_id: gotModel.reply.model.model_id,
    model_size: gotModel.reply.model.model_size,
    exported_bytes: modelBytes.length,
    export_code: exported.code,
    first_message_has_model: exported.messages[0]?.model?.model_id === model.model_id,
  };
  const imported = await new Promise((resolve) => {
    const call = registry.ImportModel(metadata(), { deadline: Date.now() + 60_000 }, (err, reply) =>
      resolve(err ? { error: decodeError(err) } : { reply }),
    );
    call.write({
      header: {
        model_name: "imported-from-node",
        model_metadata: toStruct({ source: "node", layers: [500, 6] }),
        request_id: randomUUID(),
      },
    });
    for (let offset = 0; offset < modelBytes.length; offset += 4096) {
      call.write({ chunk: modelBytes.subarray(offset, offset + 4096) });
    }
    call.end();
  });
  if (imported.error) throw new Error(`ImportModel: ${imported.error.code} ${imported.error.message}`);
  report.imported = {
    model_size: imported.reply.model.model_size,
    run_id: imported.reply.model.run_id,
    metadata: fromStruct(imported.reply.model.model_metadata),
  };

  const artifacts = await ok(registry, "ListArtifacts", { run_id: runIds[0], kind: "ARTIFACT_KIND_MODEL" });
  const artifact = artifacts.reply.artifacts[0];
  const downloaded = await serverStream(registry, "DownloadArtifact", { artifact_id: artifact.artifact_id });
  const artifactBytes = Buffer.concat(downloaded.messages.map((m) => m.chunk));
  report.artifact = {
    kinds: artifacts.reply.artifacts.map((a) => a.kind),
    size_bytes: artifact.size_bytes,
    downloaded_bytes: artifactBytes.length,
    sha256_matches: sha256(artifactBytes) === artifact.sha256,
  };

  // --- several runs on one bidirectional stream: add both, half-close, read to the end
  const many = await new Promise((resolve) => {
    const events = [];
    const call = registry.WatchRuns(metadata(), { deadline: Date.now() + 120_000 });
    call.on("data", (message) => events.push(message.event));
    call.on("error", () => {});
    call.on("status", (status) => resolve({ events, code: codeName(status.code) }));
    call.write({ add_run_ids: runIds, status_only: true });
    call.end();
  });
  report.watch_runs = {
    code: many.code,
    terminal: Object.fromEntries(
      many.events.filter((e) => e.event === "status_change").map((e) => [e.run_id, e.status_change.status]),
    ),
  };

  // --- a time-budget run (Duration as {seconds, nanos}), a cancelled watch, CancelRun
  const budgeted = await ok(trainer, "StartRun", {
    algorithm: "brute_force",
    mode: "TRAINING_MODE_TIME_BUDGET",
    time_budget: { seconds: 600, nanos: 0 },
    test_episodes: 10,
  });
  const budgetRun = budgeted.reply.run_id;
  const cancelledWatch = await serverStream(registry, "WatchRun", { run_id: budgetRun }, { stopAfter: () => true });
  report.cancelled_watch = { code: cancelledWatch.code, messages: cancelledWatch.messages.length };
  const cancelled = await ok(trainer, "CancelRun", { run_id: budgetRun });
  const ended = await serverStream(registry, "WatchRun", { run_id: budgetRun, status_only: true });
  const budgetParams = fromStruct((await ok(registry, "GetRun", { run_id: budgetRun })).reply.run.params);
  report.time_budget = {
    cancel_reply_run_id: cancelled.reply.run_id,
    final_status: ended.messages.at(-1)?.event.status_change?.status ?? null,
    time_budget_s: budgetParams.time_budget_s,
  };
  const resumed = await unary(trainer, "ResumeRun", { run_id: budgetRun });
  report.resume_cancelled = resumed.error;

  // --- errors a client must be able to read
  const unknownMode = await unary(trainer, "StartRun", { algorithm: "q_learning", mode: "optimized" });
  report.unknown_enum = unknownMode.error;
  report.error_request_id = { sent: unknownMode.sent, echoed: unknownMode.echoed };
  const badValues = await unary(trainer, "StartRun", {
    algorithm: "q_learning",
    mode: "TRAINING_MODE_OPTIMIZED",
    hyperparameters: { alpha: 0, gamma: 1.5 },
  });
  report.bad_values = badValues.error;
  const camel = await unary(registry, "GetRun", { runId: runIds[0] });
  report.camel_case_field = camel.error;

  // --- deleting and purging (admin)
  const deleted = await ok(registry, "DeleteRun", { run_id: budgetRun });
  report.deleted = {
    run_id: deleted.reply.run_id,
    episodes_deleted: deleted.reply.episodes_deleted,
    artifacts_deleted: deleted.reply.artifacts_deleted,
  };
  report.get_deleted = (await unary(registry, "GetRun", { run_id: budgetRun })).error;
  const purge = await ok(registry, "PurgeRuns", { older_than_days: 36500, validate_only: true });
  report.purge = { purged_runs: purge.reply.purged_runs, has_cutoff: purge.reply.cutoff_time !== null };

  return report;
}

try {
  const report = await main();
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  console.error(error?.stack ?? String(error));
  process.exitCode = 1;
} finally {
  for (const client of [trainer, registry, health]) client.close();
}
