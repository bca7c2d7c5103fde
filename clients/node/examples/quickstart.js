// Submit a task, run a worker that completes it, and read the result back.
//
//     node examples/quickstart.js          (a feeder on 127.0.0.1:50051, or FEEDWORK_TARGET)
const { FeederClient, Worker, Retry } = require("@feedwork/client");

async function main() {
  const client = new FeederClient(); // FEEDWORK_TARGET, else 127.0.0.1:50051
  const { taskId } = await client.submit(JSON.stringify({ to: "ada@example.com" }), { queue: "emails" });

  const worker = new Worker({
    queue: "emails",
    concurrency: 8,
    handler: async (task) => {
      const { to } = task.json();
      if (!to) throw new Retry("no address yet", { after: 5 }); // try again in 5 s
      // Pass task.signal to what you call: it aborts when the lease is lost or the task cancelled.
      return `sent to ${to}`; // the task's result (a string, Buffer, or JSON-able value)
    },
  });
  const running = worker.run(); // until worker.stop(), SIGTERM or SIGINT

  const task = await client.wait(taskId, { timeout: 30 });
  console.log(task.state, task.result.toString()); // COMPLETED sent to ada@example.com

  worker.stop();
  await running;
  client.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
