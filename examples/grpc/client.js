// A Node client of taskflow.v1.WorkerService: follow the finish events, send two tasks by
// name with JSON arguments, wait for their events, then read one task's record.
//
//   TASKFLOW_GRPC=127.0.0.1:50051 TASKFLOW_TOKEN=... node client.js
//
// TASKFLOW_CA=ca.pem switches to TLS (trusting that CA).
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "../../taskflow/grpc/proto");
const target = process.env.TASKFLOW_GRPC || "127.0.0.1:50051";
const token = process.env.TASKFLOW_TOKEN || "";

const definition = protoLoader.loadSync("taskflow/v1/worker.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  defaults: true,
  oneofs: true,
});
const { WorkerService } = grpc.loadPackageDefinition(definition).taskflow.v1;

const credentials = process.env.TASKFLOW_CA
  ? grpc.credentials.createSsl(fs.readFileSync(process.env.TASKFLOW_CA))
  : grpc.credentials.createInsecure();
const client = new WorkerService(target, credentials);

function metadata() {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return md;
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, metadata(), { deadline }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

const json = (value) => ({ json: JSON.stringify(value) });

async function main() {
  const wanted = 2;
  const events = client.StreamEvents({ tasks: ["example.add", "example.greet"] }, metadata());
  const failed = new Promise((_, reject) =>
    events.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    }),
  );
  // The stream's headers arrive once the server is subscribed: no event is missed after that.
  await Promise.race([new Promise((resolve) => events.once("metadata", resolve)), failed]);

  const finished = new Promise((resolve) => {
    const seen = [];
    events.on("data", (event) => {
      console.log(`event: ${event.task} ${event.task_id} ${event.status} -> ${event.result_json}`);
      seen.push(event);
      if (seen.length === wanted) {
        events.cancel();
        resolve(seen);
      }
    });
  });

  const { ids } = await call("EnqueueTasks", {
    tasks: [
      { task: "example.add", args: [json(2), json(40)], metadata: { source: "node" } },
      { task: "example.greet", args: [json("Ada")], kwargs: { punctuation: json("?") } },
    ],
  });
  console.log("sent:", ids.join(", "));

  await Promise.race([finished, failed]);
  const record = await call("GetTask", { id: ids[0] });
  console.log(`record: ${record.task} status=${record.status} attempts=${record.attempts}`);

  try {
    await call("GetTask", { id: "no-such-task" });
  } catch (err) {
    console.log(`unknown id: ${grpc.status[err.code]} (${err.details})`);
  }
  client.close();
}

main().catch((err) => {
  console.error(`error: ${err.code !== undefined ? grpc.status[err.code] : ""} ${err.details || err.message}`);
  process.exit(1);
});
